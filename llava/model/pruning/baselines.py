"""Baselines every figure is compared with (METHODS.md, "Baselines").

- `none`: the unpruned model.
- `random`: a uniform random subset of `keep` patches per image. The generator is
  seeded with `seed` for every image, so an image keeps the same subset whether it
  runs alone or in a batch (batch == single holds for every method).
- `uniform`: `keep` patches evenly strided over the raster: index floor((2j+1) P / 2keep).
- `pool`: 2-D average pooling of the patch grid to a side x side grid, keep = side^2;
  each pooled token is recorded at the patch nearest its window's centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llava.errors import InputError
from llava.model.pruning.base import KeepArgs, KeepBudgetPruner, Kept, MethodArgs, PruningMethod, VisionInputs
from llava.model.pruning.registry import register


@dataclass(frozen=True)
class NoArgs(MethodArgs):
    pass


@register
class NoPruning(PruningMethod):
    name = "none"
    Args = NoArgs
    summary = "the unpruned model"


@dataclass(frozen=True)
class RandomArgs(KeepArgs):
    seed: int = 0


@register
class RandomPruner(KeepBudgetPruner):
    name = "random"
    Args = RandomArgs
    summary = "pre-LLM: a seeded uniform random subset of the patches"

    def select(self, inputs: VisionInputs) -> Kept:
        patches = self.patch_count(inputs)
        generator = torch.Generator().manual_seed(self.args.seed)
        chosen = torch.randperm(patches, generator=generator)[: self.args.keep]
        return Kept(indices=chosen.sort().values.to(inputs.features.device))


@register
class UniformPruner(KeepBudgetPruner):
    name = "uniform"
    Args = KeepArgs
    summary = "pre-LLM: patches evenly strided over the raster"

    def select(self, inputs: VisionInputs) -> Kept:
        patches = self.patch_count(inputs)
        j = torch.arange(self.args.keep, device=inputs.features.device)
        return Kept(indices=((2 * j + 1) * patches) // (2 * self.args.keep))


@register
class PoolPruner(KeepBudgetPruner):
    name = "pool"
    Args = KeepArgs
    summary = "pre-LLM: 2-D average pooling of the patch grid to sqrt(keep) x sqrt(keep)"

    def validate(self, vision_layers: int, llm_layers: int, tokens_per_image: int) -> None:
        super().validate(vision_layers, llm_layers, tokens_per_image)
        side = math.isqrt(self.args.keep)
        if side * side != self.args.keep:
            lower, upper = side * side, (side + 1) ** 2
            raise InputError(f"pool:keep must be a square number (a side x side grid); try {lower} or {upper}")

    def select(self, inputs: VisionInputs) -> Kept:
        rows, cols = inputs.grid
        side = math.isqrt(self.args.keep)
        grid = inputs.features.T.reshape(1, -1, rows, cols)  # (1, D, rows, cols)
        pooled = F.adaptive_avg_pool2d(grid.float(), side).to(inputs.features.dtype)  # (1, D, side, side)
        features = pooled.flatten(2)[0].T  # (side^2, D)
        # adaptive pooling's window i spans [floor(i n / s), ceil((i+1) n / s)); record its centre patch.
        centre = lambda n: torch.tensor([(i * n // side + -(-(i + 1) * n // side) - 1) // 2 for i in range(side)])
        index = (centre(rows)[:, None] * cols + centre(cols)[None, :]).flatten()
        return Kept(indices=index.to(inputs.features.device), features=features)
