#!/usr/bin/env bash
# POPE: F1 per split and mean.  bash scripts/v1_6/eval/pope.sh BUDGET [METHOD]   (BUDGET = tokens kept per partition, or hired's rate: 0.2 hired; see scripts/eval_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval v1_6 pope "$@"
