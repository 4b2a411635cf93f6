"""Where the LLM's attention goes for one image and question (FastV's analysis), and the image regions the
last token and the vision encoder's [CLS] look at: the numbers and the pictures that `fastv attn` writes
(fastv/attention.py says what each holds), `fastv demo` shows and `fastv analyze` gathers per question.

`analyse` runs the model: the answer (greedy), then one forward over the prompt and its answer with every
decoder layer's attention probabilities (SDPA keeps running), cut into the spans `SPANS`. `on_patches` and
`cls_attention` put an attention row and the [CLS] row on the image's patch grid; `draw` makes the PNGs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SPANS = ("system", "image", "instruction", "output")


def shares(rows: torch.Tensor, spans: dict[str, tuple[int, int]]) -> dict[str, float]:
    """rows (R, K) of attention probabilities -> the mean share of each span."""
    return {name: float(rows[:, start:end].sum(dim=1).mean()) if end > start else 0.0
            for name, (start, end) in spans.items()}


def analyse(pipe, picture, prompt: str, max_new_tokens: int, overlay_layer: int) -> dict:
    """Everything `fastv attn` writes, as tensors and numbers (the PNGs are drawn from it)."""
    from llava.generate import generate
    from llava.pipeline import Request

    model = pipe.model
    _, (prompt_ids,), images, _ = pipe.encode([Request(image=picture, text=prompt)])
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
