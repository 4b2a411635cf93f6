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

from llava.errors import InputError
from llava.eval.common import (
    MULTIPLE_CHOICE, OPTION_LETTERS, SHORT_ANSWER, Question, answer_text, malformed_question, normalize_vqa_answer,
    parse_option_letter, percent, read_json, with_instruction,
)

FOLDER = "aokvqa"
QUESTION_FILE = "aokvqa_v1p0_val.json"
IMAGE_FOLDER = "val2017"


def image_path(image_folder: Path, image_id: int) -> Path:
    return image_folder / f"{int(image_id):012d}.jpg"


def multiple_choice_prompt(question: str, choices: list[str]) -> str:
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(OPTION_LETTERS, choices))
    return with_instruction(question.strip() + options, MULTIPLE_CHOICE)


def _records(question_file: Path):
    records = read_json(question_file, "A-OKVQA question file")
    if not isinstance(records, list):
        raise InputError(f"A-OKVQA question file {question_file} must hold a JSON list of questions")
    return enumerate(records, start=1)


def load_questions(question_file: Path, image_folder: Path):
    """Multiple choice: the gold letter goes in `fields`."""
    for number, record in _records(question_file):
        try:
            choices = list(record["choices"])
            if not 2 <= len(choices) <= len(OPTION_LETTERS):
                raise ValueError(f"{len(choices)} choices")
            correct = int(record["correct_choice_idx"])
            if not 0 <= correct < len(choices):
                raise ValueError(f"correct_choice_idx {correct} outside its {len(choices)} choices")
            yield Question(
                record["question_id"], multiple_choice_prompt(record["question"], choices),
                image=image_path(image_folder, record["image_id"]),
                fields={"answer": OPTION_LETTERS[correct], "letters": OPTION_LETTERS[: len(choices)]},
            )
        except (KeyError, TypeError, ValueError) as error:
            yield malformed_question(question_file, number, f"entry {number}: {_reason(error)}")


def load_direct_answer_questions(question_file: Path, image_folder: Path):
    for number, record in _records(question_file):
        try:
            answers = [str(a) for a in record["direct_answers"]]
            if not answers:
                raise ValueError("no direct_answers")
            yield Question(
                record["question_id"], with_instruction(record["question"], SHORT_ANSWER),
                image=image_path(image_folder, record["image_id"]), fields={"direct_answers": answers},
            )
        except (KeyError, TypeError, ValueError) as error:
            yield malformed_question(question_file, number, f"entry {number}: {_reason(error)}")


def _reason(error: Exception) -> str:
    return f"lacks {error}" if isinstance(error, KeyError) else str(error)


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
