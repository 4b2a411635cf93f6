"""MME: 14 yes/no subtasks; per subtask acc and acc+, perception and cognition totals.

Files (under `<data root>/MME/`):
    llava_mme.jsonl                        questions; `question_id` = "<subtask>/<image>" (shared by the
                                           two questions on one image), `category` = subtask
    MME_Benchmark_release_version/<subtask>/
                                           images and, per image, `<image stem>.txt` with one
                                           "question<TAB>Yes|No" line per question; subtasks that keep
                                           images in `images/` keep those files in `questions_answers_YN/`

Scoring is that of MME's eval_tool (calculation.py): the answer is lower-cased;
"yes"/"no" exactly, else "yes" or "no" found in its first 4 characters, else it is
wrong. acc = % questions right; acc+ = % images with both questions right; the
subtask score is acc + acc+ (at most 200). Perception sums the 10 perception
subtasks (at most 2000), cognition the 4 cognition subtasks (at most 800).

A question is looked up in its image's annotation file by its text less the
short-answer instruction, whitespace collapsed; a text without " Please answer
yes or no." gets it back first, as LLaVA's convert_answer_to_mme does. A question
still not found is counted wrong and `not_in_annotations` counts it; an
unreadable line (no subtask, no image) is named in the run's scores.json and counted
in `not_in_annotations`, in no subtask.
"""

from __future__ import annotations

from pathlib import Path

from llava.errors import InputError
from llava.eval.common import SHORT_ANSWER, Question, answer_text, percent, read_llava_questions, with_instruction, without_instruction
from llava.jsonfile import read_text

FOLDER = "MME"
QUESTION_FILE = "llava_mme.jsonl"
IMAGE_FOLDER = "MME_Benchmark_release_version"
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def build_prompt(question: str) -> str:
    return with_instruction(question, SHORT_ANSWER)


def load_questions(question_file: Path, image_folder: Path):
    return read_llava_questions(question_file, image_folder, build_prompt, keep=("category", "image"))


def parse_yes_no(answer: str) -> str | None:
    answer = answer.lower()
    if answer in ("yes", "no"):
        return answer
    if "yes" in answer[:4]:
        return "yes"
    if "no" in answer[:4]:
        return "no"
    return None


YES_NO = "Please answer yes or no."


def _same_text(text: str) -> str:
    return " ".join(text.split())  # LLaVA's file and MME's differ in spacing before "Please answer yes or no."


def annotation_text(question: Question) -> str:
    """The question as MME's annotation files write it (the key `ground_truth` returns)."""
    text = _same_text(without_instruction(question.text, SHORT_ANSWER))
    return text if text.endswith(YES_NO) else f"{text} {YES_NO}"


def ground_truth(release: Path, subtask: str, image: str) -> dict[str, str]:
    """{question: "yes"/"no"} for one image, from its annotation file; a file that cannot be read,
    or a line that is not "question<TAB>Yes|No", is an InputError naming it."""
    folder = release / subtask
    answers_folder = folder / "questions_answers_YN" if (folder / "images").is_dir() else folder
    path = answers_folder / (Path(image).stem + ".txt")
    text = read_text(path, what="MME annotation", fix="see EVAL.md")
    truth = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            question, _, answer = line.rpartition("\t")
            if not question or answer.strip().lower() not in ("yes", "no"):
                raise InputError(f"MME annotation {path}, line {number}: not 'question<TAB>Yes|No'")
            truth[_same_text(question)] = answer.strip().lower()
    return truth


def subtask_and_image(question: Question) -> tuple[str, str]:
    """Where a question's annotation file is: its subtask (`category`, else the id's first part) and image."""
    category = question.fields.get("category")
    subtask = category if isinstance(category, str) and category else str(question.question_id).split("/")[0]
    return subtask, question.fields["image"]


def check_inputs(questions: list[Question], folder: Path) -> None:
    for subtask, image in {subtask_and_image(q) for q in questions if q.error is None}:
        ground_truth(folder / IMAGE_FOLDER, subtask, image)


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    release = folder / IMAGE_FOLDER
    results: dict[str, dict[str, list[bool]]] = {}  # subtask -> image -> [question right?]
    truths: dict[tuple[str, str], dict[str, str]] = {}
    unmatched = 0
    for question in questions:
        if question.error is not None:
            unmatched += 1
            continue
        subtask, image = subtask_and_image(question)
        if (subtask, image) not in truths:
            truths[subtask, image] = ground_truth(release, subtask, image)
        truth = truths[subtask, image].get(annotation_text(question))
        unmatched += truth is None
        text = answer_text(answers.get(question.key))
        right = truth is not None and text is not None and parse_yes_no(text) == truth
        results.setdefault(subtask, {}).setdefault(image, []).append(right)
    subtasks = {}
    for subtask, images in results.items():
        graded = [right for per_image in images.values() for right in per_image]
        acc = percent(sum(graded), len(graded))
        acc_plus = percent(sum(all(per_image) for per_image in images.values()), len(images))
        subtasks[subtask] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus, "questions": len(graded)}
    return {
        "perception": sum(subtasks[s]["score"] for s in PERCEPTION if s in subtasks),
        "cognition": sum(subtasks[s]["score"] for s in COGNITION if s in subtasks),
        "subtasks": subtasks,
        "not_in_annotations": unmatched,
    }
