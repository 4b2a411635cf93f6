"""LLaVA-1.5 (Liu et al., "Improved Baselines with Visual Instruction Tuning"): the glue.

CLIP ViT -> (pre-LLM pruning seam) -> projector -> spliced into the text
embeddings at each `<image>` placeholder (-200 in the input ids, LLaVA's
convention) -> Llama decoder (with the in-LLM pruning seam) -> lm_head.

Reproduces transformers' `LlavaForConditionalGeneration` with pruning off (tested
to 1e-4 in fp32). Records a `VisualSpan` per image (where its tokens sit and
which patches they are) and `PruneStats` per forward, so nothing downstream
hard-codes 576.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from llava.constants import IMAGE_TOKEN_INDEX
from llava.errors import InputError
from llava.model.language_model.llava_llama import LLAMA_PRESETS, KVCache, LlamaConfig, LlamaDecoder
from llava.model.multimodal_encoder.clip_encoder import VISION_PRESETS, CLIPVisionTower, VisionConfig
from llava.model.multimodal_projector import build_projector
from llava.model.pruning.base import (
    LayerPruner,
    PruneStats,
    PruningMethod,
    VisionInputs,
    VisionPruner,
    VisualSpan,
)
from llava.model.pruning.registry import parse_method



@dataclass(frozen=True)
class LlavaConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: LlamaConfig = field(default_factory=LlamaConfig)
    projector_type: str = "mlp2x_gelu"
    select_layer: int = -2  # transformers' hidden_states index fed to the LLM (CLS removed)

    @property
    def tokens_per_image(self) -> int:
        return self.vision.num_patches


LLAVA_PRESETS = {
    "llava-v1.5-7b": LlavaConfig(VISION_PRESETS["clip-vit-large-patch14-336"], LLAMA_PRESETS["vicuna-7b-v1.5"]),
    "llava-v1.5-13b": LlavaConfig(VISION_PRESETS["clip-vit-large-patch14-336"], LLAMA_PRESETS["vicuna-13b-v1.5"]),
}


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
    keep_mask: torch.Tensor | None  # (B, N) in-LLM pruning's keep set, in the input layout
    stats: PruneStats


class _SpanPruning:
    """Adapts a LayerPruner (which picks tokens inside visual spans) to the decoder's seam.

    The decoder adds each sample's last real token to whatever this returns (see InLLMPruning).
    """

    def __init__(self, pruner: LayerPruner, spans: list[list[VisualSpan]], fixed_keep: torch.Tensor | None):
        self.pruner, self.spans, self.fixed_keep = pruner, spans, fixed_keep
        self.layer, self.mode = pruner.layer, pruner.mode
        self.needs_scores = fixed_keep is None

    def keep_mask(self, attention: torch.Tensor | None, key_mask: torch.Tensor) -> torch.Tensor:
        if self.fixed_keep is not None:
            return self.fixed_keep
        keep = key_mask.clone()  # text and system tokens always stay
        for b, spans in enumerate(self.spans):
            if not spans:
                continue
            for span, local in zip(spans, self.pruner.select(attention[b], spans)):
                keep[b, span.start : span.end] = False
                keep[b, span.start + local] = True
        return keep


class LlavaForCausalLM(nn.Module):
    """Parameter names: transformers' CLIPVisionModel under `vision_tower.`, LlamaModel under
    `language_model.`, `lm_head`, and the original LLaVA's `mm_projector.{0,2}` (builder.KEY_RULES maps
    both checkpoint layouts onto these)."""

    def __init__(self, config: LlavaConfig):
        super().__init__()
        self.config = config
        self.vision_tower = CLIPVisionTower(config.vision)
        self.mm_projector = build_projector(config.projector_type, config.vision.hidden_size, config.text.hidden_size)
        self.language_model = LlamaDecoder(config.text)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        self.pruning: PruningMethod = parse_method("none")

    def set_pruning(self, method: PruningMethod | str | None) -> PruningMethod:
        """Attach a pruning method (object or spec string), validated against this model."""
        if not isinstance(method, PruningMethod):
            method = parse_method(method)
        method.validate(self.config.vision.num_layers, self.config.text.num_layers, self.config.tokens_per_image)
        self.pruning = method
        return method

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.embed_tokens.weight.dtype

    # ---- images --------------------------------------------------------------------------------

    def encode_images(self, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """pixel_values (I, 3, S, S) -> per image: projected features (T_i, D) and original patch indices (T_i,)."""
        vision = self.config.vision
        pruner = self.pruning if isinstance(self.pruning, VisionPruner) else None
        select = vision.layer_index(self.config.select_layer)
        probe_layers = pruner.attention_layers(vision.num_layers, select) if pruner else ()
        out = self.vision_tower(pixel_values.to(self.dtype), self.config.select_layer, probe_layers)
        features = out.features  # (I, P, Dv)
        all_patches = torch.arange(features.shape[1], device=features.device)
        if pruner is None:
            return list(self.mm_projector(features)), [all_patches] * features.shape[0]

        if not pruner.before_projector:
            features = self.mm_projector(features)  # (I, P, D)
        chosen, indices = [], []
        for i in range(features.shape[0]):
            inputs = VisionInputs(
                features=features[i],
                cls_attention={layer: probe.cls_attention[i] for layer, probe in out.probes.items()},
                keys={layer: probe.keys[i] for layer, probe in out.probes.items()},
                grid=(vision.grid_size, vision.grid_size),
                image_index=i,
                pixel_values=pixel_values[i],
            )
            kept = pruner.select(inputs)
            chosen.append(kept.features if kept.features is not None else features[i, kept.indices])
            indices.append(kept.indices)
        if pruner.before_projector:
            if len({c.shape for c in chosen}) == 1:
                chosen = list(self.mm_projector(torch.stack(chosen)))  # one projector call for the batch
            else:
                chosen = [self.mm_projector(c) for c in chosen]
        return chosen, indices

    # ---- splicing ------------------------------------------------------------------------------

    def prepare_inputs(self, prompts: list[list[int]], pixel_values: torch.Tensor | None) -> MultimodalInputs:
        """Token ids with -200 placeholders (one list per sample) + images in order -> a padded batch."""
        n_placeholders = sum(ids.count(IMAGE_TOKEN_INDEX) for ids in prompts)
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        if n_placeholders != n_images:
            raise InputError(f"the prompts have {n_placeholders} <image> placeholder(s) but {n_images} image(s) were given")
        if any(len(ids) == 0 for ids in prompts):
            raise InputError("empty prompt")
        vocab = self.config.text.vocab_size
        bad = sorted({t for ids in prompts for t in ids if t != IMAGE_TOKEN_INDEX and not 0 <= t < vocab})
        if bad:
            raise InputError(f"token ids {bad[:5]} are outside the vocabulary of {vocab}")
        images, patch_indices = self.encode_images(pixel_values) if n_images else ([], [])

        grid = (self.config.vision.grid_size, self.config.vision.grid_size)
        embed = self.language_model.embed_tokens
        sequences, all_spans, stats = [], [], PruneStats()
        image_iter = iter(zip(images, patch_indices))
        for ids in prompts:
            ids_tensor = torch.tensor(ids, device=self.device)
            text = embed(ids_tensor.clamp(min=0))  # (L, D); placeholder rows are replaced below
            pieces, spans, length, last = [], [], 0, 0
            for pos in (ids_tensor == IMAGE_TOKEN_INDEX).nonzero()[:, 0].tolist():
                features, index = next(image_iter)
                pieces += [text[last:pos], features.to(text.dtype)]
                length += pos - last
                spans.append(VisualSpan(start=length, length=features.shape[0], grid=grid, patch_index=index))
                length += features.shape[0]
                last = pos + 1
            pieces.append(text[last:])
            sequences.append(torch.cat(pieces))
            all_spans.append(spans)
            stats.visual_tokens.append([s.length for s in spans])
            stats.kept.append([s.patch_index.tolist() for s in spans])

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
        fixed_keep: torch.Tensor | None = None,
    ) -> LlavaOutput:
        """Prefill over spliced inputs. `fixed_keep` (B, N) replays an earlier in-LLM keep set."""
        pruning = None
        if isinstance(self.pruning, LayerPruner) and any(inputs.spans):
            pruning = _SpanPruning(self.pruning, inputs.spans, fixed_keep)
        out = self.language_model(inputs.embeds, inputs.key_mask, inputs.positions, None, pruning, use_cache)
        hidden = out.hidden if all_logits else out.hidden[:, -1:]
        # A fresh PruneStats per forward: the cache-free decoding paths call this again on grown inputs.
        stats = dataclasses.replace(inputs.stats)
        num_layers = self.config.text.num_layers
        real_before = inputs.key_mask.sum(dim=1).tolist()
        if out.keep_mask is None or pruning.mode == "mask":  # mask mode: every layer still runs on all N rows
            stats.seq_lens = [[n] * num_layers for n in real_before]
        else:
            k, real_after = pruning.layer, out.keep_mask.sum(dim=1).tolist()
            stats.seq_lens = [[n0] * k + [n1] * (num_layers - k) for n0, n1 in zip(real_before, real_after)]
        if out.keep_mask is not None:
            stats.kept_in_llm = [
                [span.patch_index[out.keep_mask[b, span.start : span.end]].tolist() for span in spans]
                for b, spans in enumerate(inputs.spans)
            ]
        return LlavaOutput(self.lm_head(hidden), out.key_mask, out.cache, out.keep_mask, stats)

    def forward(
        self,
        prompts: list[list[int]],
        pixel_values: torch.Tensor | None = None,
        use_cache: bool = True,
        all_logits: bool = False,
    ) -> LlavaOutput:
        return self.forward_inputs(self.prepare_inputs(prompts, pixel_values), use_cache, all_logits)

    def decode(self, tokens: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """tokens (B, Q) appended after `cache` -> logits (B, Q, V) and the grown cache."""
        B, Q = tokens.shape
        embeds = self.language_model.embed_tokens(tokens)  # (B, Q, D)
        key_mask = torch.ones(B, Q, dtype=torch.bool, device=tokens.device)
        positions = cache.next_position[:, None] + torch.arange(Q, device=tokens.device)  # (B, Q)
        out = self.language_model(embeds, key_mask, positions, cache)
        return self.lm_head(out.hidden), out.cache
