"""Shapes-VQA: the synthetic benchmark of the project's own small LLaVA (llava/data/synthetic.py).

Files (under `<data root>/shapes/`, written by `python -m llava.data.synthetic --split test --n N --out DIR`):
    questions.jsonl      question_id, image, text (question + short-answer instruction), category (question type)
    images/              the PNGs
    annotations.json     question_id, answer, question_type, patches, ...

Scoring: exact match after lower-casing and dropping a trailing period (every
answer is one word); accuracy overall and per question type (color, shape,
exist, count, position, ocr). A missing or error answer counts as wrong.
"""

from __future__ import annotations

from pathlib import Path

from llava.data.synthetic import GENERATOR_VERSION, QUESTION_TYPES
from llava.errors import InputError
from llava.eval.common import SHORT_ANSWER, Question, accuracy_by, answer_text, read_json, read_llava_questions, with_instruction

FOLDER = "shapes"
QUESTION_FILE = "questions.jsonl"
IMAGE_FOLDER = "images"
ANNOTATIONS = "annotations.json"


def build_prompt(question: str) -> str:
    return with_instruction(question, SHORT_ANSWER)


def load_questions(question_file: Path, image_folder: Path):
    check_generator_version(Path(question_file).parent)
    return read_llava_questions(question_file, image_folder, build_prompt, keep=("category",))


def check_generator_version(folder: Path) -> None:
    """Refuse a split written by another version of the generator: its images are not the model's task."""
    meta = folder / "meta.json"
    if not meta.is_file():
        return  # a hand-made question file: nothing to check
    version = read_json(meta, "shapes meta.json").get("version")
    if version != GENERATOR_VERSION:
        raise InputError(
            f"{folder} was written by version {version} of llava.data.synthetic, this is version "
            f"{GENERATOR_VERSION}: delete the folder and write it again "
            f"(python -m llava.data.synthetic --split test --n 600 --out {folder})"
        )


def normalize(answer: str | None) -> str:
    return (answer or "").strip().rstrip(".").strip().lower()


def is_correct(prediction: str | None, answer: str) -> bool:
    """The benchmark's one rule, also used by the training and evaluation scripts."""
    return normalize(prediction) == normalize(answer)


def fractions_by_type(graded) -> dict[str, float]:
    """(question type, correct) pairs -> {type: fraction right, ..., "overall": fraction right}.
    No pairs: an InputError, never an overall 0 or a division by zero."""
    result = accuracy_by(graded)
    if not result["questions"]:
        raise InputError("no questions were graded: nothing to take a fraction of")
    fractions = {t: result["groups"][t] / 100 for t in QUESTION_TYPES if t in result["groups"]}
    fractions["overall"] = result["accuracy"] / 100
    return fractions


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    truth = {a["question_id"]: a for a in read_json(folder / ANNOTATIONS, "shapes annotations")}
    graded = []
    for question in questions:
        annotation = truth.get(question.question_id)
        if annotation is None:  # an unreadable line, or an id the annotations lack: wrong, in no type
            graded.append((None, False))
            continue
        prediction = answer_text(answers.get(question.key))
        graded.append((annotation["question_type"], is_correct(prediction, annotation["answer"])))
    result = accuracy_by(graded)
    result["types"] = result.pop("groups")
    return result
