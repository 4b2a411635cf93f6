"""PruMerge and PruMerge+ (Shang et al., arXiv 2403.15388): keep the patches whose [CLS] attention is an
outlier, merge their nearest neighbours into them, and add one token for everything pruned
(METHODS.md, "PruMerge and PruMerge+").

Per view (LLaVA-1.5's image; on LLaVA-NeXT each partition on its own, with its own extra token,
partitions concatenated without unpad or newline tokens, as HiRED's baseline code does):

1. Scores: the last vision layer ("layer 23") as one head as wide as the tower, softmax(q_cls . K^T /
   sqrt(D)) over all keys, CLS entry dropped, from the probe's CLS query and keys (projections of that
   layer's post-LayerNorm input; the probe runs no more of the layer than that).
2. Outliers: Q1, Q3 = the 25th / 75th percentiles of the view's scores (linear, numpy's rule), fence =
   Q3 + 1.5 (Q3 - Q1); the patches scoring strictly above it, in descending score order.
3. PruMerge+ adds uniform samples: step = int(1 / (outliers / N)), the patches arange(0, N - 1,
   int(step / 3)) not already kept, in raster order after the outliers.
4. Merge: keys L2-normalised; for each kept patch its 32 most similar other patches (cosine; kept and
   pruned alike; ties towards the lower index), whose *original* features weighted by their raw scores
   are added to its own (`merge=residual`, the released code; `merge=average`: the paper's weighted
   average (s_i f_i + sum s_j f_j) / (s_i + sum s_j)).
5. One extra token = the sum over the pruned patches of score x feature, appended last (patch index -1).

Features are the select layer's patch features, before the projector. The count is adaptive:
`budget()` is None and PruneStats reports what each image kept.

Degenerate cases (never a crash):
- no score above the fence (e.g. a flat score map): the top-scoring patch is the one outlier (the
  release keeps only the extra token in PruMerge and divides by zero in PruMerge+);
- a sample stride that rounds to 0 (a step below 3: more than a third of the patches are outliers;
  not seen for N = 576, where at most about a quarter lie above Q3, but possible with ties or small
  grids): stride 1. From about N / 6 outliers on the stride is 1 anyway, and PruMerge+ samples every
  patch of arange(0, N - 1), all but the last;
- fewer than 32 other patches (small towers): all of them are the neighbours;
- nothing pruned (every patch an outlier or a sample; PruMerge+ from about N / 6 outliers on, when the last
  patch, which arange(0, N - 1) never samples, is an outlier): the extra token is still appended, a sum over
  no patch, i.e. zero, as the release appends it whatever was pruned; the count is always kept + 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from llava.model.pruning.base import Kept, MethodArgs, VisionInputs, VisionPruner
from llava.model.pruning.registry import register

NEIGHBOURS = 32


@dataclass(frozen=True)
class PruMergeArgs(MethodArgs):
    merge: Literal["residual", "average"] = "residual"  # residual: the released code's sum; average: the paper's


@register
class PruMerge(VisionPruner):
    name = "prumerge"
    Args = PruMergeArgs
    summary = "pre-LLM: [CLS]-attention outliers (IQR fence) with their 32 nearest patches merged in, + 1 extra token"
    reads_attention = True
    packing = "concat"
    plus: ClassVar[bool] = False

    def attention_layers(self, vision_layers: int, select_layer: int) -> tuple[int, ...]:
        return (vision_layers - 1,)

    def budget(self, tokens_per_image: int) -> None:
        return None  # adaptive: as many outliers as each image has

    def select(self, inputs: VisionInputs) -> Kept:
        (layer,) = inputs.keys
        keys = inputs.keys[layer][1:].float()  # (N, D) patch keys
        scores = single_head_scores(inputs.cls_query[layer], inputs.keys[layer])  # (N,)
        kept = outliers(scores)
        if self.plus:
            kept = torch.cat([kept, uniform_samples(kept, scores.numel())])
        features = merge(inputs.features, keys, scores, kept, self.args.merge)
        pruned = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
        pruned[kept] = False
        # Code-faithful: appended whatever was pruned, a zero token when nothing was (the release's sum over none).
        extra = (scores[pruned, None] * inputs.features[pruned].float()).sum(dim=0, keepdim=True)  # (1, D)
        features = torch.cat([features, extra])
        kept = torch.cat([kept, kept.new_full((1,), -1)])
        return Kept(indices=kept, features=features.to(inputs.features.dtype))


@register
class PruMergePlus(PruMerge):
    name = "prumerge+"
    summary = "pre-LLM: PruMerge plus uniformly spaced patches (about 25% of the tokens)"
    plus = True


def single_head_scores(cls_query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """cls_query (D,), keys (1 + N, D) -> (N,) fp32: softmax over all keys as one D-wide head, CLS dropped."""
    logits = keys.float() @ cls_query.float() / keys.shape[-1] ** 0.5
    return logits.softmax(dim=-1)[1:]


def outliers(scores: torch.Tensor) -> torch.Tensor:
    """The patches above the IQR fence, in descending score order (ties: lower index first); the top
    patch alone when none is above it."""
    q1, q3 = torch.quantile(scores, torch.tensor([0.25, 0.75], device=scores.device), interpolation="linear")
    count = max(int((scores > q3 + 1.5 * (q3 - q1)).sum()), 1)
    return torch.sort(scores, descending=True, stable=True).indices[:count]


def uniform_samples(kept: torch.Tensor, patches: int) -> torch.Tensor:
    """PruMerge+'s evenly spaced patches not already in `kept`, in raster order."""
    step = int(1 / (kept.numel() / patches))
    samples = torch.arange(0, patches - 1, max(int(step / 3), 1), device=kept.device)
    return samples[~torch.isin(samples, kept)]


def merge(features: torch.Tensor, keys: torch.Tensor, scores: torch.Tensor, kept: torch.Tensor, how: str) -> torch.Tensor:
    """(M, D) fp32: each kept patch's feature with its nearest patches' original features merged in."""
    normed = F.normalize(keys, dim=-1)
    similarity = normed[kept] @ normed.T  # (M, N) cosine
    similarity[torch.arange(kept.numel(), device=kept.device), kept] = -torch.inf  # not itself
    neighbours = nearest(similarity, min(NEIGHBOURS, scores.numel() - 1))  # (M, k)
    # The score-weighted sum over each kept patch's neighbours, as one (M, N) @ (N, D) product.
    weights = torch.zeros_like(similarity).scatter_(1, neighbours, scores[neighbours])  # (M, N)
    own, summed = features[kept].float(), weights @ features.float()
    if how == "residual":
        return own + summed
    return (scores[kept, None] * own + summed) / (scores[kept] + weights.sum(dim=1))[:, None]


def nearest(similarity: torch.Tensor, count: int) -> torch.Tensor:
    """(M, count): per row the columns of the `count` largest values, ties towards the lower index (in no
    particular order). topk settles every row whose count-th value is not tied with one left out; the
    rows where it is are sorted stably."""
    top = similarity.topk(count, dim=1)
    neighbours = top.indices
    if count == 0:
        return neighbours
    boundary = top.values[:, -1:]
    tied = (similarity == boundary).sum(dim=1) > (top.values == boundary).sum(dim=1)
    if bool(tied.any()):
        neighbours[tied] = torch.sort(similarity[tied], dim=1, descending=True, stable=True).indices[:, :count]
    return neighbours
