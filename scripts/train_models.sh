#!/usr/bin/env bash
# Train a shipped model by its one command (the numbers, data and log are in its MODEL_CARD.md):
#
#   bash scripts/train_models.sh llava-shapes-tiny        # LLaVA-1.5, 57 min on the project's 2-core CPU
#   bash scripts/train_models.sh llava-next-shapes-tiny   # LLaVA-NeXT from the shipped LLaVA-1.5, 40 min
#   bash scripts/train_models.sh llava-video-shapes-tiny  # Video-LLaVA from the shipped LLaVA-1.5, 80 min
#
# Writes runs/<name>/ (train.log, last.pt, export/); copy runs/<name>/export/* into models/<name>/ to ship it.
# llava-shapes-tiny starts from its generator-v2 predecessor, the model shipped at commit 6033306 (restored from git).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
COMMON=(--steps 100000 --seed 0 --token-drop 0.5 --turn-weights ocr=3,position=2,exist=2
        --text-rate 0.8 --align-aux-weight 0.5 --ground-aux-weight 0.5 --copy-aux-weight 0.5
        --object-copy-aux-weight 0.5 --log-every 50)
case "${1:-}" in
    llava-shapes-tiny)
        base=runs/v2-model/models/llava-shapes-tiny
        [ -f "$base/model.safetensors" ] || { mkdir -p runs/v2-model && git archive 6033306 models/llava-shapes-tiny | tar -x -C runs/v2-model; }
        "$PY" -m llava.train --init-from "$base" "${COMMON[@]}" --max-minutes 57 --vision-minutes 12 --looks lattice=1,varied=2 \
            --lr 5e-4 --vision-lr 5e-4 --warmup 100 --extra-turns 7 --eval-every 250 --eval-samples 132 \
            --out runs/llava-shapes-tiny --export runs/llava-shapes-tiny/export ;;
    llava-next-shapes-tiny)
        "$PY" -m llava.train --next --init-from models/llava-shapes-tiny "${COMMON[@]}" --max-minutes 40 --looks hr=3,varied=1 \
            --lr 5e-4 --warmup 50 --extra-turns 5 --eval-every 150 --eval-samples 66 --eval-looks hr \
            --out runs/llava-next-shapes-tiny --export runs/llava-next-shapes-tiny/export ;;
    llava-video-shapes-tiny)
        "$PY" -m llava.train --video --init-from models/llava-shapes-tiny --max-minutes "${MAX_MINUTES:-80}" \
            --steps 100000 --seed 0 --looks video=3,lattice=1 --lr 8e-4 --warmup 50 --extra-turns 5 \
            --token-drop 0.5 --video-token-drop 1.0 --log-every 10 --eval-every 200 --eval-samples 48 \
            --eval-looks video lattice --out runs/llava-video-shapes-tiny --export runs/llava-video-shapes-tiny/export ;;
    *) echo "usage: bash scripts/train_models.sh llava-shapes-tiny|llava-next-shapes-tiny|llava-video-shapes-tiny" >&2; exit 2 ;;
esac
