"""The papers' efficiency tables, laid out from `fastv bench` JSON files (scripts/latency/*.sh write both).

    python -m fastv.paper_tables fastv-latency results/X/fastv-aokvqa.json [results/X/fastv-aokvqa-4bit.json]
    python -m fastv.paper_tables hired-report results/X/hired-sys-report.json
    python -m fastv.paper_tables throughput results/X/bench-b1.json results/X/bench-b8.json results/X/bench-b32.json

- `fastv-latency`: FastV's README table (LLaVA-1.5-13B, A-OKVQA on an A100): per row the model with FastV off or
  K=2 at R = 25 / 50 / 75 %, first-token latency and peak GPU memory, the 4-bit rows below when given. FastV's
  numbers: 0.203 s unpruned, 0.181 / 0.155 / 0.124 s, 33 -> 29 / 28 / 27 GB.
- `hired-report`: HiRED's efficiency report (LLaVA-NeXT-7B on a Tesla P40, 20% budget): token throughput,
  time to first token and peak memory, full vs HiRED at 20% and 10%, with the ratios. HiRED's numbers:
  throughput 4.7x, TTFT 19.49 -> 4.21 s, peak memory 16.04 -> 13.76 GB.
- `throughput`: answers per second by batch size (one bench JSON per batch, same model and methods), every row's
  ratio to ours unpruned and to transformers unpruned at the same batch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastv.bench.output import REFERENCE  # the name of a row in the bench JSON read here (output.py writes it)
from fastv.paths import check_output_file
from llava.errors import InputError, print_error
from llava.jsonfile import read_json

GIB = 2**30


def _ours(result: dict) -> list[dict]:
    return [row for row in result["rows"] if row["spec"] is not None]


def _memory(row: dict) -> str:
    return "" if row["peak_memory_bytes"] is None else f"{row['peak_memory_bytes'] / GIB:.2f}"


def _fastv_setting(spec: str) -> str:
    """'off', or FastV's K and R as its table writes them."""
    from llava.model.pruning.registry import parse_method

    if spec == "none":
        return "off"
    args = parse_method(spec).args
    return f"K={args.k}, R={args.ratio:.0%}" if args.ratio is not None else f"K={args.k}, keep={args.keep}"


def fastv_latency(fp16: dict, quantized: dict | None = None) -> str:
    lines = [f"FastV's latency table, measured: {fp16['model']} on {fp16['machine']}, batch {fp16['batch']}, "
             f"{fp16['text_tokens']} text tokens + the image, median of {fp16['repeats']}", "",
             "| model | FastV | visual tokens after layer K | first-token latency (s) | / unpruned | peak memory (GiB) |",
             "|---|---|---:|---:|---:|---:|"]
    for result, label in ((fp16, fp16["dtype"]), (quantized, "4-bit")):
        if result is None:
            continue
        for row in _ours(result):
            lines.append(f"| {label} | {_fastv_setting(row['spec'])} | {row['kept_after_layer_k']} | {row['ttft_s']:.3f} "
                         f"| {row.get('ttft_vs_ours_unpruned', 0):.3f} | {_memory(row)} |")
    return "\n".join(lines)


def hired_report(result: dict) -> str:
    rows = _ours(result)
    full = next(row for row in rows if row["spec"] == "none")
    lines = [f"HiRED's efficiency report, measured: {result['model']} on {result['machine']}, batch {result['batch']}, "
             f"{result['new_tokens']} new tokens, median of {result['repeats']}", "",
             "| method | visual tokens | token throughput (tokens/s) | x full | TTFT (s) | x full | peak memory (GiB) "
             "| saved (GiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        saved = ("" if row["peak_memory_bytes"] is None or full["peak_memory_bytes"] is None
                 else f"{(full['peak_memory_bytes'] - row['peak_memory_bytes']) / GIB:.2f}")
        lines.append(f"| {row['spec']} | {row['visual_tokens']} | {row['tokens_per_s']:.1f} "
                     f"| {row['tokens_per_s'] / full['tokens_per_s']:.2f} | {row['ttft_s']:.3f} "
                     f"| {row['ttft_s'] / full['ttft_s']:.2f} | {_memory(row)} | {saved} |")
    return "\n".join(lines)


def throughput(results: list[dict]) -> str:
    results = sorted(results, key=lambda result: result["batch"])
    first = results[0]
    batches = [result["batch"] for result in results]
    lines = [f"Answers per second by batch size, measured: {first['model']} on {first['machine']}, {first['dtype']}, "
             f"{first['new_tokens']} new tokens per answer, each sample its own image (and keep set); in brackets: "
             "/ ours unpruned, / transformers unpruned at the same batch", "",
             "| method | " + " | ".join(f"batch {batch}" for batch in batches) + " |",
             "|---|" + "---:|" * len(batches)]
    columns = []  # per batch: {method: (answers/s, "ratios")}
    for result in results:
        rows = {row["method"]: row for row in result["rows"]}
        bases = [row["answers_per_s"] for row in result["rows"] if row["spec"] == "none" or row["method"] == REFERENCE]
        columns.append({method: (row["answers_per_s"], " / ".join(f"{row['answers_per_s'] / base:.2f}" for base in bases))
                        for method, row in rows.items()})
    for method in dict.fromkeys(method for column in columns for method in column):
        cells = [f"{column[method][0]:.2f} ({column[method][1]})" if method in column else "" for column in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_result(path: Path) -> dict:
    """A `fastv bench` JSON file, or one InputError line naming it (missing, not JSON, not a bench result)."""
    result = read_json(path, dict, what="fastv bench result", fix="give a file `fastv bench --json` wrote")
    if not isinstance(result.get("rows"), list):
        raise InputError(f"fastv bench result {path} has no list of `rows`; give a file `fastv bench --json` wrote")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fastv.paper_tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=["fastv-latency", "hired-report", "throughput"])
    parser.add_argument("results", nargs="+", type=Path,
                        help="fastv bench JSON files (fastv-latency: fp16, then 4-bit; throughput: one per batch size)")
    parser.add_argument("--out", help="also write the table here (Markdown)")
    args = parser.parse_args(argv)
    try:
        out = None if args.out is None else check_output_file("--out", args.out)  # before the tables are read
        results = [read_result(path) for path in args.results]
    except InputError as error:
        sys.exit(print_error(error))
    tables = {"fastv-latency": lambda: fastv_latency(*results[:2]), "hired-report": lambda: hired_report(results[0]),
              "throughput": lambda: throughput(results)}
    table = tables[args.table]()
    print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")


if __name__ == "__main__":
    main()
