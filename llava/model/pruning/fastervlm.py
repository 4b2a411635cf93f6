"""FasterVLM (Zhang et al., arXiv 2412.01818): rank image tokens by the vision encoder's [CLS] attention.

Score = the CLS row of the select layer (the layer whose output LLaVA feeds the
LLM, layer 22 of 24 for LLaVA-1.5), mean over heads: softmax over all 577 keys,
CLS->CLS entry dropped, not renormalised. Keep the top `keep`, in raster order.

The released code runs the projector on all 576 tokens and masks afterwards; the
result is identical to selecting first, which is cheaper, so we select first.
"""

from __future__ import annotations

from dataclasses import dataclass

from llava.errors import InputError
from llava.model.pruning.base import Kept, MethodArgs, VisionInputs, VisionPruner, check_budget, top_k_indices
from llava.model.pruning.registry import register


@dataclass(frozen=True)
class FasterVLMArgs(MethodArgs):
    keep: int  # visual tokens kept per image (144 = 75% pruned, 58 = 90%, 29 = 95% of 576)

    def __post_init__(self):
        if self.keep < 0:
            raise InputError(f"fastervlm:keep must be >= 0, got {self.keep}")


@register
class FasterVLM(VisionPruner):
    name = "fastervlm"
    Args = FasterVLMArgs
    summary = "pre-LLM: keep the patches the vision encoder's [CLS] attends to most (select layer)"

    def attention_layers(self, vision_layers: int, select_layer: int) -> tuple[int, ...]:
        return (select_layer,)

    def validate(self, vision_layers: int, llm_layers: int, tokens_per_image: int) -> None:
        check_budget(self.args.keep, tokens_per_image, "each image")

    def budget(self, tokens_per_image: int) -> int:
        return self.args.keep

    def select(self, inputs: VisionInputs) -> Kept:
        (cls_attention,) = inputs.cls_attention.values()  # (H, P)
        scores = cls_attention.mean(dim=0)  # (P,)
        check_budget(self.args.keep, scores.shape[0], f"image {inputs.image_index}")
        return Kept(indices=top_k_indices(scores, self.args.keep))
