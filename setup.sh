#!/usr/bin/env bash
# Create .venv (Python 3.11) and install llava-fastv with its test and quant extras.
#   torch: the CPU build 2.13.0 where no NVIDIA GPU is visible, else pip's CUDA build (torch>=2.4).
#   Other packages: the ranges in pyproject.toml, pinned exactly by .ci/constraints.txt.
# Re-running reuses an existing .venv. Set PYTHON to choose the interpreter.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -d .venv ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${PIP[@]}" "torch>=2.4"
else
    "${PIP[@]}" "torch==2.13.0"
fi
"${PIP[@]}" -c .ci/constraints.txt -e ".[test,quant,plot]"
.venv/bin/python -c "import torch, transformers, llava; print(f'ready: torch {torch.__version__}, transformers {transformers.__version__}')"
