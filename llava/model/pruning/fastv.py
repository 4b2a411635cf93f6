"""FastV (Chen et al., arXiv 2403.06764): drop the image tokens the last token attends to least.

Score of image token i = mean over heads of the attention probability from the
last query token to token i at layer k-1 (fp32, causal softmax over all keys).
Per image, the top `keep` tokens stay (ties towards the lower index), in their
original order; text and system tokens always stay. Layers k.. see the kept set.
The model's seam also keeps each sample's last real token (the query that ranks),
outside the budget: when a prompt ends in `<image>` and that token is not in the
top `keep`, its span keeps `keep + 1` tokens, and `PruneStats.kept_in_llm` says so.

LLaVA-NeXT: an image's span covers all its visual tokens; its image_newline
tokens always stay and are not counted. `keep` is per partition (base view or
crop, as the v1_6 scripts' budget), so an image keeps keep x partitions tokens,
chosen by score over the whole image, or all of them when unpadding left it
fewer; `ratio` applies to its non-newline tokens.

Video (Video-LLaVA, VIDEO.md R2): the whole video is one span of N tokens (its frames' [CLS] tokens included
under video_cls=keep, ranked like any token) and one global top-`keep`, or round(N (1 - R)), is chosen over it,
with no per-frame quota: a frame may lose every token. `keep` counts tokens of the span, not per frame.

FastV is one stage of the in-LLM seam (base.LayerPruner), before layer k, with
original position ids kept. The model computes the attention row (one query,
O(N d)) and gathers the kept tokens; this file holds only the rule. Batches: each sample is scored on its own
row (the released code used row 0 for the whole batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from llava.errors import InputError
from llava.model.pruning.base import (
    LayerPruner,
    MethodArgs,
    SpanCut,
    StageView,
    VisualSpan,
    check_budget,
    check_keep,
    top_k_indices,
)
from llava.model.pruning.registry import register


@dataclass(frozen=True)
class FastVArgs(MethodArgs):
    k: int = 2  # prune before decoder layer k, scoring with layer k-1's attention
    keep: int | None = None  # image tokens kept per image (NeXT: per partition; a video: over its span)
    ratio: float | None = None  # fraction of image tokens dropped (FastV's R); kept = round(L * (1 - R))
    mode: Literal["inplace", "mask"] = "inplace"
    reselect_every_step: bool = False  # no KV cache: re-prune at every decoding step, as the released code

    def __post_init__(self):
        if (self.keep is None) == (self.ratio is None):
            raise InputError("fastv needs exactly one budget: keep=N (image tokens kept) or ratio=R (fraction dropped)")
        if self.keep is not None:
            check_keep(self.keep, "fastv:keep")
        if self.ratio is not None and not 0.0 <= self.ratio <= 1.0:
            raise InputError(f"fastv:ratio is the fraction dropped and must be in [0, 1], got {self.ratio}")
        if self.ratio == 1.0:
            raise InputError("fastv:ratio=1 drops every image token; every method keeps at least one (use a ratio below 1)")
        if self.k < 1:
            raise InputError(f"fastv:k={self.k} must be at least 1")


@register
class FastV(LayerPruner):
    name = "fastv"
    Args = FastVArgs
    summary = "in-LLM: after layer k-1, keep the image tokens the last token attends to most"
    reads_question = True  # its query row, the prompt's last token, has seen the question

    @property
    def layers(self) -> tuple[int, ...]:
        return (self.args.k,)

    @property
    def mode(self) -> str:
        return self.args.mode

    @property
    def reselect_every_step(self) -> bool:
        return self.args.reselect_every_step

    def validate(self, vision_layers: int, llm_layers: int, tokens_per_image: int, anyres: bool = False) -> None:
        if not 1 <= self.args.k <= llm_layers - 1:
            raise InputError(f"fastv:k={self.args.k} is outside 1..{llm_layers - 1} for this {llm_layers}-layer LLM")
        if self.args.keep is not None:
            check_budget(self.args.keep, tokens_per_image, "each image")

    def kept_count(self, length: int, partitions: int = 1) -> int:
        """Tokens kept of an image of `length` candidates (newline tokens not counted) in `partitions` views."""
        if self.args.ratio is not None:
            return round(length * (1 - self.args.ratio))
        return self.args.keep * partitions

    def budget(self, tokens_per_image: int) -> int:
        return self.kept_count(tokens_per_image)

    def stage_budget(self, tokens: int) -> list[int]:
        return [self.kept_count(tokens)]

    def cut(self, view: StageView) -> list[SpanCut]:
        row = view.attention(torch.tensor([view.last_row], device=view.key_mask.device))[:, 0]  # (H, N)
        return [SpanCut(keep) for keep in self.select(row, view.spans)]

    def select(self, attention: torch.Tensor, spans: list[VisualSpan]) -> list[torch.Tensor]:
        """attention (H, N) fp32: the last query's row at layer k-1 -> per span, sorted local indices kept."""
        scores = attention.mean(dim=0)  # (N,) mean over heads
        kept = []
        for number, span in enumerate(spans):
            newline = span.newline
            candidates = (~newline).nonzero()[:, 0]
            views = 1 if span.frames else span.partitions  # a video's keep counts over its span, not per frame
            keep = self.kept_count(len(candidates), views)
            if views > 1:  # spatial_unpad may leave fewer than keep x partitions tokens
                keep = min(keep, len(candidates))
            what = f"the video (visual input {number} of the sample)" if span.frames else f"image {number} of the sample"
            check_budget(keep, len(candidates), what)
            chosen = candidates[top_k_indices(scores[span.start : span.end][candidates], keep)]
            kept.append(torch.cat([chosen, newline.nonzero()[:, 0]]).sort().values)
        return kept
