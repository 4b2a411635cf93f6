"""The video recipe (`python -m llava.train --video`): Video-LLaVA at the size of the shipped models.

Reproduces Video-LLaVA's architecture (the llava-hf port: an image tower and a video tower, both CLIP, the
video tower run frame by frame; 8 frames of [CLS, patches] after a `<video>` placeholder; one projector and one
decoder for both) and trains it on the `shapes_video` clips (`llava.data.video_clips`), as Video-LLaVA trains
on images and videos together:

- **Initialisation** (`video_model`): from an exported LLaVA-1.5 model (the shipped `llava-shapes-tiny`):
  both towers from its vision tower, its projector, decoder and tokenizer, plus a `<video>` token (one more
  embedding and LM-head row, copied from `<image>`'s: the placeholder's row is never read, the frames
  replace it) and a context of `VIDEO_CONTEXT` positions (8 x 145 video tokens do not fit the image model's 1024).
- **Data** (`VideoSamples`): train sample i is a clip (`make_clip("train", i)`, its 8 frames sampled as the
  model samples them, `Clip.video_frames`) or a still image of the image looks, by the run's `--looks` mix
  (`look_of`), so image answers survive. A clip's own question comes first; further turns ask the other
  questions its boxes answer (`clip_questions`), each checked by the generator's own `answer_from_boxes`.
- **What trains**: the projector and the decoder. Both towers stay as initialised (the image model's tower
  already reads every shape, colour, word and position of a frame; the temporal questions are the decoder's
  to learn from the frames' order), which also keeps image answers and makes a step cheaper. With
  `--frame-aux-weight`, the frame loss (`llava.train.losses.frame_loss`) also asks an early decoder layer to
  name each video token's frame, the one thing a temporal answer needs that no frame's tokens carry.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken

from llava.constants import DEFAULT_VIDEO_TOKEN
from llava.conversation import build_prompt
from llava.data import synthetic, video_clips
from llava.data.tokenizer import build_tokenizer
from llava.mm_utils import ImageProcessor
from llava.model.llava_arch import VideoConfig
from llava.train.data import Encoder, conversation_ids, look_of, training_conv_mode
from llava.train.model import TrainableLlava
from llava.video import preprocess_frames

VIDEO_CONTEXT = 2048  # decoder positions: a video is 8 x (1 + 144) = 1160 tokens, plus the conversation
VIDEO_LOOK = synthetic.VIDEO_LOOK


def video_tokenizer():
    """The shipped models' tokenizer plus `<video>` (id 754, after `<image>`'s 4 and the learnt pieces)."""
    tokenizer = build_tokenizer()
    tokenizer.add_tokens([AddedToken(DEFAULT_VIDEO_TOKEN, special=True, normalized=False)], special_tokens=True)
    return tokenizer


def video_model(init: Path, tokenizer) -> TrainableLlava:
    """A Video-LLaVA from the exported LLaVA-1.5 model at `init` (see the module docstring)."""
    from llava.model.builder import load_pretrained_model

    _, loaded, _, _ = load_pretrained_model(str(init))
    config = loaded.config
    if config.video is not None or config.anyres:
        raise SystemExit(f"--video --init-from {init}: expected a LLaVA-1.5 model (one 336-px view, no video tower)")
    vocab = len(tokenizer)
    if vocab != config.text.vocab_size + 1:
        raise SystemExit(f"--video --init-from {init}: its vocabulary of {config.text.vocab_size} is not the "
                         f"shipped tokenizer's {vocab - 1}")
    text = dataclasses.replace(config.text, vocab_size=vocab,
                               max_position_embeddings=max(VIDEO_CONTEXT, config.text.max_position_embeddings))
    model = TrainableLlava(dataclasses.replace(config, text=text, video=VideoConfig()))
    state = loaded.state_dict()
    state.update({"video_tower." + k.removeprefix("vision_tower."): v for k, v in state.items()
                  if k.startswith("vision_tower.")})
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    for key in ("language_model.embed_tokens.weight", "lm_head.weight"):
        state[key] = torch.cat([state[key], state[key][image_id:image_id + 1]])
    model.load_state_dict(state)
    return model


def freeze_towers(model: TrainableLlava) -> None:
    for tower in (model.vision_tower, model.video_tower):
        tower.requires_grad_(False)


# ---- questions about a clip ------------------------------------------------------------------------


def clip_questions(clip: video_clips.Clip, rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """Up to `count` more (question, answer) pairs about `clip`, other than its own question, in random order.

    Temporal questions of every template that the clip's sampled frames answer (`answer_from_boxes` gives one
    answer: a uniquely named mover, the one object that appears or disappears, an order of objects shown one
    at a time, the one object shown with the word, and how many pass when one or more do); on a still clip
    (every box the same on every frame) the `shapes` questions of its scene, as `synthetic.ask` asks them.
    """
    objects, sampled = clip.objects, clip.sampled
    candidates = []
    for o in objects:
        question = video_clips.TEMPLATES["motion"].format(color=o["color"], shape=o["shape"])
        candidates.append(("motion", question))
    for name in ("appear_shape", "appear_color", "disappear_shape", "disappear_color", "order_first", "order_last"):
        candidates.append((name.split("_")[0], video_clips.TEMPLATES[name]))
    if clip.text is not None:
        candidates.append(("during_word", video_clips.TEMPLATES["during_number" if clip.text.isdigit() else "during_word"]))
    candidates.append(("pass", video_clips.TEMPLATES["pass"]))
    out = []
    for kind, question in candidates:
        answer = video_clips.answer_from_boxes(kind, question, objects, clip.text_frames, sampled)
        if answer is not None and answer != "0" and question != clip.question:
            out.append((question, answer))
    still = all(all(box == o["boxes"][0] for box in o["boxes"]) for o in objects)
    if still and objects:
        scene = [{"shape": o["shape"], "color": o["color"], "size": o["size"], "bbox": o["boxes"][0]} for o in objects]
        asked = {clip.question} | {q for q, _ in out}
        for _ in range(4 * count):
            kind = synthetic.QUESTION_TYPES[int(rng.integers(len(synthetic.QUESTION_TYPES)))]
            plan = synthetic.Plan(kind, want_yes=bool(rng.integers(2)), count_all=bool(rng.integers(2)))
            q = synthetic.ask(rng, plan, scene, clip.text)
            if q is not None and q.text not in asked:
                asked.add(q.text)
                out.append((q.text, q.answer))
    order = rng.permutation(len(out))
    return [out[k] for k in order[:count]]


def clip_prompt(clip: video_clips.Clip, conv_mode: str = "vicuna_v1", instruction: bool = True) -> str:
    question = clip.question + ("\n" + synthetic.SHORT_ANSWER_PROMPT if instruction else "")
    return build_prompt(question, conv_mode, with_image=False, with_video=True)


def frame_foreground(clip: video_clips.Clip, grid: int, patch_size: int) -> torch.Tensor:
    """(8, grid * grid) bool: the patches of each sampled frame that an object or the shown word touches."""
    out = torch.zeros(len(clip.sampled), grid, grid, dtype=torch.bool)
    for k, f in enumerate(clip.sampled):
        boxes = [o["boxes"][f] for o in clip.objects if o["boxes"][f] is not None]
        if clip.text is not None and clip.text_frames[0] <= f <= clip.text_frames[1]:
            boxes.append(clip.text_bbox)
        for x0, y0, x1, y1 in boxes:
            out[k, y0 // patch_size:(y1 - 1) // patch_size + 1, x0 // patch_size:(x1 - 1) // patch_size + 1] = True
    return out.flatten(1)


# ---- the run's data --------------------------------------------------------------------------------


class VideoSamples(torch.utils.data.Dataset):
    """Item i = train sample (first + i): a clip when its look (`look_of` over `looks`) is "video", else an
    image of that look; encoded as a conversation (ids, label_index), pixels and the foreground mask."""

    def __init__(self, first: int, count: int, processor: ImageProcessor, patch_size: int, looks: dict[str, float],
                 extra_turns: int, bare_rate: float, text_rate: float, turn_weights=None, split: str = "train"):
        self.first, self.count, self.processor, self.patch_size = first, count, processor, patch_size
        self.looks, self.extra_turns, self.bare_rate, self.text_rate = looks, extra_turns, bare_rate, text_rate
        self.turn_weights, self.split = turn_weights, split
        self.images = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict:
        index = self.first + i
        look = look_of(index, self.looks)
        if look != VIDEO_LOOK:
            if self.images is None:
                self.images = Encoder(self.processor, self.patch_size, self.extra_turns, self.bare_rate, self.turn_weights)
                self.images.tokenizer = video_tokenizer()
            item = self.images(synthetic.make_sample(self.split, index, self.text_rate, look))
            return {key: item[key] for key in ("prompt", "target", "ids", "label_index", "image", "foreground",
                                                "type", "answer")}
        clip = video_clips.make_clip(self.split, index)
        if not hasattr(self, "tokenizer"):
            self.tokenizer = video_tokenizer()
        rng = np.random.default_rng([17, synthetic.sample_seed(self.split, index)])
        bare = rng.random(1 + self.extra_turns) < self.bare_rate
        prompt = clip_prompt(clip, training_conv_mode(clip), instruction=not bare[0])
        extra = clip_questions(clip, rng, self.extra_turns)
        ids, label_index, prompt_ids, target = conversation_ids(self.tokenizer, prompt, clip.answer, extra, bare[1:],
                                                                clip.question_id)
        grid = self.processor.image_size // self.patch_size
        return {"prompt": prompt_ids, "target": target, "ids": ids, "label_index": label_index,
                "video": preprocess_frames(clip.video_frames, self.processor),
                "foreground": frame_foreground(clip, grid, self.patch_size), "type": clip.question_type,
                "answer": clip.answer}


def video_collate(items: list[dict]) -> dict:
    """A batch of clips and images: `images` (I, 3, S, S) and `videos` (V, 8, 3, S, S) in item order (as the
    prompts' placeholders take them), or None; `foreground` / `frame_foreground` stacked the same way."""
    images = [it for it in items if "image" in it]
    videos = [it for it in items if "video" in it]
    batch = {key: [it[key] for it in items] for key in ("prompt", "target", "ids", "label_index", "type", "answer")}
    batch["images"] = torch.stack([it["image"] for it in images]) if images else None
    batch["foreground"] = torch.stack([it["foreground"] for it in images]).flatten(0, 1) if images else None
    batch["videos"] = torch.stack([it["video"] for it in videos]) if videos else None
    batch["frame_foreground"] = torch.cat([it["foreground"] for it in videos]) if videos else None
    return batch


# ---- validation ------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_video(model, tokenizer, processor: ImageProcessor, n: int, first: int = 0, batch_size: int = 24,
                   split: str = "validation") -> dict:
    """Greedy answers to n clips of a split (their own question, with the short-answer instruction): accuracy
    per question type and overall, the benchmark's rule."""
    from llava.eval import shapes
    from llava.generate import generate
    from llava.mm_utils import tokenizer_image_token

    was_training = model.training
    model.eval()
    graded = []
    for start in range(first, first + n, batch_size):
        clips = [video_clips.make_clip(split, i) for i in range(start, min(first + n, start + batch_size))]
        prompts = [tokenizer_image_token(clip_prompt(c), tokenizer) for c in clips]
        videos = [preprocess_frames(c.video_frames, processor) for c in clips]
        out = generate(model, prompts, None, max_new_tokens=8, eos_token_id=tokenizer.eos_token_id, videos=videos)
        for c, tokens in zip(clips, out.tokens):
            graded.append((c.question_type, shapes.is_correct(tokenizer.decode(tokens, skip_special_tokens=True), c.answer)))
    model.train(was_training)
    return shapes.fractions_by_type(graded)
