"""`fastv flops`: analytic FLOPs of the vision tower, projector and LLM (prefill and per decoded token)
of every method, from the sequence lengths a real forward ran on (`fastv/flops.py` says what is counted).

    fastv flops                                         # the shipped model, its example image
    fastv flops --model-path checkpoints/llava-v1.5-7b --image view.jpg
    fastv flops --preset llava-v1.5-13b --methods none fastv:k=2,ratio=0.5 --formula paper
    fastv flops --preset llava-v1.5-13b --method fastv:k=2,ratio=0.5 --formula paper --json   # one JSON object

A checkpoint is run as it is. A `--preset` (llava/model/llava_arch.py) is counted at its real widths, with
the sequence lengths of a forward of a narrow stand-in: the preset's depths, image size, patch grid and
pinpoints with tiny random widths (what a method keeps depends on the token grid, not on the widths;
adaptive methods such as PruMerge keep what random weights make them keep, so their row is marked).
The prompt has `--text-tokens` non-image tokens: LLaVA-1.5's 35 system and `USER:` tokens before the image
and the rest (a short question: 20 by default) after it. `--formula measured` counts every matmul of the
sequence lengths the forward ran on; `--formula paper` counts the LLM by FastV's F(n) (METHODS.md) instead.

`--method SPEC --json` prints one JSON object for that method: `vision`, `projector`, `llm_prefill`,
`llm_decode_per_token`, `total_prefill` (FLOPs, 2 per multiply-add, as torch's FlopCounterMode counts) and
`reduction_llm_prefill` (1 - its LLM prefill / the unpruned one's, on the same input), with `visual_tokens`,
`kept_after_layer_k` and the layers' `seq_lens`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastv.flops import count, paper_llm_flops
from fastv.latency import write_result

DEFAULT_METHODS = ("none", "fastv:k=2,ratio=0.5", "fastervlm:keep=58", "hired:rate=0.2", "prumerge+")
SYSTEM_TOKENS = 35  # LLaVA-1.5's vicuna_v1 system prompt and "USER:", before the image
TEXT_TOKENS = SYSTEM_TOKENS + 20  # and a short question after it
ADAPTIVE = ("prumerge", "prumerge+")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--model-path", help="checkpoint folder (default: the shipped model)")
    where.add_argument("--preset", help="a named size with its real widths, e.g. llava-v1.5-13b, llava-v1.6-vicuna-7b")
    parser.add_argument("--image", help="image file (default: docs/examples/shapes.png; a 672x672 random image for NeXT presets)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--method", help="one method spec: with --json, one JSON object for it (and its reduction)")
    which.add_argument("--methods", nargs="+", help=f"method specs for the table [default: {' '.join(DEFAULT_METHODS)}]")
    parser.add_argument("--text-tokens", type=int, default=TEXT_TOKENS,
                        help=f"non-image prompt tokens: LLaVA-1.5's system prompt and USER: ({SYSTEM_TOKENS}, before the "
                             f"image), the rest after it [default: {TEXT_TOKENS}, the system prompt and a 20-token question]")
    parser.add_argument("--formula", choices=["measured", "paper"], default="measured",
                        help="how the LLM is counted: measured (every matmul over the real sequence lengths) or FastV's "
                             "paper formula F(n)")
    parser.add_argument("--json", dest="as_json", action="store_true",
                        help="print one JSON object (with --method: that method's fields; else the table's rows)")
    parser.add_argument("--out", help="also write the table as JSON here (and Markdown beside it)")


def stand_in(config):
    """The preset's depths and token grid with tiny widths: a model whose forward gives the preset's lengths."""
    from llava.model.llava_arch import LlavaForCausalLM

    vision = dataclasses.replace(config.vision, hidden_size=32, intermediate_size=64, num_heads=2)
    text = dataclasses.replace(config.text, hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=2, head_dim=32)
    torch.manual_seed(0)
    return LlavaForCausalLM(dataclasses.replace(config, vision=vision, text=text)).eval()


def load(model_path: str | None, preset: str | None):
    """(model that runs, config counted at, image processor, the name the table gives it)."""
    from llava.errors import InputError
    from llava.mm_utils import ImageProcessor
    from llava.model.builder import load_pretrained_model
    from llava.model.llava_arch import LLAVA_PRESETS

    if preset is not None:
        if preset not in LLAVA_PRESETS:
            raise InputError(f"unknown preset '{preset}' (available: {', '.join(LLAVA_PRESETS)})")
        config = LLAVA_PRESETS[preset]
        processor = ImageProcessor(image_size=config.vision.image_size, image_grid_pinpoints=config.image_grid_pinpoints)
        return stand_in(config), config, processor, preset
    from fastv.cli import model_or_shipped

    model_path = model_or_shipped(model_path)
    _, model, processor, _ = load_pretrained_model(model_path)
    return model, model.config, processor, Path(model_path).name


def measure(model, config, processor, picture: Image.Image, methods: list[str], text_tokens: int, formula: str) -> list[dict]:
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.model.pruning.base import VisionPruner

    images = processor([picture])
    if isinstance(images, torch.Tensor):
        images = images.to(model.device)
    vocab = config.text.vocab_size
    before = min(SYSTEM_TOKENS, text_tokens)
    prompt = [1] + [100 % vocab] * (before - 1) + [IMAGE_TOKEN_INDEX] + [200 % vocab] * (text_tokens - before)
    rows = []
    for spec in methods:
        method = model.set_pruning(spec)
        with torch.inference_mode():
            stats = model([prompt], images).stats
        seq_lens = stats.seq_lens[0]
        grid = stats.partition_grid[0][0]
        views = 1 + grid[0] * grid[1]
        visual, newline = stats.visual_tokens[0][0], stats.newline_tokens[0][0]
        selected_first = isinstance(method, VisionPruner) and method.before_projector
        projected = visual - newline if selected_first else views * config.vision.num_patches
        flops = count(config, method, seq_lens, views, projected)
        if formula == "paper":
            flops.llm_prefill = paper_llm_flops(seq_lens, config.text.hidden_size, config.text.intermediate_size)
        kept = len((stats.kept_in_llm or stats.kept)[0][0])
        rows.append({"method": method.spec, "visual_tokens": visual, "kept_after_layer_k": kept,
                     "seq_lens": seq_lens, **flops.as_dict()})
    model.set_pruning("none")
    base = next((r for r in rows if r["method"] == "none"), None)
    for row in rows:
        if base:
            for part in ("llm_prefill", "prefill", "decode_per_token"):
                row[f"{part}_vs_none"] = row[part] / base[part]
    return rows


def to_markdown(result: dict) -> str:
    scale, unit = (1e9, "G") if max(r["prefill"] for r in result["rows"]) >= 1e10 else (1e6, "M")
    g = lambda x: f"{x / scale:.2f}"
    lines = [f"FLOPs ({unit}) of {result['model']}, prompt {result['prompt']}, LLM by the {result['formula']} count", "",
             "| method | visual tokens | kept after layer k | vision | projector | LLM prefill | prefill | / none | LLM / none | decode per token | / none |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        ratio = lambda part: f"{row[part + '_vs_none']:.3f}" if part + "_vs_none" in row else ""
        mark = " (†)" if row["method"].split(":")[0] in ADAPTIVE and result.get("stand_in") else ""
        lines.append(f"| {row['method']}{mark} | {row['visual_tokens']} | {row['kept_after_layer_k']} | {g(row['vision'])} | "
                     f"{g(row['projector'])} | {g(row['llm_prefill'])} | {g(row['prefill'])} | {ratio('prefill')} | "
                     f"{ratio('llm_prefill')} | {g(row['decode_per_token'])} | {ratio('decode_per_token')} |")
    if result.get("stand_in"):
        lines += ["", "Sequence lengths from a narrow random stand-in of the preset (its depths and token grid); "
                      "(†) an adaptive method: its count is what random weights give."]
    return "\n".join(lines)


def main(model_path=None, preset=None, image=None, method=None, methods=None, text_tokens=TEXT_TOKENS,
         formula="measured", as_json=False, out=None) -> dict:
    """The table of `methods` (printed, and with `out` written); with `method`, that method's FLOPs and its LLM
    prefill's reduction against the unpruned model (as one JSON object with `as_json`)."""
    import json

    from llava.errors import check_at_least
    from llava.mm_utils import load_image
    from llava.model.pruning.registry import parse_method

    check_at_least("--text-tokens", text_tokens, 1)
    methods = ["none", method] if method is not None else list(methods or DEFAULT_METHODS)
    for spec in methods:
        parse_method(spec)
    model, config, processor, name = load(model_path, preset)
    if image is not None:
        picture = load_image(image)
    elif preset is not None:
        side = 672 if config.anyres else config.vision.image_size
        picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))
    else:
        picture = load_image("docs/examples/shapes.png")
    rows = measure(model, config, processor, picture, methods, text_tokens, formula)
    prompt = f"{text_tokens} text tokens + image ({picture.width}x{picture.height})"
    if method is not None:
        result = one_method(rows[-1], name, prompt, text_tokens, formula)
        print(json.dumps(result) if as_json else "\n".join(f"{k}: {v}" for k, v in result.items() if k != "seq_lens"))
        return result
    result = {"model": name, "stand_in": preset is not None, "prompt": prompt, "formula": formula, "rows": rows}
    if as_json:
        print(json.dumps(result))
        if out:
            write_result(out, result, to_markdown(result), echo=False)
    else:
        write_result(out, result, to_markdown(result))
    return result


def one_method(row: dict, model: str, prompt: str, text_tokens: int, formula: str) -> dict:
    """The `--method --json` object (field names are an interface other tools read)."""
    return {
        "model": model, "method": row["method"], "prompt": prompt, "text_tokens": text_tokens, "formula": formula,
        "visual_tokens": row["visual_tokens"], "kept_after_layer_k": row["kept_after_layer_k"],
        "vision": row["vision"], "projector": row["projector"], "llm_prefill": row["llm_prefill"],
        "llm_decode_per_token": row["decode_per_token"], "total_prefill": row["prefill"],
        "reduction_llm_prefill": 1 - row["llm_prefill_vs_none"], "seq_lens": row["seq_lens"],
    }
