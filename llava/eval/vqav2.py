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
    SHORT_ANSWER, WHERE_FROM, Question, answer_text, checked_entries, normalize_vqa_answer, questions_from,
    read_checked_jsonl, read_llava_questions, typed, typed_list, vqa_accuracy, with_instruction, write_json,
)
from llava.jsonfile import read_json

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
    what = "VQAv2 val questions"
    file = read_json(question_file, dict, what=what, fix=WHERE_FROM)
    checked_entries(question_file, what, [("the file", file)], lambda file: typed(file, "questions", list))

    def make(record: dict) -> Question:
        image = image_folder / f"COCO_val2014_{typed(record, 'image_id', int):012d}.jpg"
        return Question(typed(record, "question_id", int, str), build_prompt(typed(record, "question", str)), image=image)

    return questions_from(question_file, enumerate(file["questions"], start=1), make, place="entry")


def every_test_question_id(folder: Path) -> list[int | str]:
    """The ids of llava_vqav2_mscoco_test2015.jsonl ([] without it); an unreadable line is an InputError:
    the server refuses a submission that lacks a question."""
    path = folder / ALL_TEST_QUESTIONS
    if not path.is_file():
        return []
    lines = read_checked_jsonl(path, "VQAv2 test2015 question list", lambda line: typed(line, "question_id", int, str))
    return [line["question_id"] for line in lines]


def check_inputs(questions: list[Question], folder: Path) -> None:
    every_test_question_id(folder)


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    given = {q.question_id: answer_text(answers.get(q.key)) for q in questions}
    ids = every_test_question_id(folder) or list(given)
    submission = [{"question_id": i, "answer": normalize_vqa_answer(given.get(i) or "")} for i in ids]
    write_json(output_dir / SUBMISSION, submission)
    return {
        "accuracy": None, "submission_file": SUBMISSION, "submission_questions": len(submission),
        "answered": sum(given.get(i) is not None for i in ids),
        "server": "EvalAI VQAv2 challenge, test-dev phase (see EVAL.md)",
    }


def read_val_annotations(folder: Path) -> dict:
    """{question_id: the 10 human answers} from the official val annotations, checked."""
    path, what = folder / VAL_ANNOTATIONS, "VQAv2 val annotations"
    file = read_json(path, dict, what=what, fix=WHERE_FROM)
    checked_entries(path, what, [("the file", file)], lambda file: typed(file, "annotations", list))
    checked_entries(path, what, ((f"annotation {i}", a) for i, a in enumerate(file["annotations"], 1)), _check_annotation)
    return {a["question_id"]: [h["answer"] for h in a["answers"]] for a in file["annotations"]}


def _check_annotation(annotation: dict) -> None:
    typed(annotation, "question_id", int, str)
    for index, human in enumerate(typed_list(annotation, "answers", dict), 1):
        if not isinstance(human.get("answer"), str):
            raise ValueError(f"field 'answers' item {index} has no string 'answer'")


def check_val_inputs(questions: list[Question], folder: Path) -> None:
    read_val_annotations(folder)


def score_val(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    humans = read_val_annotations(folder)
    # A question the annotations lack has no human answer to match: counted wrong.
    pairs = [(answer_text(answers.get(q.key)), humans.get(q.question_id, [])) for q in questions]
    return {**vqa_accuracy(pairs), "not_in_annotations": sum(q.question_id not in humans for q in questions)}
