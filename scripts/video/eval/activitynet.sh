#!/usr/bin/env bash
# ActivityNet-QA on Video-LLaVA: FasterVLM's first 1K (SUBSET=full: all), GPT-judge Acc/Score if JUDGE_URL.  bash scripts/video/eval/activitynet.sh BUDGET [METHOD]   (BUDGET = keep, per frame for fastervlm; see scripts/eval_common.sh); FasterVLM's video rows: VIDEO_CLS=drop (each frame's [CLS] dropped: 8·L video tokens, none = 2048), default VIDEO_CLS=keep (the stock layout: 8·(L+1), none = 2056)
source "$(dirname "${BASH_SOURCE[0]}")/../../eval_common.sh"
llava_eval video activitynet "$@"
llava_video_judge
