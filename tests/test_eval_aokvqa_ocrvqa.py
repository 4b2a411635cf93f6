"""A-OKVQA (multiple choice and direct answer) and OCR-VQA scorers on hand-made files, scores worked
out by hand; a malformed question or an error line counts wrong."""

from pathlib import Path

from llava.eval import aokvqa, ocrvqa
from tests.eval_fakes import write_json
from tests.test_eval_scoring import answers_for

CHOICES = ["dog", "cat", "bird", "fish"]


def aokvqa_file(tmp_path: Path) -> Path:
    records = [
        {"question_id": "a", "image_id": 7, "question": "What animal is it?", "choices": CHOICES,
         "correct_choice_idx": 1, "direct_answers": ["cat"] * 4 + ["kitten"] * 6},
        {"question_id": "b", "image_id": 8, "question": "What is it?", "choices": CHOICES,
         "correct_choice_idx": 0, "direct_answers": ["dog"] * 2 + ["puppy"] * 8},
        {"question_id": "c", "image_id": 9, "question": "What flies?", "choices": CHOICES,
         "correct_choice_idx": 2, "direct_answers": ["bird"] * 1 + ["a bird"] * 1 + ["crow"] * 8},
        {"question_id": "d", "image_id": 10, "question": "What swims?", "choices": CHOICES,
         "correct_choice_idx": 3, "direct_answers": ["fish"] * 10},
        {"question_id": "e", "image_id": 11, "question": "Broken?", "choices": CHOICES},  # no answer fields
    ]
    write_json(tmp_path / "aokvqa/aokvqa_v1p0_val.json", records)
    return tmp_path / "aokvqa/aokvqa_v1p0_val.json"


def test_aokvqa_multiple_choice(tmp_path):
    questions = list(aokvqa.load_questions(aokvqa_file(tmp_path), tmp_path / "aokvqa/val2017"))
    assert questions[0].text == (
        "What animal is it?\nA. dog\nB. cat\nC. bird\nD. fish\nAnswer with the option's letter from the given choices directly."
    )
    assert questions[0].image == tmp_path / "aokvqa/val2017/000000000007.jpg"
    assert questions[4].error and "missing field 'correct_choice_idx'" in questions[4].error
    # a: B right; b: "A. dog" right; c: "The answer is D." wrong (C); d: no answer (an error line): wrong;
    # e: malformed, wrong. 2 of 5.
    answers = answers_for(questions, ["B", "A. dog", "The answer is D.", None, "A"])
    result = aokvqa.score(questions, answers, tmp_path / "aokvqa", tmp_path)
    assert result == {"accuracy": 40.0, "questions": 5, "unparsed_answers": 0}  # "The answer is D." parses


def test_aokvqa_direct_answer(tmp_path):
    questions = list(aokvqa.load_direct_answer_questions(aokvqa_file(tmp_path), tmp_path / "aokvqa/val2017"))
    assert questions[1].text == "What is it?\nAnswer the question using a single word or phrase."
    # a: "Cat." normalises to "cat", 4 annotators: min(1, 4/3) = 1; b: "dog", 2 of 10: 2/3;
    # c: "the bird" -> "bird" matches "bird" and "a bird" -> "bird": 2/3; d: error line: 0; e: no direct_answers field: 0
    answers = answers_for(questions, ["Cat.", "dog", "the bird", None, "x"])
    result = aokvqa.score_direct_answer(questions, answers, tmp_path / "aokvqa", tmp_path)
    assert result["questions"] == 5
    assert abs(result["accuracy"] - 100 * (1 + 2 / 3 + 2 / 3) / 5) < 1e-9  # 46.67
    assert aokvqa.direct_answer_accuracy("kitten", ["kitten"] * 3) == 1.0  # no leave-one-out: 3 of 10 is 1, not 0.9


def test_ocrvqa_exact_match(tmp_path):
    write_json(tmp_path / "ocrvqa/dataset.json", {
        "111": {"imageURL": "http://images.amazon.com/111.jpg", "split": 3,
                "questions": ["Who is the author?", "What is the title?", "Is this a cookbook?"],
                "answers": ["Jane Austen", "Emma.", "No"]},
        "222": {"imageURL": "http://images.amazon.com/222.png", "split": 3, "questions": ["Genre?"],
                "answers": ["Travel"]},
        "333": {"imageURL": "http://images.amazon.com/333.jpg", "split": 2, "questions": ["Val?"], "answers": ["x"]},
        "444": {"split": 3, "questions": ["One?", "Two?"], "answers": ["only one"]},  # malformed
    })
    questions = list(ocrvqa.load_questions(tmp_path / "ocrvqa/dataset.json", tmp_path / "ocrvqa/images"))
    assert [q.question_id for q in questions[:4]] == ["111_0", "111_1", "111_2", "222_0"]  # the val image is not asked
    assert questions[3].image == tmp_path / "ocrvqa/images/222.png"
    assert questions[4].error and "2 questions but 1 answers" in questions[4].error
    # "jane  austen" right (case, spaces); "Emma" right (the reference's period); "No." right; "travel guide"
    # wrong; the malformed image's question wrong: 3 of 5.
    answers = answers_for(questions, ["jane  austen", "Emma", "No.", "travel guide", "only one"])
    assert ocrvqa.score(questions, answers, tmp_path / "ocrvqa", tmp_path) == {"accuracy": 60.0, "questions": 5}
    assert ocrvqa.normalize("The Hobbit") != ocrvqa.normalize("Hobbit")  # no article stripping: exact match
