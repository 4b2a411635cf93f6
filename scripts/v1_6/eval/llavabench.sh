#!/usr/bin/env bash
# LLaVA-Bench in-the-wild: answers for the GPT-4 judge.  bash scripts/v1_6/eval/llavabench.sh BUDGET [METHOD]   (BUDGET = tokens kept per partition, or hired's rate: 0.2 hired; see scripts/eval_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval v1_6 llavabench "$@"
