"""VisionZip (Yang et al., arXiv 2412.04467, CVPR 2025): keep the [CLS] token and the patches it attends to
most ("dominant"), and merge the rest into a few "contextual" tokens (METHODS-NEWER.md, "VisionZip").

Arguments: `dominant` D and `contextual` C, or their total `keep`; an image enters the LLM as D + C tokens.
Paper budgets (LLaVA-1.5): 64 = 54 + 10 (the README's example and our default), 128 = 108 + 20, 192 = 162 + 30;
the release's function default 191 + 30 is no paper budget. `keep=N` splits N as the paper's three budgets do
(54 : 10): D = round(N x 54 / 64) (Python's round, half to even; at least 1), C = N - D; so keep=64|128|192 are
exactly the paper's splits, and `dominant`/`contextual` name any other split.

The rule, per image, on the select layer (the layer LLaVA feeds the LLM, layer 22 of 24 for LLaVA-1.5):

- **D counts the [CLS] token** (the release passes D - 1 to its selection): the [CLS] row over the
  patches, summed over heads, and its top D - 1 patches (ties towards the lower index; the release's fp16
  `topk` leaves them unspecified). Dominant block = the [CLS] token's feature, then the dominant patches
  in raster order (the release's mask over the 1 + P positions).
- Contextual tokens: the M = P - (D - 1) remaining patches in raster order. Similarity features = the
  layer's keys (k_proj of layer_norm1 of the layer's input, the probe's keys) averaged over heads,
  L2-normalised. Targets = positions arange(0, M, max(1, M // C))[:C] of the remaining list (uniform in
  index, not in space: D = 54, C = 10 on 576 patches gives M = 523, step 52, targets 0, 52, ..., 468).
  Every other remaining patch joins the target of largest cosine (argmax: ties to the first target).
  contextual_j = feature(target_j) + mean(features of its members), the count clamped to 1. Code-faithful:
  the target plus the mean of its members, not the average of the group with the target in it; a target
  with no member keeps its own feature.
- Output, before the projector: [CLS, dominant patches in raster order, contextual tokens in target order].
  Kept indices: -1 for [CLS] (no patch), each contextual token its target patch's index.

Where the release is silent or crashes: C = 0 keeps the dominant block alone (the release divides by C);
D = 1 keeps [CLS] and no patch. Scores, cosines and the merge are computed in float32 (the release: fp16)
and cast back to the features' dtype; only near-ties can differ.

LLaVA-NeXT (the release's `spatial_unpad` path): the base view and every crop select their own D + C as
above, and an image enters the LLM as P (D + C) tokens, P = 1 + rows x cols views, packed (`packing=release`,
the default) as

    [base: CLS, dominant patches, contextual tokens]
    + [the crops' dominant patches placed back on the stitched (rows x side, cols x side) grid and read in its
       raster order: no unpad, no image_newline (the release builds the newline tensor and never uses it)]
    + [CLS of crop 1 .. P - 1] + [contextual tokens of crop 1 .. P - 1, crop by crop].

The release reads no merge setting beyond `unpad`, so the same packing serves a model run with the `spatial`
merge (whose crop order is that stitched raster anyway). `packing=stock` changes the crop block only: the
crops' dominant patches in the model's own merge (`spatial_unpad`: the stitched grid cut to the image's aspect
ratio, an image_newline token after each row; a dominant patch in the padding is dropped, as every method's
kept patches are under the `merge` packing), so that every patch token sits where the checkpoint was trained
to see it; the base view's block, the crops' [CLS] tokens and contextual tokens stay where the release puts
them (the [CLS] and contextual tokens have no place in the grid: before and after it, as in the base view's
block). An image then enters with P (D + C) tokens, less its dominant patches in the padding, plus its
newline tokens. `packing=stock` is refused on LLaVA-1.5, whose one view has nothing to stitch.

Bookkeeping (VisualSpan): every token carries its view as its partition; a [CLS] token has patch index -1, a
contextual token its target patch's index (as on LLaVA-1.5), a dominant patch its own.

Video-LLaVA: each frame selects its own D + C as an image, entering as [CLS, dominant patches, contextual tokens].
Its [CLS] is the frame's own (FRAME_CLS in the bookkeeping): under video_cls=keep the model already puts it in front
of what `select` keeps, so `select` leaves it out; under video_cls=drop `select` keeps it, as the release keeps an
image's. A frame brings D + C tokens either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from llava.errors import InputError
from llava.model.pruning.base import FRAME_CLS, NEWLINE, Kept, MethodArgs, VisionInputs, VisionPruner, top_k_indices
from llava.model.pruning.registry import register

CLS = -1  # kept index of the [CLS] token, which is no patch


@dataclass(frozen=True)
class VisionZipArgs(MethodArgs):
    dominant: int | None = None  # D: the [CLS] token and the D - 1 patches it attends to most (default 54)
    contextual: int | None = None  # C: merged tokens made from the remaining patches (default 10)
    keep: int | None = None  # D + C, split as the paper's budgets (`split`): 64 = 54 + 10, 128 = 108 + 20, ...
    packing: Literal["release", "stock"] = "release"  # LLaVA-NeXT: crops' dominant patches as released / model's merge

    def __post_init__(self):
        if self.keep is not None and (self.dominant is not None or self.contextual is not None):
            raise InputError("visionzip takes keep=N (split 54 : 10 as the paper's budgets) or dominant=D,contextual=C,"
                             " not both")
        if self.keep is not None and self.keep < 1:
            raise InputError(f"visionzip:keep must be at least 1 (every method keeps at least one visual token of an"
                             f" image), got {self.keep}")
        dominant, contextual = self.counts
        if dominant < 1:
            raise InputError(f"visionzip:dominant must be at least 1 (it counts the [CLS] token), got {dominant}")
        if contextual < 0:
            raise InputError(f"visionzip:contextual must be at least 0, got {contextual}")

    @property
    def counts(self) -> tuple[int, int]:
        """(D, C) as given, or `keep` split 54 : 10, or the default 54 + 10."""
        if self.keep is not None:
            return split(self.keep)
        return (54 if self.dominant is None else self.dominant, 10 if self.contextual is None else self.contextual)


def split(keep: int) -> tuple[int, int]:
    """A total split as the paper's budgets (64 = 54 + 10, 128 = 108 + 20, 192 = 162 + 30): D = round(keep x 54 / 64),
    at least 1, C = keep - D."""
    dominant = max(1, round(keep * 54 / 64))
    return dominant, keep - dominant


def dominant_patches(cls_attention: torch.Tensor, count: int) -> torch.Tensor:
    """cls_attention (H, P) -> the `count` patches of the largest head-summed [CLS] attention, in raster order."""
    return top_k_indices(cls_attention.float().sum(dim=0), count)


def target_positions(remaining: int, contextual: int) -> torch.Tensor:
    """Positions of the C targets within the remaining list of M tokens: arange(0, M, max(1, M // C))[:C]."""
    if contextual == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.arange(0, remaining, max(1, remaining // contextual))[:contextual]


def contextual_tokens(features: torch.Tensor, metric: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """features (M, D), metric (M, d) of the remaining tokens, targets (C,) positions among them -> (C, D)
    float32: each target's feature plus the mean feature of the non-targets whose most cosine-similar target
    it is (argmax, ties to the first target)."""
    if len(targets) == 0:  # C = 0: nothing to merge into (the release divides by C)
        return features.new_zeros(0, features.shape[-1], dtype=torch.float32)
    normed = F.normalize(metric.float(), dim=-1)  # (M, d)
    is_target = torch.zeros(len(features), dtype=torch.bool, device=features.device)
    is_target[targets] = True
    members = (~is_target).nonzero()[:, 0]  # (M - C,)
    choice = (normed[members] @ normed[targets].T).argmax(dim=-1)  # (M - C,): index into targets, first of ties
    sums = torch.zeros(len(targets), features.shape[-1], device=features.device)
    sums.index_add_(0, choice, features[members].float())  # (C, D)
    counts = torch.bincount(choice, minlength=len(targets)).clamp(min=1)  # (C,)
    return features[targets].float() + sums / counts[:, None]  # code-faithful: target + mean of members


@register
class VisionZip(VisionPruner):
    """`dominant=54,contextual=10`: 64 tokens, the paper's smallest LLaVA-1.5 budget; on LLaVA-NeXT, 64 per view."""

    name = "visionzip"
    Args = VisionZipArgs
    summary = ("pre-LLM: [CLS] and the patches it attends to most, plus the rest merged into contextual tokens;"
               " keep=N splits as the paper, D = round(N x 54 / 64), C = N - D")
    reads_attention = True
    packing = "own"  # LLaVA-NeXT: `pack` lays an image's views out (the module docstring)

    def attention_layers(self, vision_layers: int, select_layer: int) -> tuple[int, ...]:
        return (select_layer,)

    def validate(self, vision_layers: int, llm_layers: int, tokens_per_image: int, anyres: bool = False) -> None:
        if not anyres and self.args.packing != "release":
            raise InputError("visionzip:packing lays out a LLaVA-NeXT image's crops; this LLaVA-1.5 model has one view"
                             " per image (leave packing out)")
        self._check_counts(tokens_per_image, "each image" if not anyres else "each view")

    def _check_counts(self, patches: int, what: str) -> None:
        dominant, contextual = self.args.counts
        if dominant - 1 > patches:
            raise InputError(f"visionzip:dominant={dominant} is more than [CLS] and the {patches} patches of {what}")
        if contextual > patches - (dominant - 1):
            raise InputError(f"visionzip:contextual={contextual} is more than the {patches - (dominant - 1)} patches"
                             f" that dominant={dominant} leaves in {what}")

    def budget(self, tokens_per_image: int) -> int:
        return sum(self.args.counts)

    def select(self, inputs: VisionInputs) -> Kept:
        features = inputs.features  # (P, D) the select layer's patch features, before the projector
        patches = features.shape[0]
        self._check_counts(patches, f"image {inputs.image_index}")
        (layer,) = inputs.cls_attention
        cls_attention = inputs.cls_attention[layer]  # (H, P)
        heads = cls_attention.shape[0]
        dominant = dominant_patches(cls_attention, self.args.counts[0] - 1)  # (D - 1,)
        is_dominant = torch.zeros(patches, dtype=torch.bool, device=features.device)
        is_dominant[dominant] = True
        remaining = (~is_dominant).nonzero()[:, 0]  # (M,) raster order
        keys = inputs.keys[layer][1:]  # (P, Dv) patch keys
        metric = keys.reshape(patches, heads, -1).float().mean(dim=1)  # (P, hd): averaged over heads
        targets = target_positions(len(remaining), self.args.counts[1]).to(features.device)  # (C,)
        merged = contextual_tokens(features[remaining], metric[remaining], targets)  # (C, Dv)
        cls = inputs.cls_feature[None].float()  # (1, Dv)
        out = torch.cat([cls, features[dominant].float(), merged]).to(features.dtype)  # (D + C, Dv)
        indices = torch.cat([dominant.new_full((1,), CLS), dominant, remaining[targets]])
        if inputs.video_cls == "keep":  # a video frame whose [CLS] the model puts in front itself
            return Kept(indices=indices[1:], features=out[1:])
        if inputs.video_cls == "drop":  # the frame's own [CLS], as the model would mark it
            indices[0] = FRAME_CLS
        return Kept(indices=indices, features=out)

    def pack(self, indices: list[torch.Tensor], merged: torch.Tensor, stitched: torch.Tensor) -> torch.Tensor:
        """A NeXT image's views, each kept as [CLS, D - 1 dominant patches, C contextual tokens] (`select`) -> (T, 2)
        (view, row) in the order the module docstring gives for `packing`."""
        dominant, contextual = self.args.counts
        views = len(indices)
        crops = torch.arange(1, views)  # (P - 1,)
        # Where the crops' patches go: release, the stitched grid's raster; stock, the model's merge after the base.
        grid = merged[merged[:, 0] != 0] if self.args.packing == "stock" else stitched  # (S, 2) (partition, patch)
        crop_dominant = torch.stack(indices[1:])[:, 1:dominant]  # (P - 1, D - 1) patch of each crop's dominant row
        patches = 1 + int(torch.cat([grid[:, 1], crop_dominant.flatten()]).max())
        row_of = torch.full((views, patches), -1)  # (view, patch) -> its row, for dominant patches
        row_of[crops[:, None], crop_dominant] = torch.arange(1, dominant)
        newline = grid[:, 0] == NEWLINE
        rows = torch.full((len(grid),), NEWLINE)
        rows[~newline] = row_of[grid[~newline, 0], grid[~newline, 1]]
        kept = newline | (rows >= 0)  # (S,): newline tokens (stock) and dominant patches
        base_rows = torch.arange(dominant + contextual)
        base = torch.stack([torch.zeros_like(base_rows), base_rows], dim=-1)  # [CLS], dominant, contextual
        crop_cls = torch.stack([crops, torch.zeros_like(crops)], dim=-1)
        contextual_rows = torch.arange(dominant, dominant + contextual)
        crop_contextual = torch.stack([crops.repeat_interleave(contextual), contextual_rows.repeat(views - 1)], dim=-1)
        return torch.cat([base, torch.stack([grid[kept, 0], rows[kept]], dim=-1), crop_cls, crop_contextual])
