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

The analysis and the drawing live below the command, in fastv/attention_maps.py (`fastv demo` and
`fastv analyze` use them too); this module holds the options, their checks and what is written where.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastv.attention_maps import analyse, draw
from fastv.shipped import model_or_shipped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--prompt", required=True, help="the question, without <image>")
    parser.add_argument("--out", required=True, help="folder for attention.json and the PNGs (created)")
    parser.add_argument("--layer", type=int, default=1, help="decoder layer of the image overlay [default: 1]")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer tokens generated at most [default: 16]")
    parser.add_argument("--conv-mode", default="vicuna_v1", help="conversation template")


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
