#!/usr/bin/env bash
# POPE: F1 per split and mean.  bash scripts/v1_6/eval/pope.sh KEEP [METHOD]   (KEEP = visual tokens kept per crop; see scripts/eval_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval v1_6 pope "$@"
