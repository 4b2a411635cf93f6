"""OCR-VQA (test split): questions about book covers, scored by exact match, one of FastV's benchmarks.

Files (the official release, under `<data root>/ocrvqa/`):
    dataset.json   {image id: {imageURL, questions [...], answers [...], title, authorName, genre,
                   split: 1 train / 2 val / 3 test}}
    images/        the covers as its downloader saves them: <image id><extension of imageURL>, e.g. .jpg

Every question of every split-3 image is asked (question_id "<image id>_<n>", n from 0), with LLaVA-1.5's
"Answer the question using a single word or phrase.". Exact match: the answer and the reference are
compared after lower-casing, collapsing whitespace and dropping one trailing period; nothing else
(no article or punctuation stripping, unlike VQA). An unanswered or malformed question counts wrong.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path, PurePosixPath

from llava.errors import InputError
from llava.eval.common import (
    SHORT_ANSWER, WHERE_FROM, Question, answer_text, percent, questions_from, typed, with_instruction,
)
from llava.jsonfile import is_json_type, json_type, read_json

FOLDER = "ocrvqa"
QUESTION_FILE = "dataset.json"
IMAGE_FOLDER = "images"
TEST_SPLIT = 3
SPLITS = (1, 2, 3)  # train, val, test


def load_questions(question_file: Path, image_folder: Path):
    """The test images' questions. The whole file is read and every image's split checked first: an image
    whose split is not one of 1, 2, 3 is an InputError (is it a test image or not?), never silently left out."""
    dataset = read_json(question_file, dict, what="OCR-VQA dataset.json", fix=WHERE_FROM)
    test = [(number, image_id, record) for number, (image_id, record) in enumerate(dataset.items(), start=1)
            if _split(question_file, image_id, record) == TEST_SPLIT]

    def make(image_id: str, record: dict) -> list[Question]:
        questions, references = typed(record, "questions", list), typed(record, "answers", list)
        if len(questions) != len(references):
            raise ValueError(f"{len(questions)} questions but {len(references)} answers")
        extension = PurePosixPath(str(record.get("imageURL", ""))).suffix or ".jpg"
        image = image_folder / f"{image_id}{extension}"
        return [_question(question_file, f"{image_id}_{n}", text, reference, image)
                for n, (text, reference) in enumerate(zip(questions, references))]

    for number, image_id, record in test:
        yield from questions_from(question_file, [(number, record)], partial(make, image_id),
                                  place=f"image {image_id}, entry")


def _split(path: Path, image_id: str, record) -> int:
    split = record.get("split") if isinstance(record, dict) else record
    if not (is_json_type(split, (int,)) and split in SPLITS):
        what = "field 'split' is" if isinstance(record, dict) else "the entry is"
        raise InputError(f"OCR-VQA dataset.json {path}, image {image_id}: {what} {json_type(split)}, not a number "
                         "1 (train), 2 (val) or 3 (test): its split is unknown")
    return split


def _question(path: Path, question_id: str, text, reference, image: Path) -> Question:
    """One question of an image; a question or a reference that is no string is that question's error."""
    for name, value in (("question", text), ("answer", reference)):
        if not isinstance(value, str):
            return Question(question_id, "", error=f"malformed question, {path.name} question {question_id}: "
                                                   f"its {name} is {json_type(value)}, not a string")
    return Question(question_id, with_instruction(text, SHORT_ANSWER), image=image, fields={"answer": reference})


def normalize(answer: str) -> str:
    text = " ".join(answer.lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    right = 0
    for question in questions:
        text = answer_text(answers.get(question.key))
        right += text is not None and not question.error and normalize(text) == normalize(question.fields["answer"])
    return {"accuracy": percent(right, len(questions)), "questions": len(questions)}
