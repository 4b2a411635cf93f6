#!/usr/bin/env bash
# MMBench-CN dev: accuracy and leaderboard submission.  bash scripts/v1_5/eval/mmbench_cn.sh KEEP [METHOD]   (KEEP = visual tokens kept per image; see scripts/eval_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval v1_5 mmbench_cn "$@"
