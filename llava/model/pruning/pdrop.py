"""PyramidDrop (Xing et al., arXiv 2410.17247, CVPR 2025): drop image tokens in stages, a pyramid of fewer
and fewer tokens through the LLM (METHODS-NEWER.md, "PyramidDrop"; release Cooperx521/PyramidDrop 6444f304,
`pdrop_rank_drop`).

Before each decoder layer L of `layers` (the release: after layers 7, 15, 23 with layers = 8, 16, 24):

- score: the attention that layer L itself would compute: its input RMSNorm, q_proj, k_proj and RoPE (at
  the current positions) applied to the hidden states entering it, the query = the prompt's last token
  (LLaVA's template: the ':' of "ASSISTANT:"), causal softmax over every key in fp32, then cast to the
  model's dtype as released (fp16 there), mean over heads, sliced to the image's current tokens. The model
  recomputes that one row (`StageView.attention(of="next")`: that layer's keys of every token, O(N d^2), its
  query of the last one, then O(N d)), so SDPA stays on in every layer.
- keep: stage s (0-based) keeps int(N0 * lambda^(s+1)) of the image's tokens, N0 = the tokens the image had
  at the first stage: 576 -> 288, 144, 72 with the release's lambda = 0.5. The release's scripts write the
  powers out as decimals ("[0.5,0.25,0.125]"); we take each power as the float nearest its exact decimal
  value (`stage_ratios`), so lambda=0.7 gives 0.49 as a script would write it, not 0.7**2 =
  0.48999999999999994 (int(100 * that) = 48, the script's 49).
- the kept tokens are the top scores (ties towards the lower index; the release's `topk` leaves ties
  unordered), sorted back into their current order; text tokens always stay.
- positions: after every stage the kept sequence is renumbered 0, 1, ... (the release's position ids), and
  decoding continues that compact numbering; each layer caches what it saw. The model does both
  (`renumbers`); this file holds only the rule.

LLaVA-NeXT: the same rule over the whole packed image (base view, crops and image_newline tokens, the
release's `image_feature.shape[0]`), ranked globally: newline tokens are candidates like any other and N0
counts them (unlike FastV, which always keeps them).

Where we generalise the release (batch size 1, one image per prompt): every sample is ranked on its own
last token, and every image of a prompt on its own N0, by the same rule. An image that entered the LLM with
fewer tokens than `check_model` was sized for (after an adaptive pre-LLM method in a chain) keeps at least
one token at every stage, as every method does.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch

from llava.errors import InputError
from llava.model.pruning.base import LayerPruner, MethodArgs, SpanCut, StageView, top_k_indices
from llava.model.pruning.registry import register


@dataclass(frozen=True)
class PDropArgs(MethodArgs):
    layers: tuple[int, ...] = (8, 16, 24)  # prune before each (after layers 7, 15, 23), ranking with its projections
    # lambda: the share of N0 each stage keeps relative to the one before: stage s keeps int(N0 * lambda^(s+1)).
    # A Python field cannot be called `lambda`; the trailing underscore is PEP 8's spelling for a keyword.
    lambda_: float = 0.5

    def __post_init__(self):
        if not self.layers:
            raise InputError("pdrop:layers needs at least one layer, e.g. pdrop:layers=8,16,24")
        listed = ",".join(map(str, self.layers))
        if any(b <= a for a, b in zip(self.layers, self.layers[1:])):
            raise InputError(f"pdrop:layers={listed} must be strictly increasing, e.g. pdrop:layers=8,16,24")
        if self.layers[0] < 1:
            raise InputError(f"pdrop:layers={listed} must all be at least 1 (a stage prunes after the layer before it)")
        if not 0 < self.lambda_ <= 1:
            raise InputError(f"pdrop:lambda is the share each stage keeps and must be in (0, 1], got {self.lambda_}")


def stage_ratios(lambda_: float, stages: int) -> list[float]:
    """lambda^1 .. lambda^stages, each the float nearest the exact decimal power of lambda as written
    (0.5 -> 0.5, 0.25, 0.125; 0.7 -> 0.7, 0.49, 0.343): the release's `image_token_ratio_list`."""
    exact = Fraction(repr(lambda_))  # '0.7' -> 7/10: the decimal the user wrote, not its binary approximation
    return [float(exact ** (s + 1)) for s in range(stages)]


@register
class PyramidDrop(LayerPruner):
    name = "pdrop"
    Args = PDropArgs
    summary = ("in-LLM, staged: before each of `layers`, keep the int(N0 * lambda^s) image tokens (s = 1, 2, ...)"
               " the last token attends to most in that layer; positions renumbered")
    reads_keys = False  # it reads the next layer's projections (of="next"), not the previous layer's q/k
    reads_question = True  # its query row, the prompt's last token, has seen the question
    renumbers = True  # positions 0, 1, ... after every stage, as released

    @property
    def layers(self) -> tuple[int, ...]:
        return self.args.layers

    def stage_budget(self, tokens: int) -> list[int]:
        """Tokens kept of an image of N0 = `tokens` (newline tokens included) after each stage: int(N0 * lambda^(s+1))."""
        return [int(tokens * ratio) for ratio in stage_ratios(self.args.lambda_, len(self.args.layers))]

    def budget(self, tokens_per_image: int) -> int:
        return self.stage_budget(tokens_per_image)[-1]

    def validate(self, vision_layers: int, llm_layers: int, tokens_per_image: int, anyres: bool = False) -> None:
        layers = self.args.layers
        if layers[-1] > llm_layers - 1:
            example = sorted({max(1, llm_layers * quarter // 4) for quarter in (1, 2, 3)})  # 32 layers: 8, 16, 24
            advice = (f"; the default 8,16,24 is for 32 layers: on a shallower LLM give the layers explicitly,"
                      f" e.g. pdrop:layers={','.join(map(str, example))}") if llm_layers >= 2 else ""
            raise InputError(f"pdrop:layers={','.join(map(str, layers))} is outside 1..{llm_layers - 1} for this"
                             f" {llm_layers}-layer LLM{advice}")
        counts = self.stage_budget(tokens_per_image)
        if counts[-1] < 1:
            stage = next(s for s, n in enumerate(counts) if n < 1)
            raise InputError(f"{self.spec} keeps int({tokens_per_image} * {self.args.lambda_}^{stage + 1}) = 0 tokens"
                             f" of {tokens_per_image} visual tokens before layer {layers[stage]};"
                             " every method keeps at least one (raise lambda or use fewer layers)")

    def cut(self, view: StageView) -> list[SpanCut]:
        if view.stage == 0:
            view.memo["tokens"] = [span.length for span in view.spans]  # N0 per image, newline tokens included
        row = view.attention(torch.tensor([view.last_row], device=view.key_mask.device), of="next")[:, 0]  # (H, N)
        scores = row.to(view.hidden.dtype).mean(dim=0)  # (N,) cast as released (fp16 there), mean over heads
        cuts = []
        for span, tokens in zip(view.spans, view.memo["tokens"]):
            keep = max(1, self.stage_budget(tokens)[view.stage])
            cuts.append(SpanCut(top_k_indices(scores[span.start : span.end], keep)))  # sorted: order kept
        return cuts
