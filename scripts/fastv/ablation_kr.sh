#!/usr/bin/env bash
# FastV's K x R ablation (its Figure 7): FastV in mask mode at every layer K and drop ratio R, one run dir per
# cell (resumable: a finished cell is scored again, not rerun; a killed one continues), the unpruned
# reference, then `fastv report`'s heat table of score vs K and R with each cell's FLOPs ratio.
#   bash scripts/fastv/ablation_kr.sh BENCH [more options for python -m llava.eval.run]
#   KS="2 3 5 8"  RS="0.25 0.5 0.75 0.9"  (FastV's grid; K must be below the LLM's layers)
#   VERSION=v1_5 (or v1_6) and every variable of scripts/eval_common.sh (MODEL_PATH, DATA_ROOT, OUTPUT_ROOT, ...)
# Writes OUTPUT_ROOT/<checkpoint>/ablation_kr_<BENCH>.{md,csv} and a PNG heat map beside them.
source "$(dirname "${BASH_SOURCE[0]}")/../eval_common.sh"
if [[ $# -lt 1 || $1 == -* ]]; then
    echo "usage: bash scripts/fastv/ablation_kr.sh BENCH [runner options]  (KS, RS: the grid; see the script)" >&2
    exit 2
fi
bench=$1
shift
version=${VERSION:-v1_5}
for k in ${KS:-2 3 5 8}; do
    for r in ${RS:-0.25 0.5 0.75 0.9}; do
        METHOD="" llava_eval "$version" "$bench" "fastv:k=$k,ratio=$r,mode=mask" "$@"
    done
done
METHOD="" llava_eval "$version" "$bench" none "$@"
root="${OUTPUT_ROOT:-outputs/eval}/$(basename "$(llava_model_path "$version")")"
"$(llava_python)" -m fastv.cli report "$root" --out "$root/ablation_kr_$bench"
