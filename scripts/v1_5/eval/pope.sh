#!/usr/bin/env bash
# POPE: F1 per split and mean.  bash scripts/v1_5/eval/pope.sh KEEP [METHOD]   (KEEP = visual tokens kept per image; see scripts/eval_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval v1_5 pope "$@"
