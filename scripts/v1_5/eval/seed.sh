#!/usr/bin/env bash
# SEED-Bench image: accuracy per dimension.  bash scripts/v1_5/eval/seed.sh BUDGET [METHOD]   (BUDGET = tokens kept per image, or hired's rate: 0.2 hired; see scripts/eval_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval v1_5 seed "$@"
