"""GQA (testdev-balanced): exact-match accuracy after LLaVA's normalisation.

Files (under `<data root>/gqa/`):
    llava_gqa_testdev_balanced.jsonl      questions (text ends with the short-answer instruction)
    data/images/                          the images
    data/testdev_balanced_questions.json  GQA's questions with their `answer`, keyed by question id

A prediction is the answer with trailing periods removed, lower-cased (LLaVA's
convert_gqa_for_eval); it is right when it equals the annotated answer (GQA's eval.py
accuracy). The predictions are also written as `testdev_balanced_predictions.json`
([{questionId, prediction}]) for GQA's own eval.py (consistency, validity, ...).
"""

from __future__ import annotations

from pathlib import Path

from llava.eval.common import (
    SHORT_ANSWER, WHERE_FROM, Question, answer_text, checked_entries, percent, read_llava_questions, typed,
    with_instruction, write_json,
)
from llava.jsonfile import read_json

FOLDER = "gqa"
QUESTION_FILE = "llava_gqa_testdev_balanced.jsonl"
IMAGE_FOLDER = "data/images"
ANNOTATIONS = "data/testdev_balanced_questions.json"


def build_prompt(question: str) -> str:
    return with_instruction(question, SHORT_ANSWER)


def load_questions(question_file: Path, image_folder: Path):
    return read_llava_questions(question_file, image_folder, build_prompt)


def prediction(answer: str | None) -> str:
    return (answer or "").rstrip(".").lower()


def read_annotations(folder: Path) -> dict:
    """GQA's questions file, checked: {question id: {answer, ...}}."""
    path = folder / ANNOTATIONS
    annotations = read_json(path, dict, what="GQA testdev-balanced questions", fix=WHERE_FROM)
    checked_entries(path, "GQA testdev-balanced questions", ((f"question {k}", v) for k, v in annotations.items()),
                    lambda entry: typed(entry, "answer", str))
    return annotations


def check_inputs(questions: list[Question], folder: Path) -> None:
    read_annotations(folder)


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    annotations = read_annotations(folder)
    predictions, correct, graded, unmatched = [], 0, 0, 0
    for question in questions:
        text = answer_text(answers.get(question.key))
        if question.error is None:  # an unreadable line has no GQA question id to submit
            predictions.append({"questionId": question.question_id, "prediction": prediction(text)})
        annotation = annotations.get(str(question.question_id))
        graded += 1  # a question no annotation grades is counted wrong
        unmatched += annotation is None
        correct += annotation is not None and text is not None and prediction(text) == annotation["answer"]
    write_json(output_dir / "testdev_balanced_predictions.json", predictions)
    return {"accuracy": percent(correct, graded), "questions": graded, "not_in_annotations": unmatched,
            "predictions_file": "testdev_balanced_predictions.json"}
