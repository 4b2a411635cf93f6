"""What `fastv bench` reports: each contestant's runs summarised as a row (medians and quartiles), the rows'
ratios to ours unpruned and to transformers unpruned in the same run, the Markdown table and the bar chart."""

from __future__ import annotations

import statistics
from pathlib import Path

from fastv.bench.timing import TIME_FIELDS, Run

# The `method` of transformers' unpruned row: the base of the `*_vs_transformers` ratios here, and of the ratios
# fastv/paper_tables.py (a reader of this JSON) works out from the rows.
REFERENCE = "transformers (sdpa), unpruned"
RATIOS = {"ttft_s": "ttft", "prefill_s": "prefill", "decode_s_per_token": "decode", "e2e_s": "e2e"}  # <short>_vs_<base>


def summarise(name: str, spec: str | None, runs: list[Run], batch: int, new_tokens: int) -> dict:
    """One contestant's row: each time's median over `runs` and its quartiles, throughput, memory and KV cache."""
    row = {"method": name, "spec": spec, "visual_tokens": runs[0].visual_tokens,
           "kept_after_layer_k": runs[0].kept_after_layer_k, "new_tokens": new_tokens}
    for field in TIME_FIELDS:
        values = [r.times[field] for r in runs]
        row[field] = statistics.median(values)
        row[f"{field}_iqr"] = _quartiles(values)
    row["answers_per_s"] = batch / row["e2e_s"]
    row["tokens_per_s"] = batch * new_tokens / row["e2e_s"]  # generated tokens (HiRED's "token throughput")
    memory = [r.peak_memory_bytes for r in runs if r.peak_memory_bytes is not None]
    row["peak_memory_bytes"] = int(statistics.median(memory)) if memory else None
    row["kv_cache_bytes"] = runs[0].kv_cache_bytes
    layers = runs[0].layer_tokens
    row["tokens_per_layer_mean"] = statistics.fmean(layers) if layers else None  # prompt tokens, each layer's own
    row["pruning_share_of_ttft"] = row["pruning_s"] / row["ttft_s"] if row["ttft_s"] else None
    return row


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def add_ratios(rows: list[dict]) -> None:
    """Each row's TTFT, prefill, decode and e2e over ours unpruned and over transformers unpruned (same run)."""
    bases = {"ours_unpruned": next((r for r in rows if r["spec"] == "none"), None),
             "transformers": next((r for r in rows if r["method"] == REFERENCE), None)}
    for row in rows:
        for label, base in bases.items():
            if base is None:
                continue
            for field, short in RATIOS.items():
                row[f"{short}_vs_{label}"] = row[field] / base[field] if base[field] else None


def to_markdown(result: dict) -> str:
    """The result as a Markdown table, one row per contestant, under a line saying what was measured where."""
    ms = lambda s: f"{s * 1000:.1f}"
    ratio = lambda r, key: "" if r.get(key) is None else f"{r[key]:.3f}"
    mib = lambda b: "" if b is None else f"{b / 2**20:.0f}"
    lines = [
        f"{result['model']}, batch {result['batch']}, {result['dtype']}, {result['text_tokens']} text tokens + the {result.get('visual', 'image')}, "
        f"{result['new_tokens']} new tokens; median of {result['repeats']} on {result['machine']} (torch {result['torch']})",
        "",
        "| method | visual tokens | kept after layer k | tokens per layer (mean) | vision (ms) | pruning (ms) "
        "| pruning / TTFT | LLM prefill (ms) | TTFT (ms) "
        "| TTFT / ours unpruned | TTFT / transformers | decode per token (ms) | decode / ours unpruned | decode / transformers "
        "| answers/s | peak memory (MiB) | KV cache (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    percent = lambda v: "" if v is None else f"{100 * v:.2f}%"
    for r in result["rows"]:
        per_layer = "" if r.get("tokens_per_layer_mean") is None else f"{r['tokens_per_layer_mean']:.1f}"
        lines.append(
            f"| {r['method']} | {r['visual_tokens']} | {r['kept_after_layer_k']} | {per_layer} | {ms(r['vision_s'])} "
            f"| {ms(r['pruning_s'])} | {percent(r.get('pruning_share_of_ttft'))} "
            f"| {ms(r['prefill_s'])} | {ms(r['ttft_s'])} | {ratio(r, 'ttft_vs_ours_unpruned')} | {ratio(r, 'ttft_vs_transformers')} "
            f"| {ms(r['decode_s_per_token'])} | {ratio(r, 'decode_vs_ours_unpruned')} "
            f"| {ratio(r, 'decode_vs_transformers')} | {r['answers_per_s']:.2f} | {mib(r['peak_memory_bytes'])} "
            f"| {mib(r['kv_cache_bytes'])} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Bars of TTFT and decode time per token, one per contestant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [r["method"].replace("ours, ", "").replace("transformers", "HF") for r in rows]
    figure, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.8))
    for axis, field, title in ((axes[0], "ttft_s", "time to first token (ms)"),
                               (axes[1], "decode_s_per_token", "decode, per token (ms)")):
        values = [1000 * r[field] for r in rows]
        colours = ["tab:gray" if r["spec"] is None else "tab:blue" for r in rows]
        axis.barh(range(len(rows)), values, color=colours)
        axis.set_yticks(range(len(rows)))
        axis.set_yticklabels(names if axis is axes[0] else [""] * len(rows), fontsize=8)
        axis.invert_yaxis()
        axis.set_title(title, fontsize=10)
        for i, value in enumerate(values):
            axis.text(value, i, f" {value:.1f}", va="center", fontsize=7)
    figure.suptitle(f"{result['model']}, batch {result['batch']}, {result['dtype']}, {result['machine']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
