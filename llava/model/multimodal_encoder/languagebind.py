"""LanguageBind's video tower with temporal attention, as the original Video-LLaVA runs it.

Reproduces, at inference, the vision model of LanguageBind's `languagebind/video/modeling_video.py`
(PKU-YuanGroup/LanguageBind; Video-LLaVA ships the same file) loaded from `LanguageBind_Video_merge`
(its LoRA folded into the weights). It is CLIP's ViT (clip_encoder.py) whose every encoder layer, with the
config's `add_time_attn`, runs a temporal step before the usual spatial attention and MLP. For the T frames of
one video, with x (T, N, D) the layer's input (N = CLS + patches):

    x = x + temporal_embedding[t]                      to every token of frame t, CLS included (only when T > 1)
    x = x + temporal_attn(temporal_layer_norm1(x))     each token position attends over its T frames, CLS included
    x = x + self_attn(layer_norm1(x))                  spatial attention within each frame, as CLIP
    x = x + mlp(layer_norm2(x))

The temporal embedding is added to the residual stream itself, as released: the temporal step's residual
already holds it, and every later layer sees it. The temporal attention is a CLIP attention (its own q/k/v/out
projections, no mask) over sequences of T tokens. The attention a layer exposes (the probe FasterVLM reads) is
the **spatial** one: the released layer returns the spatial weights (the temporal call's are overwritten), so
on the original checkpoint FasterVLM's [CLS] row is spatial attention within a frame whose inputs have already
mixed across frames.

Not reproduced (training only, or unused by Video-LLaVA): PatchDropout (`force_patch_dropout` acts in training
only), LoRA (the merge folder has it folded in), the pooled output and the projection to LanguageBind's
joint space.

transformers' Video-LLaVA port (`-hf` weights) has none of the temporal parts: with
`temporal_attention=False` this tower is our CLIP tower run frame by frame, the port's video tower.

Where this file sits among the others, and one request's path through them: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from llava.model.multimodal_encoder.clip_encoder import (
    VISION_PRESETS,
    AttentionProbe,
    CLIPAttention,
    CLIPEncoderLayer,
    CLIPVisionTower,
    VisionConfig,
    VisionOutput,
)


@dataclass(frozen=True)
class VideoTowerConfig:
    vision: VisionConfig = field(default_factory=lambda: VISION_PRESETS["clip-vit-large-patch14"])
    num_frames: int = 8  # LanguageBind's num_frames: the frames of one video, and the rows of temporal_embedding
    temporal_attention: bool = True  # LanguageBind's add_time_attn; False = transformers' frame-wise CLIP


class LanguageBindEncoderLayer(CLIPEncoderLayer):
    """CLIP's encoder layer with LanguageBind's temporal step in front. Parameter names are LanguageBind's:
    `temporal_embedding` (1, T, D), `temporal_layer_norm1`, `temporal_attn`, then CLIP's."""

    def __init__(self, config: VisionConfig, num_frames: int):
        super().__init__(config)
        self.num_frames = num_frames
        self.temporal_embedding = nn.Parameter(torch.zeros(1, num_frames, config.hidden_size))
        self.temporal_layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.temporal_attn = CLIPAttention(config)

    def forward(self, x: torch.Tensor, probe: bool = False) -> tuple[torch.Tensor, AttentionProbe | None]:
        """x (V*T, N, D): the frames of each video consecutive. The probe is the spatial attention's."""
        return super().forward(self.temporal(x), probe)

    def probe(self, x: torch.Tensor) -> AttentionProbe:
        return super().probe(self.temporal(x))

    def temporal(self, x: torch.Tensor) -> torch.Tensor:
        """The temporal embedding and temporal attention with its residual: (V*T, N, D) -> (V*T, N, D)."""
        frames, N, D = x.shape
        T = self.num_frames
        x = x.view(frames // T, T, N, D)  # (V, T, N, D)
        if T != 1:  # as released: one frame gets no temporal embedding (its attention still runs)
            x = x + self.temporal_embedding[0, :, None, :]  # (T, 1, D): frame t's row to each of its tokens
        sequences = self.temporal_layer_norm1(x).transpose(1, 2).reshape(-1, T, D)  # (V*N, T, D)
        mixed, _ = self.temporal_attn(sequences, probe=False)  # (V*N, T, D)
        x = x + mixed.view(frames // T, N, T, D).transpose(1, 2)  # (V, T, N, D)
        return x.reshape(frames, N, D)


class LanguageBindVideoTower(CLIPVisionTower):
    """A video's frames through CLIP's tower with LanguageBind's temporal attention in every layer (or without,
    `temporal_attention=False`). Parameter names follow LanguageBind's `vision_model` (= CLIP's + temporal)."""

    def __init__(self, config: VideoTowerConfig):
        layer = partial(LanguageBindEncoderLayer, num_frames=config.num_frames) if config.temporal_attention else CLIPEncoderLayer
        super().__init__(config.vision, layer=layer)
        self.video_config = config

    def forward(
        self, pixel_values: torch.Tensor, select_layer: int = -2, attention_layers: tuple[int, ...] = ()
    ) -> VisionOutput:
        """pixel_values (V*T, 3, S, S): the frames of V videos, each video's T = num_frames frames consecutive (the
        release's '(b t)' order) -> CLIPVisionTower's output, row v*T + t frame t of video v: features (V*T, P, D),
        cls_features (V*T, D), probes' cls_attention (V*T, H, P). A drop-in for CLIPVisionTower on frames."""
        frames, T = pixel_values.shape[0], self.video_config.num_frames
        if self.video_config.temporal_attention and frames % T:
            raise ValueError(f"the video tower takes {T} frames per video, got {frames} frames")
        return super().forward(pixel_values, select_layer, attention_layers)
