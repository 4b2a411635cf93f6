"""The runner, in process, with the fake pipeline: answer lines, resume, per-question errors, metadata."""

import json
from pathlib import Path

import pytest

from llava.errors import InputError
from llava.eval.run import run_benchmark
from tests.eval_fakes import FakePipeline, five_questions_one_malformed, make_mmbench, make_pope, make_textvqa, write_jsonl


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def no_model():
    raise AssertionError("the pipeline was loaded although every question had an answer")


@pytest.fixture
def data(tmp_path):
    make_pope(tmp_path / "data")
    make_textvqa(tmp_path / "data")
    return tmp_path / "data"


def run(benchmark, data, out, pipeline=None, **options):
    options.setdefault("method", "fastervlm:keep=8")
    return run_benchmark(benchmark, pipeline or FakePipeline("tiny", "fastervlm:keep=8"), data, out,
                         progress=False, **options)


def test_answer_lines_are_llavas(data, tmp_path):
    scores = run("pope", data, tmp_path / "out")
    first = lines(tmp_path / "out/answers.jsonl")[0]
    assert list(first) == ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]
    assert first["question_id"] == 0 and first["text"] == "Yes" and first["model_id"] == "tiny"
    assert first["prompt"] == "Is there a dog in the image?\nAnswer the question using a single word or phrase."
    # prompt_tokens: the fake's prompt [1, <image>] with its 8 visual tokens in place
    assert first["metadata"] == {"visual_tokens": [8], "kept_tokens": [8], "stop_reason": "eos", "prompt_tokens": 9}
    run_json = json.loads((tmp_path / "out/run.json").read_text())
    assert scores["run"] == run_json
    assert run_json["method_spec"] == "fastervlm:keep=8" and run_json["budget"] == 8 and run_json["model_id"] == "tiny"
    assert run_json["visual_tokens_mean"] == 8.0 and run_json["seed"] == 0
    assert (run_json["questions"], run_json["answered"], run_json["errors"]) == (3, 3, 0)
    assert set(run_json["versions"]) == {"python", "torch", "transformers", "llava-fastv"}
    assert (tmp_path / "out/scores.txt").read_text().startswith("POPE (pope)")
    assert scores["headline"] == {"metric": "f1", "value": pytest.approx(200 / 3)}


def test_resume_after_a_kill_midway_gives_the_same_file(data, tmp_path):
    run("textvqa", data, tmp_path / "straight")
    complete = (tmp_path / "straight/answers.jsonl").read_text().splitlines()
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    # what a kill leaves: one answer, and the next cut short mid-line
    (resumed / "answers.jsonl").write_text(complete[0] + "\n" + complete[1][:25])
    fake = FakePipeline("tiny", "fastervlm:keep=8")
    run("textvqa", data, resumed, pipeline=fake)
    assert fake.calls == [1, 1]  # only the two unanswered questions were asked
    assert (resumed / "answers.jsonl").read_text().splitlines() == complete


def test_a_finished_run_is_scored_again_without_a_model(data, tmp_path):
    first = run("pope", data, tmp_path / "out")
    again = run_benchmark("pope", no_model, data, tmp_path / "out", progress=False)  # no method given: as recorded
    assert again["metrics"] == first["metrics"]
    assert again["run"]["method_spec"] == "fastervlm:keep=8"


def test_bad_data_gives_per_question_errors_and_a_finished_run(data, tmp_path):
    folder = data / "textvqa"
    (folder / "train_images/t1.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")  # corrupt
    (folder / "train_images/t2.jpg").unlink()  # missing
    good = folder.joinpath("llava_textvqa_val_v051_ocr.jsonl").read_text().splitlines()
    long_question = json.loads(good[0]) | {"question_id": "long", "text": "why " * 200}
    write_jsonl(folder / "llava_textvqa_val_v051_ocr.jsonl",
                [good[0], '{"question_id": "t9", "image": ', good[1], good[2], long_question])
    scores = run("textvqa", data, tmp_path / "out")
    answers = lines(tmp_path / "out/answers.jsonl")
    errors = {a["question_id"]: a["metadata"]["error"] for a in answers if "error" in a["metadata"]}
    assert answers[0]["text"] == "it" and "error" not in answers[0]["metadata"]
    assert errors["llava_textvqa_val_v051_ocr.jsonl:2"].startswith(
        "malformed question, llava_textvqa_val_v051_ocr.jsonl line 2:")
    assert errors["t1"].startswith("cannot read image") and "t1.jpg" in errors["t1"]
    assert errors["t2"].startswith("image not found") and "t2.jpg" in errors["t2"]
    assert errors["long"].startswith("prompt too long")
    assert all(a["text"] == "" for a in answers if a["question_id"] in errors)
    assert (scores["run"]["answered"], scores["run"]["errors"]) == (1, 4)
    # every question the file holds counts: the four errors (two of them not annotated) are wrong, 1 right of 5
    assert scores["metrics"]["accuracy"] == pytest.approx(20.0)
    assert (scores["metrics"]["questions"], scores["metrics"]["not_in_annotations"]) == (5, 2)

    # errors are answers: a rerun asks nothing ...
    run_benchmark("textvqa", no_model, data, tmp_path / "out", progress=False)
    # ... unless told to retry them; with the image back, t2 is answered
    from tests.eval_fakes import save_image

    save_image(folder / "train_images/t2.jpg", seed=2)
    fake = FakePipeline("tiny", "fastervlm:keep=8")
    scores = run("textvqa", data, tmp_path / "out", pipeline=fake, retry_errors=True)
    assert fake.calls == [1, 1]  # t2 and "long" (t1 is corrupt before it reaches the model)
    answers = lines(tmp_path / "out/answers.jsonl")
    assert len(answers) == 5 and len({(a["question_id"], a["prompt"]) for a in answers}) == 5
    assert [a["question_id"] for a in answers] == ["t0", "llava_textvqa_val_v051_ocr.jsonl:2", "t1", "t2", "long"]
    assert (scores["run"]["answered"], scores["run"]["errors"]) == (2, 3)


def test_a_refused_batch_is_asked_again_one_by_one(data, tmp_path):
    folder = data / "pope"
    records = lines(folder / "llava_pope_test.jsonl")
    records[1]["text"] = "Is there " + "a very long thing " * 40 + "?"
    write_jsonl(folder / "llava_pope_test.jsonl", records)
    fake = FakePipeline("tiny", "fastervlm:keep=8")
    run("pope", data, tmp_path / "out", pipeline=fake, batch_size=3)
    assert fake.calls == [3, 1, 1, 1]
    answers = lines(tmp_path / "out/answers.jsonl")
    assert ["error" in a["metadata"] for a in answers] == [False, True, False]


def test_two_questions_on_one_image_share_a_question_id(data, tmp_path):
    # LLaVA's TextVQA file uses the image id as question_id: both questions must be answered and kept
    folder = data / "textvqa"
    records = lines(folder / "llava_textvqa_val_v051_ocr.jsonl")
    records[1]["question_id"] = records[0]["question_id"]
    records.append(dict(records[0]))  # and an exact repeat
    write_jsonl(folder / "llava_textvqa_val_v051_ocr.jsonl", records)
    run("textvqa", data, tmp_path / "out")
    answers = lines(tmp_path / "out/answers.jsonl")
    assert [a["question_id"] for a in answers] == ["t0", "t0", "t2", "t0"]
    assert answers[3]["metadata"]["occurrence"] == 1
    fake = FakePipeline("tiny", "fastervlm:keep=8")
    run("textvqa", data, tmp_path / "out", pipeline=fake)
    assert fake.calls == []


def test_another_method_is_not_mixed_into_a_run(data, tmp_path):
    run("pope", data, tmp_path / "out", limit=1)
    with pytest.raises(InputError, match="holds answers made with method='fastervlm:keep=8', not 'fastv:k=2,keep=8'"):
        run("pope", data, tmp_path / "out", method="fastv:k=2,keep=8")


def test_a_retrained_model_in_the_same_folder_is_not_mixed_into_a_run(data, tmp_path):
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"first weights")
    run("pope", data, tmp_path / "out", limit=1, model_path=str(model))
    run("pope", data, tmp_path / "out", limit=2, model_path=str(model))  # the same weights resume
    (model / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(InputError, match="holds answers made with weights="):
        run("pope", data, tmp_path / "out", model_path=str(model))


def test_the_weights_digest_reads_the_whole_file(data, tmp_path):
    """Two trainings of the shipped video model share their file's first and last MiB (frozen towers at both
    ends): only the middle tells them apart. A run.json digest of that older form is not compared."""
    from llava.eval.runfolder import weights_fingerprint

    ends = b"\1" * (1 << 20)
    first, second = tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors"
    for file, middle in ((first, b"decoder, first training"), (second, b"decoder, other training")):
        file.parent.mkdir()
        file.write_bytes(ends + middle + ends)
    assert weights_fingerprint([first]) != weights_fingerprint([second])
    assert weights_fingerprint([first]).startswith("sha256:")

    run("pope", data, tmp_path / "out", limit=1, model_path=str(first.parent))
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    record["weights"] = "ff768c0e843c2caf"  # as an older version wrote it
    (tmp_path / "out" / "run.json").write_text(json.dumps(record))
    first.write_bytes(second.read_bytes())
    run("pope", data, tmp_path / "out", limit=2, model_path=str(first.parent))  # not known: resumed


def test_limit_and_unknown_benchmark(data, tmp_path):
    scores = run("pope", data, tmp_path / "out", limit=2)
    assert scores["run"]["questions"] == 2 and len(lines(tmp_path / "out/answers.jsonl")) == 2
    with pytest.raises(InputError, match="unknown benchmark 'popee'; did you mean 'pope'"):
        run("popee", data, tmp_path / "out")
    with pytest.raises(InputError, match="question file not found"):
        run("gqa", data, tmp_path / "gqa")


def test_command_line_errors_are_one_line(data, tmp_path, capsys):
    from llava.eval.run import main

    assert main(["--benchmark", "gqa", "--data-root", str(data), "--output-dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: question file not found")
    code = main(["--benchmark", "pope", "--data-root", str(data), "--output-dir", str(tmp_path / "p"), "--no-progress"])
    assert code == 2 and "--model-path is needed" in capsys.readouterr().err


def test_a_bad_embedded_image_is_a_per_question_error(data, tmp_path):
    make_mmbench(data)
    path = data / "mmbench/mmbench_dev_20230712.tsv"
    rows = path.read_text().splitlines()
    cells = rows[2].split("\t")
    cells[9] = "bm90IGFuIGltYWdl"  # base64 of "not an image"
    rows[2] = "\t".join(cells)
    cells = rows[3].split("\t")
    cells[9] = ""  # no image at all
    rows[3] = "\t".join(cells)
    path.write_text("\n".join(rows) + "\n")
    scores = run("mmbench", data, tmp_path / "out")
    errors = [a["metadata"].get("error") for a in lines(tmp_path / "out/answers.jsonl")]
    assert errors[0] is None
    assert errors[1].startswith("cannot read image of question 1 (base64 in the question file)")
    assert errors[2].startswith("cannot read image of question 2")
    assert scores["run"]["errors"] == 2


def test_only_malformed_lines_left_need_no_model(data, tmp_path):
    path = data / "pope/llava_pope_test.jsonl"
    path.write_text(path.read_text() + "not json\n")
    run("pope", data, tmp_path / "out", limit=3)
    scores = run_benchmark("pope", no_model, data, tmp_path / "out", progress=False)
    assert (scores["run"]["answered"], scores["run"]["errors"]) == (3, 1)


# ----------------------------------------------------------------------------- numbers you can trust


@pytest.mark.parametrize("benchmark", ["gqa", "shapes"])
def test_a_malformed_question_counts_as_wrong_and_is_named(benchmark, data, tmp_path):
    question_file = five_questions_one_malformed(data, benchmark)
    scores = run(benchmark, data, tmp_path / "out")
    assert scores["metrics"]["accuracy"] == pytest.approx(80.0)  # was 100.00 over 4
    assert scores["metrics"]["questions"] == 5
    assert [u["question_id"] for u in scores["unreadable"]] == [f"{question_file.name}:3"]
    assert "missing field 'text'" in scores["unreadable"][0]["error"]


def test_a_killed_run_leaves_no_stale_score(data, tmp_path, monkeypatch):
    run("pope", data, tmp_path / "out", limit=1)
    assert (tmp_path / "out/scores.json").is_file()

    def killed(self, requests, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(FakePipeline, "answer", killed)
    with pytest.raises(KeyboardInterrupt):
        run("pope", data, tmp_path / "out")
    assert not (tmp_path / "out/scores.json").exists() and not (tmp_path / "out/scores.txt").exists()
    run_json = json.loads((tmp_path / "out/run.json").read_text())
    assert run_json["finished"] is None and run_json["questions"] == 3


def test_every_run_records_its_question_set(data, tmp_path):
    a = run("pope", data, tmp_path / "a")["run"]["question_set"]
    b = run("pope", data, tmp_path / "b", limit=2)["run"]["question_set"]
    assert a == run("pope", data, tmp_path / "c")["run"]["question_set"] and a != b


def test_an_empty_question_file_is_refused(data, tmp_path):
    (data / "pope/llava_pope_test.jsonl").write_text("")
    with pytest.raises(InputError, match="llava_pope_test.jsonl holds no questions"):
        run("pope", data, tmp_path / "out")
    assert not (tmp_path / "out/scores.json").exists()


def test_a_retried_answer_is_not_lost_to_an_old_error_in_a_shard(data, tmp_path):
    # a two-process run killed before its merge: rank 1's shard holds an error for question 1
    run("pope", data, tmp_path / "out")
    answers = lines(tmp_path / "out/answers.jsonl")
    error = dict(answers[1], text="", metadata={"error": "cannot read image img1.jpg"})
    write_jsonl(tmp_path / "out/answers.jsonl", [answers[0], answers[2]])
    write_jsonl(tmp_path / "out/answers.rank1.jsonl", [error])
    scores = run("pope", data, tmp_path / "out", retry_errors=True)
    assert [a["text"] for a in lines(tmp_path / "out/answers.jsonl")] == ["Yes", "Yes", "Yes"]
    assert (scores["run"]["answered"], scores["run"]["errors"]) == (3, 0)
    assert not list((tmp_path / "out").glob("answers.rank*.jsonl"))


@pytest.mark.parametrize("setting, before, after", [
    ("dtype", "float16", "float32"), ("device", "cuda", "cpu"), ("quantization", "4bit", "none"),
])
def test_a_resume_under_other_settings_is_refused(data, tmp_path, setting, before, after):
    run("pope", data, tmp_path / "out", limit=1, **{setting: before})
    with pytest.raises(InputError, match=f"holds answers made with {setting}='{before}', not '{after}'"):
        run("pope", data, tmp_path / "out", **{setting: after})
    # scoring finished answers again loads no model: another machine may do it
    rescored = run("pope", data, tmp_path / "out", limit=1, **{setting: after})["run"]
    assert rescored["questions"] == 1 and rescored[setting] == before  # what the answers were made with


def test_the_fingerprint_covers_a_separate_clip_folder(data, tmp_path):
    from tests.helpers import make_tiny_llava, to_original_layout

    model, clip = tmp_path / "llava-v1.5", tmp_path / "clip"
    make_tiny_llava(tmp_path / "hf")
    to_original_layout(tmp_path / "hf", model, clip)
    run("pope", data, tmp_path / "out", limit=1, model_path=str(model))
    run("pope", data, tmp_path / "out", limit=2, model_path=str(model))  # the same weights resume
    weights = clip / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\1")  # another CLIP under the same name
    with pytest.raises(InputError, match="holds answers made with weights="):
        run("pope", data, tmp_path / "out", model_path=str(model))


@pytest.mark.parametrize("options, message", [
    ({"batch_size": -3}, "--batch-size must be at least 1, got -3"),
    ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
    ({"limit": -1}, "--limit must be at least 1"),
    ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"temperature": float("nan")}, "temperature"),
])
def test_bad_numeric_options_are_refused_before_anything_is_written(data, tmp_path, options, message):
    with pytest.raises(InputError, match=message):
        run("pope", data, tmp_path / "out", **options)
    assert not (tmp_path / "out/answers.jsonl").exists()


def test_max_new_tokens_zero_means_zero(data, tmp_path):
    scores = run("pope", data, tmp_path / "out", max_new_tokens=0)
    assert scores["run"]["max_new_tokens"] == 0


def test_a_limit_above_the_question_count_says_so(data, tmp_path, capsys):
    scores = run("pope", data, tmp_path / "out", limit=20)
    assert scores["run"]["questions"] == 3
    assert "--limit 20 but" in capsys.readouterr().err


def test_the_stop_reason_is_in_the_metadata(data, tmp_path):
    run("pope", data, tmp_path / "out")
    assert lines(tmp_path / "out/answers.jsonl")[0]["metadata"]["stop_reason"] == "eos"


@pytest.mark.parametrize("target", ["file", "file/sub"])
def test_an_output_dir_that_cannot_be_one_is_refused(data, tmp_path, target):
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(InputError, match="cannot use .* as the output directory: it or a folder above it is a file"):
        run("pope", data, tmp_path / target)


SHIPPED = Path(__file__).resolve().parents[1] / "models/llava-shapes-tiny"


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason=f"{SHIPPED.name} is not in this checkout")
def test_a_run_of_the_shipped_model_records_its_path_relative_to_the_repository(tmp_path):
    """run.json and scores.json name the model as a reader's clone has it; a path outside the repository as given."""
    from llava.data.synthetic import write_split
    from llava.pipeline import LlavaPipeline

    write_split("test", 2, tmp_path / "data/shapes")
    scores = run_benchmark("shapes", lambda: LlavaPipeline.load(str(SHIPPED)), tmp_path / "data", tmp_path / "out",
                           model_path=str(SHIPPED), max_new_tokens=2, progress=False)
    run_json = json.loads((tmp_path / "out/run.json").read_text())
    assert run_json["model_path"] == scores["run"]["model_path"] == "models/llava-shapes-tiny"
    assert (run_json["model_id"], run_json["answered"]) == ("llava-shapes-tiny", 2)
    assert run_json["data_root"] == str(tmp_path / "data")
