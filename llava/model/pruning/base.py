"""Interfaces between the model and the pruning methods (pure tensor code: no model imports).

Two seams, as DESIGN.md describes:

- `VisionPruner` acts per image on the vision tower's output, before the LLM: per view
  (`select`: LLaVA-1.5's image, a NeXT base view or crop) or, for a method whose views
  share one budget (HiRED), over all views of an image at once (`select_image`). It
  declares which CLIP layers' probes it needs, whether it selects before or after the
  projector, and how a NeXT image's kept tokens are packed; it returns a `Kept` per view.
- `LayerPruner` acts inside the LLM, in one or more stages: before each of its
  `layers`, it sees a `StageView` of every sample (the visual spans as they are at
  that layer, the hidden states entering it, attention rows of the layer before or
  of that layer, its keys, the input embeddings) and answers a `SpanCut` per image:
  the tokens to keep and, optionally, groups of tokens merged into new ones. The
  model owns everything else (gathering, merging, masks, caches, positions, the
  query row that always stays): llava/model/llm_pruning.py.

Budgets: `keep` is a count of visual tokens kept per image; `ratio` is always the
fraction *dropped* (FastV's R). Every method keeps at least one visual token of every
image, on every model: a budget of none (`keep=0`, `fastv:ratio=1`, a HiRED rate below
1 / N) is refused when the spec is parsed or the method is attached (`check_model`), never
run with an empty image span (which LLaVA-NeXT's layout cannot pack, and which is the
text-only prompt, not a pruning budget).

Videos (Video-LLaVA, VIDEO.md R1/R2): a pre-LLM method selects in every frame as in an image (each frame is a
view; `keep` counts patches per frame, the frame's [CLS] left to the model's `video_cls`); an in-LLM method sees
the whole video as one span whose partitions are its frames and chooses over it globally (`keep` counts tokens
of the span, the frames' [CLS] tokens included when they entered; `ratio` is a fraction of the span). A method
that cannot apply to a video refuses it by name when one is encoded (`video_refusal`).

Where this file sits among the others, and one request's path through them: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from llava.errors import InputError
from llava.model.pruning.spec import format_spec


NEWLINE = -1  # the partition (and patch) of a LLaVA-NeXT image_newline token
FRAME_CLS = -2  # the patch index of a video frame's [CLS] token (Video-LLaVA's layout: [CLS, patches] per frame)


@dataclass
class VisualSpan:
    """Where one image's tokens sit in a sample's (padded) sequence, and which patches they are.

    An image is one or more partitions of `grid` patches each: LLaVA-1.5's single view (partition
    0, `partition_grid` (0, 0)), or LLaVA-NeXT's base view (partition 0) and crops 1 + r * cols + c
    of a `partition_grid` = (rows, cols) crop grid. `partition` and `patch_index` say, per token,
    which partition and which patch of it the token is; image_newline tokens have NEWLINE in both.

    A video (`frames` > 0) is one span of `frames` partitions, one per frame in time order: `partition`
    is the frame of every token, `patch_index` its raster patch in that frame, FRAME_CLS for the frame's
    [CLS] token (Video-LLaVA's stock layout puts it in front of the frame's patches; video_cls="drop"
    leaves it out). A frame's CLS is no patch: `kept_partitions` leaves it out, `kept_cls` lists it.
    """

    start: int  # index of the first visual token in the sequence
    length: int  # visual tokens entering the LLM for this image (newline tokens included)
    grid: tuple[int, int]  # patch grid of one partition before pruning, e.g. (24, 24)
    patch_index: torch.Tensor  # (length,) raster index in its partition; -1 for a merged/extra or newline token
    partition: torch.Tensor | None = None  # (length,) partition of every token; None: all in partition 0
    partition_grid: tuple[int, int] = (0, 0)  # (rows, cols) of crops; (0, 0) without crops
    frames: int = 0  # a video's frames (its partitions); 0 for an image

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def partitions(self) -> int:
        if self.frames:
            return self.frames
        return 1 + self.partition_grid[0] * self.partition_grid[1]

    @property
    def token_partition(self) -> torch.Tensor:
        """(length,) the partition of every token (NEWLINE for a newline token)."""
        if self.partition is None:
            return torch.zeros(self.length, dtype=torch.long, device=self.patch_index.device)
        return self.partition

    @property
    def newline(self) -> torch.Tensor:
        """(length,) bool: the image_newline tokens, which no method prunes and no budget counts."""
        return self.token_partition == NEWLINE

    def kept_partitions(self, keep: torch.Tensor | None = None) -> list[list[int]]:
        """Per partition, the sorted patch indices of its tokens (of those where `keep`, a (length,)
        bool, is True): merged/extra tokens (-1) and newline tokens are not patches of any."""
        partition, patch = self.token_partition, self.patch_index
        if keep is not None:
            partition, patch = partition[keep], patch[keep]
        return [sorted(patch[(partition == p) & (patch >= 0)].tolist()) for p in range(self.partitions)]

    def kept_cls(self, keep: torch.Tensor | None = None) -> list[int]:
        """A video: the frames whose [CLS] token is among the tokens (of those where `keep`), ascending; [] for
        an image."""
        partition, patch = self.token_partition, self.patch_index
        if keep is not None:
            partition, patch = partition[keep], patch[keep]
        return sorted(partition[patch == FRAME_CLS].tolist())

    def kept_ids(self, keep: torch.Tensor | None = None) -> list[int]:
        """The tokens' patch ids in sequence order, newline tokens left out: the patch index for one
        partition (LLaVA-1.5's `kept`), else partition * patches + patch (an index into the image's
        partitions laid end to end, base first); -1 stays -1."""
        partition, patch = self.token_partition, self.patch_index
        if keep is not None:
            partition, patch = partition[keep], patch[keep]
        patches = self.grid[0] * self.grid[1]
        visual = partition != NEWLINE
        ids = torch.where(patch >= 0, partition * patches + patch, patch)
        return ids[visual].tolist()


@dataclass
class VisionInputs:
    """What a VisionPruner sees for one image."""

    features: torch.Tensor  # (P, D) patch features of the select layer (CLS removed); projected if the
    #                         method declares before_projector = False
    cls_attention: dict[int, torch.Tensor]  # layer -> (H, P) fp32 CLS row over patches
    keys: dict[int, torch.Tensor]  # layer -> (1 + P, D) keys of that layer
    grid: tuple[int, int]
    image_index: int  # position of the view in the batch's list of views (for error messages)
    pixel_values: torch.Tensor | None = None  # (3, S, S) the image as the vision tower saw it
    cls_query: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (D,) that layer's CLS query
    cls_feature: torch.Tensor | None = None  # (D,) the select layer's CLS feature, before the projector
    # A Video-LLaVA frame: the model's video_cls ("keep": the model puts the frame's [CLS] in front of what `select`
    # keeps; "drop": it does not); None for an image view
    video_cls: str | None = None


@dataclass
class Kept:
    """A VisionPruner's answer for one image."""

    indices: torch.Tensor  # (T,) original patch indices, in the order the tokens enter the LLM; -1 for a token
    #                        that is no patch (PruMerge's extra token)
    features: torch.Tensor | None = None  # (T, D) when the method merges/creates features itself


def top_k_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, ties broken towards the lower index, returned in raster order."""
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    return order[:k].sort().values


def check_keep(keep: int, where: str = "keep") -> None:
    """`keep` counts tokens kept per image: at least one (the module docstring says why)."""
    if keep < 1:
        raise InputError(f"{where} must be at least 1 (every method keeps at least one visual token of an image), got {keep}")


def check_budget(keep: int, available: int, what: str) -> None:
    if keep > available:
        raise InputError(f"keep={keep} is larger than the {available} visual tokens in {what}")


@dataclass(frozen=True)
class MethodArgs:
    """Base of every method's arguments dataclass; subclasses validate in __post_init__."""


class PruningMethod(ABC):
    """A registered method: `name`, its `Args` dataclass, and `args` once built."""

    name: ClassVar[str]
    Args: ClassVar[type[MethodArgs]]
    summary: ClassVar[str] = ""
    # What `fastv methods` reports of a method:
    acts: ClassVar[str] = "vision"  # "vision" (before the projector), "llm input" (after it) or "in LLM"
    reads_attention: ClassVar[bool] = False  # ranks by attention probabilities (CLIP's or the LLM's)
    reads_question: ClassVar[bool] = False  # its choice depends on the question's tokens
    renumbers: ClassVar[bool] = False  # in-LLM: kept tokens get positions 0, 1, ... (else keep their own)
    # On a video: how its budget counts ("per frame": pre-LLM, each frame chosen as an image; "over the span": in-LLM,
    # one choice over the whole video), and why it does not apply to one (None: it does; refused by name)
    video: ClassVar[str] = "-"
    video_refusal: ClassVar[str | None] = None

    def __init__(self, args: MethodArgs):
        self.args = args

    @property
    def spec(self) -> str:
        """Canonical spec string, e.g. 'fastv:k=2,keep=288'."""
        return format_spec(self.name, self.args)

    def validate(self, vision_layers: int, llm_layers: int, tokens_per_image: int, anyres: bool = False) -> None:
        """Check the arguments against a model (`anyres`: LLaVA-NeXT); raise InputError naming the problem."""

    def check_model(self, vision_layers: int, llm_layers: int, tokens_per_image: int, anyres: bool = False,
                    video_tokens: int = 0) -> None:
        """`validate`, then the rule every method shares: a budget that keeps no token of an image is refused.
        `video_tokens`: on Video-LLaVA, the tokens an unpruned video brings to the LLM; a method whose budget counts
        over the span is validated against the larger span (each span is checked again when it runs), and must keep
        a token of an image."""
        span = max(tokens_per_image, video_tokens) if self.video == "over the span" else tokens_per_image
        keep = getattr(self.args, "keep", None)
        if span > tokens_per_image and isinstance(keep, int):  # named as a video's: validate would say "image"
            check_budget(keep, span, f"a video ({self.name}'s keep counts over the whole video, not per frame)")
        self.validate(vision_layers, llm_layers, span, anyres)
        budget = self.budget(tokens_per_image)
        if budget is not None and budget < 1:
            raise InputError(f"{self.spec} keeps no visual token of a {tokens_per_image}-patch image;"
                             " every method keeps at least one")

    def check_video(self) -> None:
        """Refuse a video, naming the method, when it does not apply to one (the model calls it per video)."""
        if self.video_refusal is not None:
            raise InputError(f"method '{self.name}' does not apply to videos: {self.video_refusal}")

    def budget(self, tokens_per_image: int) -> int | None:
        """Visual tokens per image this method promises to keep (None when adaptive)."""
        return tokens_per_image


# How a LLaVA-NeXT image's kept tokens are packed for the LLM (VisionPruner.packing):
#   "merge":      in the order of the model's patch merge (anyres.anyres_layout), newline tokens included;
#   "no_newline": the same order without the newline tokens (HiRED);
#   "concat":     partition after partition, each in the order `select` returned, nothing stitched,
#                 unpadded or added (PruMerge: a merged or extra token has no place in the grid);
#   "own":        in the order the method's `pack` gives, from every view's kept rows and the image's
#                 layouts (VisionZip's release: base view, stitched crop patches, crop [CLS] tokens, crop
#                 contextual tokens).
# After the packing, on LLaVA-NeXT only, `select_laid_out` may choose among the image's laid-out tokens, as
# they enter the LLM (DivPrune: one selection over the whole image, image_newline tokens included).
PACKINGS = ("merge", "no_newline", "concat", "own")


class VisionPruner(PruningMethod):
    before_projector: ClassVar[bool] = True
    packing: ClassVar[str] = "merge"
    video = "per frame"

    def attention_layers(self, vision_layers: int, select_layer: int) -> tuple[int, ...]:
        """0-based CLIP layers whose CLS probe this method needs; `select_layer` is 0-based too."""
        return ()

    @abstractmethod
    def select(self, inputs: VisionInputs) -> Kept: ...

    def select_image(self, views: list[VisionInputs], partition_grid: tuple[int, int]) -> list[Kept]:
        """All views of one image -> a Kept per view: LLaVA-1.5's one view (`partition_grid` (0, 0)), or
        LLaVA-NeXT's base view then its crops in row-major order of the (rows, cols) crop grid. By
        default every view is selected on its own."""
        return [self.select(view) for view in views]

    def pack(self, indices: list[torch.Tensor], merged: torch.Tensor, stitched: torch.Tensor) -> torch.Tensor:
        """Packing "own", LLaVA-NeXT: one image's `Kept.indices` per view (base view, then the crops row-major),
        the image's layout in the model's merge (`merged`, anyres.anyres_layout: (T, 2) (partition, patch), newline
        tokens (NEWLINE, NEWLINE)) and its crops' whole stitched grid in raster order (`stitched`, (S, 2), no
        unpad, no newline) -> (T', 2) long, per token in sequence order: (view, row of that view's Kept), or
        (NEWLINE, NEWLINE) for an image_newline token."""
        raise NotImplementedError(f"method '{self.name}' declares packing 'own' but has no pack")

    def select_laid_out(
        self, features: torch.Tensor, layout: torch.Tensor, partition_grid: tuple[int, int]
    ) -> torch.Tensor | None:
        """LLaVA-NeXT, after the packing: one image's tokens as they enter the LLM, features (T, D) (projected,
        image_newline tokens included) and layout (T, 2) (partition, patch; NEWLINE pairs for newline tokens), of
        an image of a (rows, cols) crop grid -> the sorted positions (T',) kept, or None to keep every token (the
        default: a method that chose per view in `select_image`)."""
        return None


@dataclass(frozen=True)
class KeepArgs(MethodArgs):
    keep: int  # visual tokens kept per image

    def __post_init__(self):
        check_keep(self.keep)


class KeepBudgetPruner(VisionPruner):
    """A vision pruner that keeps exactly `args.keep` tokens of every image."""

    def validate(self, vision_layers: int, llm_layers: int, tokens_per_image: int, anyres: bool = False) -> None:
        check_budget(self.args.keep, tokens_per_image, "each image")

    def budget(self, tokens_per_image: int) -> int:
        return self.args.keep

    def patch_count(self, inputs: VisionInputs) -> int:
        """Patches of this image, checked against the budget."""
        patches = inputs.features.shape[0]
        check_budget(self.args.keep, patches, f"image {inputs.image_index}")
        return patches


@dataclass
class StageView:
    """What one stage of an in-LLM method sees of one sample, in the sample's layout at that stage: N rows, left
    padding first (`key_mask` False), then the real tokens; the images are `spans`, every other real row is text."""

    layer: int  # the stage prunes before this decoder layer
    stage: int  # which of the method's stages (0-based)
    spans: list[VisualSpan]  # the sample's images as they are now (merged tokens: patch_index -1)
    key_mask: torch.Tensor  # (N,) bool
    hidden: torch.Tensor  # (N, D) the hidden states entering layer `layer`
    embeds: torch.Tensor  # (N, D) the LLM's input embeddings of the rows
    attention: Callable[..., torch.Tensor]  # (rows (R,), of="previous"|"next") -> (H, R, N) fp32, LayerState.attention
    keys: Callable[[], torch.Tensor]  # () -> (N, Hkv * hd) layer - 1's keys after RoPE
    final_norm: Callable[[torch.Tensor], torch.Tensor]  # the LLM's final RMSNorm
    memo: dict = field(default_factory=dict)  # the method's notes about this sample, kept from stage to stage

    @property
    def last_row(self) -> int:
        """The query row: the sample's last real token (the last column, as padding is on the left)."""
        return self.key_mask.shape[0] - 1

    @property
    def first_row(self) -> int:
        """The sample's first real row (after its left padding)."""
        return int(self.key_mask.long().argmax())

    def text_after_images(self) -> torch.Tensor:
        """(T,) the real rows after the sample's last image, ascending: its question and the template's tail."""
        end = self.spans[-1].end if self.spans else self.first_row
        return torch.arange(end, self.key_mask.shape[0], device=self.key_mask.device)


@dataclass
class SpanCut:
    """A stage's answer for one image span of L rows: which rows stay, and which new tokens are merged from them."""

    keep: torch.Tensor  # (T,) sorted local indices (0..L-1) of the rows kept, in their order
    mix: torch.Tensor | None = None  # (M, L) weights: new token m = sum_i mix[m, i] * row i; placed after the kept rows


class LayerPruner(PruningMethod):
    """An in-LLM method: one or more stages, each before one decoder layer."""

    acts = "in LLM"
    reads_attention = True
    video = "over the span"
    mode: str = "inplace"  # "mask": every row stays and the dropped keys are masked (FastV's option)
    reselect_every_step: bool = False
    reads_keys: ClassVar[bool] = True  # its stages read the previous layer's queries and keys

    @property
    @abstractmethod
    def layers(self) -> tuple[int, ...]:
        """Ascending decoder layers before which it prunes (1..layers-1), one per stage."""

    @abstractmethod
    def cut(self, view: StageView) -> list[SpanCut]:
        """One sample at stage `view.stage` -> a SpanCut per span of `view.spans`."""

    def stage_budget(self, tokens: int) -> list[int] | None:
        """Image tokens it keeps of an image of `tokens` at each stage (None when that depends on the input)."""
        return None


def method_parts(method: PruningMethod) -> list[PruningMethod]:
    """The methods a spec chains (`a+b`, pruning.chain.Chain), in order; a single method alone."""
    return list(getattr(method, "parts", (method,)))


def vision_part(method: PruningMethod) -> VisionPruner | None:
    """The pre-LLM method of a spec (alone or first in a chain), if any."""
    return next((p for p in method_parts(method) if isinstance(p, VisionPruner)), None)


def llm_parts(method: PruningMethod) -> list[LayerPruner]:
    """The in-LLM methods of a spec, in the order their stages run."""
    return [p for p in method_parts(method) if isinstance(p, LayerPruner)]


@dataclass
class PruneStats:
    """What pruning did in one forward, per sample (lists per image inside). A LLaVA-1.5 image is one
    partition; a LLaVA-NeXT one is its base view, then its crops in row-major order."""

    visual_tokens: list[list[int]] = field(default_factory=list)  # tokens entering the LLM (newline tokens included)
    kept: list[list[list[int]]] = field(default_factory=list)  # VisualSpan.kept_ids of the tokens entering the LLM
    kept_partitions: list[list[list[list[int]]]] = field(default_factory=list)  # per partition: sorted patch indices
    partition_grid: list[list[tuple[int, int]]] = field(default_factory=list)  # (rows, cols) of crops, (0, 0) for none
    newline_tokens: list[list[int]] = field(default_factory=list)  # image_newline tokens among visual_tokens
    kept_in_llm: list[list[list[int]]] | None = None  # in-LLM pruning: `kept` after its last stage
    kept_partitions_in_llm: list[list[list[list[int]]]] | None = None  # in-LLM pruning: `kept_partitions` after it
    kept_stages: list[dict] | None = None  # in-LLM pruning, per stage: {"layer": L, "kept": per sample `kept`}
    seq_lens: list[list[int]] = field(default_factory=list)  # per sample, per layer: real tokens the layer ran on
    # Videos (a span with frames; the lists above hold it as one more visual, its partitions being its frames):
    frames: list[list[int]] = field(default_factory=list)  # per sample, per visual: frames (0 for an image)
    kept_cls: list[list[list[int]]] = field(default_factory=list)  # per visual: frames whose [CLS] token entered
    kept_cls_in_llm: list[list[list[int]]] | None = None  # in-LLM pruning: `kept_cls` after its last stage

    def partition_tokens(self, in_llm: bool = True) -> list[list[list[int]]]:
        """Per sample, per image, per partition: patches kept (after layer k for in-LLM pruning
        when `in_llm`); merged/extra tokens are not counted."""
        kept = self.kept_partitions_in_llm if in_llm and self.kept_partitions_in_llm is not None else self.kept_partitions
        return [[[len(p) for p in image] for image in sample] for sample in kept]
