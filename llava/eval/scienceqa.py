"""ScienceQA (test split): option-letter accuracy, overall and on questions with an image (SQA-IMG).

Files (under `<data root>/scienceqa/`):
    llava_test_CQM-A.json   the questions in LLaVA's conversation format: [{id, conversations, image?}]
    images/test/            the images (`image` is relative to it)
    problems.json           {id: {choices, answer (index of the right choice), image, ...}}

The prompt is LLaVA's `model_vqa_science --single-pred-prompt`: the human turn
without `<image>`, then the multiple-choice instruction. The answer's letter is
parsed with LLaVA's ScienceQA rules (`common.parse_option_letter`); an answer
with no letter, or a letter beyond the question's choices, is wrong (as
LLaVA's scorer, which returns -1 for it). The reported number is the accuracy
on the questions with an image ("IMG").
"""

from __future__ import annotations

from pathlib import Path

from llava.eval.common import (
    MULTIPLE_CHOICE, OPTION_LETTERS, WHERE_FROM, Question, answer_text, checked_entries, parse_option_letter, percent,
    questions_from, typed, typed_list, with_instruction,
)
from llava.jsonfile import read_json

FOLDER = "scienceqa"
QUESTION_FILE = "llava_test_CQM-A.json"
IMAGE_FOLDER = "images/test"
PROBLEMS = "problems.json"


def build_prompt(human_turn: str) -> str:
    return with_instruction(human_turn.replace("<image>", "").strip(), MULTIPLE_CHOICE)


def load_questions(question_file: Path, image_folder: Path):
    records = read_json(question_file, list, what="ScienceQA question file", fix=WHERE_FROM)

    def make(record: dict) -> Question:
        image = image_folder / typed(record, "image", str) if record.get("image") is not None else None
        turns = typed(record, "conversations", list)
        if not turns or not isinstance(turns[0], dict):
            raise ValueError("field 'conversations' holds no human turn")
        return Question(typed(record, "id", int, str), build_prompt(typed(turns[0], "value", str)), image=image)

    return questions_from(question_file, enumerate(records, start=1), make, place="entry")


def read_problems(folder: Path) -> dict:
    """problems.json, checked: {id: {choices, answer (index of the right choice), ...}}."""
    path = folder / PROBLEMS
    problems = read_json(path, dict, what="ScienceQA problems.json", fix=WHERE_FROM)
    checked_entries(path, "ScienceQA problems.json", ((f"problem {k}", v) for k, v in problems.items()), _check_problem)
    return problems


def _check_problem(problem: dict) -> None:
    typed_list(problem, "choices", str)
    typed(problem, "answer", int)


def check_inputs(questions: list[Question], folder: Path) -> None:
    read_problems(folder)


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    problems = read_problems(folder)
    right = {"all": 0, "img": 0}
    count = {"all": 0, "img": 0}
    unparsed, unmatched = 0, 0
    for question in questions:
        problem = problems.get(str(question.question_id))
        text = answer_text(answers.get(question.key))
        if problem is None:  # counted wrong
            unmatched += 1
            correct = False
        else:
            letters = OPTION_LETTERS[: len(problem["choices"])]
            letter = parse_option_letter(text, letters)
            unparsed += text is not None and letter is None
            correct = letter is not None and letters.index(letter) == problem["answer"]
        for group in ("all", "img") if question.has_image else ("all",):
            count[group] += 1
            right[group] += correct
    return {
        "img_accuracy": percent(right["img"], count["img"]),
        "accuracy": percent(right["all"], count["all"]),
        "questions": count["all"], "img_questions": count["img"],
        "unparsed_answers": unparsed, "not_in_problems": unmatched,
    }
