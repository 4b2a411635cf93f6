"""The vLLM backend: our image processor, vision tower and pre-LLM pruning make every image's pruned, projected
features; vLLM's engine runs the language model on them (continuous batching, paged KV cache, tensor parallelism).

    backend = VllmBackend.load("models/llava-shapes-tiny", "fastervlm:keep=36")
    backend.answer([Prompt("What color is the star?", image)], max_new_tokens=32, temperature=0, seed=0)

What makes its answers equal the torch backend's (`llava.eval.backend.TorchBackend`), token for token:
- the prompt ids are ours (LLaVA's tokenisation, `tokenizer_image_token`), the -200 of each image replaced by the
  checkpoint's image token id; vLLM expands that one placeholder into as many tokens as the image's feature rows
  and splices the rows in, as `prepare_inputs` does; positions run 0.. over the pruned sequence in both;
- the features are `model.image_tokens(...)` of one batch: LLaVA-NeXT's layout (crops, unpadding, image_newline)
  included, since vLLM splices embeddings as given;
- greedy decoding when temperature is 0, the same context window, the text decoded by our tokenizer.

vLLM accepts a prompt whose placeholders do not match the embeddings it is given (the extra id stays a text token),
so the count is checked here, before and after generation. In-LLM methods (FastV, DART, PyramidDrop, SparseVLM, and
chains holding one) are refused: they prune between decoder layers, which vLLM does not expose. vLLM takes a
llava-hf checkpoint folder (config.json of model_type llava or llava_next); one without processor_config.json (the
shipped models) is given one in a scratch folder of links, never written into the checkpoint.

On a CPU the engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0 unless set: a separate engine process
takes minutes to start on two cores; then no core is reserved for one, VLLM_CPU_NUM_OF_RESERVED_CPU=0 unless set),
in eager mode, with a KV cache of at most 4 GiB. Install: `bash setup.sh
--vllm` (docs/running.md, "vLLM backend").
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import build_prompt
from llava.errors import InputError
from llava.eval.backend import Backend, BackendInfo, Prompt, Reply, TorchBackend, answer_metadata
from llava.mm_utils import tokenizer_image_token
from llava.model.pruning.base import PruningMethod, VisualSpan, llm_parts
from llava.model.pruning.registry import parse_method
from llava.pipeline import Answer

CPU_KV_CACHE_LIMIT = 4 << 30  # bytes
CPU_MAX_SEQS = 32  # sequences the CPU engine batches at once (and its KV cache is sized for)
PROCESSORS = {"llava": "LlavaProcessor", "llava_next": "LlavaNextProcessor"}  # config.json model_type -> HF processor


def check_servable(method: PruningMethod) -> None:
    """InputError naming the method when any part of it acts inside the LLM."""
    inside = [part.name for part in llm_parts(method)]
    if inside:
        raise InputError(f"method '{method.spec}' prunes inside the LLM ({', '.join(inside)}: between decoder layers), "
                         "which vLLM does not expose; the vLLM backend runs pre-LLM methods only (or use --backend torch)")


def check_placeholders(prompt_ids: list[int], image_token: int, expected: int, what: str) -> None:
    """InputError unless `prompt_ids` hold `image_token` exactly `expected` times (`what`: what should be counted)."""
    found = prompt_ids.count(image_token)
    if found != expected:
        raise InputError(f"the prompt holds {found} image placeholder(s) for {expected} {what}; the prompt text must "
                         "not contain '<image>' (the image goes in front of it)")


class VllmBackend(Backend):
    """Answers with our vision side and vLLM's language model (see the module docstring)."""

    def __init__(self, pipeline, engine, image_token: int, context_len: int, method: PruningMethod | None = None,
                 vision_lock: threading.Lock | None = None):
        self.pipeline = pipeline  # a llava.pipeline.LlavaPipeline whose decoder layers are not used
        self.engine = engine  # vllm.LLM
        self.image_token = image_token
        self.context_len = context_len
        self.default_method = method or pipeline.model.pruning
        self._vision_lock = vision_lock or threading.Lock()  # `model.pruning` is set per call around the vision side

    @classmethod
    def load(cls, model_path: str, method: str | None = None, *, tensor_parallel_size: int = 1,
             dtype: torch.dtype | str | None = None, max_model_len: int | None = None, conv_mode: str | None = None,
             device: str | None = None, patch_merge: str | None = None, image_grid: str | None = None,
             **engine_options) -> "VllmBackend":
        """Our model (vision side) on `device` (default: cuda when there is CUDA, else cpu) and a vLLM engine over the
        same checkpoint. `dtype`: of both (default float16 on CUDA, float32 on CPU); `max_model_len`: the context
        (default the checkpoint's); `engine_options`: more arguments of `vllm.LLM` (e.g. gpu_memory_utilization,
        kv_cache_memory_bytes, max_num_seqs)."""
        from llava.device import default_dtype, resolve_device
        from llava.pipeline import LlavaPipeline

        check_servable(parse_method(method))  # before anything is loaded
        if tensor_parallel_size < 1:
            raise InputError(f"--tensor-parallel-size must be at least 1, got {tensor_parallel_size}")
        config = _hf_config(Path(model_path))
        device = resolve_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype or default_dtype(device)
        pipeline = LlavaPipeline.load(model_path, method=method, conv_mode=conv_mode, device=str(device), dtype=dtype,
                                      patch_merge=patch_merge, image_grid=image_grid)
        text = pipeline.model.config.text
        context = min(pipeline.context_len, text.max_position_embeddings, max_model_len or text.max_position_embeddings)
        pipeline.model.language_model.layers = torch.nn.ModuleList()  # vLLM runs the decoder: free our copy
        engine = _engine(Path(model_path), config, dtype, context, tensor_parallel_size, engine_options, text)
        return cls(pipeline, engine, config.get("image_token_index", config.get("image_token_id")), context)

    def with_method(self, spec: str | None) -> "VllmBackend":
        """The same model and engine with another default method (checked as a call's `method`)."""
        return VllmBackend(self.pipeline, self.engine, self.image_token, self.context_len, self._method(spec),
                           self._vision_lock)

    @property
    def method_spec(self) -> str:
        return self.default_method.spec

    def describe(self) -> BackendInfo:
        info = TorchBackend(self.pipeline).describe()
        return BackendInfo(info.model_id, self.method_spec, info.layout, info.llm)

    def answer(self, prompts: list[Prompt], *, max_new_tokens: int, temperature: float, seed: int,
               method: str | None = None) -> list[Reply]:
        """One Reply per prompt, as the torch backend's; `method`: this call's pruning spec instead of the default."""
        answers = self.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                method=method)
        return [Reply(answer.text, answer_metadata(answer)) for answer in answers]

    def generate(self, prompts: list[Prompt], *, max_new_tokens: int, temperature: float, seed: int,
                 method: str | None = None, ignore_eos: bool = False) -> list[Answer]:
        """`answer`, as `llava.pipeline.Answer`s (prefill_s and total_s: the whole call's time); `ignore_eos`: every
        answer runs to its limit (benchmarks)."""
        import time

        from vllm import SamplingParams

        from llava.generate import check_generation_options

        check_generation_options(max_new_tokens, temperature, seed=seed)
        start = time.perf_counter()
        requests = self.requests(prompts, method)
        limits = [min(max_new_tokens, self.context_len - r["length"]) for r in requests]
        todo = [i for i, limit in enumerate(limits) if limit > 0]  # a prompt that fills the window gets no token
        outputs = {}
        # vLLM 0.32 embeds the images of the requests it prefills together as one (images, rows, hidden) tensor, so
        # their row counts must agree ("data contains inconsistent shapes"): one engine call per visual-token count.
        for rows in sorted({tuple(requests[i]["rows"]) for i in todo}):
            group = [i for i in todo if tuple(requests[i]["rows"]) == rows]
            params = [SamplingParams(temperature=temperature, max_tokens=limits[i], ignore_eos=ignore_eos,
                                     seed=seed if temperature > 0 else None, detokenize=False) for i in group]
            done = self.engine.generate([requests[i]["inputs"] for i in group], params, use_tqdm=False)
            outputs.update(zip(group, done))
        elapsed = time.perf_counter() - start
        tokenizer = self.pipeline.tokenizer
        answers = []
        for i, request in enumerate(requests):
            tokens, stop = [], "max_new_tokens" if limits[i] == max_new_tokens else "context"
            if i in outputs:
                output = outputs[i]
                check_placeholders(list(output.prompt_token_ids), self.image_token, sum(request["rows"]),
                                   "visual tokens after vLLM's expansion")
                tokens = list(output.outputs[0].token_ids)
                if tokens and tokens[-1] == tokenizer.eos_token_id and not ignore_eos:
                    tokens, stop = tokens[:-1], "eos"
            answers.append(Answer(
                text=tokenizer.decode(tokens, skip_special_tokens=True).strip(), prompt=request["prompt"],
                prompt_ids=request["prompt_ids"], visual_tokens=request["rows"], kept=request["kept"],
                kept_partitions=request["kept_partitions"], partition_grid=request["partition_grid"],
                prefill_s=elapsed, total_s=elapsed, stop_reason=stop,
                layer_tokens=[request["length"]] * self.pipeline.model.config.text.num_layers,
            ))
        return answers

    def requests(self, prompts: list[Prompt], method: str | None = None) -> list[dict]:
        """Per prompt, vLLM's input ({"prompt_token_ids", "multi_modal_data"}) and what the answer line says of it:
        the prompt, our prompt ids (-200 per image), per image its feature rows, kept ids, kept partitions and
        partition grid, and `length`, the prompt's tokens with the visual tokens in place. Every image of the batch
        goes through the vision tower and the method together."""
        pruning = self._method(method)
        if any(getattr(p, "video", None) is not None for p in prompts):
            raise InputError("the vLLM backend answers about images; a video needs --backend torch")
        pipeline = self.pipeline
        texts = [build_prompt(p.text, pipeline.conv_mode, with_image=p.image is not None) for p in prompts]
        prompt_ids = [tokenizer_image_token(t, pipeline.tokenizer) for t in texts]
        pictures = [p.image for p in prompts if p.image is not None]
        for ids, prompt in zip(prompt_ids, prompts):
            check_placeholders(ids, IMAGE_TOKEN_INDEX, int(prompt.image is not None), "image(s)")
        with self._vision_lock, torch.inference_mode():
            model, kept_default = pipeline.model, pipeline.model.pruning
            model.pruning = pruning
            try:
                tokens = model.image_tokens(_to(pipeline.image_processor(pictures), model.device)) if pictures else []
            finally:
                model.pruning = kept_default
        grid = (model.config.vision.grid_size,) * 2
        images, requests = iter(tokens), []
        for text, ids, prompt in zip(texts, prompt_ids, prompts):
            image = next(images) if prompt.image is not None else None
            request = {"prompt": text, "prompt_ids": ids, "rows": [], "kept": [], "kept_partitions": [],
                       "partition_grid": [], "length": len(ids)}
            inputs = {"prompt_token_ids": [self.image_token if t == IMAGE_TOKEN_INDEX else t for t in ids]}
            if image is not None:
                span = VisualSpan(0, image.features.shape[0], grid, image.patch_index, image.partition,
                                  image.partition_grid)
                request.update(rows=[span.length], kept=[span.kept_ids()], kept_partitions=[span.kept_partitions()],
                               partition_grid=[list(span.partition_grid)], length=len(ids) - 1 + span.length)
                # vLLM reads the first dimension as the images: (1, T, D) is one image of T tokens
                inputs["multi_modal_data"] = {"image": image.features.float()[None].cpu()}
            if request["length"] > self.context_len:
                raise InputError(f"prompt of {request['length']} tokens (visual tokens included) is longer than the "
                                 f"context of {self.context_len}")
            request["inputs"] = inputs
            requests.append(request)
        return requests

    def _method(self, spec: str | None) -> PruningMethod:
        """The pruning method of a call: the default, or `spec` checked against the model and vLLM."""
        if spec is None:
            return self.default_method
        method = parse_method(spec)
        check_servable(method)
        config = self.pipeline.model.config
        method.check_model(config.vision.num_layers, config.text.num_layers, config.tokens_per_image, config.anyres)
        return method


def _to(images, device: torch.device):
    """Pixel values (LLaVA-1.5) onto the model's device; anyres images go as they are (image_tokens moves them)."""
    return images.to(device) if isinstance(images, torch.Tensor) else images


def _hf_config(folder: Path) -> dict:
    """config.json of a llava-hf checkpoint; InputError for another layout (vLLM loads llava-hf folders only)."""
    from llava.jsonfile import read_json

    path = folder / "config.json"
    if not path.is_file():
        raise InputError(f"{folder} holds no config.json: the vLLM backend takes a llava-hf checkpoint folder")
    config = read_json(path)
    if config.get("model_type") not in PROCESSORS:
        raise InputError(f"{folder} is a '{config.get('model_type')}' checkpoint; the vLLM backend takes llava-hf "
                         f"folders ({', '.join(PROCESSORS)}); convert an original LLaVA checkpoint first")
    return config


def vllm_folder(folder: Path, config: dict) -> Path:
    """`folder` when it has a processor_config.json, else a scratch folder of links to its files plus one (vLLM
    builds the HF processor from it: the image token, patch size and feature selection)."""
    if (folder / "processor_config.json").is_file():
        return folder
    scratch = Path(tempfile.mkdtemp(prefix=f"vllm-{folder.name}-"))
    for item in folder.iterdir():
        (scratch / item.name).symlink_to(item.resolve())
    vision = config.get("vision_config", {})
    processor = {
        "processor_class": PROCESSORS[config["model_type"]], "image_token": "<image>",
        "patch_size": vision.get("patch_size", 14),
        "vision_feature_select_strategy": config.get("vision_feature_select_strategy", "default"),
        "num_additional_image_tokens": 1,  # CLIP's [CLS]
    }
    (scratch / "processor_config.json").write_text(json.dumps(processor, indent=1) + "\n")
    return scratch


def _engine(folder: Path, config: dict, dtype: torch.dtype, context: int, tensor_parallel_size: int,
            options: dict, text) -> "vllm.LLM":  # noqa: F821
    """vLLM's engine over the checkpoint's language model, taking image embeddings (its vision tower not loaded)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0":
        # vLLM's CPU worker keeps a core free for a scheduler process; in this process there is none (it would halve
        # the threads of a 2-core machine)
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    try:
        from vllm import LLM
    except ImportError as error:
        raise InputError(f"the vLLM backend needs vLLM, which is not installed here ({error}); run `bash setup.sh "
                         "--vllm`") from None
    cpu = not torch.cuda.is_available()
    options = {"enforce_eager": cpu, "max_num_seqs": CPU_MAX_SEQS if cpu else 256, **options}
    if cpu and "kv_cache_memory_bytes" not in options and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        # vLLM reads gpu_memory_utilization as a share of the host's RAM on a CPU: bound the cache instead
        per_token = 2 * text.num_layers * text.num_kv_heads * text.head_dim * torch.finfo(dtype).bits // 8
        options["kv_cache_memory_bytes"] = max(per_token * context, min(per_token * context * options["max_num_seqs"],
                                                                        CPU_KV_CACHE_LIMIT))
    return LLM(model=str(vllm_folder(folder, config)), dtype=str(dtype).removeprefix("torch."), max_model_len=context,
               tensor_parallel_size=tensor_parallel_size, enable_mm_embeds=True, limit_mm_per_prompt={"image": 0},
               seed=0, **options)
