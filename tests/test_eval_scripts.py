"""End to end through the shell scripts: every scripts/v1_5/eval and scripts/v1_6/eval script over
3 questions; a run killed after one answer and resumed; 2 processes (torchrun, gloo) against 1.

The scripts run `python -m llava.eval.run`; here with the fake pipeline
(`--pipeline tests.eval_fakes:FakePipeline.load`) so that each run takes a fraction
of a second, and every v1_5 script once more with the real pipeline on a tiny random LLaVA.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.eval_fakes import BUILDERS, make_all, make_pope, save_image, write_jsonl

REPO = Path(__file__).resolve().parents[1]
FAKE = "--pipeline tests.eval_fakes:FakePipeline.load --device cpu --no-progress"  # --device: no torch import
SCRIPTS = sorted(p.relative_to(REPO).as_posix() for p in REPO.glob("scripts/v1_*/eval/*.sh"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("data"))


def script_env(data_root, output_root, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "NPROC", "METHOD", "SPLIT")}
    env.update(PYTHON=sys.executable, DATA_ROOT=str(data_root), OUTPUT_ROOT=str(output_root),
               MODEL_PATH=str(output_root / "checkpoints/tiny-llava"), EVAL_ARGS=FAKE, PYTHONPATH=str(REPO),
               OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def bash(script, *args, env, check=True):
    result = subprocess.run(["bash", script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_every_benchmark_has_a_script_for_both_versions():
    names = {Path(s).stem for s in SCRIPTS}
    assert names == {"textvqa", "vqav2", "gqa", "vizwiz", "sqa", "pope", "mme", "mmbench", "mmbench_cn", "seed",
                     "llavabench", "mmvet", "aokvqa", "ocrvqa"}
    assert len(SCRIPTS) == 2 * len(names)
    for script in SCRIPTS:  # a few lines around the one shared helper
        text = (REPO / script).read_text()
        assert 'source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"' in text and len(text.splitlines()) <= 5


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_and_scores(script, data_root, tmp_path):
    bench = Path(script).stem
    result = bash(script, "8", env=script_env(data_root, tmp_path))
    run_dir = tmp_path / "tiny-llava" / "fastervlm_8" / bench  # named by checkpoint, method and budget
    answers = (run_dir / "answers.jsonl").read_text().splitlines()
    assert len(answers) == 3
    scores = json.loads((run_dir / "scores.json").read_text())
    assert scores["run"]["method_spec"] == "fastervlm:keep=8" and scores["run"]["model_id"] == "tiny-llava"
    assert scores["run"]["errors"] == 0
    assert scores["title"] in result.stdout  # the readable table


def test_method_argument_variable_and_baseline(data_root, tmp_path):
    env = script_env(data_root, tmp_path)
    bash("scripts/v1_5/eval/pope.sh", "16", "random", env=env)
    assert json.loads((tmp_path / "tiny-llava/random_16/pope/run.json").read_text())["method_spec"] == "random:keep=16"
    bash("scripts/v1_6/eval/pope.sh", "16", env={**env, "METHOD": "fastv:k=2"})
    assert (tmp_path / "tiny-llava/fastv_k2_16/pope/run.json").is_file()
    bash("scripts/v1_5/eval/pope.sh", "none", env=env)  # the unpruned baseline needs no budget
    assert json.loads((tmp_path / "tiny-llava/none/pope/run.json").read_text())["method_spec"] == "none"
    missing_budget = bash("scripts/v1_5/eval/pope.sh", env=env, check=False)
    assert missing_budget.returncode == 2 and "usage: bash scripts/v1_5/eval/pope.sh BUDGET" in missing_budget.stderr


def test_killed_after_one_answer_then_resumed(data_root, tmp_path):
    script = "scripts/v1_5/eval/textvqa.sh"
    bash(script, "8", env=script_env(data_root, tmp_path / "straight"))
    straight = (tmp_path / "straight/tiny-llava/fastervlm_8/textvqa/answers.jsonl").read_text()

    env = script_env(data_root, tmp_path / "killed", EVAL_FAKE_DELAY="1.0")
    answers = tmp_path / "killed/tiny-llava/fastervlm_8/textvqa/answers.jsonl"
    process = subprocess.Popen(["bash", script, "8"], cwd=REPO, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (answers.is_file() and answers.read_text().count("\n") >= 1):
            assert time.monotonic() < deadline and process.poll() is None, "the run never wrote its first answer"
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)  # bash and the python it started
    finally:
        process.wait()
    assert answers.read_text().count("\n") == 1
    assert not (answers.parent / "scores.json").exists()

    bash(script, "8", env=script_env(data_root, tmp_path / "killed"))
    resumed = answers.read_text()
    ids = [json.loads(line)["question_id"] for line in resumed.splitlines()]
    assert len(ids) == len(set(ids)) == 3
    assert resumed == straight


def test_two_processes_give_the_same_answers_as_one(tmp_path):
    data = tmp_path / "data"
    make_pope(data)
    records = [{"question_id": i, "image": f"img{i}.jpg", "category": ["adversarial", "popular", "random"][i % 3],
                "text": f"Is there a {'dog cat car bus cup sink tie'.split()[i]} in the image?"} for i in range(7)]
    for i in range(7):
        save_image(data / f"pope/val2014/img{i}.jpg", seed=i)
    write_jsonl(data / "pope/llava_pope_test.jsonl", records)
    (data / "pope/val2014/img5.jpg").unlink()  # an error line must merge like any other

    one = script_env(data, tmp_path / "one")
    bash("scripts/v1_5/eval/pope.sh", "8", env=one)
    expected = (tmp_path / "one/tiny-llava/fastervlm_8/pope/answers.jsonl").read_text()

    # two processes, resuming from a file that already holds the first two answers
    two_dir = tmp_path / "two/tiny-llava/fastervlm_8/pope"
    two_dir.mkdir(parents=True)
    (two_dir / "answers.jsonl").write_text("".join(expected.splitlines(keepends=True)[:2]))
    result = bash("scripts/v1_5/eval/pope.sh", "8", env=script_env(data, tmp_path / "two", CUDA_VISIBLE_DEVICES="0,1"))
    assert "processes=2" in result.stderr
    assert (two_dir / "answers.jsonl").read_text() == expected
    assert sorted(p.name for p in two_dir.iterdir()) == ["answers.jsonl", "run.json", "scores.json", "scores.txt"]
    assert json.loads((two_dir / "run.json").read_text())["world_size"] == 2


def _real_pipeline_importable() -> bool:
    try:
        import llava.pipeline  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _real_pipeline_importable(), reason="llava.pipeline cannot be imported")
@pytest.mark.parametrize("script", [s for s in SCRIPTS if s.startswith("scripts/v1_5/")])
def test_script_with_the_real_pipeline_on_a_tiny_llava(script, data_root, tiny_llava_dir, tmp_path):
    """Every LLaVA-1.5 script over 3 questions with the real model code (a tiny random LLaVA)."""
    bench = Path(script).stem
    env = script_env(data_root, tmp_path / "out", MODEL_PATH=str(tiny_llava_dir), EVAL_ARGS="--max-new-tokens 4 --no-progress")
    bash(script, "8", env=env)
    run_dir = tmp_path / "out" / Path(tiny_llava_dir).name / "fastervlm_8" / bench
    answers = [json.loads(line) for line in (run_dir / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3 and all("error" not in a["metadata"] for a in answers)
    # 8 visual tokens per image; ScienceQA's test data holds a text-only question (no image, no tokens)
    visual = [a["metadata"]["visual_tokens"] for a in answers]
    assert all(v in ([8], []) for v in visual) and visual.count([]) == (1 if bench == "sqa" else 0)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["method_spec"] == "fastervlm:keep=8" and run["visual_tokens_mean"] == 8.0
    if bench == "textvqa":
        before = (run_dir / "answers.jsonl").read_text()
        bash(script, "8", env=env)  # finished: scored again, nothing regenerated
        assert (run_dir / "answers.jsonl").read_text() == before


@pytest.mark.skipif(not _real_pipeline_importable(), reason="llava.pipeline cannot be imported")
@pytest.mark.parametrize("script", [f"scripts/v1_6/eval/{b}.sh" for b in ("textvqa", "sqa", "pope", "mme")])
def test_v1_6_script_with_the_real_pipeline_on_a_tiny_llava_next(script, data_root, tiny_next_dir, tmp_path):
    """LLaVA-NeXT scripts (four kinds of scoring; ScienceQA with a text-only question) over 3 questions on a
    tiny random LLaVA-NeXT under FasterVLM's protocol: the spatial merge on one 2x2 canvas (224x224 for its
    112-px crops; 672x672, the default, for 336-px ones). Every v1_5 script runs on the real model above."""
    bench = Path(script).stem
    env = script_env(data_root, tmp_path / "out", MODEL_PATH=str(tiny_next_dir), IMAGE_GRID="224x224",
                     EVAL_ARGS="--max-new-tokens 4 --no-progress")
    result = bash(script, "8", env=env)
    assert "--patch-merge spatial --image-grid 224x224" in result.stderr
    run_dir = tmp_path / "out" / Path(tiny_next_dir).name / "fastervlm_8_spatial_224x224" / bench
    answers = [json.loads(line) for line in (run_dir / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3 and all("error" not in a["metadata"] for a in answers)
    visual = [a["metadata"]["visual_tokens"] for a in answers]  # 8 per partition: base + 4 crops, no newline
    assert all(v in ([40], []) for v in visual) and visual.count([]) == (1 if bench == "sqa" else 0)
    for answer in answers:
        if answer["metadata"]["visual_tokens"]:
            assert answer["metadata"]["partition_grid"] == [[2, 2]]
            assert answer["metadata"]["partition_tokens"] == [[8] * 5]
    run = json.loads((run_dir / "run.json").read_text())
    assert (run["patch_merge"], run["image_grid"]) == ("spatial", "224x224")


def test_v1_6_scripts_default_to_fastervlms_protocol_and_can_be_told_otherwise(data_root, tmp_path):
    env = script_env(data_root, tmp_path)
    result = bash("scripts/v1_6/eval/pope.sh", "8", env=env)
    assert "--patch-merge spatial --image-grid 672x672" in result.stderr
    assert (tmp_path / "tiny-llava/fastervlm_8/pope/run.json").is_file()
    stock = bash("scripts/v1_6/eval/pope.sh", "8", env={**env, "PATCH_MERGE": "checkpoint", "IMAGE_GRID": "auto"})
    assert "--patch-merge" not in stock.stderr and "--image-grid" not in stock.stderr
    assert (tmp_path / "tiny-llava/fastervlm_8_checkpoint_auto/pope/run.json").is_file()
    v1_5 = bash("scripts/v1_5/eval/pope.sh", "8", env=env)
    assert "--patch-merge" not in v1_5.stderr


def test_hired_takes_a_rate_prumerge_no_budget_and_both_run_on_stock_next_by_default(data_root, tmp_path):
    env = script_env(data_root, tmp_path)
    hired = bash("scripts/v1_6/eval/pope.sh", "0.2", "hired", env=env)
    assert "method=hired:rate=0.2" in hired.stderr and "--patch-merge" not in hired.stderr  # HiRED's protocol
    assert json.loads((tmp_path / "tiny-llava/hired_0.2/pope/run.json").read_text())["method_spec"] == "hired:rate=0.2"
    bash("scripts/v1_6/eval/pope.sh", "0.1", env={**env, "METHOD": "hired:split=paper"})
    assert (tmp_path / "tiny-llava/hired_splitpaper_0.1/pope/run.json").is_file()
    bash("scripts/v1_5/eval/pope.sh", "prumerge+", env=env)
    assert json.loads((tmp_path / "tiny-llava/prumerge+/pope/run.json").read_text())["method_spec"] == "prumerge+"
    given = bash("scripts/v1_6/eval/pope.sh", "8", "prumerge", env=env, check=False)
    assert given.returncode == 2 and "prumerge keeps what it keeps: give no BUDGET" in given.stderr
    usage = bash("scripts/v1_6/eval/pope.sh", "hired", env=env, check=False)
    assert usage.returncode == 2 and "or hired's rate, e.g. 0.2" in usage.stderr


@pytest.mark.skipif(not _real_pipeline_importable(), reason="llava.pipeline cannot be imported")
def test_v1_6_hired_script_with_the_real_pipeline_on_a_tiny_llava_next(data_root, tiny_next_dir, tmp_path):
    env = script_env(data_root, tmp_path / "out", MODEL_PATH=str(tiny_next_dir), EVAL_ARGS="--max-new-tokens 4 --no-progress")
    bash("scripts/v1_6/eval/textvqa.sh", "0.2", "hired", env=env)
    run_dir = tmp_path / "out" / Path(tiny_next_dir).name / "hired_0.2" / "textvqa"
    answers = [json.loads(line) for line in (run_dir / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3 and all("error" not in a["metadata"] for a in answers)
    for answer in answers:  # at most floor(P x 64 x 0.2) tokens, no newline: the stock (spatial_unpad) layout
        (grid,), (visual,) = answer["metadata"]["partition_grid"], answer["metadata"]["visual_tokens"]
        assert 0 < visual <= int((1 + grid[0] * grid[1]) * 64 * 0.2)
        assert sum(answer["metadata"]["partition_tokens"][0]) == visual


def test_the_default_checkpoint_absent_is_one_line(data_root, tmp_path):
    """A fresh machine has no checkpoints/llava-v1.5-7b: the script says so in one line, exit status 2."""
    env = script_env(data_root, tmp_path, EVAL_ARGS="--no-progress --device cpu")
    env.pop("MODEL_PATH")
    result = bash("scripts/v1_5/eval/pope.sh", "8", env=env, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: ") and "checkpoints/llava-v1.5-7b" in result.stderr


def test_gqa_script_counts_a_malformed_question_wrong(tmp_path):
    from tests.eval_fakes import five_questions_one_malformed

    five_questions_one_malformed(tmp_path / "data", "gqa")
    bash("scripts/v1_5/eval/gqa.sh", "8", env=script_env(tmp_path / "data", tmp_path))
    scores = json.loads((tmp_path / "tiny-llava/fastervlm_8/gqa/scores.json").read_text())
    assert (scores["metrics"]["accuracy"], scores["metrics"]["questions"]) == (80.0, 5)  # was 100.00 over 4
    assert [u["question_id"] for u in scores["unreadable"]] == ["llava_gqa_testdev_balanced.jsonl:3"]


def test_playground_has_a_readme_for_every_benchmark_folder_and_no_data():
    from llava.eval.registry import BENCHMARKS

    eval_root = REPO / "playground/data/eval"
    for folder in {b.folder for b in BENCHMARKS.values()}:
        readme = eval_root / folder / "README.md"
        assert readme.is_file(), f"no {readme.relative_to(REPO)}"
        assert "Where it comes from" in readme.read_text() or folder.startswith("shapes")
    tracked = subprocess.run(["git", "ls-files", "playground/data"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert tracked and all(path.endswith("/README.md") for path in tracked)


def test_fastv_ablation_grid_runs_every_cell_in_its_own_run_dir_resumes_and_reports(data_root, tmp_path):
    from llava.model.pruning.registry import parse_method

    env = script_env(data_root, tmp_path, KS="2 3", RS="0.5 0.9")
    bash("scripts/fastv/ablation_kr.sh", "pope", env=env)
    for k in (2, 3):
        for r in (0.5, 0.9):
            run = json.loads((tmp_path / f"tiny-llava/fastv_k{k}_ratio{r}_modemask/pope/run.json").read_text())
            assert parse_method(run["method_spec"]).spec == parse_method(f"fastv:k={k},ratio={r},mode=mask").spec
    assert (tmp_path / "tiny-llava/none/pope/run.json").is_file()  # the unpruned reference
    table = (tmp_path / "tiny-llava/ablation_kr_pope.md").read_text()
    assert "### FastV K x R: tiny-llava, pope" in table and "| K \\ R | 50% | 90% |" in table
    answers = tmp_path / "tiny-llava/fastv_k3_ratio0.9_modemask/pope/answers.jsonl"
    before = answers.read_text()
    again = bash("scripts/fastv/ablation_kr.sh", "pope", env=env)  # finished cells are scored again, not rerun
    assert answers.read_text() == before and "answered: 3" in again.stdout
    usage = bash("scripts/fastv/ablation_kr.sh", env=env, check=False)
    assert usage.returncode == 2 and "usage: bash scripts/fastv/ablation_kr.sh BENCH" in usage.stderr
