"""Chained methods: `a+b` specs, e.g. `fastervlm:keep=192+fastv:k=2,keep=96`,
`visionzip:keep=128+pdrop:layers=2,3,lambda=0.5`.

A chain is at most one pre-LLM method (a VisionPruner: it must come first) followed by in-LLM methods (LayerPruners)
whose stages come in increasing layer order. Each method counts its budget on what the earlier ones left: the
in-LLM stages see the images as the pre-LLM method packed them (`keep` of a later FastV is out of the 192 a
FasterVLM kept), and a later in-LLM method sees the spans an earlier stage left. FastV's mask mode and its
re-selection without a cache study one method alone and are refused in a chain.
"""

from __future__ import annotations

from llava.errors import InputError
from llava.model.pruning.base import LayerPruner, MethodArgs, PruningMethod, VisionPruner


class Chain(PruningMethod):
    """The methods of an `a+b` spec, in order (not registered: `registry.parse_method` builds it)."""

    name = "chain"
    Args = MethodArgs

    def __init__(self, parts: list[PruningMethod]):
        super().__init__(MethodArgs())
        spec = "+".join(p.spec for p in parts)
        if len(parts) < 2:
            raise InputError(f"a chain needs two methods or more, got '{spec}'")
        for i, part in enumerate(parts):
            if not isinstance(part, (VisionPruner, LayerPruner)):
                raise InputError(f"'{part.spec}' cannot be chained ('{spec}'): a chain is one pre-LLM method and/or in-LLM methods")
            if isinstance(part, VisionPruner) and i > 0:
                what = "two pre-LLM methods" if isinstance(parts[0], VisionPruner) else "an in-LLM method before a pre-LLM one"
                raise InputError(f"'{spec}' chains {what}; a chain is at most one pre-LLM method, first, then in-LLM methods")
            if isinstance(part, LayerPruner) and (part.mode != "inplace" or part.reselect_every_step):
                raise InputError(f"'{part.spec}' studies FastV alone (mask mode, re-selection without a cache); it cannot be chained")
        layers = [layer for part in parts if isinstance(part, LayerPruner) for layer in part.layers]
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise InputError(f"the in-LLM stages of '{spec}' prune before layers {', '.join(map(str, layers))};"
                             " a later method must prune after the earlier one's last stage")
        self.parts = tuple(parts)

    @property
    def spec(self) -> str:
        return "+".join(p.spec for p in self.parts)

    @property
    def acts(self) -> str:
        return " + ".join(p.acts for p in self.parts)

    @property
    def video(self) -> str:
        return " + ".join(p.video for p in self.parts)

    def check_video(self) -> None:
        for part in self.parts:
            part.check_video()

    def check_model(self, vision_layers: int, llm_layers: int, tokens_per_image: int, anyres: bool = False,
                    video_tokens: int = 0) -> None:
        """Each part against what the earlier ones left of an image; `video_tokens` (Video-LLaVA) passes on as the
        bound of a video's span: a pre-LLM part only lowers it, and each span is checked again when it runs."""
        tokens = tokens_per_image
        for part in self.parts:
            part.check_model(vision_layers, llm_layers, tokens, anyres, video_tokens)
            budget = part.budget(tokens)
            tokens = tokens if budget is None else budget

    def budget(self, tokens_per_image: int) -> int | None:
        tokens: int | None = tokens_per_image
        for part in self.parts:
            tokens = part.budget(tokens) if tokens is not None else None
        return tokens
