"""`fastv report RUN_DIRS...`: the paper-style table of evaluation runs, as Markdown and CSV.

Rows: method and budget, and every other setting that changes the answers (one table per checkpoint;
runs that differ in LLaVA-NeXT's layout, dtype, template, ... are rows of their own, each labelled with
the settings that differ between the table's rows). Settings are compared as the runner compares them
before a resume (`check_same_run`): a setting a run did not record (None: an older run.json, a sweep's
dtype) is not known and matches any value, so such a run joins the row of the runs it agrees with; where
it agrees with runs that differ from each other, it is shown on a row of its own and a line says why.
Columns: benchmarks, each cell
the benchmark's headline number (scores.json) and, in brackets, the number of
questions it was taken over; last column: the mean over the row's benchmarks of
its score relative to the unpruned run's ("none", with the same settings), in percent, as FasterVLM's
tables report it. "Tokens" is the mean number of visual tokens that entered the
LLM per image, as measured (run.json), not the budget asked for.

A run that is not a score is never shown as one: a run that never finished
(killed or still running: run.json's `finished` is null, or there is no
scores.json), one with unanswered questions, or one over zero questions shows
`-*`, and a line under the table names its folder and what is wrong. Of two runs
of one cell, a complete run wins over an incomplete one, then the later one; a line under the table
names the folder of the run not shown.
When a benchmark's runs in one table were taken over different question sets
(run.json's `question_set` digest, or the question count for older runs), its
cells carry `†`, a line says which, and the benchmark is left out of the average.

Each argument is a run directory (holding scores.json or run.json) or a folder
searched for them, e.g. `fastv report outputs/eval`. A corrupt scores.json or
run.json is an error naming the file. Benchmarks scored by a server or a GPT
judge (VQAv2 and VizWiz test, MM-Vet, LLaVA-Bench) have no local number: put the
score you got back in `external_score.json` ({"value": 78.5, "source": "EvalAI"})
in the run directory and the table shows it.

FastV runs over a K x R grid (`scripts/fastv/ablation_kr.sh`) also get FastV's heat table, score by
K and R with each cell's FLOPs ratio (`fastv/ablation.py`); with `--out`, a PNG of it beside.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from fastv import ablation
from fastv.paths import check_not_empty, check_output_file
from llava.errors import InputError, print_error
from llava.eval.registry import BENCHMARKS
from llava.eval.runfolder import SAME_RUN_SETTINGS, read_record
from llava.eval.runfolder import comparable_setting

# What a cell can say besides its score (a mark after the number, explained under the table).
INCOMPLETE = "*"  # the run has not answered every question, or never finished (killed or still running)
OTHER_QUESTIONS = "†"  # this column's runs were taken over different question sets: not comparable
NOT_SHOWN = "‡"  # a line under the table: a run of a cell that another run of the same settings replaced
UNKNOWN = "?"  # a setting a run did not record, in a row's label
# What changes a run's answers besides its model and method (the settings the runner refuses to resume
# across): runs that differ in one are rows of their own. max_new_tokens counts where it is not the
# benchmark's default (LLaVA's defaults differ by benchmark, so one row holds 128 and 1024). Not the device:
# cpu and cuda runs of one dtype are the same experiment (the runner refuses a resume across devices only so
# as not to mix float noise into one answers file); two runs of one cell on two devices show the preferred
# one and name the other under the table.
ROW_SETTINGS = tuple(name for name in SAME_RUN_SETTINGS
                     if name not in ("benchmark", "model_id", "method", "max_new_tokens", "device"))
DEFAULT = "default"  # max_new_tokens as the benchmark's default: known, unlike a run.json that lacks it


def collect(run_dirs: list[str]) -> list[dict]:
    """Every run under the given paths (a directory holding scores.json or run.json), read as `read_run_dir` reads it."""
    found, seen = [], set()
    for run_dir in run_dirs:
        path = Path(run_dir)
        if not path.exists():
            raise InputError(f"no such run directory or folder: {path}")
        if _is_run(path):
            folders = [path]
        else:
            folders = sorted({p.parent for name in ("scores.json", "run.json") for p in path.rglob(name)})
        if not folders:
            raise InputError(f"no scores.json or run.json in {path}: nothing to report")
        for folder in folders:  # a folder named twice (itself and a folder above it) is one run
            if folder.resolve() not in seen:
                seen.add(folder.resolve())
                found.append(read_run_dir(folder))
    return found


def _is_run(path: Path) -> bool:
    return (path / "scores.json").is_file() or (path / "run.json").is_file()


def read_run_dir(folder: Path) -> dict:
    """{benchmark, run, value, questions, complete, why, folder} of one run directory.

    `value` is the headline number only for a complete run: scores.json present, run.json (when
    there) not left unfinished, every question answered, and more than zero questions; otherwise
    `why` says what is wrong and the run stands in the table as "-" with a mark, never as a score.
    """
    scores = read_record(folder / "scores.json")
    run = read_record(folder / "run.json")
    if run is None:
        run = (scores or {}).get("run", {})
    benchmark = (scores or {}).get("benchmark") or run.get("benchmark") or folder.name
    questions, missing = run.get("questions"), run.get("missing") or 0
    if scores is None:
        why = f"not finished: {run.get('answered', 0)} of {questions} answered (no scores.json)"
    elif run.get("finished", "") is None:  # run.json says a run started after this score was written
        why = f"not finished: {run.get('answered', 0)} of {questions} answered (scores.json is an older run's)"
    elif not questions:
        why = "0 questions: no score"
    elif missing:
        why = f"{missing} of {questions} questions have no answer (counted wrong)"
    else:
        why = None
    value = headline_value(scores, folder) if scores is not None and why is None else None
    metrics = (scores or {}).get("metrics") or {}
    # video QA (llava/eval/video_qa.py): the GPT judge's Score beside its Accuracy, as FasterVLM's tables
    judge_score = metrics.get("score") if value is not None and isinstance(metrics.get("judge"), dict) else None
    return {"benchmark": benchmark, "run": run, "value": value, "questions": questions, "complete": why is None,
            "why": why, "folder": folder, "judge_score": judge_score}


def headline_value(scores: dict, run_dir: Path) -> float | None:
    value = (scores.get("headline") or {}).get("value")
    external = run_dir / "external_score.json"
    if value is None and external.is_file():
        value = (read_record(external) or {}).get("value")
    return value


def _preference(entry: dict) -> tuple:
    """Of two runs of one cell the complete one wins; then the later one."""
    run = entry["run"]
    return (entry["complete"], run.get("finished") or "", run.get("started") or "")


def build_rows(runs: list[dict]) -> tuple[dict[str, list[dict]], list[str]]:
    """{model: [row]} with row = {method, spec, name, settings, budget, tokens, cells: {benchmark: run},
    dropped: [(benchmark, run not shown, run shown)], relative}; benchmark order.

    A row is one method spec under one group of compatible answer settings (`settings_groups`): runs made
    under another LLaVA-NeXT layout, dtype, ... are never merged into its cells, runs that did not record a
    setting are. A row's `relative` is taken against the unpruned row of the same group and leaves out the
    benchmarks whose runs in that table were taken over different question sets (`mixed_benchmarks`; their
    cells are marked OTHER_QUESTIONS).
    """
    by_model: dict[str, list[dict]] = {}
    for entry in runs:
        by_model.setdefault(entry["run"].get("model_id") or "?", []).append(entry)
    models: dict[str, dict[tuple, dict]] = {}
    for model, entries in by_model.items():
        groups = settings_groups([answer_settings(entry) for entry in entries])
        for entry in sorted(entries, key=_preference):  # the preferred run of a cell comes last and wins
            run = entry["run"]
            entry["group"], settings, apart = groups[answer_settings(entry)]
            row_key = (run.get("method_spec") or "none", run.get("budget"), run.get("ratio"), entry["group"])
            row = models.setdefault(model, {}).setdefault(row_key, {
                "method": run.get("method_name") or "none", "spec": row_key[0], "budget": run.get("budget"),
                "ratio": run.get("ratio"), "group": entry["group"], "settings": settings, "apart": apart,
                "cells": {}, "dropped": [],
            })
            replaced = row["cells"].get(entry["benchmark"])
            if replaced is not None:
                row["dropped"].append((entry["benchmark"], replaced, entry))
            row["cells"][entry["benchmark"]] = entry
    present = {entry["benchmark"] for entry in runs}
    benchmarks = [name for name in BENCHMARKS if name in present] + sorted(present - set(BENCHMARKS))
    tables = {}
    for model, rows in models.items():
        name_rows(list(rows.values()))
        ordered = sorted(rows.values(), key=lambda r: (r["method"] != "none", r["method"], -(r["budget"] or 0), r["spec"],
                                                       r["name"]))
        mixed = mixed_benchmarks(ordered, benchmarks)
        for row in ordered:
            tokens = [e["run"]["visual_tokens_mean"] for e in row["cells"].values()
                      if e["complete"] and e["run"].get("visual_tokens_mean") is not None]
            row["tokens"] = sum(tokens) / len(tokens) if tokens else None
            row["scores"] = {b: e["value"] for b, e in row["cells"].items()}
        for row in ordered:
            row["baseline"] = next((r for r in ordered if r["method"] == "none" and r["group"] == row["group"]), None)
            row["relative"] = relative_to(row, row["baseline"], [b for b in benchmarks if b not in mixed])
        tables[model] = ordered
    return tables, benchmarks


def answer_settings(entry: dict) -> tuple:
    """((setting, value), ...): what, besides model and method, the run's answers were made under, each value
    as the runner compares it (`comparable_setting`); None where the run did not record it."""
    run = entry["run"]
    bench = BENCHMARKS.get(entry["benchmark"])
    max_new_tokens = run.get("max_new_tokens")
    if bench is not None and max_new_tokens == bench.max_new_tokens:
        max_new_tokens = DEFAULT  # the benchmark's default, as every run of it
    values = [(name, comparable_setting(name, run.get(name))) for name in ROW_SETTINGS] + [("max_new_tokens", max_new_tokens)]
    return tuple((name, tuple(value) if isinstance(value, list) else value) for name, value in values)


def compatible(first: tuple, second: tuple) -> bool:
    """`check_same_run`'s rule: two settings agree unless both are known and differ (None is not known)."""
    return all(a is None or b is None or a == b for (_, a), (_, b) in zip(first, second))


def settings_groups(recorded: list[tuple]) -> dict[tuple, tuple[frozenset, tuple, dict]]:
    """{settings: (group, the group's settings, apart)}: which runs of one table share rows and a baseline.

    Settings that agree (`compatible`) are one group, shown with every value any of them recorded. A settings
    that agrees with two settings that disagree with each other (an older run.json without a layout, in a table
    with runs of two layouts) could belong to either: it is a group of its own, and `apart` is {setting: the
    known values it could have}, for the line under the table; {} otherwise. Without those, agreeing is
    transitive (two settings that agree with a third that is not apart agree with each other), so the groups are
    well defined and do not depend on the order of the runs.
    """
    distinct = sorted(set(recorded), key=repr)
    apart = {}
    for settings in distinct:
        agree = [other for other in distinct if other != settings and compatible(settings, other)]
        if any(not compatible(a, b) for a in agree for b in agree):
            apart[settings] = {
                name: values for i, (name, value) in enumerate(settings)
                if value is None and len(values := sorted({other[i][1] for other in agree if other[i][1] is not None},
                                                          key=repr)) > 1
            }
    groups = {}
    for settings in distinct:
        if settings in apart:
            groups[settings] = (frozenset([settings]), settings, apart[settings])
            continue
        members = [other for other in distinct if other not in apart and compatible(settings, other)]
        merged = tuple((name, next((m[i][1] for m in members if m[i][1] is not None), None))
                       for i, (name, _) in enumerate(settings))
        groups[settings] = (frozenset(members), merged, {})
    return groups


def name_rows(rows: list[dict]) -> None:
    """Each row's `name`: its method spec and, in brackets, the settings that differ between the table's rows."""
    for row in rows:
        row["name"] = row["spec"] + settings_label(row["settings"], [r["settings"] for r in rows])


def settings_label(settings: tuple, among: list[tuple]) -> str:
    """' [image_grid=672x672, dtype=float16]': the settings in which `settings` is one of several `among`."""
    differing = [i for i in range(len(settings)) if len({other[i][1] for other in among}) > 1]
    said = ", ".join(f"{settings[i][0]}={_setting(settings[i][1])}" for i in differing)
    return f" [{said}]" if said else ""


def _setting(value) -> str:
    """A setting as a table cell shows it: a list of canvases as 672x672/336x672 (no '|', which splits a cell),
    one the run did not record as ?."""
    if isinstance(value, tuple):
        return "/".join(map(str, value))
    return UNKNOWN if value is None else str(value)


def mixed_benchmarks(rows: list[dict], benchmarks: list[str]) -> set[str]:
    """The benchmarks whose complete runs in one table were taken over different question sets."""
    return {b for b in benchmarks if len(question_sets(rows, b)) > 1}


def question_sets(rows: list[dict], benchmark: str) -> set:
    """The distinct question sets of a benchmark's complete runs in one table (a digest, or the count
    for a run.json written before digests were recorded)."""
    return {
        e["run"].get("question_set") or f"{e['questions']} questions"
        for r in rows if (e := r["cells"].get(benchmark)) is not None and e["complete"]
    }


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


def _cell(entry: dict | None, mixed: bool) -> str:
    """"score (questions)"; a run that is no score shows "-" with its mark, never a number."""
    if entry is None:
        return "-"
    if not entry["complete"]:
        return f"-{INCOMPLETE}"
    mark = OTHER_QUESTIONS if mixed else ""
    judge_score = f"/{entry['judge_score']:.2f}" if entry.get("judge_score") is not None else ""
    return f"{_number(entry['value'])}{judge_score} ({entry['questions']}){mark}"


def table_cells(rows: list[dict], benchmarks: list[str]) -> tuple[list[str], list[list[str]]]:
    title = lambda b: BENCHMARKS[b].title if b in BENCHMARKS else b
    header = ["Method", "Budget", "Tokens"] + [title(b) for b in benchmarks] + ["Avg. (% of unpruned)"]
    mixed = mixed_benchmarks(rows, benchmarks)
    body = [
        [row["name"] if row["method"] != "none" else row["name"].replace("none", "none (unpruned)", 1), _budget(row),
         _number(row["tokens"])]
        + [_cell(row["cells"].get(b), b in mixed) for b in benchmarks]
        + [_number(row["relative"]) + ("%" if row["relative"] is not None else "")]
        for row in rows
    ]
    return header, body


def notes(rows: list[dict], benchmarks: list[str]) -> list[str]:
    """The lines under a table: what the cells say, and every run that is not a score, by folder."""
    lines = ["Cells: headline score (questions it was taken over)."]
    if any(entry.get("judge_score") is not None for row in rows for entry in row["cells"].values()):
        lines[0] = "Cells: headline score (questions it was taken over); video QA: the GPT judge's Accuracy/Score."
    for row in rows:
        for benchmark in benchmarks:
            entry = row["cells"].get(benchmark)
            if entry is not None and not entry["complete"]:
                lines.append(f"{INCOMPLETE} {row['name']}, {benchmark}: {entry['why']} ({entry['folder']})")
    for row in rows:
        for benchmark, dropped, shown in row["dropped"]:
            why = "an incomplete run" if shown["complete"] and not dropped["complete"] else "an older run"
            lines.append(f"{NOT_SHOWN} {row['name']}, {benchmark}: not shown: {dropped['folder']} ({why} of the same"
                         f" method and settings; shown: {shown['folder']})")
    for group in dict.fromkeys(row["group"] for row in rows if row["apart"]):
        names = [row["name"] for row in rows if row["group"] == group]
        apart = next(row["apart"] for row in rows if row["group"] == group)
        values = "; ".join(f"{name}={', '.join(map(_setting, known))}" for name, known in apart.items())
        lines.append(f"{UNKNOWN} {', '.join(names)}: {', '.join(apart)} not recorded, and the runs of this table that"
                     f" recorded it differ ({values}): not merged with either, shown apart")
    if any(row["method"] == "none" for row in rows):
        lines += [f"{row['name']}: no unpruned run with the same settings, no average" for row in rows
                  if row["baseline"] is None]
    for benchmark in sorted(mixed_benchmarks(rows, benchmarks)):
        sets = sorted({f"{row['name']}: {row['cells'][benchmark]['questions']} questions"
                       for row in rows if benchmark in row["cells"] and row["cells"][benchmark]["complete"]})
        lines.append(f"{OTHER_QUESTIONS} {benchmark}: the runs were taken over different question sets ({'; '.join(sets)}); "
                     "not comparable, left out of the average")
    return lines


def report(run_dirs: list[str], out: str | None = None) -> str:
    """The Markdown table of the runs under `run_dirs`; with `out`, also written to
    `<out>.md` and `<out>.csv` (a trailing .md or .csv on `out` is dropped first), and a PNG per
    FastV K x R grid, `<out>-kr-<model>-<benchmark>.png`."""
    stem = output_stem(out) if out is not None else None  # before any run is read: a bad --out costs nothing
    runs = collect(run_dirs)
    tables, benchmarks = build_rows(runs)
    if stem:
        stem.parent.mkdir(parents=True, exist_ok=True)
    markdown, rows_for_csv = [], []
    for model, rows in tables.items():
        header, body = table_cells(rows, benchmarks)
        markdown += [f"### {model}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        markdown += ["| " + " | ".join(cells) + " |" for cells in body]
        markdown += [""] + [f"{line}  " for line in notes(rows, benchmarks)] + [""]
        rows_for_csv += [["Model"] + header] if not rows_for_csv else []
        rows_for_csv += [[model] + cells for cells in body]
    for model, rows in tables.items():  # one K x R grid per group of answer settings (as the rows), never a mix
        groups = list(dict.fromkeys(row["group"] for row in rows))
        for number, group in enumerate(groups):
            settings = next(row["settings"] for row in rows if row["group"] == group)
            label = settings_label(settings, [row["settings"] for row in rows])
            tail = f"-{number}" if len(groups) > 1 else ""
            entries = [e for e in runs if (e["run"].get("model_id") or "?") == model and e["group"] == group]
            baseline = next((r for r in rows if r["method"] == "none" and r["group"] == group), None)
            for (_, benchmark), grid in ablation.cells(entries).items():
                unpruned = (baseline or {}).get("scores", {}).get(benchmark)
                markdown += ablation.markdown(model + label, benchmark, grid, unpruned)
                if stem:
                    ablation.plot(stem.parent / f"{stem.name}-kr-{model}-{benchmark}{tail}.png", model + label,
                                  benchmark, grid)
    text = "\n".join(markdown)
    if stem:
        (stem.parent / f"{stem.name}.md").write_text(text, encoding="utf-8")
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows_for_csv)
        (stem.parent / f"{stem.name}.csv").write_text(buffer.getvalue(), encoding="utf-8")
    return text


def output_stem(out: str) -> Path:
    """`out` without a trailing .md or .csv, checked as every fastv command checks what it will write
    (`fastv.paths`), before the work and creating nothing: `<stem>.md` and `<stem>.csv` are not folders, and
    the folder they go in is or can be made. The suffixes are added to the name, not swapped for one in it
    (`outputs/llava-v1.5` writes `outputs/llava-v1.5.md`)."""
    what = "the tables' path (OUT.md and OUT.csv are written), e.g. outputs/table"
    stem = check_not_empty("--out", out, what)
    stem = stem.with_suffix("") if stem.suffix in (".md", ".csv") else stem
    check_output_file("--out", stem.parent / f"{stem.name}.md", ".csv", what=what)
    return stem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="run directories, or folders holding them (searched)")
    parser.add_argument("--out", help="also write OUT.md and OUT.csv")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastv report", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        print(report(args.run_dirs, args.out))
    except (InputError, OSError) as error:
        return print_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
