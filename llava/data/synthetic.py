"""Synthetic shapes-VQA: the task our own small LLaVA is trained and benchmarked on.

No real LLaVA weights can be downloaded here, so the project trains a small
LLaVA (CLIP-style ViT with a CLS token, mlp2x_gelu projector, Llama decoder,
336x336 images) on a visual question answering task it generates itself, and
uses the task's test split as a benchmark on which pruning choices matter.

Each sample is one 336x336 RGB image and one question with a one-word answer:

- the image holds 1 to 5 flat-coloured shapes (6 shapes x 6 colours x 2 sizes)
  on a muted background (gradient, faint stripes, low-amplitude noise); some
  images also carry a short upper-case word or a number printed in a light box
  (an OCR-like case). Boxes sit on a 28-px lattice (``LATTICE``): a small shape
  fills one cell, a large one 2x2 cells, and no cell holds two things, so each
  visual token of the shipped 144-token model sees one whole object or one
  quarter of one (see ``_place`` for why);
- the question is one of six types, each answerable from the image alone:

  ==========  ===============================================  ==================
  type        example question                                  answers
  ==========  ===============================================  ==================
  color       What color is the star?                           red, green, ...
  shape       What shape is the red object?                     circle, star, ...
  exist       Is there a blue circle?                           yes / no (50/50)
  count       How many shapes are there? / How many stars ...   1 .. 5 (digits)
  position    Is the red circle on the left or the right?       left/right/top/bottom
  ocr         What word (number) is written in the image?       the word, lower-case
  ==========  ===============================================  ==================

Unambiguity rules: an object named by shape alone ("the star") or by colour
alone ("the red object") is the only one of that shape or colour; an object
named by both ("the red circle") is the only such pair; a position is only
asked when the object's whole box lies in one half, at least
``POSITION_MARGIN`` px from the middle line; "shapes" counts the shapes, never
the text box; an exist question answered "no" names a colour-shape pair that
is absent while its colour or its shape is present (a hard negative).

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
answer lives in time), which builds on this module and has its own command line with the same flags
(``python -m llava.data.video_clips``). It is not among ``LOOKS``, which this module's functions and
the image trainer take.

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
    python -m llava.data.video_clips --split test --n 600 --out playground/data/eval/shapes_video

writes ``images/*.png``, ``questions.jsonl``, ``annotations.json``,
``<split>.json`` (LLaVA's training conversations) and ``meta.json``; see
``write_split``.
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

from llava.data import drawing

GENERATOR_VERSION = 2  # 2: boxes on a 28-px lattice, smaller shapes (the lattice look is unchanged since)
LOOKS = ("lattice", "varied", "drawn", "hr")  # see the module docstring; LOOKS.index(look) is its seed stream
VIDEO_LOOK = "video"  # clips, not images: llava.data.video_clips (which imports this module, never the reverse)

IMAGE_SIZE = 336
PATCH_SIZE = 14
GRID_SIZE = IMAGE_SIZE // PATCH_SIZE  # 24 patches per side, 576 in all

COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (235, 210, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (150, 50, 190),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
SIZES = {"small": 12, "large": 26}  # lattice look: half the side of the object's box, px: 25 and 53 px boxes
SMALL_HALF_BELOW = 19  # an object's "size" is "small" when its half-side is below this, else "large"
LOOK_CELLS = {"varied": (1, 4), "drawn": (2, 4)}  # lattice cells a side of an object: 25 to 109-px boxes
MAX_CELLS = {1: 4, 2: 4, 3: 3, 4: 3, 5: 2}  # at most this many cells a side when a scene has n objects (all must fit)
VARIED_BACKGROUNDS = ("muted", "flat", "gradient", "noise", "texture")  # the varied and hr looks draw one of these
FULL_IMAGE = [0, 0, IMAGE_SIZE, IMAGE_SIZE]
HR_CANVASES = ((672, 672), (672, 336), (336, 672), (1008, 336), (336, 1008))  # (width, height): LLaVA-NeXT's
HR_CROP = 336  # px: the side of a LLaVA-NeXT crop
HR_HALF = SIZES["small"]  # px, hr look: every object is small (a 25-px box; 12 or 8 px in a 336-px view of the whole)
HR_DISTRACTORS = (3, 8)  # blobs in a cluttered crop
LATTICE = 28  # px: every box is centred in a block of whole cells of this lattice (see _place)
COLOR_JITTER = 12  # each channel of an object's colour moves by up to this much

OCR_WORDS = (
    "cat", "dog", "sun", "map", "box", "key", "cup", "hat", "pen", "bus",
    "car", "bag", "egg", "fox", "owl", "ant", "bee", "cow", "pig", "jam",
    "tea", "ice", "oak", "sky", "tree", "fish", "bird", "book", "door", "lamp",
    "milk", "ship", "boat", "cake", "frog", "moon", "rain", "rose", "sand", "snow",
    "wind", "bell", "coin", "drum", "king", "lion", "nest", "road", "salt", "wolf",
    "apple", "bread", "chair", "clock", "house", "light", "music", "plant", "river", "stone",
    "table", "water", "zebra", "tiger", "piano", "robot", "queen", "mouse", "cloud", "grape",
)
OCR_NUMBER_RANGE = (10, 1000)  # numbers printed are drawn from [10, 1000)

QUESTION_TYPES = ("color", "shape", "exist", "count", "position", "ocr")
TEMPLATES = {
    "color": "What color is the {shape}?",
    "shape": "What shape is the {color} object?",
    "exist": "Is there a {color} {shape}?",
    "count_all": "How many shapes are there?",
    "count_shape": "How many {plural} are there?",
    "position_x": "Is the {color} {shape} on the left or the right?",
    "position_y": "Is the {color} {shape} at the top or the bottom?",
    "ocr_word": "What word is written in the image?",
    "ocr_number": "What number is written in the image?",
}
# LLaVA-1.5's short-answer instruction, appended to every question on disk.
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."

SPLIT_SEED_BASE = {"train": 0, "validation": 1_000_000_000, "test": 2_000_000_000}
SPLIT_SIZE_LIMIT = 1_000_000_000  # indices of one split stay below this

MAX_OBJECTS = 5
TEXT_PROBABILITY = 0.3  # of an image carrying text when the question is not ocr
NUMBER_PROBABILITY = 0.3  # of printed text being a number rather than a word
PLACEMENT_MARGIN = 6  # px kept free between objects and the text box (so no two share a lattice cell)
POSITION_MARGIN = 8  # px between an object's box and the middle line
TEXT_BOX_ID = 255  # label of the text box in the label map
DISTRACTOR_ID = 254  # label of the hr look's distractor blobs


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


@dataclass(frozen=True)
class Plan:
    """What the question of one sample will be, fixed before its scene is drawn."""

    question_type: str
    want_yes: bool  # exist questions: the answer
    count_all: bool  # count questions: "How many shapes" rather than "How many <shape>s"


@dataclass
class _Question:
    text: str
    answer: str
    targets: list[int]


# ----------------------------------------------------------------------------
# Seeds and splits


def sample_seed(split: str, index: int) -> int:
    """The seed of sample ``index`` of ``split``; seed ranges of the splits are disjoint."""
    if split not in SPLIT_SEED_BASE:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEED_BASE)}")
    if not 0 <= index < SPLIT_SIZE_LIMIT:
        raise ValueError(f"index {index} is outside [0, {SPLIT_SIZE_LIMIT})")
    return SPLIT_SEED_BASE[split] + index


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


def question_id(split: str, index: int) -> str:
    return f"{split}_{index:07d}"


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
        scene = _hr_scene(rng, plan, text_probability) if look == "hr" else _sample_scene(rng, plan, text_probability, look)
        question = ask(rng, plan, scene.objects, scene.text, scene.size)
        if question is not None:
            break
    image, labels = _render(rng, scene, look)
    objects, text_bbox = scene.objects, scene.text_bbox
    for k, obj in enumerate(objects):
        obj["patches"] = _patches_of(labels, k + 1, obj["bbox"])
    if plan.question_type == "ocr":
        patches = _patches_of(labels, TEXT_BOX_ID, text_bbox)
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
# Scenes: what is in the image and where


@dataclass
class _Scene:
    objects: list[dict]  # without patches (added once drawn)
    text: str | None
    text_bbox: list[int] | None
    size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)  # (width, height)
    layout: dict | None = None  # hr: see Sample.layout
    distractors: list[dict] = field(default_factory=list)  # hr: {"points", "color"} of each blob


def _sample_scene(rng: np.random.Generator, plan: Plan, text_probability: float, look: str) -> _Scene:
    """A 336x336 scene on the 28-px lattice: objects of one or 2x2 cells (``lattice``), or of the look's
    range of cells (``LOOK_CELLS``)."""
    while True:  # redraw until everything fits without overlap
        shapes = _scene_shapes(rng, plan)
        if look == "lattice":
            halves = [SIZES[str(s)] for s in rng.choice(list(SIZES), len(shapes))]
        else:
            halves = _halves(rng, len(shapes), look)
        text = _maybe_text(rng, plan, text_probability)
        box_sizes = ([drawing.text_box_size(text)] if text is not None else []) + [(2 * h + 1,) * 2 for h in halves]
        boxes = _place_all(box_sizes, lambda w, h, taken: _place(rng, w, h, taken, FULL_IMAGE))
        if boxes is not None:
            break
    text_bbox = boxes.pop(0) if text is not None else None
    return _Scene([_new_object(rng, shape, box) for shape, box in zip(shapes, boxes)], text, text_bbox)


def _halves(rng: np.random.Generator, count: int, look: str) -> list[int]:
    """Half-sides (px) of ``count`` objects of the look's range of lattice cells, uniform in it (the more
    objects, the fewer cells at most: ``MAX_CELLS``); an object of c cells is a box of c x 28 - 3 px,
    centred in them as the lattice look's small and large ones are."""
    low, high = LOOK_CELLS[look]
    high = max(low, min(high, MAX_CELLS[count]))
    return [(int(rng.integers(low, high + 1)) * LATTICE - 4) // 2 for _ in range(count)]


def _maybe_text(rng: np.random.Generator, plan: Plan, text_probability: float) -> str | None:
    with_text = plan.question_type == "ocr" or rng.random() < text_probability
    return _sample_text(rng) if with_text else None


def _new_object(rng: np.random.Generator, shape: str, box: list[int]) -> dict:
    x0, y0, x1, y1 = box
    half = (x1 - x0 - 1) // 2
    return {
        "shape": shape,
        "color": str(rng.choice(list(COLORS))),
        "size": "small" if half < SMALL_HALF_BELOW else "large",
        "bbox": [x0, y0, x1, y1],
        "center": [(x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2],
    }


def _hr_scene(rng: np.random.Generator, plan: Plan, text_probability: float) -> _Scene:
    """A high-resolution scene: a LLaVA-NeXT canvas (``HR_CANVASES``) cut into 336-px crops, every
    object and the text inside one or two "busy" crops, on the crop's 28-px lattice as in the lattice
    look (so a crop at full resolution shows them as the LLaVA-1.5 model's images do), all objects
    small (a 25-px box: a half to a third of that in the squashed base view), each other crop empty
    or cluttered with distractor blobs (half of them each)."""
    width, height = HR_CANVASES[int(rng.integers(len(HR_CANVASES)))]
    rows, cols = height // HR_CROP, width // HR_CROP
    crops = [[c * HR_CROP, r * HR_CROP, (c + 1) * HR_CROP, (r + 1) * HR_CROP] for r in range(rows) for c in range(cols)]
    while True:
        busy = sorted(int(i) for i in rng.choice(len(crops), 1 if rng.random() < 0.5 else 2, replace=False))
        shapes = _scene_shapes(rng, plan)
        text = _maybe_text(rng, plan, text_probability)
        box_sizes = ([drawing.text_box_size(text)] if text is not None else []) + [(2 * HR_HALF + 1,) * 2] * len(shapes)
        regions = iter([crops[busy[int(rng.integers(len(busy)))]] for _ in box_sizes])
        boxes = _place_all(box_sizes, lambda w, h, taken: _place(rng, w, h, taken, next(regions)))
        if boxes is not None:
            break
    text_bbox = boxes.pop(0) if text is not None else None
    objects = [_new_object(rng, shape, box) for shape, box in zip(shapes, boxes)]
    cluttered = [i for i in range(len(crops)) if i not in busy and rng.random() < 0.5]
    distractors = [_distractor(rng, crops[i]) for i in cluttered
                   for _ in range(int(rng.integers(HR_DISTRACTORS[0], HR_DISTRACTORS[1] + 1)))]
    layout = {"crop_grid": [rows, cols], "busy_crops": busy, "cluttered_crops": cluttered,
              "distractors": len(distractors)}
    return _Scene(objects, text, text_bbox, (width, height), layout, distractors)


def _distractor(rng: np.random.Generator, region: list[int]) -> dict:
    """An irregular blob in a muted colour inside ``region``: clutter that is no shape of the palette."""
    radius = rng.uniform(8, 22)
    cx = rng.uniform(region[0] + radius, region[2] - radius)
    cy = rng.uniform(region[1] + radius, region[3] - radius)
    corners = int(rng.integers(5, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
    radii = radius * rng.uniform(0.45, 1.0, corners)
    points = [(round(cx + r * np.cos(a)), round(cy + r * np.sin(a))) for a, r in zip(angles, radii)]
    shade = drawing.muted_color(rng, rng.random()) * np.float32(rng.uniform(0.5, 1.4))
    return {"points": points, "color": tuple(int(c) for c in np.clip(shade, 0, 255))}


def _scene_shapes(rng: np.random.Generator, plan: Plan) -> list[str]:
    """The shapes of the scene's objects: 1 to 5, uniform, drawn with replacement.

    Counting one named shape needs repeats, which uniform shapes rarely give:
    for those questions the scene opens with 1 to 4 copies of one shape (the
    shape asked about) followed by other shapes.
    """
    if plan.question_type == "count" and not plan.count_all:
        counted = str(rng.choice(SHAPES))
        copies = int(rng.integers(1, MAX_OBJECTS))
        others = rng.choice([s for s in SHAPES if s != counted], int(rng.integers(0, MAX_OBJECTS - copies + 1)))
        return [counted] * copies + [str(s) for s in others]
    return [str(s) for s in rng.choice(SHAPES, int(rng.integers(1, MAX_OBJECTS + 1)))]


def _sample_text(rng: np.random.Generator) -> str:
    if rng.random() < NUMBER_PROBABILITY:
        return str(int(rng.integers(*OCR_NUMBER_RANGE)))
    return str(rng.choice(OCR_WORDS))


def _place_all(box_sizes: list[tuple[int, int]], place) -> list[list[int]] | None:
    """Non-overlapping boxes [x0, y0, x1, y1] of the given (width, height), or None.
    ``place(width, height, taken)`` finds one box clear of the boxes already taken, or None."""
    boxes = []
    for width, height in box_sizes:
        box = place(width, height, boxes)
        if box is None:
            return None
        boxes.append(box)
    return boxes


def _place(rng, width: int, height: int, taken: list, region: list[int]) -> list[int] | None:
    """A box of the given size inside ``region`` (a square of whole lattice cells, [x0, y0, x1, y1]),
    clear of ``taken`` (by ``PLACEMENT_MARGIN``), or None after 50 tries.

    Boxes sit on a ``LATTICE``-px lattice: a box is centred in a block of
    whole cells (a small object in one cell, a large one in 2x2), so every
    object shows the same part of itself to each patch of a 28-px ViT (the
    shipped model's 12x12 grid) or 2x2 patches of a 14-px one. A linear patch
    embedding can then tell shapes apart from a few thousand images, where
    shapes at any pixel offset took a small ViT far more data than a CPU
    trains on in an hour.
    """
    cells_x, cells_y = -(-width // LATTICE), -(-height // LATTICE)  # ceil
    inset_x, inset_y = (cells_x * LATTICE - width) // 2, (cells_y * LATTICE - height) // 2
    grid = (region[2] - region[0]) // LATTICE
    for _ in range(50):
        x0 = region[0] + LATTICE * int(rng.integers(0, grid - cells_x + 1)) + inset_x
        y0 = region[1] + LATTICE * int(rng.integers(0, grid - cells_y + 1)) + inset_y
        box = [x0, y0, x0 + width, y0 + height]
        if not any(_overlap(box, other, PLACEMENT_MARGIN) for other in taken):
            return box
    return None


def _overlap(a: list[int], b: list[int], margin: int) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0]
                or a[3] + margin <= b[1] or b[3] + margin <= a[1])


# ----------------------------------------------------------------------------
# Questions: one builder per type; None when the scene does not support it


def ask(rng, plan: Plan, objects: list[dict], text: str | None,
        size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> _Question | None:
    """The question ``plan`` asks about a scene of ``objects`` and ``text`` on an image of ``size``
    (width, height), or None when the scene cannot support it."""
    question_type = plan.question_type
    if question_type == "color":
        return _ask_color(rng, objects)
    if question_type == "shape":
        return _ask_shape(rng, objects)
    if question_type == "exist":
        return _ask_exist(rng, objects, plan.want_yes)
    if question_type == "count":
        return _ask_count(objects, plan.count_all)
    if question_type == "position":
        return _ask_position(rng, objects, size)
    if question_type == "ocr":
        return _ask_ocr(text)
    raise ValueError(f"unknown question type {question_type!r}")


def _unique(objects: list[dict], key) -> list[int]:
    """Indices of the objects whose ``key(obj)`` no other object shares."""
    values = [key(obj) for obj in objects]
    return [k for k, value in enumerate(values) if values.count(value) == 1]


def _ask_color(rng, objects) -> _Question | None:
    candidates = _unique(objects, lambda o: o["shape"])
    if not candidates:
        return None
    k = int(rng.choice(candidates))
    return _Question(TEMPLATES["color"].format(shape=objects[k]["shape"]), objects[k]["color"], [k])


def _ask_shape(rng, objects) -> _Question | None:
    candidates = _unique(objects, lambda o: o["color"])
    if not candidates:
        return None
    k = int(rng.choice(candidates))
    return _Question(TEMPLATES["shape"].format(color=objects[k]["color"]), objects[k]["shape"], [k])


def _ask_exist(rng, objects, want_yes: bool) -> _Question:
    present = {(o["color"], o["shape"]) for o in objects}
    if want_yes:
        color, shape = sorted(present)[int(rng.integers(len(present)))]
    else:
        color, shape = _absent_pair(rng, objects, present)
    targets = [k for k, o in enumerate(objects) if (o["color"], o["shape"]) == (color, shape)]
    question = TEMPLATES["exist"].format(color=color, shape=shape)
    return _Question(question, "yes" if want_yes else "no", targets)


def _absent_pair(rng, objects, present: set) -> tuple[str, str]:
    """An absent (colour, shape) pair sharing its colour or its shape with a present object.

    A hard negative: the question cannot be answered from colours or shapes
    alone. There is always one: 5 objects cannot hold all 6 pairs of a colour.
    """
    anchor = objects[int(rng.integers(len(objects)))]
    if rng.random() < 0.5:
        pairs = [(anchor["color"], s) for s in SHAPES]
    else:
        pairs = [(c, anchor["shape"]) for c in COLORS]
    pairs = [p for p in pairs if p not in present]
    return pairs[int(rng.integers(len(pairs)))]


def _ask_count(objects, count_all: bool) -> _Question:
    if count_all:
        return _Question(TEMPLATES["count_all"], str(len(objects)), list(range(len(objects))))
    counted = objects[0]["shape"]  # _scene_shapes puts the counted shape first
    targets = [k for k, o in enumerate(objects) if o["shape"] == counted]
    return _Question(TEMPLATES["count_shape"].format(plural=PLURALS[counted]), str(len(targets)), targets)


def _ask_position(rng, objects, size: tuple[int, int]) -> _Question | None:
    axis = "x" if rng.random() < 0.5 else "y"
    candidates = [k for k in _unique(objects, lambda o: (o["color"], o["shape"]))
                  if side_of(objects[k]["bbox"], axis, size) is not None]
    if not candidates:
        return None
    k = int(rng.choice(candidates))
    obj = objects[k]
    question = TEMPLATES[f"position_{axis}"].format(color=obj["color"], shape=obj["shape"])
    return _Question(question, side_of(obj["bbox"], axis, size), [k])


def side_of(bbox: list[int], axis: str, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> str | None:
    """left/right (axis x) or top/bottom (axis y) when the box is clearly in one half of an image of
    ``size`` (width, height)."""
    low, high = (bbox[0], bbox[2]) if axis == "x" else (bbox[1], bbox[3])
    names = ("left", "right") if axis == "x" else ("top", "bottom")
    middle = (size[0] if axis == "x" else size[1]) // 2
    if high <= middle - POSITION_MARGIN:
        return names[0]
    if low >= middle + POSITION_MARGIN:
        return names[1]
    return None


def _ask_ocr(text: str | None) -> _Question | None:
    if text is None:
        return None
    template = TEMPLATES["ocr_number"] if text.isdigit() else TEMPLATES["ocr_word"]
    return _Question(template, text.lower(), [])


# ----------------------------------------------------------------------------
# Rendering


def _render(rng, scene: _Scene, look: str) -> tuple[Image.Image, np.ndarray]:
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


def _patches_of(labels: np.ndarray, label: int, bbox: list[int]) -> list[int]:
    """Raster indices on the image's 14-px grid (``row * (width // 14) + col``) of the patches holding
    at least one pixel of ``label`` (all inside ``bbox``)."""
    row0, col0 = bbox[1] // PATCH_SIZE, bbox[0] // PATCH_SIZE
    row1, col1 = -(-bbox[3] // PATCH_SIZE), -(-bbox[2] // PATCH_SIZE)  # ceil
    window = labels[row0 * PATCH_SIZE:row1 * PATCH_SIZE, col0 * PATCH_SIZE:col1 * PATCH_SIZE]
    hit = (window == label).reshape(row1 - row0, PATCH_SIZE, col1 - col0, PATCH_SIZE).any(axis=(1, 3))
    rows, cols = np.nonzero(hit)  # raster order
    return ((rows + row0) * (labels.shape[1] // PATCH_SIZE) + cols + col0).tolist()


def tokens_on_grid(patches, patch_size: int) -> set[int]:
    """Patches of the 14-px grid (``Sample.patches``, an object's ``patches``) as token indices of a
    ViT with ``patch_size``-px patches (raster order): the tokens holding them."""
    grid = IMAGE_SIZE // patch_size
    return {(p // GRID_SIZE) * PATCH_SIZE // patch_size * grid + (p % GRID_SIZE) * PATCH_SIZE // patch_size
            for p in patches}


def patch_bbox(patch: int) -> list[int]:
    """The pixel box [x0, y0, x1, y1] (end exclusive) of grid patch ``patch``."""
    row, col = divmod(patch, GRID_SIZE)
    return [col * PATCH_SIZE, row * PATCH_SIZE, (col + 1) * PATCH_SIZE, (row + 1) * PATCH_SIZE]


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

    The video look's clips: `llava.data.video_clips.write_split`.
    """
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
    parser.add_argument("--n", type=int, required=True, help="number of samples to write")
    parser.add_argument("--start", type=int, default=0,
                        help="index of the first sample in the split (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--look", choices=LOOKS, default="lattice",
                        help="lattice: the shapes benchmark; drawn: the held-out style (shapes_style); hr: the "
                             "high-resolution split (shapes_hr); varied: the training look (video clips, "
                             "shapes_video: python -m llava.data.video_clips)")
    args = parser.parse_args(argv)
    out = write_split(args.split, args.n, args.out, start=args.start, progress=True, look=args.look)
    print(f"wrote {args.n} {args.split} samples ({args.look} look) to {out}")


if __name__ == "__main__":
    main()
