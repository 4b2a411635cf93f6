"""Prefill + decode: greedy or temperature/top-p sampling, batched with left padding.

Decoding reuses the pruned KV cache: layers before FastV's k hold every token,
later layers the kept ones, and new tokens continue the unpruned positions. Two
cache-free paths exist for faithfulness studies:

- `use_cache=False`: every step recomputes the whole sequence, replaying the keep
  set chosen at prefill (must give the same tokens as the cached path: tested);
- a LayerPruner with `reselect_every_step`: every step recomputes and re-selects
  from the newest token's attention, as FastV's released code without a cache.

Timings: `prefill_s` is the time to the first token (vision tower, pruning, LLM
prefill, first sampling), `total_s` the whole call; both synchronise CUDA.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from llava.errors import InputError
from llava.model.llava_arch import LlavaForCausalLM, MultimodalInputs
from llava.model.pruning.base import LayerPruner, PruneStats


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # per sample: generated ids, the stop token excluded
    stats: PruneStats
    prefill_s: float
    total_s: float


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
) -> GenerationOutput:
    """Generate for a batch of prompts (token ids with -200 per image) and their images, in order."""
    device = model.device
    start = synchronized_time(device)
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device).manual_seed(seed if seed is not None else 0)
    inputs = model.prepare_inputs(prompts, pixel_values)
    context_len = context_len or model.config.text.max_position_embeddings
    longest = int(inputs.key_mask.sum(dim=1).max())
    if longest > context_len:
        raise InputError(f"prompt of {longest} tokens (visual tokens included) is longer than the context of {context_len}")

    reselect = isinstance(model.pruning, LayerPruner) and model.pruning.reselect_every_step
    use_cache = use_cache and not reselect
    out = model.forward_inputs(inputs, use_cache=use_cache)
    next_token = sample_next(out.logits[:, -1], temperature, top_p, generator)
    prefill_s = synchronized_time(device) - start
    cache, fixed_keep = out.cache, (None if reselect else out.keep_mask)

    B = len(prompts)
    tokens: list[list[int]] = [[] for _ in range(B)]
    finished = [False] * B
    for step in range(max_new_tokens):
        for b, token in enumerate(next_token.tolist()):  # one host sync per step
            if not finished[b]:
                finished[b] = token == eos_token_id
                if not finished[b]:
                    tokens[b].append(token)
        if all(finished) or step == max_new_tokens - 1:
            break
        if use_cache:
            logits, cache = model.decode(next_token[:, None], cache)
        else:
            inputs = _append(inputs, model.language_model.embed_tokens(next_token)[:, None])
            if fixed_keep is not None:
                fixed_keep = torch.cat([fixed_keep, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
            logits = model.forward_inputs(inputs, use_cache=False, fixed_keep=fixed_keep).logits
        next_token = sample_next(logits[:, -1], temperature, top_p, generator)
    return GenerationOutput(tokens=tokens, stats=out.stats, prefill_s=prefill_s, total_s=synchronized_time(device) - start)
