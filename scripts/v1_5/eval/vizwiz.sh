#!/usr/bin/env bash
# VizWiz test: submission file for EvalAI (SPLIT=val: local accuracy on val).  bash scripts/v1_5/eval/vizwiz.sh KEEP [METHOD]   (KEEP = visual tokens kept per image; see scripts/eval_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval v1_5 vizwiz "$@"
