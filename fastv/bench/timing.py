"""How `fastv bench` measures one run: the time inside each stage (vision tower, pruning, LLM), the peak memory,
and the times a row reports, on the machine named beside them. Nothing here knows what runs: the contestants
(fastv/bench/contestants.py) hook their stages onto a StageClock and return a Run."""

from __future__ import annotations

import dataclasses
import platform
import time
from collections import defaultdict
from pathlib import Path

import torch

TIME_FIELDS = ("vision_s", "pruning_s", "prefill_s", "ttft_s", "decode_s_per_token", "e2e_s")


class StageClock:
    """The time spent inside hooked calls, per stage, in one run: CUDA events on a GPU (read after the run's final
    synchronisation, so timing adds no synchronisation inside the forward), perf_counter elsewhere. Calls are kept in
    the order they ended, so the prefill's share of a stage can be told from the decoding steps'."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.calls: list[tuple[str, object, object]] = []  # (stage, begin, end) in the order the calls ended
        self._open: dict[str, list] = defaultdict(list)

    def reset(self) -> None:
        self.calls.clear()
        self._open.clear()

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self, stage: str) -> None:
        self._open[stage].append(self._mark())

    def stop(self, stage: str) -> None:
        self.calls.append((stage, self._open[stage].pop(), self._mark()))

    def prefill(self, stage: str) -> float:
        """Seconds inside `stage` up to the end of the first "llm" call (the prefill), the device synchronised first."""
        if self.cuda:
            torch.cuda.synchronize()
        total = 0.0
        for name, begin, end in self.calls:
            if name == stage:
                total += begin.elapsed_time(end) / 1000 if self.cuda else end - begin
            if name == "llm":
                break
        return total

    def hook_module(self, module: torch.nn.Module, stage: str) -> list:
        return [module.register_forward_pre_hook(lambda *_: self.start(stage)),
                module.register_forward_hook(lambda *_: self.stop(stage))]

    def wrap(self, obj, attribute: str, stage: str) -> None:
        """Time every call of `obj.attribute` (an instance attribute that shadows the class's)."""
        inner = getattr(obj, attribute)

        def timed(*args, **kwargs):
            self.start(stage)
            try:
                return inner(*args, **kwargs)
            finally:
                self.stop(stage)

        setattr(obj, attribute, timed)


class PeakMemory:
    """The peak memory of what runs inside: CUDA max_memory_allocated, or on CPU the process's peak RSS (VmHWM,
    reset by writing 5 to /proc/self/clear_refs) minus its RSS before; None where neither can be read."""

    def __init__(self, device: torch.device):
        self.device, self.bytes = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.before = _status_kib("VmRSS")
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.before = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        elif self.before is not None:
            peak = _status_kib("VmHWM")
            self.bytes = None if peak is None else max(0, peak - self.before) * 1024


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


@dataclasses.dataclass
class Run:
    """One contestant's one run."""

    times: dict[str, float]
    peak_memory_bytes: int | None
    kv_cache_bytes: int
    visual_tokens: int
    kept_after_layer_k: int  # image tokens after the last in-LLM stage (the visual tokens without one)
    newline_tokens: int = 0  # LLaVA-NeXT's image_newline tokens among the visual tokens (FastV keeps them all)
    layer_tokens: list[int] | None = None  # the first sample's real tokens in each decoder layer at prefill



def run_times(clock: StageClock, ttft: float, total: float, new_tokens: int) -> dict[str, float]:
    """The run's times (TIME_FIELDS); vision, pruning and LLM are the prefill's (FastV's reference re-runs them every
    token)."""
    return {"vision_s": clock.prefill("vision"), "pruning_s": clock.prefill("pruning"), "prefill_s": clock.prefill("llm"),
            "ttft_s": ttft, "decode_s_per_token": (total - ttft) / max(1, new_tokens - 1), "e2e_s": total}


def machine(device: torch.device) -> str:
    """The device the times were measured on, as a result names it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
