#!/usr/bin/env bash
# HiRED's efficiency report (LLaVA-NeXT-7B on a Tesla P40): token throughput, time to first token and peak memory,
# full model vs HiRED at 20% and 10% of the visual tokens, with the ratios.
#
#   bash scripts/latency/hired_sys_report.sh [MODEL]
#     MODEL: a checkpoint folder, or a preset run with random weights (default llava-v1.6-vicuna-7b)
#   env: DEVICE (cuda), DTYPE (float16), BATCH (1), NEW_TOKENS (32), REPEATS (5), OUT (results/<machine>-<date>)
# Writes $OUT/hired-sys-report.{json,md,png} (fastv bench) and $OUT/hired-sys-report-table.md (HiRED's layout).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/latency/common.sh
MODEL=${1:-llava-v1.6-vicuna-7b}
"$FASTV" bench $(model_args "$MODEL") --device "$DEVICE" --dtype "${DTYPE:-float16}" --batch "${BATCH:-1}" \
    --new-tokens "${NEW_TOKENS:-32}" --repeats "${REPEATS:-5}" --methods none hired:rate=0.2 hired:rate=0.1 \
    --json "$OUT/hired-sys-report.json"
"$(dirname "$FASTV")/python" -m fastv.paper_tables hired-report "$OUT/hired-sys-report.json" --out "$OUT/hired-sys-report-table.md"
