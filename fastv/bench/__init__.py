"""`fastv bench`: what pruning buys in wall-clock time and memory, beside the references a user would otherwise run.

    fastv bench --preset llava-v1.5-13b --random-weights --device cuda --dtype float16 --json results/X/bench.json
    fastv bench --model-path checkpoints/llava-v1.6-vicuna-7b --methods none hired:rate=0.2 --json bench.json
    fastv bench --preset bench-v1.5 --random-weights --json bench.json     (a small random LLaVA, for CPUs)
    fastv bench --preset video-llava-7b --random-weights --device cuda --json results/X/video.json   (Video-LLaVA)

Every contestant generates `--new-tokens` tokens (no stop at EOS) for the same batch: the same prompt (`--text-tokens`
non-image tokens around one image) with a different random image per sample, so that every sample keeps its own
tokens. The contestants are ours with each method of `--methods`, and (`--references`, all by default) transformers'
`LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration` with SDPA, unpruned, and, for each FastV method,
FastV the way its released HF code requires: eager attention in every layer, attention outputs on, the top image
tokens of layer K-1's last row kept from layer K on, and no KV cache (each new token re-runs and re-selects over the
whole sequence), with as many image tokens as ours keeps. On Video-LLaVA (`video-llava-7b`, the CPU-sized `bench-video-llava`, or a
checkpoint with a video tower) every sample is a video of 8 random frames instead of an image, the reference is
`VideoLlavaForConditionalGeneration`, and the default methods are FastV's video claim (K=2, R=50% over the whole
video: "up to 25%" latency reduction, its README) and FasterVLM at 25/50/75/90/95% of each frame's patches. A `--preset` with `--random-weights` is built on the
meta device and materialised on the target device (transformers' random init, shared with ours: one copy of the
weights, never an fp32 copy on the host); a forward costs the same whatever the weights.

Per contestant (JSON row fields; medians over `--repeats`, and `<field>_iqr` = [25th, 75th percentile]):
    vision_s            the vision tower's forward (the prefill's: FastV's reference re-runs it for every token)
    pruning_s           time inside the method's selection at prefill (`select_image` and `select_laid_out` before the LLM, each stage's `cut`
                        inside it, the attention rows it reads included); pruning_share_of_ttft = pruning_s / ttft_s
    tokens_per_layer_mean  the prompt's tokens each decoder layer ran on at prefill, averaged over the layers
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

# The command: its options, their checks and the rounds. What it times and how lives beside it, in the package:
# timing.py (clocks, memory, a run's times), contestants.py (ours, transformers, the models and inputs),
# output.py (rows, ratios, table and chart).

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fastv.bench.contestants import bench_image_side, bench_presets, checkpoint_models, line_up, make_inputs, random_models
from fastv.bench.output import add_ratios, plot, summarise, to_markdown
from fastv.bench.timing import Run, StageClock, machine
from fastv.output import write_result
from fastv.prompt import SYSTEM_TOKENS, TEXT_TOKENS, check_prompt_fits
from fastv.shipped import model_or_shipped

DEFAULT_METHODS = ("none", "fastv:k=2,ratio=0.5", "fastervlm:keep=58")
NEXT_METHODS = ("none", "fastv:k=2,ratio=0.5", "fastervlm:keep=29", "hired:rate=0.2", "hired:rate=0.1", "prumerge+")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--model-path", help="a llava-hf or original checkpoint folder (default: the shipped LLaVA-1.5)")
    where.add_argument("--preset", help="a named size (llava-v1.5-7b, llava-v1.5-13b, llava-v1.6-vicuna-7b, ...; "
                                        "bench-v1.5 and bench-v1.6 are small ones for CPUs); needs --random-weights")
    parser.add_argument("--random-weights", action="store_true",
                        help="with --preset: random weights (a forward costs the same whatever the weights)")
    parser.add_argument("--methods", nargs="+",
                        help=f"method specs [default: {' '.join(DEFAULT_METHODS)}; NeXT: {' '.join(NEXT_METHODS)}; "
                             "Video-LLaVA: none fastv:k=2,ratio=0.5 and fastervlm at 25/50/75/90/95%% of each frame's patches]")
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
    """Time every contestant on the same batch (the module's docstring says what and how); print the table, and with
    `json_out` write the result there with the table and the chart beside it."""
    from llava.device import default_dtype

    dev = check_options(preset, random_weights, model_path, methods, batch, new_tokens, text_tokens, repeats, warmup,
                        device, json_out)
    if preset is None:
        model_path = model_or_shipped(model_path)
    config = model_config(preset, model_path)
    side = bench_image_side(config)
    check_prompt_fits(config, text_tokens, None if config.video is not None else (side, side), new_tokens)
    torch_dtype = getattr(torch, dtype) if dtype else default_dtype(dev)
    ours, hf, image_token, model_name = models(preset, model_path, dev, torch_dtype, quant, references)
    if ours.config.video is not None:
        from fastv.flops_table import video_methods

        defaults = video_methods(ours.config)
    else:
        defaults = NEXT_METHODS if ours.config.anyres else DEFAULT_METHODS
    methods = list(methods or defaults)
    for spec in methods:
        ours.set_pruning(spec)  # every method validated against the model before anything is timed
    prompts, images, hf_inputs = make_inputs(ours, batch, text_tokens, image_token if hf is not None else None, dev,
                                             torch_dtype)
    contestants = line_up(ours, hf, methods, prompts, images, hf_inputs, new_tokens, image_token, references,
                          StageClock(dev))
    runs = race(contestants, warmup, repeats, progress)
    ours.set_pruning("none")

    rows = [summarise(name, spec, r, batch, new_tokens) for (name, r), spec in
            zip(runs.items(), [c.spec for c in contestants])]
    add_ratios(rows)
    result = {"machine": machine(dev), "torch": torch.__version__, "model": model_name, "dtype": str(torch_dtype).split(".")[1],
              "visual": "video" if ours.config.video is not None else "image", "batch": batch, "new_tokens": new_tokens,
              "text_tokens": text_tokens, "repeats": repeats, "warmup": warmup,
              "rows": rows}
    write_result(json_out, result, to_markdown(result))
    if json_out:
        plot(result, Path(json_out).with_suffix(".png"))
    return result


def models(preset: str | None, model_path: str | None, device: torch.device, dtype: torch.dtype, quant: str | None,
           references: str):
    """(ours, transformers' reference or None, image token id, the name the result gives the model)."""
    if preset is not None:
        ours, hf, image_token = random_models(preset, device, dtype)
        if quant:  # quantising random weights costs what quantising real ones does
            from llava.model.quantization import quantize_language_model

            quantize_language_model(ours, bits=4 if quant == "4bit" else 8, device=device, compute_dtype=dtype)
        model_name = f"{preset} (random weights{', ' + quant if quant else ''})"
    else:
        ours, hf, image_token = checkpoint_models(model_path, device, dtype, quant, references != "none")
        model_name = Path(model_path).name + (f" ({quant})" if quant else "")
    return ours, None if references == "none" else hf, image_token, model_name


def race(contestants: list, warmup: int, repeats: int, progress: bool) -> dict[str, list[Run]]:
    """Each contestant's timed runs: `warmup` untimed rounds, then `repeats` rounds in which every contestant runs
    once, in turn, so drift in the machine's speed hits all alike."""
    from tqdm import tqdm

    runs: dict[str, list[Run]] = {c.name: [] for c in contestants}
    bar = tqdm(total=(warmup + repeats) * len(contestants), unit="run", desc="fastv bench", file=sys.stderr,
               dynamic_ncols=True, disable=not progress)
    for round_ in range(warmup + repeats):
        for contestant in contestants:
            contestant.clock.reset()
            run = contestant.run()
            if round_ >= warmup:
                runs[contestant.name].append(run)
            bar.update(1)
    bar.close()
    return runs
