"""LlavaPipeline: load once, answer batches of (image or video, question) requests. Used by the CLI and the evaluation.

See docs/PIPELINE_API.md for the contract.

Where this file sits among the others, and one request's path through them: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX, VIDEO_TOKEN_INDEX
from llava.conversation import build_prompt, conversation_template, default_conv_mode
from llava.errors import InputError
from llava.generate import generate
from llava.mm_utils import AnyresImage, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.model.pruning.base import vision_part
from llava.video import Video, preprocess_frames


@dataclass
class Request:
    image: Image.Image | None
    text: str  # the user turn, without <image> or <video>
    video: Video | None = None  # Video-LLaVA: the sampled frames (llava.video.read_video); one per prompt at most


@dataclass
class Answer:
    text: str
    prompt: str
    prompt_ids: list[int]  # -200 where each image's tokens go
    visual_tokens: list[int]  # per image: tokens entering the LLM (LLaVA-NeXT: image_newline tokens included)
    kept: list[list[int]]  # per image: original patch indices kept (after layer k for in-LLM methods); NeXT:
    #                        partition * patches + patch, the image's partitions laid end to end
    kept_partitions: list[list[list[int]]]  # per image, per partition (base, then crops row-major): sorted patch indices
    partition_grid: list[list[int]]  # per image: [rows, cols] of crops; [0, 0] for LLaVA-1.5
    prefill_s: float
    total_s: float
    stop_reason: str  # "eos", "max_new_tokens" or "context" (the context window is full)
    # in-LLM methods, per stage: {"layer": L (it prunes before decoder layer L), "kept": per image, the sorted ids
    # (as `kept`) of the image tokens layers L.. run on}; None without in-LLM pruning
    kept_stages: list[dict] | None = None
    layer_tokens: list[int] | None = None  # per decoder layer: the prompt's tokens it ran on at prefill
    # Video-LLaVA, with a video (None without one). The lists above hold the video as one more visual, in prompt
    # order (its kept ids: frame * patches + patch, -2 for a frame's [CLS]; its partition_grid [0, 0]).
    frames: list[int] | None = None  # the video's frame indices that were read (Video.indices)
    kept_frames: list[list[int]] | None = None  # per frame: sorted patch indices that entered the LLM (in-LLM
    #                                             methods: that the last stage kept); a frame's [CLS] is no patch
    kept_frame_cls: list[int] | None = None  # the frames whose [CLS] token entered the LLM (survived, as above)


class LlavaPipeline:
    def __init__(self, tokenizer, model, image_processor, context_len: int, model_id: str, conv_mode: str):
        self.tokenizer, self.model, self.image_processor = tokenizer, model, image_processor
        self.context_len, self.model_id, self.conv_mode = context_len, model_id, conv_mode

    @classmethod
    def load(
        cls,
        model_path: str,
        method: str | None = None,
        conv_mode: str | None = None,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        vision_tower: str | None = None,
        load_8bit: bool = False,
        load_4bit: bool = False,
        patch_merge: str | None = None,
        image_grid: str | None = None,
        video_cls: str | None = None,
    ) -> "LlavaPipeline":
        """`patch_merge` and `image_grid`: LLaVA-NeXT's options; `video_cls`: Video-LLaVA's (see load_pretrained_model).
        `conv_mode` None: the checkpoint's template (`default_conv_mode`: llava_v1 on Video-LLaVA, else vicuna_v1)."""
        if conv_mode is not None:
            conversation_template(conv_mode)
        tokenizer, model, image_processor, context_len = load_pretrained_model(
            model_path, device=device, dtype=dtype, pruning=method, vision_tower=vision_tower,
            load_8bit=load_8bit, load_4bit=load_4bit, patch_merge=patch_merge, image_grid=image_grid,
            video_cls=video_cls,
        )
        conv_mode = conv_mode or default_conv_mode(model.config.video is not None)
        return cls(tokenizer, model, image_processor, context_len, Path(model_path).name, conv_mode)

    @property
    def method_spec(self) -> str:
        return self.model.pruning.spec

    def encode(
        self, requests: list[Request]
    ) -> tuple[list[str], list[list[int]], torch.Tensor | list[AnyresImage] | None, list[torch.Tensor] | None]:
        """Requests -> conversation prompts, their ids (-200 marks each image, -201 each video), the images as the
        model takes them (pixel values (LLaVA-1.5) or anyres images (LLaVA-NeXT)) and the videos' frames as pixel
        values (T, 3, S, S) each (Video-LLaVA)."""
        if any(r.video is not None for r in requests) and self.model.config.video is None:
            raise InputError(f"a video was given, but {self.model_id} is an image model (it has no video tower)")
        prompts = [build_prompt(r.text, self.conv_mode, with_image=r.image is not None, with_video=r.video is not None)
                   for r in requests]
        prompt_ids = [tokenizer_image_token(p, self.tokenizer) for p in prompts]
        for ids in prompt_ids:
            if ids.count(VIDEO_TOKEN_INDEX) > 1:
                raise InputError(f"a prompt holds {ids.count(VIDEO_TOKEN_INDEX)} <video> placeholders; one video per"
                                 " prompt is supported (Video-LLaVA's), not several")
        pictures = [r.image for r in requests if r.image is not None]
        self.check_context(prompt_ids, pictures)
        images = self.image_processor(pictures) if pictures else None
        if isinstance(images, torch.Tensor):
            images = images.to(self.model.device)
        videos = [preprocess_frames(r.video.frames, self.image_processor).to(self.model.device)
                  for r in requests if r.video is not None] or None
        return prompts, prompt_ids, images, videos

    def check_context(self, prompt_ids: list[list[int]], pictures: list[Image.Image]) -> None:
        """InputError for a prompt whose tokens, visual tokens included, exceed the context, raised before any
        image is resized or encoded when the model can count an image's tokens from its size (no pre-LLM pruner);
        `generate` checks the real count after encoding in every case, with the same message."""
        pinpoints = self.image_processor.image_grid_pinpoints
        sizes = iter((picture.height, picture.width) for picture in pictures)
        context = min(self.context_len, self.model.config.text.max_position_embeddings)
        for ids in prompt_ids:
            length = len(ids)
            for _ in range(ids.count(IMAGE_TOKEN_INDEX)):
                tokens = self.model.tokens_before_encoding(next(sizes), pinpoints)
                if tokens is None:
                    return
                length += tokens - 1  # the placeholder becomes the image's tokens
            if ids.count(VIDEO_TOKEN_INDEX):
                if vision_part(self.model.pruning) is not None:
                    return
                length += self.model.config.unpruned_video_tokens - 1
            if length > context:
                raise InputError(f"prompt of {length} tokens (visual tokens included) is longer than the context of {context}")

    def answer(
        self,
        requests: list[Request],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = 0,
    ) -> list[Answer]:
        """Answer every request in one batch (left-padded)."""
        prompts, prompt_ids, pixel_values, videos = self.encode(requests)
        out = generate(
            self.model, prompt_ids, pixel_values, max_new_tokens=max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id, temperature=temperature, top_p=top_p, seed=seed,
            context_len=self.context_len, videos=videos,
        )
        stats = out.stats
        kept = stats.kept_in_llm or stats.kept
        kept_partitions = stats.kept_partitions_in_llm or stats.kept_partitions
        kept_cls = stats.kept_cls_in_llm or stats.kept_cls
        answers = [
            Answer(
                text=self.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                prompt=prompt, prompt_ids=ids, visual_tokens=visual, kept=kept_b, kept_partitions=partitions,
                partition_grid=[list(g) for g in grid], prefill_s=out.prefill_s, total_s=out.total_s,
                stop_reason=stop_reason,
                kept_stages=None if stats.kept_stages is None else [
                    {"layer": stage["layer"], "kept": stage["kept"][b]} for stage in stats.kept_stages],
                layer_tokens=stats.seq_lens[b] if stats.seq_lens else None,
            )
            for b, (prompt, ids, tokens, visual, kept_b, partitions, grid, stop_reason) in enumerate(zip(
                prompts, prompt_ids, out.tokens, stats.visual_tokens, kept, kept_partitions, stats.partition_grid,
                out.stop_reasons,
            ))
        ]
        for b, (request, answer) in enumerate(zip(requests, answers)):
            if request.video is not None:
                video = next(j for j, frames in enumerate(stats.frames[b]) if frames)  # the visual that is a video
                answer.frames = list(request.video.indices)
                answer.kept_frames = kept_partitions[b][video]
                answer.kept_frame_cls = kept_cls[b][video]
        return answers
