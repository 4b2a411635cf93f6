"""LLaVA-1.5 (Liu et al., "Improved Baselines with Visual Instruction Tuning") and LLaVA-NeXT: the glue.

CLIP ViT -> (pre-LLM pruning seam) -> projector -> spliced into the text
embeddings at each `<image>` placeholder (-200 in the input ids, LLaVA's
convention) -> Llama decoder (with the in-LLM pruning seam) -> lm_head.

LLaVA-NeXT (`config.image_grid_pinpoints` set: anyres) is a mode of the same
glue. An image arrives as an `AnyresImage`: its base view and crops, which go
through the vision tower, the pre-LLM pruner and the projector as views of one
batch, each a partition of its own; the kept tokens of all partitions are then
laid out as `config.patch_merge` says (llava/model/anyres.py: base first, then the
stitched crops, unpadded with an `image_newline` token after each row for
`spatial_unpad`).

Video-LLaVA (`config.video` set) is another mode: besides the image tower (`vision_tower`) it has a video
tower (`video_tower`, a CLIP ViT of the same config, run frame by frame, no temporal attention: the
llava-hf port, VIDEO.md R0; with `video.temporal_attention`, the original checkpoint's, LanguageBind's tower with
temporal attention in every layer, multimodal_encoder/languagebind.py). A `<video>` placeholder (-201) becomes
one contiguous, frame-major block:
each frame's [CLS] token (select layer, `video_cls="keep"`, the stock layout; `"drop"` leaves it out, as
FasterVLM's video branch) then its patches in raster order; images keep their patches without CLS. The
pre-LLM pruner selects in each frame as in an image (the frame's CLS stays in front of its kept patches);
in-LLM methods see the whole video as one span whose partitions are its frames.

Reproduces transformers' `LlavaForConditionalGeneration`, `LlavaNextForConditionalGeneration` and
`VideoLlavaForConditionalGeneration` with pruning off (tested to 1e-4 in fp32).
Records a `VisualSpan` per image (where its tokens sit, which partition and
patch each is) and `PruneStats` per forward, so nothing downstream hard-codes 576.

Where this file sits among the others, and one request's path through them: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from llava.constants import IMAGE_TOKEN_INDEX, VIDEO_TOKEN_INDEX
from llava.errors import InputError
from llava.mm_utils import AnyresImage, select_best_resolution
from llava.model.anyres import MERGES, anyres_layout, image_token_count, keep_in_layout
from llava.model.language_model.llava_llama import LLAMA_PRESETS, KVCache, LlamaConfig, LlamaDecoder
from llava.model.multimodal_encoder.clip_encoder import VISION_PRESETS, CLIPVisionTower, VisionConfig
from llava.model.multimodal_encoder.languagebind import LanguageBindVideoTower, VideoTowerConfig
from llava.model.multimodal_projector import build_projector
from llava.model.llm_pruning import Replay, StagedPruning
from llava.model.pruning.base import (
    FRAME_CLS,
    NEWLINE,
    PruneStats,
    PruningMethod,
    VisionInputs,
    VisualSpan,
    llm_parts,
    vision_part,
)
from llava.model.pruning.registry import parse_method



VIDEO_CLS = ("keep", "drop")


@dataclass(frozen=True)
class VideoConfig:
    """Video-LLaVA's video input: `num_frames` frames, each through the video tower on its own (VIDEO.md R0)."""

    num_frames: int = 8
    cls: str = "keep"  # "keep": each frame is [CLS, patches] (transformers' and Video-LLaVA's layout); "drop": patches
    # LanguageBind's temporal attention in every video tower layer: the original checkpoint (video_checkpoint.py);
    # transformers' port has none (its tower is CLIP frame by frame)
    temporal_attention: bool = False

    def __post_init__(self):
        if self.cls not in VIDEO_CLS:
            raise InputError(f"unknown video_cls '{self.cls}' (known: {', '.join(VIDEO_CLS)})")

    def frame_tokens(self, patches: int) -> int:
        """Tokens one unpruned frame brings to the LLM."""
        return patches + (self.cls == "keep")


@dataclass(frozen=True)
class LlavaConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: LlamaConfig = field(default_factory=LlamaConfig)
    projector_type: str = "mlp2x_gelu"
    select_layer: int = -2  # transformers' hidden_states index fed to the LLM (CLS removed)
    # LLaVA-NeXT (anyres): the canvases an image may be cut into, as (height, width) in pixels; None = LLaVA-1.5
    image_grid_pinpoints: tuple[tuple[int, int], ...] | None = None
    patch_merge: str = "spatial_unpad"  # LLaVA-NeXT: how the crops become tokens (anyres.MERGES)
    video: VideoConfig | None = None  # Video-LLaVA: a video tower of `vision`'s config beside the image tower

    @property
    def unpruned_video_tokens(self) -> int:
        """The visual tokens a video brings to the LLM unpruned: frames x (CLS + patches), or patches alone."""
        return self.video.num_frames * self.video.frame_tokens(self.vision.num_patches)

    @property
    def anyres(self) -> bool:
        return self.image_grid_pinpoints is not None

    @property
    def tokens_per_image(self) -> int:
        """Patches of one view: the whole image for LLaVA-1.5, one partition (base or crop) for NeXT."""
        return self.vision.num_patches

    def unpruned_image_tokens(self, image_size: tuple[int, int], pinpoints=None) -> int:
        """The visual tokens an image of `image_size` (height, width) brings to the LLM unpruned, from its size
        alone: LLaVA-1.5's patches, or NeXT's base view and the crops of the canvas `pinpoints` (default: the
        config's) choose for it, in `patch_merge`'s layout (anyres.image_token_count: no tensor is built)."""
        if not self.anyres:
            return self.vision.num_patches
        height, width = select_best_resolution(image_size, pinpoints or self.image_grid_pinpoints)
        grid = (height // self.vision.image_size, width // self.vision.image_size)
        return image_token_count(grid, self.vision.grid_size, image_size, self.patch_merge)


# LLaVA-NeXT's stock canvases (liuhaotian/llava-v1.6-*, llava-hf/llava-v1.6-*): 2x1, 1x2, 2x2, 3x1, 1x3 crops.
NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
_CLIP_L = VISION_PRESETS["clip-vit-large-patch14-336"]
# LanguageBind/Video-LLaVA-7B as llava-hf ports it: two CLIP-L/14-224 towers, Vicuna-7B v1.5 with <image> and <video>
# added to the vocabulary and the embeddings padded to a multiple of 64 (32064 rows).
_VIDEO_LLAVA_TEXT = dataclasses.replace(LLAMA_PRESETS["vicuna-7b-v1.5"], vocab_size=32064)
LLAVA_PRESETS = {
    "llava-v1.5-7b": LlavaConfig(_CLIP_L, LLAMA_PRESETS["vicuna-7b-v1.5"]),
    "llava-v1.5-13b": LlavaConfig(_CLIP_L, LLAMA_PRESETS["vicuna-13b-v1.5"]),
    "llava-v1.6-vicuna-7b": LlavaConfig(_CLIP_L, LLAMA_PRESETS["vicuna-7b-v1.5"], image_grid_pinpoints=NEXT_PINPOINTS),
    "llava-v1.6-vicuna-13b": LlavaConfig(_CLIP_L, LLAMA_PRESETS["vicuna-13b-v1.5"], image_grid_pinpoints=NEXT_PINPOINTS),
    "llava-v1.6-mistral-7b": LlavaConfig(
        _CLIP_L, LLAMA_PRESETS["mistral-7b-instruct-v0.2"], image_grid_pinpoints=NEXT_PINPOINTS
    ),
    "video-llava-7b": LlavaConfig(VISION_PRESETS["clip-vit-large-patch14"], _VIDEO_LLAVA_TEXT, video=VideoConfig()),
}


@dataclass
class ImageTokens:
    """One image's visual tokens as they enter the LLM, with what each token is."""

    features: torch.Tensor  # (T, D)
    patch_index: torch.Tensor  # (T,) see VisualSpan
    partition: torch.Tensor | None = None  # (T,) see VisualSpan; None for LLaVA-1.5
    partition_grid: tuple[int, int] = (0, 0)
    frames: int = 0  # a video: its frames, and `partition` is the frame of every token


@dataclass
class MultimodalInputs:
    """A batch after splicing: left-padded embeddings with the images in place."""

    embeds: torch.Tensor  # (B, N, D)
    key_mask: torch.Tensor  # (B, N) bool, True = real token
    positions: torch.Tensor  # (B, N) long, 0.. over each sample's real tokens
    spans: list[list[VisualSpan]]  # per sample, per image
    stats: PruneStats


@dataclass
class LlavaOutput:
    logits: torch.Tensor  # (B, N', V) with all_logits, else (B, 1, V) for the last position
    key_mask: torch.Tensor  # (B, N') rows that are real tokens
    cache: KVCache | None
    keep_mask: torch.Tensor | None  # (B, N) in-LLM pruning: the input rows that reach the last layer
    stats: PruneStats
    attention: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, H, Q, K), when asked
    replay: Replay | None = None  # in-LLM pruning's decisions, to apply again to the prompt grown by new tokens


class LlavaForCausalLM(nn.Module):
    """Parameter names: transformers' CLIPVisionModel under `vision_tower.` (Video-LLaVA's image tower) and
    `video_tower.`, LlamaModel under `language_model.`, `lm_head`, and the original LLaVA's `mm_projector.{0,2}`
    (builder.KEY_RULES maps the checkpoint layouts onto these)."""

    def __init__(self, config: LlavaConfig):
        super().__init__()
        self.config = config
        self.vision_tower = CLIPVisionTower(config.vision)
        if config.video is not None:
            video = config.video
            self.video_tower = (LanguageBindVideoTower(VideoTowerConfig(config.vision, video.num_frames, True))
                                if video.temporal_attention else CLIPVisionTower(config.vision))
        self.mm_projector = build_projector(config.projector_type, config.vision.hidden_size, config.text.hidden_size)
        self.language_model = LlamaDecoder(config.text)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        if config.anyres:  # the token after each stitched row of spatial_unpad (transformers' and LLaVA's name)
            self.image_newline = nn.Parameter(torch.randn(config.text.hidden_size) / config.text.hidden_size**0.5)
        self.pruning: PruningMethod = parse_method("none")

    def set_pruning(self, method: PruningMethod | str | None) -> PruningMethod:
        """Attach a pruning method (object or spec string), validated against this model."""
        if not isinstance(method, PruningMethod):
            method = parse_method(method)
        config = self.config
        video_tokens = config.unpruned_video_tokens if config.video is not None else 0
        method.check_model(config.vision.num_layers, config.text.num_layers, config.tokens_per_image, config.anyres,
                           video_tokens)
        self.pruning = method
        return method

    def set_patch_merge(self, merge: str | None) -> None:
        """LLaVA-NeXT: lay the crops out by `merge` (anyres.MERGES) instead of the checkpoint's; None keeps it."""
        if merge is None:
            return
        if not self.config.anyres:
            raise InputError("--patch-merge is for LLaVA-NeXT (anyres) checkpoints; this one is LLaVA-1.5")
        if merge not in MERGES:
            raise InputError(f"unknown patch merge '{merge}' (known: {', '.join(MERGES)})")
        if merge == "spatial_unpad" and self.image_newline is None:
            raise InputError("this LLaVA-NeXT checkpoint has no image_newline, which the spatial_unpad merge needs")
        self.config = dataclasses.replace(self.config, patch_merge=merge)

    def set_video_cls(self, cls: str | None) -> None:
        """Video-LLaVA: keep ("keep") or drop ("drop") each frame's [CLS] token; None keeps the current choice."""
        if cls is None:
            return
        if self.config.video is None:
            raise InputError("--video-cls is for Video-LLaVA checkpoints; this model has no video tower")
        self.config = dataclasses.replace(self.config, video=dataclasses.replace(self.config.video, cls=cls))

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.embed_tokens.weight.dtype

    # ---- images --------------------------------------------------------------------------------

    def encode_images(
        self, pixel_values: torch.Tensor, partition_grids: list[tuple[int, int]] | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """pixel_values (I, 3, S, S) -> per view (an image, or a NeXT base view or crop): projected features
        (T_i, D) and original patch indices (T_i,), as the pre-LLM pruner chose them. `partition_grids`: the
        crop grid of each image whose views these are, in order (NeXT); None: every view is an image."""
        return self._encode_views(self.vision_tower, pixel_values, partition_grids)

    def encode_frames(self, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Video frames (F, 3, S, S), through the video tower one by one -> per frame: projected features (T_f, D)
        and patch indices (T_f,): with video_cls "keep" the frame's [CLS] (FRAME_CLS) in front of its patches,
        which the pre-LLM pruner chose as in an image (its budget counts patches only)."""
        self.pruning.check_video()
        return self._encode_views(self.video_tower, pixel_values, None, video_cls=self.config.video.cls)

    def _encode_views(
        self, tower: CLIPVisionTower, pixel_values: torch.Tensor, partition_grids: list[tuple[int, int]] | None,
        video_cls: str | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with_cls = video_cls == "keep"  # a video's frames (video_cls) under "keep": each frame's CLS in front
        vision = self.config.vision
        pruner = vision_part(self.pruning)
        select = vision.layer_index(self.config.select_layer)
        probe_layers = pruner.attention_layers(vision.num_layers, select) if pruner else ()
        out = tower(pixel_values.to(self.dtype), self.config.select_layer, probe_layers)
        features = out.features  # (I, P, Dv)
        all_patches = torch.arange(features.shape[1], device=features.device)
        cls_index = torch.tensor([FRAME_CLS], device=features.device)
        if pruner is None:
            if with_cls:  # the select layer's tokens as they are: [CLS, patches] (transformers' video features)
                features, all_patches = torch.cat([out.cls_features[:, None], features], dim=1), torch.cat([cls_index, all_patches])
            return list(self.mm_projector(features)), [all_patches] * features.shape[0]

        cls_features = out.cls_features  # (I, Dv)
        if not pruner.before_projector:
            features = self.mm_projector(features)  # (I, P, D)
            cls_features = self.mm_projector(cls_features) if with_cls else cls_features  # (I, D)
        views = [
            VisionInputs(
                features=features[i],
                cls_attention={layer: probe.cls_attention[i] for layer, probe in out.probes.items()},
                keys={layer: probe.keys[i] for layer, probe in out.probes.items()},
                grid=(vision.grid_size, vision.grid_size),
                image_index=i,
                pixel_values=pixel_values[i],
                cls_query={layer: probe.cls_query[i] for layer, probe in out.probes.items()},
                cls_feature=out.cls_features[i],
                video_cls=video_cls,
            )
            for i in range(features.shape[0])
        ]
        kept, first = [], 0
        for grid in partition_grids or [(0, 0)] * len(views):
            last = first + 1 + grid[0] * grid[1]
            kept += pruner.select_image(views[first:last], grid)
            first = last
        chosen = [k.features if k.features is not None else features[i, k.indices] for i, k in enumerate(kept)]
        indices = [k.indices for k in kept]
        if with_cls:  # each frame's CLS in front of what the pruner kept of its patches
            chosen = [torch.cat([cls_features[i, None].to(c.dtype), c]) for i, c in enumerate(chosen)]
            indices = [torch.cat([cls_index, k.to(cls_index.device)]) for k in indices]
        if pruner.before_projector:
            if len({c.shape for c in chosen}) == 1:
                chosen = list(self.mm_projector(torch.stack(chosen)))  # one projector call for the batch
            else:
                chosen = [self.mm_projector(c) for c in chosen]
        return chosen, indices

    def image_tokens(self, images: torch.Tensor | list[AnyresImage]) -> list[ImageTokens]:
        """Images in order -> the visual tokens of each. LLaVA-1.5 takes pixel values (I, 3, S, S); LLaVA-NeXT
        takes `AnyresImage`s (`ImageProcessor.anyres`), whose views all go through the vision tower in one batch."""
        if not self.config.anyres:
            if not isinstance(images, torch.Tensor):
                raise InputError("this LLaVA-1.5 model takes pixel values (I, 3, S, S), not anyres images")
            return [ImageTokens(f, i) for f, i in zip(*self.encode_images(images))]
        if isinstance(images, torch.Tensor) or not all(isinstance(image, AnyresImage) for image in images):
            raise InputError("this LLaVA-NeXT model takes anyres images (ImageProcessor.anyres), not a pixel tensor")
        views = torch.cat([image.pixel_values for image in images]).to(self.device)
        features, indices = self.encode_images(views, [image.grid for image in images])
        tokens, first = [], 0
        for image in images:
            views_of_image = image.pixel_values.shape[0]
            last = first + views_of_image
            tokens.append(self._lay_out(image, features[first:last], indices[first:last]))
            first = last
        return tokens

    def video_tokens(self, videos: torch.Tensor | list[torch.Tensor]) -> list[ImageTokens]:
        """Videos in order, pixel values (V, T, 3, S, S) or a list of (T, 3, S, S) -> the visual tokens of each: its
        frames' tokens (encode_frames) one frame after another, every token's frame in `partition`."""
        video = self.config.video
        if video is None:
            raise InputError("this model has no video tower (it is not Video-LLaVA): it takes images, not videos")
        size = self.config.vision.image_size
        for number, frames in enumerate(videos):
            if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or tuple(frames.shape[1:]) != (3, size, size):
                shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
                raise InputError(f"video {number} must be pixel values (frames, 3, {size}, {size}), got {shape}")
            if frames.shape[0] != video.num_frames:
                raise InputError(f"video {number} has {frames.shape[0]} frames; this model takes {video.num_frames}")
        features, indices = self.encode_frames(torch.cat(list(videos)).to(self.device))
        tokens = []
        for v in range(len(videos)):
            frames = range(v * video.num_frames, (v + 1) * video.num_frames)
            counts = torch.tensor([len(indices[f]) for f in frames], device=self.device)
            tokens.append(ImageTokens(
                torch.cat([features[f] for f in frames]),  # (sum T_f, D), frame-major
                patch_index=torch.cat([indices[f].to(self.device) for f in frames]),
                partition=torch.arange(video.num_frames, device=self.device).repeat_interleave(counts),
                frames=video.num_frames,
            ))
        return tokens

    def _lay_out(self, image: AnyresImage, features: list[torch.Tensor], indices: list[torch.Tensor]) -> ImageTokens:
        """One NeXT image's kept tokens per partition -> its tokens in the order of `config.patch_merge`, or as
        the pruner's `packing` says (pruning.base.PACKINGS); then the pruner's `select_laid_out` may choose among
        them (DivPrune's one selection over the whole image)."""
        rows, cols = image.grid
        partitions = 1 + rows * cols
        if len(features) != partitions:
            raise InputError(f"an anyres image of a {rows}x{cols} crop grid needs {partitions} views, got {len(features)}")
        pruner = vision_part(self.pruning)
        packing = pruner.packing if pruner is not None else "merge"
        side = self.config.vision.grid_size
        indices = [i.cpu() for i in indices]
        counts = torch.tensor([len(i) for i in indices])
        first = counts.cumsum(0) - counts  # (partitions,) row of each view's first token, the views laid end to end
        newline_row = int(counts.sum())  # the newline embedding goes last
        layout = anyres_layout(image.grid, side, image.image_size, self.config.patch_merge)
        if packing == "concat":
            source = torch.arange(newline_row)
            layout = torch.stack([torch.arange(partitions).repeat_interleave(counts), torch.cat(indices)], dim=-1)
        elif packing == "own":
            stitched = anyres_layout(image.grid, side, image.image_size, "spatial")[side * side :]  # the crops alone
            order = pruner.pack(indices, layout, stitched)  # (T, 2): (view, row of its kept tokens)
            newline = order[:, 0] == NEWLINE
            source = torch.where(newline, newline_row, first[order[:, 0].clamp(min=0)] + order[:, 1])
            patch = torch.cat(indices + [torch.tensor([NEWLINE])])[source]
            layout = torch.stack([order[:, 0], patch], dim=-1)  # (T, 2): (partition, patch)
        else:
            if any(bool((i < 0).any()) for i in indices):  # merged/extra tokens have no place in the stitched grid
                raise InputError(f"method '{pruner.name}' makes merged tokens, which the anyres layout cannot place")
            if packing == "no_newline":
                layout = layout[layout[:, 0] != NEWLINE]
            layout = layout[keep_in_layout(layout, indices, partitions)]  # (T, 2): (partition, patch) per token
            slot = torch.full((partitions, side * side), -1, dtype=torch.long)  # (partition, patch) -> row
            for p, kept in enumerate(indices):
                slot[p, kept] = first[p] + torch.arange(len(kept))
            newline = layout[:, 0] == NEWLINE
            source = torch.where(newline, newline_row, slot[layout[:, 0].clamp(min=0), layout[:, 1].clamp(min=0)])
        pieces = list(features)
        if bool((layout[:, 0] == NEWLINE).any()):
            pieces.append(self.image_newline[None].to(features[0].dtype))
        gathered = torch.cat(pieces)[source.to(self.device)]
        keep = pruner.select_laid_out(gathered, layout, image.grid) if pruner is not None else None
        if keep is not None:
            gathered, layout = gathered[keep.to(self.device)], layout[keep.cpu()]
        layout = layout.to(self.device)
        return ImageTokens(gathered, patch_index=layout[:, 1], partition=layout[:, 0], partition_grid=image.grid)

    def tokens_before_encoding(self, image_size: tuple[int, int], pinpoints) -> int | None:
        """The tokens an image of `image_size` (height, width) brings to the LLM's first layer, from its size alone
        (NeXT: the canvas `pinpoints` choose for it and the merge), so that a prompt too long for the context is
        refused before the image is resized or encoded. None when a pre-LLM pruner decides the count (an in-LLM
        method prunes after layer k: every token enters the first layers)."""
        if vision_part(self.pruning) is not None:
            return None
        return self.config.unpruned_image_tokens(image_size, pinpoints)

    # ---- splicing ------------------------------------------------------------------------------

    def prepare_inputs(
        self,
        prompts: list[list[int]],
        images: torch.Tensor | list[AnyresImage] | None,
        videos: torch.Tensor | list[torch.Tensor] | None = None,
    ) -> MultimodalInputs:
        """Token ids with -200 (image) and -201 (video) placeholders, one list per sample, + the images in order (see
        `image_tokens`) and the videos in order (see `video_tokens`) -> a padded batch."""
        for kind, marker, given in (("image", IMAGE_TOKEN_INDEX, images), ("video", VIDEO_TOKEN_INDEX, videos)):
            n_placeholders = sum(ids.count(marker) for ids in prompts)
            n_given = 0 if given is None else len(given)
            if n_placeholders != n_given:
                raise InputError(f"the prompts have {n_placeholders} <{kind}> placeholder(s) but {n_given} {kind}(s) were given")
        if any(len(ids) == 0 for ids in prompts):
            raise InputError("empty prompt")
        vocab = self.config.text.vocab_size
        markers = (IMAGE_TOKEN_INDEX, VIDEO_TOKEN_INDEX)
        bad = sorted({t for ids in prompts for t in ids if t not in markers and not 0 <= t < vocab})
        if bad:
            raise InputError(f"token ids {bad[:5]} are outside the vocabulary of {vocab}")
        visuals = {
            IMAGE_TOKEN_INDEX: iter(self.image_tokens(images) if images is not None and len(images) else []),
            VIDEO_TOKEN_INDEX: iter(self.video_tokens(videos) if videos is not None and len(videos) else []),
        }

        grid = (self.config.vision.grid_size, self.config.vision.grid_size)
        embed = self.language_model.embed_tokens
        sequences, all_spans, stats = [], [], PruneStats()
        for ids in prompts:
            ids_tensor = torch.tensor(ids, device=self.device)
            text = embed(ids_tensor.clamp(min=0))  # (L, D); placeholder rows are replaced below
            pieces, spans, length, last = [], [], 0, 0
            placeholders = (ids_tensor == IMAGE_TOKEN_INDEX) | (ids_tensor == VIDEO_TOKEN_INDEX)
            for pos in placeholders.nonzero()[:, 0].tolist():
                image = next(visuals[ids[pos]])
                pieces += [text[last:pos], image.features.to(text.dtype)]
                length += pos - last
                span = VisualSpan(length, image.features.shape[0], grid, image.patch_index, image.partition,
                                  image.partition_grid, image.frames)
                spans.append(span)
                length += span.length
                last = pos + 1
            pieces.append(text[last:])
            sequences.append(torch.cat(pieces))
            all_spans.append(spans)
            stats.visual_tokens.append([s.length for s in spans])
            stats.kept.append([s.kept_ids() for s in spans])
            stats.kept_partitions.append([s.kept_partitions() for s in spans])
            stats.partition_grid.append([s.partition_grid for s in spans])
            stats.newline_tokens.append([int(s.newline.sum()) for s in spans])
            stats.frames.append([s.frames for s in spans])
            stats.kept_cls.append([s.kept_cls() for s in spans])

        width = max(s.shape[0] for s in sequences)
        B, D = len(sequences), sequences[0].shape[1]
        embeds = torch.zeros(B, width, D, dtype=self.dtype, device=self.device)
        key_mask = torch.zeros(B, width, dtype=torch.bool, device=self.device)
        for b, (seq, spans) in enumerate(zip(sequences, all_spans)):
            pad = width - seq.shape[0]
            embeds[b, pad:], key_mask[b, pad:] = seq, True
            for span in spans:
                span.start += pad
        positions = (key_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # left padding: 0.. over real tokens
        return MultimodalInputs(embeds, key_mask, positions, all_spans, stats)

    # ---- forward -------------------------------------------------------------------------------

    def forward_inputs(
        self,
        inputs: MultimodalInputs,
        use_cache: bool = True,
        all_logits: bool = False,
        replay: Replay | None = None,
        attention_layers: tuple[int, ...] = (),
        attention_rows: str = "all",
        cache_reserve: int = 0,
    ) -> LlavaOutput:
        """Prefill over spliced inputs. `replay` applies an earlier prefill's in-LLM decisions (LlavaOutput.replay)
        to these inputs, that prompt grown by tokens. `cache_reserve`: room in the cache for that many tokens to be
        decoded. `attention_layers`: also return those decoder layers' attention probabilities, fp32, every row or
        (`attention_rows="last"`) the last query's (LlamaDecoder.forward)."""
        pruning = None
        pruners = llm_parts(self.pruning)
        if pruners and any(inputs.spans):
            pruning = StagedPruning(pruners, inputs.spans, inputs.key_mask, replay)
        out = self.language_model(inputs.embeds, inputs.key_mask, inputs.positions, None, pruning, use_cache,
                                  attention_layers, attention_rows, cache_reserve)
        hidden = out.hidden if all_logits else out.hidden[:, -1:]
        # A fresh PruneStats per forward: the cache-free decoding paths call this again on grown inputs.
        stats = dataclasses.replace(inputs.stats)
        num_layers = self.config.text.num_layers
        if pruning is None:
            stats.seq_lens = [[n] * num_layers for n in inputs.key_mask.sum(dim=1).tolist()]
            return LlavaOutput(self.lm_head(hidden), out.key_mask, out.cache, None, stats, out.attention)
        pruning.fill_stats(stats, num_layers)
        return LlavaOutput(self.lm_head(hidden), out.key_mask, out.cache, pruning.keep_mask(), stats, out.attention,
                           pruning.replay_record)

    def forward(
        self,
        prompts: list[list[int]],
        images: torch.Tensor | list[AnyresImage] | None = None,
        use_cache: bool = True,
        all_logits: bool = False,
        videos: torch.Tensor | list[torch.Tensor] | None = None,
    ) -> LlavaOutput:
        return self.forward_inputs(self.prepare_inputs(prompts, images, videos), use_cache, all_logits)

    def decode(self, tokens: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """tokens (B, Q) appended after `cache` -> logits (B, Q, V) and the grown cache."""
        B, Q = tokens.shape
        embeds = self.language_model.embed_tokens(tokens)  # (B, Q, D)
        key_mask = torch.ones(B, Q, dtype=torch.bool, device=tokens.device)
        positions = cache.next_position[:, None] + torch.arange(Q, device=tokens.device)  # (B, Q)
        out = self.language_model(embeds, key_mask, positions, cache)
        return self.lm_head(out.hidden), out.cache
