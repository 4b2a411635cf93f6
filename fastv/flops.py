"""The FastV paper's FLOPs count of the LLM's prefill (METHODS.md, "FastV"), for tables that quote it.

Per decoder layer over n tokens: F(n) = 4 n d^2 + 2 n^2 d + 2 n d m (d the hidden width, m the MLP
width): the attention projections, the attention itself and the MLP as the paper counts them. FastV
after layer K of T runs the first K layers on n tokens and the rest on n' = n - dropped:
ratio = [K F(n) + (T - K) F(n')] / [T F(n)]. (An analytic count from the real per-layer lengths of
every method is `fastv flops`'s job; this is the paper's formula, so that its numbers can be checked.)
"""

from __future__ import annotations


def layer_flops(n: float, hidden: int, intermediate: int) -> float:
    return 4 * n * hidden**2 + 2 * n**2 * hidden + 2 * n * hidden * intermediate


def fastv_flops_ratio(n: float, dropped: float, k: int, layers: int, hidden: int, intermediate: int) -> float:
    """FLOPs of FastV's prefill over the unpruned one's (1 - the paper's "reduction")."""
    full = layer_flops(n, hidden, intermediate)
    pruned = layer_flops(n - dropped, hidden, intermediate)
    return (k * full + (layers - k) * pruned) / (layers * full)
