"""`fastv bench`: what pruning buys in wall-clock time and memory, beside the references a user would otherwise run.

    fastv bench --preset llava-v1.5-13b --random-weights --device cuda --dtype float16 --json results/X/bench.json
    fastv bench --model-path checkpoints/llava-v1.6-vicuna-7b --methods none hired:rate=0.2 --json bench.json
    fastv bench --preset bench-v1.5 --random-weights --json bench.json     (a small random LLaVA, for CPUs)

Every contestant generates `--new-tokens` tokens (no stop at EOS) for the same batch: the same prompt (`--text-tokens`
non-image tokens around one image) with a different random image per sample, so that every sample keeps its own
tokens. The contestants are ours with each method of `--methods`, and (`--references`, all by default) transformers'
`LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration` with SDPA, unpruned, and, for each FastV method,
FastV the way its released HF code requires: eager attention in every layer, attention outputs on, the top image
tokens of layer K-1's last row kept from layer K on, and no KV cache (each new token re-runs and re-selects over the
whole sequence), with as many image tokens as ours keeps. A `--preset` with `--random-weights` is built on the
meta device and materialised on the target device (transformers' random init, shared with ours: one copy of the
weights, never an fp32 copy on the host); a forward costs the same whatever the weights.

Per contestant (JSON row fields; medians over `--repeats`, and `<field>_iqr` = [25th, 75th percentile]):
    vision_s            the vision tower's forward (the prefill's: FastV's reference re-runs it for every token)
    pruning_s           time inside the method's selection at prefill (`select_image` before the LLM, `select` inside it)
    prefill_s           the LLM's forward over the prompt (decoder layers and final norm)
    ttft_s              time to first token: token ids and pixel values on the device -> the first token
    decode_s_per_token  (e2e_s - ttft_s) / (new_tokens - 1): one more token
    e2e_s               all new_tokens tokens
    answers_per_s       batch / e2e_s; tokens_per_s: batch * new_tokens / e2e_s
    peak_memory_bytes   CUDA: torch.cuda.max_memory_allocated over the generation (weights included);
                        CPU: the process's peak RSS during it minus its RSS before (VmHWM, reset per run)
    kv_cache_bytes      the keys and values the cache holds after prefill, from each layer's real length per sample
Times: CUDA events around each stage on a GPU, perf_counter (with synchronisation) elsewhere; `--warmup` untimed rounds,
then `--repeats` rounds in which every contestant runs once, in turn, so drift in the machine's speed hits all alike.
Ratios in the same run: each row over ours unpruned and over transformers unpruned.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

DEFAULT_METHODS = ("none", "fastv:k=2,ratio=0.5", "fastervlm:keep=58")
NEXT_METHODS = ("none", "fastv:k=2,ratio=0.5", "fastervlm:keep=29", "hired:rate=0.2", "hired:rate=0.1", "prumerge+")
TEXT_TOKENS = 55  # LLaVA-1.5's system prompt and "USER:" (35 tokens, before the image) and a short question (20)
SYSTEM_TOKENS = 35
TIME_FIELDS = ("vision_s", "pruning_s", "prefill_s", "ttft_s", "decode_s_per_token", "e2e_s")
REFERENCE = "transformers (sdpa), unpruned"
RATIOS = {"ttft_s": "ttft", "prefill_s": "prefill", "decode_s_per_token": "decode", "e2e_s": "e2e"}  # <short>_vs_<base>


def bench_presets() -> dict:
    """Small random LLaVAs for timing on a CPU: a CLIP-B-sized tower at 336 px (576 patches) and a 4-layer Llama of
    width 1024; `-v1.6` is the LLaVA-NeXT of the same parts (stock pinpoints, image_newline)."""
    from llava.model.language_model.llava_llama import LlamaConfig
    from llava.model.llava_arch import NEXT_PINPOINTS, LlavaConfig
    from llava.model.multimodal_encoder.clip_encoder import VisionConfig

    vision = VisionConfig(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12)
    text = LlamaConfig(vocab_size=32064, hidden_size=1024, intermediate_size=2816, num_layers=4, num_heads=16,
                       num_kv_heads=16, head_dim=64)
    return {"bench-v1.5": LlavaConfig(vision, text),
            "bench-v1.6": LlavaConfig(vision, text, image_grid_pinpoints=NEXT_PINPOINTS)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--model-path", help="a llava-hf or original checkpoint folder (default: the shipped LLaVA-1.5)")
    where.add_argument("--preset", help="a named size (llava-v1.5-7b, llava-v1.5-13b, llava-v1.6-vicuna-7b, ...; "
                                        "bench-v1.5 and bench-v1.6 are small ones for CPUs); needs --random-weights")
    parser.add_argument("--random-weights", action="store_true",
                        help="with --preset: random weights (a forward costs the same whatever the weights)")
    parser.add_argument("--methods", nargs="+",
                        help=f"method specs [default: {' '.join(DEFAULT_METHODS)}; NeXT: {' '.join(NEXT_METHODS)}]")
    parser.add_argument("--batch", type=int, default=1, help="samples per generation, each with its own image")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per sample (no stop at EOS)")
    parser.add_argument("--text-tokens", type=int, default=TEXT_TOKENS,
                        help=f"non-image prompt tokens, at least 2: up to {SYSTEM_TOKENS} before the image (LLaVA-1.5's "
                             f"system prompt), the rest (at least one) after it; with the image's visual tokens and "
                             f"--new-tokens within the model's context [default: {TEXT_TOKENS}]")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median and quartiles reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="weights and activations [default: float16 on CUDA, float32 elsewhere]")
    parser.add_argument("--quant", choices=["4bit", "8bit"],
                        help="ours with the decoder's linear layers through bitsandbytes (the references stay unquantised)")
    parser.add_argument("--references", choices=["all", "sdpa", "none"], default="all",
                        help="transformers rows: all (SDPA unpruned, and FastV the released HF way for each FastV method), "
                             "sdpa (the first only: FastV's HF way re-runs the whole sequence for every new token), none")
    parser.add_argument("--no-references", dest="references", action="store_const", const="none",
                        help="the same as --references none")
    parser.add_argument("--json", dest="json_out", metavar="OUT",
                        help="write the result here as JSON, with the table (.md) and the bar chart (.png) beside it")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


# ---- what runs ------------------------------------------------------------------------------------


class StageClock:
    """The time spent inside hooked calls, per stage, in one run: CUDA events on a GPU (read after the run's final
    synchronisation, so timing adds no synchronisation inside the forward), perf_counter elsewhere. Calls are kept in
    the order they ended, so the prefill's share of a stage can be told from the decoding steps'."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.calls: list[tuple[str, object, object]] = []  # (stage, begin, end) in the order the calls ended
        self._open: dict[str, list] = defaultdict(list)

    def reset(self) -> None:
        self.calls.clear()
        self._open.clear()

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self, stage: str) -> None:
        self._open[stage].append(self._mark())

    def stop(self, stage: str) -> None:
        self.calls.append((stage, self._open[stage].pop(), self._mark()))

    def prefill(self, stage: str) -> float:
        """Seconds inside `stage` up to the end of the first "llm" call (the prefill), the device synchronised first."""
        if self.cuda:
            torch.cuda.synchronize()
        total = 0.0
        for name, begin, end in self.calls:
            if name == stage:
                total += begin.elapsed_time(end) / 1000 if self.cuda else end - begin
            if name == "llm":
                break
        return total

    def hook_module(self, module: torch.nn.Module, stage: str) -> list:
        return [module.register_forward_pre_hook(lambda *_: self.start(stage)),
                module.register_forward_hook(lambda *_: self.stop(stage))]

    def wrap(self, obj, attribute: str, stage: str) -> None:
        """Time every call of `obj.attribute` (an instance attribute that shadows the class's)."""
        inner = getattr(obj, attribute)

        def timed(*args, **kwargs):
            self.start(stage)
            try:
                return inner(*args, **kwargs)
            finally:
                self.stop(stage)

        setattr(obj, attribute, timed)


class PeakMemory:
    """The peak memory of what runs inside: CUDA max_memory_allocated, or on CPU the process's peak RSS (VmHWM,
    reset by writing 5 to /proc/self/clear_refs) minus its RSS before; None where neither can be read."""

    def __init__(self, device: torch.device):
        self.device, self.bytes = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.before = _status_kib("VmRSS")
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.before = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        elif self.before is not None:
            peak = _status_kib("VmHWM")
            self.bytes = None if peak is None else max(0, peak - self.before) * 1024


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


@dataclasses.dataclass
class Run:
    """One contestant's one run."""

    times: dict[str, float]
    peak_memory_bytes: int | None
    kv_cache_bytes: int
    visual_tokens: int
    kept_after_layer_k: int
    newline_tokens: int = 0  # LLaVA-NeXT's image_newline tokens among the visual tokens (FastV keeps them all)


class Ours:
    """Our model with one pruning method, generating through `llava.generate.generate` (the pruned KV cache)."""

    def __init__(self, model, spec: str, prompts, images, new_tokens: int, clock: StageClock):
        from llava.model.pruning.base import LayerPruner, VisionPruner

        self.model, self.prompts, self.images, self.new_tokens, self.clock = model, prompts, images, new_tokens, clock
        self.method = model.set_pruning(spec)
        self.name = f"ours, {self.method.spec}"
        self.spec = self.method.spec
        if isinstance(self.method, VisionPruner):
            clock.wrap(self.method, "select_image", "pruning")
        elif isinstance(self.method, LayerPruner):
            clock.wrap(self.method, "select", "pruning")

    def run(self) -> Run:
        from llava.generate import generate

        model = self.model
        model.set_pruning(self.method)
        caches = []
        hooks = [model.language_model.register_forward_hook(lambda _m, _a, out: caches.append(out.cache))]
        try:
            with PeakMemory(model.device) as memory:
                out = generate(model, self.prompts, self.images, max_new_tokens=self.new_tokens, eos_token_id=None)
        finally:
            for hook in hooks:
                hook.remove()
        stats = out.stats
        return Run(
            times=_times(self.clock, out.prefill_s, out.total_s, self.new_tokens),
            peak_memory_bytes=memory.bytes,
            kv_cache_bytes=our_cache_bytes(caches[0]),
            visual_tokens=stats.visual_tokens[0][0],
            kept_after_layer_k=len((stats.kept_in_llm or stats.kept)[0][0]),
            newline_tokens=stats.newline_tokens[0][0],
        )


def our_cache_bytes(cache) -> int:
    """Keys and values of every layer, counting each sample's real tokens in that layer (pruned layers hold fewer)."""
    total = 0
    for layer in cache.layers:
        per_token = 2 * layer.keys.shape[1] * layer.keys.shape[3] * layer.keys.element_size()  # K and V, all kv heads
        total += int(layer.key_mask.sum()) * per_token
    return total


class Transformers:
    """transformers' LLaVA (SDPA, unpruned) generating greedily with its DynamicCache, one forward per token; or, with
    `fastv`, FastV the released HF way (eager attention, attention outputs, selection at layer K, no cache)."""

    def __init__(self, hf, inputs: dict, new_tokens: int, clock: StageClock, image_token: int,
                 fastv: tuple[int, int] | None = None):
        self.hf, self.inputs, self.new_tokens, self.clock = hf, inputs, new_tokens, clock
        self.image_token, self.fastv = image_token, fastv
        if fastv is None:
            self.name, self.spec = REFERENCE, None
        else:
            self.name, self.spec = f"transformers FastV (eager, attention outputs, no cache), k={fastv[0]}, keep={fastv[1]}", None

    def run(self) -> Run:
        hf, device = self.hf, self.inputs["input_ids"].device
        hf.set_attn_implementation("eager" if self.fastv else "sdpa")
        hooks = _hf_fastv_hooks(hf, self.fastv, self.inputs["input_ids"], self.image_token, self.clock) if self.fastv else []
        ids, mask = self.inputs["input_ids"], self.inputs["attention_mask"]
        pixels = {k: v for k, v in self.inputs.items() if k not in ("input_ids", "attention_mask")}
        try:
            with PeakMemory(device) as memory, torch.inference_mode():
                start = _synchronized(device)
                if self.fastv:  # no cache: every token re-runs the whole sequence, image included, and re-selects
                    out = hf(input_ids=ids, attention_mask=mask, **pixels, use_cache=False, output_attentions=True,
                             logits_to_keep=1)
                else:
                    out = hf(input_ids=ids, attention_mask=mask, **pixels, use_cache=True, logits_to_keep=1)
                token = out.logits[:, -1].argmax(-1)
                ttft = _synchronized(device) - start
                cache = out.past_key_values
                kv_bytes = _hf_cache_bytes(cache) if cache is not None else 0  # FastV's HF path keeps none
                for _ in range(self.new_tokens - 1):
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                    if self.fastv:
                        ids = torch.cat([ids, token[:, None]], dim=1)
                        out = hf(input_ids=ids, attention_mask=mask, **pixels, use_cache=False, output_attentions=True,
                                 logits_to_keep=1)
                    else:
                        out = hf(input_ids=token[:, None], attention_mask=mask, past_key_values=cache, use_cache=True,
                                 logits_to_keep=1)
                        cache = out.past_key_values
                    token = out.logits[:, -1].argmax(-1)
                total = _synchronized(device) - start
        finally:
            for hook in hooks:
                hook.remove()
            hf.set_attn_implementation("sdpa")
        visual = int((self.inputs["input_ids"][0] == self.image_token).sum())
        return Run(times=_times(self.clock, ttft, total, self.new_tokens), peak_memory_bytes=memory.bytes,
                   kv_cache_bytes=kv_bytes, visual_tokens=visual,
                   kept_after_layer_k=self.fastv[1] if self.fastv else visual)


def _times(clock: StageClock, ttft: float, total: float, new_tokens: int) -> dict[str, float]:
    """The run's times; vision, pruning and LLM are the prefill's (FastV's reference re-runs them every token)."""
    return {"vision_s": clock.prefill("vision"), "pruning_s": clock.prefill("pruning"), "prefill_s": clock.prefill("llm"),
            "ttft_s": ttft, "decode_s_per_token": (total - ttft) / max(1, new_tokens - 1), "e2e_s": total}


def _synchronized(device: torch.device) -> float:
    from llava.generate import synchronized_time

    return synchronized_time(device)


def _hf_cache_bytes(cache) -> int:
    return sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
               for layer in cache.layers)


def _hf_fastv_hooks(hf, fastv: tuple[int, int], input_ids: torch.Tensor, image_token: int, clock: StageClock) -> list:
    """Hooks that make transformers' decoder do FastV as its released HF code does: layer K-1's attention
    probabilities (eager, returned because attention outputs are on) rank the image tokens by the last query row,
    mean over heads; layers K.. run on the kept tokens, their position embeddings and causal mask gathered to them.
    Each sample is ranked on its own row (the released code uses row 0 for the whole batch). Needs equal prompt
    lengths in the batch (the benchmark's prompts are)."""
    k, keep = fastv
    layers = hf.model.language_model.layers
    state: dict = {}

    def capture(_module, _args, output):
        state["attention"] = output[1]  # (B, H, N, N)

    def prune(index):
        def hook(_module, args, kwargs):
            hidden = args[0]
            if index == k:
                clock.start("pruning")
                row = state.pop("attention")[:, :, -1].float().mean(dim=1)  # (B, N)
                image = (state["ids"] == image_token)[:, : row.shape[1]]
                top = row.masked_fill(~image, float("-inf")).topk(keep, dim=-1).indices  # (B, keep)
                kept = (~image).clone()  # the text, the last token (the query) among it
                kept.scatter_(1, top, True)
                state["index"] = kept.nonzero()[:, 1].view(hidden.shape[0], -1)  # (B, N')
                # The kept tokens' rotary embeddings, positions and causal mask, gathered once for layers K..
                index_kept, B = state["index"], hidden.shape[0]
                gather = lambda t: t.expand(B, -1, -1).gather(1, index_kept[..., None].expand(-1, -1, t.shape[-1]))
                cos, sin = kwargs["position_embeddings"]
                state["kwargs"] = {"position_embeddings": (gather(cos), gather(sin))}
                if kwargs.get("position_ids") is not None:
                    state["kwargs"]["position_ids"] = kwargs["position_ids"].expand(B, -1).gather(1, index_kept)
                mask = kwargs.get("attention_mask")
                if mask is not None:
                    mask = mask.expand(B, -1, -1, -1).gather(2, index_kept[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[-1]))
                    state["kwargs"]["attention_mask"] = mask.gather(3, index_kept[:, None, None, :].expand(-1, mask.shape[1], mask.shape[2], -1))
                hidden = hidden.gather(1, index_kept[..., None].expand(-1, -1, hidden.shape[-1]))
                clock.stop("pruning")
            kwargs.update(state["kwargs"])
            return (hidden, *args[1:]), kwargs
        return hook

    def record_ids(_module, _args, kwargs):
        state["ids"] = kwargs["input_ids"]

    hooks = [hf.register_forward_pre_hook(record_ids, with_kwargs=True),
             layers[k - 1].self_attn.register_forward_hook(capture)]
    hooks += [layers[index].register_forward_pre_hook(prune(index), with_kwargs=True) for index in range(k, len(layers))]
    return hooks


# ---- building the contestants --------------------------------------------------------------------


def check_options(preset, random_weights, model_path, methods, batch, new_tokens, text_tokens, repeats, warmup, device,
                  json_out):
    """Refuse bad options with one InputError before a model is built; the device, checked against this machine."""
    from fastv.paths import check_output_file
    from llava.device import resolve_device
    from llava.errors import InputError, check_at_least
    from llava.model.llava_arch import LLAVA_PRESETS
    from llava.model.pruning.registry import parse_method

    for name, value, least in [("--batch", batch, 1), ("--new-tokens", new_tokens, 1), ("--text-tokens", text_tokens, 2),
                               ("--repeats", repeats, 1), ("--warmup", warmup, 0)]:
        check_at_least(name, value, least)
    for spec in methods or ():
        parse_method(spec)
    if preset is not None:
        known = {**LLAVA_PRESETS, **bench_presets()}
        if preset not in known:
            raise InputError(f"unknown preset '{preset}' (available: {', '.join(known)})")
        if not random_weights:
            raise InputError("--preset builds a model of that size without weights: add --random-weights")
    elif random_weights:
        raise InputError("--random-weights is for --preset (a checkpoint brings its own weights)")
    if json_out is not None:
        check_output_file("--json", json_out, ".md", ".png", what="the JSON file")  # the table and chart go beside it
    return resolve_device(device)


def model_config(preset: str | None, model_path: str | None):
    """The LlavaConfig of the preset, or of the checkpoint's config.json (no weights read)."""
    from llava.model.builder import read_checkpoint
    from llava.model.llava_arch import LLAVA_PRESETS

    if preset is not None:
        return {**LLAVA_PRESETS, **bench_presets()}[preset]
    return read_checkpoint(model_path).config


def unpruned_visual_tokens(config, image_size: tuple[int, int]) -> int:
    """The visual tokens an image of `image_size` = (height, width) sends into the LLM unpruned: LLaVA-1.5's
    patches, or LLaVA-NeXT's base view and crops of the best pinpoint in `config.patch_merge`'s layout."""
    from llava.mm_utils import select_best_resolution
    from llava.model.anyres import anyres_layout

    if not config.anyres:
        return config.vision.num_patches
    side = config.vision.image_size
    height, width = select_best_resolution(image_size, config.image_grid_pinpoints)
    return len(anyres_layout((height // side, width // side), config.vision.grid_size, image_size, config.patch_merge))


def check_prompt_fits(config, text_tokens: int, image_size: tuple[int, int], new_tokens: int) -> None:
    """InputError unless `text_tokens` non-image tokens, the image's visual tokens unpruned (what every method
    is compared with) and `new_tokens` new ones fit the model's context, as generation requires (a prompt of
    L tokens gets at most context - L new ones). `fastv bench` and `fastv flops` check this before any work."""
    from llava.errors import InputError

    visual = unpruned_visual_tokens(config, image_size)
    context = config.text.max_position_embeddings
    if text_tokens + visual + new_tokens > context:
        raise InputError(f"--text-tokens {text_tokens}: {text_tokens} text tokens, the image's {visual} visual tokens "
                         f"(unpruned) and {new_tokens} new token(s) do not fit the model's context of {context} tokens")


def bench_image_side(config) -> int:
    """The side in pixels of the benchmark's square random images: one view, or NeXT's 2x2 crop grid."""
    return 2 * config.vision.image_size if config.anyres else config.vision.image_size


def random_models(preset: str, device: torch.device, dtype: torch.dtype):
    """(ours, transformers' reference) of a preset's size sharing one set of random weights, built on the target device."""
    import transformers

    from llava.model.builder import KEY_RULES, _normalise, check_weights
    from llava.model.hf_layout import hf_config
    from llava.model.language_model.llava_llama import rope_inverse_frequencies
    from llava.model.llava_arch import LLAVA_PRESETS, LlavaForCausalLM

    config = {**LLAVA_PRESETS, **bench_presets()}[preset]
    raw = hf_config(config, image_token_index=config.text.vocab_size - 1)
    raw["text_config"]["pad_token_id"] = 0
    hf_class = transformers.LlavaNextForConditionalGeneration if config.anyres else transformers.LlavaForConditionalGeneration
    hf_config_object = (transformers.LlavaNextConfig if config.anyres else transformers.LlavaConfig)(**raw)
    torch.manual_seed(0)
    with torch.device(device):
        hf = hf_class._from_config(hf_config_object, torch_dtype=dtype, attn_implementation="sdpa")
    hf.eval().requires_grad_(False)
    with torch.device("meta"):
        ours = LlavaForCausalLM(config)
    weights = _normalise(dict(hf.state_dict()), KEY_RULES)
    weights = {k: v for k, v in weights.items() if k in ours.state_dict()}  # transformers' buffers are not weights
    check_weights(ours, weights, preset)
    ours.load_state_dict(weights, assign=True)  # the same tensors: one copy of the weights
    ours.language_model.inv_freq = rope_inverse_frequencies(config.text).to(device)
    ours.eval().requires_grad_(False)
    return ours, hf, raw["image_token_index"]


def checkpoint_models(model_path: str, device: torch.device, dtype: torch.dtype, quant: str | None, references: bool):
    """(ours, transformers' reference or None, image token id) of a checkpoint folder."""
    import transformers

    from llava.model.builder import load_pretrained_model, read_checkpoint

    _, ours, _, _ = load_pretrained_model(model_path, device=device, dtype=dtype, load_4bit=quant == "4bit",
                                          load_8bit=quant == "8bit")
    raw = json.loads((read_checkpoint(model_path).folder / "config.json").read_text())
    image_token = raw.get("image_token_index", raw.get("image_token_id"))
    hf = None
    if references and image_token is not None:  # a llava-hf folder; an original-layout one has no transformers class
        hf_class = transformers.LlavaNextForConditionalGeneration if ours.config.anyres else transformers.LlavaForConditionalGeneration
        hf = hf_class.from_pretrained(model_path, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    return ours, hf, image_token


def make_inputs(model, batch: int, text_tokens: int, image_token: int | None, device: torch.device, dtype: torch.dtype):
    """(our prompts and images, transformers' inputs or None): one prompt, a different random image per sample."""
    import numpy as np
    from PIL import Image

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import ImageProcessor
    from llava.model.anyres import anyres_layout

    config = model.config
    vocab = config.text.vocab_size
    before = min(SYSTEM_TOKENS, text_tokens - 1)  # at least one token after the image: the query FastV ranks by
    words = [3 + (7 * i) % (vocab - 4) for i in range(text_tokens)]  # fixed ids, clear of BOS/EOS/pad and the image id
    words = [w if w != image_token else w - 1 for w in words]
    prompt = [1] + words[1:before] + [IMAGE_TOKEN_INDEX] + words[before:]
    processor = ImageProcessor(image_size=config.vision.image_size, image_grid_pinpoints=config.image_grid_pinpoints)
    side = bench_image_side(config)
    pictures = [Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))
                for seed in range(batch)]
    images = processor(pictures)
    if config.anyres:
        images = [dataclasses.replace(im, pixel_values=im.pixel_values.to(device, dtype)) for im in images]
        visual = len(anyres_layout(images[0].grid, config.vision.grid_size, images[0].image_size, config.patch_merge))
        hf_pixels = {"pixel_values": torch.stack([im.pixel_values for im in images]),
                     "image_sizes": torch.tensor([im.image_size for im in images], device=device)}
    else:
        images = images.to(device, dtype)
        visual = config.vision.num_patches
        hf_pixels = {"pixel_values": images}
    hf_inputs = None
    if image_token is not None:
        at = prompt.index(IMAGE_TOKEN_INDEX)
        ids = torch.tensor([prompt[:at] + [image_token] * visual + prompt[at + 1:]] * batch, device=device)
        hf_inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **hf_pixels}
    return [prompt] * batch, images, hf_inputs


# ---- the benchmark -------------------------------------------------------------------------------


def main(
    preset: str | None = None,
    random_weights: bool = False,
    model_path: str | None = None,
    methods: list[str] | None = None,
    batch: int = 1,
    new_tokens: int = 16,
    text_tokens: int = TEXT_TOKENS,
    repeats: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    dtype: str | None = None,
    quant: str | None = None,
    references: str = "all",
    json_out: str | None = None,
    progress: bool = True,
) -> dict:
    from fastv.cli import model_or_shipped
    from llava.device import default_dtype

    dev = check_options(preset, random_weights, model_path, methods, batch, new_tokens, text_tokens, repeats, warmup,
                        device, json_out)
    if preset is None:
        model_path = model_or_shipped(model_path)
    config = model_config(preset, model_path)
    side = bench_image_side(config)
    check_prompt_fits(config, text_tokens, (side, side), new_tokens)
    torch_dtype = getattr(torch, dtype) if dtype else default_dtype(dev)
    if preset is not None:
        ours, hf, image_token = random_models(preset, dev, torch_dtype)
        if quant:  # quantising random weights costs what quantising real ones does
            from llava.model.quantization import quantize_language_model

            quantize_language_model(ours, bits=4 if quant == "4bit" else 8, device=dev, compute_dtype=torch_dtype)
        model_name = f"{preset} (random weights{', ' + quant if quant else ''})"
    else:
        ours, hf, image_token = checkpoint_models(model_path, dev, torch_dtype, quant, references != "none")
        model_name = Path(model_path).name + (f" ({quant})" if quant else "")
    if references == "none":
        hf = None
    methods = list(methods or (NEXT_METHODS if ours.config.anyres else DEFAULT_METHODS))
    for spec in methods:
        ours.set_pruning(spec)  # every method validated against the model before anything is timed
    prompts, images, hf_inputs = make_inputs(ours, batch, text_tokens, image_token if hf is not None else None, dev,
                                             torch_dtype)

    clock = StageClock(dev)
    clock.hook_module(ours.vision_tower, "vision")
    clock.hook_module(ours.language_model, "llm")
    contestants = [Ours(ours, spec, prompts, images, new_tokens, clock) for spec in methods]
    if hf is not None:
        clock.hook_module(hf.model.vision_tower, "vision")
        clock.hook_module(hf.model.language_model, "llm")
        contestants.append(Transformers(hf, hf_inputs, new_tokens, clock, image_token))
    if hf is not None and references == "all":  # FastV the HF way beside each of our FastV rows
        for contestant in [c for c in contestants if isinstance(c, Ours) and c.spec.startswith("fastv:")]:
            kept = contestant.run()  # what ours keeps after layer k, newline tokens included: the same work
            contestants.append(Transformers(hf, hf_inputs, new_tokens, clock, image_token,
                                            fastv=(contestant.method.args.k, kept.kept_after_layer_k + kept.newline_tokens)))
    runs: dict[str, list[Run]] = {c.name: [] for c in contestants}
    bar = _progress((warmup + repeats) * len(contestants), progress)
    for round_ in range(warmup + repeats):
        for contestant in contestants:
            clock.reset()
            run = contestant.run()
            if round_ >= warmup:
                runs[contestant.name].append(run)
            bar.update(1)
    bar.close()
    ours.set_pruning("none")

    rows = [summarise(name, spec, r, batch, new_tokens) for (name, r), spec in
            zip(runs.items(), [c.spec for c in contestants])]
    add_ratios(rows)
    result = {"machine": machine(dev), "torch": torch.__version__, "model": model_name, "dtype": str(torch_dtype).split(".")[1],
              "batch": batch, "new_tokens": new_tokens, "text_tokens": text_tokens, "repeats": repeats, "warmup": warmup,
              "rows": rows}
    write_result(json_out, result, to_markdown(result))
    if json_out:
        plot(result, Path(json_out).with_suffix(".png"))
    return result


def summarise(name: str, spec: str | None, runs: list[Run], batch: int, new_tokens: int) -> dict:
    row = {"method": name, "spec": spec, "visual_tokens": runs[0].visual_tokens,
           "kept_after_layer_k": runs[0].kept_after_layer_k, "new_tokens": new_tokens}
    for field in TIME_FIELDS:
        values = [r.times[field] for r in runs]
        row[field] = statistics.median(values)
        row[f"{field}_iqr"] = _quartiles(values)
    row["answers_per_s"] = batch / row["e2e_s"]
    row["tokens_per_s"] = batch * new_tokens / row["e2e_s"]  # generated tokens (HiRED's "token throughput")
    memory = [r.peak_memory_bytes for r in runs if r.peak_memory_bytes is not None]
    row["peak_memory_bytes"] = int(statistics.median(memory)) if memory else None
    row["kv_cache_bytes"] = runs[0].kv_cache_bytes
    return row


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def add_ratios(rows: list[dict]) -> None:
    """Each row's TTFT, prefill, decode and e2e over ours unpruned and over transformers unpruned (same run)."""
    bases = {"ours_unpruned": next((r for r in rows if r["spec"] == "none"), None),
             "transformers": next((r for r in rows if r["method"] == REFERENCE), None)}
    for row in rows:
        for label, base in bases.items():
            if base is None:
                continue
            for field, short in RATIOS.items():
                row[f"{short}_vs_{label}"] = row[field] / base[field] if base[field] else None


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="run", desc="fastv bench", file=sys.stderr, dynamic_ncols=True, disable=not enabled)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def write_result(out: str | None, result: dict, table: str, echo: bool = True) -> None:
    """Print a benchmark's Markdown table (unless not `echo`); with `out`, write the result as JSON there and the
    table beside it."""
    if echo:
        print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        Path(out).with_suffix(".md").write_text(table + "\n")


def to_markdown(result: dict) -> str:
    ms = lambda s: f"{s * 1000:.1f}"
    ratio = lambda r, key: "" if r.get(key) is None else f"{r[key]:.3f}"
    mib = lambda b: "" if b is None else f"{b / 2**20:.0f}"
    lines = [
        f"{result['model']}, batch {result['batch']}, {result['dtype']}, {result['text_tokens']} text tokens + the image, "
        f"{result['new_tokens']} new tokens; median of {result['repeats']} on {result['machine']} (torch {result['torch']})",
        "",
        "| method | visual tokens | kept after layer k | vision (ms) | pruning (ms) | LLM prefill (ms) | TTFT (ms) "
        "| TTFT / ours unpruned | TTFT / transformers | decode per token (ms) | decode / ours unpruned | decode / transformers "
        "| answers/s | peak memory (MiB) | KV cache (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['method']} | {r['visual_tokens']} | {r['kept_after_layer_k']} | {ms(r['vision_s'])} | {ms(r['pruning_s'])} "
            f"| {ms(r['prefill_s'])} | {ms(r['ttft_s'])} | {ratio(r, 'ttft_vs_ours_unpruned')} | {ratio(r, 'ttft_vs_transformers')} "
            f"| {ms(r['decode_s_per_token'])} | {ratio(r, 'decode_vs_ours_unpruned')} "
            f"| {ratio(r, 'decode_vs_transformers')} | {r['answers_per_s']:.2f} | {mib(r['peak_memory_bytes'])} "
            f"| {mib(r['kv_cache_bytes'])} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Bars of TTFT and decode time per token, one per contestant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [r["method"].replace("ours, ", "").replace("transformers", "HF") for r in rows]
    figure, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.8))
    for axis, field, title in ((axes[0], "ttft_s", "time to first token (ms)"),
                               (axes[1], "decode_s_per_token", "decode, per token (ms)")):
        values = [1000 * r[field] for r in rows]
        colours = ["tab:gray" if r["spec"] is None else "tab:blue" for r in rows]
        axis.barh(range(len(rows)), values, color=colours)
        axis.set_yticks(range(len(rows)))
        axis.set_yticklabels(names if axis is axes[0] else [""] * len(rows), fontsize=8)
        axis.invert_yaxis()
        axis.set_title(title, fontsize=10)
        for i, value in enumerate(values):
            axis.text(value, i, f" {value:.1f}", va="center", fontsize=7)
    figure.suptitle(f"{result['model']}, batch {result['batch']}, {result['dtype']}, {result['machine']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
