#!/usr/bin/env bash
# VizWiz test: submission file for EvalAI (SPLIT=val: local accuracy on val).  bash scripts/v1_6/eval/vizwiz.sh BUDGET [METHOD]   (BUDGET = tokens kept per partition, or hired's rate: 0.2 hired; see scripts/eval_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval v1_6 vizwiz "$@"
