"""8-bit / 4-bit (NF4) weights for the LLM's decoder layers through bitsandbytes.

As LLaVA's `--load-8bit` / `--load-4bit`: the Llama layers' linear weights are
quantized; embeddings, norms, lm_head, the projector and the vision tower stay
in the compute dtype (they are small, and CLIP's attention rows feed pruning).
bitsandbytes >= 0.45 runs both on CUDA and, more slowly, on CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from llava.errors import InputError


def quantize_language_model(model: nn.Module, bits: int, device: str, compute_dtype: torch.dtype) -> None:
    try:
        import bitsandbytes as bnb
    except ImportError as error:
        raise InputError("8-bit/4-bit loading needs bitsandbytes: pip install 'llava-fastv[quant]'") from error

    for layer in model.language_model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, linear in list(parent.named_children()):
                if isinstance(linear, nn.Linear):
                    setattr(parent, name, _quantized(bnb, linear, bits, compute_dtype))
    model.to(device)


def _quantized(bnb, linear: nn.Linear, bits: int, compute_dtype: torch.dtype) -> nn.Module:
    has_bias = linear.bias is not None
    weight = linear.weight.data.to(torch.float16)
    if bits == 8:
        quantized = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False)
        quantized.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    elif bits == 4:
        quantized = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=has_bias, compute_dtype=compute_dtype, quant_type="nf4"
        )
        quantized.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    else:
        raise ValueError(f"bits must be 8 or 4, got {bits}")
    if has_bias:
        quantized.bias = nn.Parameter(linear.bias.data.to(compute_dtype), requires_grad=False)
    return quantized
