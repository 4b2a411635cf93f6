"""DivPrune (Alvar et al., arXiv 2503.02175, CVPR 2025): keep the most diverse set of an image's projected
tokens, chosen greedily by max-min cosine distance (the paper's MMDP; METHODS-NEWER.md, "DivPrune").

Implemented from the spec's description (the release is CC BY-NC 4.0; none of its code is used here).

Of an image's L projected tokens (after the projector, as they enter the LLM), N are kept:

- distance d(i, j) = 1 - cos(x_i, x_j) over the full L x L matrix;
- first pick: for every token j, the second-smallest entry of its column of d, i.e. its distance to its
  nearest other token (the release takes `topk(2, largest=False)` and its second value, assuming the self
  distance is the smallest); the token whose nearest neighbour is farthest, the most isolated one;
- then, N - 1 times: score_j = min over the picked s of d(s, j); pick the argmax (`torch.argmax`: the first
  index among ties);
- the kept tokens re-sorted into their order in the image (raster order; on LLaVA-NeXT the layout's).

Budget, one of (as FastV's, base.py's convention):
- `keep` = N: LLaVA-1.5, N tokens per image; LLaVA-NeXT, N per view (base view or crop, the v1_6 scripts'
  convention), i.e. min(N x P, L) of the image's L tokens, P = 1 + rows x cols views;
- `ratio` = R, the fraction dropped: round(L (1 - R)) of L tokens. The release's `SUBSET_RATIO` r keeps
  int(round(r L)): r = 1 - R (its r = 0.098 is ratio=0.902, 56 of 576 tokens; 64/128/192 of 576 are keep=64, ...).

LLaVA-NeXT (as released): one selection over the image's whole feature as it enters the LLM, L = its
length in the model's merge (`spatial_unpad`: base view, the stitched crops unpadded, an image_newline token
after each row), the newline tokens included: they are candidates and count in L and in the budget like any
token, so a newline token can go, and `keep=N` with N every patch of a view need not keep every token (more
newline tokens than padded patches); `ratio=0` does. It runs after the layout (`select_laid_out`, the model's
`_lay_out`): every view keeps all its patches through `select_image`, then the chosen positions of the
laid-out image stay, in their order.

Where we differ from the release, and why: distances are computed in float32 (the release: fp16), so only
near-ties can differ; a token once picked is never picked again (its score is set to -inf), where the
release relies on its self distance being ~0, which re-picks a token only when every remaining token
duplicates a picked one (its keep_indexs would then hold the same token twice).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llava.errors import InputError
from llava.model.pruning.base import Kept, MethodArgs, VisionInputs, VisionPruner, check_budget, check_keep
from llava.model.pruning.registry import register


@dataclass(frozen=True)
class DivPruneArgs(MethodArgs):
    keep: int | None = None  # tokens kept per image (LLaVA-1.5) or per view (LLaVA-NeXT, chosen over the whole image)
    ratio: float | None = None  # fraction of an image's tokens dropped (the release's SUBSET_RATIO is 1 - ratio)

    def __post_init__(self):
        if (self.keep is None) == (self.ratio is None):
            raise InputError("divprune needs exactly one budget: keep=N (tokens kept per image, per view on LLaVA-NeXT)"
                             " or ratio=R (fraction dropped)")
        if self.keep is not None:
            check_keep(self.keep)
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise InputError(f"divprune:ratio is the fraction dropped and must be in [0, 1), got {self.ratio}")


def cosine_distance(features: torch.Tensor) -> torch.Tensor:
    """features (B, L, D) -> d (B, L, L), d[b, i, j] = 1 - cos(x_i, x_j), in float32."""
    normed = F.normalize(features.float(), dim=-1)  # (B, L, D)
    return 1 - normed @ normed.transpose(1, 2)  # (B, L, L)


def max_min_order(features: torch.Tensor, keep: int) -> torch.Tensor:
    """features (B, L, D) -> (B, keep) the tokens in the order the greedy max-min rule picks them."""
    batch, length, _ = features.shape
    distance = cosine_distance(features)  # (B, L, L)
    rows = torch.arange(batch, device=features.device)
    if length == 1:  # no second-smallest distance exists; the only token is the only choice
        return torch.zeros(batch, 1, dtype=torch.long, device=features.device)
    nearest_other = distance.topk(2, dim=1, largest=False).values[:, 1]  # (B, L): per column, 2nd smallest
    picks = [nearest_other.argmax(dim=-1)]  # (B,)
    score = distance[rows, picks[0]]  # (B, L): min over the picked of d(s, j), d symmetric
    score[rows, picks[0]] = -torch.inf  # picked: never again
    for _ in range(keep - 1):
        pick = score.argmax(dim=-1)  # (B,) first index among ties
        picks.append(pick)
        score = torch.minimum(score, distance[rows, pick])  # (B, L)
        score[rows, pick] = -torch.inf
    return torch.stack(picks, dim=-1)  # (B, keep)


@register
class DivPrune(VisionPruner):
    """`keep`: tokens kept per image (per view on LLaVA-NeXT); or `ratio`: the fraction dropped (the release's r is
    1 - ratio)."""

    name = "divprune"
    Args = DivPruneArgs
    summary = "pre-LLM: the most diverse projected tokens, greedy max-min cosine distance (NeXT: over the whole image)"
    before_projector = False  # the release selects among the projected tokens as they enter the LLM
    acts = "llm input"

    def validate(self, vision_layers: int, llm_layers: int, tokens_per_image: int, anyres: bool = False) -> None:
        if self.args.keep is not None:
            check_budget(self.args.keep, tokens_per_image, "each image" if not anyres else "each view")

    def kept_count(self, length: int, views: int = 1) -> int:
        """Tokens kept of an image of `length` tokens in `views` views (LLaVA-NeXT: newline tokens included)."""
        if self.args.ratio is not None:
            return round(length * (1 - self.args.ratio))
        return min(self.args.keep * views, length)

    def budget(self, tokens_per_image: int) -> int:
        return self.kept_count(tokens_per_image)

    def select(self, inputs: VisionInputs) -> Kept:
        """One LLaVA-1.5 image (or any single view): its `kept_count` most diverse tokens, in raster order."""
        if self.args.keep is not None:
            check_budget(self.args.keep, inputs.features.shape[0], f"image {inputs.image_index}")
        order = max_min_order(inputs.features[None], self.kept_count(inputs.features.shape[0]))[0]  # (keep,)
        return Kept(indices=order.sort().values)

    def select_image(self, views: list[VisionInputs], partition_grid: tuple[int, int]) -> list[Kept]:
        if partition_grid == (0, 0):
            return [self.select(view) for view in views]
        # LLaVA-NeXT: every patch of every view goes on to the layout; `select_laid_out` chooses.
        return [Kept(indices=torch.arange(view.features.shape[0], device=view.features.device)) for view in views]

    def select_laid_out(
        self, features: torch.Tensor, layout: torch.Tensor, partition_grid: tuple[int, int]
    ) -> torch.Tensor:
        """A NeXT image's L tokens as they enter the LLM (features (L, D), newline tokens included) -> the sorted
        positions of its `kept_count` most diverse, chosen over all L at once."""
        keep = self.kept_count(features.shape[0], 1 + partition_grid[0] * partition_grid[1])
        return max_min_order(features[None], keep)[0].sort().values  # (keep,)
