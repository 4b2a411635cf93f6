"""Prefill latency: our model vs transformers' LlavaForConditionalGeneration / LlavaNextForConditionalGeneration (sdpa), and pruned vs unpruned.

Builds a random LLaVA of the size asked for (random weights cost what real ones
do), saves it, loads it both through our loader and through transformers, and
times the prefill (vision tower + projector + LLM over the prompt + last-token
logits) of the same inputs, interleaving the contestants round by round so drift
in the machine's speed hits all of them alike. Reports medians and ratios measured
in this one run; writes Markdown and JSON.

`--model next`: the same widths as LLaVA-NeXT with the stock merge (spatial_unpad,
image_newline) on a 672x672 image, a 2x2 crop grid: 5 views of 576 patches, 2928
visual tokens. Its anyres preprocessing (PIL image -> 5 views) and its vision
tower (the 5 views) are timed apart, and their ratio reported.

For a pre-LLM method the time spent inside its selection (`select_image`, which calls `select`
per view) is timed too, in the same forwards, and reported as a share of the prefill.

    fastv bench-prefill --out results/cpu-prefill.json
    fastv bench-prefill --model next --out results/cpu-prefill-next.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

DEFAULT_METHODS = ("none", "fastv:k=2,keep=144", "fastervlm:keep=58")
# LLaVA-NeXT: FasterVLM at 29 per partition (145 of a 2x2 grid's 5 x 576), FastV k=2 dropping half, HiRED at
# 20% and 10% of the visual tokens, PruMerge and PruMerge+ (adaptive)
NEXT_METHODS = ("none", "fastv:k=2,ratio=0.5", "fastervlm:keep=29", "hired:rate=0.2", "hired:rate=0.1", "prumerge",
                "prumerge+")
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
NEXT_IMAGE = 672  # px, square: a 2x2 crop grid, nothing unpadded


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="llava", choices=["llava", "next"],
                        help="llava: LLaVA-1.5 (576 visual tokens); next: LLaVA-NeXT on a 672x672 image (2x2 crops)")
    parser.add_argument("--vision-layers", type=int, default=12, help="CLIP layers (width 768, 12 heads, 336 px, patch 14)")
    parser.add_argument("--text-layers", type=int, default=4, help="Llama layers (width 1024, 16 heads)")
    parser.add_argument("--methods", nargs="+",
                        help=f"method specs to time [default: {' '.join(DEFAULT_METHODS)}; next: {' '.join(NEXT_METHODS)}]")
    parser.add_argument("--batch", type=int, default=1, help="images (and prompts) per forward")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--out", help="write the results as JSON here (and Markdown beside it)")


def small_llava(folder: Path, vision_layers: int, text_layers: int, next_: bool = False) -> None:
    """A random LLaVA-1.5-shaped model: CLIP-B-sized ViT at 336 px (576 patches) + a small Llama; with
    `next_`, a LLaVA-NeXT of the same parts (stock pinpoints, image_newline)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=vision_layers, num_attention_heads=12,
        image_size=336, patch_size=14,
    )
    text = LlamaConfig(
        hidden_size=1024, intermediate_size=2816, num_hidden_layers=text_layers, num_attention_heads=16,
        num_key_value_heads=16, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5,
    )
    if next_:
        config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=32000,
                                 image_grid_pinpoints=NEXT_PINPOINTS)
        LlavaNextForConditionalGeneration(config).save_pretrained(folder)
    else:
        LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000)).save_pretrained(folder)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)


def check_options(vision_layers, text_layers, methods, batch, repeats, warmup, device, out) -> torch.device:
    """Refuse bad options with one InputError before a model is built; the device, checked against this machine."""
    from llava.device import resolve_device
    from llava.errors import InputError, check_at_least
    from llava.model.pruning.registry import parse_method

    for name, value, least in [("--vision-layers", vision_layers, 1), ("--text-layers", text_layers, 1),
                               ("--batch", batch, 1), ("--repeats", repeats, 1), ("--warmup", warmup, 0)]:
        check_at_least(name, value, least)
    for spec in methods or ():
        parse_method(spec)
    if out and Path(out).is_dir():
        raise InputError(f"--out {out} is a folder: name the JSON file to write (the Markdown goes beside it)")
    return resolve_device(device)


def main(
    vision_layers: int = 12,
    text_layers: int = 4,
    methods: list[str] | None = None,
    batch: int = 1,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    dtype: str = "float32",
    out: str | None = None,
    model: str = "llava",
) -> dict:
    dev = check_options(vision_layers, text_layers, methods, batch, repeats, warmup, device, out)
    next_ = model == "next"
    methods = list(methods or (NEXT_METHODS if next_ else DEFAULT_METHODS))
    import numpy as np
    from PIL import Image
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    from llava.generate import synchronized_time
    from llava.model.anyres import anyres_layout
    from llava.model.builder import load_pretrained_model

    torch_dtype = getattr(torch, dtype)
    now = lambda: synchronized_time(dev)
    with tempfile.TemporaryDirectory() as tmp:
        small_llava(Path(tmp), vision_layers, text_layers, next_)
        _, ours, processor, _ = load_pretrained_model(tmp, device=device, dtype=torch_dtype)
        reference_class = LlavaNextForConditionalGeneration if next_ else LlavaForConditionalGeneration
        reference = reference_class.from_pretrained(tmp, dtype=torch_dtype, attn_implementation="sdpa")
        reference = reference.to(dev).eval()

    # A LLaVA-1.5-shaped prompt: 35 system/text tokens, the image, a short question.
    prompt = [1] + list(range(100, 134)) + [-200] + list(range(200, 220))
    prompts = [prompt] * batch
    extra_rows, hf_images = [], {}
    if next_:
        picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (NEXT_IMAGE, NEXT_IMAGE, 3), dtype=np.uint8))
        (anyres,) = processor([picture])
        anyres = type(anyres)(anyres.pixel_values.to(dev, torch_dtype), anyres.grid, anyres.resolution, anyres.image_size)
        images = [anyres] * batch
        visual = len(anyres_layout(anyres.grid, ours.config.vision.grid_size, anyres.image_size, ours.config.patch_merge))
        hf_images = dict(pixel_values=torch.stack([anyres.pixel_values] * batch),
                         image_sizes=torch.tensor([anyres.image_size] * batch, device=dev))
        views = torch.cat([anyres.pixel_values] * batch)
        extra = {
            "anyres preprocessing (PIL -> 5 views)": lambda: processor([picture] * batch),
            f"vision tower ({views.shape[0]} views)": lambda: ours.vision_tower(views, ours.config.select_layer),
        }
    else:
        images = torch.randn(batch, 3, 336, 336, device=dev, dtype=torch_dtype)
        visual = 576
        hf_images = dict(pixel_values=images)
        extra = {}
    hf_ids = torch.tensor([prompt[:35] + [32000] * visual + prompt[36:]] * batch, device=dev)
    hf_mask = torch.ones_like(hf_ids)

    # name -> (untimed set-up, timed prefill)
    contestants = {"transformers (sdpa), unpruned": (lambda: None, lambda: reference(
        input_ids=hf_ids, attention_mask=hf_mask, **hf_images, use_cache=True, logits_to_keep=1))}
    tokens, selection = {}, SelectionTimer(now)
    for spec in methods:
        set_up = lambda spec=spec: selection.watch(ours.set_pruning(spec))
        contestants[f"ours, {spec}"] = (set_up, lambda: ours(prompts, images))
    for name, fn in extra.items():
        contestants[name] = (lambda: None, fn)

    times: dict[str, list[float]] = {name: [] for name in contestants}
    selection_times: dict[str, list[float]] = {name: [] for name in contestants}
    with torch.inference_mode():
        for spec in methods:  # what each method gives the LLM (and keeps after layer k)
            ours.set_pruning(spec)
            stats = ours(prompts[:1], images[:1]).stats
            tokens[f"ours, {spec}"] = (stats.visual_tokens[0][0], len((stats.kept_in_llm or stats.kept)[0][0]))
        for round_ in range(warmup + repeats):
            for name, (set_up, fn) in contestants.items():
                set_up()
                selection.seconds = 0.0
                start = now()
                fn()
                elapsed = now() - start
                if round_ >= warmup:
                    times[name].append(elapsed)
                    selection_times[name].append(selection.seconds)
        selection.watch(None)

    medians = {name: statistics.median(t) for name, t in times.items()}
    ours_unpruned = medians.get("ours, none")
    rows = []
    for name, median in medians.items():
        row = {"what": name, "median_s": median}
        if name in tokens:
            row["visual_tokens"], row["kept_after_layer_k"] = tokens[name]
        if any(selection_times[name]):  # per round: the time inside the selection over that round's prefill
            row["selection_s"] = statistics.median(selection_times[name])
            row["selection_share"] = statistics.median(s / t for s, t in zip(selection_times[name], times[name]))
        if (name.startswith("ours") or name.startswith("transformers")) and ours_unpruned:
            row["vs_ours_unpruned"] = median / ours_unpruned
        rows.append(row)
    ours_vs_reference = ours_unpruned / medians["transformers (sdpa), unpruned"] if ours_unpruned else None
    if next_:
        preprocess, tower = (medians[name] for name in extra)
        model_text = (f"random LLaVA-NeXT: CLIP {vision_layers} layers x 768 @ 336 px, anyres 2x2 on a {NEXT_IMAGE}x"
                      f"{NEXT_IMAGE} image (5 x 576 patches, {visual} visual tokens, spatial_unpad), "
                      f"Llama {text_layers} layers x 1024")
    else:
        model_text = f"random LLaVA: CLIP {vision_layers} layers x 768 @ 336 px (576 tokens), Llama {text_layers} layers x 1024"
    result = {
        "machine": _machine(dev),
        "torch": torch.__version__,
        "model": model_text,
        "dtype": dtype, "batch": batch, "repeats": repeats, "warmup": warmup,
        "rows": rows,
        "ours_unpruned_over_transformers": ours_vs_reference,
    }
    if next_:
        result["preprocessing_over_vision_tower"] = preprocess / tower
    write_result(out, result, to_markdown(result))
    return result


def write_result(out: str | None, result: dict, table: str) -> None:
    """Print a benchmark's Markdown table; with `out`, write the result as JSON there and the table beside it."""
    print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        Path(out).with_suffix(".md").write_text(table + "\n")


def to_markdown(result: dict) -> str:
    lines = [
        f"Prefill latency, {result['model']}, batch {result['batch']}, {result['dtype']}, "
        f"median of {result['repeats']} on {result['machine']} (torch {result['torch']})",
        "",
        "| what | time (ms) | / ours unpruned | visual tokens into the LLM | patches kept (after layer k) "
        "| selection (ms) | selection / prefill |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        ratio = f"{row['vs_ours_unpruned']:.3f}" if "vs_ours_unpruned" in row else ""
        visual, kept = (str(row[k]) if k in row else "" for k in ("visual_tokens", "kept_after_layer_k"))
        chosen = f"{row['selection_s'] * 1000:.1f}" if "selection_s" in row else ""
        share = f"{row['selection_share']:.2%}" if "selection_share" in row else ""
        lines.append(f"| {row['what']} | {row['median_s'] * 1000:.1f} | {ratio} | {visual} | {kept} | {chosen} | {share} |")
    if result["ours_unpruned_over_transformers"] is not None:
        lines += ["", f"ours unpruned / transformers unpruned: {result['ours_unpruned_over_transformers']:.3f}"]
    if "preprocessing_over_vision_tower" in result:
        lines += [f"anyres preprocessing / vision tower: {result['preprocessing_over_vision_tower']:.3f}"]
    return "\n".join(lines)


class SelectionTimer:
    """Adds the wall time of every `select_image` call of the watched pre-LLM method to `seconds`
    (by wrapping the method object's own attribute; `watch(None)` or another method puts it back)."""

    def __init__(self, now):
        self.now, self.seconds, self._method = now, 0.0, None

    def watch(self, method) -> None:
        from llava.model.pruning.base import VisionPruner

        if self._method is not None:
            del self._method.select_image  # the class's method again
            self._method = None
        if not isinstance(method, VisionPruner):
            return
        select_image = method.select_image

        def timed(views, partition_grid):
            start = self.now()
            kept = select_image(views, partition_grid)
            self.seconds += self.now() - start
            return kept

        method.select_image, self._method = timed, method


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
