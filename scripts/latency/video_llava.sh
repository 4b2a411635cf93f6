#!/usr/bin/env bash
# FastV's and FasterVLM's cost on Video-LLaVA (issue 27, item 5): FastV's video claim ("with K=2 and R=50% the latency
# reduction ... can reach up to 25%", its README; a video "involves around ten times image tokens") and FasterVLM per
# frame at its video table's reductions, timed beside ours unpruned and transformers' VideoLlavaForConditionalGeneration,
# and their FLOPs side by side.
#
#   bash scripts/latency/video_llava.sh [MODEL]
#     MODEL: a Video-LLaVA checkpoint folder (llava-hf layout, or the original), or a preset run with random weights
#     (default: video-llava-7b on CUDA, a forward costs the same whatever the weights; bench-video-llava on a CPU:
#     Video-LLaVA's 8 x 257 video tokens on a 6-layer tower and a 4-layer Llama, so it finishes in minutes)
#   env: DEVICE (cuda), DTYPE (float16 on CUDA, float32 on CPU), NEW_TOKENS (16 on CUDA, 8 on CPU),
#        REPEATS (10 on CUDA, 2 on CPU), REFERENCES (all on CUDA: transformers SDPA and FastV the released HF way;
#        sdpa on CPU, where the HF way's cache-less decoding of 2000+ tokens takes too long), OUT (results/<machine>-<date>),
#        FASTV_METHODS (the FastV rows, "fastv:k=2,ratio=0.5 fastv:k=3,ratio=0.5"; K < the LLM's layers)
# Rows: ours none; FastV K=2 R=50% over the whole video span (VIDEO.md R2; the claim) and K=3 keep 50% (fastv_kvcache's
# defaults); FasterVLM keep=192/128/64/26/13 patches per frame (25/50/75/90/95% of 256 dropped, VIDEO.md R1); each
# frame's [CLS] kept (the stock layout). On bench-video-llava's 4 layers K=2 and K=3 prune half and a quarter of the
# LLM, not 30 and 29 of 32: its FastV rows test the machinery, not the claim.
# Writes $OUT/video-llava-bench.{json,md,png} and, for the 7B preset's shapes, $OUT/flops-video-llava-7b{,-paper}.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/latency/common.sh
if [ "${DEVICE%%:*}" = cuda ]; then
    MODEL=${1:-video-llava-7b}; dtype=${DTYPE:-float16}; repeats=${REPEATS:-10}; new=${NEW_TOKENS:-16}
    references=${REFERENCES:-all}
else
    MODEL=${1:-bench-video-llava}; dtype=${DTYPE:-float32}; repeats=${REPEATS:-2}; new=${NEW_TOKENS:-8}
    references=${REFERENCES:-sdpa}
fi
if [ -d "$MODEL" ]; then
    patches=$(.venv/bin/python -c "import sys; from llava.model.builder import read_checkpoint; print(read_checkpoint(sys.argv[1]).config.vision.num_patches)" "$MODEL")
else
    patches=256  # both presets: 224 px, patch 14
fi
read -r -a fastv <<< "${FASTV_METHODS:-fastv:k=2,ratio=0.5 fastv:k=3,ratio=0.5}"
fastervlm=()
for reduction in 25 50 75 90 95; do  # round(P (1 - r)) patches kept per frame
    fastervlm+=("fastervlm:keep=$(( (patches * (100 - reduction) + 50) / 100 ))")
done
"$FASTV" bench $(model_args "$MODEL") --device "$DEVICE" --dtype "$dtype" --batch 1 --new-tokens "$new" \
    --repeats "$repeats" --references "$references" --json "$OUT/video-llava-bench.json" \
    --methods none "${fastv[@]}" "${fastervlm[@]}"
if [ ! -d "$MODEL" ]; then  # the 7B preset's FLOPs (no weights: the stand-in's sequence lengths at the real widths)
    "$FASTV" flops --preset video-llava-7b --out "$OUT/flops-video-llava-7b.json" \
        --methods none "${fastv[@]}" "${fastervlm[@]}"
    "$FASTV" flops --preset video-llava-7b --formula paper --out "$OUT/flops-video-llava-7b-paper.json" \
        --methods none "${fastv[@]}" "${fastervlm[@]}"
else
    "$FASTV" flops --model-path "$MODEL" --out "$OUT/flops-video-llava.json" \
        --methods none "${fastv[@]}" "${fastervlm[@]}"
fi
