"""Shapes-VQA: the synthetic benchmarks of the project's own small LLaVAs (llava/data/synthetic.py).

Four benchmarks, one per look of the generator's test split (`LOOKS`):
    shapes        the lattice look at 336x336, LLaVA-1.5's model's own test;
    shapes_style  the held-out drawn look (plain backgrounds, large anti-aliased outlined shapes) that no
                  training run sees: does a model generalise beyond the generator's look?
    shapes_hr     the high-resolution look (LLaVA-NeXT canvases up to 1008 px, small objects clustered in
                  some 336-px crops, distractors in others): where a crop budget goes matters.
    shapes_video  the video look (llava/data/video_clips.py): GIF clips, each question asked of the video
                  (`Question.video`), its answer in time (motion, appear, disappear, order, during_word,
                  pass) or in every frame (the six types above); `answer_frames` in the question line.

Files (under `<data root>/<folder>/`, written by `python -m llava.data.synthetic --split test --n N --look LOOK --out DIR`,
LOOK video for shapes_video):
    questions.jsonl      question_id, image, text (question + short-answer instruction), category (question type)
    images/              the PNGs (shapes_video: videos/, the GIFs)
    annotations.json     question_id, answer, question_type, patches, ...

Scoring: exact match after lower-casing and dropping a trailing period (every
answer is one word); accuracy overall and per question type (color, shape,
exist, count, position, ocr, and shapes_video's temporal types). A missing or error answer counts as wrong.
A question is graded by the annotation with its question_id; where the files
repeat an id, the k-th question with it by the k-th annotation with it (the
generator writes both files in one order), never by another question's. A
question no annotation grades (an unreadable line, an id the annotations lack
or hold fewer times) is counted wrong, in no type, and `not_in_annotations`
counts it.
`answer_frames` (shapes_video): accuracy per type on brief answers (in 1 or 2 of the 8 sampled
frames) and on spread ones (3 or more: the generator's 4 to 8), `answer_frames_questions` their counts.
`color_word_answers`: the share of colour questions answered with a colour word
(right or wrong), so that a model answering "What color ..." with yes/no shows.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path

from llava.data.synthetic import COLORS, GENERATOR_VERSION, VIDEO_LOOK
from llava.data.video_clips import VIDEO_GENERATOR_VERSION, VIDEO_QUESTION_TYPES
from llava.errors import InputError
from llava.eval.common import (
    SHORT_ANSWER, WHERE_FROM, Question, accuracy_by, answer_text, checked_entries, read_jsonl_questions,
    read_llava_questions, typed, typed_list, with_instruction,
)
from llava.jsonfile import read_json

LOOKS = {"shapes": "lattice", "shapes_style": "drawn", "shapes_hr": "hr",
         "shapes_video": VIDEO_LOOK}  # benchmark name (and folder) -> look
FOLDER = "shapes"
QUESTION_FILE = "questions.jsonl"
IMAGE_FOLDER = "images"
VIDEO_FOLDER = "videos"  # shapes_video: the clips (the runner passes it where it passes the others' images/)
ANNOTATIONS = "annotations.json"
BRIEF, SPREAD = "brief", "spread"  # shapes_video answers in 1-2 sampled frames, in 3 or more


def build_prompt(question: str) -> str:
    return with_instruction(question, SHORT_ANSWER)


def load_questions(question_file: Path, image_folder: Path, benchmark: str = "shapes"):
    check_generator_version(Path(question_file).parent, benchmark)
    if LOOKS[benchmark] == VIDEO_LOOK:
        return _video_questions(Path(question_file), Path(image_folder))
    return read_llava_questions(question_file, image_folder, build_prompt, keep=("category",))


def _video_questions(question_file: Path, videos: Path):
    """shapes_video's lines: question_id, video (a file name under ``videos``), text, category, answer_frames."""

    def make(record: dict) -> Question:
        return Question(
            typed(record, "question_id", int, str), build_prompt(typed(record, "text", str)),
            video=videos / typed(record, "video", str),
            fields={"category": record.get("category"), "answer_frames": typed_list(record, "answer_frames", int)},
        )

    return read_jsonl_questions(question_file, make)


def media_folder(benchmark: str) -> str:
    """The folder under the benchmark's that holds its images (its clips for shapes_video)."""
    return VIDEO_FOLDER if LOOKS[benchmark] == VIDEO_LOOK else IMAGE_FOLDER


def loader(benchmark: str):
    """`load_questions` of one of the shapes benchmarks (`LOOKS`)."""
    return partial(load_questions, benchmark=benchmark)


def write_command(folder: Path, benchmark: str) -> str:
    return f"python -m llava.data.synthetic --split test --n 600 --look {LOOKS[benchmark]} --out {folder}"


def check_generator_version(folder: Path, benchmark: str = "shapes") -> None:
    """Refuse a split written by another version of the generator, or in another look than the
    benchmark's: its images are not the task the scores would claim."""
    meta = folder / "meta.json"
    if not meta.is_file():
        return  # a hand-made question file: nothing to check
    written = read_json(meta, dict, what="shapes meta.json", fix=WHERE_FROM)
    version, look = written.get("version"), written.get("look", "lattice")  # files before the looks: lattice
    if look != LOOKS[benchmark]:
        raise InputError(f"{folder} holds the {look} look, but {benchmark} is the {LOOKS[benchmark]} look: "
                         f"delete the folder and write it again ({write_command(folder, benchmark)})")
    expected = VIDEO_GENERATOR_VERSION if look == VIDEO_LOOK else GENERATOR_VERSION
    if version != expected:
        raise InputError(
            f"{folder} was written by version {version} of llava.data.synthetic's {look} look, this is version "
            f"{expected}: delete the folder and write it again ({write_command(folder, benchmark)})"
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
    fractions = {t: result["groups"][t] / 100 for t in VIDEO_QUESTION_TYPES if t in result["groups"]}
    fractions["overall"] = result["accuracy"] / 100
    return fractions


def read_annotations(folder: Path) -> dict[int | str, list[dict]]:
    """annotations.json, checked, as {question_id: [its annotations in file order]}."""
    path = folder / ANNOTATIONS
    records = read_json(path, list, what="shapes annotations", fix=WHERE_FROM)
    checked_entries(path, "shapes annotations", ((f"entry {i}", r) for i, r in enumerate(records, 1)), _check_annotation)
    by_id: dict[int | str, list[dict]] = {}
    for record in records:
        by_id.setdefault(record["question_id"], []).append(record)
    return by_id


def _check_annotation(record: dict) -> None:
    typed(record, "question_id", int, str)
    typed(record, "answer", str)
    typed(record, "question_type", str)


def check_inputs(questions: list[Question], folder: Path) -> None:
    read_annotations(folder)


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    truth = read_annotations(folder)
    graded, color_words, seen, by_frames = [], [], {}, {}
    for question in questions:
        nth = seen[question.question_id] = seen.get(question.question_id, -1) + 1
        annotations = truth.get(question.question_id, [])
        if nth >= len(annotations):  # an unreadable line, or an id the annotations lack: wrong, in no type
            graded.append((None, False))
            continue
        annotation = annotations[nth]
        prediction = answer_text(answers.get(question.key))
        graded.append((annotation["question_type"], is_correct(prediction, annotation["answer"])))
        if "answer_frames" in annotation:  # shapes_video: brief (1-2 of the 8 frames) or spread
            span = BRIEF if len(annotation["answer_frames"]) <= 2 else SPREAD
            by_frames.setdefault(span, []).append((annotation["question_type"], graded[-1][1]))
        if annotation["question_type"] == "color":
            color_words.append(normalize(prediction) in COLORS)
    result = accuracy_by(graded)
    result["types"] = result.pop("groups")
    result["not_in_annotations"] = sum(group is None for group, _ in graded)
    if color_words:
        result["color_word_answers"] = 100.0 * sum(color_words) / len(color_words)
    if by_frames:
        spans = {span: accuracy_by(pairs) for span, pairs in sorted(by_frames.items())}
        result["answer_frames"] = {span: by["groups"] for span, by in spans.items()}
        result["answer_frames_questions"] = {span: dict(Counter(t for t, _ in by_frames[span])) for span in spans}
    return result
