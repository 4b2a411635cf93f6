"""A-OKVQA (val): multiple choice (`aokvqa`, option-letter accuracy) and direct answer (`aokvqa_da`,
A-OKVQA's direct-answer accuracy), the benchmark FastV reports its latency table on.

Files (the official release, under `<data root>/aokvqa/`):
    aokvqa_v1p0_val.json   [{question_id, image_id, question, choices (4), correct_choice_idx,
                             direct_answers (10), ...}]: questions and answers in one file
    val2017/               COCO 2017 val images, <image_id as 12 digits>.jpg

Prompts, LLaVA-1.5's conventions: multiple choice is the question, then "A. <choice>" lines, then
"Answer with the option's letter from the given choices directly."; the letter is parsed with the
ScienceQA rules (`common.parse_option_letter`). Direct answer is the question with "Answer the question
using a single word or phrase."; its score is A-OKVQA's: min(1, matches / 3) over the 10 direct answers
(no leave-one-out averaging, unlike VQAv2), both sides normalised as VQA answers. An unanswered,
unparsable or malformed question counts wrong.
"""

from __future__ import annotations

from pathlib import Path

from llava.eval.common import (
    MULTIPLE_CHOICE, OPTION_LETTERS, SHORT_ANSWER, WHERE_FROM, Question, answer_text, normalize_vqa_answer,
    parse_option_letter, percent, questions_from, typed, typed_list, with_instruction,
)
from llava.jsonfile import read_json

FOLDER = "aokvqa"
QUESTION_FILE = "aokvqa_v1p0_val.json"
IMAGE_FOLDER = "val2017"


def image_path(image_folder: Path, image_id: int) -> Path:
    return image_folder / f"{int(image_id):012d}.jpg"


def multiple_choice_prompt(question: str, choices: list[str]) -> str:
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(OPTION_LETTERS, choices))
    return with_instruction(question.strip() + options, MULTIPLE_CHOICE)


def _questions(question_file: Path, image_folder: Path, make):
    """`make(record, image)` for every entry of the file (a JSON list), read and checked before the first
    question is yielded; an entry it cannot make is a malformed question."""
    records = read_json(question_file, list, what="A-OKVQA question file", fix=WHERE_FROM)

    def made(record: dict) -> Question:
        return make(record, image_path(image_folder, typed(record, "image_id", int)))

    return questions_from(question_file, enumerate(records, start=1), made, place="entry")


def load_questions(question_file: Path, image_folder: Path):
    """Multiple choice: the gold letter goes in `fields`."""

    def make(record: dict, image: Path) -> Question:
        choices = typed_list(record, "choices", str)
        if not 2 <= len(choices) <= len(OPTION_LETTERS):
            raise ValueError(f"{len(choices)} choices")
        correct = typed(record, "correct_choice_idx", int)
        if not 0 <= correct < len(choices):
            raise ValueError(f"correct_choice_idx {correct} outside its {len(choices)} choices")
        return Question(
            typed(record, "question_id", int, str), multiple_choice_prompt(typed(record, "question", str), choices),
            image=image, fields={"answer": OPTION_LETTERS[correct], "letters": OPTION_LETTERS[: len(choices)]},
        )

    return _questions(question_file, image_folder, make)


def load_direct_answer_questions(question_file: Path, image_folder: Path):
    def make(record: dict, image: Path) -> Question:
        answers = typed_list(record, "direct_answers", str)
        if not answers:
            raise ValueError("no direct_answers")
        return Question(
            typed(record, "question_id", int, str), with_instruction(typed(record, "question", str), SHORT_ANSWER),
            image=image, fields={"direct_answers": answers},
        )

    return _questions(question_file, image_folder, make)


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    right, unparsed = 0, 0
    for question in questions:
        text = answer_text(answers.get(question.key))
        letters = question.fields.get("letters", "")
        letter = parse_option_letter(text, letters) if letters else None
        unparsed += text is not None and bool(letters) and letter is None
        right += letter is not None and letter == question.fields["answer"]
    return {"accuracy": percent(right, len(questions)), "questions": len(questions), "unparsed_answers": unparsed}


def direct_answer_accuracy(prediction: str | None, direct_answers: list[str]) -> float:
    """A-OKVQA's rule: min(1, (annotators who gave the prediction) / 3); None scores 0."""
    if prediction is None:
        return 0.0
    predicted = normalize_vqa_answer(prediction)
    return min(1.0, sum(normalize_vqa_answer(a) == predicted for a in direct_answers) / 3)


def score_direct_answer(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    scores = [
        direct_answer_accuracy(answer_text(answers.get(q.key)), q.fields["direct_answers"]) if not q.error else 0.0
        for q in questions
    ]
    return {"accuracy": percent(sum(scores), len(scores)), "questions": len(scores)}
