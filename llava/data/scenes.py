"""The still scene of the synthetic shapes task and the questions asked of it.

One job: what is in a scene and where (objects on the 28-px lattice, an optional printed word or
number, the hr look's canvases and distractors), and the one-word question a scene is asked. No
pixels are drawn here (`llava.data.drawing`), and no file is written: `llava.data.synthetic` renders
a scene into an image of one of its looks and writes the image splits, `llava.data.video_clips`
moves the same objects through the frames of a clip. Both import this module; it imports neither.

A scene holds 1 to 5 flat-coloured shapes (6 shapes x 6 colours x 2 sizes) and, sometimes, a short
upper-case word or a number printed in a light box (an OCR-like case). Boxes sit on a 28-px lattice
(``LATTICE``): a small shape fills one cell, a large one 2x2 cells, and no cell holds two things, so
each visual token of the shipped 144-token model sees one whole object or one quarter of one (see
``_place`` for why).

The question is one of six types (``QUESTION_TYPES``), each answerable from the scene alone:

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

Unambiguity rules (`ask`): an object named by shape alone ("the star") or by colour alone ("the red
object") is the only one of that shape or colour; an object named by both ("the red circle") is the
only such pair; a position is only asked when the object's whole box lies in one half, at least
``POSITION_MARGIN`` px from the middle line; "shapes" counts the shapes, never the text box; an
exist question answered "no" names a colour-shape pair that is absent while its colour or its shape
is present (a hard negative).

Seeds: sample ``index`` of ``split`` has the seed `sample_seed` (disjoint ranges per split); every
function here draws from the numpy generator it is given, in a fixed order, so a scene is
reproducible from its seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llava.data import drawing

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


@dataclass(frozen=True)
class Plan:
    """What the question of one sample will be, fixed before its scene is drawn."""

    question_type: str
    want_yes: bool  # exist questions: the answer
    count_all: bool  # count questions: "How many shapes" rather than "How many <shape>s"


@dataclass
class Question:
    """A question asked of a scene: its text, its one-word answer and the indices of the objects it is about."""

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


def question_id(split: str, index: int) -> str:
    return f"{split}_{index:07d}"


# ----------------------------------------------------------------------------
# Scenes: what is in the image and where


@dataclass
class Scene:
    """What an image shows and where: the objects (dicts of shape, color, size, bbox, center), the text
    and its box, the canvas size and (hr) the crops' layout and distractor blobs. Not yet drawn."""

    objects: list[dict]  # without patches (added once drawn)
    text: str | None
    text_bbox: list[int] | None
    size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)  # (width, height)
    layout: dict | None = None  # hr: see synthetic.Sample.layout
    distractors: list[dict] = field(default_factory=list)  # hr: {"points", "color"} of each blob


def sample_scene(rng: np.random.Generator, plan: Plan, text_probability: float, look: str) -> Scene:
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
    return Scene([_new_object(rng, shape, box) for shape, box in zip(shapes, boxes)], text, text_bbox)


def _halves(rng: np.random.Generator, count: int, look: str) -> list[int]:
    """Half-sides (px) of ``count`` objects of the look's range of lattice cells, uniform in it (the more
    objects, the fewer cells at most: ``MAX_CELLS``); an object of c cells is a box of c x 28 - 3 px,
    centred in them as the lattice look's small and large ones are."""
    low, high = LOOK_CELLS[look]
    high = max(low, min(high, MAX_CELLS[count]))
    return [(int(rng.integers(low, high + 1)) * LATTICE - 4) // 2 for _ in range(count)]


def _maybe_text(rng: np.random.Generator, plan: Plan, text_probability: float) -> str | None:
    with_text = plan.question_type == "ocr" or rng.random() < text_probability
    return sample_text(rng) if with_text else None


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


def hr_scene(rng: np.random.Generator, plan: Plan, text_probability: float) -> Scene:
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
    return Scene(objects, text, text_bbox, (width, height), layout, distractors)


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


def sample_text(rng: np.random.Generator) -> str:
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
        size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> Question | None:
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


def _ask_color(rng, objects) -> Question | None:
    candidates = _unique(objects, lambda o: o["shape"])
    if not candidates:
        return None
    k = int(rng.choice(candidates))
    return Question(TEMPLATES["color"].format(shape=objects[k]["shape"]), objects[k]["color"], [k])


def _ask_shape(rng, objects) -> Question | None:
    candidates = _unique(objects, lambda o: o["color"])
    if not candidates:
        return None
    k = int(rng.choice(candidates))
    return Question(TEMPLATES["shape"].format(color=objects[k]["color"]), objects[k]["shape"], [k])


def _ask_exist(rng, objects, want_yes: bool) -> Question:
    present = {(o["color"], o["shape"]) for o in objects}
    if want_yes:
        color, shape = sorted(present)[int(rng.integers(len(present)))]
    else:
        color, shape = _absent_pair(rng, objects, present)
    targets = [k for k, o in enumerate(objects) if (o["color"], o["shape"]) == (color, shape)]
    question = TEMPLATES["exist"].format(color=color, shape=shape)
    return Question(question, "yes" if want_yes else "no", targets)


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


def _ask_count(objects, count_all: bool) -> Question:
    if count_all:
        return Question(TEMPLATES["count_all"], str(len(objects)), list(range(len(objects))))
    counted = objects[0]["shape"]  # _scene_shapes puts the counted shape first
    targets = [k for k, o in enumerate(objects) if o["shape"] == counted]
    return Question(TEMPLATES["count_shape"].format(plural=PLURALS[counted]), str(len(targets)), targets)


def _ask_position(rng, objects, size: tuple[int, int]) -> Question | None:
    axis = "x" if rng.random() < 0.5 else "y"
    candidates = [k for k in _unique(objects, lambda o: (o["color"], o["shape"]))
                  if side_of(objects[k]["bbox"], axis, size) is not None]
    if not candidates:
        return None
    k = int(rng.choice(candidates))
    obj = objects[k]
    question = TEMPLATES[f"position_{axis}"].format(color=obj["color"], shape=obj["shape"])
    return Question(question, side_of(obj["bbox"], axis, size), [k])


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


def _ask_ocr(text: str | None) -> Question | None:
    if text is None:
        return None
    template = TEMPLATES["ocr_number"] if text.isdigit() else TEMPLATES["ocr_word"]
    return Question(template, text.lower(), [])


# ----------------------------------------------------------------------------
# The 14-px patch grid the answers are annotated on


def patches_of(labels: np.ndarray, label: int, bbox: list[int]) -> list[int]:
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
