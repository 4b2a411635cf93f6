#!/usr/bin/env bash
# FastV's latency table (its README: LLaVA-1.5-13B, A-OKVQA, an A100): FastV off and K=2 at R = 25 / 50 / 75 %,
# first-token latency and peak memory, plus the same rows with the decoder in 4-bit through bitsandbytes on CUDA.
#
#   bash scripts/latency/fastv_aokvqa.sh [MODEL]
#     MODEL: a checkpoint folder, or a preset run with random weights (default llava-v1.5-13b)
#   env: DEVICE (cuda), DTYPE (float16), BATCH (1), NEW_TOKENS (16), REPEATS (10), TEXT_TOKENS (80: the system prompt
#        and an A-OKVQA question with its four choices), OUT (results/<machine>-<date>)
# Writes $OUT/fastv-aokvqa{,-4bit}.{json,md,png} (fastv bench) and $OUT/fastv-aokvqa-table.md (FastV's layout).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/latency/common.sh
MODEL=${1:-llava-v1.5-13b}
common=($(model_args "$MODEL") --device "$DEVICE" --dtype "${DTYPE:-float16}" --batch "${BATCH:-1}"
        --new-tokens "${NEW_TOKENS:-16}" --repeats "${REPEATS:-10}" --text-tokens "${TEXT_TOKENS:-80}"
        --methods none fastv:k=2,ratio=0.25 fastv:k=2,ratio=0.5 fastv:k=2,ratio=0.75)
"$FASTV" bench "${common[@]}" --json "$OUT/fastv-aokvqa.json"
tables=("$OUT/fastv-aokvqa.json")
if [ "${DEVICE%%:*}" = cuda ]; then
    "$FASTV" bench "${common[@]}" --quant 4bit --no-references --json "$OUT/fastv-aokvqa-4bit.json"
    tables+=("$OUT/fastv-aokvqa-4bit.json")
fi
"$(dirname "$FASTV")/python" -m fastv.paper_tables fastv-latency "${tables[@]}" --out "$OUT/fastv-aokvqa-table.md"
