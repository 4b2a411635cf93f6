"""TextVQA (val): LLaVA-1.5's prompt with reference OCR tokens, scored by VQA soft accuracy.

Files (LLaVA's evaluation layout, under `<data root>/textvqa/`):
    llava_textvqa_val_v051_ocr.jsonl   questions: "<question>\\nReference OCR token: a, b, ...\\n<short-answer instruction>"
    train_images/                      the images (TextVQA val images are in the train_val release)
    TextVQA_0.5.1_val.json             annotations: data[i] = {question_id, image_id, question, answers (10)}

LLaVA's question file uses the image id as `question_id` (so two questions on one
image share it); like LLaVA's scorer we find the annotation by (image id, question),
and fall back to the numeric `question_id` for files that use it.
"""

from __future__ import annotations

from pathlib import Path

from llava.eval.common import (
    SHORT_ANSWER, WHERE_FROM, Question, answer_text, checked_entries, read_llava_questions, typed, typed_list,
    vqa_accuracy, with_instruction,
)
from llava.jsonfile import read_json

FOLDER = "textvqa"
QUESTION_FILE = "llava_textvqa_val_v051_ocr.jsonl"
IMAGE_FOLDER = "train_images"
ANNOTATIONS = "TextVQA_0.5.1_val.json"


def build_prompt(question: str, ocr_tokens: list[str] | None = None) -> str:
    """LLaVA-1.5's TextVQA user turn. The published file already holds the OCR line and the
    instruction; from a bare question and its OCR tokens the same text is built."""
    if ocr_tokens is not None:
        question = f"{question}\nReference OCR token: {', '.join(ocr_tokens)}"
    return with_instruction(question, SHORT_ANSWER)


def load_questions(question_file: Path, image_folder: Path):
    return read_llava_questions(question_file, image_folder, build_prompt)


def read_annotations(folder: Path) -> list[dict]:
    """TextVQA_0.5.1_val.json's `data`, checked: [{question_id, image_id, question, answers}]."""
    path, what = folder / ANNOTATIONS, "TextVQA annotations"
    annotations = read_json(path, dict, what=what, fix=WHERE_FROM)
    checked_entries(path, what, [("the file", annotations)], lambda file: typed(file, "data", list))
    checked_entries(path, what, ((f"data entry {i}", a) for i, a in enumerate(annotations["data"], 1)), _check_entry)
    return annotations["data"]


def _check_entry(entry: dict) -> None:
    typed(entry, "question_id", int, str)
    typed(entry, "image_id", int, str)
    typed(entry, "question", str)
    typed_list(entry, "answers", str)


def check_inputs(questions: list[Question], folder: Path) -> None:
    read_annotations(folder)


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    annotations = read_annotations(folder)
    by_image_and_question = {(a["image_id"], a["question"].lower()): a for a in annotations}
    by_question_id = {a["question_id"]: a for a in annotations}
    pairs, unmatched = [], 0
    for question in questions:
        asked = question.text.split("\n")[0].lower()  # the question is the first line, as LLaVA's scorer reads it
        annotation = by_image_and_question.get((question.question_id, asked)) or by_question_id.get(question.question_id)
        if annotation is None:  # counted wrong: no human answer to match
            unmatched += 1
            pairs.append((None, []))
            continue
        pairs.append((answer_text(answers.get(question.key)), annotation["answers"]))
    return {**vqa_accuracy(pairs), "not_in_annotations": unmatched}
