"""lmms-eval model plugin: our LLaVA-1.5 / LLaVA-NeXT with any pruning method, as `--model llava_fastv`.

    pip install -e ".[lmms]"     # lmms-eval 0.7.x; registered through the entry point `lmms_eval.models`
    lmms-eval --model llava_fastv \\
        --model_args pretrained=checkpoints/llava-v1.5-7b,method=fastv:k=2,keep=288,conv_mode=vicuna_v1 \\
        --tasks textvqa_val --batch_size 8

`model_args` (lmms-eval splits them at every comma, so a method's own parameters may follow it as
separate `key=value` pairs, as `keep=288` above; they are joined back into the spec):
`pretrained` (a checkpoint folder, either layout), `method` (a spec, default none), `conv_mode`
(vicuna_v1), `device` (cpu, cuda, cuda:N), `dtype` (float32, float16, bfloat16; default: the
device's), `batch_size` (requests per forward), `patch_merge`, `image_grid`, `vision_tower`
(as `fastv run`). Requests go through `LlavaPipeline` in batches of equal generation settings.

Request types:
- `generate_until`: greedy (or sampled, from `temperature` / `do_sample` / `top_p`) up to
  `max_new_tokens` (default 128), the text cut before the first of `until`; `num_beams` > 1 is refused.
- `loglikelihood`: log p(continuation | the templated question and its image) under the pruned model
  exactly as it generates: the question is prefilled (pre-LLM methods choose on the image, FastV on
  the question's last token), then the continuation's tokens are scored through the pruned cache
  (or, for `reselect_every_step`, by a fresh forward per token, as that method generates). The
  continuation is tokenised on its own, without a BOS; `is_greedy` says whether greedy decoding
  would have produced exactly those tokens.
- `generate_until_multi_round`: refused with a message naming it.

A doc with one image is asked with it, a doc without images as text; more than one image per
question is refused (LLaVA-1.5's evaluation asks one).
"""

from __future__ import annotations

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.api.registry import register_model

from llava.errors import InputError
from llava.pipeline import LlavaPipeline, Request

MODEL_ID = "llava_fastv"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def manifest():
    """The entry point's payload (group `lmms_eval.models`): where lmms-eval finds the class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.LlavaFastV")


def method_spec(method: str, params: dict) -> str:
    """'fastv:k=2' + {'keep': 288} -> 'fastv:k=2,keep=288' (lmms-eval split the spec at its commas)."""
    if not params:
        return method
    rest = ",".join(f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in params.items())
    return f"{method},{rest}" if ":" in method else f"{method}:{rest}"


@register_model(MODEL_ID)
class LlavaFastV(lmms):
    is_simple = True

    def __init__(
        self,
        pretrained: str,
        method: str = "none",
        conv_mode: str = "vicuna_v1",
        device: str = "cpu",
        dtype: str | None = None,
        batch_size: int | str = 1,
        patch_merge: str | None = None,
        image_grid: str | None = None,
        vision_tower: str | None = None,
        **method_params,
    ) -> None:
        super().__init__()
        if dtype is not None and dtype not in DTYPES:
            raise InputError(f"llava_fastv: dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
        self.pipeline = LlavaPipeline.load(
            str(pretrained), method=method_spec(str(method), method_params), conv_mode=conv_mode, device=device,
            dtype=DTYPES.get(dtype), vision_tower=vision_tower, patch_merge=patch_merge, image_grid=image_grid,
        )
        self.batch_size_per_gpu = max(int(batch_size), 1)

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # ---- requests -> our requests ------------------------------------------------------------

    def _request(self, context: str, doc_to_visual, doc_id, task: str, split: str) -> Request:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        visuals = [v for v in (visuals or []) if v is not None]
        if len(visuals) > 1:
            raise InputError(f"llava_fastv asks one image per question; {task} doc {doc_id} gives {len(visuals)}")
        image = visuals[0].convert("RGB") if visuals else None
        return Request(image=image, text=context)

    # ---- generate_until ----------------------------------------------------------------------

    def generate_until(self, requests: list[Instance]) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}  # requests of one generation setting are batched together
        for n, instance in enumerate(requests):
            groups.setdefault(_settings(instance.args[1]), []).append(n)
        for (max_new_tokens, temperature, top_p, until), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                asked = [self._request(requests[n].args[0], *requests[n].args[2:6]) for n in batch]
                answers = self.pipeline.answer(asked, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
                for n, answer in zip(batch, answers):
                    results[n] = _cut(answer.text, until)
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("llava_fastv does not support generate_until_multi_round (multi-round tasks);"
                                  " it answers generate_until and loglikelihood requests")

    # ---- loglikelihood -----------------------------------------------------------------------

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        results = []
        for instance in requests:
            context, target, doc_to_visual, doc_id, task, split = instance.args
            doc = self.task_dict[task][split][doc_id]
            continuation = target(doc) if callable(target) else target
            results.append(self.score_continuation(self._request(context, doc_to_visual, doc_id, task, split),
                                                   str(continuation)))
        return results

    @torch.inference_mode()
    def score_continuation(self, request: Request, continuation: str) -> tuple[float, bool]:
        """(log p(continuation | request), whether greedy decoding gives exactly its tokens)."""
        pipe, model = self.pipeline, self.pipeline.model
        _, (prompt,), images = pipe.encode([request])
        tokens = pipe.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not tokens:
            return 0.0, True
        if getattr(model.pruning, "reselect_every_step", False):  # re-pruned at every step, no cache
            logits = torch.cat([model([prompt + tokens[:i]], images).logits[:, -1] for i in range(len(tokens))])
        else:
            out = model([prompt], images)
            following = model.decode(torch.tensor([tokens[:-1]], device=model.device), out.cache)[0] if len(tokens) > 1 else None
            logits = out.logits[:, -1] if following is None else torch.cat([out.logits[:, -1], following[0]])
        logprobs = logits.float().log_softmax(dim=-1)  # (len(tokens), V)
        target = torch.tensor(tokens, device=logprobs.device)
        total = float(logprobs.gather(1, target[:, None]).sum())
        return total, bool((logprobs.argmax(dim=-1) == target).all())


def _settings(gen_kwargs: dict) -> tuple:
    """(max_new_tokens, temperature, top_p, until) from lmms-eval's generation kwargs."""
    gen_kwargs = dict(gen_kwargs or {})
    if int(gen_kwargs.get("num_beams", 1) or 1) > 1:
        raise InputError("llava_fastv decodes greedily or by sampling; num_beams > 1 is not supported")
    until = gen_kwargs.get("until") or []
    until = (until,) if isinstance(until, str) else tuple(until)
    sample = gen_kwargs.get("do_sample", False)
    temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0) if sample or "do_sample" not in gen_kwargs else 0.0
    top_p = gen_kwargs.get("top_p")
    return int(gen_kwargs.get("max_new_tokens", 128)), temperature, (float(top_p) if top_p and sample else None), until


def _cut(text: str, until: tuple[str, ...]) -> str:
    """`text` up to the first of the stop strings."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text
