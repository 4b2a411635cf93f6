"""FastV's K x R ablation (its Figure 7) as a heat table: score by layer K (rows) and drop ratio R
(columns), each cell with the FLOPs of its prefill relative to the unpruned model's.

Built by `fastv report` from the runs it reads: every complete `fastv` run with a `ratio`, per checkpoint
and benchmark, once at least two cells exist (`scripts/fastv/ablation_kr.sh BENCH` makes the grid).
FLOPs: the paper's formula (`fastv.flops`) with the run's measured prefill length (`prompt_tokens_mean`),
the tokens FastV dropped (`visual_tokens_mean - kept_tokens_mean`) and the LLM's size (`llm` in run.json);
a run without those shows its score alone.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastv.flops import fastv_flops_ratio


def cells(runs: list[dict]) -> dict[tuple[str, str], dict[tuple[int, float], dict]]:
    """{(model, benchmark): {(k, ratio): run entry}} of the complete FastV runs with a ratio (the later wins)."""
    found: dict[tuple[str, str], dict[tuple[int, float], dict]] = {}
    for entry in sorted(runs, key=lambda e: e["run"].get("finished") or ""):
        run = entry["run"]
        if not entry["complete"] or run.get("method_name") != "fastv" or run.get("ratio") is None:
            continue
        k = re.search(r"\bk=(\d+)", run.get("method_spec") or "")
        key = (int(k.group(1)) if k else 2, float(run["ratio"]))  # k=2 is FastV's default
        found.setdefault((run.get("model_id") or "?", entry["benchmark"]), {})[key] = entry
    return {where: grid for where, grid in found.items() if len(grid) >= 2}


def flops_ratio(run: dict, k: int) -> float | None:
    llm, n = run.get("llm"), run.get("prompt_tokens_mean")
    visual, kept = run.get("visual_tokens_mean"), run.get("kept_tokens_mean")
    if not llm or n is None or visual is None or kept is None:
        return None
    return fastv_flops_ratio(n, visual - kept, k, llm["num_layers"], llm["hidden_size"], llm["intermediate_size"])


def markdown(model: str, benchmark: str, grid: dict[tuple[int, float], dict], unpruned: float | None) -> list[str]:
    ks, ratios = sorted({k for k, _ in grid}), sorted({r for _, r in grid})
    lines = [f"### FastV K x R: {model}, {benchmark}", "",
             "| K \\ R | " + " | ".join(f"{r:.0%}" for r in ratios) + " |", "|---|" + "---:|" * len(ratios)]
    for k in ks:
        row = []
        for r in ratios:
            entry = grid.get((k, r))
            if entry is None:
                row.append("")
                continue
            flops = flops_ratio(entry["run"], k)
            row.append(f"{entry['value']:.1f}" + (f" ({flops:.0%})" if flops is not None else ""))
        lines.append(f"| {k} | " + " | ".join(row) + " |")
    questions = sorted({e["questions"] for e in grid.values()})
    lines += ["", f"Cells: score (prefill FLOPs / unpruned, the paper's formula); mask mode, {', '.join(map(str, questions))}"
              " questions" + (f"; unpruned: {unpruned:.1f}" if unpruned is not None else "") + ".", ""]
    return lines


def plot(path: Path, model: str, benchmark: str, grid: dict[tuple[int, float], dict]) -> bool:
    """A heat map PNG of the grid; False when matplotlib (the `plot` extra) is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ks, ratios = sorted({k for k, _ in grid}), sorted({r for _, r in grid})
    values = [[grid[(k, r)]["value"] if (k, r) in grid else float("nan") for r in ratios] for k in ks]
    figure, axes = plt.subplots(figsize=(1.2 * len(ratios) + 2, 0.8 * len(ks) + 1.5))
    image = axes.imshow(values, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(ratios)), [f"{r:.0%}" for r in ratios])
    axes.set_yticks(range(len(ks)), [str(k) for k in ks])
    axes.set_xlabel("R (image tokens dropped)")
    axes.set_ylabel("K (layer)")
    low, high = image.get_clim()
    for y, row in enumerate(values):
        for x, value in enumerate(row):
            if value == value:  # not NaN; dark text on the bright end of the colour map
                colour = "black" if value > (low + high) / 2 else "white"
                axes.text(x, y, f"{value:.1f}", ha="center", va="center", color=colour)
    figure.colorbar(image, ax=axes)
    axes.set_title(f"FastV K x R, {model}, {benchmark}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
