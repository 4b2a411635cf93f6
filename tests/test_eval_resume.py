"""Resuming a run directory: every setting that changes the answers is compared, given or defaulted, in
both directions (the shipped LLaVA-NeXT model on shapes_hr for its layout); run.json's start times."""

import json
import re
import shutil
from pathlib import Path

import pytest

from llava.errors import InputError
from llava.eval import runfolder
from llava.eval.run import main, run_benchmark
from tests.eval_fakes import FakePipeline, make_pope

MODEL = Path(__file__).resolve().parents[1] / "models/llava-next-shapes-tiny"
METHOD = "fastervlm:keep=29"
# The shipped model's image_grid_pinpoints ([height, width] in its config.json) as run.json names them.
PINPOINTS = ["672x672", "672x336", "336x672", "1008x336", "336x1008"]

needs_model = pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason=f"{MODEL.name} is not in this checkout")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from llava.data.synthetic import write_split

    root = tmp_path_factory.mktemp("data")
    write_split("test", 4, root / "shapes_hr", look="hr")
    return root


def killed_after(answers: int, **layout):
    """A loader of the shipped model whose pipeline is killed (KeyboardInterrupt) once `answers` are given."""
    from llava.pipeline import LlavaPipeline

    def load():
        pipe = LlavaPipeline.load(str(MODEL), method=METHOD, **layout)
        answer, asked = pipe.answer, []

        def answer_then_die(requests, **generation):
            if len(asked) >= answers:
                raise KeyboardInterrupt
            asked.extend(requests)
            return answer(requests, **generation)

        pipe.answer = answer_then_die
        return pipe

    return load


@pytest.fixture(scope="module")
def killed(data, tmp_path_factory):
    """{first run's options: a run directory killed after 2 of 4 answers}, each made once."""
    made = {}

    def make(options: tuple) -> Path:
        if options not in made:
            out = tmp_path_factory.mktemp("killed") / "run"
            layout = dict(zip(("patch_merge", "image_grid"), (None, None)))
            layout.update({name.removeprefix("--").replace("-", "_"): value for name, value in zip(options[::2], options[1::2])})
            with pytest.raises(KeyboardInterrupt):
                run_benchmark("shapes_hr", killed_after(2, **layout), data, out, model_path=str(MODEL), method=METHOD,
                              dtype="float32", device="cpu", quantization="none", progress=False, **layout)
            made[options] = out
        return made[options]

    return make


def cli(data, out, *options, model=True):
    model_path = ["--model-path", str(MODEL)] if model else []
    return main(["--benchmark", "shapes_hr", *model_path, "--method", METHOD, "--data-root", str(data),
                 "--output-dir", str(out), "--device", "cpu", "--dtype", "float32", "--no-progress", *options])


@needs_model
@pytest.mark.parametrize("first, resume, name, before, now, note", [
    ((), ("--patch-merge", "spatial"), "patch_merge", "spatial_unpad", "spatial", ""),
    ((), ("--image-grid", "672x672"), "image_grid", PINPOINTS, "672x672", ""),
    (("--patch-merge", "spatial"), (), "patch_merge", "spatial", "spatial_unpad",
     " (--patch-merge not given: the checkpoint's)"),
    (("--image-grid", "672x672"), (), "image_grid", "672x672", PINPOINTS,
     " (--image-grid not given: the checkpoint's pinpoints)"),
    (("--patch-merge", "spatial"), ("--patch-merge", "spatial_unpad"), "patch_merge", "spatial", "spatial_unpad", ""),
    (("--image-grid", "672x672"), ("--image-grid", "1008x336"), "image_grid", "672x672", "1008x336", ""),
])
def test_a_killed_next_run_resumed_under_another_layout_is_refused(data, killed, tmp_path, capsys, first, resume, name,
                                                                   before, now, note):
    out = tmp_path / "run"
    shutil.copytree(killed(first), out)
    answers, run_json = (out / "answers.jsonl").read_text(), (out / "run.json").read_text()
    assert len(answers.splitlines()) == 2 and json.loads(run_json)[name] == before
    capsys.readouterr()
    assert cli(data, out, *resume) == 2
    option = "--" + name.replace("_", "-")
    assert capsys.readouterr().err == (
        f"error: {out} holds answers made with {name}={before!r}, not {now!r}{note}: answer into another "
        f"--output-dir, or use the options those answers were made with ({option})\n")
    assert (out / "answers.jsonl").read_text() == answers and (out / "run.json").read_text() == run_json


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """The four questions answered in one go, no layout option given."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert cli(data, out) == 0
    return out


@needs_model
def test_a_resume_giving_the_checkpoints_own_layout_goes_on_as_one_run(data, killed, straight, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(killed(()), out)
    assert cli(data, out, "--patch-merge", "spatial_unpad") == 0  # what the killed run used, by default
    assert (out / "answers.jsonl").read_text() == (straight / "answers.jsonl").read_text()
    run = json.loads((out / "run.json").read_text())
    assert (run["patch_merge"], run["image_grid"], run["answered"]) == ("spatial_unpad", PINPOINTS, 4)


@needs_model
@pytest.mark.parametrize("model", [True, False])
def test_scoring_a_finished_run_again_never_rewrites_its_layout(data, straight, tmp_path, capsys, model):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    recorded = json.loads((out / "run.json").read_text())
    capsys.readouterr()
    assert cli(data, out, "--image-grid", "672x672", model=model) == 2
    assert capsys.readouterr().err.startswith(
        f"error: {out} holds answers made with image_grid={PINPOINTS!r}, not '672x672': ")
    assert json.loads((out / "run.json").read_text()) == recorded
    assert cli(data, out, model=model) == 0  # scored again as it was made
    rescored = json.loads((out / "run.json").read_text())
    assert (rescored["patch_merge"], rescored["image_grid"]) == ("spatial_unpad", PINPOINTS)


# ----------------------------------------------------------------------------- other settings, with the fake


@pytest.fixture
def pope(tmp_path):
    make_pope(tmp_path / "data")
    return tmp_path / "data"


def fake_run(data, out, **options):
    options.setdefault("method", "fastervlm:keep=8")
    return run_benchmark("pope", FakePipeline("tiny", options["method"]), data, out, progress=False, **options)


@pytest.mark.parametrize("first, resume, message", [
    ({"max_new_tokens": 64}, {}, "max_new_tokens=64, not 128 (--max-new-tokens not given: pope's default)"),
    ({}, {"max_new_tokens": 64}, "max_new_tokens=128, not 64: "),
    ({"conv_mode": "llava_v1"}, {}, "conv_mode='llava_v1', not 'vicuna_v1'"),
])
def test_an_omitted_option_is_compared_by_its_default(pope, tmp_path, first, resume, message):
    fake_run(pope, tmp_path / "out", limit=1, **first)
    with pytest.raises(InputError, match=re.escape(f"holds answers made with {message}")):
        fake_run(pope, tmp_path / "out", **resume)


@pytest.mark.parametrize("first, resume", [
    ({}, {"max_new_tokens": 128}),  # pope's default, given
    ({"conv_mode": "vicuna_v1"}, {"conv_mode": "v1"}),  # an alias of the same template
    ({"method": "fastv:k=2,ratio=0.75"}, {"method": "fastv:ratio=0.75"}),  # k=2 is FastV's default
])
def test_the_same_setting_spelled_otherwise_resumes(pope, tmp_path, first, resume):
    fake_run(pope, tmp_path / "out", limit=1, **first)
    scores = fake_run(pope, tmp_path / "out", **resume)
    assert (scores["run"]["questions"], scores["run"]["answered"]) == (3, 3)


# ----------------------------------------------------------------------------- start times


def test_started_is_the_first_invocations_time_and_each_resume_is_listed(pope, tmp_path, monkeypatch):
    clock = iter(f"2027-01-01T00:00:0{i}+00:00" for i in range(10))
    monkeypatch.setattr(runfolder, "_now", lambda: next(clock))
    run = fake_run(pope, tmp_path / "out", limit=1)["run"]  # 0: started, 1: finished
    assert (run["started"], run["resumed"], run["finished"]) == ("2027-01-01T00:00:00+00:00", [], "2027-01-01T00:00:01+00:00")
    run = fake_run(pope, tmp_path / "out", limit=2)["run"]  # 2: resumed, 3: finished
    assert (run["started"], run["resumed"]) == ("2027-01-01T00:00:00+00:00", ["2027-01-01T00:00:02+00:00"])
    run = fake_run(pope, tmp_path / "out", limit=2)["run"]  # nothing to answer: scored again at 4
    assert (run["started"], run["resumed"], run["finished"]) == (
        "2027-01-01T00:00:00+00:00", ["2027-01-01T00:00:02+00:00"], "2027-01-01T00:00:04+00:00")
    run = fake_run(pope, tmp_path / "out")["run"]  # 5: resumed again
    assert run["resumed"] == ["2027-01-01T00:00:02+00:00", "2027-01-01T00:00:05+00:00"]


def test_a_killed_run_says_when_it_started(pope, tmp_path, monkeypatch):
    monkeypatch.setattr(runfolder, "_now", lambda: "2027-01-01T00:00:00+00:00")

    def killed(self, requests, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(FakePipeline, "answer", killed)
    with pytest.raises(KeyboardInterrupt):
        fake_run(pope, tmp_path / "out")
    run = json.loads((tmp_path / "out/run.json").read_text())
    assert (run["started"], run["resumed"], run["finished"]) == ("2027-01-01T00:00:00+00:00", [], None)
