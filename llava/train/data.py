"""Training data: a synthetic sample -> token ids, pixels and the auxiliary heads' labels.

Sample `i` of a run is `make_sample("train", i, look=...)`, its look drawn from
the run's mix (`look_of`), so every step sees new images and a resumed run
continues exactly where it stopped. Each image becomes what the model's vision
tower sees: one 336-px view for LLaVA-1.5, the base view and the crops for
LLaVA-NeXT (`ImageProcessor.anyres`). The auxiliary labels are made per view and
per patch of the model's grid from the sample's label map, by mapping each view
pixel back to the image pixel it shows (`view_label_map`), so the same code labels
a 1.5 image, a NeXT crop and the squashed NeXT base view.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
import torch

from llava.conversation import build_prompt
from llava.data import synthetic
from llava.data.tokenizer import build_tokenizer
from llava.mm_utils import AnyresImage, ImageProcessor, tokenizer_image_token

NUM_COLORS, NUM_SHAPES = len(synthetic.COLORS), len(synthetic.SHAPES)
COLOR_ID = {c: i for i, c in enumerate(synthetic.COLORS)}
SHAPE_ID = {s: i for i, s in enumerate(synthetic.SHAPES)}
CLS_LABELS = NUM_COLORS * NUM_SHAPES + NUM_COLORS + NUM_SHAPES + 1  # pairs, colours, shapes, text
NO_COLOR = NUM_COLORS  # the patch head's "no object here" colour class
OCR_CHARS = string.ascii_uppercase + string.digits  # printed text is upper case; class len(OCR_CHARS) = no glyph
OCR_COLUMNS = 2  # character columns read per patch
NUMBER_CLASS = len(synthetic.OCR_WORDS)  # the text head's word class for a printed number
DIGIT_SLOTS = 3  # printed numbers have 2 or 3 digits; a slot past the last digit is class 10 ("none")
READABLE_SCALE = 0.75  # view px per image px below which a view's text labels are left out (-1): too small to read


# ---- the run's data ------------------------------------------------------------------------------


def parse_weights(text: str, known: tuple[str, ...], what: str) -> dict[str, float]:
    """"ocr=3,position=2" -> {"ocr": 3.0, "position": 2.0}; ValueError naming an unknown key or a bad weight."""
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected NAME=WEIGHT, got {item!r}")
        out[key.strip()] = float(value)
    weights_vector(out, known, what)
    return out


def weights_vector(weights: dict[str, float] | None, known: tuple[str, ...], what: str) -> np.ndarray | None:
    """Probabilities over `known` (names not given weigh 1), or None for uniform."""
    if not weights:
        return None
    unknown = set(weights) - set(known)
    if unknown:
        raise ValueError(f"unknown {what}: {sorted(unknown)}; known: {', '.join(known)}")
    w = np.array([float(weights.get(name, 1.0)) for name in known])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"{what} weights must be >= 0 and not all 0, got {weights}")
    return w / w.sum()


def look_of(index: int, looks: dict[str, float]) -> str:
    """The look of train sample `index` in a run mixing `looks` ({look: weight}), fixed by the index."""
    names = tuple(looks)
    if len(names) == 1:
        return names[0]
    p = np.array([looks[n] for n in names], dtype=float)
    return names[int(np.random.default_rng([13, index]).choice(len(names), p=p / p.sum()))]


def training_conv_mode(sample) -> str:
    """vicuna_v1 ("curious user") and llava_v1 ("curious human") on alternate blocks of 12 samples.

    The two differ only in the system prompt's wording; training on both keeps
    the model indifferent to which one a caller uses. Blocks of 12 keep the
    choice independent of the question type and the exist/count variants.
    """
    return ("vicuna_v1", "llava_v1")[(sample.index // 12) % 2]


def sample_prompt(sample, conv_mode: str = "vicuna_v1", instruction: bool = True) -> str:
    question = sample.question + ("\n" + synthetic.SHORT_ANSWER_PROMPT if instruction else "")
    return build_prompt(question, conv_mode)


def conversation_ids(tokenizer, prompt: str, answer: str, extra: list[tuple[str, str]], bare, name: str):
    """A training conversation -> (ids, label_index, prompt ids, first target ids).

    `prompt` (its first user turn, ready for the assistant) is answered by
    `answer`; each (question, answer) of `extra` is one more vicuna_v1 turn,
    asked without the short-answer instruction where `bare[k]`. The loss is on
    every answer and its `</s>` (`label_index`: their positions in `ids`).
    """
    prompt_ids = tokenizer_image_token(prompt, tokenizer)
    full = tokenizer_image_token(prompt + " " + answer, tokenizer)
    if full[: len(prompt_ids)] != prompt_ids:
        raise RuntimeError(f"{name}: the answer's tokens change the prompt's tokenization")
    target = full[len(prompt_ids):] + [tokenizer.eos_token_id]
    ids, label_index = prompt_ids + target, list(range(len(prompt_ids), len(prompt_ids) + len(target)))
    for k, (question, answer) in enumerate(extra):
        user = question if bare[k] else f"{question}\n{synthetic.SHORT_ANSWER_PROMPT}"
        turn = tokenizer_image_token(f"USER: {user} ASSISTANT:", tokenizer)
        turn_full = tokenizer_image_token(f"USER: {user} ASSISTANT: {answer}", tokenizer)
        turn, answer_ids = turn[1:], turn_full[len(turn):] + [tokenizer.eos_token_id]  # no BOS mid-text
        ids += turn
        label_index += range(len(ids), len(ids) + len(answer_ids))
        ids += answer_ids
    return ids, label_index, prompt_ids, target


# ---- views and their labels ----------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """What one view of the vision tower shows: the image region [x0, y0, x1, y1] (image px, may
    reach past the image where the view is padding) stretched onto `size` x `size` pixels."""

    region: tuple[float, float, float, float]
    size: int

    @property
    def scale(self) -> float:
        """View px per image px (the smaller of the two axes)."""
        x0, y0, x1, y1 = self.region
        return self.size / max(x1 - x0, y1 - y0)


def views_of(image_size: tuple[int, int], processor: ImageProcessor) -> list[View]:
    """The views the processor makes of an image of (width, height): one for LLaVA-1.5 (padded to a
    square), base then crops in row-major order for LLaVA-NeXT (as `ImageProcessor.anyres`)."""
    from llava.mm_utils import select_best_resolution

    width, height = image_size
    S = processor.image_size
    if processor.image_grid_pinpoints is None:
        side = max(width, height)
        x0, y0 = -((side - width) // 2), -((side - height) // 2)
        return [View((x0, y0, x0 + side, y0 + side), S)]
    target_height, target_width = select_best_resolution((height, width), processor.image_grid_pinpoints)
    scale = min(target_width / width, target_height / height)
    # resize_and_pad: the limiting side fills the canvas, the other is rounded up, then centred
    new_w = target_width if target_width / width <= target_height / height else min(int(np.ceil(width * scale)), target_width)
    new_h = target_height if target_width / width > target_height / height else min(int(np.ceil(height * scale)), target_height)
    off_x, off_y = (target_width - new_w) // 2, (target_height - new_h) // 2
    sx, sy = new_w / width, new_h / height  # canvas px per image px
    views = [View((0, 0, width, height), S)]
    for r in range(target_height // S):
        for c in range(target_width // S):
            views.append(View(((c * S - off_x) / sx, (r * S - off_y) / sy, ((c + 1) * S - off_x) / sx,
                               ((r + 1) * S - off_y) / sy), S))
    return views


def view_label_map(label_map: np.ndarray, view: View) -> np.ndarray:
    """(size, size) uint8: the label of the image pixel under the centre of each view pixel (0 in padding)."""
    height, width = label_map.shape
    x0, y0, x1, y1 = view.region
    centres = (np.arange(view.size) + 0.5) / view.size
    xs = np.floor(x0 + centres * (x1 - x0)).astype(int)
    ys = np.floor(y0 + centres * (y1 - y0)).astype(int)
    inside = (ys[:, None] >= 0) & (ys[:, None] < height) & (xs[None, :] >= 0) & (xs[None, :] < width)
    return np.where(inside, label_map[ys.clip(0, height - 1)][:, xs.clip(0, width - 1)], 0).astype(np.uint8)


class Encoder:
    """Sample -> prompt ids, target ids (answer + </s>), the image as the model takes it and the
    auxiliary labels of each of its views (see `labels`)."""

    def __init__(self, processor: ImageProcessor, patch_size: int, extra_turns: int = 0, bare_rate: float = 0.0,
                 turn_weights: dict[str, float] | None = None):
        self.tokenizer = build_tokenizer()
        self.processor, self.patch_size = processor, patch_size
        self.grid = processor.image_size // patch_size
        self.extra_turns, self.bare_rate = extra_turns, bare_rate
        self.turn_weights = weights_vector(turn_weights, synthetic.QUESTION_TYPES, "question types")

    def image(self, sample) -> torch.Tensor | AnyresImage:
        if self.processor.image_grid_pinpoints is not None:
            return self.processor.anyres(sample.image, self.processor.image_grid_pinpoints)
        return self.processor.preprocess(sample.image)

    def __call__(self, sample) -> dict:
        rng = np.random.default_rng([11, synthetic.sample_seed(sample.split, sample.index)])
        bare = rng.random(1 + self.extra_turns) < self.bare_rate  # turns asked without the instruction
        prompt = sample_prompt(sample, training_conv_mode(sample), instruction=not bare[0])
        ids, label_index, prompt_ids, target = conversation_ids(
            self.tokenizer, prompt, sample.answer, self.extra_questions(sample), bare[1:], sample.question_id)
        return {"prompt": prompt_ids, "target": target, "ids": ids, "label_index": label_index,
                "image": self.image(sample), **self.labels(sample),
                "type": sample.question_type, "answer": sample.answer}

    def extra_questions(self, sample) -> list[tuple[str, str]]:
        """Up to `extra_turns` more questions about the same image (vicuna_v1 multi-turn, as LLaVA trains).

        Drawn with the generator's own question makers (`synthetic.ask`) from
        the sample's scene, on a seed of their own; the sample itself is untouched.
        Question types are drawn uniformly, or by `turn_weights` when given.
        """
        if not self.extra_turns:
            return []
        rng = np.random.default_rng([7, synthetic.sample_seed(sample.split, sample.index)])
        asked, out = {sample.question}, []
        types = synthetic.QUESTION_TYPES
        for _ in range(4 * self.extra_turns):
            if self.turn_weights is None:
                kind = types[int(rng.integers(len(types)))]
            else:
                kind = types[int(rng.choice(len(types), p=self.turn_weights))]
            plan = synthetic.Plan(kind, want_yes=bool(rng.integers(2)), count_all=bool(rng.integers(2)))
            q = synthetic.ask(rng, plan, sample.objects, sample.text, sample.size)
            if q is None or q.text in asked:
                continue
            asked.add(q.text)
            out.append((q.text, q.answer))
            if len(out) == self.extra_turns:
                break
        return out

    # ---- labels, per view and per patch of the model's grid -------------------------------------

    def labels(self, sample) -> dict:
        """The auxiliary labels of every view of the sample's image, stacked over views (V, ...).

        - `cls_labels` (V, CLS_LABELS): the (colour, shape) pairs, colours, shapes present in the
          view, and whether text is; `count` (V,): objects in the view - 1 (-1: none, no loss);
        - `patch_labels` (V, P, 2): colour and shape class of the one object touching each patch
          ((NO_COLOR, -1) on background and text, (-1, -1) where two objects touch it);
        - `ocr_labels` (V, P, OCR_COLUMNS): the glyph under each column centre of the text box's
          patches; `text_labels` (V, P, 1 + DIGIT_SLOTS): the whole text on each text patch;
          `align_labels` (V, P): the vocabulary id each text patch should read as (all -1 in a view
          shrunk below READABLE_SCALE, where the glyphs are a few pixels wide);
        - `side_labels` (V, P, 2): left/right and top/bottom of the object under each patch in the
          whole image (-1 where it straddles the middle, or no single object is there);
        - `foreground` (V, P) bool: patches touching an object or the text;
        - `target_tokens`: (view, patch) of every patch touching what the question is about.
        """
        views = views_of(sample.size, self.processor)
        per_view = [self._view_labels(sample, view) for view in views]
        stacked = {key: torch.stack([torch.as_tensor(v[key]) for v in per_view]) for key in per_view[0] if key != "targets"}
        stacked["target_tokens"] = [(v, p) for v, labels in enumerate(per_view) for p in labels["targets"]]
        return stacked

    def _view_labels(self, sample, view: View) -> dict:
        g, ps = self.grid, self.patch_size
        cells = view_label_map(sample.label_map, view).reshape(g, ps, g, ps).transpose(0, 2, 1, 3).reshape(g * g, -1)
        n_objects = len(sample.objects)
        present = np.stack([(cells == k + 1).any(axis=1) for k in range(n_objects)], axis=1)  # (P, objects)
        text_cells = (cells == synthetic.TEXT_BOX_ID).any(axis=1)  # (P,)
        owners = present.sum(axis=1)
        single = owners == 1
        owner = present.argmax(axis=1)

        cls = np.zeros(CLS_LABELS, dtype=np.float32)
        in_view = present.any(axis=0)
        for k in np.nonzero(in_view)[0]:
            c, s = COLOR_ID[sample.objects[k]["color"]], SHAPE_ID[sample.objects[k]["shape"]]
            cls[[c * NUM_SHAPES + s, NUM_COLORS * NUM_SHAPES + c, NUM_COLORS * NUM_SHAPES + NUM_COLORS + s]] = 1
        cls[-1] = float(text_cells.any())

        patch = np.tile(np.array([NO_COLOR, -1]), (g * g, 1))
        patch[owners > 1] = -1
        colours = np.array([COLOR_ID[o["color"]] for o in sample.objects])
        shapes = np.array([SHAPE_ID[o["shape"]] for o in sample.objects])
        patch[single, 0], patch[single, 1] = colours[owner[single]], shapes[owner[single]]

        sides = np.array([[-1 if side is None else int(side in ("right", "bottom"))
                           for side in (synthetic.side_of(o["bbox"], axis, sample.size) for axis in ("x", "y"))]
                          for o in sample.objects])
        side = np.full((g * g, 2), -1)
        side[single] = sides[owner[single]]

        readable = sample.text is not None and view.scale >= READABLE_SCALE
        ocr, text, align = self._text_labels(sample, view, text_cells if readable else np.zeros_like(text_cells))
        if sample.question_type == "ocr":
            targets = np.nonzero(text_cells)[0]
        else:
            targets = np.nonzero(present[:, sample.targets].any(axis=1))[0] if sample.targets else np.array([], int)
        return {"cls_labels": cls, "count": int(in_view.sum()) - 1 if in_view.any() else -1,
                "patch_labels": patch, "ocr_labels": ocr, "text_labels": text, "align_labels": align,
                "side_labels": side, "foreground": present.any(axis=1) | text_cells, "targets": targets.tolist()}

    def _text_labels(self, sample, view: View, text_cells: np.ndarray):
        """OCR, text and alignment labels of the patches in `text_cells` (see `labels`)."""
        g, ps = self.grid, self.patch_size
        ocr = np.full((g * g, OCR_COLUMNS), -1)
        text = np.full((g * g, 1 + DIGIT_SLOTS), -1)
        align = np.full(g * g, -1)
        if not text_cells.any():
            return ocr, text, align
        x0, _, x1, _ = sample.text_bbox
        spans = synthetic.char_spans(sample.text, sample.text_bbox)
        vx0, _, vx1, _ = view.region
        image_px = (vx1 - vx0) / view.size  # image px per view px
        word = sample.text.lower()
        digits = [int(d) for d in word] if word.isdigit() else []
        text[text_cells] = [NUMBER_CLASS if digits else synthetic.OCR_WORDS.index(word)] + \
            [digits[k] if k < len(digits) else 10 for k in range(DIGIT_SLOTS)]
        word_id = None if digits else self.tokenizer(" " + word, add_special_tokens=False).input_ids[0]
        for cell in np.nonzero(text_cells)[0]:
            col = cell % g
            for k in range(OCR_COLUMNS):
                centre = vx0 + (col * ps + (k + 0.5) * ps / OCR_COLUMNS) * image_px  # in image px
                if x0 <= centre < x1:
                    glyph = next((ch for ch, a, b in spans if a <= centre < b), None)
                    ocr[cell, k] = len(OCR_CHARS) if glyph is None else OCR_CHARS.index(glyph)
            if word_id is not None:
                align[cell] = word_id
            else:  # a number's patch reads as the digit under its left column, else its right one
                glyphs = [OCR_CHARS[c] for c in ocr[cell] if 0 <= c < len(OCR_CHARS) and OCR_CHARS[c].isdigit()]
                if glyphs:
                    align[cell] = self.tokenizer.convert_tokens_to_ids(glyphs[0])
        return ocr, text, align


# ---- the dataset ---------------------------------------------------------------------------------


class TrainSamples(torch.utils.data.Dataset):
    """Item i = train sample (first + i) in its look (`look_of`), encoded. Generated in the worker that asks for it."""

    def __init__(self, first: int, count: int, make_encoder, looks: dict[str, float],
                 text_rate: float = synthetic.TEXT_PROBABILITY, split: str = "train"):
        self.first, self.count, self.make_encoder = first, count, make_encoder
        self.looks, self.text_rate, self.split = looks, text_rate, split
        self.encoder = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict:
        if self.encoder is None:
            self.encoder = self.make_encoder()
        index = self.first + i
        return self.encoder(synthetic.make_sample(self.split, index, self.text_rate, look_of(index, self.looks)))


def collate(items: list[dict]) -> dict:
    """Stack a batch; per-view labels are concatenated over the batch's views in order, and
    `views` says which rows are whose ([first, last) per sample)."""
    images = [it["image"] for it in items]
    counts = [len(it["count"]) for it in items]
    starts = np.cumsum([0] + counts).tolist()
    per_view = ("cls_labels", "count", "patch_labels", "ocr_labels", "text_labels", "align_labels", "side_labels",
                "foreground")
    batch = {key: torch.cat([it[key] for it in items]) for key in per_view}
    batch.update({
        "images": torch.stack(images) if isinstance(images[0], torch.Tensor) else images,
        "views": [(starts[b], starts[b + 1]) for b in range(len(items))],
        "target_tokens": [[(starts[b] + v, p) for v, p in it["target_tokens"]] for b, it in enumerate(items)],
    })
    for key in ("prompt", "target", "ids", "label_index", "type", "answer"):
        batch[key] = [it[key] for it in items]
    return batch
