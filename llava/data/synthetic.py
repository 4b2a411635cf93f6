"""Synthetic shapes-VQA: the task our own small LLaVA is trained and benchmarked on.

No real LLaVA weights can be downloaded here, so the project trains a small
LLaVA (CLIP-style ViT with a CLS token, mlp2x_gelu projector, Llama decoder,
336x336 images) on a visual question answering task it generates itself, and
uses the task's test split as a benchmark on which pruning choices matter.

Each sample is one 336x336 RGB image and one question with a one-word answer. What the image
shows and what it is asked is `llava.data.scenes` (the scene model and its questions, shared with
the video look): 1 to 5 flat-coloured shapes (6 shapes x 6 colours x 2 sizes) on the 28-px lattice,
sometimes a printed word or number, and one of six question types (color, shape, exist, count,
position, ocr) asked so that its answer is unique (the rules are that module's). This module draws
the scene (`_render`) on a muted background (gradient, faint stripes, low-amplitude noise) or the
look's, and writes the splits.

Looks (``LOOKS``): one task, four ways of drawing it, each a stream of seeds of its own:

- ``lattice``: the above, the ``shapes`` benchmark (unchanged since generator version 2);
- ``varied``: for training only: any background of ``VARIED_BACKGROUNDS`` (flat, white,
  gradients, noise, textures), objects of 1 to 4 lattice cells a side (``LOOK_CELLS``: 25 to
  109-px boxes, 7% to a third of the image);
- ``drawn``: the held-out style no training run sees (the ``shapes_style`` benchmark): a plain
  pale background and large objects (2 to 4 cells) drawn by another routine
  (``drawing.draw_outlined``: anti-aliased, in the palette's exact colour, with a dark outline).
  Every look keeps boxes on the 28-px lattice: at any pixel offset the shipped models' 6-layer
  ViT (28-px patches) could not learn shapes or text in an hour of this project's CPU (its model
  card has the runs that tried);
- ``hr``: high resolution for LLaVA-NeXT (the ``shapes_hr`` benchmark): a canvas of
  ``HR_CANVASES`` (672x672 up to 1008x336) cut into 336-px crops; the objects (all small) and
  the text sit in one or two crops on the crop's lattice, each other crop is empty or
  cluttered with distractor blobs (``Sample.layout`` says which). Squashed into LLaVA-NeXT's
  336-px base view (or LLaVA-1.5's one view) an object is 8 to 12 px: the crops are where
  it can be read, and where a token budget goes decides what is left to read.

A fifth look, ``video`` (``VIDEO_LOOK``; the ``shapes_video`` benchmark), draws clips rather than
images: `llava.data.video_clips` (shapes and words that move, appear and disappear; questions whose
answer lives in time). `write_split` and the command line take it (``--look video``) and hand it to
`video_clips.write_split`, which writes ``videos/*.gif`` instead of ``images/``; it is not among
``LOOKS``, which `make_sample`, `generate_split` and the image trainer take.

Each sample also records ``patches``: the indices, on the image's grid of 14-px
patches in raster order (``row * (width // 14) + col``; 24x24 at 336 px), of the
patches that hold at least one pixel of the object(s) the question is about (of
the text box for ocr questions; empty for an exist question answered "no"). Tests
use them to check that a pruning method keeps the tokens that matter.

Determinism: sample ``index`` of ``split`` is drawn from its own
``numpy.random.default_rng(SPLIT_SEED_BASE[split] + index)``, so any sample is
reproducible alone. The splits use disjoint seed ranges. The question type
cycles with the index (``QUESTION_TYPES[index % 6]``) and exist answers
alternate yes/no every cycle, so any 12 consecutive samples hold exactly two of
each type and one yes and one no. Images are bit-identical for one numpy and
Pillow install; the text is rendered with Pillow's built-in font
(``ImageFont.load_default(size=...)``, nothing downloaded).

Speed (measured on this project's shared 2-core CPU VM, one core, Pillow 13,
numpy 2.4): about 300 samples/s to generate in memory (185 to 460 per batch
of 200, as the VM's load varies); ``write_split`` about 70 samples/s, most of
it PNG encoding (about 150 KB per image). For training, generate on the fly
(``make_sample(split, i)`` is random access) rather than writing millions of
files.

Usage::

    python -m llava.data.synthetic --split test --n 500 --out playground/data/eval/shapes
    python -m llava.data.synthetic --split test --n 600 --look hr --out playground/data/eval/shapes_hr
    python -m llava.data.synthetic --split test --n 600 --look video --out playground/data/eval/shapes_video

writes ``images/*.png`` (the video look: ``videos/*.gif``), ``questions.jsonl``,
``annotations.json``, ``<split>.json`` (LLaVA's training conversations) and
``meta.json``; see ``write_split``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

from llava.data import drawing, video_clips
# The still scene and its questions live in llava.data.scenes (shared with the video look); the names
# this module's users have always read from it are imported here by name, so `synthetic.X` keeps working.
from llava.data.scenes import (  # noqa: F401 (re-exported)
    COLOR_JITTER, COLORS, DISTRACTOR_ID, GRID_SIZE, HR_CANVASES, HR_HALF, IMAGE_SIZE, LATTICE,
    MAX_OBJECTS, OCR_WORDS, PATCH_SIZE, PLURALS, POSITION_MARGIN, QUESTION_TYPES, SHAPES, SHORT_ANSWER_PROMPT,
    SPLIT_SEED_BASE, SPLIT_SIZE_LIMIT, TEMPLATES, TEXT_BOX_ID, TEXT_PROBABILITY, Plan, Scene, ask,
    hr_scene, patch_bbox, patches_of, question_id, sample_scene, sample_seed, side_of, tokens_on_grid,
)

GENERATOR_VERSION = 2  # 2: boxes on a 28-px lattice, smaller shapes (the lattice look is unchanged since)
LOOKS = ("lattice", "varied", "drawn", "hr")  # see the module docstring; LOOKS.index(look) is its seed stream
VIDEO_LOOK = video_clips.LOOK  # clips, not images: written by llava.data.video_clips (write_split hands it over)

VARIED_BACKGROUNDS = ("muted", "flat", "gradient", "noise", "texture")  # the varied and hr looks draw one of these


@dataclass
class Sample:
    """One image, one question and its one-word answer.

    ``objects`` holds one dict per shape: ``shape``, ``color``, ``size``
    ("small" / "large"), ``bbox`` ([x0, y0, x1, y1], px, end exclusive; tight:
    every shape touches its four sides), ``center`` ([x, y], px, the centre of
    the box, always inside the shape) and ``patches`` (the grid patches
    holding at least one of its pixels).
    ``targets`` are the indices in ``objects`` of the objects the question is
    about; ``patches`` are the patches they touch (the text box's for ocr).
    """

    question_id: str
    split: str
    index: int
    image: Image.Image
    question: str
    answer: str
    question_type: str
    objects: list[dict]
    text: str | None
    text_bbox: list[int] | None
    targets: list[int]
    patches: list[int]
    look: str = "lattice"
    # hr look: {"crop_grid": [rows, cols], "busy_crops", "cluttered_crops" (raster indices of the
    # 336-px crops holding the objects and text / the distractors), "distractors" (how many)}
    layout: dict | None = None
    label_map: np.ndarray | None = field(default=None, repr=False, compare=False)  # (H, W) uint8, see _render

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the image in pixels."""
        return self.image.size

    @property
    def prompt(self) -> str:
        """The question as LLaVA's evaluation sends it: with the short-answer instruction."""
        return f"{self.question}\n{SHORT_ANSWER_PROMPT}"


# ----------------------------------------------------------------------------
# Seeds and splits


def sample_rng(split: str, index: int, look: str = "lattice") -> np.random.Generator:
    """The generator sample ``index`` of ``split`` is drawn from: its own seed, in a stream of its look's.

    The lattice look seeds numpy with the sample seed alone (as generator version 2 always did);
    every other look seeds with [its stream number, the sample seed], so the looks never share draws.
    """
    if look not in LOOKS:
        raise ValueError(f"unknown look {look!r}; expected one of {LOOKS}")
    seed = sample_seed(split, index)
    stream = LOOKS.index(look)
    return np.random.default_rng(seed if stream == 0 else [stream, seed])


def question_plan(index: int) -> Plan:
    """What sample ``index``'s question will be: its type cycles with the index and the two-way
    variants alternate every cycle of six samples, so that any 12 consecutive samples hold two of
    each type and one of each variant."""
    even_cycle = (index // len(QUESTION_TYPES)) % 2 == 0
    return Plan(QUESTION_TYPES[index % len(QUESTION_TYPES)], want_yes=even_cycle, count_all=even_cycle)


def generate_split(split: str, n: int, start: int = 0, look: str = "lattice") -> Iterator[Sample]:
    """Samples ``start .. start + n - 1`` of ``split`` in ``look``, in order."""
    for index in range(start, start + n):
        yield make_sample(split, index, look=look)


def make_sample(split: str, index: int, text_probability: float = TEXT_PROBABILITY, look: str = "lattice") -> Sample:
    """Sample ``index`` of ``split`` in ``look`` (``LOOKS``), generated from its own seed alone.

    ``text_probability`` (of printing text on an image whose question is not
    ocr) is for training only: a run may print text more often to see more
    words. The benchmark's splits always use the default.
    """
    rng = sample_rng(split, index, look)
    plan = question_plan(index)
    while True:  # redraw the scene until it supports the question (rarely more than once)
        scene = hr_scene(rng, plan, text_probability) if look == "hr" else sample_scene(rng, plan, text_probability, look)
        question = ask(rng, plan, scene.objects, scene.text, scene.size)
        if question is not None:
            break
    image, labels = _render(rng, scene, look)
    objects, text_bbox = scene.objects, scene.text_bbox
    for k, obj in enumerate(objects):
        obj["patches"] = patches_of(labels, k + 1, obj["bbox"])
    if plan.question_type == "ocr":
        patches = patches_of(labels, TEXT_BOX_ID, text_bbox)
    else:
        patches = sorted({p for k in question.targets for p in objects[k]["patches"]})
    return Sample(
        question_id=question_id(split, index),
        split=split,
        index=index,
        image=image,
        question=question.text,
        answer=question.answer,
        question_type=plan.question_type,
        objects=objects,
        text=scene.text,
        text_bbox=text_bbox,
        targets=question.targets,
        patches=patches,
        look=look,
        layout=scene.layout,
        label_map=labels,
    )


# ----------------------------------------------------------------------------
# Rendering


def _render(rng, scene: Scene, look: str) -> tuple[Image.Image, np.ndarray]:
    """The RGB image and its label map (H, W) uint8: object k is drawn as k + 1, the text box as
    ``TEXT_BOX_ID``, distractor blobs as ``DISTRACTOR_ID``, the background 0."""
    width, height = scene.size
    if look == "lattice":
        kind = "muted"
    elif look == "drawn":
        kind = "plain"
    else:
        kind = VARIED_BACKGROUNDS[int(rng.integers(len(VARIED_BACKGROUNDS)))]
    image = Image.fromarray(drawing.background(kind, rng, width, height))
    labels = Image.new("L", (width, height), 0)
    draw, label_draw = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    for blob in scene.distractors:
        draw.polygon(blob["points"], fill=blob["color"])
        label_draw.polygon(blob["points"], fill=DISTRACTOR_ID)
    if scene.text is not None:
        drawing.draw_text(draw, scene.text, scene.text_bbox)
        label_draw.rectangle(drawing.inclusive(scene.text_bbox), fill=TEXT_BOX_ID)
    if look == "drawn":
        pixels, label_map = np.array(image), np.array(labels)
        for k, obj in enumerate(scene.objects):
            drawing.draw_outlined(pixels, label_map, obj["shape"], *obj["center"], _half(obj), COLORS[obj["color"]], k + 1)
        return Image.fromarray(pixels), label_map
    for k, obj in enumerate(scene.objects):
        jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3).tolist()
        fill = tuple(min(255, max(0, c + j)) for c, j in zip(COLORS[obj["color"]], jitter))
        drawing.draw_shape(draw, obj["shape"], *obj["center"], _half(obj), fill)
        drawing.draw_shape(label_draw, obj["shape"], *obj["center"], _half(obj), k + 1)
    return image, np.asarray(labels)


def _half(obj: dict) -> int:
    """Half the side of an object's (square, odd-sided) box."""
    return (obj["bbox"][2] - obj["bbox"][0] - 1) // 2


def char_spans(text: str, box: list[int]) -> list[tuple[str, float, float]]:
    """(character, x0, x1) of each printed character of ``text`` drawn in ``box`` (px, x1 exclusive)."""
    return drawing.char_spans(text, box)


# ----------------------------------------------------------------------------
# Writing a split to disk


def write_split(split: str, n: int, out_dir: str | Path, start: int = 0,
                progress: bool = False, look: str = "lattice") -> Path:
    """Write samples ``start .. start + n - 1`` of ``split`` in ``look`` under ``out_dir``; return it.

    Files, in LLaVA's layouts:

    - ``images/<question_id>.png``;
    - ``questions.jsonl``: ``question_id``, ``image`` (file name under
      ``images/``), ``text`` (question + newline + ``SHORT_ANSWER_PROMPT``),
      ``category`` (the question type); what the evaluation runner reads;
    - ``annotations.json``: a list of ``question_id``, ``answer``,
      ``question_type``, plus ``patches``, ``objects``, ``text`` and (hr)
      ``layout`` for analyses of which tokens a pruning method kept;
    - ``<split>.json``: LLaVA's training conversations, ``[{"id", "image",
      "conversations": [{"from": "human", "value": "<image>\\n..."},
      {"from": "gpt", "value": answer}]}]``;
    - ``meta.json``: split, start, n, generator version, look, image size (the
      largest canvas of the look) and patch size.

    ``look="video"``: the clips of `llava.data.video_clips.write_split` (``videos/<question_id>.gif``;
    its docstring lists the files).
    """
    if look == VIDEO_LOOK:
        return video_clips.write_split(split, n, out_dir, start=start, progress=progress)
    if look not in LOOKS:
        raise ValueError(f"unknown look {look!r}; expected one of {LOOKS + (VIDEO_LOOK,)}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    questions, annotations, conversations = [], [], []
    for done, sample in enumerate(generate_split(split, n, start, look), 1):
        image_name = f"{sample.question_id}.png"
        sample.image.save(out_dir / "images" / image_name, compress_level=1)
        questions.append(_question_record(sample, image_name))
        annotations.append(_annotation_record(sample))
        conversations.append(_conversation_record(sample, image_name))
        if progress and (done % 100 == 0 or done == n):
            print(f"\r{split}: {done}/{n} samples", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    with open(out_dir / "questions.jsonl", "w") as f:
        f.writelines(json.dumps(q) + "\n" for q in questions)
    _write_json(out_dir / "annotations.json", annotations)
    _write_json(out_dir / f"{split}.json", conversations)
    _write_json(out_dir / "meta.json", {
        "generator": "llava.data.synthetic", "version": GENERATOR_VERSION,
        "look": look, "split": split, "start": start, "n": n,
        "image_size": max(max(size) for size in HR_CANVASES) if look == "hr" else IMAGE_SIZE, "patch_size": PATCH_SIZE,
    })
    return out_dir


def _question_record(sample: Sample, image_name: str) -> dict:
    return {"question_id": sample.question_id, "image": image_name,
            "text": sample.prompt, "category": sample.question_type}


def _annotation_record(sample: Sample) -> dict:
    record = {"question_id": sample.question_id, "answer": sample.answer,
              "question_type": sample.question_type, "patches": sample.patches,
              "objects": sample.objects, "text": sample.text}
    if sample.layout is not None:
        record["layout"] = sample.layout
    return record


def _conversation_record(sample: Sample, image_name: str) -> dict:
    return {"id": sample.question_id, "image": image_name, "conversations": [
        {"from": "human", "value": f"<image>\n{sample.prompt}"},
        {"from": "gpt", "value": sample.answer},
    ]}


def _write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


# ----------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m llava.data.synthetic",
        description="Write a split of the synthetic shapes-VQA task in LLaVA's layouts.")
    parser.add_argument("--split", choices=sorted(SPLIT_SEED_BASE), required=True,
                        help="which split (disjoint seed ranges)")
    parser.add_argument("--n", type=int, required=True, help="number of samples (clips) to write")
    parser.add_argument("--start", type=int, default=0,
                        help="index of the first sample in the split (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--look", choices=LOOKS + (VIDEO_LOOK,), default="lattice",
                        help="lattice: the shapes benchmark; drawn: the held-out style (shapes_style); hr: the "
                             "high-resolution split (shapes_hr); varied: the training look; video: GIF clips "
                             "under videos/ (shapes_video)")
    args = parser.parse_args(argv)
    out = write_split(args.split, args.n, args.out, start=args.start, progress=True, look=args.look)
    what = "clips" if args.look == VIDEO_LOOK else "samples"
    print(f"wrote {args.n} {args.split} {what} ({args.look} look) to {out}")


if __name__ == "__main__":
    main()
