#!/usr/bin/env bash
# SEED-Bench image: accuracy per dimension.  bash scripts/v1_6/eval/seed.sh KEEP [METHOD]   (KEEP = visual tokens kept per crop; see scripts/eval_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval v1_6 seed "$@"
