#!/usr/bin/env python
"""Per-question-type accuracy of a LLaVA checkpoint on the synthetic shapes-VQA task.

Loads the model through `LlavaPipeline` (so exactly what `fastv run` runs),
answers samples `--start .. --start + --n - 1` of `--split` with greedy
decoding, and scores exact match of the answer, lower-cased, without a final period. One or more
pruning methods can be compared on the same samples::

    .venv/bin/python scripts/eval_shapes.py --model-path models/llava-shapes-tiny --n 600 \\
        --method none --method fastervlm:keep=36 --json runs/eval.json
    .venv/bin/python scripts/eval_shapes.py --look drawn --n 600     # the held-out style
    .venv/bin/python scripts/eval_shapes.py --look hr --model-path models/llava-next-shapes-tiny

Prints a table (rows: methods, columns: question types) and one JSON object
({"model", "split", "start", "n", "results": {method: {type: accuracy, ...,
"overall": ...}}}) on the last line; `--json PATH` also writes it to a file.
With `--n` a multiple of 6 (of 12 for balanced exist yes/no) every type gets
the same number of samples.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from llava.data import synthetic
from llava.errors import CheckpointError, InputError, check_at_least, print_error
from llava.eval import shapes
from llava.pipeline import LlavaPipeline, Request


def evaluate(pipe: LlavaPipeline, samples, batch_size: int) -> tuple[dict, list[dict]]:
    records = []
    for i in range(0, len(samples), batch_size):
        batch = samples[i : i + batch_size]
        answers = pipe.answer([Request(s.image, s.prompt) for s in batch], max_new_tokens=8)
        for s, a in zip(batch, answers):
            records.append({"question_id": s.question_id, "type": s.question_type, "answer": s.answer,
                            "prediction": shapes.normalize(a.text), "correct": shapes.is_correct(a.text, s.answer)})
    acc = shapes.fractions_by_type((r["type"], r["correct"]) for r in records)
    colours = [r["prediction"] in synthetic.COLORS for r in records if r["type"] == "color"]
    if colours:  # a "What color ..." question answered with a colour word, right or wrong (never yes/no)
        acc["color_word_answers"] = sum(colours) / len(colours)
    return {name: round(value, 4) for name, value in acc.items()}, records


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-path", default="models/llava-shapes-tiny", help="llava-hf checkpoint folder")
    p.add_argument("--method", action="append", help="pruning spec, repeatable (default: none)")
    p.add_argument("--split", default="test", choices=sorted(synthetic.SPLIT_SEED_BASE))
    p.add_argument("--look", default="lattice", choices=synthetic.LOOKS,
                   help="the generator's look: lattice (shapes), drawn (shapes_style, held out), hr (shapes_hr)")
    p.add_argument("--n", type=int, default=600, help="samples to answer")
    p.add_argument("--start", type=int, default=0, help="index of the first sample")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--json", type=Path, help="also write the JSON result here")
    p.add_argument("--predictions", type=Path, help="write every prediction here (JSON lines)")
    args = p.parse_args(argv)
    try:
        for name, least in (("n", 1), ("start", 0), ("batch_size", 1), ("threads", 1)):
            check_at_least(f"--{name.replace('_', '-')}", getattr(args, name), least)
    except InputError as error:
        sys.exit(print_error(error))
    torch.set_num_threads(args.threads)
    methods = args.method or ["none"]
    samples = list(synthetic.generate_split(args.split, args.n, args.start, args.look))
    results, all_records = {}, []
    for method in methods:
        try:
            pipe = LlavaPipeline.load(args.model_path, method=method)
        except (InputError, CheckpointError, OSError) as error:
            sys.exit(print_error(error))
        t0 = time.time()
        results[method], records = evaluate(pipe, samples, args.batch_size)
        print(f"# {method}: {len(samples)} samples in {time.time() - t0:.0f}s", file=sys.stderr)
        all_records += [dict(r, method=method) for r in records]

    columns = list(synthetic.QUESTION_TYPES) + ["overall"]
    width = max(len(m) for m in methods + ["method"])
    print(f"{'method':<{width}}  " + "  ".join(f"{c:>8}" for c in columns))
    for method, acc in results.items():
        print(f"{method:<{width}}  " + "  ".join(f"{100 * acc[c]:>7.1f}%" for c in columns))
    out = {"model": args.model_path, "split": args.split, "look": args.look, "start": args.start, "n": len(samples),
           "results": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if args.predictions:
        args.predictions.parent.mkdir(parents=True, exist_ok=True)
        args.predictions.write_text("".join(json.dumps(r) + "\n" for r in all_records))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
