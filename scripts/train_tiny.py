#!/usr/bin/env python
"""Train the project's own small LLaVA from scratch on the synthetic shapes-VQA task.

The model is our `LlavaForCausalLM` (CLIP-style ViT with a CLS token ->
mlp2x_gelu projector -> Llama decoder), trained end to end on
`llava.data.synthetic`'s train split in LLaVA-1.5's vicuna_v1 format:

    prompt = build_prompt(question + "\\nAnswer the question using a single word or phrase.")
    target = answer + "</s>"          (the loss is on the target tokens only)

Training samples are generated on the fly by DataLoader workers: sample `i` of
the run is train sample `i` (`make_sample("train", i)`), so every step sees new
images and a resumed run continues exactly where it stopped.

Auxiliary training signals (training-only heads, never saved in the checkpoint):

- **CLS head** on the final layer's CLS output (after `post_layernorm`, as CLIP
  reads it): multi-label BCE over which (colour, shape) pairs, colours and
  shapes are present and whether text is printed, plus a 5-way count. It gives
  the CLS token a job of its own, so its attention rows (what FasterVLM ranks
  patches by) point at the objects, as CLIP's do.
- **Patch head** (`--patch-aux-weight`, 0 turns it off) on the select layer's
  patch features: per patch, the colour of the object touching it (a softmax
  with a "none" class for background and text) and, on object patches only,
  its shape (patches touching two objects are skipped). A dense signal that
  makes the small ViT learn shapes in minutes on a CPU. (A multi-label BCE over the same labels
  did not: positives are ~1% of its entries, and after 57k images the ViT
  still told shapes apart at chance level.)
- **OCR head** (`--ocr-aux-weight`, 0 turns it off) on the same features: each
  patch of the text box is read as two 14-px columns, and for each the head
  names the printed character under the column's centre (A-Z, 0-9, or none).
  Knowing only *that* a patch holds text does not say *which* word it is; this
  teaches the ViT to encode the glyphs, in reading order, for the LLM to spell.
- **Text head** (`--text-aux-weight`) on the same features: every patch of the
  text box names the whole text (which of `synthetic.OCR_WORDS`, or a number
  and its digits in reading order), so the decoder copies a word as it copies
  a colour instead of learning to spell 70 words from glyphs.
- **Alignment loss** (`--align-aux-weight`, off by default) on the
  projector's output, the image tokens the decoder sees: the LM head (after
  the decoder's final norm) must read each text-box token as the printed
  word's vocabulary token, or a number's patch as the digit under it. A
  decoder head that copies a text-box token into the last position then has
  the answer in the one space the LM head reads, instead of having to learn
  a 70-way map from image features to words from the sparse ocr answers.
- **Grounding loss** (`--ground-aux-weight`, off by default) on one decoder
  head (`--ground-layer`, default the last; `--ground-head`): from the
  position that predicts the first answer, its attention should land on the
  question's target tokens (the named object, the counted ones, the text
  box). Without it no head of the small decoder learned to look at the object
  a question names (scripts/target_attention.py), and ocr stayed at chance
  after ~90k ocr answers. The default layer is one FastV never ranks by (its
  scores come from layer K-1 < the last), so the pruning comparison does not
  get a head trained to its taste.
- **Copy loss** (`--copy-aux-weight`, off by default) on the same head: what
  it adds to the residual stream when it attends to a single text-box token
  (its value and output projections), read by the LM head, must be the
  token's `align_labels` id. Grounding put 99.8% of that head's attention on
  the text box within 1,000 steps, yet the ocr answers stayed at chance: the
  head looked at the word but did not carry it. This trains the carrying on
  every text-box token of every batch. `--object-copy-aux-weight` asks the
  same of object tokens: carried by that head, they must read as their
  colour among the colour words, their shape among the shape words and their
  side between left/right and top/bottom (where the object is clearly in
  one half), the answers a question about that object gets.
- **Position head** (`--where-aux-weight`) on the same features: every patch
  names its own row and column. The ViT's position embedding is added at its
  input only and nothing else asks the select layer to keep it; the first
  shipped model, trained without this head, answered left/right/top/bottom
  at chance level.

Outputs under `--out` (default runs/<name>): `train.log` (loss, lr, samples/s,
per-type validation accuracy by greedy decoding with `llava.generate.generate`),
`last.pt` (model + heads + optimiser + step; written every `--save-every` steps
and at the end; `--resume` continues from it), and with `--export DIR` the
final model in the llava-hf layout (config.json, model.safetensors in fp16,
tokenizer files, preprocessor_config.json) that `load_pretrained_model` and
transformers' `LlavaForConditionalGeneration` both load.

The shipped models/llava-shapes-tiny is one run of 57 minutes from scratch on
the project's 2-core CPU, every loss on from the first step (93.8% on its
test split; MODEL_CARD.md has the log, and how an earlier three-stage model
of 5.2 hours found which losses matter)::

    .venv/bin/python scripts/train_tiny.py --steps 100000 --max-minutes 57 --seed 0 \
        --extra-turns 7 --token-drop 0.5 --turn-weights ocr=3,position=2,exist=2 --text-rate 0.8 \
        --align-aux-weight 0.5 --ground-aux-weight 0.5 --copy-aux-weight 0.5 \
        --object-copy-aux-weight 0.5 --out runs/shapes-1h --export runs/shapes-1h/export

Reproducible from `--seed` (weight init; the data is fixed by the sample
index, so a resumed run sees the same samples) up to the nondeterminism of
multithreaded CPU kernels, for runs bounded by --steps. With --max-minutes the
schedule follows the wall clock, so the step count (logged) depends on the
machine's speed and load.

Speed on the project's 2-core AVX2 CPU: fp32, about 18 samples/s
single-turn, 11-17 samples/s with --extra-turns 3 (the default), 11-13 with 7. bf16
autocast is about 25x slower on a CPU without native bf16, hence fp32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import string
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llava.conversation import build_prompt
from llava.data import synthetic
from llava.data.tokenizer import build_tokenizer
from llava.eval import shapes
from llava.generate import generate
from llava.mm_utils import CLIP_MEAN, CLIP_STD, ImageProcessor, tokenizer_image_token
from llava.model.language_model.llava_llama import LlamaConfig, rotate_half
from llava.model.llava_arch import LlavaConfig, LlavaForCausalLM
from llava.model.multimodal_encoder.clip_encoder import VisionConfig

NUM_COLORS, NUM_SHAPES = len(synthetic.COLORS), len(synthetic.SHAPES)
COLOR_ID = {c: i for i, c in enumerate(synthetic.COLORS)}
SHAPE_ID = {s: i for i, s in enumerate(synthetic.SHAPES)}
CLS_LABELS = NUM_COLORS * NUM_SHAPES + NUM_COLORS + NUM_SHAPES + 1  # pairs, colours, shapes, text
NO_COLOR = NUM_COLORS  # the patch head's "no object here" colour class
OCR_CHARS = string.ascii_uppercase + string.digits  # printed text is upper case; class len(OCR_CHARS) = no glyph
OCR_COLUMNS = 2  # character columns read per patch
NUMBER_CLASS = len(synthetic.OCR_WORDS)  # the text head's word class for a printed number
DIGIT_SLOTS = 3  # printed numbers have 2 or 3 digits; a slot past the last digit is class 10 ("none")


# ---- configuration -------------------------------------------------------------------------------


def model_config(args, vocab_size: int) -> LlavaConfig:
    vision = VisionConfig(
        hidden_size=args.vision_width, intermediate_size=4 * args.vision_width, num_layers=args.vision_layers,
        num_heads=args.vision_heads, image_size=synthetic.IMAGE_SIZE, patch_size=args.patch_size,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=args.text_width, intermediate_size=args.text_intermediate,
        num_layers=args.text_layers, num_heads=args.text_heads, num_kv_heads=args.text_heads,
        head_dim=args.text_width // args.text_heads, rms_norm_eps=1e-5, max_position_embeddings=1024,
    )
    return LlavaConfig(vision=vision, text=text, projector_type="mlp2x_gelu", select_layer=-2)


# ---- data ----------------------------------------------------------------------------------------


def sample_prompt(sample, conv_mode: str = "vicuna_v1", instruction: bool = True) -> str:
    question = sample.question + ("\n" + synthetic.SHORT_ANSWER_PROMPT if instruction else "")
    return build_prompt(question, conv_mode)


def training_conv_mode(sample) -> str:
    """vicuna_v1 ("curious user") and llava_v1 ("curious human") on alternate blocks of 12 samples.

    The two differ only in the system prompt's wording; training on both keeps
    the model indifferent to which one a caller uses. Blocks of 12 keep the
    choice independent of the question type and the exist/count variants.
    """
    return ("vicuna_v1", "llava_v1")[(sample.index // 12) % 2]


def turn_weights_vector(weights: dict[str, float] | None):
    """Probabilities over `synthetic.QUESTION_TYPES` (types not named weigh 1), or None for uniform."""
    if not weights:
        return None
    unknown = set(weights) - set(synthetic.QUESTION_TYPES)
    if unknown:
        raise ValueError(f"unknown question types in turn weights: {sorted(unknown)}; "
                         f"known: {', '.join(synthetic.QUESTION_TYPES)}")
    import numpy as np

    w = np.array([float(weights.get(kind, 1.0)) for kind in synthetic.QUESTION_TYPES])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"turn weights must be >= 0 and not all 0, got {weights}")
    return w / w.sum()


def parse_turn_weights(text: str) -> dict[str, float]:
    """"ocr=3,position=2" -> {"ocr": 3.0, "position": 2.0} (argparse type)."""
    out = {}
    for item in filter(None, text.split(",")):
        kind, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected TYPE=WEIGHT, got {item!r}")
        out[kind.strip()] = float(value)
    turn_weights_vector(out)  # validate now, not in a DataLoader worker
    return out


class Encoder:
    """Sample -> prompt ids, target ids (answer + </s>), pixels and auxiliary labels."""

    def __init__(self, patch_size: int, extra_turns: int = 0, bare_rate: float = 0.0,
                 turn_weights: dict[str, float] | None = None):
        self.tokenizer = build_tokenizer()
        self.extra_turns, self.bare_rate = extra_turns, bare_rate
        self.turn_weights = turn_weights_vector(turn_weights)
        self.processor = ImageProcessor(image_size=synthetic.IMAGE_SIZE)
        self.patch_size = patch_size
        self.grid = synthetic.IMAGE_SIZE // patch_size

    def __call__(self, sample) -> dict:
        import numpy as np

        rng = np.random.default_rng([11, synthetic.sample_seed(sample.split, sample.index)])
        bare = rng.random(1 + self.extra_turns) < self.bare_rate  # turns asked without the instruction
        prompt = sample_prompt(sample, training_conv_mode(sample), instruction=not bare[0])
        prompt_ids = tokenizer_image_token(prompt, self.tokenizer)
        full = tokenizer_image_token(prompt + " " + sample.answer, self.tokenizer)
        if full[: len(prompt_ids)] != prompt_ids:
            raise RuntimeError(f"{sample.question_id}: the answer's tokens change the prompt's tokenization")
        target = full[len(prompt_ids):] + [self.tokenizer.eos_token_id]
        ids, label_index = prompt_ids + target, list(range(len(prompt_ids), len(prompt_ids) + len(target)))
        for k, (question, answer) in enumerate(self.extra_questions(sample)):
            user = question if bare[k + 1] else f"{question}\n{synthetic.SHORT_ANSWER_PROMPT}"
            turn = tokenizer_image_token(f"USER: {user} ASSISTANT:", self.tokenizer)
            turn_full = tokenizer_image_token(f"USER: {user} ASSISTANT: {answer}", self.tokenizer)
            turn, answer_ids = turn[1:], turn_full[len(turn):] + [self.tokenizer.eos_token_id]  # no BOS mid-text
            ids += turn
            label_index += range(len(ids), len(ids) + len(answer_ids))
            ids += answer_ids
        return {
            "prompt": prompt_ids,
            "target": target,
            "ids": ids,
            "label_index": label_index,
            "pixels": self.processor.preprocess(sample.image),
            "cls_labels": self.cls_labels(sample),
            "count": len(sample.objects) - 1,
            "patch_labels": self.patch_labels(sample),
            "ocr_labels": self.ocr_labels(sample),
            "text_labels": self.text_labels(sample),
            "align_labels": self.align_labels(sample),
            "side_labels": self.side_labels(sample),
            "target_tokens": sorted(synthetic.tokens_on_grid(sample.patches, self.patch_size)),
            "type": sample.question_type,
            "answer": sample.answer,
        }

    def extra_questions(self, sample) -> list[tuple[str, str]]:
        """Up to `extra_turns` more questions about the same image (vicuna_v1 multi-turn, as LLaVA trains).

        Drawn with the generator's own question makers (`synthetic._ask`) from
        the sample's scene, on a seed of their own; the sample itself is untouched.
        Question types are drawn uniformly, or by `turn_weights` when given.
        """
        if not self.extra_turns:
            return []
        import numpy as np

        rng = np.random.default_rng([7, synthetic.sample_seed(sample.split, sample.index)])
        asked, out = {sample.question}, []
        for _ in range(4 * self.extra_turns):
            if self.turn_weights is None:
                kind = synthetic.QUESTION_TYPES[int(rng.integers(len(synthetic.QUESTION_TYPES)))]
            else:
                kind = synthetic.QUESTION_TYPES[int(rng.choice(len(synthetic.QUESTION_TYPES), p=self.turn_weights))]
            plan = synthetic._Plan(kind, want_yes=bool(rng.integers(2)), count_all=bool(rng.integers(2)))
            q = synthetic._ask(rng, plan, sample.objects, sample.text)
            if q is None or q.text in asked:
                continue
            asked.add(q.text)
            out.append((q.text, q.answer))
            if len(out) == self.extra_turns:
                break
        return out

    @staticmethod
    def cls_labels(sample) -> torch.Tensor:
        y = torch.zeros(CLS_LABELS)
        for obj in sample.objects:
            c, s = COLOR_ID[obj["color"]], SHAPE_ID[obj["shape"]]
            y[c * NUM_SHAPES + s] = 1
            y[NUM_COLORS * NUM_SHAPES + c] = 1
            y[NUM_COLORS * NUM_SHAPES + NUM_COLORS + s] = 1
        y[-1] = float(sample.text is not None)
        return y

    def patch_labels(self, sample) -> torch.Tensor:
        """(P, 2) colour and shape class of the object touching each patch of the model's grid.

        From the 14-px patches of each object. Patches touching no object are
        (NO_COLOR, -1): the shape loss is on object patches only, where its
        signal is not drowned by ~130 background patches per image. Patches
        touching two objects are (-1, -1), skipped.
        """
        y = torch.tensor([NO_COLOR, -1]).repeat(self.grid * self.grid, 1)
        objects = [torch.tensor([COLOR_ID[obj["color"]], SHAPE_ID[obj["shape"]]]) for obj in sample.objects]
        for cell, k in self.object_cells(sample).items():
            y[cell] = -1 if k is None else objects[k]
        return y

    def object_cells(self, sample) -> dict[int, int | None]:
        """Each patch of the model's grid that an object touches -> that object's index in
        `sample.objects`, or None where two or more objects touch it."""
        owner = {}
        for k, obj in enumerate(sample.objects):
            for cell in synthetic.tokens_on_grid(obj["patches"], self.patch_size):
                owner[cell] = k if owner.get(cell, k) == k else None
        return owner

    def text_cells(self, sample) -> list[tuple[int, int]]:
        """(row, col) of the model's patches that the text box touches; empty without text."""
        if sample.text_bbox is None:
            return []
        x0, y0, x1, y1 = sample.text_bbox
        ps = self.patch_size
        rows, cols = range(y0 // ps, (y1 - 1) // ps + 1), range(x0 // ps, (x1 - 1) // ps + 1)
        return [(row, col) for row in rows for col in cols]

    def ocr_labels(self, sample) -> torch.Tensor:
        """(P, OCR_COLUMNS) class of the glyph under each column centre of the text box's patches; -1 elsewhere.

        Columns inside the box but between or beside glyphs are class len(OCR_CHARS) ("no glyph").
        """
        y = torch.full((self.grid * self.grid, OCR_COLUMNS), -1, dtype=torch.long)
        if sample.text_bbox is None:
            return y
        x0, _, x1, _ = sample.text_bbox
        spans = synthetic.char_spans(sample.text, sample.text_bbox)
        ps, width = self.patch_size, self.patch_size / OCR_COLUMNS
        for row, col in self.text_cells(sample):
            for k in range(OCR_COLUMNS):
                centre = col * ps + (k + 0.5) * width
                if x0 <= centre < x1:
                    glyph = next((ch for ch, a, b in spans if a <= centre < b), None)
                    y[row * self.grid + col, k] = len(OCR_CHARS) if glyph is None else OCR_CHARS.index(glyph)
        return y

    def text_labels(self, sample) -> torch.Tensor:
        """(P, 1 + DIGIT_SLOTS) the whole printed text, named on every patch of its box; -1 elsewhere.

        Column 0 is the word (its index in `synthetic.OCR_WORDS`, or NUMBER_CLASS
        for a number); columns 1.. are a number's digits in reading order (10:
        no digit there, or not a number). The glyph head says which letter is
        under each column; this says which word they spell, so the decoder
        only has to copy it, as it copies a colour.
        """
        y = torch.full((self.grid * self.grid, 1 + DIGIT_SLOTS), -1, dtype=torch.long)
        if sample.text is None:
            return y
        text = sample.text.lower()
        digits = [int(d) for d in text] if text.isdigit() else []
        label = torch.tensor([NUMBER_CLASS if digits else synthetic.OCR_WORDS.index(text)]
                             + [digits[k] if k < len(digits) else 10 for k in range(DIGIT_SLOTS)])
        for row, col in self.text_cells(sample):
            y[row * self.grid + col] = label
        return y

    def side_labels(self, sample) -> torch.Tensor:
        """(P, 2) for each patch of one object: 0/1 = left/right and 0/1 = top/bottom, the answers a
        position question about that object gets; -1 where the object straddles the middle, and elsewhere."""
        y = torch.full((self.grid * self.grid, 2), -1, dtype=torch.long)
        sides = [[synthetic._side(obj["bbox"], axis) for axis in ("x", "y")] for obj in sample.objects]
        for cell, k in self.object_cells(sample).items():
            if k is not None:
                y[cell] = torch.tensor([-1 if side is None else int(side in ("right", "bottom")) for side in sides[k]])
        return y

    def align_labels(self, sample) -> torch.Tensor:
        """(P,) the vocabulary id each text-box patch should read as through the LM head; -1 elsewhere.

        A word's patches all name the word's token (every OCR word is one
        token); a number's patches name the digit under their left column, or
        the right one (-1 where neither holds a digit). The alignment loss
        asks the LM head to read these ids off the projected image tokens, so
        that a decoder head which copies a text-box token into the last
        position has already said the word.
        """
        y = torch.full((self.grid * self.grid,), -1, dtype=torch.long)
        if sample.text is None:
            return y
        text = sample.text.lower()
        if not text.isdigit():
            (word,) = self.tokenizer(" " + text, add_special_tokens=False).input_ids
            for row, col in self.text_cells(sample):
                y[row * self.grid + col] = word
            return y
        digit_ids = {d: self.tokenizer.convert_tokens_to_ids(d) for d in string.digits}
        for patch, columns in enumerate(self.ocr_labels(sample).tolist()):
            glyphs = [OCR_CHARS[c] for c in columns if 0 <= c < len(OCR_CHARS) and OCR_CHARS[c].isdigit()]
            if glyphs:
                y[patch] = digit_ids[glyphs[0]]
        return y


class TrainSamples(torch.utils.data.Dataset):
    """Item i = train sample (first + i), encoded. Generated in the worker that asks for it."""

    def __init__(self, split: str, first: int, count: int, patch_size: int, extra_turns: int = 0,
                 bare_rate: float = 0.0, turn_weights: dict[str, float] | None = None,
                 text_rate: float = synthetic.TEXT_PROBABILITY):
        self.split, self.first, self.count, self.patch_size = split, first, count, patch_size
        self.extra_turns, self.bare_rate, self.turn_weights = extra_turns, bare_rate, turn_weights
        self.text_rate = text_rate
        self.encoder = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict:
        if self.encoder is None:
            self.encoder = Encoder(self.patch_size, self.extra_turns, self.bare_rate, self.turn_weights)
        return self.encoder(synthetic.make_sample(self.split, self.first + i, self.text_rate))


def collate(items: list[dict]) -> dict:
    return {
        "prompt": [it["prompt"] for it in items],
        "target": [it["target"] for it in items],
        "ids": [it["ids"] for it in items],
        "label_index": [it["label_index"] for it in items],
        "pixels": torch.stack([it["pixels"] for it in items]),
        "cls_labels": torch.stack([it["cls_labels"] for it in items]),
        "count": torch.tensor([it["count"] for it in items]),
        "patch_labels": torch.stack([it["patch_labels"] for it in items]),
        "ocr_labels": torch.stack([it["ocr_labels"] for it in items]),
        "text_labels": torch.stack([it["text_labels"] for it in items]),
        "align_labels": torch.stack([it["align_labels"] for it in items]),
        "side_labels": torch.stack([it["side_labels"] for it in items]),
        "target_tokens": [it["target_tokens"] for it in items],
        "type": [it["type"] for it in items],
        "answer": [it["answer"] for it in items],
    }


def _worker_init(_):
    torch.set_num_threads(1)


# ---- model with auxiliary heads ------------------------------------------------------------------


class TrainableLlava(LlavaForCausalLM):
    """LlavaForCausalLM whose image encoding also keeps the final CLS and the select layer's patches.

    Same parameters (and names) as the parent: `state_dict()` is the checkpoint.
    With `token_drop` > 0, each training image keeps, with that probability,
    its `foreground` tokens (objects and text, a (B, P) mask the training loop
    sets before each forward) and a random share (0-100%) of the rest, in
    order. The decoder then sees images of many lengths and cannot key on
    where the image ends (the shortcut that made the first shipped model
    fragile to pruning before the LLM), while every question stays answerable:
    dropping the objects too turned a fifth of the answers into noise and
    stalled the decoder. Without a mask, any token may go (at least one stays).
    """

    token_drop: float = 0.0
    foreground: torch.Tensor | None = None
    last_inputs = None  # the last training forward's MultimodalInputs (spans say where each image went)

    def prepare_inputs(self, prompts, pixel_values):
        inputs = super().prepare_inputs(prompts, pixel_values)
        if self.training:
            self.last_inputs = inputs
        return inputs

    def encode_images(self, pixel_values, partition_grids=None):
        if not self.training:
            return super().encode_images(pixel_values, partition_grids)
        tower = self.vision_tower
        select = self.config.vision.layer_index(self.config.select_layer)
        x = tower.pre_layrnorm(tower.embeddings(pixel_values.to(self.dtype)))
        for index, layer in enumerate(tower.encoder.layers):
            x, _ = layer(x)
            if index == select:
                features = x[:, 1:]
        projected = self.mm_projector(features)
        self.aux_outputs = (tower.post_layernorm(x[:, 0]), features, projected)
        B, P = features.shape[:2]
        foreground = self.foreground if self.foreground is not None else torch.zeros(B, P, dtype=torch.bool)
        images, indices = [], []
        for tokens, always in zip(projected, foreground):
            keep = torch.arange(P, device=tokens.device)
            if self.token_drop > 0 and torch.rand(()) < self.token_drop:
                rest = (~always).nonzero().flatten()
                share = float(torch.rand(()))
                count = max(round(share * len(rest)), 0 if always.any() else 1)
                kept = rest[torch.randperm(len(rest))[:count]]
                keep = torch.cat([always.nonzero().flatten(), kept]).sort().values.to(tokens.device)
            images.append(tokens[keep])
            indices.append(keep)
        return images, indices


class AuxHeads(nn.Module):
    def __init__(self, width: int, grid: int):
        super().__init__()
        self.cls = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, CLS_LABELS + 5))
        self.patch = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, NUM_COLORS + 1 + NUM_SHAPES))
        self.ocr = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, OCR_COLUMNS * (len(OCR_CHARS) + 1)))
        self.where = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * grid))  # the patch's row and column
        self.text = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, NUMBER_CLASS + 1 + DIGIT_SLOTS * 11))


def initialize(model: LlavaForCausalLM) -> None:
    """Fresh weights: N(0, 0.02) matrices (as GPT-2 / Llama), except where the scale of a stream matters.

    - Token embeddings keep nn.Embedding's N(0, 1): text tokens enter the decoder with an RMS of 1.
    - The projector is variance-preserving (std 1/sqrt(fan_in), sqrt(2) more after the GELU), so image
      tokens enter with an RMS near 1 too. With 0.02 everywhere they came out ~20x smaller than the
      text tokens, and whatever a layer adds to their residual stream drowned the image.
    """
    for name, p in model.named_parameters():
        if p.dim() < 2 or "embedding" in name or "embed_tokens" in name:
            continue
        if name.startswith("mm_projector."):
            gain = math.sqrt(2.0) if name.startswith("mm_projector.2.") else 1.0
            nn.init.normal_(p, std=gain / math.sqrt(p.shape[1]))
        else:
            nn.init.normal_(p, std=0.02)


def lm_loss(model: LlavaForCausalLM, seqs: list[list[int]], label_index: list[list[int]], pixels) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens `seqs[b][i]` for i in `label_index[b]` (all after the image).

    The same computation as `model(..., all_logits=True)` (no pruning during
    training), but `lm_head` only runs on the positions that predict an answer
    token. The batch is left-padded, so token i of a sequence of L ids (the
    image placeholder counted once) sits at N - L + i and is predicted at N - L + i - 1.
    """
    inputs = model.prepare_inputs(seqs, pixels)
    hidden = model.language_model(inputs.embeds, inputs.key_mask, inputs.positions, None, None, False).hidden
    N = hidden.shape[1]
    rows = torch.tensor([b for b, index in enumerate(label_index) for _ in index])
    cols = torch.tensor([N - len(ids) + i - 1 for ids, index in zip(seqs, label_index) for i in index])
    logits = model.lm_head(hidden[rows, cols]).float()  # (answer tokens, V)
    labels = torch.tensor([ids[i] for ids, index in zip(seqs, label_index) for i in index])
    return F.cross_entropy(logits, labels)


def aux_losses(heads: AuxHeads, model: TrainableLlava, batch: dict, args,
               tokenizer) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the auxiliary losses of the last training forward, and each loss by name (for the log).

    A loss whose weight is 0, or whose labels are all -1 in this batch (no
    printed text), adds nothing.
    """
    # (B, D) final CLS, (B, P, D) select-layer patches, (B, P, H) the projector's image tokens
    cls_out, features, projected = model.aux_outputs
    B, P, _ = features.shape
    cls_logits = heads.cls(cls_out).float()
    losses = {"cls": F.binary_cross_entropy_with_logits(cls_logits[:, :CLS_LABELS], batch["cls_labels"])
              + F.cross_entropy(cls_logits[:, CLS_LABELS:], batch["count"])}
    weights = {"cls": args.cls_aux_weight}

    def softmax_loss(head, labels, classes):  # labels (B, P, k): one softmax of `classes` per column
        logits = head(features).float().reshape(-1, classes)
        return F.cross_entropy(logits, labels.reshape(-1), ignore_index=-1)

    if args.patch_aux_weight > 0:
        labels = batch["patch_labels"].reshape(-1, 2)
        colour, shape = heads.patch(features).float().reshape(labels.shape[0], -1).split(
            [NUM_COLORS + 1, NUM_SHAPES], dim=-1)
        losses["patch"] = (F.cross_entropy(colour, labels[:, 0], ignore_index=-1)
                           + F.cross_entropy(shape, labels[:, 1], ignore_index=-1))
        weights["patch"] = args.patch_aux_weight
    if args.where_aux_weight > 0:
        grid = math.isqrt(P)
        index = torch.arange(P)
        labels = torch.stack([index // grid, index % grid], dim=-1).expand(B, P, 2)
        losses["where"] = softmax_loss(heads.where, labels, grid)
        weights["where"] = args.where_aux_weight
    if args.ocr_aux_weight > 0 and (batch["ocr_labels"] >= 0).any():
        losses["ocr"] = softmax_loss(heads.ocr, batch["ocr_labels"], len(OCR_CHARS) + 1)
        weights["ocr"] = args.ocr_aux_weight
    if args.text_aux_weight > 0 and (batch["text_labels"] >= 0).any():
        labels = batch["text_labels"].reshape(-1, 1 + DIGIT_SLOTS)
        word, digits = heads.text(features).float().reshape(labels.shape[0], -1).split(
            [NUMBER_CLASS + 1, DIGIT_SLOTS * 11], dim=-1)
        losses["text"] = (F.cross_entropy(word, labels[:, 0], ignore_index=-1)
                          + F.cross_entropy(digits.reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-1))
        weights["text"] = args.text_aux_weight
    if args.align_aux_weight > 0 and (batch["align_labels"] >= 0).any():
        labels = batch["align_labels"].reshape(-1)
        tokens = projected.reshape(labels.shape[0], -1)[labels >= 0]
        logits = model.lm_head(model.language_model.norm(tokens)).float()
        losses["align"] = F.cross_entropy(logits, labels[labels >= 0])
        weights["align"] = args.align_aux_weight
    if args.ground_aux_weight > 0:
        ground = ground_loss(model, batch, args.ground_layer, args.ground_head)
        if ground is not None:
            losses["ground"], weights["ground"] = ground, args.ground_aux_weight
    copy_weights = {"copy": args.copy_aux_weight, "object_copy": args.object_copy_aux_weight}
    if any(w > 0 for w in copy_weights.values()):
        for name, loss in copy_losses(model, batch, args.ground_layer, args.ground_head, tokenizer).items():
            if copy_weights[name] > 0:
                losses[name], weights[name] = loss, copy_weights[name]
    total = sum(weights[name] * loss for name, loss in losses.items())
    return total, {name: loss.item() for name, loss in losses.items()}


def capture_attention_input(model: TrainableLlava, layer: int) -> None:
    """Keep what decoder layer `layer`'s attention receives (normed input, rope cos and sin) as
    `model.attention_input`, for `ground_loss`."""
    def hook(_module, args):
        if model.training:
            model.attention_input = args[:3]

    model.language_model.layers[layer].self_attn.register_forward_pre_hook(hook)


def image_positions(inputs) -> list[dict[int, int]]:
    """Per sample of the last forward: patch index -> its position in the sequence (kept patches only)."""
    return [{int(p): span.start + i for i, p in enumerate(span.patch_index)} for spans in inputs.spans
            for span in spans[:1]]


def ground_loss(model: TrainableLlava, batch: dict, layer: int, head: int) -> torch.Tensor | None:
    """-log of the attention that one decoder head, at the position predicting the first answer,
    puts on the question's target tokens (mean over samples that have any; None if none has).

    The targets are `Sample.patches` on the model's grid: the named object(s),
    the counted ones, or the text box. The row is recomputed from the layer's
    input (`capture_attention_input`) exactly as the layer computes it (rope,
    causal and padding masks), for one query per sample, so SDPA stays on.
    """
    x, cos, sin = model.attention_input  # (B, N, D), (B, N, hd) x2
    inputs, attn = model.last_inputs, model.language_model.layers[layer].self_attn
    B, N, _ = x.shape
    rows = torch.arange(B)
    query = torch.tensor([N - len(ids) + len(prompt) - 1 for ids, prompt in zip(batch["ids"], batch["prompt"])])
    hd, kv_head = attn.head_dim, head // (attn.num_heads // attn.num_kv_heads)
    q = attn.q_proj(x[rows, query]).view(B, attn.num_heads, hd)[:, head]  # (B, hd)
    k = attn.k_proj(x).view(B, N, attn.num_kv_heads, hd)[:, :, kv_head]  # (B, N, hd)
    q = q * cos[rows, query] + rotate_half(q) * sin[rows, query]
    k = k * cos + rotate_half(k) * sin
    logits = (k @ q[:, :, None])[..., 0].float() / math.sqrt(hd)  # (B, N)
    allowed = inputs.key_mask & (torch.arange(N)[None, :] <= query[:, None])
    log_attention = logits.masked_fill(~allowed, float("-inf")).log_softmax(dim=-1)
    losses = []
    for b, (targets, where) in enumerate(zip(batch["target_tokens"], image_positions(inputs))):
        positions = [where[p] for p in targets if p in where]
        if positions:
            losses.append(-log_attention[b, positions].logsumexp(dim=0))
    return torch.stack(losses).mean() if losses else None


def copy_losses(model: TrainableLlava, batch: dict, layer: int, head: int, tokenizer) -> dict[str, torch.Tensor]:
    """What the grounded head carries from one image token, read by the LM head, must say that token's
    answers: {"copy": the text-box tokens' loss, "object_copy": the object tokens'} (a name is missing
    when the batch has no such token).

    `out(t)` is what the head adds to the residual stream when it attends to
    token t alone (its value and output projections). Through the final norm
    and the LM head: a text-box token must read as its `align_labels` id (full
    vocabulary); an object's token must read as its colour among the colour
    words, its shape among the shape words, and its side (`side_labels`)
    between "left"/"right" and between "top"/"bottom". With grounding the head
    attends to the question's target, so this is the carrying the colour,
    shape, position and ocr answers need, trained on every such token instead
    of on the answers only.
    """
    x = model.attention_input[0]  # (B, N, D), the layer's normed input
    inputs, attn = model.last_inputs, model.language_model.layers[layer].self_attn
    slots = [(b, col, p) for b, where in enumerate(image_positions(inputs)) for p, col in where.items()]
    rows, cols, patches = (torch.tensor(v) for v in zip(*slots))
    text = batch["align_labels"][rows, patches]  # (n,)
    colour, shape = batch["patch_labels"][rows, patches].unbind(-1)
    sides = batch["side_labels"][rows, patches]  # (n, 2)
    use = (text >= 0) | ((colour >= 0) & (colour < NO_COLOR) & (shape >= 0)) | (sides >= 0).any(-1)
    if not use.any():
        return {}
    rows, cols, text, colour, shape, sides = rows[use], cols[use], text[use], colour[use], shape[use], sides[use]
    hd, kv_head = attn.head_dim, head // (attn.num_heads // attn.num_kv_heads)
    values = attn.v_proj(x[rows, cols]).view(len(rows), attn.num_kv_heads, hd)[:, kv_head]  # (n, hd)
    out = values @ attn.o_proj.weight[:, head * hd:(head + 1) * hd].T  # (n, D)
    logits = model.lm_head(model.language_model.norm(out)).float()  # (n, V)
    losses, object_losses = {}, []
    if (text >= 0).any():
        losses["copy"] = F.cross_entropy(logits[text >= 0], text[text >= 0])
    obj = (colour >= 0) & (colour < NO_COLOR) & (shape >= 0)
    for words, labels, where in ((synthetic.COLORS, colour, obj), (synthetic.SHAPES, shape, obj),
                                 (("left", "right"), sides[:, 0], sides[:, 0] >= 0),
                                 (("top", "bottom"), sides[:, 1], sides[:, 1] >= 0)):
        if where.any():
            ids = [tokenizer(" " + w, add_special_tokens=False).input_ids[0] for w in words]
            object_losses.append(F.cross_entropy(logits[where][:, ids], labels[where]))
    if object_losses:
        losses["object_copy"] = sum(object_losses)
    return losses


# ---- evaluation ----------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, encoder: Encoder, split: str, n: int, first: int = 0, batch_size: int = 66) -> dict:
    """Greedy-decode n samples of a split; accuracy per question type and overall (the benchmark's rule)."""
    was_training = model.training
    model.eval()
    graded = []
    tok = encoder.tokenizer
    for start in range(first, first + n, batch_size):
        samples = [synthetic.make_sample(split, i) for i in range(start, min(first + n, start + batch_size))]
        prompts = [tokenizer_image_token(sample_prompt(s), tok) for s in samples]
        pixels = torch.stack([encoder.processor.preprocess(s.image) for s in samples])
        out = generate(model, prompts, pixels, max_new_tokens=8, eos_token_id=tok.eos_token_id)
        for s, tokens in zip(samples, out.tokens):
            graded.append((s.question_type, shapes.is_correct(tok.decode(tokens, skip_special_tokens=True), s.answer)))
    model.train(was_training)
    return shapes.fractions_by_type(graded)


# ---- export --------------------------------------------------------------------------------------


def hf_key(name: str) -> str:
    """Our parameter name -> llava-hf's (the inverse of llava.model.builder.KEY_RULES)."""
    for ours, theirs in (("lm_head.", "language_model.lm_head."), ("language_model.", "language_model.model."),
                         ("mm_projector.0.", "multi_modal_projector.linear_1."),
                         ("mm_projector.2.", "multi_modal_projector.linear_2."),
                         ("vision_tower.", "vision_tower.vision_model.")):
        if name.startswith(ours):
            return theirs + name[len(ours):]
    raise KeyError(name)


def hf_config(config: LlavaConfig, tokenizer) -> dict:
    v, t = config.vision, config.text
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": tokenizer.convert_tokens_to_ids("<image>"),
        "projector_hidden_act": "gelu",
        "vision_feature_layer": config.select_layer,
        "vision_feature_select_strategy": "default",
        "image_seq_length": v.num_patches,
        "tie_word_embeddings": t.tie_word_embeddings,
        "torch_dtype": "float16",
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size, "num_hidden_layers": v.num_layers,
            "num_attention_heads": v.num_heads, "image_size": v.image_size, "patch_size": v.patch_size,
            "num_channels": v.num_channels, "layer_norm_eps": v.layer_norm_eps, "hidden_act": v.hidden_act,
            "projection_dim": v.hidden_size,
        },
        "text_config": {
            "model_type": "llama", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads, "num_key_value_heads": t.num_kv_heads, "head_dim": t.head_dim,
            "rms_norm_eps": t.rms_norm_eps, "max_position_embeddings": t.max_position_embeddings,
            "rope_theta": t.rope_theta, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": False, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
        },
    }


def export_hf(model: LlavaForCausalLM, tokenizer, folder: Path, dtype=torch.float16) -> None:
    """Write the llava-hf layout: config.json, model.safetensors, tokenizer, preprocessor_config.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {hf_key(k): v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config(model.config, tokenizer), indent=2) + "\n")
    tokenizer.save_pretrained(folder)
    size = model.config.vision.image_size
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": size, "width": size}, "size": {"shortest_edge": size},
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "do_center_crop": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "do_convert_rgb": True, "resample": 3, "rescale_factor": 1 / 255,
        "image_processor_type": "CLIPImageProcessor",
    }, indent=2) + "\n")


# ---- training ------------------------------------------------------------------------------------


def schedule_progress(step: int, wall_s: float, args) -> float:
    """Fraction of the run done: by steps, or by wall time when --max-minutes is given (whichever is further)."""
    progress = step / args.steps
    if args.max_minutes:
        progress = max(progress, wall_s / (60 * args.max_minutes))
    return min(1.0, progress)


def lr_at(step: int, progress: float, args) -> float:
    """Linear warmup over --warmup steps, then cosine from --lr to --lr * --min-lr-ratio over the progress."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, default=Path("runs/shapes-tiny"), help="log and checkpoint folder")
    g.add_argument("--export", type=Path, help="write the final model here in the llava-hf layout")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    g.add_argument("--seed", type=int, default=0, help="weight init and anything random in training")
    g.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in the training process")
    g.add_argument("--workers", type=int, default=1, help="DataLoader workers generating samples")
    g.add_argument("--bf16", action="store_true",
                   help="bf16 autocast (about 25x slower than fp32 on a CPU without AVX512-BF16/AMX)")
    g.add_argument("--max-minutes", type=float, default=None,
                   help="wall-time budget of the run (resumed runs included): the cosine schedule runs over "
                        "whichever of --steps or this budget ends first, then training stops, saves and exports")
    g.add_argument("--init-from", type=Path,
                   help="start from this checkpoint's weights (a last.pt) with a fresh optimiser and schedule, "
                        "on the train samples after the ones it saw; heads it lacks start fresh")
    g.add_argument("--export-only", action="store_true", help="load OUT/last.pt and only --export it")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=3000, help="optimiser steps (the cosine schedule's length)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    g.add_argument("--min-lr-ratio", type=float, default=0.05, help="final lr / peak lr of the cosine")
    g.add_argument("--warmup", type=int, default=100, help="linear warmup steps")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--grad-clip", type=float, default=1.0, help="max global gradient norm")
    g.add_argument("--extra-turns", type=int, default=3,
                   help="more questions about each training image, as further vicuna_v1 turns with the loss on "
                        "every answer (more answer tokens per image; evaluation stays single-turn)")
    g.add_argument("--bare-rate", type=float, default=0.25,
                   help="share of questions asked without LLaVA's short-answer instruction, so that a bare "
                        "question (as `fastv run --prompt` sends it) also gets a one-word answer")
    g.add_argument("--token-drop", type=float, default=0.0,
                   help="probability that a training image keeps only its object and text tokens and a random "
                        "share of the rest, so the decoder cannot key on the sequence length")
    g.add_argument("--turn-weights", type=parse_turn_weights, default=None, metavar="TYPE=W,...",
                   help="relative odds of each question type in the extra turns, e.g. ocr=3,position=2 "
                        "(types not named weigh 1; default: uniform)")
    g.add_argument("--text-rate", type=float, default=synthetic.TEXT_PROBABILITY,
                   help="probability of printed text on a training image whose question is not ocr "
                        "(more text: more ocr turns; the benchmark's splits keep the generator's default)")
    g.add_argument("--cls-aux-weight", type=float, default=0.5, help="weight of the CLS head's loss")
    g.add_argument("--patch-aux-weight", type=float, default=0.5, help="weight of the patch head's loss (0: off)")
    g.add_argument("--ocr-aux-weight", type=float, default=0.5, help="weight of the OCR head's loss (0: off)")
    g.add_argument("--where-aux-weight", type=float, default=0.5,
                   help="weight of the position head's loss (each patch names its row and column; 0: off)")
    g.add_argument("--text-aux-weight", type=float, default=0.5,
                   help="weight of the text head's loss (each text-box patch names the word or digits; 0: off)")
    g.add_argument("--align-aux-weight", type=float, default=0.0,
                   help="weight of the alignment loss: the LM head reads each text-box image token "
                        "(after the projector) as the word's token, or a number's digit (0: off)")
    g.add_argument("--ground-aux-weight", type=float, default=0.0,
                   help="weight of the grounding loss: one decoder head's attention from the first answer's "
                        "position should land on the question's target tokens (0: off)")
    g.add_argument("--ground-layer", type=int, default=-1,
                   help="decoder layer of the grounded head (default: the last, which FastV never ranks by)")
    g.add_argument("--ground-head", type=int, default=0, help="the grounded head")
    g.add_argument("--copy-aux-weight", type=float, default=0.0,
                   help="weight of the copy loss: the grounded head's value/output projections carry each "
                        "text-box token to the LM head as its word (or digit) (0: off)")
    g.add_argument("--object-copy-aux-weight", type=float, default=0.0,
                   help="the same for object tokens: carried to the LM head, they read as their colour, "
                        "shape and side words (0: off)")
    g = p.add_argument_group("logging")
    g.add_argument("--log-every", type=int, default=20, help="steps between loss lines")
    g.add_argument("--eval-every", type=int, default=250, help="steps between validation runs")
    g.add_argument("--eval-samples", type=int, default=198, help="validation samples per run (33 per type)")
    g.add_argument("--save-every", type=int, default=100, help="steps between checkpoints")
    g = p.add_argument_group("model")
    g.add_argument("--patch-size", type=int, default=28, help="ViT patch (336 / 28 = 12x12 = 144 tokens)")
    g.add_argument("--vision-width", type=int, default=128)
    g.add_argument("--vision-layers", type=int, default=6)
    g.add_argument("--vision-heads", type=int, default=4)
    g.add_argument("--text-width", type=int, default=192)
    g.add_argument("--text-intermediate", type=int, default=512)
    g.add_argument("--text-layers", type=int, default=4)
    g.add_argument("--text-heads", type=int, default=4)
    return p.parse_args(argv)


class Logger:
    def __init__(self, path: Path):
        self.file = open(path, "a", buffering=1)

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, flush=True)
        self.file.write(line + "\n")


def save_checkpoint(path: Path, model, heads, optimizer, step: int, samples: int, first_sample: int, wall: float,
                    args) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "heads": heads.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "samples": samples, "first_sample": first_sample, "wall_s": wall, "args": vars(args),
                "config": asdict(model.config)}, tmp)
    os.replace(tmp, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # tiny gradients squared in Adam go denormal: 10x slower kernels on CPU
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    log = Logger(args.out / "train.log")
    tokenizer = build_tokenizer()
    config = model_config(args, len(tokenizer))
    model = TrainableLlava(config)
    model.token_drop = args.token_drop
    initialize(model)
    if args.ground_aux_weight > 0 or args.copy_aux_weight > 0 or args.object_copy_aux_weight > 0:
        capture_attention_input(model, args.ground_layer)
    heads = AuxHeads(config.vision.hidden_size, synthetic.IMAGE_SIZE // args.patch_size)
    params = [p for p in list(model.parameters()) + list(heads.parameters()) if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), foreach=True)
    step, samples_seen, wall_before = 0, 0, 0.0
    first_sample = 0  # train sample index of this run's step 0
    if args.init_from:
        state = torch.load(args.init_from, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        missing = heads.load_state_dict(state["heads"], strict=False).missing_keys
        first_sample = state.get("first_sample", 0) + state["samples"]
        log(f"initialised from {args.init_from} (step {state['step']}, {state['samples']} samples); fresh "
            f"optimiser and schedule, data from train sample {first_sample}"
            + (f"; new heads: {sorted({k.split('.')[0] for k in missing})}" if missing else ""))
    ckpt = args.out / "last.pt"
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        step, samples_seen, wall_before = state["step"], state["samples"], state.get("wall_s", 0.0)
        first_sample = state.get("first_sample", 0)
        log(f"resumed from {ckpt} at step {step} ({samples_seen} samples)")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"args {json.dumps({k: str(v) for k, v in vars(args).items()})}")
    log(f"model: {n_params / 1e6:.2f}M parameters, {config.tokens_per_image} visual tokens/image, "
        f"config {json.dumps(asdict(config))}")

    if args.export_only:
        if not args.export:
            raise SystemExit("--export-only needs --export DIR")
        model.eval()
        export_hf(model, tokenizer, args.export)
        log(f"exported {ckpt} (step {step}) to {args.export}")
        return {"step": step, "samples": samples_seen, "wall_s": wall_before}

    data = TrainSamples("train", first_sample + step * args.batch_size, (args.steps - step) * args.batch_size,
                        args.patch_size, args.extra_turns, args.bare_rate, args.turn_weights, args.text_rate)
    loader = torch.utils.data.DataLoader(
        data, batch_size=args.batch_size, shuffle=False, num_workers=args.workers, collate_fn=collate,
        worker_init_fn=_worker_init if args.workers else None, prefetch_factor=4 if args.workers else None,
        persistent_workers=False,
    )
    encoder = Encoder(args.patch_size)
    model.train()
    start = time.time()
    window_start, window_samples = time.time(), 0
    sums = defaultdict(float)
    last_eval = None
    stopped_early = False
    history = []  # LM loss per step of this process
    for batch in loader:
        progress = schedule_progress(step, wall_before + time.time() - start, args)
        if step >= args.steps or progress >= 1.0:
            stopped_early = step < args.steps
            break
        lr = lr_at(step, progress, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.foreground = (batch["patch_labels"][..., 0] != NO_COLOR) | (batch["text_labels"][..., 0] >= 0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss_lm = lm_loss(model, batch["ids"], batch["label_index"], batch["pixels"])
            aux, parts = aux_losses(heads, model, batch, args, tokenizer)
            loss = loss_lm + aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        optimizer.step()
        step += 1
        samples_seen += len(batch["prompt"])
        window_samples += len(batch["prompt"])
        sums["lm"] += loss_lm.item()
        history.append(round(loss_lm.item(), 5))
        for name, value in parts.items():
            sums[name] += value
        sums["grad"] += grad_norm.item()
        sums["n"] += 1
        if step % args.log_every == 0 or step == args.steps:
            n = sums.pop("n")
            rate = window_samples / (time.time() - window_start)
            parts = " ".join(f"{k} {v / n:.4f}" for k, v in sorted(sums.items()))
            log(f"step {step}/{args.steps} lr {lr:.2e} {parts} samples/s {rate:.1f} samples {samples_seen}")
            sums.clear()
            window_start, window_samples = time.time(), 0
        if step % args.save_every == 0:
            save_checkpoint(ckpt, model, heads, optimizer, step, samples_seen, first_sample,
                            wall_before + time.time() - start, args)
        if step % args.eval_every == 0:
            t0 = time.time()
            last_eval = evaluate(model, encoder, "validation", args.eval_samples)
            log(f"eval step {step} validation {json.dumps({k: round(v, 3) for k, v in last_eval.items()})} "
                f"({time.time() - t0:.0f}s)")
            window_start += time.time() - t0  # samples/s counts training time only
    if stopped_early:
        log(f"stopping at step {step}: the --max-minutes {args.max_minutes} budget is spent")
    wall = wall_before + time.time() - start
    save_checkpoint(ckpt, model, heads, optimizer, step, samples_seen, first_sample, wall, args)
    if step % args.eval_every != 0 or last_eval is None:
        last_eval = evaluate(model, encoder, "validation", args.eval_samples)
        log(f"eval step {step} validation {json.dumps({k: round(v, 3) for k, v in last_eval.items()})}")
    log(f"done: step {step}, {samples_seen} samples, {wall / 60:.1f} min of training (this run and resumed ones)")
    summary = {"step": step, "samples": samples_seen, "wall_s": wall, "stopped_early": stopped_early,
               "validation": last_eval, "lm_loss": history}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.export:
        model.eval()
        export_hf(model, tokenizer, args.export)
        log(f"exported the model to {args.export}")
    return summary


if __name__ == "__main__":
    main()
