"""The real `lmms-eval` command line with `--model llava_fastv` on the shipped model, end to end and offline.

Two local tasks on 12 shapes questions (tests/lmms_tasks: the 10 with a closed answer set, datasets from a
local JSON file): `shapes_lmms_gen` (generate_until) and `shapes_lmms_mc` (multiple_choice), run as a user
runs them, pruned by FastV hard enough (keep=8) that some answers and choices go wrong. The answers equal
our own runner's (`python -m llava.eval.run`) question by question, and the multiple-choice accuracy equals
that of choosing each question's most likely choice, computed from the model directly. lmms-eval exits 0
when a run fails, so the run is judged by the results file it writes. Skipped where lmms-eval is not
installed; failed in CI (CI=true), where setup.sh installs it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lmms_tasks import SHIPPED_MODEL, TASKS, choice_logprobs, need_lmms_eval, write_docs

LMMS_EVAL = Path(sys.executable).with_name("lmms-eval")  # the console script pip installs beside python
need_lmms_eval(LMMS_EVAL)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="the shipped model is not here"),
]

METHOD = "fastv:k=2,keep=8"
TIMEOUT = 900  # s; about a minute on an idle 2-core CPU


def offline_env(folder: Path) -> dict:
    """No hub: datasets and caches under `folder`."""
    return dict(os.environ, HF_HOME=str(folder / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1", LMMS_EVAL_DATASETS_CACHE=str(folder / "datasets"))


@pytest.fixture(scope="module")
def lmms_run(tmp_path_factory):
    """One `lmms-eval` run of both tasks: (docs, the results file's content, {task: {doc_id: sample}}).
    `batch_size` comes in model_args and `--device` on the command line, as EVAL.md shows."""
    folder = tmp_path_factory.mktemp("lmms-cli")
    docs = write_docs(folder, 12)
    command = [
        str(LMMS_EVAL), "--model", "llava_fastv",
        "--model_args", f"pretrained={SHIPPED_MODEL},method={METHOD},batch_size=2", "--device", "cpu",
        "--tasks", "shapes_lmms_gen,shapes_lmms_mc", "--include_path", str(TASKS),
        "--output_path", str(folder / "out"), "--log_samples",
    ]
    done = subprocess.run(command, cwd=folder, env=offline_env(folder), capture_output=True, text=True, timeout=TIMEOUT)
    results = sorted((folder / "out").glob("*/*_results.json"))
    assert len(results) == 1, (f"lmms-eval (exit status {done.returncode}) wrote no results file:\n"
                               f"{(done.stdout + done.stderr)[-4000:]}")
    samples = {}
    for task in ("shapes_lmms_gen", "shapes_lmms_mc"):
        (path,) = (folder / "out").glob(f"*/*_samples_{task}.jsonl")
        samples[task] = {record["doc_id"]: record for record in map(json.loads, path.read_text().splitlines())}
    return folder, docs, json.loads(results[0].read_text()), samples


@pytest.fixture(scope="module")
def runner_answers(lmms_run):
    """Our runner on the same questions with the same method and answer length: {question_id: text}."""
    from llava.eval import run

    folder = lmms_run[0]
    status = run.main(["--benchmark", "shapes", "--model-path", str(SHIPPED_MODEL), "--method", METHOD,
                       "--data-root", str(folder), "--output-dir", str(folder / "runner"), "--max-new-tokens", "8",
                       "--device", "cpu", "--no-progress"])
    assert status == 0
    lines = map(json.loads, (folder / "runner" / "answers.jsonl").read_text().splitlines())
    return {line["question_id"]: line["text"] for line in lines}


def test_the_generate_until_answers_equal_the_runners_question_by_question(lmms_run, runner_answers):
    _, docs, results, samples = lmms_run
    answers = {}
    for doc_id, sample in samples["shapes_lmms_gen"].items():
        response = sample["filtered_resps"]
        answers[docs[doc_id]["question_id"]] = response[0] if isinstance(response, list) else response
    assert answers == {doc["question_id"]: runner_answers[doc["question_id"]] for doc in docs}
    right = sum(runner_answers[doc["question_id"]].lower() == doc["answer"] for doc in docs)
    assert results["results"]["shapes_lmms_gen"]["exact_match,none"] == pytest.approx(right / len(docs))
    assert 0 < right < len(docs)  # keep=8 gets some wrong: answers that differ would show


def test_the_multiple_choice_accuracy_is_that_of_the_most_likely_choice(lmms_run):
    from llava.pipeline import LlavaPipeline

    _, docs, results, samples = lmms_run
    pipe = LlavaPipeline.load(str(SHIPPED_MODEL), method=METHOD, device="cpu")
    right = wrong_sign = 0
    for doc in docs:
        logprobs = choice_logprobs(pipe, doc)
        right += doc["choices"][logprobs.index(max(logprobs))] == doc["answer"]
        wrong_sign += doc["choices"][logprobs.index(min(logprobs))] == doc["answer"]
    assert len(samples["shapes_lmms_mc"]) == len(docs) == 10
    assert results["results"]["shapes_lmms_mc"]["acc,none"] == pytest.approx(right / len(docs))
    assert right != wrong_sign  # the inverted score would show


def test_lmms_eval_models_lists_llava_fastv(tmp_path):
    done = subprocess.run([str(LMMS_EVAL), "models"], cwd=tmp_path, env=offline_env(tmp_path),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert any(line.split()[:2] == ["llava_fastv", "simple"] for line in done.stdout.splitlines()), done.stdout[-2000:]

