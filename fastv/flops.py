"""FLOPs of a LLaVA forward, counted from the sequence lengths each part really ran on, and the FastV
paper's formula (METHODS.md, "FastV").

Analytic count (a multiply-add is 2 FLOPs, as torch's FlopCounterMode counts; norms, activations,
softmax, RoPE and the pruning scores' single query rows are left out: under 1% at LLaVA's sizes):

- vision tower, per view, per layer run (up to the select layer, or a later layer a method probes; a
  probe-only last layer runs its query row and keys alone), N = 1 + P tokens of width D, MLP width Dm:
  8 N D^2 (q, k, v, o) + 4 N^2 D (scores and values) + 4 N D Dm; plus the patch embedding 2 P (3 p^2) D;
  a Video-LLaVA video is its T frames through the video tower (T views), and LanguageBind's tower (the original
  checkpoint's, with temporal attention) adds per layer run the temporal attention of each of the N token
  positions over the T frames: 8 T N D^2 + 4 N T^2 D;
- projector: 2 T Dv D per linear layer of its input (T = the tokens projected: every patch, or for a
  method that selects before the projector the tokens it kept);
- LLM prefill, per layer l over n_l real tokens (`PruneStats.seq_lens`: FastV's layers from k on run on
  fewer): 2 n d (H hd) x 2 (q, o) + 2 n d (Hkv hd) x 2 (k, v) + 4 n^2 (H hd) + 6 n d m; the LM head
  2 d V on the last position;
- a decoded token, per layer with a cache of L_l tokens (FastV's pruned layers hold fewer): the same
  with n = 1 attending over L_l + 1 keys, and the LM head.

Paper formula, per layer over n tokens: F(n) = 4 n d^2 + 2 n^2 d + 2 n d m; FastV after layer K of T runs
K layers on n and the rest on n' = n - dropped: ratio = [K F(n) + (T - K) F(n')] / [T F(n)]. F counts a
multiply-add once (its 4 n d^2 are the four d x d projections' n d^2 multiply-adds each), half the FLOPs
above; and it folds Llama's three MLP matrices into two and leaves out the LM head. So a count by the
paper's formula is in multiply-adds throughout (`UNITS`): the LLM's prefill F(n) per layer, a decoded
token F's terms with one query row over the layer's cache, L_l + 1 keys (4 d^2 + 2 (L_l + 1) d + 2 d m),
and the vision tower and projector, which the paper does not count, at half their FLOPs (every term above
is a multiply-add: the halves are exact).
"""

from __future__ import annotations

from dataclasses import dataclass


UNITS = {"measured": "FLOPs", "paper": "multiply-adds"}  # the unit of every quantity of a count, by formula


def layer_flops(n: float, hidden: int, intermediate: int) -> float:
    """The FastV paper's F(n) (multiply-adds)."""
    return paper_layer(n, n, hidden, intermediate)


def paper_layer(queries: float, keys: float, hidden: int, intermediate: int) -> float:
    """F's terms for `queries` rows attending over `keys`: F(n) when both are n, a decoded token when queries = 1."""
    return 4 * queries * hidden**2 + 2 * queries * keys * hidden + 2 * queries * hidden * intermediate


def fastv_flops_ratio(n: float, dropped: float, k: int, layers: int, hidden: int, intermediate: int) -> float:
    """FLOPs of FastV's prefill over the unpruned one's by the paper's formula (1 - its "reduction")."""
    full = layer_flops(n, hidden, intermediate)
    pruned = layer_flops(n - dropped, hidden, intermediate)
    return (k * full + (layers - k) * pruned) / (layers * full)


def paper_llm_flops(seq_lens: list[int], hidden: int, intermediate: int) -> tuple[float, float]:
    """(the paper's F summed over the layers' real lengths, one decoded token by F's terms over those caches),
    in multiply-adds."""
    prefill = sum(layer_flops(n, hidden, intermediate) for n in seq_lens)
    decode = sum(paper_layer(1, n + 1, hidden, intermediate) for n in seq_lens)
    return prefill, decode


@dataclass
class Flops:
    """FLOPs (or, by the paper's formula, multiply-adds: `unit`) of one sample's forward, by part."""

    vision: float
    projector: float
    llm_prefill: float  # decoder layers + LM head on the last position (paper: F over the layers, no head)
    decode_per_token: float  # the first decoded token, with the prefill's cache
    unit: str = UNITS["measured"]

    @property
    def prefill(self) -> float:
        return self.vision + self.projector + self.llm_prefill

    def as_dict(self) -> dict:
        return {"vision": self.vision, "projector": self.projector, "llm_prefill": self.llm_prefill,
                "prefill": self.prefill, "decode_per_token": self.decode_per_token}


def vision_flops(vision, views: int, layers_run: int, probe_only_layer: bool) -> float:
    """`vision`: a VisionConfig; `layers_run` full layers, then (probe_only_layer) one layer's q row and keys."""
    n, d = vision.num_patches + 1, vision.hidden_size
    per_layer = 8 * n * d * d + 4 * n * n * d + 4 * n * d * vision.intermediate_size
    embedding = 2 * vision.num_patches * vision.num_channels * vision.patch_size**2 * d
    probe = 2 * d * d + 2 * n * d * d if probe_only_layer else 0
    return views * (embedding + layers_run * per_layer + probe)


def temporal_flops(vision, frames: int, layers_run: int) -> float:
    """LanguageBind's temporal attention in `layers_run` layers: each of the N = 1 + P token positions over `frames`."""
    n, d = vision.num_patches + 1, vision.hidden_size
    return layers_run * (8 * frames * n * d * d + 4 * n * frames * frames * d)


def projector_flops(projector_type: str, vision_dim: int, text_dim: int, tokens: int) -> float:
    extra = 0 if projector_type == "linear" else int(projector_type[3:].split("x")[0]) - 1  # mlp<N>x_gelu
    return 2 * tokens * (vision_dim * text_dim + extra * text_dim * text_dim)


def decoder_layer_flops(text, queries: int, keys: int) -> float:
    """One decoder layer: `queries` new tokens attending over `keys` (the cache included)."""
    d, q_width, kv_width = text.hidden_size, text.num_heads * text.head_dim, text.num_kv_heads * text.head_dim
    projections = 2 * queries * d * (2 * q_width + 2 * kv_width)
    attention = 4 * queries * keys * q_width
    return projections + attention + 6 * queries * d * text.intermediate_size


def llm_flops(text, seq_lens: list[int]) -> tuple[float, float]:
    """(prefill over the layers' real lengths + the LM head's last row, one decoded token over those caches)."""
    head = 2 * text.hidden_size * text.vocab_size
    prefill = sum(decoder_layer_flops(text, n, n) for n in seq_lens) + head
    decode = sum(decoder_layer_flops(text, 1, n + 1) for n in seq_lens) + head
    return prefill, decode


def count(config, method, seq_lens: list[int], views: int, projected_tokens: int, formula: str = "measured",
          video: bool = False) -> Flops:
    """FLOPs of one sample: `config` a LlavaConfig, `method` the attached pruning method, `seq_lens` the
    sample's PruneStats.seq_lens, `views` the vision tower's views (1, NeXT's 1 + crops, or a video's frames
    with `video`), and `projected_tokens` the tokens that went through the projector. `formula` "paper": every
    part in multiply-adds, the LLM by the paper's F (the module's docstring)."""
    from llava.model.pruning.base import vision_part

    vision = config.vision
    select = vision.layer_index(config.select_layer)
    pre_llm = vision_part(method)  # alone, or first in a chain
    probed = pre_llm.attention_layers(vision.num_layers, select) if pre_llm is not None else ()
    last = max([select, *probed])
    probe_only = last > select  # the model runs only its probe (clip_encoder.CLIPVisionTower.forward)
    vision_count = vision_flops(vision, views, last + 1 - probe_only, probe_only)
    if video and config.video.temporal_attention:  # the probe-only layer runs its temporal step in full
        vision_count += temporal_flops(vision, views, last + 1)
    projector_count = projector_flops(config.projector_type, vision.hidden_size, config.text.hidden_size, projected_tokens)
    if formula == "paper":  # every part in multiply-adds: 2 FLOPs each
        prefill, decode = paper_llm_flops(seq_lens, config.text.hidden_size, config.text.intermediate_size)
        return Flops(vision_count // 2, projector_count // 2, prefill, decode, unit=UNITS["paper"])
    prefill, decode = llm_flops(config.text, seq_lens)
    return Flops(vision_count, projector_count, prefill, decode)
