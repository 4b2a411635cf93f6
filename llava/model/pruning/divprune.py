"""DivPrune (Alvar et al., arXiv 2503.02175, CVPR 2025): keep the most diverse set of an image's projected
tokens, chosen greedily by max-min cosine distance (the paper's MMDP; METHODS-NEWER.md, "DivPrune").

Implemented from the spec's description (the release is CC BY-NC 4.0; none of its code is used here).

Of an image's L projected tokens (after the projector, as they enter the LLM), `keep` = N are kept:

- distance d(i, j) = 1 - cos(x_i, x_j) over the full L x L matrix;
- first pick: for every token j, the second-smallest entry of its column of d, i.e. its distance to its
  nearest other token (the release takes `topk(2, largest=False)` and its second value, assuming the self
  distance is the smallest); the token whose nearest neighbour is farthest, the most isolated one;
- then, N - 1 times: score_j = min over the picked s of d(s, j); pick the argmax (`torch.argmax`: the first
  index among ties);
- the kept tokens re-sorted into raster order.

Budget: the release's `SUBSET_RATIO` r keeps `round(r * L)` tokens, so its r corresponds to keep = round(r * L)
(L = 576 on LLaVA-1.5: the released r = 0.098 is keep = 56; 64/128/192 are r = 64/576, ...).

Where we differ from the release, and why: distances are computed in float32 (the release: fp16), so only
near-ties can differ; a token once picked is never picked again (its score is set to -inf), where the
release relies on its self distance being ~0, which re-picks a token only when every remaining token
duplicates a picked one (its keep_indexs would then hold the same token twice).

LLaVA-NeXT is refused: the release selects once over the whole unpadded image feature, image_newline tokens
included, with a budget over that length; this project's pre-LLM seam selects per view before the layout,
so it cannot express that rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llava.errors import InputError
from llava.model.pruning.base import KeepArgs, KeepBudgetPruner, Kept, VisionInputs
from llava.model.pruning.registry import register


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
class DivPrune(KeepBudgetPruner):
    """`keep`: tokens kept per image (the release's SUBSET_RATIO r is keep = round(r * L), L = 576: r = 0.098
    keeps 56). LLaVA-1.5 only."""

    name = "divprune"
    Args = KeepArgs
    summary = "pre-LLM: the most diverse projected tokens, greedy max-min cosine distance"
    before_projector = False  # the release selects among the projected tokens as they enter the LLM
    acts = "llm input"

    def validate(self, vision_layers: int, llm_layers: int, tokens_per_image: int, anyres: bool = False) -> None:
        if anyres:
            raise InputError("divprune selects once over a LLaVA-NeXT image's whole unpadded feature, newline tokens"
                             " included (as released); the per-view pre-LLM seam cannot express that: LLaVA-1.5 only")
        super().validate(vision_layers, llm_layers, tokens_per_image, anyres)

    def select(self, inputs: VisionInputs) -> Kept:
        self.patch_count(inputs)
        order = max_min_order(inputs.features[None], self.args.keep)[0]  # (keep,)
        return Kept(indices=order.sort().values)
