"""Accuracy vs budget: every registered method at several shares of the visual tokens, on one benchmark.

    fastv sweep --limit 300 --batch-size 32 --out results/cpu-2core-2026-11-24/shapes-sweep

Loads the model once and switches methods with `set_pruning`; every (method,
budget) gets its own run directory under `--out` (answers, scores, run.json), so
an interrupted sweep resumes where it stopped. Writes `sweep.json`, `sweep.md`
(overall accuracy per method and budget, then per question type) and `sweep.png`.

Budgets are shares of the visual tokens per image, in (0, 1]: `keep = round(share *
tokens)`. `pool` needs a square grid, so it keeps the nearest square number of
tokens; the table reports the tokens each run really kept (mean over questions)
and the number of questions each score was taken over. Every option is checked
before the model is loaded.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

DEFAULT_SHARES = (1.0, 0.5, 0.25, 0.1, 0.05)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--benchmark", default="shapes", help="benchmark name (see llava/eval/registry.py)")
    parser.add_argument("--data-root", default="playground/data/eval", help="benchmark data root")
    parser.add_argument("--out", required=True, help="folder for the run directories, sweep.{json,md,png}")
    parser.add_argument("--methods", nargs="+", help="method names (default: every registered method)")
    parser.add_argument("--shares", nargs="+", type=float, default=list(DEFAULT_SHARES),
                        help="fractions of the visual tokens KEPT per image (1.0 = all)")
    parser.add_argument("--limit", type=int, help="answer only the first N questions")
    parser.add_argument("--n-questions", type=int, default=600,
                        help="shapes benchmarks only: test questions to generate when the data root has none")
    parser.add_argument("--max-new-tokens", type=int, help="tokens generated at most (default: the benchmark's)")
    parser.add_argument("--batch-size", type=int, default=16, help="questions answered together")
    parser.add_argument("--device", default="cpu")


def method_spec(name: str, share: float, tokens: int) -> str:
    """The spec that keeps `share` of `tokens` visual tokens with method `name`."""
    if name == "none":
        return "none"
    keep = round(share * tokens)
    if name == "pool":
        keep = max(1, round(math.sqrt(keep))) ** 2
    if name == "fastv":
        return f"fastv:k=2,keep={keep}"
    return f"{name}:keep={keep}"


def check_options(out, names, shares, limit, max_new_tokens, batch_size, device) -> None:
    """InputError naming the first bad option; nothing is loaded or computed before this passes."""
    from llava.device import resolve_device
    from llava.errors import InputError
    from llava.eval.run import check_run_options, prepare_output_dir
    from llava.generate import check_generation_options
    from llava.model.pruning.registry import available_methods, parse_method

    bad = [share for share in shares if not 0 < share <= 1]
    if bad or not shares:
        raise InputError(f"--shares must be fractions of the visual tokens kept, in (0, 1]; got {', '.join(map(str, bad or shares)) or 'none'}")
    known = available_methods()
    for name in names:
        if name not in known:
            parse_method(name)  # the registry's "unknown method ... did you mean" error
    check_run_options(batch_size, limit)
    if max_new_tokens is not None:
        check_generation_options(max_new_tokens, 0.0)
    resolve_device(device)
    prepare_output_dir(Path(out))


def main(
    out: str,
    model_path: str | None = None,
    benchmark: str = "shapes",
    data_root: str = "playground/data/eval",
    methods: list[str] | None = None,
    shares: list[float] = DEFAULT_SHARES,
    limit: int | None = None,
    n_questions: int = 600,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
) -> dict:
    from fastv.cli import model_or_shipped
    from llava.eval.registry import get_benchmark
    from llava.eval.run import run_benchmark
    from llava.eval.shapes import LOOKS as SHAPES_LOOKS
    from llava.model.pruning.registry import available_methods
    from llava.pipeline import LlavaPipeline

    names = methods or available_methods()
    check_options(out, names, shares, limit, max_new_tokens, batch_size, device)
    model_path = model_or_shipped(model_path)
    bench = get_benchmark(benchmark)
    folder = Path(data_root) / bench.folder
    if benchmark in SHAPES_LOOKS and not (folder / bench.question_file).is_file():  # generated when missing
        from llava.data.synthetic import write_split

        write_split("test", n_questions, folder, look=SHAPES_LOOKS[benchmark])
    pipe = LlavaPipeline.load(model_path, device=device)
    tokens = pipe.model.config.tokens_per_image

    runs = []
    for name in names:
        for share in ([1.0] if name == "none" else shares):
            spec = pipe.model.set_pruning(method_spec(name, share, tokens)).spec
            run_dir = Path(out) / spec.replace(":", "_").replace(",", "_").replace("=", "")
            scores = run_benchmark(
                benchmark, pipe, data_root, run_dir, model_path=model_path, method=spec,
                max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit, progress=False,
            )
            metrics = scores["metrics"]
            runs.append({
                "method": name, "spec": spec, "share": share,
                "kept_tokens": scores["run"].get("kept_tokens_mean"), "questions": scores["run"]["questions"],
                "accuracy": metrics.get("accuracy", scores["headline"]["value"]),
                "types": metrics.get("types", {}),
            })
    result = {"model": model_path, "benchmark": benchmark, "tokens_per_image": tokens, "runs": runs}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    table = to_markdown(result)
    (Path(out) / "sweep.md").write_text(table + "\n")
    plot(result, Path(out) / "sweep.png")
    print(table)
    return result


def to_markdown(result: dict) -> str:
    runs = result["runs"]
    shares = sorted({r["share"] for r in runs if r["method"] != "none"}, reverse=True)
    unpruned = next((r for r in runs if r["method"] == "none"), None)
    tokens = result["tokens_per_image"]
    header = " | ".join(f"{s:.0%} ({round(s * tokens)})" for s in shares)
    counts = sorted({r.get("questions") for r in runs}, key=str)
    over = (f"over {counts[0]} questions each" if len(counts) == 1
            else f"over different numbers of questions ({', '.join(map(str, counts))}: see the per-type table)")
    lines = [
        f"Accuracy (%) on {result['benchmark']}, by method and share of the {tokens} visual tokens kept per image, {over}",
        "",
        f"| method | {header} |",
        "|---|" + "---:|" * len(shares),
    ]
    if unpruned:
        lines.append(f"| none (unpruned) | {_number(unpruned['accuracy'])} |" + " |" * (len(shares) - 1))
    for name in dict.fromkeys(r["method"] for r in runs if r["method"] != "none"):
        by_share = {r["share"]: r for r in runs if r["method"] == name}
        cells = [_number(by_share[s]["accuracy"]) if s in by_share else "" for s in shares]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    types = sorted({t for r in runs for t in r["types"]})
    if types:
        lines += ["", "Per question type (\"-\": the run had no question of that type):", "",
                  "| method | kept | questions | " + " | ".join(types) + " |", "|---|---:|---:|" + "---:|" * len(types)]
        for r in runs:
            kept = f"{r['kept_tokens']:.0f}" if r["kept_tokens"] is not None else ""
            cells = " | ".join(_number(r["types"].get(t)) for t in types)
            lines.append(f"| {r['spec']} | {kept} | {r.get('questions', '')} | {cells} |")
    return "\n".join(lines)


def _number(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for name in dict.fromkeys(r["method"] for r in result["runs"]):
        points = sorted((r["share"], r["accuracy"]) for r in result["runs"]
                        if r["method"] == name and r["accuracy"] is not None)
        if not points:
            continue
        if name == "none":
            axis.axhline(points[0][1], color="black", linestyle="--", linewidth=1, label="none (unpruned)")
        else:
            axis.plot([100 * s for s, _ in points], [a for _, a in points], marker="o", label=name)
    axis.set_xscale("log")
    axis.set_xticks([100 * s for s in sorted({r["share"] for r in result["runs"]})])
    axis.set_xticklabels([f"{100 * s:g}%" for s in sorted({r["share"] for r in result["runs"]})])
    axis.set_xlabel(f"visual tokens kept (share of {result['tokens_per_image']})")
    axis.set_ylabel("accuracy (%)")
    axis.set_title(f"{result['benchmark']}: accuracy vs visual-token budget")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
