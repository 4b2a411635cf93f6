"""Llama decoder (Vicuna-1.5 / LLaVA-1.5's LLM) with a seam for in-LLM token pruning.

Reproduces transformers' `LlamaModel` + `lm_head` numerically (tested to 1e-4 in
fp32): RMSNorm, rotary embeddings computed from explicit position ids (default,
linear and llama3 rope scaling), grouped-query attention through SDPA, SiLU MLP.

What it adds, all in `LlamaDecoder.forward`'s one loop over layers:

- **The pruning seam.** An `InLLMPruning` (see below) may rebuild the sequence
  before any of its stage layers: the decoder hands it a `LayerState` (the
  hidden states entering that layer, the key mask and positions, and on request
  the previous layer's post-RoPE queries and keys, from which any attention row
  is recomputed in O(R N d), so SDPA stays on in every layer), and applies the
  `Regather` it returns: kept rows gathered and re-packed with left padding (so
  each sample in a batch keeps its own set), merged tokens inserted, positions
  kept or renumbered. Layers after a stage run on the new sequence; a stage may
  also only mask keys (FastV's *mask* mode).
- **A ragged KV cache.** Each layer caches its own keys with its own key mask,
  so layers before a stage hold more tokens than layers after it. Decoding
  appends one token to every layer at that layer's next position: the unpruned
  numbering, less what a renumbering stage removed before that layer
  (`KVCache.position_shift`). Keys and values live in per-layer buffers with
  room for the tokens to come (`cache_reserve`), so a decoding step writes one
  slot instead of copying the whole cache (`torch.cat` per step made the time
  per token grow with the tokens generated).

Where this file sits among the others, and one request's path through them: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rope_type: str = "default"  # "default" | "linear" | "llama3"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_position_embeddings: int = 8192  # llama3 only
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False


LLAMA_PRESETS = {
    "vicuna-7b-v1.5": LlamaConfig(),
    "vicuna-13b-v1.5": LlamaConfig(
        hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40, num_kv_heads=40
    ),
    # Mistral-7B-Instruct-v0.2 (llava-v1.6-mistral-7b's decoder): no sliding window, 32k context
    "mistral-7b-instruct-v0.2": LlamaConfig(
        intermediate_size=14336, num_kv_heads=8, max_position_embeddings=32768, rope_theta=1e6
    ),
}


# ---------------------------------------------------------------------------------------------
# Cache and the pruning seam's interface


class _KVBuffer:
    """Key and value storage of one layer, shared by the successive caches of a generation: (B, Hkv, capacity, hd)
    each, of which the first `filled` slots are written."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int):
        self.keys, self.values, self.filled = keys, values, filled

    @classmethod
    def holding(cls, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> "_KVBuffer":
        """A buffer of `capacity` slots (at least the tokens given) holding `keys` and `values` (B, Hkv, T, hd)."""
        T = keys.shape[2]
        if capacity <= T:
            return cls(keys, values, T)
        shape = (*keys.shape[:2], capacity, keys.shape[3])
        buffer = cls(keys.new_empty(shape), values.new_empty(shape), T)
        buffer.keys[:, :, :T], buffer.values[:, :, :T] = keys, values
        return buffer


@dataclass
class LayerCache:
    """One layer's cached keys and values (after RoPE), (B, Hkv, T, hd) views of its buffer, and their key mask."""

    buffer: _KVBuffer
    length: int  # T: the slots of the buffer this cache holds
    key_mask: torch.Tensor  # (B, T) bool: True where the cached token is real (not padding, not pruned)

    @classmethod
    def start(cls, keys: torch.Tensor, values: torch.Tensor, key_mask: torch.Tensor, reserve: int = 0) -> "LayerCache":
        """The prefill's cache, with room for `reserve` more tokens."""
        return cls(_KVBuffer.holding(keys, values, keys.shape[2] + reserve), keys.shape[2], key_mask)

    @property
    def keys(self) -> torch.Tensor:
        return self.buffer.keys[:, :, : self.length]

    @property
    def values(self) -> torch.Tensor:
        return self.buffer.values[:, :, : self.length]

    def append(self, keys: torch.Tensor, values: torch.Tensor, key_mask: torch.Tensor) -> "LayerCache":
        """This cache followed by `keys` and `values` (B, Hkv, Q, hd); `key_mask` (B, T + Q) covers both.

        Written in place into the free slots of the buffer; the buffer is copied only when it is full (to twice the
        size) or when this cache was already extended (a second continuation of one prefix must not overwrite the
        first's slots). This cache object keeps reading its own T tokens either way."""
        end = self.length + keys.shape[2]
        buffer = self.buffer
        if buffer.filled != self.length or end > buffer.keys.shape[2]:
            buffer = _KVBuffer.holding(self.keys, self.values, max(end, 2 * self.length))
        buffer.keys[:, :, self.length:end], buffer.values[:, :, self.length:end] = keys, values
        buffer.filled = end
        return LayerCache(buffer, end, key_mask)


@dataclass
class KVCache:
    """Per-layer caches whose lengths may differ (pruned layers hold fewer tokens)."""

    layers: list[LayerCache]
    next_position: torch.Tensor  # (B,) position id of the next token in the unpruned numbering
    # per layer: (B,) subtracted from `next_position` in that layer (what renumbering stages removed before it)
    position_shift: list[torch.Tensor | None] = field(default_factory=list)

    def seq_lens(self) -> list[int]:
        return [layer.length for layer in self.layers]


@dataclass
class Regather:
    """How a stage rebuilds the sequence of N rows into N' rows.

    Row i of sample b becomes old row `sources[b, i]`, or, where `sources[b, i]` is N + m, merged token m: the
    `mix[b, m]`-weighted sum of the old rows. `sources` None: every row stays and only the key mask changes
    (masked keys; positions untouched). `renumber`: the new real rows get positions 0, 1, ... (else each row keeps
    its own; a merged token has none of its own, so merging requires renumbering).
    """

    sources: torch.Tensor | None  # (B, N') long
    key_mask: torch.Tensor  # (B, N') bool
    mix: torch.Tensor | None = None  # (B, M, N) weights of the merged tokens
    renumber: bool = False

    def __post_init__(self):
        if self.mix is not None and not self.renumber:
            raise ValueError("merged tokens have no position of their own: a stage that merges must renumber")


def row_attention(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Attention probabilities of the query rows `rows` (R,) over all keys, fp32, as causal attention computes them:
    q (H, R, hd) those rows' queries and k (Hkv, N, hd) every key, after RoPE, key_mask (N,) -> (H, R, N). Row r sees
    the real keys up to r."""
    H, _, hd = q.shape
    N = k.shape[1]
    k = (k.repeat_interleave(H // k.shape[0], dim=0) if k.shape[0] != H else k).float()
    logits = q.float() @ k.transpose(-1, -2) / math.sqrt(hd)  # (H, R, N)
    visible = key_mask[None, :] & (torch.arange(N, device=q.device)[None, :] <= rows[:, None])  # (R, N)
    return logits.masked_fill(~visible, float("-inf")).softmax(dim=-1)


@dataclass
class LayerState:
    """What the decoder offers a stage before decoder layer `layer`, for the whole batch."""

    layer: int
    hidden: torch.Tensor  # (B, N, D) the input of layer `layer` (output of layer - 1)
    key_mask: torch.Tensor  # (B, N) True = real token
    positions: torch.Tensor  # (B, N) the rows' current position ids
    embeds: torch.Tensor  # (B, N, D) the decoder's input embeddings of the rows (a merged token: its mix of them)
    qk: tuple[torch.Tensor, torch.Tensor] | None  # layer - 1's queries (B, H, N, hd) and keys (B, Hkv, N, hd), post-RoPE
    decoder: "LlamaDecoder"
    _next: tuple | None = None  # layer `layer`'s normed input, cos, sin and keys, once asked for

    def attention(self, b: int, rows: torch.Tensor, of: str = "previous") -> torch.Tensor:
        """Sample b's attention rows (R,) -> (H, R, N) fp32: of layer `layer - 1` ("previous", from the queries and
        keys it computed) or of layer `layer` ("next": its input norm, projections and RoPE on `hidden` at the
        current positions, keys for every row and queries for the asked rows only; PyramidDrop ranks with the layer
        it prunes before)."""
        if of == "previous":
            if self.qk is None:
                raise ValueError(f"the stage before layer {self.layer} did not ask for layer {self.layer - 1}'s queries and keys")
            return row_attention(self.qk[0][b][:, rows], self.qk[1][b], self.key_mask[b], rows)
        if of != "next":
            raise ValueError(f"attention of '{of}' layer: 'previous' or 'next'")
        layer = self.decoder.layers[self.layer]
        if self._next is None:
            x = layer.input_layernorm(self.hidden)
            cos, sin = self.decoder.rope(self.positions, x.dtype)
            self._next = (x, cos, sin, layer.self_attn.keys(x, cos, sin))
        x, cos, sin, k = self._next
        q = layer.self_attn.queries(x[b : b + 1, rows], cos[b : b + 1, rows], sin[b : b + 1, rows])[0]  # (H, R, hd)
        return row_attention(q, k[b], self.key_mask[b], rows)

    def keys(self, b: int) -> torch.Tensor:
        """Sample b's keys of layer `layer - 1` after RoPE, heads side by side: (N, Hkv * hd)."""
        if self.qk is None:
            raise ValueError(f"the stage before layer {self.layer} did not ask for layer {self.layer - 1}'s keys")
        k = self.qk[1][b]  # (Hkv, N, hd)
        return k.transpose(0, 1).reshape(k.shape[1], -1)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The LLM's final RMSNorm (DART's duplication features)."""
        return self.decoder.norm(x)


class InLLMPruning(Protocol):
    """What the decoder asks of an in-LLM pruner (built per forward by llava's llm_pruning from LayerPruners).

    `layers`: ascending layer indices in 1..num_layers-1; before each, the decoder calls `cut(state)` and applies
    the `Regather` it returns. `wants_qk(layer)`: whether that stage reads layer - 1's queries and keys.
    """

    layers: tuple[int, ...]

    def wants_qk(self, layer: int) -> bool: ...

    def cut(self, state: LayerState) -> Regather: ...


@dataclass
class DecoderOutput:
    hidden: torch.Tensor  # (B, N', D) after the final norm
    key_mask: torch.Tensor  # (B, N') True where the row is a real token
    cache: KVCache | None
    attention: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, H, Q, K) fp32, when asked


# ---------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inverse_frequencies(config: LlamaConfig) -> torch.Tensor:
    """Inverse frequencies (hd/2,) with the checkpoint's rope scaling applied."""
    hd = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    if config.rope_type == "default":
        return inv_freq
    if config.rope_type == "linear":
        return inv_freq / config.rope_factor
    if config.rope_type == "llama3":
        old_context = config.rope_original_max_position_embeddings
        low_wavelen = old_context / config.rope_low_freq_factor
        high_wavelen = old_context / config.rope_high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / config.rope_factor, inv_freq)
        smooth = (old_context / wavelen - config.rope_low_freq_factor) / (
            config.rope_high_freq_factor - config.rope_low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / config.rope_factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    raise ValueError(f"unsupported rope scaling type '{config.rope_type}' (supported: default, linear, llama3)")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def attention_mask(key_mask: torch.Tensor, q_len: int) -> torch.Tensor | None:
    """Boolean SDPA mask (B, 1, Q, K) for queries at the last `q_len` of `K` key slots.

    A query sees earlier-or-same slots whose key is real. Padding rows also see
    themselves, so no softmax row is empty (their outputs are never read).
    Returns None when plain causal attention is exact (no padding, no pruned keys).
    """
    K = key_mask.shape[1]
    if bool(key_mask.all()) and q_len in (1, K):
        return None
    q_index = torch.arange(K - q_len, K, device=key_mask.device)[:, None]  # (Q, 1)
    k_index = torch.arange(K, device=key_mask.device)[None, :]  # (1, K)
    visible = (k_index <= q_index) & (key_mask[:, None, :] | (k_index == q_index))  # (B, Q, K)
    return visible[:, None]


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        d, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=bias)

    def queries(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x (B, Q, D) (after the input norm), cos/sin (B, Q, hd) -> queries (B, H, Q, hd), RoPE applied."""
        B, Q, _ = x.shape
        q = self.q_proj(x).view(B, Q, self.num_heads, self.head_dim).transpose(1, 2)
        return q * cos[:, None] + rotate_half(q) * sin[:, None]

    def keys(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x (B, Q, D) (after the input norm), cos/sin (B, Q, hd) -> keys (B, Hkv, Q, hd), RoPE applied."""
        B, Q, _ = x.shape
        k = self.k_proj(x).view(B, Q, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return k * cos[:, None] + rotate_half(k) * sin[:, None]

    def forward(
        self,
        x: torch.Tensor,  # (B, Q, D)
        cos: torch.Tensor,  # (B, Q, hd)
        sin: torch.Tensor,
        key_mask: torch.Tensor,  # (B, K) over past + new tokens
        mask: torch.Tensor | None,  # (B, 1, Q, K) from attention_mask(key_mask, Q); None = causal
        past: LayerCache | None,
        scores: str | None,  # "last": the last query's attention row; "all": every row (analyses)
        cache_reserve: int = 0,  # prefill: room for this many more tokens in the new cache
    ) -> tuple[torch.Tensor, LayerCache, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
        """-> output (B, Q, D), the grown cache, the probabilities `scores` asks for, and (q, k) of the new tokens."""
        B, Q, _ = x.shape
        q, k = self.queries(x, cos, sin), self.keys(x, cos, sin)  # (B, H, Q, hd), (B, Hkv, Q, hd)
        v = self.v_proj(x).view(B, Q, self.num_kv_heads, self.head_dim).transpose(1, 2)
        qk = (q, k)
        if past is not None:
            cache = past.append(k, v, key_mask)
            k, v = cache.keys, cache.values  # (B, Hkv, K, hd)
        else:
            cache = LayerCache.start(k, v, key_mask, cache_reserve)

        groups = self.num_heads // self.num_kv_heads
        is_causal = mask is None and Q > 1
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=groups > 1)  # (B, H, Q, hd)
        out = self.o_proj(out.transpose(1, 2).reshape(B, Q, -1))  # (B, Q, D)

        probabilities = None
        if scores is not None:
            k_all = (k.repeat_interleave(groups, dim=1) if groups > 1 else k).float()  # (B, H, K, hd)
            if scores == "last":
                # The last query's attention over every key, fp32, O(K d).
                logits = q[:, :, -1:].float() @ k_all.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, 1, K)
                logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
                probabilities = logits.softmax(dim=-1)[:, :, 0]  # (B, H, K)
            else:
                # Every query's row, fp32, O(Q K d), with the visibility SDPA used: for the attention analyses.
                logits = q.float() @ k_all.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, Q, K)
                K = k_all.shape[2]
                visible = mask if mask is not None else (
                    torch.arange(K, device=q.device)[None, :] <= torch.arange(K - Q, K, device=q.device)[:, None])
                probabilities = logits.masked_fill(~visible, float("-inf")).softmax(dim=-1)
        return out, cache, probabilities, qk


class LlamaMLP(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        d, m, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(d, m, bias=bias)
        self.up_proj = nn.Linear(d, m, bias=bias)
        self.down_proj = nn.Linear(m, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, x, cos, sin, key_mask, mask, past, scores, cache_reserve=0):
        attn, cache, probabilities, qk = self.self_attn(self.input_layernorm(x), cos, sin, key_mask, mask, past, scores,
                                                        cache_reserve)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, cache, probabilities, qk


# ---------------------------------------------------------------------------------------------
# The decoder


class LlamaDecoder(nn.Module):
    """Llama's embeddings + decoder layers + final norm (transformers' LlamaModel names).

    The lm_head lives with the LLaVA model, which decides which rows need logits.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.register_buffer("inv_freq", rope_inverse_frequencies(config), persistent=False)

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.float()  # (B, N, hd/2)
        angles = torch.cat([freqs, freqs], dim=-1)  # (B, N, hd)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(
        self,
        embeds: torch.Tensor,  # (B, N, D)
        key_mask: torch.Tensor,  # (B, N) bool, True = real token
        positions: torch.Tensor,  # (B, N) long
        cache: KVCache | None = None,
        pruning: InLLMPruning | None = None,
        use_cache: bool = True,
        attention_layers: tuple[int, ...] = (),
        attention_rows: str = "all",
        cache_reserve: int = 0,
    ) -> DecoderOutput:
        """Run every layer; at prefill, before each of `pruning.layers`, rebuild the sequence as the pruner says.
        `cache_reserve`: at prefill, room in the new cache for this many tokens to come (decoding writes into it).
        `attention_layers`: also return those layers' attention probabilities, computed from the layer's
        own queries and keys: every row (B, H, Q, K), in the layer's own layout (after pruning, its kept
        rows), or with `attention_rows="last"` the last query's row alone (B, H, K)."""
        if pruning is not None and cache is not None:
            raise ValueError("in-LLM pruning runs at prefill; decoding steps reuse the pruned cache")
        x = embeds
        q_len = x.shape[1]
        stages = set(pruning.layers) if pruning is not None else set()
        shifts = cache.position_shift if cache is not None and cache.position_shift else [None] * len(self.layers)
        shift = shifts[0]
        cos, sin = self.rope(positions if shift is None else positions - shift[:, None], x.dtype)
        # Layers that share a key mask (all layers between two stages) share one tensor object, so the SDPA
        # mask is built once per group, not once per layer; the same for decoding's position shifts.
        layer_key_mask, mask, past_mask_seen = key_mask, attention_mask(key_mask, q_len), None
        next_position = positions[:, -1] + 1 if cache is None else None  # unpruned numbering (prefill)
        new_layers, new_shifts, maps = [], [], {}
        for index, layer in enumerate(self.layers):
            past = cache.layers[index] if cache is not None else None
            if past is not None and past.key_mask is not past_mask_seen:
                past_mask_seen = past.key_mask
                layer_key_mask = torch.cat([past.key_mask, key_mask], dim=1)  # (B, T + Q)
                mask = attention_mask(layer_key_mask, q_len)
            if cache is not None and shifts[index] is not shift:
                shift = shifts[index]
                cos, sin = self.rope(positions if shift is None else positions - shift[:, None], x.dtype)
            x, layer_cache, probabilities, qk = layer(x, cos, sin, layer_key_mask, mask, past,
                                                     attention_rows if index in attention_layers else None, cache_reserve)
            new_layers.append(layer_cache)
            new_shifts.append(shift)
            if index in attention_layers:
                maps[index] = probabilities

            if index + 1 in stages:
                state = LayerState(index + 1, x, key_mask, positions, embeds,
                                   qk if pruning.wants_qk(index + 1) else None, self)
                cut = pruning.cut(state)
                if cut.sources is None:  # masked keys: every row stays
                    key_mask = cut.key_mask
                else:
                    embeds, positions = _regather(cut, embeds), _regather(cut, positions[..., None])[..., 0]
                    x = _regather(cut, x)
                    key_mask = cut.key_mask
                    if cut.renumber:
                        positions = (key_mask.long().cumsum(dim=1) - 1).clamp(min=0)
                    cos, sin = self.rope(positions, x.dtype)
                    q_len = x.shape[1]
                    # The next token's position in the layers to come: one past the last real row (the last column).
                    shift = next_position - (positions[:, -1] + 1)
                    shift = None if not bool(shift.any()) else shift
                layer_key_mask, mask = key_mask, attention_mask(key_mask, q_len)

        new_cache = None
        if use_cache:
            if cache is None:
                new_cache = KVCache(new_layers, next_position, new_shifts if any(s is not None for s in new_shifts) else [])
            else:
                new_cache = KVCache(new_layers, cache.next_position + positions.shape[1], cache.position_shift)
        return DecoderOutput(hidden=self.norm(x), key_mask=key_mask, cache=new_cache, attention=maps)


def _regather(cut: Regather, t: torch.Tensor) -> torch.Tensor:
    """t (B, N, C) in the old layout -> (B, N', C) in the new one (merged tokens: their weighted sums)."""
    if cut.mix is not None:
        t = torch.cat([t, torch.bmm(cut.mix.to(t.dtype), t)], dim=1) if t.is_floating_point() else \
            torch.cat([t, t.new_zeros(t.shape[0], cut.mix.shape[1], t.shape[2])], dim=1)
    return t.gather(1, cut.sources[..., None].expand(-1, -1, t.shape[-1]))
