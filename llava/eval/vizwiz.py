"""VizWiz-VQA: the test submission file for the EvalAI server; VQA accuracy locally on val.

Files (under `<data root>/vizwiz/`):
    llava_test.jsonl   test questions; text ends "When the provided information is insufficient,
                       respond with 'Unanswerable'.\\nAnswer the question using a single word or phrase."
    test/              the test images
  for the `vizwiz_val` benchmark (local accuracy):
    val.json           official annotations: [{image, question, answers: [{answer, answer_confidence}], ...}]
    val/               the val images

Submission (LLaVA's convert_vizwiz_for_submission): [{image, answer}] for every
test question, answers normalised by the VQA processor; written as
`vizwiz_test_submission.json`. Val: VQA soft accuracy against the 10 answers.
"""

from __future__ import annotations

from pathlib import Path

from llava.eval.common import (
    SHORT_ANSWER, WHERE_FROM, Question, answer_text, normalize_vqa_answer, questions_from, read_llava_questions, typed,
    typed_list, vqa_accuracy, with_instruction, write_json,
)
from llava.jsonfile import read_json

FOLDER = "vizwiz"
QUESTION_FILE = "llava_test.jsonl"
IMAGE_FOLDER = "test"
VAL_QUESTION_FILE = "val.json"
VAL_IMAGE_FOLDER = "val"
INSTRUCTION = f"When the provided information is insufficient, respond with 'Unanswerable'.\n{SHORT_ANSWER}"
SUBMISSION = "vizwiz_test_submission.json"


def build_prompt(question: str) -> str:
    return with_instruction(question, INSTRUCTION)


def load_questions(question_file: Path, image_folder: Path):
    return read_llava_questions(question_file, image_folder, build_prompt, keep=("image",))


def load_val_questions(question_file: Path, image_folder: Path):
    """Val questions from the official annotations (keyed by image name, as VizWiz is)."""
    records = read_json(question_file, list, what="VizWiz val annotations", fix=WHERE_FROM)

    def make(record: dict) -> Question:
        image = typed(record, "image", str)
        humans = typed_list(record, "answers", dict) if "answers" in record else []
        answers = [typed(human, "answer", str) for human in humans]
        return Question(image, build_prompt(typed(record, "question", str)), image=image_folder / image,
                        fields={"image": image, "answers": answers})

    return questions_from(question_file, enumerate(records, start=1), make, place="entry")


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    submission = [
        {"image": q.fields["image"], "answer": normalize_vqa_answer(answer_text(answers.get(q.key)) or "")}
        for q in questions
        if q.error is None  # an unreadable line names no image to submit an answer for
    ]
    write_json(output_dir / SUBMISSION, submission)
    return {
        "accuracy": None, "submission_file": SUBMISSION, "submission_questions": len(submission),
        "server": "EvalAI VizWiz-VQA challenge, test-standard / test-dev phase (see EVAL.md)",
    }


def score_val(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    return vqa_accuracy((answer_text(answers.get(q.key)), q.fields.get("answers", [])) for q in questions)
