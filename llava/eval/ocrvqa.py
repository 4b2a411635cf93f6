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

from pathlib import Path, PurePosixPath

from llava.errors import InputError
from llava.eval.common import SHORT_ANSWER, Question, answer_text, malformed_question, percent, read_json, with_instruction

FOLDER = "ocrvqa"
QUESTION_FILE = "dataset.json"
IMAGE_FOLDER = "images"
TEST_SPLIT = 3


def load_questions(question_file: Path, image_folder: Path):
    dataset = read_json(question_file, "OCR-VQA dataset.json")
    if not isinstance(dataset, dict):
        raise InputError(f"OCR-VQA file {question_file} must hold a JSON object keyed by image id")
    for number, (image_id, record) in enumerate(dataset.items(), start=1):
        try:
            if record["split"] != TEST_SPLIT:
                continue
            questions, references = record["questions"], record["answers"]
            if len(questions) != len(references):
                raise ValueError(f"{len(questions)} questions but {len(references)} answers")
            extension = PurePosixPath(str(record.get("imageURL", ""))).suffix or ".jpg"
            for n, (text, reference) in enumerate(zip(questions, references)):
                yield Question(
                    f"{image_id}_{n}", with_instruction(text, SHORT_ANSWER), image=image_folder / f"{image_id}{extension}",
                    fields={"answer": str(reference)},
                )
        except (KeyError, TypeError, ValueError) as error:
            detail = f"lacks {error}" if isinstance(error, KeyError) else str(error)
            yield malformed_question(question_file, number, f"image {image_id}: {detail}")


def normalize(answer: str) -> str:
    text = " ".join(answer.lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    right = 0
    for question in questions:
        text = answer_text(answers.get(question.key))
        right += text is not None and not question.error and normalize(text) == normalize(question.fields["answer"])
    return {"accuracy": percent(right, len(questions)), "questions": len(questions)}
