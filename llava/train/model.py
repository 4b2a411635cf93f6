"""The model as it trains: our LlavaForCausalLM plus what the training losses read, and the
training-only heads (never saved in the exported checkpoint)."""

from __future__ import annotations

import math

import torch
from torch import nn

from llava.model.llava_arch import LlavaForCausalLM
from llava.train.data import CLS_LABELS, DIGIT_SLOTS, NUM_COLORS, NUM_SHAPES, NUMBER_CLASS, OCR_CHARS, OCR_COLUMNS


class TrainableLlava(LlavaForCausalLM):
    """LlavaForCausalLM whose image encoding also keeps each view's final CLS and select-layer patches.

    Same parameters (and names) as the parent: `state_dict()` is the checkpoint.
    With `token_drop` > 0, each training view keeps, with that probability,
    its `foreground` tokens (objects and text, a (views, P) mask the training
    loop sets before each forward) and a random share (0-100%) of the rest, in
    order. The decoder then sees images of many lengths and cannot key on
    where the image ends (the shortcut that made the first shipped model
    fragile to pruning before the LLM), while every question stays answerable:
    dropping the objects too turned a fifth of the answers into noise and
    stalled the decoder. Without a mask, any token may go (at least one stays).
    On LLaVA-NeXT the kept tokens of each view go through the stock layout
    (`_lay_out`), as a pre-LLM pruning method's would.
    """

    token_drop: float = 0.0
    foreground: torch.Tensor | None = None
    video_token_drop: float = 0.0
    frame_foreground: torch.Tensor | None = None
    last_inputs = None  # the last training forward's MultimodalInputs (spans say where each image went)
    aux_outputs = None  # (final CLS (V, Dv), select-layer patches (V, P, Dv), projected (V, P, D)) of its views
    attention_input = None  # set by capture_attention_input
    decoder_hidden = None  # set by capture_decoder_hidden

    def prepare_inputs(self, prompts, images, videos=None):
        inputs = super().prepare_inputs(prompts, images, videos)
        if self.training:
            self.last_inputs = inputs
        return inputs

    def encode_frames(self, pixel_values):
        """Video-LLaVA's frames; in training with `video_token_drop` > 0, each frame keeps, with that probability,
        its [CLS], its `frame_foreground` patches ((frames, P) bool, set by the loop) and a random share u**4 (u
        uniform: a fifth on average) of the rest, in order (as `token_drop` does for an image view). A whole
        video is 8 x 145 tokens: most training videos come out a quarter as long, which is what makes the
        recipe fit an hour on a CPU, and the decoder sees videos of every length between."""
        features, indices = super().encode_frames(pixel_values)
        if not self.training or self.video_token_drop <= 0:
            return features, indices
        kept_features, kept_indices = [], []
        for tokens, index, always in zip(features, indices, self.frame_foreground):
            if torch.rand(()) < self.video_token_drop:
                patch = index.clamp(min=0)
                fixed = (index < 0) | always.to(index.device)[patch]  # CLS and the foreground
                rest = (~fixed).nonzero().flatten()
                count = round(float(torch.rand(())) ** 4 * len(rest))
                keep = torch.cat([fixed.nonzero().flatten(), rest[torch.randperm(len(rest))[:count]]]).sort().values
                tokens, index = tokens[keep], index[keep]
            kept_features.append(tokens)
            kept_indices.append(index)
        return kept_features, kept_indices

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
        V, P = features.shape[:2]
        foreground = self.foreground if self.foreground is not None else torch.zeros(V, P, dtype=torch.bool)
        views, indices = [], []
        for tokens, always in zip(projected, foreground):
            keep = torch.arange(P, device=tokens.device)
            if self.token_drop > 0 and torch.rand(()) < self.token_drop:
                rest = (~always).nonzero().flatten()
                share = float(torch.rand(()))
                count = max(round(share * len(rest)), 0 if always.any() else 1)
                kept = rest[torch.randperm(len(rest))[:count]]
                keep = torch.cat([always.nonzero().flatten(), kept]).sort().values.to(tokens.device)
            views.append(tokens[keep])
            indices.append(keep)
        return views, indices


class AuxHeads(nn.Module):
    """The auxiliary heads on the vision tower's outputs; with `frames` > 0 (the video recipe), also the frame
    head on the decoder's hidden states (`decoder_width` wide), which names the frame of each video token."""

    def __init__(self, width: int, grid: int, decoder_width: int = 0, frames: int = 0):
        super().__init__()
        if frames:
            self.frame = nn.Sequential(nn.LayerNorm(decoder_width), nn.Linear(decoder_width, frames))
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
    - LLaVA-NeXT's image_newline keeps its N(0, 1/D) start (LlavaForCausalLM's, as LLaVA-NeXT's).
    """
    for name, p in model.named_parameters():
        if p.dim() < 2 or "embedding" in name or "embed_tokens" in name:
            continue
        if name.startswith("mm_projector."):
            gain = math.sqrt(2.0) if name.startswith("mm_projector.2.") else 1.0
            nn.init.normal_(p, std=gain / math.sqrt(p.shape[1]))
        else:
            nn.init.normal_(p, std=0.02)


def capture_attention_input(model: TrainableLlava, layer: int) -> None:
    """Keep what decoder layer `layer`'s attention receives (normed input, rope cos and sin) as
    `model.attention_input`, for the grounding and copy losses."""
    def hook(_module, args):
        if model.training:
            model.attention_input = args[:3]

    model.language_model.layers[layer].self_attn.register_forward_pre_hook(hook)


def capture_decoder_hidden(model: TrainableLlava, layer: int) -> None:
    """Keep decoder layer `layer`'s output hidden states (B, N, D) as `model.decoder_hidden`, for the frame loss."""
    def hook(_module, _args, output):
        if model.training:
            model.decoder_hidden = output[0]

    model.language_model.layers[layer].register_forward_hook(hook)
