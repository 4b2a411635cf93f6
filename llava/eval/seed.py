"""SEED-Bench (image part): option-letter accuracy per evaluation dimension and overall.

Files (under `<data root>/seed_bench/`):
    llava-seed-bench.jsonl   questions (options and the multiple-choice instruction in `text`);
                             `image` starts with SEED-Bench-image/ (image part) or
                             SEED-Bench-video-image/ (video part, left out here)
    SEED-Bench-image/        the images
    SEED-Bench.json          {questions: [{question_id, answer, question_type_id, data_type}],
                              question_type: {dimension name: id}}

LLaVA's scorer counts an answer right when it is exactly the letter; here the
letter is parsed with the shared rules (`common.parse_option_letter`), which
agree on every answer that is a bare letter.
"""

from __future__ import annotations

from pathlib import Path

from llava.eval.common import (
    MULTIPLE_CHOICE, WHERE_FROM, Question, accuracy_by, answer_text, checked_entries, parse_option_letter,
    read_llava_questions, typed, with_instruction,
)
from llava.jsonfile import is_json_type, json_type, read_json

FOLDER = "seed_bench"
QUESTION_FILE = "llava-seed-bench.jsonl"
IMAGE_FOLDER = "."  # `image` already starts with SEED-Bench-image/
ANNOTATIONS = "SEED-Bench.json"
VIDEO_PREFIX = "SEED-Bench-video-image"


def build_prompt(question: str) -> str:
    return with_instruction(question, MULTIPLE_CHOICE)


def load_questions(question_file: Path, image_folder: Path):
    questions = read_llava_questions(question_file, image_folder, build_prompt, keep=("image",))
    return (q for q in questions if not str(q.fields.get("image")).startswith(VIDEO_PREFIX))


def read_annotations(folder: Path) -> tuple[dict, dict]:
    """SEED-Bench.json, checked: ({question id: annotation}, {question_type_id: dimension name})."""
    path, what = folder / ANNOTATIONS, "SEED-Bench annotations"
    annotations = read_json(path, dict, what=what, fix=WHERE_FROM)
    checked_entries(path, what, [("the file", annotations)], _check_file)
    checked_entries(path, what, ((f"question {i}", q) for i, q in enumerate(annotations["questions"], 1)),
                    _check_question)
    truth = {str(q["question_id"]): q for q in annotations["questions"]}
    return truth, {type_id: name for name, type_id in annotations["question_type"].items()}


def _check_file(annotations: dict) -> None:
    typed(annotations, "questions", list)
    for name, type_id in typed(annotations, "question_type", dict).items():
        if not is_json_type(type_id, (int,)):
            raise ValueError(f"field 'question_type' gives {name!r} {json_type(type_id)}, not a number")


def _check_question(question: dict) -> None:
    typed(question, "question_id", int, str)
    typed(question, "answer", str)
    typed(question, "question_type_id", int)


def check_inputs(questions: list[Question], folder: Path) -> None:
    read_annotations(folder)


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    truth, dimension_name = read_annotations(folder)
    graded, unmatched = [], 0
    for question in questions:
        annotation = truth.get(str(question.question_id))
        if annotation is None:  # counted wrong, in no dimension
            unmatched += 1
            graded.append((None, False))
            continue
        letter = parse_option_letter(answer_text(answers.get(question.key)), "ABCD")
        graded.append((dimension_name.get(annotation["question_type_id"], str(annotation["question_type_id"])),
                       letter == annotation["answer"]))
    result = accuracy_by(graded)
    return {"accuracy": result["accuracy"], "questions": result["questions"], "not_in_annotations": unmatched,
            "dimensions": result["groups"]}
