#!/usr/bin/env bash
# The newer methods' cost (issue 26): every method at 64 visual tokens (per image; per partition on LLaVA-NeXT) beside
# ours unpruned and FastV, in one `fastv bench` run per model: time to first token, decode per token, the selection's
# own time (`pruning_s`) and its share of TTFT, the tokens each layer ran on, the KV cache.
#
#   bash scripts/latency/newer_methods.sh [MODEL_V15 [MODEL_V16]]
#     MODEL_*: a checkpoint folder, or a preset run with random weights (default: bench-v1.5 / bench-v1.6 on a CPU,
#     llava-v1.5-7b / llava-v1.6-vicuna-7b on CUDA)
#   env: DEVICE (cuda), DTYPE (float16 on CUDA, float32 on CPU), NEW_TOKENS (16), REPEATS (5 on CPU, 10 on CUDA),
#        OUT (results/<machine>-<date>)
# Stage layers: the releases' (FastV and DART before layer 2, PyramidDrop before 8/16/24, SparseVLM after 2/6/15) on a
# 32-layer LLM; on the 4-layer bench presets the same depth (fastv sweep's scaled_layers): before 1, 1, 1/2/3, after
# 0/1/2. "64 tokens": DART keeps 4 + 8 x (64 // 8) = 68 as released; PyramidDrop at lambda 0.5 ends at 72 (576 / 8)
# after 288 and 144; SparseVLM keep=64 ends at 18 (its lists, with recycled tokens), 5 on 144 patches.
# Writes $OUT/newer-v1.5.{json,md,png} and $OUT/newer-v1.6.{json,md,png}.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/latency/common.sh
if [ "${DEVICE%%:*}" = cuda ]; then
    V15=${1:-llava-v1.5-7b}; V16=${2:-llava-v1.6-vicuna-7b}; dtype=${DTYPE:-float16}; repeats=${REPEATS:-10}
else
    V15=${1:-bench-v1.5}; V16=${2:-bench-v1.6}; dtype=${DTYPE:-float32}; repeats=${REPEATS:-5}
fi
layers() {  # the method specs of a model: deep (32 layers) or the 4-layer bench presets
    case "$1" in
        bench-*) echo "fastv:k=1,keep=64 dart:k=1,keep=64 pdrop:layers=1,2,3,lambda=0.5" ;;
        *) echo "fastv:k=2,keep=64 dart:k=2,keep=64 pdrop:layers=8,16,24,lambda=0.5" ;;
    esac
}
sparsevlm() { case "$1" in bench-*) echo "sparsevlm:keep=64,layers=0,1,2" ;; *) echo "sparsevlm:keep=64" ;; esac; }
common=(--device "$DEVICE" --dtype "$dtype" --batch 1 --new-tokens "${NEW_TOKENS:-16}" --repeats "$repeats"
        --references sdpa)
"$FASTV" bench $(model_args "$V15") "${common[@]}" --json "$OUT/newer-v1.5.json" --methods none \
    fastervlm:keep=64 vispruner:keep=64 visionzip:keep=64 divprune:keep=64 $(layers "$V15") $(sparsevlm "$V15")
# NeXT: 64 per partition; DART's one budget for the whole image: 64 x 5 partitions (the stock 2x2 canvas)
"$FASTV" bench $(model_args "$V16") "${common[@]}" --json "$OUT/newer-v1.6.json" --methods none \
    fastervlm:keep=64 vispruner:keep=64 visionzip:keep=64 divprune:keep=64 \
    $(layers "$V16" | sed 's/dart:\(k=[0-9]*\),keep=64/dart:\1,keep=320/')
