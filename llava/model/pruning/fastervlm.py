"""FasterVLM (Zhang et al., arXiv 2412.01818): rank image tokens by the vision encoder's [CLS] attention.

Score = the CLS row of the select layer (the layer whose output LLaVA feeds the
LLM, layer 22 of 24 for LLaVA-1.5), mean over heads: softmax over all 577 keys,
CLS->CLS entry dropped, not renormalised. Keep the top `keep`, in raster order.

The released code runs the projector on all 576 tokens and masks afterwards; the
result is identical to selecting first, which is cheaper, so we select first.
"""

from __future__ import annotations

from llava.model.pruning.base import KeepArgs, KeepBudgetPruner, Kept, VisionInputs, top_k_indices
from llava.model.pruning.registry import register


@register
class FasterVLM(KeepBudgetPruner):
    """`keep`: 144 = 75% of LLaVA-1.5's 576 tokens pruned, 58 = 90%, 29 = 95%."""

    name = "fastervlm"
    Args = KeepArgs
    summary = "pre-LLM: keep the patches the vision encoder's [CLS] attends to most (select layer)"
    reads_attention = True

    def attention_layers(self, vision_layers: int, select_layer: int) -> tuple[int, ...]:
        return (select_layer,)

    def select(self, inputs: VisionInputs) -> Kept:
        self.patch_count(inputs)
        (cls_attention,) = inputs.cls_attention.values()  # (H, P)
        scores = cls_attention.mean(dim=0)  # (P,)
        return Kept(indices=top_k_indices(scores, self.args.keep))
