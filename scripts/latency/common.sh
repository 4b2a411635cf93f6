# Shared by scripts/latency/*.sh (sourced): where results go and what the model argument means.
#   OUT: results/<machine>-<date> by default, <machine> the GPU's name (e.g. h200) or cpu-<cores>core.
#   MODEL_ARGS: "--model-path DIR" for a checkpoint folder, "--preset NAME --random-weights" for a preset name.

FASTV=${FASTV:-.venv/bin/fastv}
DEVICE=${DEVICE:-cuda}
if [ "${DEVICE%%:*}" = cuda ] && command -v nvidia-smi >/dev/null 2>&1; then
    machine=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | tr 'A-Z' 'a-z' | sed 's/nvidia //; s/[^a-z0-9]\+/-/g; s/-$//')
else
    machine="cpu-$(nproc)core"
fi
OUT=${OUT:-results/${machine}-$(date +%F)}
mkdir -p "$OUT"

model_args() {  # a folder is a checkpoint; anything else names a preset with random weights
    if [ -d "$1" ]; then echo "--model-path $1"; else echo "--preset $1 --random-weights"; fi
}
