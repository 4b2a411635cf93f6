"""Judge a finished video QA run with Video-LLaVA's GPT judge, then score it again.

    python -m llava.eval.judge_run RUN_DIR --judge-url https://api.openai.com/v1 [--judge-model gpt-3.5-turbo]

RUN_DIR is a run directory of `python -m llava.eval.run` on a video QA benchmark (msvd, msrvtt, tgif,
activitynet, or their `_1k` subsets). Every answered question not judged yet is sent to the endpoint
(`llava.eval.video_judge`: the prompt, the parsing, the cache); replies are cached one JSON per question
under RUN_DIR/judge/<model>/, so a run killed midway, or run again, asks only what is missing, and an
answer that changed since (a `--retry-errors` run) is judged again. RUN_DIR/judge.json then names this
judge, and the run is scored again: scores.json gains the paper's Accuracy and Score (its headline), with
the judge model asked and the model names the endpoint said answered. The key is read from the environment
(`--key-env`, default OPENAI_API_KEY); none is sent when it is unset (a local server).
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llava.errors import InputError, check_at_least, print_error
from llava.eval.common import answer_text
from llava.eval.registry import get_benchmark
from llava.eval.run import load_questions, score
from llava.eval.runfolder import question_set, read_answers, read_run
from llava.eval.video_judge import (
    DEFAULT_MODEL, JUDGE_FOLDER, ChatJudge, messages, model_folder, read_cached, write_cached, write_judge_record,
)
from llava.eval.video_qa import judged_pair


def judge_run(run_dir: Path, judge: ChatJudge, *, data_root: str | Path | None = None, workers: int = 8,
              progress: bool = True) -> dict:
    """Ask `judge` about every answered question of a finished video QA run not judged yet, record it as the
    run's judge (judge.json) and score the run again; returns scores.json's content."""
    run = read_run(run_dir)
    if not run.get("benchmark"):
        raise InputError(f"{run_dir} holds no run.json: answer the benchmark first (python -m llava.eval.run)")
    bench = get_benchmark(run["benchmark"])
    if bench.score.__module__ != "llava.eval.video_qa":
        raise InputError(f"{run_dir} is a {bench.name} run: the GPT judge here scores only video QA benchmarks")
    root = Path(data_root or run.get("data_root") or "playground/data/eval")
    questions = load_questions(bench, root, run.get("question_file"), None, run.get("questions"))
    if run.get("question_set") and question_set(questions) != run["question_set"]:
        raise InputError(f"the questions under {root} are not the ones {run_dir} answered (another question set): "
                         "give the run's --data-root")
    answers = read_answers(run_dir)
    folder = run_dir / JUDGE_FOLDER / model_folder(judge.model)
    asked = []
    for question in questions:
        prediction = answer_text(answers.get(question.key))
        if question.error or prediction is None:
            continue  # no answer (an error line): wrong without asking
        qa = judged_pair(question, prediction)
        if read_cached(folder, question.question_id, question.occurrence, qa) is None:
            asked.append((question, qa))

    def ask(item) -> None:
        question, qa = item
        reply, answered_by = judge.ask(messages(qa["q"], qa["a"], qa["pred"]))
        write_cached(folder, question.question_id, question.occurrence, qa, reply, answered_by)

    print(f"judge {judge.model}: {len(asked)} answers to judge of {len(questions)} questions -> {folder}",
          file=sys.stderr)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in _progress(pool.map(ask, asked), len(asked), progress):
                pass
    except InputError as error:
        raise InputError(f"{error}; the replies so far are cached in {folder}: run again to resume") from None
    write_judge_record(run_dir, judge.model, judge.url, folder)
    return score(bench, questions, answers, root, run_dir, run)


def _progress(items, total: int, show: bool):
    if not show:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, unit="question", file=sys.stderr, dynamic_ncols=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m llava.eval.judge_run",
        description="Judge a video QA run's answers with Video-LLaVA's GPT prompt (the papers' Accuracy and "
                    "Score) through any OpenAI-compatible endpoint; cached per question, so running again resumes.")
    parser.add_argument("run_dir", help="run directory of a video QA benchmark (msvd, msrvtt, tgif, activitynet, *_1k)")
    parser.add_argument("--judge-url", required=True, help="the endpoint's base URL, e.g. https://api.openai.com/v1 "
                        "(/chat/completions is added)")
    parser.add_argument("--judge-model", default=DEFAULT_MODEL, help=f"the judge model [default: {DEFAULT_MODEL}, as "
                        "Video-LLaVA and FasterVLM; its dated versions differ by points, see EVAL.md]")
    parser.add_argument("--key-env", default="OPENAI_API_KEY", help="environment variable holding the API key "
                        "[default: OPENAI_API_KEY; unset: no key is sent]")
    parser.add_argument("--data-root", help="the benchmark files [default: the run's, from run.json]")
    parser.add_argument("--workers", type=int, default=8, help="requests in flight at once [default: 8]")
    parser.add_argument("--retries", type=int, default=4, help="tries again after a failed request (no connection, "
                        "HTTP 429 or 5xx), waiting 2, 4, 8, ... seconds [default: 4]")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one reply [default: 60]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_at_least("--workers", args.workers, 1)
        check_at_least("--retries", args.retries, 0)
        run_dir = Path(args.run_dir)
        if not run_dir.is_dir():
            raise InputError(f"no such run directory: {run_dir}")
        judge = ChatJudge(args.judge_url, args.judge_model, os.environ.get(args.key_env), timeout=args.timeout,
                          retries=args.retries)
        judge_run(run_dir, judge, data_root=args.data_root, workers=args.workers, progress=not args.no_progress)
    except (InputError, OSError) as error:
        return print_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
