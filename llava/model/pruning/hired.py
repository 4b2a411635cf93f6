"""HiRED (Arif et al., arXiv 2408.10945): a fixed token budget for a high-resolution LLaVA-NeXT image,
divided across its partitions by early-layer [CLS] attention, spent inside each by final-layer [CLS]
attention (METHODS.md, "HiRED").

An image of P partitions (base view + crops) of N patches each has the budget B = floor(P N rate);
the base view gets B0 = min(floor(B alpha), N), the crops share Bc = min(B - B0, (P - 1) N). Scores are
head-summed [CLS] rows from the vision tower's probes: "layer 22" is the select layer (the layer
LLaVA feeds the LLM), "layer 0" the first; nothing is recomputed. Each partition keeps its top
quota by its own select-layer row (ties towards the lower index). Crop quotas, `split`:

- `code` (default; the released code, which produced the published numbers): mark the base view's
  top floor(N (1 - alpha)) patches by layer 0; crop i's region is the i-th of C = rows x cols equal
  consecutive bands of the base view's flat raster (its reshape to (rows, cols, -1): for a 2x2 grid,
  bands of 6 patch rows of 24; patch j is in band floor(j C / N), which is the reshape whenever C
  divides N); quota_i = int(count_i / total * Bc) in float32, clamped to N, the remainder not
  redistributed. alpha = 1 marks nothing (the release divides 0 by 0): every crop quota is 0.
- `paper`: s_i = the layer-0 score summed over the base-view patches under crop i, the crop grid laid
  over the base view in equal blocks (rows floor(r S / rows) .. floor((r + 1) S / rows), likewise
  columns, S the patch side); quota_i = floor(Bc s_i / sum s), clamped to N.

Packing: base tokens first, then crop tokens in the model's stitched and unpadded order (current
transformers', not the transposed one of the version HiRED vendored), no image_newline tokens; kept
patches that fall into the padding are dropped after selection, so an image can enter the LLM with
fewer than B tokens (PruneStats.visual_tokens and `fastv run --json` report the real count; nothing is
padded back). LLaVA-1.5 (one partition): the top floor(N rate) by the select layer's row, per image.

`rate=1` keeps every patch of every partition, as the released code does (it selects only when the rate is
below 1): the split would otherwise leave crops short, since quotas are clamped to N and the remainder is not
redistributed (one crop of a 2x2 grid lost 8 of 144 tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from llava.errors import InputError
from llava.model.pruning.base import Kept, MethodArgs, VisionInputs, VisionPruner, top_k_indices
from llava.model.pruning.registry import register


@dataclass(frozen=True)
class HiREDArgs(MethodArgs):
    rate: float = 0.2  # budget: fraction of all the image's visual tokens (P x N)
    alpha: float = 0.5  # share of the budget for the base view
    split: Literal["code", "paper"] = "code"  # how the crop pool is divided across the crops

    def __post_init__(self):
        if not 0 < self.rate <= 1:
            raise InputError(f"hired:rate must be in (0, 1], got {self.rate}")
        if not 0 <= self.alpha <= 1:
            raise InputError(f"hired:alpha must be in [0, 1], got {self.alpha}")


@register
class HiRED(VisionPruner):
    """`rate=0.2`: 20% of the visual tokens, the published budget."""

    name = "hired"
    Args = HiREDArgs
    summary = "pre-LLM: a budget shared by the crops by layer-0 [CLS] attention, spent by the select layer's (NeXT)"
    reads_attention = True
    packing = "no_newline"
    video = "refused"
    video_refusal = ("HiRED divides a LLaVA-NeXT image's budget across its crops by [CLS] attention, and a Video-LLaVA"
                     " frame has no crops (fastervlm keeps the top patches per frame)")

    def attention_layers(self, vision_layers: int, select_layer: int) -> tuple[int, ...]:
        return tuple(sorted({0, select_layer}))

    def validate(self, vision_layers: int, llm_layers: int, tokens_per_image: int, anyres: bool = False) -> None:
        defaults = HiREDArgs()
        if not anyres and (self.args.alpha, self.args.split) != (defaults.alpha, defaults.split):
            raise InputError(
                "hired:alpha and hired:split divide a LLaVA-NeXT image's budget across its crops;"
                " this LLaVA-1.5 model has one partition per image (use hired:rate alone)"
            )

    def budget(self, tokens_per_image: int) -> int:
        """LLaVA-1.5's count per image; a NeXT image's budget is floor(P N rate) over its P partitions."""
        return math.floor(tokens_per_image * self.args.rate)

    def select(self, inputs: VisionInputs) -> Kept:
        return Kept(indices=top_k_indices(_final_scores(inputs), self.budget(inputs.features.shape[0])))

    def select_image(self, views: list[VisionInputs], partition_grid: tuple[int, int]) -> list[Kept]:
        if self.args.rate >= 1:  # code-faithful: the release skips selection at rate >= 1, every patch stays
            return [Kept(indices=torch.arange(view.features.shape[0], device=view.features.device)) for view in views]
        if len(views) == 1:
            return [self.select(views[0])]
        base, crops = views[0], views[1:]
        base_budget, crop_pool = self.budgets(len(views), base.features.shape[0])
        quotas = self.crop_quotas(_early_scores(base), base.grid, partition_grid, crop_pool)
        kept = [top_k_indices(_final_scores(base), base_budget)]
        kept += [top_k_indices(_final_scores(crop), quota) for crop, quota in zip(crops, quotas)]
        return [Kept(indices=k) for k in kept]

    def budgets(self, partitions: int, patches: int) -> tuple[int, int]:
        """(B0, Bc): the base view's budget and the crops' pool for an image of `partitions` x `patches`."""
        total = math.floor(partitions * patches * self.args.rate)
        base = min(math.floor(total * self.args.alpha), patches)
        return base, min(total - base, (partitions - 1) * patches)

    def crop_quotas(
        self, early: torch.Tensor, grid: tuple[int, int], partition_grid: tuple[int, int], pool: int
    ) -> list[int]:
        """Per crop (row-major), its share of `pool`, from the base view's layer-0 scores `early` (N,)
        over its `grid` of patches."""
        rows, cols = partition_grid
        crops, patches = rows * cols, early.numel()
        if self.args.split == "code":
            marked = top_k_indices(early, math.floor(patches * (1 - self.args.alpha)))
            counts = torch.bincount(marked.cpu() * crops // patches, minlength=crops)
            if int(counts.sum()) == 0:
                return [0] * crops
            quotas = (counts.float() / counts.sum().float() * pool).long()  # float32, truncated, as released
        else:
            scores = early.float().cpu().reshape(grid)
            shares = torch.tensor([scores[block].sum().item() for block in crop_blocks(partition_grid, grid)],
                                  dtype=torch.float64)
            if float(shares.sum()) <= 0:
                return [0] * crops
            quotas = torch.floor(pool * shares / shares.sum()).long()
        return quotas.clamp(max=patches).tolist()


def crop_blocks(partition_grid: tuple[int, int], grid: tuple[int, int]) -> list[tuple[slice, slice]]:
    """Per crop (row-major), its block of the base view's `grid` of patches: the crop grid laid over the base
    view in equal blocks, rows floor(r S / rows) .. floor((r + 1) S / rows), likewise columns (the paper split)."""
    (rows, cols), (side_y, side_x) = partition_grid, grid
    return [(slice(r * side_y // rows, (r + 1) * side_y // rows), slice(c * side_x // cols, (c + 1) * side_x // cols))
            for r in range(rows) for c in range(cols)]


def _final_scores(inputs: VisionInputs) -> torch.Tensor:
    """(N,) the select layer's [CLS] row summed over heads (the probe of the highest layer asked)."""
    return inputs.cls_attention[max(inputs.cls_attention)].sum(dim=0)


def _early_scores(inputs: VisionInputs) -> torch.Tensor:
    """(N,) layer 0's [CLS] row summed over heads."""
    return inputs.cls_attention[0].sum(dim=0)
