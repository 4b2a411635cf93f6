"""Which device and dtype a run uses: one check of a `--device` name against this machine.

Light on purpose (torch only): the CLI, the eval runner and the benchmarks check
their options here before anything heavy is imported or loaded.
"""

from __future__ import annotations

import torch

from llava.errors import InputError


def resolve_device(name: str | torch.device) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'mps', checked against this machine: InputError naming what is wrong."""
    text = str(name).strip()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unknown device '{text}' (use cpu, cuda, cuda:N or mps)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device '{text}': no CUDA GPU is available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            names = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise InputError(f"device '{text}': this machine has {count} CUDA GPU{'s' * (count != 1)} ({names})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device '{text}': MPS is not available on this machine")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """float16 on CUDA (as LLaVA), float32 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.float32
