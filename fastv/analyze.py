"""`fastv analyze shift|dispersion`: FasterVLM's two analyses of why text-to-image attention is a poor
guide for pruning, over many questions.

    fastv analyze shift --limit 120 --out runs/shift               # the shapes test split (generated)
    fastv analyze dispersion --benchmark textvqa --data-root playground/data/eval --model-path P --out D

For each question, the last prompt token's attention over the image (every decoder layer, head-averaged,
renormalised over the image's tokens: the row FastV ranks by) and the vision encoder's [CLS] attention
over the patches (the select layer, head-averaged: FasterVLM's score), both on the image's patch grid
(LLaVA-NeXT: its base view).

- `shift`: where in the raster the mass lies: the share of each patch row, averaged over the questions,
  per layer and for [CLS]; the mean row (0 = top) says how far down the mass sits (FasterVLM: text
  attention drifts to the last rows, the tokens nearest the text).
- `dispersion`: how spread the mass is: the fewest patches holding 50% and 90% of it and the entropy
  (nats; log N for a uniform map), averaged over the questions, per layer and for [CLS] (FasterVLM:
  text attention is spread thin, [CLS] attention is concentrated).

Writes OUT/<analysis>.json and OUT/<analysis>.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fastv.shipped import model_or_shipped

ANALYSES = ("shift", "dispersion")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("analysis", choices=ANALYSES)
    parser.add_argument("--model-path", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--benchmark", default="shapes", help="a benchmark of the eval harness [default: shapes]")
    parser.add_argument("--data-root", help="the benchmarks' folders (default: shapes is generated, the test split)")
    parser.add_argument("--limit", type=int, default=120, help="questions (the first N) [default: 120]")
    parser.add_argument("--out", required=True, help="folder for the JSON and the PNG (created)")


def questions(benchmark: str, data_root: str | None, limit: int):
    """(image, question text) pairs: the benchmark's first `limit` questions with an image."""
    if benchmark == "shapes" and data_root is None:
        from llava.data import synthetic

        return [(s.image, s.prompt) for s in (synthetic.make_sample("test", n) for n in range(limit))]
    from llava.eval.common import open_image
    from llava.eval.registry import get_benchmark
    from llava.eval.run import load_questions

    asked = load_questions(get_benchmark(benchmark), Path(data_root or "playground/data/eval"), None, None, None)
    readable = [q for q in asked if q.error is None and q.has_image]
    return [(open_image(q), q.text) for q in readable[:limit]]


def maps(pipe, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """(text (Q, L, P), cls (Q, P)): per question the last prompt token's image attention per layer, and
    the [CLS] attention, each renormalised over the image's patches."""
    from fastv.attention_maps import cls_attention, on_patches
    from llava.pipeline import Request

    model = pipe.model
    layers = tuple(range(model.config.text.num_layers))
    grid = model.config.vision.grid_size
    text, cls = [], []
    for picture, prompt in pairs:
        _, ids, images, _ = pipe.encode([Request(image=picture, text=prompt)])
        with torch.inference_mode():
            inputs = model.prepare_inputs(ids, images)
            out = model.forward_inputs(inputs, use_cache=False, attention_layers=layers, attention_rows="last")
        (span,) = inputs.spans[0]
        rows = torch.stack([on_patches(out.attention[layer][0].mean(dim=0)[span.start : span.end], span, grid)
                            for layer in layers])  # (L, P)
        text.append(rows / rows.sum(dim=1, keepdim=True))
        views = images[0].pixel_values[:1] if model.config.anyres else images
        cls.append(cls_attention(model, views)[0])
    cls = torch.stack(cls)
    return torch.stack(text), cls / cls.sum(dim=1, keepdim=True)


def shift(text: torch.Tensor, cls: torch.Tensor, grid: int) -> dict:
    row_share = lambda m: m.reshape(*m.shape[:-1], grid, grid).sum(dim=-1)  # (..., rows)
    mean_row = lambda profile: float((profile * torch.arange(grid)).sum())
    text_rows, cls_rows = row_share(text).mean(dim=0), row_share(cls).mean(dim=0)  # (L, rows), (rows,)
    return {
        "rows": grid,
        "text": [{"layer": n, "row_share": r.tolist(), "mean_row": mean_row(r)} for n, r in enumerate(text_rows)],
        "cls": {"row_share": cls_rows.tolist(), "mean_row": mean_row(cls_rows)},
    }


def spread(m: torch.Tensor) -> dict:
    """m (Q, P) distributions -> mean fewest-patches for 50% / 90% of the mass, and mean entropy."""
    ordered = m.sort(dim=-1, descending=True).values.cumsum(dim=-1)
    holding = lambda share: float(((ordered < share).sum(dim=-1) + 1).float().mean())
    entropy = float(-(m * m.clamp(min=1e-12).log()).sum(dim=-1).mean())
    return {"tokens_50": holding(0.5), "tokens_90": holding(0.9), "entropy": entropy}


def dispersion(text: torch.Tensor, cls: torch.Tensor) -> dict:
    return {"patches": text.shape[-1],
            "text": [{"layer": n, **spread(text[:, n])} for n in range(text.shape[1])], "cls": spread(cls)}


def plot(analysis: str, result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if analysis == "shift":
        figure, ax = plt.subplots(figsize=(6, 4))
        for row in result["text"]:
            ax.plot(row["row_share"], marker=".", label=f"text, layer {row['layer']}")
        ax.plot(result["cls"]["row_share"], color="black", linewidth=2.5, label="[CLS]")
        ax.set_xlabel("patch row (0 = top)")
        ax.set_ylabel("share of the image attention")
        ax.set_title(f"attention shift over {result['questions']} questions")
    else:
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        layers = [row["layer"] for row in result["text"]]
        for key, style in (("tokens_50", "o-"), ("tokens_90", "s-")):
            left.plot(layers, [row[key] for row in result["text"]], style, label=f"text, {key[7:]}% of mass")
            left.axhline(result["cls"][key], linestyle="--", color="black" if key == "tokens_50" else "grey",
                         label=f"[CLS], {key[7:]}% of mass")
        right.plot(layers, [row["entropy"] for row in result["text"]], "o-", label="text")
        right.axhline(result["cls"]["entropy"], linestyle="--", color="black", label="[CLS]")
        left.set_title(f"patches holding the mass (of {result['patches']})")
        right.set_title("entropy (nats)")
        for ax in (left, right):
            ax.set_xlabel("decoder layer")
            ax.legend(fontsize=8)
    ax = figure.axes[0]
    if analysis == "shift":
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main(analysis: str, out: str, model_path: str | None = None, benchmark: str = "shapes",
         data_root: str | None = None, limit: int = 120) -> dict:
    from fastv.paths import check_output_dir
    from llava.errors import InputError, check_at_least
    from llava.pipeline import LlavaPipeline

    check_at_least("--limit", limit, 1)
    check_output_dir("--out", out)
    model_path = model_or_shipped(model_path)
    pairs = questions(benchmark, data_root, limit)
    if not pairs:
        raise InputError(f"{benchmark} has no readable question with an image to analyse")
    pipe = LlavaPipeline.load(model_path)
    text, cls = maps(pipe, pairs)
    grid = pipe.model.config.vision.grid_size
    result = shift(text, cls, grid) if analysis == "shift" else dispersion(text, cls)
    result = {"analysis": analysis, "model": Path(model_path).name, "benchmark": benchmark, "questions": len(pairs),
              **result}
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{analysis}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(analysis, result, folder / f"{analysis}.png")
    if analysis == "shift":
        print(f"mean patch row of the mass (0 = top, {grid - 1} = bottom), over {len(pairs)} questions: "
              f"[CLS] {result['cls']['mean_row']:.2f}; text by layer "
              + " ".join(f"{row['mean_row']:.2f}" for row in result["text"]))
    else:
        print(f"patches holding 50% / 90% of the mass (of {grid * grid}), entropy, over {len(pairs)} questions:")
        print(f"  [CLS]: {result['cls']['tokens_50']:.1f} / {result['cls']['tokens_90']:.1f}, {result['cls']['entropy']:.2f}")
        for row in result["text"]:
            print(f"  text, layer {row['layer']}: {row['tokens_50']:.1f} / {row['tokens_90']:.1f}, {row['entropy']:.2f}")
    print(f"wrote {folder / f'{analysis}.json'}, {folder / f'{analysis}.png'}")
    return result
