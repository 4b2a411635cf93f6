"""DART (Wen et al., arXiv 2502.11494, EMNLP 2025): keep the image tokens that duplicate the pivot tokens least.

Reproduces the released code (METHODS-NEWER.md, "DART": upstream commit 5a19452, `get_retained_image_token`
and the pruning in the layer loop of `modeling_llama_self.py`). One stage, before decoder layer k (2):

- pivots: the L1 norm of layer k-1's keys after RoPE, heads side by side (`torch.norm(p=1)` of the
  (Hkv * hd) row), picks the `pivots` (4) image pivots, the tokens of largest norm among the image's span,
  and the `pivots` (4) text pivots among the tokens after the last image (question and template tail);
- duplication features: the hidden states entering layer k (layer k-1's output) through the LLM's **final**
  RMSNorm, compared by cosine similarity;
- quota: TOKEN_TOPK = min(keep, L - pivots) // (2 * pivots) for a span of L tokens. On LLaVA-1.5 (L = 576)
  this is the release's int(max_num_trunction // 8) whenever keep <= 572; above that the release asks
  topk for more tokens than are left and fails;
- greedy: the candidates are the span's tokens less its image pivots; for each pivot in turn, the quota
  candidates with the lowest cosine similarity to it are kept and leave the candidates (no max or sum over
  pivots: each pivot picks its own least-similar tokens from what is left);
- kept: the image pivots and every pick, 4 + 8 * quota tokens (68 / 132 / 196 for keep 64 / 128 / 192,
  not exactly the nominal budget); the text pivots are text, which always stays. Kept tokens keep their
  original position ids; layers k.. run on the kept set.

Pivot order (the greedy removal depends on it): the release iterates `list(set(image_pivots + text_pivots))`,
a CPython set of Python ints, which is neither sorted nor "image then text" (roughly by value modulo the
table size). We build that set literally, from the ints the release would see: each pivot's index in the
sample's unpadded sequence (row - first real row), inserted in the release's order (image pivots in topk
order, then text pivots in topk order), and iterate `list(set(...))` as CPython gives it.

Ties: the release's `topk` (fp16, CUDA) leaves tie order unspecified; here every ranking is a stable sort,
so ties go to the lower index (pivots: among equal norms; picks: among equal cosines). Norms and cosines
are computed in float32 (the release: fp16), so only near-ties can differ.

LLaVA-NeXT: the release treats the whole image span as one (base view, crops and image_newline tokens: the
span is the sequence less the text) and chooses over it globally, newline tokens included as candidates and
as possible pivots, with its own budget `retain_token_num_for_llava_next` (argparse default 320; the v1_6
scripts pass max_num_trunction, which is then ignored). Here `keep` plays that role on NeXT: the span's
candidates include its newline tokens and quota = min(keep, L - 4) // 8, so `dart:keep=320` reproduces the
release (324 tokens kept of an image). A newline token is dropped like any other token.

Not in the release (batch size 1, one image), and our choice:
- batches: each sample on its own rows (the release reads row 0);
- several images in a sample: each image gets its own image pivots and its own quota; the text pivots
  are the same for all, from the tokens after the last image;
- fewer than `pivots` tokens after the last image (a prompt ending in `<image>`, where the release's topk
  fails): that many text pivots, so fewer picks; an image of fewer tokens than the rule needs keeps its
  pivots and floor((L - pivots) / (2 * pivots)) picks per pivot (at least one token of every image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llava.errors import InputError
from llava.model.pruning.base import (
    LayerPruner,
    MethodArgs,
    SpanCut,
    StageView,
    VisualSpan,
    check_budget,
    check_keep,
)
from llava.model.pruning.registry import register


@dataclass(frozen=True)
class DARTArgs(MethodArgs):
    k: int = 2  # prune before decoder layer k; pivots and features from layer k-1
    keep: int = 128  # the release's max_num_trunction (LLaVA-NeXT: retain_token_num_for_llava_next)
    pivots: int = 4  # image pivots = text pivots (the release's pivot_image_token = pivot_text_token = 4)

    def __post_init__(self):
        if self.k < 1:
            raise InputError(f"dart:k={self.k} must be at least 1")
        check_keep(self.keep, "dart:keep")
        if self.pivots < 1:
            raise InputError(f"dart:pivots={self.pivots} must be at least 1")
        if self.keep < 2 * self.pivots:
            raise InputError(f"dart:keep={self.keep} is below 2 x pivots = {2 * self.pivots}: each of the"
                             f" {2 * self.pivots} pivots keeps keep // {2 * self.pivots} tokens, so it would keep"
                             " the image pivots alone")


def stable_top(scores: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """Indices of the k largest (smallest) scores in rank order, ties to the lower index."""
    return torch.sort(scores, descending=largest, stable=True).indices[:k]


@register
class DART(LayerPruner):
    name = "dart"
    Args = DARTArgs
    summary = "in-LLM: before layer k, keep the image tokens least similar to pivot tokens of large key L1 norm"
    reads_attention = False  # no softmax maps: keys and hidden states (works with SDPA / flash kernels)
    reads_question = True  # its text pivots are the tokens after the image
    renumbers = False
    reads_keys = True

    @property
    def layers(self) -> tuple[int, ...]:
        return (self.args.k,)

    def validate(self, vision_layers: int, llm_layers: int, tokens_per_image: int, anyres: bool = False) -> None:
        if not 1 <= self.args.k <= llm_layers - 1:
            raise InputError(f"dart:k={self.args.k} is outside 1..{llm_layers - 1} for this {llm_layers}-layer LLM")
        if anyres:  # keep counts over the whole NeXT image (its retain count), clamped to the span as released
            return
        check_budget(self.args.keep, tokens_per_image, "each image")
        if self.quota(tokens_per_image) < 1:
            raise InputError(f"{self.spec} keeps no token beyond the pivots of {tokens_per_image} visual tokens:"
                             f" it needs {3 * self.args.pivots} tokens or more")

    def quota(self, length: int) -> int:
        """TOKEN_TOPK: tokens each pivot keeps of a span of `length` tokens."""
        pivots = self.args.pivots
        return max(0, min(self.args.keep, length - pivots)) // (2 * pivots)

    def kept_count(self, length: int) -> int:
        """Tokens kept of a span of `length` tokens (newline tokens included on NeXT: the rule chooses over the
        whole span), given `pivots` text tokens or more after the last image."""
        pivots = min(self.args.pivots, length)
        return pivots + 2 * self.args.pivots * self.quota(length)

    def budget(self, tokens_per_image: int) -> int:
        """Tokens kept of a LLaVA-1.5 image: 4 + 8 * quota."""
        return self.kept_count(tokens_per_image)

    def stage_budget(self, tokens: int) -> list[int]:
        return [self.kept_count(tokens)]

    def cut(self, view: StageView) -> list[SpanCut]:
        features = view.final_norm(view.hidden)  # (N, D) the duplication features
        kept = self.select(view.keys(), features, view.spans, view.text_after_images(), view.first_row)
        return [SpanCut(keep) for keep in kept]

    def select(self, keys: torch.Tensor, features: torch.Tensor, spans: list[VisualSpan], text_rows: torch.Tensor,
               first_row: int) -> list[torch.Tensor]:
        """keys (N, Hkv * hd) post-RoPE of layer k-1, features (N, D) final-normed hidden states, `text_rows` (T,)
        the rows after the last image -> per span, the sorted local indices kept."""
        pivots = self.args.pivots
        norms = keys.float().abs().sum(dim=-1)  # (N,) L1 norm of every row's keys
        normed = F.normalize(features.float(), dim=-1)  # (N, D)
        text_pivots = text_rows[stable_top(norms[text_rows], pivots)]  # (<= pivots,) rows, in topk order
        kept = []
        for span in spans:
            rows = torch.arange(span.start, span.end, device=keys.device)  # (L,)
            image_pivots = stable_top(norms[rows], pivots)  # (<= pivots,) local, in topk order
            # The release's pivot order: list(set(...)) of the tokens' indices in the unpadded sequence.
            order = list(set((rows[image_pivots] - first_row).tolist() + (text_pivots - first_row).tolist()))
            pivot_rows = torch.tensor(order, device=keys.device) + first_row  # (P,)
            similarity = normed[pivot_rows] @ normed[rows].T  # (P, L) cosine of each pivot to each span token
            taken = torch.zeros(span.length, dtype=torch.bool, device=keys.device)  # pivots and picks
            taken[image_pivots] = True
            quota = self.quota(span.length)
            for row in similarity:  # each pivot in turn: its quota least similar tokens still available
                picks = stable_top(row.masked_fill(taken, torch.inf), quota, largest=False)
                taken[picks] = True
            kept.append(taken.nonzero()[:, 0])
        return kept
