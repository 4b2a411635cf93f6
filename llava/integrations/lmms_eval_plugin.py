"""lmms-eval model plugin: our LLaVA-1.5 / LLaVA-NeXT with any pruning method, as `--model llava_fastv`.

    pip install -e ".[lmms]"     # lmms-eval 0.7.x; registered through the entry point `lmms_eval.models`
    lmms-eval --model llava_fastv \\
        --model_args pretrained=checkpoints/llava-v1.5-7b,method=fastv:k=2,keep=288,conv_mode=vicuna_v1 \\
        --tasks textvqa_val --batch_size 8

`model_args` (lmms-eval splits them at every comma outside quotes and braces, so a method's own parameters
may follow it as separate `key=value` pairs, or the spec may be quoted whole, `method="fastv:k=2,keep=288"`; as `keep=288` above; they are joined back into the spec; each key at most
once): `pretrained` (a checkpoint folder, either layout), `method` (a spec, default none), `conv_mode`
(vicuna_v1), `device` (cpu, cuda, cuda:N; default cuda when CUDA is there, as lmms-eval's own models),
`dtype` (float32, float16, bfloat16; default: the device's), `batch_size` (requests per forward, a
positive integer; `auto` is refused), `patch_merge`, `image_grid`, `vision_tower` (as `fastv run`).
`batch_size` and `device` may come from model_args or from `--batch_size` / `--device`; given both ways
with different values they are refused, except that model_args win over `--batch_size`'s default of 1.
Requests go through `LlavaPipeline` in batches of equal generation settings.

Request types:
- `generate_until`: greedy, or sampled: `do_sample` defaults to `temperature > 0` (the rule of lmms-eval's
  newer models, e.g. `cosmos_wm`; its `llava` model ignores `do_sample` and samples exactly when
  `temperature > 0`, which agrees unless `do_sample` is given), a temperature of 0 is greedy, and `top_p`
  applies whenever it samples, up to `max_new_tokens` (default 128), the text cut before the
  first of `until`; `num_beams` > 1 is refused.
- `loglikelihood`: returns (loss, is_greedy) with loss = -log p(continuation | the templated question and
  its image), summed over the continuation's tokens. A loss, not a log-probability, because that is what
  lmms-eval 0.7.3's scorers read: `multiple_choice` takes the argmin over the choices (acc; acc_norm
  divides by the choice's length in characters first), as do its tasks' own `process_results`, and its
  own llava models return a loss (the mean over the tokens; here the sum, so that acc and acc_norm are
  lm-eval's). lmms-eval's `perplexity`, `bits_per_byte` and `acc_mutual_info`, kept from lm-eval, read the
  opposite sign; no lmms-eval 0.7.3 task uses them, and with this model (as with lmms-eval's own) they
  are not meaningful.
  The continuation is scored under the pruned model exactly as it generates: the question is prefilled
  once per question (pre-LLM methods choose on the image, FastV on the question's last token) and each
  continuation's tokens are scored through that pruned cache (for `reselect_every_step`, by a fresh
  forward per token, as that method generates). Its tokens are those that follow the prompt when the
  prompt and the continuation are tokenised as one text, as lmms-eval's own llava model splits them: the
  `" " + choice` that lmms-eval sends then gives the choice's word token (`▁red`), where tokenised alone a
  SentencePiece Llama tokenizer gives a token of its own for the space first (`▁`, `▁red`), a token the
  model never generates after `ASSISTANT:`. No end-of-sequence token is added (log p of the text itself,
  as lm-eval). `is_greedy` says whether greedy decoding would have produced exactly those tokens.
- `generate_until_multi_round`: refused with a message naming it.

A doc with one image is asked with it, a doc without images as text; more than one image per question,
and a video or audio visual, are refused with a message naming the doc.

At the boundary with lmms-eval 0.7.3: its evaluator turns every loglikelihood result into a string
(`unwrap_generation_output`), which fails every loglikelihood task whatever the model; when this model
is made, and only where the installed evaluator does that, a (loss, is_greedy) pair is passed through
as it is. `lmms-eval models` lists only lmms-eval's own table, not entry points; `manifest` adds
`llava_fastv` to it.
"""

from __future__ import annotations

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.api.registry import register_model
from lmms_eval.utils import _smart_comma_split  # lmms-eval's own splitter of model_args
from PIL import Image

from llava.conversation import conversation_template
from llava.errors import InputError
from llava.mm_utils import tokenizer_image_token
from llava.pipeline import LlavaPipeline, Request

MODEL_ID = "llava_fastv"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
COMMAND_LINE_DEFAULTS = {"batch_size": 1}  # what lmms-eval's CLI passes when the option is not given


def manifest():
    """The entry point's payload (group `lmms_eval.models`): where lmms-eval finds the class.

    lmms-eval calls it while it builds its model registry; it also puts `llava_fastv` in the table that
    `lmms-eval models` prints (0.7.3 lists that table only, as its older plugin mechanism fills it)."""
    import lmms_eval.models as models
    from lmms_eval.models.registry_v2 import ModelManifest

    class_path = f"{__name__}.LlavaFastV"
    models.AVAILABLE_SIMPLE_MODELS.setdefault(MODEL_ID, class_path)
    return ModelManifest(model_id=MODEL_ID, simple_class_path=class_path)


def method_spec(method: str, params: dict) -> str:
    """'fastv:k=2' + {'keep': 288} -> 'fastv:k=2,keep=288' (lmms-eval split the spec at its commas)."""
    if not params:
        return method
    rest = ",".join(f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in params.items())
    return f"{method},{rest}" if ":" in method else f"{method}:{rest}"


def parse_model_args(arg_string: str) -> dict[str, str]:
    """'pretrained=m,method=fastv:k=2,keep=36' -> {'pretrained': 'm', 'method': 'fastv:k=2', 'keep': '36'}.

    Split where lmms-eval splits (at every comma outside quotes and braces: `method="fastv:k=2,keep=36"` stays one
    item, its quotes removed), but each key at most once (lmms-eval's own parser keeps the last of
    `keep=36,keep=10`) and every value as written (the method's parser types its own)."""
    args: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in _smart_comma_split(arg_string))):
        key, eq, value = item.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        key = key.strip()
        if not eq or not key:
            raise InputError(f"llava_fastv: model_args item '{item}' must be written key=value")
        if key in args:
            raise InputError(f"llava_fastv: model_args give '{key}' twice ({key}={args[key]} and {key}={value.strip()})")
        args[key] = value.strip()
    return args


def merge_command_line(args: dict, command_line: dict) -> dict:
    """model_args plus what lmms-eval's command line passes (`--batch_size`, `--device`, `--max_batch_size`).

    lmms-eval passes both to the constructor, so a key in both fails in Python ('got multiple values').
    A value in model_args wins over the command line's default (`--batch_size` 1 when not given); the same
    key given both ways with different values is refused, since which one was meant is not ours to guess."""
    merged = dict(args)
    for key, value in command_line.items():
        if value is None:
            continue
        if key not in merged:
            merged[key] = value
        elif str(merged[key]) != str(value) and value != COMMAND_LINE_DEFAULTS.get(key):
            raise InputError(f"llava_fastv: {key} is given twice, {key}={merged[key]} in model_args and"
                             f" --{key} {value}; give it once")
    return merged


def checked_batch_size(value) -> int:
    """A positive number of requests per forward; `auto` (lmms-eval's memory search) is not implemented."""
    text = str(value).strip()
    if text.startswith("auto"):
        raise InputError(f"llava_fastv: batch_size '{text}' is not supported; give a number of requests per forward,"
                         " e.g. --batch_size 8")
    try:
        number = int(text)
    except ValueError:
        raise InputError(f"llava_fastv: batch_size must be a positive integer, got '{text}'") from None
    if number < 1:
        raise InputError(f"llava_fastv: batch_size must be a positive integer, got {number}")
    return number


def default_device() -> str:
    """cuda when CUDA is there, else cpu (lmms-eval's own models run on cuda unless told otherwise)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def keep_loglikelihood_pairs() -> None:
    """Let (loss, is_greedy) pairs through lmms-eval's evaluator, where the installed one turns them into text.

    lmms-eval 0.7.3 passes every model output through `unwrap_generation_output`, whose last case is `str(output)`:
    a loglikelihood result becomes "(1.2, True)" and every loglikelihood task then fails in its scorer, whatever
    the model. Only where that happens is the evaluator's reference replaced by one that returns such a pair as it
    is (and every other output as before); a later lmms-eval that keeps the pair is left alone."""
    from lmms_eval import evaluator

    unwrap = evaluator.unwrap_generation_output
    if unwrap((0.0, True))[0] == (0.0, True):
        return

    def unwrap_keeping_pairs(output):
        if isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], float) and isinstance(output[1], bool):
            return output, None
        return unwrap(output)

    evaluator.unwrap_generation_output = unwrap_keeping_pairs


@register_model(MODEL_ID)
class LlavaFastV(lmms):
    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        method: str = "none",
        conv_mode: str = "vicuna_v1",
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        patch_merge: str | None = None,
        image_grid: str | None = None,
        vision_tower: str | None = None,
        **method_params,
    ) -> None:
        super().__init__()
        if not pretrained:
            raise InputError("llava_fastv needs pretrained=<checkpoint folder> in --model_args")
        if dtype is not None and dtype not in DTYPES:
            raise InputError(f"llava_fastv: dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
        if max_batch_size is not None:
            raise InputError("llava_fastv: --max_batch_size goes with --batch_size auto, which is not supported;"
                             " give --batch_size N")
        self.batch_size_per_gpu = checked_batch_size(batch_size)
        conversation_template(conv_mode)  # an unknown mode is named now, not at the first request
        self.pipeline = LlavaPipeline.load(
            str(pretrained), method=method_spec(str(method), method_params), conv_mode=conv_mode,
            device=device or default_device(), dtype=DTYPES.get(dtype), vision_tower=vision_tower,
            patch_merge=patch_merge, image_grid=image_grid,
        )
        keep_loglikelihood_pairs()

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config: dict | None = None) -> "LlavaFastV":
        """lmms-eval's way in: `--model_args` (parsed by `parse_model_args`) and the command line's options."""
        args = dict(arg_string) if isinstance(arg_string, dict) else parse_model_args(arg_string or "")
        return cls(**merge_command_line(args, additional_config or {}))

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # ---- requests -> our requests ------------------------------------------------------------

    def _request(self, context: str, doc_to_visual, doc_id, task: str, split: str) -> Request:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        visuals = [v for v in (visuals or []) if v is not None]
        if len(visuals) > 1:
            raise InputError(f"llava_fastv asks one image per question; {task} doc {doc_id} gives {len(visuals)}")
        if visuals and not isinstance(visuals[0], Image.Image):
            shown = repr(visuals[0]) if isinstance(visuals[0], str) else type(visuals[0]).__name__
            raise InputError(f"llava_fastv answers image questions; {task} doc {doc_id} gives {shown}"
                             " (video and audio are not supported)")
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
        """(loss, is_greedy) per request, loss = -log p(continuation | context): see the module docstring.

        The requests of one question (a multiple_choice doc's choices) share one prefill."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        questions: dict[tuple, list[int]] = {}
        for n, instance in enumerate(requests):
            context, _, _, doc_id, task, split = instance.args
            questions.setdefault((context, doc_id, task, split), []).append(n)
        for (context, doc_id, task, split), members in questions.items():
            request = self._request(context, requests[members[0]].args[2], doc_id, task, split)
            doc = self.task_dict[task][split][doc_id]
            targets = [requests[n].args[1] for n in members]
            continuations = [str(target(doc) if callable(target) else target) for target in targets]
            for n, (logprob, is_greedy) in zip(members, self.score_continuations(request, continuations)):
                results[n] = (-logprob, is_greedy)
        return results

    def continuation_tokens(self, prompt: str, prompt_ids: list[int], continuation: str) -> list[int]:
        """The tokens `continuation` adds after the prompt: prompt and continuation tokenised as one text, the
        prompt's tokens cut off. Where the two texts merge into one token at the seam (the prompt's tokens are no
        prefix of the whole's), the continuation tokenised alone."""
        tokenizer = self.pipeline.tokenizer
        whole = tokenizer_image_token(prompt + continuation, tokenizer)
        if whole[: len(prompt_ids)] == prompt_ids:
            return whole[len(prompt_ids):]
        return tokenizer(continuation, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def score_continuations(self, request: Request, continuations: list[str]) -> list[tuple[float, bool]]:
        """Per continuation: (log p(continuation | request), whether greedy decoding gives exactly its tokens)."""
        pipe, model = self.pipeline, self.pipeline.model
        (prompt_text,), (prompt,), images, _ = pipe.encode([request])
        reselect = getattr(model.pruning, "reselect_every_step", False)  # re-pruned at every step, no cache
        prefill = None if reselect else model([prompt], images)
        scores = []
        for continuation in continuations:
            tokens = self.continuation_tokens(prompt_text, prompt, continuation)
            if not tokens:
                scores.append((0.0, True))
                continue
            if reselect:
                logits = torch.cat([model([prompt + tokens[:i]], images).logits[:, -1] for i in range(len(tokens))])
            elif len(tokens) == 1:
                logits = prefill.logits[:, -1]
            else:  # the prefill's cache is not changed by a continuation decoded after it
                following, _ = model.decode(torch.tensor([tokens[:-1]], device=model.device), prefill.cache)
                logits = torch.cat([prefill.logits[:, -1], following[0]])
            logprobs = logits.float().log_softmax(dim=-1)  # (len(tokens), V)
            target = torch.tensor(tokens, device=logprobs.device)
            scores.append((float(logprobs.gather(1, target[:, None]).sum()), bool((logprobs.argmax(dim=-1) == target).all())))
        return scores


def _settings(gen_kwargs: dict) -> tuple:
    """(max_new_tokens, temperature, top_p, until) from lmms-eval's generation kwargs.

    `do_sample` defaults to `temperature > 0` (as lmms-eval's newer models, e.g. cosmos_wm; its llava model ignores
    `do_sample` and samples exactly when `temperature > 0`), and a temperature of 0 is greedy whatever `do_sample` says; `do_sample` true without a temperature samples at 1 (transformers' default). When
    sampling, `top_p` applies as given."""
    gen_kwargs = dict(gen_kwargs or {})
    if int(gen_kwargs.get("num_beams", 1) or 1) > 1:
        raise InputError("llava_fastv decodes greedily or by sampling; num_beams > 1 is not supported")
    until = gen_kwargs.get("until") or []
    until = (until,) if isinstance(until, str) else tuple(until)
    temperature = float(gen_kwargs.get("temperature", 1.0 if gen_kwargs.get("do_sample") else 0.0) or 0.0)
    sample = bool(gen_kwargs.get("do_sample", temperature > 0)) and temperature > 0
    top_p = gen_kwargs.get("top_p")
    return (int(gen_kwargs.get("max_new_tokens", 128)), temperature if sample else 0.0,
            float(top_p) if sample and top_p is not None else None, until)


def _cut(text: str, until: tuple[str, ...]) -> str:
    """`text` up to the first of the stop strings."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text
