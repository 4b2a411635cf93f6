"""The runner, in process, with the fake pipeline: answer lines, resume, per-question errors, metadata."""

import json

import pytest

from llava.errors import InputError
from llava.eval.run import run_benchmark
from tests.eval_fakes import FakePipeline, make_mmbench, make_pope, make_textvqa, write_jsonl


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
    assert first["metadata"] == {"visual_tokens": [8], "kept_tokens": [8]}
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
    # the three unreadable questions that have annotations count as wrong: 1 right of 3 (+ "long", not annotated)
    assert scores["metrics"]["accuracy"] == pytest.approx(100 / 3)

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
