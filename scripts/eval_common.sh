# Shared by every scripts/v1_5/eval/<bench>.sh, scripts/v1_6/eval/<bench>.sh and scripts/video/eval/<bench>.sh
# (sourced, not run).
#
#   bash scripts/v1_5/eval/<bench>.sh BUDGET [METHOD] [more options for python -m llava.eval.run]
#
#   BUDGET   what the method's budget is: visual tokens kept per image (v1_5) or per partition (v1_6: the base
#            view and each crop), e.g. 64; the method's keep on video (fastervlm: patches per frame, of 256);
#            for hired its rate, the fraction of all visual tokens, e.g. 0.2;
#            left out for none, prumerge and prumerge+ (they keep what they keep)
#   METHOD   pruning method (default fastervlm; none = the unpruned baseline); also as a variable, METHOD=fastv.
#            A method with its own parameters: METHOD=fastv:k=2 -> spec fastv:k=2,keep=BUDGET;
#            METHOD=hired:alpha=0.5 -> hired:alpha=0.5,rate=BUDGET
#
# Variables (with their defaults):
#   MODEL_PATH or CKPT   checkpoints/llava-v1.5-7b (v1_5), checkpoints/llava-v1.6-vicuna-7b (v1_6),
#                        checkpoints/Video-LLaVA-7B-hf (video)
#   DATA_ROOT            playground/data/eval      benchmark files, laid out as EVAL.md says
#   OUTPUT_ROOT          outputs/eval              run dir: OUTPUT_ROOT/<checkpoint name>/<method>_<budget>/<bench>
#   CONV_MODE            vicuna_v1 (llava_v1 for video, as Video-LLaVA's evaluation)
#   SUBSET               1k (video)                1k: FasterVLM's first-1K subsets (<bench>_1k), full: the whole test set
#   SPLIT                (unset)                   SPLIT=val runs vqav2/vizwiz on val with a local score
#   CUDA_VISIBLE_DEVICES (unset)                   "0,1,2,3": four processes through torchrun, one GPU each
#   NPROC                (from CUDA_VISIBLE_DEVICES) number of processes, whatever the GPUs
#   PYTHON               .venv/bin/python if setup.sh made one, else python
#   EVAL_ARGS            (empty)                   more options for the runner, e.g. "--limit 100"
#   BACKEND              torch                     vllm: vLLM runs the LLM on our pruned image features (pre-LLM
#                                                  methods only; `bash setup.sh --vllm`; docs/running.md); one process,
#                                                  its GPUs split by TP (tensor parallelism), not by torchrun
#   TP                   1                         BACKEND=vllm: --tensor-parallel-size, the GPUs vLLM splits the LLM over
#   JUDGE_URL            (unset)                   video: the GPT judge's OpenAI-compatible endpoint, e.g.
#                                                  https://api.openai.com/v1 (key: OPENAI_API_KEY); unset: no judge
#   JUDGE_MODEL          gpt-3.5-turbo (video)     the judge model, recorded with the scores
#   PATCH_MERGE          spatial (v1_6)            LLaVA-NeXT merge: spatial (FasterVLM's protocol), spatial_unpad, or
#                                                  checkpoint (the checkpoint's own, stock NeXT: spatial_unpad)
#   IMAGE_GRID           672x672 (v1_6)            LLaVA-NeXT canvas, WIDTHxHEIGHT in pixels, or auto (the best of the
#                                                  checkpoint's image_grid_pinpoints, as stock NeXT)
#   VIDEO_CLS            keep (video)              Video-LLaVA: keep each frame's [CLS] (8 x 257 = 2056 video tokens
#                                                  unpruned, the stock layout) or drop it (8 x 256 = 2048; FasterVLM's
#                                                  video rows: VIDEO_CLS=drop, 8·L tokens at keep=L); drop runs get
#                                                  their own run dir: <method>_<budget>_video_cls_drop
#   The v1_6 defaults are the protocol of the method's paper: FasterVLM's (spatial, 672x672) for most methods;
#   stock LLaVA-NeXT (checkpoint, auto) for hired, prumerge and prumerge+, as HiRED ran them.
#   A run under another protocol gets its own run dir: <method>_<budget>_<merge>_<grid>.
set -euo pipefail

# The checkpoint a run of `version` (v1_5, v1_6) uses: MODEL_PATH, CKPT, or the version's default.
llava_model_path() {
    local default_model=checkpoints/llava-v1.5-7b
    [[ $1 == v1_6 ]] && default_model=checkpoints/llava-v1.6-vicuna-7b
    [[ $1 == video ]] && default_model=checkpoints/Video-LLaVA-7B-hf
    echo "${MODEL_PATH:-${CKPT:-$default_model}}"
}

# The Python that runs the evaluation: PYTHON, else .venv/bin/python if setup.sh made one, else python.
llava_python() {
    if [[ -n ${PYTHON:-} ]]; then echo "$PYTHON"; elif [[ -x .venv/bin/python ]]; then echo .venv/bin/python; else echo python; fi
}

llava_eval() {
    local version=$1 bench=$2
    shift 2
    local budget="" method=${METHOD:-fastervlm}
    if [[ $# -gt 0 && $1 =~ ^([0-9]+|[0-9]*\.[0-9]+)$ ]]; then budget=$1; shift; fi
    if [[ $# -gt 0 && $1 != -* ]]; then method=$1; shift; fi
    local name=${method%%:*} parameter=keep merge_default=spatial grid_default=672x672
    case $name in
        none | prumerge | prumerge+) parameter="" ;;
        hired) parameter=rate ;;
    esac
    local no_budget="$name keeps what it keeps"
    if [[ $method =~ (^|[:,])(keep|ratio|rate)= ]]; then parameter="" no_budget="$method holds its budget"; fi
    case $name in hired | prumerge | prumerge+) merge_default=checkpoint grid_default=auto ;; esac

    local model
    model=$(llava_model_path "$version")
    [[ ${SPLIT:-} == val && ($bench == vqav2 || $bench == vizwiz) ]] && bench=${bench}_val
    local script=$bench conv_default=vicuna_v1
    if [[ $version == video ]]; then
        conv_default=llava_v1
        case ${SUBSET:-1k} in
            1k) bench=${bench}_1k ;;
            full) ;;
            *) echo "SUBSET=${SUBSET} is neither 1k nor full" >&2; return 2 ;;
        esac
    fi

    local spec label
    label=$(echo "${method}" | sed 's/=//g; s/[:,]/_/g')
    if [[ -z $parameter ]]; then
        if [[ -n $budget ]]; then
            echo "$no_budget: give no BUDGET (bash scripts/$version/eval/$script.sh $method)" >&2
            return 2
        fi
        spec=$method
    else
        if [[ -z $budget ]]; then
            echo "usage: bash scripts/$version/eval/$script.sh BUDGET [METHOD]  (BUDGET = visual tokens kept per" \
                 "$(case $version in v1_6) echo partition ;; video) echo frame ;; *) echo image ;; esac), or hired's rate, e.g. 0.2;" \
                 "METHOD none, prumerge and prumerge+ need no budget)" >&2
            return 2
        fi
        if [[ $method == *:* ]]; then spec="$method,$parameter=$budget"; else spec="$method:$parameter=$budget"; fi
        label=${label}_$budget
    fi
    local anyres=()
    if [[ $version == v1_6 ]]; then
        local merge=${PATCH_MERGE:-$merge_default} grid=${IMAGE_GRID:-$grid_default}
        [[ $merge == checkpoint ]] || anyres+=(--patch-merge "$merge")
        [[ $grid == auto ]] || anyres+=(--image-grid "$grid")
        [[ $merge == "$merge_default" && $grid == "$grid_default" ]] || label="${label}_${merge}_${grid}"
    fi
    local video=()
    if [[ -n ${VIDEO_CLS:-} ]]; then
        video=(--video-cls "$VIDEO_CLS")
        [[ $VIDEO_CLS == keep ]] || label="${label}_video_cls_${VIDEO_CLS}"
    fi
    local output_dir="${OUTPUT_ROOT:-outputs/eval}/$(basename "$model")/$label/$bench"
    LLAVA_EVAL_OUTPUT_DIR=$output_dir  # for a script that works on the run after it (scripts/video/eval: the judge)

    local nproc=${NPROC:-} backend=()
    if [[ ${BACKEND:-torch} != torch ]]; then
        backend=(--backend "$BACKEND" --tensor-parallel-size "${TP:-1}")
        nproc=${NPROC:-1}  # vLLM batches the questions itself; its GPUs are TP's
    fi
    if [[ -z $nproc ]]; then
        local gpus=()
        IFS=',' read -ra gpus <<< "${CUDA_VISIBLE_DEVICES:-}"
        nproc=${#gpus[@]}
        (( nproc >= 1 )) || nproc=1
    fi
    local python
    python=$(llava_python)
    local launcher=("$python")
    # torchrun (torch's own launcher, run through this python); each process takes cuda:LOCAL_RANK
    (( nproc > 1 )) && launcher=("$python" -m torch.distributed.run --standalone --nproc_per_node "$nproc")

    echo "[$bench] model=$model method=$spec ${anyres[*]} ${video[*]} ${backend[*]} processes=$nproc -> $output_dir" >&2
    # shellcheck disable=SC2086  # EVAL_ARGS is a list of options
    "${launcher[@]}" -m llava.eval.run --benchmark "$bench" --model-path "$model" --method "$spec" \
        --data-root "${DATA_ROOT:-playground/data/eval}" --output-dir "$output_dir" \
        --conv-mode "${CONV_MODE:-$conv_default}" "${anyres[@]}" "${video[@]}" "${backend[@]}" ${EVAL_ARGS:-} "$@"
}

# After llava_eval on a video QA set: Video-LLaVA's GPT judge over the run (python -m llava.eval.judge_run,
# cached per question) when JUDGE_URL is set; without it the run keeps its offline match only.
llava_video_judge() {
    if [[ -z ${JUDGE_URL:-} ]]; then
        echo "JUDGE_URL not set: no GPT judge, the paper's Acc/Score are not computed (EVAL.md, Video QA)" >&2
        return 0
    fi
    local model=()
    [[ -n ${JUDGE_MODEL:-} ]] && model=(--judge-model "$JUDGE_MODEL")
    "$(llava_python)" -m llava.eval.judge_run "$LLAVA_EVAL_OUTPUT_DIR" --judge-url "$JUDGE_URL" "${model[@]}" --no-progress
}
