"""`fastv flops`: analytic FLOPs of the vision tower, projector and LLM (prefill and per decoded token)
of every method, from the sequence lengths a real forward ran on (`fastv/flops.py` says what is counted).

    fastv flops                                         # the shipped model, its example image
    fastv flops --model-path checkpoints/llava-v1.5-7b --image view.jpg
    fastv flops --preset llava-v1.5-13b --methods none fastv:k=2,ratio=0.5 --formula paper
    fastv flops --preset llava-v1.5-13b --method fastv:k=2,ratio=0.5 --formula paper --json   # one JSON object
    fastv flops --preset video-llava-7b                 # Video-LLaVA: a video of 8 random frames
    fastv flops --model-path checkpoints/Video-LLaVA-7B-hf --video clip.mp4

A checkpoint is run as it is. A `--preset` (llava/model/llava_arch.py) is counted at its real widths, with
the sequence lengths of a forward of a narrow stand-in: the preset's depths, image size, patch grid and
pinpoints with tiny random widths (what a method keeps depends on the token grid, not on the widths;
adaptive methods such as PruMerge keep what random weights make them keep, so their row is marked).
The prompt has `--text-tokens` non-image tokens: LLaVA-1.5's 35 system and `USER:` tokens before the image
and the rest (a short question: 20 by default) after it; with the image's visual tokens (unpruned) and the
decoded token it must fit the model's context (the check `fastv bench` makes, before any work).
`--formula measured` counts every matmul of the sequence lengths the forward ran on, in FLOPs (2 per
multiply-add, as torch's FlopCounterMode counts); `--formula paper` counts the LLM by FastV's F(n)
(METHODS.md), which counts a multiply-add once, and then every part in that unit, multiply-adds (the vision
tower and projector at half their FLOPs; fastv/flops.py), so that totals and ratios add one unit. The
projector is counted on the tokens it ran on (LLaVA-NeXT: every crop's, before unpadding drops some).

A Video-LLaVA model (`video-llava-7b`, or a checkpoint with a video tower) is counted on a video prompt unless
`--image` is given: `--video FILE`'s 8 sampled frames, else 8 random frames at the tower's size; the vision
tower runs once per frame (LanguageBind's temporal attention counted where the checkpoint has it), and the
default methods are FastV's video claim (K=2, R=50% over the whole video) and FasterVLM per frame at its
video table's reductions, 25/50/75/90/95% of each frame's patches (`video_methods`).

`--method SPEC --json` prints one JSON object for that method: `vision`, `projector`, `llm_prefill`,
`llm_decode_per_token`, `total_prefill` (in `unit`: "FLOPs", or "multiply-adds" with `--formula paper`) and
`reduction_llm_prefill` (1 - its LLM prefill / the unpruned one's, on the same input), with `visual_tokens`,
`kept_after_layer_k` and the layers' `seq_lens`; the table's rows also give `projected_tokens`, the tokens the
projector ran on. Output files (`--out`) are checked before any work.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastv.flops import UNITS, count
from fastv.output import write_result
from fastv.prompt import SYSTEM_TOKENS, TEXT_TOKENS, check_prompt_fits
from fastv.shipped import EXAMPLE_IMAGE, model_or_shipped

DEFAULT_METHODS = ("none", "fastv:k=2,ratio=0.5", "fastervlm:keep=58", "hired:rate=0.2", "prumerge+")
VIDEO_REDUCTIONS = (0.25, 0.5, 0.75, 0.9, 0.95)  # FasterVLM's video table: the fraction of each frame's patches dropped


def video_methods(config) -> list[str]:
    """Video-LLaVA's default rows: unpruned, FastV K=2 R=50% over the video span (its README's video claim), and
    FasterVLM keeping round(P (1 - r)) patches per frame for each reduction r (VIDEO.md R1: 192/128/64/26/13 of 256)."""
    patches = config.vision.num_patches
    return ["none", "fastv:k=2,ratio=0.5", *(f"fastervlm:keep={round(patches * (1 - r))}" for r in VIDEO_REDUCTIONS)]
ADAPTIVE = ("prumerge", "prumerge+")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--model-path", help="checkpoint folder (default: the shipped model)")
    where.add_argument("--preset", help="a named size with its real widths, e.g. llava-v1.5-13b, llava-v1.6-vicuna-7b")
    parser.add_argument("--image", help="image file (default: docs/examples/shapes.png; a 672x672 random image for NeXT presets)")
    parser.add_argument("--video", metavar="FILE",
                        help="Video-LLaVA: count on this video's 8 frames (default for a Video-LLaVA model without --image:"
                             " 8 random frames)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--method", help="one method spec: with --json, one JSON object for it (and its reduction)")
    which.add_argument("--methods", nargs="+", help=f"method specs for the table [default: {' '.join(DEFAULT_METHODS)};"
                                                    " Video-LLaVA: none, fastv:k=2,ratio=0.5 and fastervlm at 25/50/75/90/95%%"
                                                    " of each frame's patches]")
    parser.add_argument("--text-tokens", type=int, default=TEXT_TOKENS,
                        help=f"non-image prompt tokens: LLaVA-1.5's system prompt and USER: ({SYSTEM_TOKENS}, before the "
                             f"image), the rest after it; with the image's visual tokens and one decoded token within "
                             f"the model's context [default: {TEXT_TOKENS}, the system prompt and a 20-token question]")
    parser.add_argument("--formula", choices=["measured", "paper"], default="measured",
                        help="how the LLM is counted: measured (every matmul over the real sequence lengths, in FLOPs) "
                             "or FastV's paper formula F(n) (every part then in multiply-adds, the paper's unit)")
    parser.add_argument("--json", dest="as_json", action="store_true",
                        help="print one JSON object (with --method: that method's fields; else the table's rows)")
    parser.add_argument("--out", help="also write the result as JSON here (and the table as Markdown beside it)")


def stand_in(config):
    """The preset's depths and token grid with tiny widths: a model whose forward gives the preset's lengths."""
    from llava.model.llava_arch import LlavaForCausalLM

    vision = dataclasses.replace(config.vision, hidden_size=32, intermediate_size=64, num_heads=2)
    text = dataclasses.replace(config.text, hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=2, head_dim=32)
    torch.manual_seed(0)
    return LlavaForCausalLM(dataclasses.replace(config, vision=vision, text=text)).eval()


def preset_config(preset: str):
    """The named preset's LlavaConfig (read before anything is built, for the checks)."""
    from llava.errors import InputError
    from llava.model.llava_arch import LLAVA_PRESETS

    if preset not in LLAVA_PRESETS:
        raise InputError(f"unknown preset '{preset}' (available: {', '.join(LLAVA_PRESETS)})")
    return LLAVA_PRESETS[preset]


def load(model_path: str | None, preset: str | None):
    """(model that runs, config counted at, image processor, the name the table gives it); `model_path` a
    folder (model_or_shipped's) when `preset` is None."""
    from llava.mm_utils import ImageProcessor
    from llava.model.builder import load_pretrained_model

    if preset is not None:
        config = preset_config(preset)
        processor = ImageProcessor(image_size=config.vision.image_size, image_grid_pinpoints=config.image_grid_pinpoints)
        return stand_in(config), config, processor, preset
    _, model, processor, _ = load_pretrained_model(model_path)
    return model, model.config, processor, Path(model_path).name


def picture_for(image: str | None, config, preset: str | None) -> Image.Image:
    """The image counted: `image`, else a random one at the preset's size (672x672 for NeXT), else the example."""
    from llava.mm_utils import load_image

    if image is not None:
        return load_image(image)
    if preset is not None:
        side = 672 if config.anyres else config.vision.image_size
        return Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))
    return load_image(EXAMPLE_IMAGE)


def frames_for(video: str | None, config, preset: str | None) -> list[Image.Image]:
    """The video counted: `video`'s 8 sampled frames, else 8 random frames at the tower's size."""
    from llava.video import read_video

    if video is not None:
        return read_video(video, config.video.num_frames).frames
    side = config.vision.image_size
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(config.video.num_frames)]


def projected_tokens(model) -> tuple[list[int], object]:
    """([tokens through the projector in each forward], the hook's handle): what the projector really ran
    on (every patch, a method's kept or merged tokens, every crop's before NeXT's unpadding)."""
    counted: list[int] = []

    def hook(_module, args):
        counted[-1] += args[0].numel() // args[0].shape[-1]  # (..., Dv) -> rows

    return counted, model.mm_projector.register_forward_pre_hook(hook)


def measure(model, config, processor, picture: Image.Image | None, methods: list[str], text_tokens: int, formula: str,
            frames: list[Image.Image] | None = None) -> list[dict]:
    """Each method's row on one prompt around `picture`, or around the video of `frames` (Video-LLaVA)."""
    from llava.constants import IMAGE_TOKEN_INDEX, VIDEO_TOKEN_INDEX
    from llava.video import preprocess_frames

    images, videos = None, None
    if frames is not None:
        videos = [preprocess_frames(frames, processor).to(model.device)]  # (T, 3, S, S)
    else:
        images = processor([picture])
        if isinstance(images, torch.Tensor):
            images = images.to(model.device)
    vocab = config.text.vocab_size
    before = min(SYSTEM_TOKENS, text_tokens)
    marker = VIDEO_TOKEN_INDEX if frames is not None else IMAGE_TOKEN_INDEX
    prompt = [1] + [100 % vocab] * (before - 1) + [marker] + [200 % vocab] * (text_tokens - before)
    rows = []
    projected, handle = projected_tokens(model)
    try:
        for spec in methods:
            method = model.set_pruning(spec)
            projected.append(0)
            with torch.inference_mode():
                stats = model([prompt], images, videos=videos).stats
            seq_lens = stats.seq_lens[0]
            grid = stats.partition_grid[0][0]
            views = len(frames) if frames is not None else 1 + grid[0] * grid[1]
            flops = count(config, method, seq_lens, views, projected[-1], formula, video=frames is not None)
            kept = len((stats.kept_in_llm or stats.kept)[0][0])
            rows.append({"method": method.spec, "visual_tokens": stats.visual_tokens[0][0], "kept_after_layer_k": kept,
                         "projected_tokens": projected[-1], "seq_lens": seq_lens, **flops.as_dict()})
    finally:
        handle.remove()
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
    lines = [title(result, unit), "",
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


def title(result: dict, scale: str) -> str:
    """The table's first line, naming the one unit of every column."""
    where = f"of {result['model']}, prompt {result['prompt']}"
    if result["unit"] == UNITS["paper"]:
        return (f"Multiply-adds ({scale}) {where}, LLM by the paper's F(n); every column in multiply-adds, the FastV "
                f"paper's unit (1 per multiply-add: half the FLOPs)")
    return f"FLOPs ({scale}) {where}, LLM by the {result['formula']} count"


def main(model_path=None, preset=None, image=None, method=None, methods=None, text_tokens=TEXT_TOKENS,
         formula="measured", as_json=False, out=None, video=None) -> dict:
    """The table of `methods` (printed, and with `out` written); with `method`, that method's FLOPs and its LLM
    prefill's reduction against the unpruned model (as one JSON object with `as_json`)."""
    import json

    from fastv.paths import check_output_file
    from llava.errors import InputError, check_at_least
    from llava.model.builder import read_checkpoint
    from llava.model.pruning.registry import parse_method

    check_at_least("--text-tokens", text_tokens, 1)
    if out is not None:
        check_output_file("--out", out, ".md")
    if image is not None and video is not None:
        raise InputError("give --image or --video: the count is of one prompt with one of them")
    for spec in [method] if method is not None else methods or ():
        parse_method(spec)
    if preset is None:
        model_path = model_or_shipped(model_path)
    config = preset_config(preset) if preset is not None else read_checkpoint(model_path).config
    if video is not None and config.video is None:
        raise InputError(f"--video needs a Video-LLaVA model; {preset or model_path} is an image model (no video tower)")
    frames, picture = None, None
    if config.video is not None and image is None:  # Video-LLaVA: a video prompt unless an image is asked for
        frames = frames_for(video, config, preset)
        check_prompt_fits(config, text_tokens, None, new_tokens=1)
        prompt = f"{text_tokens} text tokens + video ({len(frames)} frames of {frames[0].width}x{frames[0].height})"
    else:
        picture = picture_for(image, config, preset)
        check_prompt_fits(config, text_tokens, (picture.height, picture.width), new_tokens=1)  # and the decoded token
        prompt = f"{text_tokens} text tokens + image ({picture.width}x{picture.height})"
    defaults = video_methods(config) if frames is not None else DEFAULT_METHODS
    methods = ["none", method] if method is not None else list(methods or defaults)
    model, config, processor, name = load(model_path, preset)
    rows = measure(model, config, processor, picture, methods, text_tokens, formula, frames)
    table = {"model": name, "stand_in": preset is not None, "prompt": prompt, "formula": formula,
             "unit": UNITS[formula], "rows": rows}
    if method is not None:
        result = one_method(rows[-1], name, prompt, text_tokens, formula)
        print(json.dumps(result) if as_json else "\n".join(f"{k}: {v}" for k, v in result.items() if k != "seq_lens"))
        write_result(out, result, to_markdown(table), echo=False)
        return result
    if as_json:
        print(json.dumps(table))
    write_result(out, table, to_markdown(table), echo=not as_json)
    return table


def one_method(row: dict, model: str, prompt: str, text_tokens: int, formula: str) -> dict:
    """The `--method --json` object (field names are an interface other tools read)."""
    return {
        "model": model, "method": row["method"], "prompt": prompt, "text_tokens": text_tokens, "formula": formula,
        "unit": UNITS[formula],
        "visual_tokens": row["visual_tokens"], "kept_after_layer_k": row["kept_after_layer_k"],
        "vision": row["vision"], "projector": row["projector"], "llm_prefill": row["llm_prefill"],
        "llm_decode_per_token": row["decode_per_token"], "total_prefill": row["prefill"],
        "reduction_llm_prefill": 1 - row["llm_prefill_vs_none"], "seq_lens": row["seq_lens"],
    }
