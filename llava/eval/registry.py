"""The benchmarks by name: where their files are, how to load and score them, and what the table reports.

Names are those of LLaVA's scripts (`scripts/v1_5/eval/<name>.sh`); `vqav2_val` and
`vizwiz_val` score locally on the val splits; `aokvqa` (multiple choice) and `aokvqa_da`
(direct answer) share one file and one script; `shapes`, `shapes_style`, `shapes_hr` and `shapes_video`
are the project's own synthetic benchmarks (llava/data/synthetic.py, llava/eval/shapes.py);
`msvd`, `msrvtt`, `tgif` and `activitynet` are the video QA sets (llava/eval/video_qa.py), with
FasterVLM's first-1K subsets as `<name>_1k` (`scripts/video/eval/<name>.sh`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from llava.errors import InputError
from llava.eval import (
    aokvqa, gqa, llavabench, mmbench, mme, mmvet, ocrvqa, pope, scienceqa, seed, shapes, textvqa, video_qa, vizwiz,
    vqav2,
)
from llava.eval.common import Question


def nothing_to_check(questions: list[Question], folder: Path) -> None:
    """The inputs check of a benchmark whose scorer reads no file beyond its questions."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str  # as papers' tables head the column
    folder: str  # under the data root
    question_file: str  # in `folder`
    image_folder: str | None  # in `folder`; None: images are inside the question file
    load_questions: Callable[[Path, Path | None], Iterable[Question]]
    score: Callable[[list[Question], dict, Path, Path], dict]
    headline: str | None  # the metric the report shows; None: scored by an external judge or server
    max_new_tokens: int = 128
    # Reads and checks every other file `score` will read (annotations, labels), given the questions and
    # the benchmark's folder: the runner calls it before the first question is answered, so a broken
    # annotation file is a one-line error then, not after hours of answers.
    check_inputs: Callable[[list[Question], Path], None] = nothing_to_check


def _module(name: str, title: str, module, headline: str | None, max_new_tokens: int = 128) -> Benchmark:
    extra = {"check_inputs": module.check_inputs} if hasattr(module, "check_inputs") else {}
    return Benchmark(
        name, title, module.FOLDER, module.QUESTION_FILE, module.IMAGE_FOLDER, module.load_questions, module.score,
        headline, max_new_tokens, **extra,
    )


def _shapes(name: str, title: str) -> Benchmark:
    return Benchmark(name, title, name, shapes.QUESTION_FILE, shapes.media_folder(name), shapes.loader(name),
                     shapes.score, "accuracy", check_inputs=shapes.check_inputs)


def _mmbench(lang: str) -> Benchmark:
    return Benchmark(
        "mmbench" if lang == "en" else f"mmbench_{lang}", "MMB" if lang == "en" else f"MMB-{lang.upper()}",
        mmbench.FOLDER, mmbench.QUESTION_FILES[lang], None,
        partial(mmbench.load_questions, lang=lang), partial(mmbench.score, lang=lang), "accuracy",
    )


def _video(name: str, subset: str) -> Benchmark:
    """A video QA set (`subset` "": the full test set, "1k": FasterVLM's first 1000 questions), judged by GPT."""
    data = video_qa.SETS[name]
    return Benchmark(
        f"{name}_{subset}" if subset else name, f"{data.title}-{subset.upper()}" if subset else data.title,
        data.folder, video_qa.QUESTION_FILES[subset], data.video_folder,
        partial(video_qa.load_questions, prefix=data.prefix), video_qa.score, "accuracy", max_new_tokens=1024,
    )


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        _module("vqav2", "VQAv2", vqav2, None),
        Benchmark("vqav2_val", "VQAv2-val", vqav2.FOLDER, vqav2.VAL_QUESTION_FILE, vqav2.VAL_IMAGE_FOLDER,
                  vqav2.load_val_questions, vqav2.score_val, "accuracy", check_inputs=vqav2.check_val_inputs),
        _module("gqa", "GQA", gqa, "accuracy"),
        _module("vizwiz", "VizWiz", vizwiz, None),
        Benchmark("vizwiz_val", "VizWiz-val", vizwiz.FOLDER, vizwiz.VAL_QUESTION_FILE, vizwiz.VAL_IMAGE_FOLDER,
                  vizwiz.load_val_questions, vizwiz.score_val, "accuracy"),
        _module("sqa", "SQA-IMG", scienceqa, "img_accuracy"),
        _module("textvqa", "TextVQA", textvqa, "accuracy"),
        _module("pope", "POPE", pope, "f1"),
        _module("mme", "MME", mme, "perception"),
        _mmbench("en"),
        _mmbench("cn"),
        _module("seed", "SEED-I", seed, "accuracy"),
        _module("llavabench", "LLaVA-W", llavabench, None, max_new_tokens=1024),
        _module("mmvet", "MM-Vet", mmvet, None, max_new_tokens=1024),
        _module("aokvqa", "A-OKVQA-MC", aokvqa, "accuracy"),
        Benchmark("aokvqa_da", "A-OKVQA-DA", aokvqa.FOLDER, aokvqa.QUESTION_FILE, aokvqa.IMAGE_FOLDER,
                  aokvqa.load_direct_answer_questions, aokvqa.score_direct_answer, "accuracy"),
        _module("ocrvqa", "OCR-VQA", ocrvqa, "accuracy"),
        # the project's own synthetic benchmarks (llava/data/synthetic.py): one look each
        _shapes("shapes", "Shapes"),
        _shapes("shapes_style", "Shapes-style"),
        _shapes("shapes_hr", "Shapes-HR"),
        _shapes("shapes_video", "Shapes-video"),
        # the video QA sets (Video-LLaVA's layout; the paper's score is the GPT judge, llava/eval/video_judge.py)
        *(_video(name, subset) for name in video_qa.SETS for subset in video_qa.QUESTION_FILES),
    )
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        close = difflib.get_close_matches(name, BENCHMARKS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise InputError(f"unknown benchmark '{name}'{hint} (available: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]
