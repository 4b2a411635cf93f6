"""`fastv report RUN_DIRS...`: the paper-style table of evaluation runs, as Markdown and CSV.

Rows: method and budget (one table per checkpoint); columns: benchmarks, each the
benchmark's headline number (scores.json); last column: the mean over the row's
benchmarks of its score relative to the unpruned run's ("none"), in percent, as
FasterVLM's tables report it. "Tokens" is the mean number of visual tokens that
entered the LLM per image, as measured (run.json), not the budget asked for.

Each argument is a run directory (holding scores.json) or a folder searched for
them, e.g. `fastv report outputs/eval`. Benchmarks scored by a server or a GPT
judge (VQAv2 and VizWiz test, MM-Vet, LLaVA-Bench) have no local number: put the
score you got back in `external_score.json` ({"value": 78.5, "source": "EvalAI"})
in the run directory and the table shows it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from llava.eval.registry import BENCHMARKS


def collect(run_dirs: list[str]) -> list[dict]:
    """Every scores.json under the given paths, with its directory."""
    found = []
    for run_dir in run_dirs:
        path = Path(run_dir)
        paths = [path / "scores.json"] if (path / "scores.json").is_file() else sorted(path.rglob("scores.json"))
        if not paths:
            raise FileNotFoundError(f"no scores.json in {path}")
        for scores_path in paths:
            scores = json.loads(scores_path.read_text(encoding="utf-8"))
            scores["value"] = headline_value(scores, scores_path.parent)
            found.append(scores)
    return found


def headline_value(scores: dict, run_dir: Path) -> float | None:
    value = scores.get("headline", {}).get("value")
    external = run_dir / "external_score.json"
    if value is None and external.is_file():
        value = json.loads(external.read_text(encoding="utf-8")).get("value")
    return value


def build_rows(runs: list[dict]) -> tuple[dict[str, list[dict]], list[str]]:
    """{model: [row]} with row = {method, budget, tokens, scores: {benchmark: value}, relative}; benchmark order."""
    models: dict[str, dict[tuple, dict]] = {}
    for scores in sorted(runs, key=lambda s: s["run"].get("finished") or ""):  # a later run of the same cell wins
        run = scores["run"]
        row_key = (run.get("method_spec") or "none", run.get("budget"), run.get("ratio"))
        row = models.setdefault(run.get("model_id") or "?", {}).setdefault(row_key, {
            "method": run.get("method_name") or "none", "spec": row_key[0], "budget": run.get("budget"),
            "ratio": run.get("ratio"), "tokens": [], "scores": {},
        })
        row["scores"][scores["benchmark"]] = scores["value"]
        if run.get("visual_tokens_mean") is not None:
            row["tokens"].append(run["visual_tokens_mean"])
    present = {s["benchmark"] for s in runs}
    benchmarks = [name for name in BENCHMARKS if name in present]
    tables = {}
    for model, rows in models.items():
        ordered = sorted(rows.values(), key=lambda r: (r["method"] != "none", r["method"], -(r["budget"] or 0), r["spec"]))
        baseline = next((r for r in ordered if r["method"] == "none"), None)
        for row in ordered:
            row["tokens"] = sum(row["tokens"]) / len(row["tokens"]) if row["tokens"] else None
            row["relative"] = relative_to(row, baseline, benchmarks)
        tables[model] = ordered
    return tables, benchmarks


def relative_to(row: dict, baseline: dict | None, benchmarks: list[str]) -> float | None:
    """Mean over benchmarks of row / baseline, in percent (benchmarks both have a number for)."""
    if baseline is None:
        return None
    ratios = [
        row["scores"][b] / baseline["scores"][b]
        for b in benchmarks
        if row["scores"].get(b) is not None and baseline["scores"].get(b)
    ]
    return 100.0 * sum(ratios) / len(ratios) if ratios else None


def _budget(row: dict) -> str:
    if row["budget"] is not None:
        return str(row["budget"])
    if row["ratio"] is not None:
        return f"R={row['ratio']:g}"
    return "-"


def _number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_cells(rows: list[dict], benchmarks: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["Method", "Budget", "Tokens"] + [BENCHMARKS[b].title for b in benchmarks] + ["Avg. (% of unpruned)"]
    body = [
        [row["spec"] if row["method"] != "none" else "none (unpruned)", _budget(row), _number(row["tokens"])]
        + [_number(row["scores"].get(b)) for b in benchmarks]
        + [_number(row["relative"]) + ("%" if row["relative"] is not None else "")]
        for row in rows
    ]
    return header, body


def report(run_dirs: list[str], out: str | None = None) -> str:
    """The Markdown table of the runs under `run_dirs`; with `out`, also written to
    `<out>.md` and `<out>.csv` (a trailing .md or .csv on `out` is dropped first)."""
    tables, benchmarks = build_rows(collect(run_dirs))
    markdown, rows_for_csv = [], []
    for model, rows in tables.items():
        header, body = table_cells(rows, benchmarks)
        markdown += [f"### {model}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        markdown += ["| " + " | ".join(cells) + " |" for cells in body]
        markdown.append("")
        rows_for_csv += [["Model"] + header] if not rows_for_csv else []
        rows_for_csv += [[model] + cells for cells in body]
    text = "\n".join(markdown)
    if out:
        stem = Path(out)
        if stem.suffix in (".md", ".csv"):
            stem = stem.with_suffix("")
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".md").write_text(text, encoding="utf-8")
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows_for_csv)
        stem.with_suffix(".csv").write_text(buffer.getvalue(), encoding="utf-8")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="run directories, or folders holding them (searched)")
    parser.add_argument("--out", help="also write OUT.md and OUT.csv")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastv report", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        print(report(args.run_dirs, args.out))
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
