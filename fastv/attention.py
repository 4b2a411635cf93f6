"""`fastv attn`: where the LLM's attention goes, layer by layer, for one image and question (FastV's
analysis), and the image regions the last token and the vision encoder's [CLS] look at.

    fastv attn --image docs/examples/shapes.png --prompt "What color is the star?" --out runs/attn

The model answers (greedy), then one more forward over the prompt and its answer computes every decoder
layer's attention probabilities from that layer's own queries and keys (`attention_layers`: SDPA keeps
running; no layer is switched to eager). The sequence is cut into four spans: `system` (BOS, the system
prompt and "USER:", up to the image), `image` (its visual tokens), `instruction` (the question and
"ASSISTANT:") and `output` (the answer's tokens). Written to OUT:

- `attention.json`: `spans` ([start, end) of each), `layers` (per layer: the head-averaged shares of the
  last prompt token's attention going to each span, summing to 1; `output` is 0 there, by causality: it
  is the row FastV ranks image tokens by), `output_rows` (the same shares averaged over the answer's
  tokens, FastV's allocation analysis) and `per_token` (those shares divided by each span's length:
  FastV's "attention efficiency");
- `heatmaps.png`: every layer's head-averaged attention map over the whole sequence (log scale), span
  boundaries marked;
- `allocation.png`: the shares and the per-token attention by layer, one line per span;
- `image_attention.png`: over the image as the vision tower saw it, the last prompt token's attention at
  `--layer` (default 1: the row FastV at K=2 ranks by) and the [CLS] attention of the select layer
  (FasterVLM's score). On LLaVA-NeXT the base view is shown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fastv.shipped import model_or_shipped

SPANS = ("system", "image", "instruction", "output")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--prompt", required=True, help="the question, without <image>")
    parser.add_argument("--out", required=True, help="folder for attention.json and the PNGs (created)")
    parser.add_argument("--layer", type=int, default=1, help="decoder layer of the image overlay [default: 1]")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer tokens generated at most [default: 16]")
    parser.add_argument("--conv-mode", default="vicuna_v1", help="conversation template")


def shares(rows: torch.Tensor, spans: dict[str, tuple[int, int]]) -> dict[str, float]:
    """rows (R, K) of attention probabilities -> the mean share of each span."""
    return {name: float(rows[:, start:end].sum(dim=1).mean()) if end > start else 0.0
            for name, (start, end) in spans.items()}


def analyse(pipe, picture, prompt: str, max_new_tokens: int, overlay_layer: int) -> dict:
    """Everything `fastv attn` writes, as tensors and numbers (the PNGs are drawn from it)."""
    from llava.generate import generate
    from llava.pipeline import Request

    model = pipe.model
    _, (prompt_ids,), images = pipe.encode([Request(image=picture, text=prompt)])
    answer = generate(model, [prompt_ids], images, max_new_tokens=max_new_tokens,
                      eos_token_id=pipe.tokenizer.eos_token_id, context_len=pipe.context_len).tokens[0]
    answer = [t for t in answer if t != pipe.tokenizer.eos_token_id]
    layers = tuple(range(model.config.text.num_layers))
    with torch.inference_mode():
        inputs = model.prepare_inputs([prompt_ids + answer], images)
        out = model.forward_inputs(inputs, use_cache=False, attention_layers=layers)
    (span,) = inputs.spans[0]
    total = int(inputs.key_mask[0].sum())
    prompt_length = total - len(answer)
    spans = {"system": (0, span.start), "image": (span.start, span.end), "instruction": (span.end, prompt_length),
             "output": (prompt_length, total)}
    maps = [out.attention[layer][0].mean(dim=0).cpu() for layer in layers]  # (N, N) per layer, head-averaged
    last = [shares(m[prompt_length - 1 : prompt_length], spans) for m in maps]
    output_rows = [shares(m[prompt_length:total], spans) if answer else {name: 0.0 for name in SPANS} for m in maps]
    lengths = {name: end - start for name, (start, end) in spans.items()}
    per_token = [{name: value / lengths[name] if lengths[name] else 0.0 for name, value in row.items()}
                 for row in (output_rows if answer else last)]
    return {
        "maps": maps, "spans": spans, "layers": last, "output_rows": output_rows, "per_token": per_token,
        "answer": pipe.tokenizer.decode(answer, skip_special_tokens=True).strip(), "image": images,
        "span": span, "overlay_layer": overlay_layer,
    }


def image_maps(pipe, result) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the base view as RGB, the last prompt token's attention at the overlay layer over its patches,
    the select layer's [CLS] attention over them), each map (grid, grid)."""
    from fastv.overlay import to_rgb

    model, span = pipe.model, result["span"]
    config = model.config
    pixels = result["image"][0].pixel_values if config.anyres else result["image"]
    view = pixels[:1]
    grid = config.vision.grid_size
    prompt_length = result["spans"]["output"][0]
    row = result["maps"][result["overlay_layer"]][prompt_length - 1, span.start : span.end]
    llm = on_patches(row, span, grid)
    cls = cls_attention(model, view)[0]
    processor = pipe.image_processor
    rgb = to_rgb(view[0], processor.image_mean, processor.image_std)
    return rgb, llm.reshape(grid, grid).numpy(), cls.reshape(grid, grid).numpy()


def on_patches(row: torch.Tensor, span, grid: int) -> torch.Tensor:
    """row (span.length,) of attention over an image's tokens -> (grid * grid,) over its base view's patches
    (LLaVA-1.5: the image; NeXT: partition 0), 0 where a patch sent no token."""
    base = (span.token_partition == 0).cpu() & (span.patch_index >= 0).cpu()
    values = torch.zeros(grid * grid)
    values[span.patch_index.cpu()[base]] = row.float().cpu()[base]
    return values


def cls_attention(model, views: torch.Tensor) -> torch.Tensor:
    """(V, P): the select layer's [CLS] row over the patches, mean over heads (FasterVLM's score), per view."""
    config = model.config
    select = config.vision.layer_index(config.select_layer)
    with torch.inference_mode():
        probe = model.vision_tower(views.to(model.device, model.dtype), config.select_layer, (select,)).probes[select]
    return probe.cls_attention.mean(dim=1).cpu()


def draw(pipe, result, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    written = []
    maps, spans = result["maps"], result["spans"]
    columns = min(4, len(maps))
    rows = -(-len(maps) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index >= len(maps):
            ax.axis("off")
            continue
        values = maps[index].numpy()
        ax.imshow(np.where(values > 0, values, np.nan), cmap="viridis", norm=LogNorm(vmin=1e-4, vmax=1))
        for start, _ in list(spans.values())[1:]:
            ax.axhline(start - 0.5, color="white", linewidth=0.6)
            ax.axvline(start - 0.5, color="white", linewidth=0.6)
        ax.set_title(f"layer {index}")
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle("head-averaged attention (rows: queries); lines: system | image | instruction | output")
    figure.tight_layout()
    written.append(_save(figure, out / "heatmaps.png"))

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    allocation = result["output_rows"] if result["answer"] else result["layers"]
    for name in SPANS:
        left.plot([row[name] for row in allocation], marker="o", label=name)
        right.plot([row[name] for row in result["per_token"]], marker="o", label=name)
    left.set_title("share of attention (answer tokens' rows)" if result["answer"] else "share (last prompt token)")
    right.set_title("attention per token of each span")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xlabel("layer")
        ax.legend()
    figure.tight_layout()
    written.append(_save(figure, out / "allocation.png"))

    rgb, llm, cls = image_maps(pipe, result)
    figure, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    size = rgb.shape[0]
    for ax, values, title in ((axes[0], llm, f"last prompt token, layer {result['overlay_layer']}"),
                              (axes[1], cls, "vision [CLS], select layer")):
        ax.imshow(rgb)
        ax.imshow(values, cmap="inferno", alpha=0.6, extent=(0, size, size, 0), interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    figure.tight_layout()
    written.append(_save(figure, out / "image_attention.png"))
    return written


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def main(image: str, prompt: str, out: str, model_path: str | None = None, layer: int = 1, max_new_tokens: int = 16,
         conv_mode: str = "vicuna_v1") -> dict:
    from llava.conversation import conversation_template
    from fastv.paths import check_output_dir
    from llava.errors import InputError, check_at_least
    from llava.mm_utils import load_image
    from llava.pipeline import LlavaPipeline

    check_at_least("--max-new-tokens", max_new_tokens, 0)
    conversation_template(conv_mode)
    if not prompt.strip() or "<image>" in prompt:
        raise InputError("give the question as --prompt, without '<image>'")
    check_output_dir("--out", out)
    model_path = model_or_shipped(model_path)
    picture = load_image(image)
    pipe = LlavaPipeline.load(model_path, conv_mode=conv_mode)
    layers = pipe.model.config.text.num_layers
    if not 0 <= layer < layers:
        raise InputError(f"--layer must be in 0..{layers - 1} for this {layers}-layer LLM, got {layer}")
    result = analyse(pipe, picture, prompt, max_new_tokens, layer)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "model": Path(model_path).name, "prompt": prompt, "answer": result["answer"],
        "spans": {name: list(bounds) for name, bounds in result["spans"].items()},
        "layers": [{"layer": n, **row} for n, row in enumerate(result["layers"])],
        "output_rows": [{"layer": n, **row} for n, row in enumerate(result["output_rows"])],
        "per_token": [{"layer": n, **row} for n, row in enumerate(result["per_token"])],
    }
    (folder / "attention.json").write_text(json.dumps(record, indent=1) + "\n")
    pictures = draw(pipe, result, folder)
    print(f"answer: {result['answer']}")
    print("last prompt token's attention by span (layer: system image instruction):")
    for row in record["layers"]:
        print(f"  {row['layer']:3d}: {row['system']:.3f} {row['image']:.3f} {row['instruction']:.3f}")
    print("wrote " + ", ".join(str(p) for p in [folder / "attention.json", *pictures]))
    return record
