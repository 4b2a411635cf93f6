#!/usr/bin/env bash
# GQA testdev-balanced: accuracy.  bash scripts/v1_6/eval/gqa.sh BUDGET [METHOD]   (BUDGET = tokens kept per partition, or hired's rate: 0.2 hired; see scripts/eval_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval v1_6 gqa "$@"
