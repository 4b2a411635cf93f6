"""The video look of the synthetic shapes task (the ``shapes_video`` benchmark): clips whose answers live in time.

Real video benchmarks cannot be downloaded here, so the project's small Video-LLaVA is trained and
scored on clips this module draws. A clip is ``FRAME_COUNTS`` (16, 24 or 32) square 336x336 frames
of the lattice look (`llava.data.scenes`: flat shapes and printed words on a muted background, every
box on the 28-px lattice) in which shapes and words move, appear and disappear. Video-LLaVA reads 8 of
them, ``np.linspace(0, n - 1, 8).astype(int)`` (`sampled_frames`); every question is answerable from
those 8 frames alone, and everything that happens is laid out on them: an object visible on sampled
frames a .. b is drawn from midway after sampled frame a - 1 to midway before sampled frame b + 1, and a
moving one stands at its start cell on sampled frame a and at its end cell on sampled frame b.

Question types (``VIDEO_QUESTION_TYPES``): the six of ``shapes`` on a still scene, asked as ``shapes``
asks them, and six whose answer lives in time:

===========  ==========================================================  =======================
type         question                                                    answers
===========  ==========================================================  =======================
motion       Toward which side does the red circle move?                 left/right/top/bottom
appear       What shape / What color is the shape that appears ...?     a shape / a colour
disappear    What shape / What color is the shape that disappears ...?  a shape / a colour
order        What shape is shown first? / ... last?                      a shape
during_word  What shape is shown while the word (number) is visible?    a shape
pass         How many shapes pass by?                                    1 .. 4
===========  ==========================================================  =======================

Every answer is a word the shipped models' tokenizer holds as one piece (`llava.data.tokenizer`).
Rules that make the answers unique: a moving object travels along one axis only, at least
``MIN_TRAVEL`` cells between its first and its last sampled frame, and is named by a colour-shape
pair no other object of the clip has; "appears" is absent from sampled frame 0 and visible on a later
one to the end, "disappears" the reverse, and every other object of those clips is visible on all 8;
an order clip shows 2 to 4 objects of different shapes one after another, one at a time; while the
word of a during_word clip is visible exactly one object is, and it is visible exactly then; in a pass
clip every mover is counted, a still object never moves. Each object keeps its own lane (a band of
lattice rows, or columns for vertical motion) with an empty cell between lanes, so no two things ever
overlap. `make_clip` checks each answer once more from the drawn boxes of the sampled frames.

Where the answer is (``answer_frames``, positions 0 .. 7 among the sampled frames, and
``answer_patches``, the 14-px grid patches of the answer's objects and word on each of them): the
static types spread it over all 8 frames; each temporal type alternates (``VideoPlan.brief``) between
one or two frames (a brief motion, a late appearance, an early disappearance, a short first or last
object, a short word) and four or more (for pass, each mover's own window is one of two frames or all
8). A global token budget can follow a brief answer; a per-frame one spreads itself over the frames
that hold none.

Frames are stored as GIFs written by Pillow with one palette per clip (``Clip.frames`` are the
quantised frames: what any decoder reads back, bit for bit); every frame has fresh background noise,
so no two frames are equal and the writer keeps all of them.

Determinism: clip ``index`` of ``split`` is drawn from ``default_rng([SEED_STREAM, seed])`` with the
split's seed of `scenes.sample_seed`; the type cycles with the index, its variant every cycle and
brief/spread every two cycles, so any 48 consecutive clips hold each type, variant and spread once.

Usage (the command line is `llava.data.synthetic`'s, which hands the video look to `write_split` here)::

    python -m llava.data.synthetic --look video --split test --n 600 --out playground/data/eval/shapes_video

writes ``videos/<question_id>.gif``, ``questions.jsonl``, ``annotations.json``, ``<split>.json``
(Video-LLaVA's training conversations) and ``meta.json``; see `write_split`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

from llava.data import drawing
from llava.data.scenes import (
    COLOR_JITTER, COLORS, IMAGE_SIZE, LATTICE, PATCH_SIZE, QUESTION_TYPES, SHAPES, SHORT_ANSWER_PROMPT, SIZES,
    TEXT_BOX_ID, TEXT_PROBABILITY, Plan, ask, patches_of, question_id, sample_scene, sample_seed, sample_text,
)

VIDEO_GENERATOR_VERSION = 1
LOOK = "video"
SEED_STREAM = 100  # the video look's numpy seed stream; the image looks use 0 .. len(synthetic.LOOKS) - 1
FRAME_COUNTS = (16, 24, 32)  # source frames of a clip, one of these (uniform)
SAMPLED_FRAMES = 8  # Video-LLaVA reads this many
FRAME_MS = 100  # GIF frame duration
CELLS = IMAGE_SIZE // LATTICE  # 12 lattice cells a side
MIN_TRAVEL = 3  # cells a moving object travels between its first and last sampled frame, at least
MAX_OBJECTS = 5
BACKGROUND_COLOURS = 224  # of a clip's palette; its objects and word take up to 21 more
BRIEF_FRAMES = 2  # a brief answer is in at most this many sampled frames
SPREAD_FRAMES = 4  # a spread one in at least this many
ANNOTATIONS = "annotations.json"
SIDES = {("x", 1): "right", ("x", -1): "left", ("y", 1): "bottom", ("y", -1): "top"}  # (axis, sign) -> answer

TEMPORAL_TYPES = ("motion", "appear", "disappear", "order", "during_word", "pass")
VIDEO_QUESTION_TYPES = QUESTION_TYPES + TEMPORAL_TYPES
TEMPLATES = {
    "motion": "Toward which side does the {color} {shape} move?",
    "appear_shape": "What shape appears partway through the video?",
    "appear_color": "What color is the shape that appears partway through the video?",
    "disappear_shape": "What shape disappears partway through the video?",
    "disappear_color": "What color is the shape that disappears partway through the video?",
    "order_first": "What shape is shown first?",
    "order_last": "What shape is shown last?",
    "during_word": "What shape is shown while the word is visible?",
    "during_number": "What shape is shown while the number is visible?",
    "pass": "How many shapes pass by?",
}


def sampled_frames(n: int) -> list[int]:
    """The source frames Video-LLaVA reads of an ``n``-frame clip: ``linspace(0, n - 1, 8)``, truncated."""
    return np.linspace(0, n - 1, SAMPLED_FRAMES).astype(int).tolist()


@dataclass(frozen=True)
class VideoPlan:
    """What the question of one clip will be, fixed before its scene is drawn."""

    question_type: str
    variant: bool  # appear/disappear: ask the shape (else the colour); order: first (else last); static: as Plan
    brief: bool  # temporal types: the answer in one or two sampled frames (else in four or more)


def video_plan(index: int) -> VideoPlan:
    cycle = index // len(VIDEO_QUESTION_TYPES)
    return VideoPlan(VIDEO_QUESTION_TYPES[index % len(VIDEO_QUESTION_TYPES)], cycle % 2 == 0, (cycle // 2) % 2 == 0)


@dataclass
class Clip:
    """One clip, one question and its one-word answer.

    ``frames``: every source frame as written to the GIF (palette images: `rgb_frames` are what a
    decoder reads back, `video_frames` the 8 of them Video-LLaVA reads).
    ``objects``: one dict per shape: ``shape``, ``color``, ``size`` and ``boxes`` (one per source frame:
    [x0, y0, x1, y1] px, end exclusive, or None where the object is not shown). ``text_frames``: the
    first and last source frame showing ``text`` (in ``text_bbox``). ``sampled``: the source frames
    Video-LLaVA reads; ``answer_frames``: positions among them (0 .. 7) whose frames hold the answer,
    ``answer_patches[i]`` the 14-px grid patches (raster order) of the answer's objects (and word) on
    frame ``answer_frames[i]``.
    """

    question_id: str
    split: str
    index: int
    frames: list[Image.Image] = field(repr=False)
    question: str
    answer: str
    question_type: str
    objects: list[dict]
    text: str | None
    text_bbox: list[int] | None
    text_frames: list[int] | None
    targets: list[int]
    sampled: list[int]
    answer_frames: list[int]
    answer_patches: list[list[int]]
    look: str = LOOK

    @property
    def prompt(self) -> str:
        """The question as the evaluation sends it: with the short-answer instruction."""
        return f"{self.question}\n{SHORT_ANSWER_PROMPT}"

    @property
    def rgb_frames(self) -> list[Image.Image]:
        return [frame.convert("RGB") for frame in self.frames]

    @property
    def video_frames(self) -> list[Image.Image]:
        """The 8 frames Video-LLaVA samples (``sampled``), RGB: what to train on without a GIF."""
        return [self.frames[f].convert("RGB") for f in self.sampled]


# ----------------------------------------------------------------------------
# Clips


def clip_rng(split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([SEED_STREAM, sample_seed(split, index)])


def generate_clips(split: str, n: int, start: int = 0) -> Iterator[Clip]:
    for index in range(start, start + n):
        yield make_clip(split, index)


def make_clip(split: str, index: int) -> Clip:
    """Clip ``index`` of ``split``, drawn from its own seed alone."""
    rng = clip_rng(split, index)
    plan = video_plan(index)
    n = int(rng.choice(FRAME_COUNTS))
    sampled = sampled_frames(n)
    if plan.question_type in TEMPORAL_TYPES:
        story = _STORIES[plan.question_type](rng, plan)
        objects, text, text_bbox, text_frames = _lay_out(rng, story, n, sampled)
        question, answer, targets = story.question, story.answer, story.targets
        # the boxes as drawn answer the question again: a mismatch is a bug, never a redraw
        if answer != answer_from_boxes(plan.question_type, question, objects, text_frames, sampled):
            raise AssertionError(f"clip {split} {index}: its boxes do not answer {question!r} with {answer!r}")
    else:  # the shapes task, answered by scenes.ask from boxes that stand still on every frame
        objects, text, text_bbox, text_frames, question, answer, targets = _still(rng, plan, n)
    frames, labels = _render(rng, objects, text, text_bbox, text_frames, sampled)
    answer_frames = _answer_frames(plan, objects, targets, sampled)
    answer_patches = []
    for k in answer_frames:
        f = sampled[k]
        shown = [t for t in targets if objects[t]["boxes"][f] is not None]
        patches = {p for t in shown for p in patches_of(labels[k], t + 1, objects[t]["boxes"][f])}
        if plan.question_type in ("ocr", "during_word"):
            patches |= set(patches_of(labels[k], TEXT_BOX_ID, text_bbox))
        answer_patches.append(sorted(patches))
    return Clip(question_id(split, index), split, index, frames, question, answer, plan.question_type, objects,
                text, text_bbox, text_frames, targets, sampled, answer_frames, answer_patches)


def _answer_frames(plan: VideoPlan, objects: list[dict], targets: list[int], sampled: list[int]) -> list[int]:
    """Sampled positions whose frames hold the answer: all 8 for the still types; for the temporal
    ones those showing a target object (for during_word the target is shown exactly while the word is)."""
    if plan.question_type in QUESTION_TYPES:
        return list(range(SAMPLED_FRAMES))
    return [k for k, f in enumerate(sampled) if any(objects[t]["boxes"][f] for t in targets)]


def _still(rng, plan: VideoPlan, n: int):
    """A still scene of the ``shapes`` task, shown on every frame, and its ``shapes`` question."""
    image_plan = Plan(plan.question_type, want_yes=plan.variant, count_all=plan.variant)
    while True:
        scene = sample_scene(rng, image_plan, TEXT_PROBABILITY, "lattice")
        question = ask(rng, image_plan, scene.objects, scene.text)
        if question is not None:
            break
    objects = [{"shape": o["shape"], "color": o["color"], "size": o["size"], "boxes": [o["bbox"]] * n}
               for o in scene.objects]
    text_frames = [0, n - 1] if scene.text is not None else None
    return objects, scene.text, scene.text_bbox, text_frames, question.text, question.answer, question.targets


# ----------------------------------------------------------------------------
# Stories: what happens in a clip, on the 8 sampled frames


@dataclass
class _Thing:
    """An object (``shape`` set) or the word, the sampled frames a .. b it is shown on, and (movers)
    the signed cells it travels along the clip's axis from sampled frame a to sampled frame b."""

    window: tuple[int, int]
    shape: str | None = None
    color: str | None = None
    size: str = "small"
    travel: int = 0


@dataclass
class _Story:
    things: list[_Thing]  # objects first, then the word if any
    axis: str  # "x": movers move sideways, lanes are bands of rows; "y": up or down, lanes are columns
    question: str
    answer: str
    targets: list[int]
    text: str | None = None
    word_asked: bool = False  # during_word: the word is part of the question (clutter otherwise)


def _random_size(rng) -> str:
    return str(rng.choice(list(SIZES)))


def _random_pairs(rng, count: int, avoid=()) -> list[tuple[str, str]]:
    """``count`` (colour, shape) pairs, none in ``avoid``."""
    pairs = []
    while len(pairs) < count:
        pair = (str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)))
        if pair not in avoid:
            pairs.append(pair)
    return pairs


def _short_window(rng, length_range: tuple[int, int], first: int = 0, last: int = SAMPLED_FRAMES - 1):
    length = int(rng.integers(length_range[0], length_range[1] + 1))
    a = int(rng.integers(first, last - length + 2))
    return (a, a + length - 1)


def _travel(rng, size: str) -> int:
    """Signed cells a mover of ``size`` travels: at least ``MIN_TRAVEL``, at most across the frame."""
    extent = 1 if size == "small" else 2
    return int(rng.choice((-1, 1))) * int(rng.integers(MIN_TRAVEL, CELLS - extent + 1))


def _maybe_word(rng, story: _Story) -> _Story:
    """A word shown on a random window with ``TEXT_PROBABILITY``: clutter the question never asks about."""
    if rng.random() < TEXT_PROBABILITY:
        story.text = sample_text(rng)
        story.things.append(_Thing(_short_window(rng, (1, SAMPLED_FRAMES))))
    return story


def _motion_story(rng, plan: VideoPlan) -> _Story:
    axis = str(rng.choice(("x", "y")))
    window = _short_window(rng, (2, 2)) if plan.brief else (0, SAMPLED_FRAMES - 1)
    size = _random_size(rng)
    color, shape = _random_pairs(rng, 1)[0]
    target = _Thing(window, shape, color, size, _travel(rng, size))
    others = []
    for color, shape in _random_pairs(rng, int(rng.integers(0, 4)), avoid=[(target.color, target.shape)]):
        other_size = _random_size(rng)
        moves = rng.random() < 0.5
        others.append(_Thing(_short_window(rng, (2, SAMPLED_FRAMES)), shape, color, other_size,
                             _travel(rng, other_size) if moves else 0))
    question = TEMPLATES["motion"].format(color=target.color, shape=target.shape)
    answer = SIDES[(axis, int(np.sign(target.travel)))]
    return _maybe_word(rng, _Story([target] + others, axis, question, answer, [0]))


def _appear_story(rng, plan: VideoPlan, disappear: bool = False) -> _Story:
    length = int(rng.integers(1, BRIEF_FRAMES + 1)) if plan.brief else int(rng.integers(SPREAD_FRAMES, SAMPLED_FRAMES))
    window = (0, length - 1) if disappear else (SAMPLED_FRAMES - length, SAMPLED_FRAMES - 1)
    pairs = _random_pairs(rng, int(rng.integers(2, 5)))
    things = [_Thing(window, shape, color, _random_size(rng)) for color, shape in pairs[:1]]
    things += [_Thing((0, SAMPLED_FRAMES - 1), shape, color, _random_size(rng)) for color, shape in pairs[1:]]
    kind = "disappear" if disappear else "appear"
    asked = "shape" if plan.variant else "color"
    answer = things[0].shape if plan.variant else things[0].color
    return _maybe_word(rng, _Story(things, str(rng.choice(("x", "y"))), TEMPLATES[f"{kind}_{asked}"], answer, [0]))


def _disappear_story(rng, plan: VideoPlan) -> _Story:
    return _appear_story(rng, plan, disappear=True)


def _order_story(rng, plan: VideoPlan) -> _Story:
    """2 to 4 objects of different shapes one after another, the asked one (first or last) shown on
    one or two sampled frames (brief) or on four or more."""
    brief, spread = (1, BRIEF_FRAMES + 1), (SPREAD_FRAMES, SAMPLED_FRAMES)
    asked_length = int(rng.integers(*(brief if plan.brief else spread)))
    rest = SAMPLED_FRAMES - asked_length
    count = int(rng.integers(1, min(3, rest) + 1))  # objects besides the asked one
    cuts = sorted(int(c) for c in rng.choice(np.arange(1, rest), count - 1, replace=False)) if count > 1 else []
    bounds = [0] + cuts + [rest]
    lengths = [bounds[i + 1] - bounds[i] for i in range(count)]
    lengths = [asked_length] + lengths if plan.variant else lengths + [asked_length]
    shapes = [str(s) for s in rng.choice(SHAPES, len(lengths), replace=False)]
    things, start = [], 0
    for shape, length in zip(shapes, lengths):
        things.append(_Thing((start, start + length - 1), shape, str(rng.choice(list(COLORS))), _random_size(rng)))
        start += length
    asked = 0 if plan.variant else len(things) - 1
    things[0], things[asked] = things[asked], things[0]  # the asked object first: targets == [0]
    question = TEMPLATES["order_first" if plan.variant else "order_last"]
    return _maybe_word(rng, _Story(things, str(rng.choice(("x", "y"))), question, things[0].shape, [0]))


def _during_word_story(rng, plan: VideoPlan) -> _Story:
    window = _short_window(rng, (1, BRIEF_FRAMES) if plan.brief else (SPREAD_FRAMES, SAMPLED_FRAMES - 2))
    before, after = (0, window[0] - 1), (window[1] + 1, SAMPLED_FRAMES - 1)
    free = [part for part in (before, after) if part[0] <= part[1]]
    shapes = [str(s) for s in rng.choice(SHAPES, 1 + int(rng.integers(1, 4)), replace=False)]
    things = [_Thing(window, shapes[0], str(rng.choice(list(COLORS))), _random_size(rng))]
    for shape in shapes[1:]:
        part = free[int(rng.integers(len(free)))]
        things.append(_Thing(_short_window(rng, (1, part[1] - part[0] + 1), *part), shape,
                             str(rng.choice(list(COLORS))), _random_size(rng)))
    text = sample_text(rng)
    things.append(_Thing(window))
    question = TEMPLATES["during_number" if text.isdigit() else "during_word"]
    return _Story(things, "x", question, shapes[0], [0], text, word_asked=True)


def _pass_story(rng, plan: VideoPlan) -> _Story:
    movers = int(rng.integers(1, 5))
    still = int(rng.integers(0, MAX_OBJECTS - movers + 1))
    things = []
    for color, shape in _random_pairs(rng, movers + still):
        size = _random_size(rng)
        if len(things) < movers:
            window = _short_window(rng, (2, 2)) if plan.brief else (0, SAMPLED_FRAMES - 1)
            things.append(_Thing(window, shape, color, size, _travel(rng, size)))
        else:
            things.append(_Thing((0, SAMPLED_FRAMES - 1), shape, color, size))
    story = _Story(things, str(rng.choice(("x", "y"))), TEMPLATES["pass"], str(movers), list(range(movers)))
    return _maybe_word(rng, story)


_STORIES = {"motion": _motion_story, "appear": _appear_story, "disappear": _disappear_story,
            "order": _order_story, "during_word": _during_word_story, "pass": _pass_story}


# ----------------------------------------------------------------------------
# Layout: lanes, then a box per source frame


def _lay_out(rng, story: _Story, n: int, sampled: list[int]):
    """Boxes of every object on every source frame, and the word's box and frames.

    Each thing gets its own lane across the clip's axis (a band of whole lattice cells, one empty cell
    between lanes) and a start cell along it; a mover goes from its start cell on its first sampled
    frame to start + travel on its last, in whole cells. Sizes the lanes cannot hold are drawn again.
    """
    while True:
        things = story.things
        extents = [_cells(story, thing) for thing in things]  # (across, along) cells
        free = CELLS - sum(across for across, _ in extents) - (len(things) - 1)
        if free >= 0:
            break
        large = [thing for thing in things if thing.shape is not None and thing.size == "large"]
        if large:  # too many large objects for the lanes: one of them small
            large[int(rng.integers(len(large)))].size = "small"
        elif not any(thing.travel for thing in things):  # nothing moves: the axis only sets the lanes
            story.axis = "x"  # a word's lane is two cells high, four or five wide
        elif story.text is not None and not story.word_asked:
            story.things, story.text = things[:-1], None  # the clutter word does not fit beside the movers
        else:
            raise AssertionError(f"no lanes for {things}")
    gaps = rng.multinomial(free, [1 / (len(things) + 1)] * (len(things) + 1))
    order = rng.permutation(len(things))
    lane_of, position = {}, int(gaps[0])
    for slot, k in enumerate(order):
        lane_of[int(k)] = position
        position += extents[k][0] + 1 + int(gaps[slot + 1])
    objects, text_bbox, text_frames = [], None, None
    for k, thing in enumerate(things):
        across, along = extents[k]
        low, high = max(0, -thing.travel), CELLS - along - max(0, thing.travel)
        start = int(rng.integers(low, high + 1))
        first, last = _shown(thing.window, n, sampled)
        a, b = sampled[thing.window[0]], sampled[thing.window[1]]
        boxes = []
        for f in range(n):
            if not first <= f <= last:
                boxes.append(None)
                continue
            progress = min(1.0, max(0.0, (f - a) / (b - a))) if b > a else 0.0
            cell = start + int(np.floor(thing.travel * progress + 0.5))
            boxes.append(_box(story, thing, lane_of[k], cell))
        if thing.shape is None:
            text_bbox, text_frames = boxes[first], [first, last]
        else:
            objects.append({"shape": thing.shape, "color": thing.color, "size": thing.size, "boxes": boxes})
    return objects, story.text, text_bbox, text_frames


def _shown(window: tuple[int, int], n: int, sampled: list[int]) -> tuple[int, int]:
    """First and last source frame of a thing shown on sampled frames ``window``: from the frame after
    the midpoint with the sampled frame before to the midpoint with the sampled frame after."""
    a, b = window
    first = (sampled[a - 1] + sampled[a]) // 2 + 1 if a > 0 else 0
    last = (sampled[b] + sampled[b + 1]) // 2 if b < SAMPLED_FRAMES - 1 else n - 1
    return first, last


def _cells(story: _Story, thing: _Thing) -> tuple[int, int]:
    """(across the axis, along it) lattice cells of a thing's block."""
    width, height = _box_size(story, thing)
    cells_x, cells_y = -(-width // LATTICE), -(-height // LATTICE)
    return (cells_y, cells_x) if story.axis == "x" else (cells_x, cells_y)


def _box_size(story: _Story, thing: _Thing) -> tuple[int, int]:
    if thing.shape is None:
        return drawing.text_box_size(story.text)
    side = 2 * SIZES[thing.size] + 1
    return side, side


def _box(story: _Story, thing: _Thing, lane: int, cell: int) -> list[int]:
    """The box of a thing in block (lane, cell), centred in its whole cells as ``scenes._place`` centres it."""
    width, height = _box_size(story, thing)
    col, row = (cell, lane) if story.axis == "x" else (lane, cell)
    inset_x, inset_y = (-(-width // LATTICE) * LATTICE - width) // 2, (-(-height // LATTICE) * LATTICE - height) // 2
    x0, y0 = col * LATTICE + inset_x, row * LATTICE + inset_y
    return [x0, y0, x0 + width, y0 + height]


# ----------------------------------------------------------------------------
# The answer again, from the boxes on the sampled frames


def answer_from_boxes(kind: str, question: str, objects: list[dict], text_frames, sampled: list[int]) -> str | None:
    """The answer to ``question`` of temporal type ``kind`` that a reader of the 8 sampled frames gives,
    from the objects' boxes on them (None when the frames give no single answer): the generator's own
    check of every temporal clip."""
    shown = [[o["boxes"][f] is not None for f in sampled] for o in objects]  # (objects, 8)
    if kind == "motion":
        color, shape = question.split("does the ")[1].removesuffix(" move?").split(" ")
        named = [k for k, o in enumerate(objects) if (o["color"], o["shape"]) == (color, shape)]
        if len(named) != 1:
            return None
        boxes = [objects[named[0]]["boxes"][f] for f in sampled if objects[named[0]]["boxes"][f]]
        dx, dy = boxes[-1][0] - boxes[0][0], boxes[-1][1] - boxes[0][1]
        if (dx != 0) == (dy != 0) or max(abs(dx), abs(dy)) < MIN_TRAVEL * LATTICE:
            return None
        return SIDES[("x", int(np.sign(dx)))] if dx else SIDES[("y", int(np.sign(dy)))]
    if kind in ("appear", "disappear"):
        if kind == "appear":
            changed = [k for k, s in enumerate(shown) if not s[0] and any(s)]
        else:
            changed = [k for k, s in enumerate(shown) if s[0] and not s[-1]]
        if len(changed) != 1:
            return None
        return objects[changed[0]]["shape" if "What shape" in question else "color"]
    if kind == "order":
        times = [(k, [i for i, v in enumerate(s) if v]) for k, s in enumerate(shown)]
        if any(len(a) and len(b) and set(a) & set(b) for (_, a), (_, b) in _pairs(times)):
            return None  # two objects at once: no order
        edge = min if "first" in question else max
        when = edge(i for _, frames in times for i in frames)
        return next(objects[k]["shape"] for k, frames in times if when in frames)
    if kind == "during_word":
        word = [text_frames[0] <= f <= text_frames[1] for f in sampled]
        during = [k for k, s in enumerate(shown) if any(v and w for v, w in zip(s, word))]
        if len(during) != 1:
            return None
        return objects[during[0]]["shape"]
    if kind == "pass":
        movers = 0
        for o in objects:
            boxes = [o["boxes"][f] for f in sampled if o["boxes"][f]]
            movers += any(box != boxes[0] for box in boxes)
        return str(movers)
    raise ValueError(f"unknown question type {kind!r}")


def _pairs(items: list) -> Iterator[tuple]:
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            yield items[i], items[j]




# ----------------------------------------------------------------------------
# Rendering and writing


def _render(rng, objects: list[dict], text, text_bbox, text_frames, sampled: list[int]):
    """The clip's frames (palette images, one palette for the clip: what its GIF holds) and the label maps
    of the sampled frames (object k as k + 1, the word as ``TEXT_BOX_ID``)."""
    n = len(objects[0]["boxes"])
    backgrounds = drawing.video_backgrounds(rng, IMAGE_SIZE, IMAGE_SIZE, n)
    fills = []
    for o in objects:
        jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3).tolist()
        fills.append(tuple(min(255, max(0, c + j)) for c, j in zip(COLORS[o["color"]], jitter)))
    rgb = []
    for f in range(n):
        image = Image.fromarray(backgrounds[f])
        draw = ImageDraw.Draw(image)
        if text is not None and text_frames[0] <= f <= text_frames[1]:
            drawing.draw_text(draw, text, text_bbox)
        for o, fill in zip(objects, fills):
            if o["boxes"][f] is not None:
                drawing.draw_shape(draw, o["shape"], *_center(o["boxes"][f]), _half(o["boxes"][f]), fill)
        rgb.append(image)
    palette = _palette(rgb[0], fills)
    frames = [image.quantize(palette=palette, dither=Image.Dither.NONE) for image in rgb]
    labels = []
    for f in sampled:
        label = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
        draw = ImageDraw.Draw(label)
        if text is not None and text_frames[0] <= f <= text_frames[1]:
            draw.rectangle(drawing.inclusive(text_bbox), fill=TEXT_BOX_ID)
        for k, o in enumerate(objects):
            if o["boxes"][f] is not None:
                drawing.draw_shape(draw, o["shape"], *_center(o["boxes"][f]), _half(o["boxes"][f]), k + 1)
        labels.append(np.asarray(label))
    return frames, labels


def _palette(first: Image.Image, fills: list[tuple]) -> Image.Image:
    """One palette for the clip: the objects' exact colours, the word's ramp from its box to its ink,
    and ``BACKGROUND_COLOURS`` of the first frame (median cut) for the background; at most 255
    colours, so that the GIF writer has an index left to mark a frame's unchanged pixels with."""
    ramp = [tuple(round(b + (i / 15) * (t - b)) for b, t in zip(drawing.TEXT_BOX_FILL, drawing.TEXT_FILL))
            for i in range(16)]
    background = first.quantize(BACKGROUND_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    entries = background.getpalette()[:3 * BACKGROUND_COLOURS]
    colours = list(fills) + ramp + [tuple(entries[i:i + 3]) for i in range(0, len(entries), 3)]
    palette = Image.new("P", (1, 1))
    palette.putpalette([c for colour in colours for c in colour])
    return palette


def _center(box: list[int]) -> tuple[int, int]:
    return (box[0] + box[2] - 1) // 2, (box[1] + box[3] - 1) // 2


def _half(box: list[int]) -> int:
    return (box[2] - box[0] - 1) // 2


def save_gif(frames: list[Image.Image], path: str | Path) -> None:
    """Write a clip's palette frames as an animated GIF (``FRAME_MS`` a frame, looping).

    Pillow merges a frame equal to the one before into it (one frame fewer): refused here, never
    written short (the background noise makes it practically impossible)."""
    for f in range(1, len(frames)):
        if frames[f].tobytes() == frames[f - 1].tobytes():
            raise RuntimeError(f"frames {f - 1} and {f} of {path} are equal: the GIF would lose one")
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=FRAME_MS, loop=0)


def write_split(split: str, n: int, out_dir: str | Path, start: int = 0, progress: bool = False) -> Path:
    """Write clips ``start .. start + n - 1`` of ``split`` under ``out_dir``; return it.

    - ``videos/<question_id>.gif``;
    - ``questions.jsonl``: ``question_id``, ``video`` (file name under ``videos/``), ``text`` (question +
      newline + ``SHORT_ANSWER_PROMPT``), ``category`` (the question type), ``answer_frames``;
    - ``annotations.json``: ``question_id``, ``answer``, ``question_type``, ``frames`` (source frames),
      ``sampled``, ``answer_frames``, ``answer_patches``, ``objects`` (with their boxes per frame),
      ``text``, ``text_bbox``, ``text_frames``;
    - ``<split>.json``: Video-LLaVA's training conversations (``"video"`` and ``<video>\\n`` before the
      question);
    - ``meta.json``: generator, version, look ``video``, split, start, n, image size, patch size,
      sampled frames.
    """
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    questions, annotations, conversations = [], [], []
    for done, clip in enumerate(generate_clips(split, n, start), 1):
        name = f"{clip.question_id}.gif"
        save_gif(clip.frames, out_dir / "videos" / name)
        questions.append({"question_id": clip.question_id, "video": name, "text": clip.prompt,
                          "category": clip.question_type, "answer_frames": clip.answer_frames})
        annotations.append({
            "question_id": clip.question_id, "answer": clip.answer, "question_type": clip.question_type,
            "frames": len(clip.frames), "sampled": clip.sampled, "answer_frames": clip.answer_frames,
            "answer_patches": clip.answer_patches, "objects": clip.objects, "text": clip.text,
            "text_bbox": clip.text_bbox, "text_frames": clip.text_frames,
        })
        conversations.append({"id": clip.question_id, "video": name, "conversations": [
            {"from": "human", "value": f"<video>\n{clip.prompt}"}, {"from": "gpt", "value": clip.answer}]})
        if progress and (done % 50 == 0 or done == n):
            print(f"\r{split}: {done}/{n} clips", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    with open(out_dir / "questions.jsonl", "w") as f:
        f.writelines(json.dumps(q) + "\n" for q in questions)
    for name, obj in ((ANNOTATIONS, annotations), (f"{split}.json", conversations), ("meta.json", {
        "generator": "llava.data.synthetic", "version": VIDEO_GENERATOR_VERSION, "look": LOOK, "split": split,
        "start": start, "n": n, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE,
        "sampled_frames": SAMPLED_FRAMES, "frame_counts": list(FRAME_COUNTS),
    })):
        with open(out_dir / name, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
    return out_dir
