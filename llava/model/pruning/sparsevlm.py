"""SparseVLM v1.5 (Zhang et al., arXiv 2410.04417 v1.5, ICML 2025): text-guided pruning inside the LLM, with the
pruned tokens partly recycled into merged ones.

Reproduces the released code, branch `v1.5` of Gumpest/SparseVLMs (734d9003): modelling_sparse_llama.py (raters,
sparse layers), score.py (per-stage counts), utils.py `cluster_and_merge` (DPC-kNN merging). The rule:

- Raters, once per prefill from the LLM's input embeddings: V = the image's tokens, T = the tokens after it (the
  question and the template's tail); M = V T^T; softmax over the text axis, mean over the image axis: one score per
  text token; the raters are the text tokens scoring above the mean score.
- Three stages, after layers `layers` = 2, 6, 15 (the seam's stages are before layers 3, 7, 16: the pruning
  applies to the output of each scoring layer, so layers 0-2 see every token). At a stage after layer l, the
  score of an image token is layer l's attention probability from the raters to it, mean over heads, mean over
  raters. The top min(count, v - 1) stay, in their order, where v is the image's current token count (recycled
  tokens of earlier stages included) and count comes from a fixed list per budget (score.py; *not* the paper's
  rank-adaptive count): keep=192 -> 300, 200, 110; 128 -> 303, 110, 36; 64 -> 66, 30, 17. These lists are for the
  release's 576-token image; an image of N tokens at the first stage (the shipped models' 144 patches, or what a
  pre-LLM method of a chain left) gets them scaled by N / 576, rounded half to even (Python's round), at least 1 (`stage_lists`; our rule: the
  release has none and would keep min(count, N - 1), i.e. nearly everything of a small image).
- Recycling: of the pruned tokens, the int(0.3 x pruned) + 1 with the best scores are clustered by DPC-kNN into
  int(recycled / 10) + 1 tokens (features: layer l's output), placed after the kept image tokens, in the order
  of their centres. A 576-token image thus has 309 / 204 / 113 tokens after the stages for keep=192,
  312 / 117 / 39 for 128 and 82 / 32 / 18 for 64 (`stage_counts`).
- Positions are renumbered 0, 1, ... after each stage, and decoding continues each layer's own count (the
  release's per-layer cache length): the seam does both (`renumbers`).

DPC-kNN (`cluster`), as `cluster_and_merge`: distance = L2 / sqrt(D); density = exp(-mean squared distance to the
k = cluster-count nearest tokens, the token itself included) + U(0, 1) x 1e-6 noise; parent distance = the distance
to the nearest denser token (the largest distance of all for the densest); centres = the top cluster-count tokens
by parent distance x density; every token joins its nearest centre (the first on ties), a centre itself; a merged
token = the sum of its members / (members + 1e-6), the release's average with its 1e-6.

Where this departs from the release, and why:
- The density noise comes from a torch.Generator seeded with `seed` afresh for every image at every stage (the
  release draws from the global RNG), so a sample's tokens do not depend on the batch or on earlier calls.
- Scores, raters and distances are computed in fp32 (the release: fp16); ties in the rankings go to the lower
  index (torch.topk's order on ties is unspecified).
- Batches: every sample is pruned on its own scores (the release assumes one sample and reads row 0).
- Raters when no text token scores above the mean (a single token after the image; the release would average
  over no rater and rank NaNs): every text token after the image rates; when no text follows the image (a
  prompt ending in <image>), the last token does, as in FastV.
- More images in a sample (not in the release): the tokens after the last image are the text; each image has
  its own raters among them, and is scored, pruned and recycled on its own.
- `layers` may list fewer than three layers (a shallower model): the stages take the first counts of the list.
- LLaVA-NeXT is refused: v1.5's code is written for one 576-token image (`image_shape`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llava.constants import MAX_SEED
from llava.errors import InputError
from llava.model.pruning.base import LayerPruner, MethodArgs, SpanCut, StageView, top_k_indices
from llava.model.pruning.registry import register

STAGE_COUNTS = {192: (300, 200, 110), 128: (303, 110, 36), 64: (66, 30, 17)}  # score.py: image tokens kept per stage
RECYCLED = 0.3  # fraction of the pruned tokens recycled into merged tokens (+ 1)
PER_CLUSTER = 10  # recycled tokens per merged token (cluster count = int(recycled / 10) + 1)


@dataclass(frozen=True)
class SparseVLMArgs(MethodArgs):
    keep: int = 192  # the release's --retained_tokens: picks a per-stage list (64, 128 or 192)
    layers: tuple[int, ...] = (2, 6, 15)  # layers whose attention scores; each stage prunes their output
    seed: int = 0  # of the density noise in DPC-kNN

    def __post_init__(self):
        if self.keep not in STAGE_COUNTS:
            raise InputError(f"sparsevlm:keep={self.keep} is not supported; the release's per-stage lists exist for"
                             f" keep={', '.join(map(str, sorted(STAGE_COUNTS)))}")
        written = ",".join(map(str, self.layers))
        if not 1 <= len(self.layers) <= 3:
            raise InputError(f"sparsevlm:layers={written} must list one to three layers"
                             " (one per stage of the release's lists)")
        if self.layers[0] < 0 or any(b <= a for a, b in zip(self.layers, self.layers[1:])):
            raise InputError(f"sparsevlm:layers={written} must be increasing layer indices from 0")
        if not 0 <= self.seed <= MAX_SEED:
            raise InputError(f"sparsevlm:seed must be an integer in [0, 2**63 - 1], got {self.seed}")


RELEASE_TOKENS = 576  # the image the release's lists are written for


def stage_lists(keep: int, tokens: int, stages: int = 3) -> list[int]:
    """The per-stage counts for an image of `tokens` at the first stage: the release's list scaled by tokens / 576
    (rounded, at least 1; the list itself for 576 tokens)."""
    return [max(1, round(count * tokens / RELEASE_TOKENS)) for count in STAGE_COUNTS[keep][:stages]]


def stage_counts(keep: int, tokens: int, stages: int = 3) -> list[int]:
    """An image's token count after each stage (merged tokens included), from `tokens` before the first."""
    counts = []
    for count in stage_lists(keep, tokens, stages):
        kept = min(count, tokens - 1)
        pruned = tokens - kept
        tokens = kept + (cluster_count(recycled_count(pruned)) if pruned else 0)
        counts.append(tokens)
    return counts


def recycled_count(pruned: int) -> int:
    return int(RECYCLED * pruned) + 1


def cluster_count(recycled: int) -> int:
    return int(recycled / PER_CLUSTER) + 1


def raters(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """image (V, D), text (T, D) input embeddings -> (R,) ascending indices into `text` of the raters: the text
    tokens whose mean (over image tokens) softmax-over-text of V T^T is above the mean of those scores; all of
    them when none is."""
    relation = (image.float() @ text.float().T).softmax(dim=-1).mean(dim=0)  # (T,)
    chosen = (relation > relation.mean()).nonzero()[:, 0]
    return chosen if len(chosen) else torch.arange(len(text), device=text.device)


def cluster(x: torch.Tensor, clusters: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-kNN as the release's `cluster_and_merge`: x (n, D) -> (centres (clusters,) indices into x in the order
    of their score, assignment (n,) the centre number 0..clusters-1 of every token)."""
    n, D = x.shape
    x = x.float()
    distance = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") / D**0.5  # (n, n)
    nearest = distance.topk(clusters, dim=-1, largest=False).values  # (n, k), the token itself included
    density = (-(nearest**2).mean(dim=-1)).exp()  # (n,)
    density = density + torch.rand(n, generator=generator).to(density.device) * 1e-6  # no two densities equal
    denser = density[None, :] > density[:, None]  # (n, n): [i, j] j is denser than i
    parent = torch.where(denser, distance, distance.max()).min(dim=-1).values  # (n,)
    centres = torch.sort(parent * density, descending=True, stable=True).indices[:clusters]  # (k,)
    assignment = distance[centres].argmin(dim=0)  # (n,) nearest centre, the first on ties
    assignment[centres] = torch.arange(clusters, device=x.device)  # a centre joins itself
    return centres, assignment


@register
class SparseVLM(LayerPruner):
    name = "sparsevlm"
    Args = SparseVLMArgs
    summary = ("in-LLM: the question's rater tokens rank the image after layers 2, 6, 15;"
               " the best pruned tokens are merged back")
    reads_question = True
    renumbers = True

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(layer + 1 for layer in self.args.layers)  # a stage before layer l + 1 prunes layer l's output

    def validate(self, vision_layers: int, llm_layers: int, tokens_per_image: int, anyres: bool = False) -> None:
        if anyres:
            raise InputError(f"{self.spec} is not supported on LLaVA-NeXT: SparseVLM v1.5's code handles one 576-token"
                             " LLaVA-1.5 image")
        if self.args.layers[-1] > llm_layers - 2:
            raise InputError(f"sparsevlm:layers={','.join(map(str, self.args.layers))} reaches layer"
                             f" {self.args.layers[-1]}, outside 0..{llm_layers - 2} for this {llm_layers}-layer LLM"
                             " (the last layer's output is not pruned); pass layers=... for a shallower model")

    def stage_budget(self, tokens: int) -> list[int]:
        return stage_counts(self.args.keep, tokens, len(self.args.layers))

    def budget(self, tokens_per_image: int) -> int:
        """Image tokens after the last stage, merged tokens included."""
        return self.stage_budget(tokens_per_image)[-1]

    def cut(self, view: StageView) -> list[SpanCut]:
        text = view.text_after_images()
        if "raters" not in view.memo:  # the first stage: the input embeddings choose each image's raters
            view.memo["text"] = len(text)
            view.memo["lists"] = [stage_lists(self.args.keep, span.length, len(self.args.layers)) for span in view.spans]
            view.memo["raters"] = [raters(view.embeds[span.start : span.end], view.embeds[text]) for span in view.spans]
        if len(text) != view.memo["text"]:
            raise ValueError(f"{self.spec}: the text after the images changed between stages; its raters are lost")
        if len(text):
            rows = [text[chosen] for chosen in view.memo["raters"]]
        else:  # the prompt ends with the image: the last token rates
            rows = [torch.tensor([view.last_row], device=text.device)] * len(view.spans)
        asked = torch.unique(torch.cat(rows))  # (R,) ascending
        attention = view.attention(asked).mean(dim=0)  # (R, N) mean over heads
        cuts = []
        for span, image_rows, lists in zip(view.spans, rows, view.memo["lists"]):
            scores = attention[torch.searchsorted(asked, image_rows), span.start : span.end].mean(dim=0)  # (L,)
            cuts.append(self.select(scores, view.hidden[span.start : span.end], lists[view.stage]))
        return cuts

    def select(self, scores: torch.Tensor, hidden: torch.Tensor, count: int) -> SpanCut:
        """One image at one stage: scores (L,) and the scoring layer's output (L, D) -> the kept tokens and the
        merged ones (rows of `mix`, in the order of their centres)."""
        L = len(scores)
        keep = top_k_indices(scores, min(count, L - 1))
        pruned_mask = torch.ones(L, dtype=torch.bool, device=scores.device)
        pruned_mask[keep] = False
        pruned = pruned_mask.nonzero()[:, 0]  # ascending
        if len(pruned) == 0:
            return SpanCut(keep)
        # The release feeds the recycled tokens to clustering in topk order: best score first.
        best = torch.sort(scores[pruned].float(), descending=True, stable=True).indices[: recycled_count(len(pruned))]
        recycled = pruned[best]
        clusters = cluster_count(len(recycled))
        generator = torch.Generator().manual_seed(self.args.seed)
        _, assignment = cluster(hidden[recycled], clusters, generator)
        mix = torch.zeros(clusters, L, dtype=torch.float32, device=scores.device)
        mix[assignment, recycled] = 1.0
        mix = mix / (mix.sum(dim=1, keepdim=True) + 1e-6)  # the release's average: sum / (members + 1e-6)
        return SpanCut(keep, mix)
