"""LLaVA's vision-to-language projector: `linear` (LLaVA-1) or `mlpNx_gelu` (LLaVA-1.5: mlp2x_gelu).

Parameter names follow the original LLaVA checkpoints (`mm_projector.0`, `mm_projector.2`);
the loader maps transformers' `multi_modal_projector.linear_1/2` onto them.

Where this file sits among the others, and one request's path through them: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import re

from torch import nn


def build_projector(projector_type: str, vision_dim: int, text_dim: int) -> nn.Module:
    if projector_type == "linear":
        return nn.Linear(vision_dim, text_dim)
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if match is None:
        raise ValueError(f"unknown projector type '{projector_type}' (supported: linear, mlp<N>x_gelu)")
    layers: list[nn.Module] = [nn.Linear(vision_dim, text_dim)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(text_dim, text_dim)]
    return nn.Sequential(*layers)
