"""Baselines every figure is compared with (METHODS.md, "Baselines").

- `none`: the unpruned model.
- `random`: a uniform random subset of `keep` patches per image. The generator is
  seeded from `seed` and a checksum of the image's pixels, so each image gets its
  own subset and keeps it whether it runs alone or in a batch (batch == single).
- `uniform`: a spatially uniform grid: with side = ceil(sqrt(keep)), rows and
  columns floor((2i+1) n / 2 side) give side^2 evenly spread patches; when keep is
  not a square, `keep` of those are taken evenly strided (index floor((2j+1) side^2 / 2 keep)).
- `pool`: 2-D average pooling of the patch grid to a side x side grid, keep = side^2;
  each pooled token is recorded at the patch nearest its window's centre.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llava.constants import MAX_SEED
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
    acts = "-"


@dataclass(frozen=True)
class RandomArgs(KeepArgs):
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.seed <= MAX_SEED:
            raise InputError(f"random:seed must be in 0..{MAX_SEED}, got {self.seed}")


@register
class RandomPruner(KeepBudgetPruner):
    name = "random"
    Args = RandomArgs
    summary = "pre-LLM: a seeded uniform random subset of the patches"

    def select(self, inputs: VisionInputs) -> Kept:
        patches = self.patch_count(inputs)
        # Reduced to the 64 bits a torch generator takes (unchanged for the seeds that fit).
        generator = torch.Generator().manual_seed((self.args.seed * 1_000_003 + _checksum(inputs.pixel_values)) % 2**64)
        chosen = torch.randperm(patches, generator=generator)[: self.args.keep]
        return Kept(indices=chosen.sort().values.to(inputs.features.device))


@register
class UniformPruner(KeepBudgetPruner):
    name = "uniform"
    Args = KeepArgs
    summary = "pre-LLM: a spatially uniform grid of patches (evenly spaced rows and columns)"

    def select(self, inputs: VisionInputs) -> Kept:
        self.patch_count(inputs)
        rows, cols = inputs.grid
        side = math.isqrt(self.args.keep - 1) + 1  # ceil(sqrt(keep))
        spread = lambda n: (2 * torch.arange(side) + 1) * n // (2 * side)  # side evenly spaced of n
        grid = (spread(rows)[:, None] * cols + spread(cols)[None, :]).flatten()  # (side^2,) raster order
        j = torch.arange(self.args.keep)
        chosen = grid[(2 * j + 1) * grid.numel() // (2 * self.args.keep)]
        return Kept(indices=chosen.to(inputs.features.device))


def _checksum(pixel_values: torch.Tensor | None) -> int:
    """A deterministic integer from an image's pixels (0 when the image is not given)."""
    if pixel_values is None:
        return 0
    data = pixel_values.detach().float().cpu().contiguous().numpy().tobytes()
    return zlib.crc32(data)


@register
class PoolPruner(KeepBudgetPruner):
    name = "pool"
    Args = KeepArgs
    summary = "pre-LLM: 2-D average pooling of the patch grid to sqrt(keep) x sqrt(keep)"

    def validate(self, vision_layers: int, llm_layers: int, tokens_per_image: int, anyres: bool = False) -> None:
        super().validate(vision_layers, llm_layers, tokens_per_image, anyres)
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
