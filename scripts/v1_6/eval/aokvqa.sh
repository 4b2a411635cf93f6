#!/usr/bin/env bash
# A-OKVQA val: multiple-choice accuracy, then direct-answer accuracy.  bash scripts/v1_6/eval/aokvqa.sh BUDGET [METHOD]   (BUDGET = tokens kept per partition, or hired's rate: 0.2 hired; see scripts/eval_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval v1_6 aokvqa "$@" && llava_eval v1_6 aokvqa_da "$@"
