"""Prefill + decode: greedy or temperature/top-p sampling, batched with left padding.

Decoding reuses the pruned KV cache: layers before an in-LLM stage hold every
token, later layers the kept ones, and new tokens continue each layer's
positions (the unpruned numbering, or the renumbered one after a stage that
renumbers). Two cache-free paths exist for faithfulness studies:

- `use_cache=False`: every step recomputes the whole sequence, replaying the
  decisions of the prefill (must give the same tokens as the cached path: tested);
- a LayerPruner with `reselect_every_step`: every step recomputes and re-selects
  from the newest token's attention, as FastV's released code without a cache.

Each sample stops at its end-of-sequence token ("eos"), after `max_new_tokens`
("max_new_tokens"), or when its next token would sit at position `context_len`
("context": the window is full; a prompt of L real tokens, visual tokens
included, gets at most context_len - L new tokens). A longer prompt than the
context is an InputError.

Timings: `prefill_s` is the time to the first token (vision tower, pruning, LLM
prefill, first sampling), `total_s` the whole call; both synchronise CUDA.

Where this file sits among the others, and one request's path through them: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from numbers import Real

import torch

from llava.constants import MAX_SEED
from llava.errors import InputError
from llava.model.llava_arch import LlavaForCausalLM, MultimodalInputs
from llava.model.pruning.base import PruneStats, llm_parts


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # per sample: generated ids, the stop token excluded
    stop_reasons: list[str]  # per sample: "eos", "max_new_tokens" or "context" (see the module docstring)
    stats: PruneStats
    prefill_s: float
    total_s: float


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_generation_options(
    max_new_tokens: int, temperature: float, top_p: float | None = None, seed: int | None = None
) -> None:
    """Raise InputError naming the first bad option. The CLI and the eval runner call this before loading
    a model, and `generate()` calls it too.

    max_new_tokens: an int >= 0 (0 generates nothing); temperature: finite, >= 0 (0 = greedy);
    top_p: in (0, 1] when given; seed: an int in [0, 2**63 - 1] when given.
    """
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or not (math.isfinite(temperature) and temperature >= 0):
        raise InputError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, Real) or not 0 < top_p <= 1):
        raise InputError(f"top_p must be in (0, 1], got {top_p!r}")
    if seed is not None and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):
        raise InputError(f"seed must be an integer in [0, 2**63 - 1], got {seed!r}")


def synchronized_time(device: torch.device) -> float:
    """perf_counter after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def sample_next(logits: torch.Tensor, temperature: float, top_p: float | None, generator) -> torch.Tensor:
    """logits (B, V) -> next token (B,): argmax when temperature is 0, else nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = (logits.float() / temperature).softmax(dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p  # keep the smallest set reaching top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _append(inputs: MultimodalInputs, embeds: torch.Tensor) -> MultimodalInputs:
    """Grow a spliced batch by one token per sample (for the cache-free paths)."""
    B = embeds.shape[0]
    ones = torch.ones(B, 1, dtype=torch.bool, device=embeds.device)
    return MultimodalInputs(
        embeds=torch.cat([inputs.embeds, embeds], dim=1),
        key_mask=torch.cat([inputs.key_mask, ones], dim=1),
        positions=torch.cat([inputs.positions, inputs.positions[:, -1:] + 1], dim=1),
        spans=inputs.spans,
        stats=inputs.stats,
    )


@torch.inference_mode()
def generate(
    model: LlavaForCausalLM,
    prompts: list[list[int]],
    pixel_values: torch.Tensor | None = None,
    max_new_tokens: int = 128,
    eos_token_id: int | None = None,
    temperature: float = 0.0,
    top_p: float | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    context_len: int | None = None,
    videos: torch.Tensor | list[torch.Tensor] | None = None,
) -> GenerationOutput:
    """Generate for a batch of prompts (token ids with -200 per image, -201 per video) and their images and
    videos (Video-LLaVA: pixel values (T, 3, S, S) each), in order.

    `context_len`: the window, the model's max_position_embeddings by default (never more).
    """
    check_generation_options(max_new_tokens, temperature, top_p, seed)
    device = model.device
    start = synchronized_time(device)
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device).manual_seed(seed if seed is not None else 0)
    inputs = model.prepare_inputs(prompts, pixel_values, videos)
    model_context = model.config.text.max_position_embeddings
    context_len = model_context if context_len is None else min(context_len, model_context)
    lengths = inputs.key_mask.sum(dim=1).tolist()  # real tokens per sample, visual tokens included
    if max(lengths) > context_len:
        raise InputError(f"prompt of {max(lengths)} tokens (visual tokens included) is longer than the context of {context_len}")
    # New tokens each sample may add: the last one sits at position context_len - 1 at most.
    limits = [min(max_new_tokens, context_len - n) for n in lengths]

    reselect = any(p.reselect_every_step for p in llm_parts(model.pruning))
    use_cache = use_cache and not reselect
    out = model.forward_inputs(inputs, use_cache=use_cache, cache_reserve=max(limits))
    next_token = sample_next(out.logits[:, -1], temperature, top_p, generator)
    prefill_s = synchronized_time(device) - start
    cache, replay = out.cache, (None if reselect else out.replay)

    B = len(prompts)
    tokens: list[list[int]] = [[] for _ in range(B)]
    # A sample that reaches its limit stops for the budget when the window had room for it, else for the window.
    at_limit = ["max_new_tokens" if limit == max_new_tokens else "context" for limit in limits]
    stop_reasons: list[str | None] = [at_limit[b] if limits[b] == 0 else None for b in range(B)]
    while True:
        for b, token in enumerate(next_token.tolist()):  # one host sync per step
            if stop_reasons[b] is None:
                if token == eos_token_id:
                    stop_reasons[b] = "eos"
                else:
                    tokens[b].append(token)
                    if len(tokens[b]) == limits[b]:
                        stop_reasons[b] = at_limit[b]
        if all(stop_reasons):
            break
        # Stopped samples still ride along in the batch; what they compute is never read.
        if use_cache:
            logits, cache = model.decode(next_token[:, None], cache)
        else:
            inputs = _append(inputs, model.language_model.embed_tokens(next_token)[:, None])
            logits = model.forward_inputs(inputs, use_cache=False, replay=replay).logits
        next_token = sample_next(logits[:, -1], temperature, top_p, generator)
    return GenerationOutput(
        tokens=tokens, stop_reasons=stop_reasons, stats=out.stats, prefill_s=prefill_s,
        total_s=synchronized_time(device) - start,
    )
