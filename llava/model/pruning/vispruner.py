"""VisPruner (Zhang et al., arXiv 2412.01818 v2, ICCV 2025; FasterVLM's successor): keep the patches the
vision encoder's [CLS] attends to most, then a diverse set of the rest (METHODS-NEWER.md, "VisPruner").

Of the `keep` = T tokens of an image (of a partition on LLaVA-NeXT), T_imp = int(T r) are *important* and
T_div = T - T_imp *diverse*, r = `important_ratio`:

- important: the select layer's [CLS] row over the patches (the layer LLaVA feeds the LLM, layer 22 of 24
  for LLaVA-1.5), mean over heads; the first T_imp of the patches in descending order. The release's
  argsort leaves the order of ties unspecified; ours is stable, so ties go to the lower index
  (`top_k_indices`'s rule).
- diverse: the rest of that descending order is the residual list; the features are the select layer's
  patch features (before the projector), L2-normalised. While R = len(residual) > T_div, a ToMe-style
  bipartite round: r_step = min(8, R - T_div); a = the list's even positions, b = its odd ones; s = each
  a's largest cosine to any b; the r_step a's of largest s go (a stable descending sort, so ties drop
  the earlier a); the next list is the surviving a's in descending-s order, then all the b's. A round
  drops at most len(a) tokens (the release's `[r_step:]` slice of the sorted a's), so the loop still
  ends at T_div.
- kept: important and residual together, in raster order (the release's boolean mask).

Where the release is silent: T_div = 0 (`important_ratio=1`) keeps no diverse token (the loop would end
on an empty b, whose max does not exist); T_div = R runs no round, so keep = all patches keeps them all.
Scores and cosines are computed in float32 (the release: fp16), as the project's FasterVLM computes its
[CLS] row; only near-ties can differ.

LLaVA-NeXT: every partition (base view and crops) keeps its own T by its own [CLS] row. The release forces
the `spatial` merge (base, then the crops in stitched raster order, no unpad, no newline): FasterVLM's
protocol, chosen as for FasterVLM with the model's patch merge (`--patch-merge spatial`); this file packs
nothing itself. Selecting before the projector is equivalent to the release's masking after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llava.errors import InputError
from llava.model.pruning.base import KeepArgs, KeepBudgetPruner, Kept, VisionInputs
from llava.model.pruning.registry import register

ROUND = 8  # tokens dropped per bipartite round (the release's fixed r)


@dataclass(frozen=True)
class VisPrunerArgs(KeepArgs):
    important_ratio: float = 0.5  # r: share of `keep` chosen by [CLS] attention; T_imp = int(keep * r)

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.important_ratio <= 1:
            raise InputError(f"vispruner:important_ratio must be in [0, 1], got {self.important_ratio}")


def important_and_residual(cls_attention: torch.Tensor, important: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cls_attention (H, P) -> the first `important` patches of the descending head-mean order, and the rest
    in that order (ties towards the lower index)."""
    scores = cls_attention.float().mean(dim=0)  # (P,)
    order = torch.sort(scores, descending=True, stable=True).indices  # (P,)
    return order[:important], order[important:]


def bipartite_rounds(residual: torch.Tensor, features: torch.Tensor, target: int) -> list[torch.Tensor]:
    """The residual list (R,) of patch indices after each round, the first entry the list itself, until at
    most `target` are left; features (P, D) are the patches' features (normalised here)."""
    if target == 0:
        return [residual, residual[:0]]
    normed = F.normalize(features.float(), dim=-1)  # (P, D)
    cosine = normed @ normed.T  # (P, P) once: each round only reads its a x b block (one matmul, not one per round)
    lists = [residual]
    while len(residual) > target:
        step = min(ROUND, len(residual) - target)
        a, b = residual[0::2], residual[1::2]  # (Ra,), (Rb,)
        similarity = cosine[a[:, None], b[None, :]].max(dim=-1).values  # (Ra,)
        order = torch.sort(similarity, descending=True, stable=True).indices  # (Ra,)
        residual = torch.cat([a[order[step:]], b])
        lists.append(residual)
    return lists


@register
class VisPruner(KeepBudgetPruner):
    """`keep`: 128 with important_ratio 0.5, or 64 with 0.75 (the README's examples); per partition on NeXT."""

    name = "vispruner"
    Args = VisPrunerArgs
    summary = "pre-LLM: the patches [CLS] attends to most (select layer), plus a diverse set of the rest"
    reads_attention = True

    def attention_layers(self, vision_layers: int, select_layer: int) -> tuple[int, ...]:
        return (select_layer,)

    def select(self, inputs: VisionInputs) -> Kept:
        self.patch_count(inputs)
        (cls_attention,) = inputs.cls_attention.values()  # (H, P)
        important_count = int(self.args.keep * self.args.important_ratio)
        important, residual = important_and_residual(cls_attention, important_count)
        diverse = bipartite_rounds(residual, inputs.features, self.args.keep - important_count)[-1]
        return Kept(indices=torch.cat([important, diverse]).sort().values)
