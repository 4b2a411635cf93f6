"""The shapes benchmark scorer on a hand-made answer set."""

import json

from llava.eval import shapes
from llava.eval.common import Question


def test_shapes_scoring_by_hand(tmp_path):
    annotations = [
        {"question_id": "q1", "answer": "red", "question_type": "color"},
        {"question_id": "q2", "answer": "star", "question_type": "shape"},
        {"question_id": "q3", "answer": "yes", "question_type": "exist"},
        {"question_id": "q4", "answer": "3", "question_type": "count"},
        {"question_id": "q5", "answer": "lamp", "question_type": "ocr"},
    ]
    (tmp_path / "annotations.json").write_text(json.dumps(annotations))
    questions = [Question(a["question_id"], f"question {a['question_id']}") for a in annotations]
    said = {"q1": "Red.", "q2": "circle", "q3": " yes", "q4": "three", "q5": None}  # q5: an error line
    answers = {q.key: ({"text": said[q.question_id]} if said[q.question_id] is not None
                       else {"text": "", "metadata": {"error": "image not found"}}) for q in questions}
    result = shapes.score(questions, answers, tmp_path, tmp_path)
    # right: q1 (case and period ignored), q3 (space ignored); wrong: q2, q4 (digits only), q5 (error)
    assert result["accuracy"] == 40.0 and result["questions"] == 5
    assert result["types"] == {"color": 100.0, "shape": 0.0, "exist": 100.0, "count": 0.0, "ocr": 0.0}


def test_shapes_questions_from_the_generator(tmp_path):
    from llava.data.synthetic import write_split

    folder = write_split("test", 6, tmp_path / "shapes")
    questions = list(shapes.load_questions(folder / shapes.QUESTION_FILE, folder / shapes.IMAGE_FOLDER))
    assert len(questions) == 6 and all(q.image.is_file() and q.error is None for q in questions)
    assert all(q.text.endswith("Answer the question using a single word or phrase.") for q in questions)
    assert all(q.text.count("Answer the question") == 1 for q in questions)


def test_a_split_from_another_generator_version_is_refused(tmp_path):
    import pytest

    from llava.data.synthetic import write_split
    from llava.errors import InputError

    folder = write_split("test", 2, tmp_path / "shapes")
    assert len(list(shapes.load_questions(folder / "questions.jsonl", folder / "images"))) == 2
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "version": meta["version"] - 1}))
    with pytest.raises(InputError, match="version .* delete the folder"):
        shapes.load_questions(folder / "questions.jsonl", folder / "images")


def test_each_shapes_benchmark_takes_only_its_own_look(tmp_path):
    import pytest

    from llava.data.synthetic import write_split
    from llava.errors import InputError
    from llava.eval.registry import get_benchmark

    hr = write_split("test", 2, tmp_path / "shapes_hr", look="hr")
    bench = get_benchmark("shapes_hr")
    assert bench.folder == "shapes_hr" and len(list(bench.load_questions(hr / "questions.jsonl", hr / "images"))) == 2
    with pytest.raises(InputError, match="holds the hr look, but shapes_style is the drawn look"):
        get_benchmark("shapes_style").load_questions(hr / "questions.jsonl", hr / "images")
    with pytest.raises(InputError, match="--look lattice"):
        get_benchmark("shapes").load_questions(hr / "questions.jsonl", hr / "images")


def test_colour_questions_report_how_often_the_answer_is_a_colour_word(tmp_path):
    annotations = [{"question_id": f"q{i}", "answer": "red", "question_type": "color"} for i in range(4)]
    (tmp_path / "annotations.json").write_text(json.dumps(annotations))
    questions = [Question(a["question_id"], "What color is the star?") for a in annotations]
    said = ["red", "Blue.", "yes", "no"]  # two colour words (one right), two yes/no
    answers = {q.key: {"text": text} for q, text in zip(questions, said)}
    result = shapes.score(questions, answers, tmp_path, tmp_path)
    assert result["accuracy"] == 25.0 and result["color_word_answers"] == 50.0
