#!/usr/bin/env bash
# MMBench dev (en): accuracy and leaderboard submission.  bash scripts/v1_6/eval/mmbench.sh BUDGET [METHOD]   (BUDGET = tokens kept per partition, or hired's rate: 0.2 hired; see scripts/eval_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval v1_6 mmbench "$@"
