#!/usr/bin/env python
"""Where does each decoder layer's last token look? Its attention on the question's target tokens.

For the first N test samples of the synthetic shapes task, run the unpruned
prompt through the model and read, at every decoder layer and head, the last
prompt token's attention row (the row FastV ranks image tokens by, read the
same way: SDPA stays on, see `LlamaAttention`'s "last" rows). Reports, per layer and head:

- `image`: the share of that row spent on the image's tokens;
- `target`: of the image share, the part on the question's target tokens (the
  object(s) it names, or the text box: `Sample.patches` on the model's grid);
- `objects`: of the image share, the part on every object's tokens (and the
  text box's, for ocr questions), whatever the question;
- `uniform` / `uniform_objects`: what `target` would be if the image share
  were spread evenly over the image / over the objects' tokens.

`objects` well above what they cover means the head looks at objects; `target`
above `uniform_objects` means it prefers the one the question names. FastV
keeps the image tokens that layer K-1's heads, summed, attend to most.

    .venv/bin/python scripts/target_attention.py --n 120 --json results/<machine-date>/target_attention.json

Samples whose question has no target tokens (exist questions answered "no") are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastv.shipped import SHIPPED_MODEL  # noqa: E402
from llava.data import synthetic  # noqa: E402
from llava.pipeline import LlavaPipeline, Request  # noqa: E402


@torch.no_grad()
def attention_rows(pipe: LlavaPipeline, samples: list, batch_size: int = 32) -> list[dict]:
    """One row per (layer, head): mean image share; target and objects shares of it; uniform baseline."""
    model, vision = pipe.model, pipe.model.config.vision
    layers, heads = model.config.text.num_layers, model.config.text.num_heads
    image = torch.zeros(layers, heads)
    target = torch.zeros(layers, heads)
    objects = torch.zeros(layers, heads)
    uniform = uniform_objects = 0.0
    for start in range(0, len(samples), batch_size):
        batch = samples[start:start + batch_size]
        _, ids, pixels, _ = pipe.encode([Request(s.image, s.prompt) for s in batch])
        inputs = model.prepare_inputs(ids, pixels)
        targets, foreground = [], []  # per sample: the target's tokens, every object's (and the target's) tokens
        for s in batch:
            tokens = synthetic.tokens_on_grid(s.patches, vision.patch_size)
            every = tokens.union(*(synthetic.tokens_on_grid(o["patches"], vision.patch_size) for o in s.objects))
            targets.append(sorted(tokens))
            foreground.append(sorted(every))
            uniform += len(tokens) / vision.num_patches
            uniform_objects += len(tokens) / len(every)
        rows = model.language_model(inputs.embeds, inputs.key_mask, inputs.positions, None, None, False,
                                    tuple(range(layers)), "last").attention  # layer -> (B, H, N)
        for layer in range(layers):
            for b, (tokens, every) in enumerate(zip(targets, foreground)):
                span = inputs.spans[b][0]
                on_image = rows[layer][b, :, span.start:span.start + span.length]  # (H, P)
                total = on_image.sum(-1)
                image[layer] += total
                target[layer] += on_image[:, tokens].sum(-1) / total.clamp_min(1e-12)
                objects[layer] += on_image[:, every].sum(-1) / total.clamp_min(1e-12)
    n = len(samples)
    return [{"layer": layer, "head": head, "image": 100 * image[layer, head].item() / n,
             "target": 100 * target[layer, head].item() / n, "objects": 100 * objects[layer, head].item() / n,
             "uniform": 100 * uniform / n, "uniform_objects": 100 * uniform_objects / n}
            for layer in range(layers) for head in range(heads)]


def to_markdown(rows: list[dict]) -> str:
    heads = sorted({r["head"] for r in rows})
    lines = [f"Last-token attention (%) by decoder layer and head, as a share of its attention on the image: "
             f"on the question's target tokens / on every object's tokens (in brackets: the image's share of the "
             f"row). Spread evenly it would put {rows[0]['uniform']:.1f}% (over the image) or "
             f"{rows[0]['uniform_objects']:.0f}% (over the objects) on the target.", "",
             "| layer | " + " | ".join(f"head {h}" for h in heads) + " |", "|---|" + "---:|" * len(heads)]
    for layer in sorted({r["layer"] for r in rows}):
        cells = {r["head"]: r for r in rows if r["layer"] == layer}
        lines.append(f"| {layer} | " + " | ".join(
            f"{cells[h]['target']:.0f} / {cells[h]['objects']:.0f} ({cells[h]['image']:.0f})" for h in heads) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", default=str(SHIPPED_MODEL))
    p.add_argument("--n", type=int, default=120, help="first N test samples")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", type=Path, help="also write the rows here (and the table next to it, .md)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    pipe = LlavaPipeline.load(args.model_path)
    samples = [s for s in synthetic.generate_split("test", args.n) if s.patches]
    rows = attention_rows(pipe, samples, args.batch_size)
    table = to_markdown(rows)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": args.model_path, "samples": len(samples), "rows": rows},
                                        indent=2) + "\n")
        args.json.with_suffix(".md").write_text(table + "\n")
    return rows


if __name__ == "__main__":
    main()
