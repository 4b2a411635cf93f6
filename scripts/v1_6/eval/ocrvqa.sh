#!/usr/bin/env bash
# OCR-VQA test: exact-match accuracy.  bash scripts/v1_6/eval/ocrvqa.sh BUDGET [METHOD]   (BUDGET = tokens kept per partition, or hired's rate: 0.2 hired; see scripts/eval_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval v1_6 ocrvqa "$@"
