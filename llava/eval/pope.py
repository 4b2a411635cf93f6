"""POPE (COCO val2014; adversarial, popular and random splits): object hallucination as yes/no.

Files (under `<data root>/pope/`):
    llava_pope_test.jsonl                 questions, each with `category` = its split
    val2014/                              COCO val2014 images
    coco/coco_pope_{adversarial,popular,random}.json
                                          labels, one JSON object a line: question_id, image, text, label (yes/no)

Answer parsing is LLaVA's: keep the first sentence, drop commas, split on spaces;
the answer is "no" if a word is "no", "not" or "No", else "yes". Per split:
accuracy, precision, recall, F1 (positive = yes) and the ratio of yes answers, in
percent; the reported number is the mean F1 over the splits.

A label is found by the question's image and text (the label files carry both);
failing that, by position within the split, as LLaVA's scorer pairs them.
An answer that is missing or an error counts as the wrong one. A question no
label covers (an unreadable line, which names no split; a question beyond its
split's labels) cannot enter F1, which needs the label: `unlabelled` counts
them, and the run's scores.json names the unreadable ones. With no "yes"
prediction (or no "yes" label) precision (recall) is 0, as sklearn's default.
"""

from __future__ import annotations

from pathlib import Path

from llava.errors import InputError
from llava.eval.common import (
    SHORT_ANSWER, Question, answer_text, percent, read_checked_jsonl, read_llava_questions, typed,
    with_instruction, without_instruction,
)

FOLDER = "pope"
QUESTION_FILE = "llava_pope_test.jsonl"
IMAGE_FOLDER = "val2014"
SPLITS = ("adversarial", "popular", "random")


def build_prompt(question: str) -> str:
    return with_instruction(question, SHORT_ANSWER)


def load_questions(question_file: Path, image_folder: Path):
    return read_llava_questions(question_file, image_folder, build_prompt, keep=("category", "image"))


def parse_yes_no(answer: str) -> str:
    """LLaVA's POPE rule: 'No, there is not.' -> no; 'Yes.' -> yes; 'There is no dog' -> no."""
    first_sentence = answer.split(".")[0].replace(",", "")
    words = first_sentence.split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def read_labels(path: Path) -> list[dict]:
    """One split's labels, checked ({image, text, label} a line); a line that cannot be read is an
    InputError naming it: a label file with a hole pairs the wrong labels by position."""
    if not path.is_file():
        raise InputError(f"POPE labels not found: {path} (see EVAL.md for where they come from)")
    return read_checked_jsonl(path, "POPE labels", _check_label)


def _check_label(label: dict) -> None:
    typed(label, "label", str)
    for name in ("image", "text"):  # what a label is found by; without them, by position
        if name in label:
            typed(label, name, str)


def split_files(questions: list[Question], folder: Path) -> dict[str, Path]:
    """{split: its label file} for the splits the questions ask."""
    asked = [q.fields.get("category") for q in questions]
    return {split: folder / "coco" / f"coco_pope_{split}.json" for split in SPLITS if split in asked}


def check_inputs(questions: list[Question], folder: Path) -> None:
    for path in split_files(questions, folder).values():
        read_labels(path)


def split_metrics(predictions: list[str], labels: list[str]) -> dict:
    pairs = list(zip(predictions, labels))
    tp = sum(p == "yes" and l == "yes" for p, l in pairs)
    fp = sum(p == "yes" and l == "no" for p, l in pairs)
    tn = sum(p == "no" and l == "no" for p, l in pairs)
    fn = sum(p == "no" and l == "yes" for p, l in pairs)
    precision = percent(tp, tp + fp) if tp + fp else 0.0
    recall = percent(tp, tp + fn) if tp + fn else 0.0
    return {
        "accuracy": percent(tp + tn, len(pairs)),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": percent(tp + fp, len(pairs)),
        "questions": len(pairs), "TP": tp, "FP": fp, "TN": tn, "FN": fn,
    }


def score(questions: list[Question], answers: dict, folder: Path, output_dir: Path) -> dict:
    per_split, graded = {}, 0
    for split, path in split_files(questions, folder).items():
        asked = [q for q in questions if q.fields.get("category") == split]
        labels = read_labels(path)
        by_content = {(l.get("image"), l.get("text")): l["label"] for l in labels}
        predictions, truths = [], []
        for position, question in enumerate(asked):
            content = (question.fields["image"], without_instruction(question.text, SHORT_ANSWER))
            label = by_content.get(content) or (labels[position]["label"] if position < len(labels) else None)
            if label is None:
                continue
            label = "no" if label == "no" else "yes"
            text = answer_text(answers.get(question.key))
            predictions.append(parse_yes_no(text) if text is not None else ("yes" if label == "no" else "no"))
            truths.append(label)
        per_split[split] = split_metrics(predictions, truths)
        graded += len(truths)
    if not per_split:
        return {"f1": None, "splits": {}, "unlabelled": len(questions)}
    return {
        "f1": sum(m["f1"] for m in per_split.values()) / len(per_split),
        "accuracy": sum(m["accuracy"] for m in per_split.values()) / len(per_split),
        "splits": per_split,
        "unlabelled": len(questions) - graded,
    }
