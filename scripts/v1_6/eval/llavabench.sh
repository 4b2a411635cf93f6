#!/usr/bin/env bash
# LLaVA-Bench in-the-wild: answers for the GPT-4 judge.  bash scripts/v1_6/eval/llavabench.sh KEEP [METHOD]   (KEEP = visual tokens kept per crop; see scripts/eval_common.sh)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval v1_6 llavabench "$@"
