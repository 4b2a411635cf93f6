#!/usr/bin/env bash
# VQAv2 test-dev: submission file for EvalAI (SPLIT=val: local accuracy on val).  bash scripts/v1_5/eval/vqav2.sh BUDGET [METHOD]   (BUDGET = tokens kept per image, or hired's rate: 0.2 hired; see scripts/eval_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval v1_5 vqav2 "$@"
