#!/usr/bin/env python
"""Do the pruning methods keep the visual tokens a shapes question is about?

For every method and budget, on the first N test samples of the synthetic
shapes task, the share of the question's target tokens (the tokens of the
object(s) the question names, or of the text box for ocr; `Sample.patches`
mapped to the model's patch grid) that survive pruning. Unlike accuracy, this
does not depend on how well the LLM reads what it is given: it tells a method
that keeps the wrong tokens (or a wrong index) from a model that cannot use
the right ones.

    .venv/bin/python scripts/kept_recall.py --n 300 --json results/<machine-date>/kept_recall.json

Samples whose question has no target tokens (exist questions answered "no")
are skipped. `pool` is left out: it averages every token into its cells, so
its "kept" indices (the cell centres) say nothing about what it keeps.
Prints a markdown table: mean recall (%) per method and share, and the share
of questions whose target tokens were all kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastv.cli import SHIPPED_MODEL  # noqa: E402
from fastv.sweep import DEFAULT_SHARES, method_spec  # noqa: E402
from llava.data import synthetic  # noqa: E402
from llava.model.pruning.registry import available_methods  # noqa: E402
from llava.pipeline import LlavaPipeline, Request  # noqa: E402


def recall_table(pipe: LlavaPipeline, samples: list, methods: list[str], shares: list[float],
                 batch_size: int = 32) -> list[dict]:
    vision = pipe.model.config.vision
    targets = [synthetic.tokens_on_grid(s.patches, vision.patch_size) for s in samples]
    rows = []
    for name in methods:
        for share in shares:
            spec = pipe.model.set_pruning(method_spec(name, share, vision.num_patches)).spec
            recalls = []
            for start in range(0, len(samples), batch_size):
                batch = samples[start:start + batch_size]
                answers = pipe.answer([Request(s.image, s.prompt) for s in batch], max_new_tokens=1)
                for answer, target in zip(answers, targets[start:start + batch_size]):
                    kept = set(answer.kept[0])
                    recalls.append(len(kept & target) / len(target))
            rows.append({
                "method": name, "spec": spec, "share": share,
                "recall": 100 * sum(recalls) / len(recalls),
                "all_kept": 100 * sum(r == 1.0 for r in recalls) / len(recalls),
                "questions": len(recalls),
            })
            print(f"{spec:28s} recall {rows[-1]['recall']:5.1f}%  all kept {rows[-1]['all_kept']:5.1f}%",
                  file=sys.stderr, flush=True)
    return rows


def to_markdown(rows: list[dict], tokens: int) -> str:
    shares = sorted({r["share"] for r in rows}, reverse=True)
    lines = [f"Target-token recall (%): share of the question's object tokens kept, by share of the {tokens} "
             "visual tokens kept (in brackets: % of questions with every target token kept)", "",
             "| method | " + " | ".join(f"{s:.0%} ({round(s * tokens)})" for s in shares) + " |",
             "|---|" + "---:|" * len(shares)]
    for name in dict.fromkeys(r["method"] for r in rows):
        by_share = {r["share"]: r for r in rows if r["method"] == name}
        lines.append(f"| {name} | " + " | ".join(
            f"{by_share[s]['recall']:.1f} ({by_share[s]['all_kept']:.0f})" if s in by_share else ""
            for s in shares) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", default=str(SHIPPED_MODEL))
    p.add_argument("--n", type=int, default=300, help="first N test samples")
    p.add_argument("--methods", nargs="+", help="default: every registered method but none and pool")
    p.add_argument("--shares", nargs="+", type=float, default=[s for s in DEFAULT_SHARES if s < 1])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    pipe = LlavaPipeline.load(args.model_path)
    samples = [s for s in synthetic.generate_split("test", args.n) if s.patches]
    methods = args.methods or [m for m in available_methods() if m not in ("none", "pool")]
    rows = recall_table(pipe, samples, methods, args.shares, args.batch_size)
    table = to_markdown(rows, pipe.model.config.vision.num_patches)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": args.model_path, "rows": rows}, indent=2) + "\n")
        args.json.with_suffix(".md").write_text(table + "\n")
    return rows


if __name__ == "__main__":
    main()
