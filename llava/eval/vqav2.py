"""VQAv2: the test-dev submission file for the EvalAI server; VQA accuracy locally on val.

Files (under `<data root>/vqav2/`):
    llava_vqav2_mscoco_test-dev2015.jsonl   test-dev questions (text ends with the short-answer instruction)
    llava_vqav2_mscoco_test2015.jsonl       every test2015 question: the server wants them all
    test2015/                               the images
  for the `vqav2_val` benchmark (local accuracy):
    v2_OpenEnded_mscoco_val2014_questions.json, v2_mscoco_val2014_annotations.json   (official VQAv2 files)
    val2014/                                COCO val2014 images

Submission (LLaVA's convert_vqav2_for_submission): [{question_id, answer}] over every
test2015 question, the answer normalised by the VQA processor, "" where none was
asked or answered; written as `vqav2_test-dev_submission.json`. Test answers are
not public, so test-dev has no local score. Val: VQA soft accuracy against the
10 human answers (`common.vqa_soft_accuracy`).
"""

from __future__ import annotations

from pathlib import Path

from llava.eval.common import (
    SHORT_ANSWER, Question, answer_text, normalize_vqa_answer, read_json, read_jsonl, read_llava_questions, vqa_accuracy,
    with_instruction, write_json,
)

FOLDER = "vqav2"
QUESTION_FILE = "llava_vqav2_mscoco_test-dev2015.jsonl"
IMAGE_FOLDER = "test2015"
ALL_TEST_QUESTIONS = "llava_vqav2_mscoco_test2015.jsonl"
VAL_QUESTION_FILE = "v2_OpenEnded_mscoco_val2014_questions.json"
VAL_IMAGE_FOLDER = "val2014"
VAL_ANNOTATIONS = "v2_mscoco_val2014_annotations.json"
SUBMISSION = "vqav2_test-dev_submission.json"


def build_prompt(question: str) -> str:
    return with_instruction(question, SHORT_ANSWER)


def load_questions(question_file: Path, image_folder: Path):
    return read_llava_questions(question_file, image_folder, build_prompt)


def load_val_questions(question_file: Path, image_folder: Path):
    """Val questions from the official file, with LLaVA's prompt and COCO's image names."""
    for record in read_json(question_file, "VQAv2 val questions")["questions"]:
        image = image_folder / f"COCO_val2014_{record['image_id']:012d}.jpg"
        yield Question(record["question_id"], build_prompt(record["question"]), image=image)


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    given = {q.question_id: answer_text(answers.get(q.key)) for q in questions}
    every_test_question = read_jsonl(folder / ALL_TEST_QUESTIONS)
    ids = [r["question_id"] for r in every_test_question] or list(given)
    submission = [{"question_id": i, "answer": normalize_vqa_answer(given.get(i) or "")} for i in ids]
    write_json(output_dir / SUBMISSION, submission)
    return {
        "accuracy": None, "submission_file": SUBMISSION, "submission_questions": len(submission),
        "answered": sum(given.get(i) is not None for i in ids),
        "server": "EvalAI VQAv2 challenge, test-dev phase (see EVAL.md)",
    }


def score_val(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    annotations = read_json(folder / VAL_ANNOTATIONS, "VQAv2 val annotations")["annotations"]
    humans = {a["question_id"]: [h["answer"] for h in a["answers"]] for a in annotations}
    # A question the annotations lack has no human answer to match: counted wrong.
    pairs = [(answer_text(answers.get(q.key)), humans.get(q.question_id, [])) for q in questions]
    return {**vqa_accuracy(pairs), "not_in_annotations": sum(q.question_id not in humans for q in questions)}
