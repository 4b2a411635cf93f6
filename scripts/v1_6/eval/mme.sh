#!/usr/bin/env bash
# MME: perception and cognition.  bash scripts/v1_6/eval/mme.sh BUDGET [METHOD]   (BUDGET = tokens kept per partition, or hired's rate: 0.2 hired; see scripts/eval_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval v1_6 mme "$@"
