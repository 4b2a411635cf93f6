#!/usr/bin/env bash
# The CPU measurement docs/performance.md reports, on small random models (bench-v1.5: CLIP-B at 336 px, 576 visual tokens,
# a 4-layer Llama of width 1024; bench-v1.6: the LLaVA-NeXT of the same parts). Ratios only: a CPU's absolute times
# say nothing about a GPU's.
#
#   bash scripts/latency/cpu_report.sh          (about 18 minutes on the project's 2-core CPU)
#   env: OUT (results/cpu-<cores>core-<date>)
# Writes $OUT/bench-*.{json,md,png}: batch 1 with both references (transformers sdpa, FastV the HF way); batch 1 with
# 512 new tokens (is decoding's time per token flat?); batch 8 and 32 (sdpa reference only: FastV's HF way re-runs
# the whole batch for every token); LLaVA-NeXT at batch 1; and $OUT/throughput.md (answers/s by batch).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEVICE=cpu
source scripts/latency/common.sh
bench() { "$FASTV" bench --device cpu --dtype float32 --random-weights "$@"; }
bench --preset bench-v1.5 --batch 1 --new-tokens 16 --repeats 5 --json "$OUT/bench-v1.5-b1.json"
bench --preset bench-v1.5 --batch 1 --new-tokens 512 --repeats 3 --references sdpa \
    --methods none fastv:k=2,ratio=0.5 --json "$OUT/bench-v1.5-b1-512.json"
bench --preset bench-v1.5 --batch 8 --new-tokens 16 --repeats 3 --references sdpa --json "$OUT/bench-v1.5-b8.json"
bench --preset bench-v1.5 --batch 32 --new-tokens 16 --repeats 2 --warmup 0 --references sdpa \
    --json "$OUT/bench-v1.5-b32.json"
bench --preset bench-v1.6 --batch 1 --new-tokens 16 --repeats 3 --references sdpa --json "$OUT/bench-v1.6-b1.json"
"$(dirname "$FASTV")/python" -m fastv.paper_tables throughput "$OUT"/bench-v1.5-b{1,8,32}.json --out "$OUT/throughput.md"
