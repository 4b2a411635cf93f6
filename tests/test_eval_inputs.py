"""Benchmark input files and questions as a careless download or a hand edit leaves them.

Every file a benchmark reads (questions, annotations, labels, meta.json) that cannot be read
is a one-line InputError naming the file and the problem, raised before the first question
is answered; a question whose fields have the wrong type is that question's error line,
counted wrong and in the denominator. Scores are worked out by hand in the comments.
"""

import json
from pathlib import Path

import pytest

from llava.errors import InputError
from llava.eval import aokvqa, ocrvqa, shapes
from llava.eval.common import Question
from llava.eval.run import main, run_benchmark
from llava.jsonfile import read_json
from tests.eval_fakes import (
    FakePipeline, make_aokvqa, make_gqa, make_mme, make_mmbench, make_ocrvqa, make_pope, make_seed, make_sqa,
    make_textvqa, make_vqav2, save_image, write_json, write_jsonl,
)
from tests.test_eval_scoring import answers_for

SHORT = "Answer the question using a single word or phrase."


class NeverAsked(FakePipeline):
    """A pipeline that fails the test if a question reaches it."""

    def answer(self, requests, **options):
        raise AssertionError("a question was answered before the inputs were checked")


def run(benchmark, data, out, pipeline=None):
    return run_benchmark(benchmark, pipeline or FakePipeline("tiny", "none"), data, out, method="none", progress=False)


def make_vqav2_val(root: Path) -> None:
    folder = root / "vqav2"
    save_image(folder / "val2014/COCO_val2014_000000000042.jpg")
    write_json(folder / "v2_OpenEnded_mscoco_val2014_questions.json", {"questions": [
        {"question_id": 11, "image_id": 42, "question": "What sport?"},
        {"question_id": 12, "image_id": 42, "question": "How many people?"}]})
    write_json(folder / "v2_mscoco_val2014_annotations.json", {"annotations": [
        {"question_id": 11, "answers": [{"answer": "sport"}] * 10},
        {"question_id": 12, "answers": [{"answer": "people"}] * 10}]})


def make_vizwiz_val(root: Path) -> None:
    folder = root / "vizwiz"
    for i in range(2):
        save_image(folder / f"val/v{i}.jpg", seed=i)
    write_json(folder / "val.json", [
        {"image": f"v{i}.jpg", "question": "What is it?", "answers": [{"answer": "it"}] * 10} for i in range(2)])


def make_shapes(root: Path, name: str = "shapes") -> None:
    from llava.data.synthetic import write_split

    write_split("test", 3, root / name, look=shapes.LOOKS[name])


BUILD = {
    "aokvqa": make_aokvqa, "aokvqa_da": make_aokvqa, "ocrvqa": make_ocrvqa, "shapes": make_shapes,
    "shapes_hr": lambda root: make_shapes(root, "shapes_hr"), "gqa": make_gqa, "sqa": make_sqa, "seed": make_seed,
    "textvqa": make_textvqa, "vqav2": make_vqav2, "vqav2_val": make_vqav2_val, "vizwiz_val": make_vizwiz_val,
    "pope": make_pope, "mme": make_mme, "mmbench": make_mmbench,
}

# (benchmark, the JSON file under the data root, the top-level type it must hold)
JSON_FILES = [
    ("aokvqa", "aokvqa/aokvqa_v1p0_val.json", list),
    ("aokvqa_da", "aokvqa/aokvqa_v1p0_val.json", list),
    ("ocrvqa", "ocrvqa/dataset.json", dict),
    ("shapes", "shapes/annotations.json", list),
    ("shapes", "shapes/meta.json", dict),
    ("shapes_hr", "shapes_hr/annotations.json", list),
    ("gqa", "gqa/data/testdev_balanced_questions.json", dict),
    ("sqa", "scienceqa/llava_test_CQM-A.json", list),
    ("sqa", "scienceqa/problems.json", dict),
    ("seed", "seed_bench/SEED-Bench.json", dict),
    ("textvqa", "textvqa/TextVQA_0.5.1_val.json", dict),
    ("vqav2_val", "vqav2/v2_OpenEnded_mscoco_val2014_questions.json", dict),
    ("vqav2_val", "vqav2/v2_mscoco_val2014_annotations.json", dict),
    ("vizwiz_val", "vizwiz/val.json", list),
]
BROKEN = {  # what the file holds -> words the one-line error must say
    "invalid": (b'{"questions": [', "is not valid JSON"),
    "empty": (b"", "is empty"),
    "not_utf8": ('{"a": "caf\u00e9"}'.encode("latin-1"), "is not UTF-8 text"),
}


def _expect_refused_before_answering(benchmark, data, tmp_path, words, file_name):
    with pytest.raises(InputError) as refused:
        run(benchmark, data, tmp_path / "out", pipeline=NeverAsked("tiny", "none"))
    message = str(refused.value)
    assert "\n" not in message and words in message and file_name in message, message
    assert not (tmp_path / "out/answers.jsonl").exists()  # refused before the first question was answered


@pytest.mark.parametrize("how", list(BROKEN))
@pytest.mark.parametrize("benchmark, relative, kind", JSON_FILES)
def test_an_unreadable_json_file_is_one_line_before_any_answer(benchmark, relative, kind, how, tmp_path):
    data = tmp_path / "data"
    BUILD[benchmark](data)
    content, words = BROKEN[how]
    (data / relative).write_bytes(content)
    _expect_refused_before_answering(benchmark, data, tmp_path, words, Path(relative).name)


@pytest.mark.parametrize("benchmark, relative, kind", JSON_FILES)
def test_a_json_file_of_the_wrong_top_level_type_is_one_line_before_any_answer(benchmark, relative, kind, tmp_path):
    data = tmp_path / "data"
    BUILD[benchmark](data)
    write_json(data / relative, {"a": 1} if kind is list else ["a"])
    words = "must hold a list" if kind is list else "must hold a JSON object"
    _expect_refused_before_answering(benchmark, data, tmp_path, words, Path(relative).name)


@pytest.mark.parametrize("benchmark, relative, content, words", [
    # annotation entries whose fields have the wrong type: the file's error, named with the entry and field
    ("shapes", "shapes/annotations.json", [{"question_id": "test_0000000", "answer": None, "question_type": "color"}],
     "entry 1: field 'answer' is null, not a string"),
    ("gqa", "gqa/data/testdev_balanced_questions.json", {"0": {"answer": 3}}, "question 0: field 'answer' is a number"),
    ("sqa", "scienceqa/problems.json", {"10": {"choices": "xy", "answer": 0}},
     "problem 10: field 'choices' is the string 'xy', not a list"),
    ("seed", "seed_bench/SEED-Bench.json", {"questions": [{"question_id": "200", "answer": "A"}], "question_type": {}},
     "question 1: lacks field 'question_type_id'"),
    ("textvqa", "textvqa/TextVQA_0.5.1_val.json", {"data": "abc"}, "field 'data' is the string 'abc', not a list"),
    ("vqav2_val", "vqav2/v2_mscoco_val2014_annotations.json", {"annotations": [{"question_id": 11, "answers": [None]}]},
     "annotation 1: field 'answers' item 1 is null, not an object"),
    # JSONL annotation files: a line that cannot be read
    ("pope", "pope/coco/coco_pope_random.json", "not json\n", "line 1: Expecting value"),
    ("pope", "pope/coco/coco_pope_popular.json", '{"image": "img1.jpg", "label": null}\n',
     "line 1: field 'label' is null, not a string"),
    ("vqav2", "vqav2/llava_vqav2_mscoco_test2015.jsonl", '{"question_id": 0}\n{"question_id": [1]}\n',
     "line 2: field 'question_id' is a list, not a number or a string"),
    # MME's per-image annotation: every line "question<TAB>Yes|No"
    ("mme", "MME/MME_Benchmark_release_version/existence/000.txt", "Is there a cat? Please answer yes or no.\n",
     "line 1: not 'question<TAB>Yes|No'"),
])
def test_a_broken_annotation_is_one_line_before_any_answer(benchmark, relative, content, words, tmp_path):
    data = tmp_path / "data"
    BUILD[benchmark](data)
    path = data / relative
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    _expect_refused_before_answering(benchmark, data, tmp_path, words, path.name)


def test_an_mme_annotation_that_is_not_utf8_and_an_mmbench_file_that_is_not_utf8(tmp_path):
    data = tmp_path / "data"
    make_mme(data)
    (data / "MME/MME_Benchmark_release_version/code_reasoning/001.txt").write_bytes("caf\u00e9\tYes\n".encode("latin-1"))
    _expect_refused_before_answering("mme", data, tmp_path, "is not UTF-8 text", "001.txt")
    make_mmbench(data)
    path = data / "mmbench/mmbench_dev_20230712.tsv"
    path.write_bytes(path.read_bytes().replace(b"Which one", "Qu\u00e9".encode("latin-1"), 1))
    _expect_refused_before_answering("mmbench", data, tmp_path, "is not UTF-8 text", path.name)


def test_the_shapes_annotations_are_checked_before_answering_not_after(tmp_path, capsys):
    # The case of the report: a broken annotations.json was found only after every question was answered.
    data = tmp_path / "data"
    make_shapes(data)
    (data / "shapes/annotations.json").write_text('[{"question_id": "test_0000000", ')
    code = main(["--benchmark", "shapes", "--data-root", str(data), "--output-dir", str(tmp_path / "out"),
                 "--model-path", str(tmp_path / "tiny"), "--pipeline", "tests.eval_fakes:FakePipeline.load",
                 "--device", "cpu", "--no-progress"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith("error: shapes annotations ") and "annotations.json is not valid JSON" in error
    assert not (tmp_path / "out/answers.jsonl").exists()


def test_read_json_accepts_a_byte_order_mark(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'[1, 2]')
    assert read_json(path, list, what="test file") == [1, 2]


# ----------------------------------------------------------------------------- malformed questions


def _set_in_second_question(path: Path, field: str, value) -> None:
    """Set `field` of the second question of a JSON list or JSONL question file."""
    if path.suffix == ".jsonl":
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        lines[1][field] = value
        write_jsonl(path, lines)
    else:
        records = json.loads(path.read_text())
        records[1][field] = value
        write_json(path, records)


# (benchmark, question file, text field, id field)
QUESTION_FILES = [
    ("aokvqa", "aokvqa/aokvqa_v1p0_val.json", "question", "question_id"),
    ("aokvqa_da", "aokvqa/aokvqa_v1p0_val.json", "question", "question_id"),
    ("shapes_hr", "shapes_hr/questions.jsonl", "text", "question_id"),
    ("shapes", "shapes/questions.jsonl", "text", "question_id"),
    ("gqa", "gqa/llava_gqa_testdev_balanced.jsonl", "text", "question_id"),
    ("textvqa", "textvqa/llava_textvqa_val_v051_ocr.jsonl", "text", "question_id"),
    ("pope", "pope/llava_pope_test.jsonl", "text", "question_id"),
    ("seed", "seed_bench/llava-seed-bench.jsonl", "text", "question_id"),
    ("sqa", "scienceqa/llava_test_CQM-A.json", "conversations", "id"),
    ("vqav2_val", "vqav2/v2_OpenEnded_mscoco_val2014_questions.json", "question", "question_id"),
    ("vizwiz_val", "vizwiz/val.json", "question", "image"),
]


@pytest.mark.parametrize("field_kind, value, words", [
    ("text", None, "is null"),
    ("text", 5, "is a number"),
    ("id", ["a", "b"], "is a list"),
])
@pytest.mark.parametrize("benchmark, relative, text_field, id_field", QUESTION_FILES)
def test_a_question_with_a_field_of_the_wrong_type_is_its_own_error_line(
        benchmark, relative, text_field, id_field, field_kind, value, words, tmp_path):
    data = tmp_path / "data"
    BUILD[benchmark](data)
    path = data / relative
    if benchmark == "vqav2_val":
        file = json.loads(path.read_text())
        file["questions"][1][text_field if field_kind == "text" else id_field] = value
        write_json(path, file)
    else:
        _set_in_second_question(path, text_field if field_kind == "text" else id_field, value)
    scores = run(benchmark, data, tmp_path / "out")
    field = text_field if field_kind == "text" else id_field
    assert [u["question_id"] for u in scores["unreadable"]] == [f"{path.name}:2"]
    error = scores["unreadable"][0]["error"]
    assert error.startswith(f"malformed question, {path.name} ") and f"field '{field}' {words}" in error, error
    # the run goes on and counts every question: the malformed one is an error line, not a lost question
    assert scores["run"]["errors"] == 1 and scores["run"]["missing"] == 0
    assert scores["run"]["answered"] == scores["run"]["questions"] - 1


def test_a_malformed_aokvqa_question_counts_wrong(tmp_path):
    # make_aokvqa: the fake answers "A", right for q0 and q1, wrong for q2. With q1's question null:
    # q0 right, q1 malformed (wrong), q2 wrong -> 1 of 3, not 1 of 2 and not a crash.
    data = tmp_path / "data"
    make_aokvqa(data)
    _set_in_second_question(data / "aokvqa/aokvqa_v1p0_val.json", "question", None)
    scores = run("aokvqa", data, tmp_path / "out")
    assert scores["metrics"]["accuracy"] == pytest.approx(100 / 3) and scores["metrics"]["questions"] == 3
    # a rerun scores again, without asking anything and without crashing
    assert run("aokvqa", data, tmp_path / "out", pipeline=NeverAsked("tiny", "none"))["metrics"] == scores["metrics"]


def test_aokvqa_choices_must_be_a_list_of_strings(tmp_path):
    path = tmp_path / "aokvqa_v1p0_val.json"
    base = {"question_id": "a", "image_id": 7, "question": "Which?", "correct_choice_idx": 0, "direct_answers": ["x"]}
    write_json(path, [{**base, "choices": "abcd"}, {**base, "choices": ["a", None]}, {**base, "choices": ["a", "b"]},
                      {**base, "choices": ["a", "b"], "direct_answers": ["x", None]}])
    questions = list(aokvqa.load_questions(path, tmp_path))
    assert "field 'choices' is the string 'abcd', not a list" in questions[0].error  # not choices a, b, c, d
    assert "field 'choices' item 2 is null, not a string" in questions[1].error
    assert questions[2].error is None and questions[2].fields["letters"] == "AB"
    direct = list(aokvqa.load_direct_answer_questions(path, tmp_path))
    assert "(question_id 'a'): field 'direct_answers' item 2 is null, not a string" in direct[3].error


def _ocrvqa(tmp_path, **b1) -> Path:
    dataset = {
        "b1": {"imageURL": "http://x/b1.jpg", "split": 3, "questions": ["Who wrote it?", "Genre?"],
               "answers": ["Ann", "None"], **b1},
        "b2": {"imageURL": "http://x/b2.jpg", "split": 3, "questions": ["Title?"], "answers": ["Emma"]},
    }
    write_json(tmp_path / "dataset.json", dataset)
    return tmp_path / "dataset.json"


def test_ocrvqa_a_split_that_is_not_a_number_is_refused_not_dropped(tmp_path):
    path = _ocrvqa(tmp_path, split="3")
    with pytest.raises(InputError, match=r"dataset.json .*image b1: field 'split' is the string '3', not a number"):
        list(ocrvqa.load_questions(path, tmp_path))


def test_ocrvqa_a_null_answer_is_no_reference_text(tmp_path):
    # b1's second reference is null: it was the text "None", so the answer "None" scored right.
    # Now b1_1 is malformed: "Ann" right, b1_1 wrong, "Emma" right -> 2 of 3.
    path = _ocrvqa(tmp_path, answers=["Ann", None])
    questions = list(ocrvqa.load_questions(path, tmp_path))
    assert [q.question_id for q in questions] == ["b1_0", "b1_1", "b2_0"]
    assert questions[1].error == "malformed question, dataset.json question b1_1: its answer is null, not a string"
    result = ocrvqa.score(questions, answers_for(questions, ["Ann", "None", "Emma"]), tmp_path, tmp_path)
    assert result == {"accuracy": pytest.approx(200 / 3), "questions": 3}


def test_ocrvqa_a_string_for_the_questions_list_is_one_malformed_entry(tmp_path):
    # "questions": "ab" was two one-letter questions; now the image is one malformed question: b2 right, 1 of 2
    path = _ocrvqa(tmp_path, questions="ab", answers=["x", "y"])
    questions = list(ocrvqa.load_questions(path, tmp_path))
    assert len(questions) == 2 and "image b1, entry 1: field 'questions' is the string 'ab', not a list" in questions[0].error
    assert ocrvqa.score(questions, answers_for(questions, ["a", "Emma"]), tmp_path, tmp_path)["accuracy"] == 50.0


def test_ocrvqa_a_null_question_is_that_questions_error(tmp_path):
    path = _ocrvqa(tmp_path, questions=[None, "Genre?"])
    questions = list(ocrvqa.load_questions(path, tmp_path))
    assert questions[0].error.endswith("question b1_0: its question is null, not a string")
    assert questions[1].text == f"Genre?\n{SHORT}"


def test_a_byte_order_mark_before_line_1_is_no_malformed_line(tmp_path):
    data = tmp_path / "data"
    make_gqa(data)
    path = data / "gqa/llava_gqa_testdev_balanced.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    scores = run("gqa", data, tmp_path / "out")
    assert scores["unreadable"] == [] and scores["run"]["answered"] == 3
    # the fake answers "Yes" (right), "holding" (right), "hat" (wrong, "man"): 2 of 3
    assert scores["metrics"]["accuracy"] == pytest.approx(200 / 3)


def test_a_line_that_is_not_utf8_is_that_questions_error(tmp_path):
    data = tmp_path / "data"
    make_gqa(data)
    path = data / "gqa/llava_gqa_testdev_balanced.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"Who", "Qu\u00e9".encode("latin-1"))
    path.write_bytes(b"".join(lines))
    scores = run("gqa", data, tmp_path / "out")
    # '{"question_id": 2, "image": "img2.jpg", "text": "Qu' is 51 bytes: the Latin-1 e-acute is byte 52
    assert [u["error"] for u in scores["unreadable"]] == [
        "malformed question, llava_gqa_testdev_balanced.jsonl line 3: not UTF-8 text (byte 52 of the line)"]
    # "Yes" and "holding" right, the unreadable third wrong: 2 of 3
    assert scores["metrics"]["accuracy"] == pytest.approx(200 / 3) and scores["metrics"]["questions"] == 3


def test_an_mmbench_file_with_a_byte_order_mark_reads_its_header(tmp_path):
    make_mmbench(tmp_path)
    path = tmp_path / "mmbench/mmbench_dev_20230712.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    from llava.eval import mmbench

    questions = list(mmbench.load_questions(path, None))
    assert [q.question_id for q in questions] == [0, 1, 2] and all(q.error is None for q in questions)


def test_a_question_record_builds_only_with_a_usable_id_and_text():
    with pytest.raises(ValueError, match="field 'question_id' is a list"):
        Question(["a"], "text")
    with pytest.raises(ValueError, match="field 'question_id' is true"):
        Question(True, "text")  # a bool is no id, though Python counts it as an int
    with pytest.raises(ValueError, match="question text is null"):
        Question("a", None)


# ----------------------------------------------------------------------------- shapes: one annotation per question


def test_shapes_grades_a_repeated_id_by_its_own_annotation_and_counts_the_ungraded(tmp_path):
    # Two splits pasted together: q1 appears twice in both files, in the same order.
    annotations = [
        {"question_id": "q1", "answer": "red", "question_type": "color"},
        {"question_id": "q2", "answer": "star", "question_type": "shape"},
        {"question_id": "q1", "answer": "circle", "question_type": "shape"},
    ]
    (tmp_path / "annotations.json").write_text(json.dumps(annotations))
    questions = [Question("q1", "What color is it?"), Question("q2", "What shape is it?"),
                 Question("q1", "What shape is the red object?"), Question("q3", "Is there a star?"),
                 Question("q1", "What color is it?", occurrence=1)]
    said = ["red", "star", "circle", "yes", "red"]
    answers = {q.key: {"text": text} for q, text in zip(questions, said)}
    result = shapes.score(questions, answers, tmp_path, tmp_path)
    # q1 (1st) by "red": right; q2 right; q1 (2nd) by "circle": right (it was graded by the last q1
    # annotation, "circle", so the 1st was wrong); q3 and a 3rd q1: no annotation, wrong. 3 of 5.
    assert result["accuracy"] == 60.0 and result["questions"] == 5
    assert result["not_in_annotations"] == 2
    assert result["types"] == {"color": 100.0, "shape": 100.0}


def test_shapes_reports_not_in_annotations_as_eval_md_promises(tmp_path):
    (tmp_path / "annotations.json").write_text(json.dumps([{"question_id": "a", "answer": "red", "question_type": "color"}]))
    questions = [Question("a", "What color?"), Question("questions.jsonl:2", "", error="malformed question")]
    result = shapes.score(questions, answers_for(questions, ["red", None]), tmp_path, tmp_path)
    assert (result["accuracy"], result["questions"], result["not_in_annotations"]) == (50.0, 2, 1)


def test_a_pope_question_whose_split_is_a_list_is_unlabelled_not_a_crash(tmp_path):
    # category [..] names no split: the question is unlabelled (counted), the two others score
    data = tmp_path / "data"
    make_pope(data)
    _set_in_second_question(data / "pope/llava_pope_test.jsonl", "category", ["popular"])
    scores = run("pope", data, tmp_path / "out")
    assert scores["metrics"]["unlabelled"] == 1 and set(scores["metrics"]["splits"]) == {"adversarial", "random"}
