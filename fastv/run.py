"""`fastv run`: answer one question about one image (or, on Video-LLaVA, one video) with a pruning method, and
say what the method kept and how long it took.

    fastv run --image docs/examples/shapes.png --prompt "What color is the star?" --method fastervlm:keep=36
    fastv run --model-path checkpoints/llava-v1.5-7b --image view.jpg --prompt "Describe it." --json
    fastv run --model-path checkpoints/Video-LLaVA-7B-hf --video clip.mp4 --prompt "What happens?" \
        --method fastervlm:keep=64 --overlay strip.png        (keep: patches per frame; FastV's: over the video)
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from fastv.paths import check_output_file
from fastv.shipped import SHIPPED_MODEL, SHIPPED_VIDEO_MODEL, model_or_shipped
from llava.conversation import conv_templates, default_conv_mode
from llava.errors import InputError

METHOD_HELP = (
    "pruning method spec, name:key=value,... e.g. 'fastervlm:keep=58' (keep = visual tokens kept per image; per frame"
    " of a video), 'fastv:k=2,keep=144' or 'fastv:k=2,ratio=0.75' (ratio = fraction of image tokens DROPPED; a video's"
    " FastV budget is over the whole video), "
    "'random:keep=64,seed=0', 'none'. See `fastv methods`."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", help="llava-hf or original LLaVA checkpoint folder (default: the shipped "
                        "LLaVA-1.5, or with --video the shipped Video-LLaVA)")
    parser.add_argument("--image", help="image file (leave the option out for a text-only prompt)")
    parser.add_argument("--video", action="append", metavar="FILE",
                        help="Video-LLaVA: a video file (any container PyAV decodes: mp4, avi, webm, mkv, gif, ...), its frames"
                             " sampled (8: the checkpoint's num_frames); one per prompt")
    parser.add_argument("--frames-sampling", metavar="linspace|arange",
                        help="--video: which 8 frames of n: linspace = Video-LLaVA's linspace(0, n-1, 8), arange ="
                             " transformers' arange(0, n, n/8) [default: linspace]")
    parser.add_argument("--video-cls", metavar="keep|drop",
                        help="--video: each frame's [CLS] token enters the LLM (keep: the stock layout) or not (drop:"
                             " FasterVLM's video branch) [default: keep]")
    parser.add_argument("--prompt", required=True, help="the question, without <image> or <video>")
    parser.add_argument("--method", default="none", help=METHOD_HELP)
    parser.add_argument("--conv-mode", help=f"conversation template ({', '.join(conv_templates)}) [default: llava_v1 on a"
                        " Video-LLaVA checkpoint, as its evaluation; vicuna_v1 otherwise, as LLaVA-1.5's]")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated at most")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature, >= 0 (0 = greedy)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (checked against this machine)")
    parser.add_argument("--vision-tower",
                        help="CLIP folder of an original-LLaVA checkpoint (instead of mm_vision_tower); not for llava-hf folders")
    parser.add_argument("--patch-merge", metavar="spatial|spatial_unpad",
                        help="LLaVA-NeXT: how the crops become tokens (default: the checkpoint's; FasterVLM's protocol: spatial)")
    parser.add_argument("--image-grid", metavar="WxH",
                        help="LLaVA-NeXT: cut every image into this canvas in pixels, e.g. 672x672 (default: the best of the"
                             " checkpoint's image_grid_pinpoints)")
    parser.add_argument("--overlay", metavar="FILE.png",
                        help="also write the image with the kept patches outlined and the dropped ones dimmed (NeXT: a"
                             " panel per partition; --video: the 8 frames as a strip, each with its count)")
    parser.add_argument("--backend", choices=("torch", "vllm"), default="torch",
                        help="what runs the language model: torch (ours, every method) or vllm (vLLM's engine on our pruned"
                             " image features: pre-LLM methods only; `bash setup.sh --vllm`; docs/running.md)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N",
                        help="--backend vllm: split the LLM over N GPUs (vLLM's tensor parallelism)")
    parser.add_argument("--json", dest="as_json", action="store_true",
                        help="print one JSON object (kept_partitions and partition_grid per image; --video: frames, the"
                             " frame indices read, and kept_frames, per frame the patch indices kept: docs/running.md)")


def main(
    model_path: str | None,
    image: str | None,
    prompt: str,
    method: str = "none",
    conv_mode: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    device: str = "cpu",
    vision_tower: str | None = None,
    as_json: bool = False,
    patch_merge: str | None = None,
    image_grid: str | None = None,
    overlay: str | None = None,
    backend: str = "torch",
    tensor_parallel_size: int = 1,
    video: str | list[str] | None = None,
    frames_sampling: str | None = None,
    video_cls: str | None = None,
) -> dict:
    """Answer one question about one image (None: a text-only prompt) and report what pruning kept
    and how long it took. Every option is checked before a model is loaded (the LLaVA-NeXT ones,
    `patch_merge` and `image_grid`, against the checkpoint's config, before its weights). `overlay`: also
    write the kept-token overlay there (fastv/overlay.py). `backend` "vllm": vLLM generates from our pruned image
    features (llava/serve/vllm_backend.py), over `tensor_parallel_size` GPUs. `video` (Video-LLaVA): a video file
    whose frames, sampled by `frames_sampling`, go in front of the question (after the image, if one is given
    too), as many as the checkpoint's video tower takes (config.video.num_frames); `video_cls` "drop" leaves each
    frame's [CLS] token out. `conv_mode` None: Video-LLaVA's template (llava_v1) on a Video-LLaVA checkpoint,
    LLaVA-1.5's (vicuna_v1) otherwise."""
    from llava.conversation import conversation_template
    from llava.generate import check_generation_options
    from llava.mm_utils import load_image
    from llava.device import resolve_device
    from llava.model.pruning.registry import parse_method
    from llava.pipeline import LlavaPipeline, Request

    parsed = parse_method(method)
    if backend == "vllm":
        from llava.serve.vllm_backend import check_servable

        check_servable(parsed)
        if vision_tower is not None:
            raise InputError("--backend vllm takes a llava-hf checkpoint as it is: --vision-tower is for --backend torch")
    elif tensor_parallel_size != 1:
        raise InputError("--tensor-parallel-size is for --backend vllm")
    if conv_mode is not None:
        conversation_template(conv_mode)
    resolve_device(device)
    check_generation_options(max_new_tokens, temperature)
    if not prompt.strip():
        raise InputError("the prompt is empty")
    if "<image>" in prompt:
        raise InputError("write the prompt without '<image>': the image goes in front of it, as in LLaVA-1.5")
    if "<video>" in prompt:
        raise InputError("write the prompt without '<video>': the video goes in front of it, as in Video-LLaVA")
    video = check_video_options(video, frames_sampling, video_cls, backend)
    if overlay is not None and image is None and video is None:
        raise InputError("--overlay draws the kept patches on the image: give --image (or --video) too")
    if overlay is not None:
        check_output_file("--overlay", overlay, what="the PNG file")
    model_path = model_or_shipped(model_path, SHIPPED_VIDEO_MODEL if video is not None else SHIPPED_MODEL)
    from llava.model.builder import read_checkpoint

    video_config = read_checkpoint(model_path, vision_tower).config.video  # None: an image model
    conv_mode = conv_mode or default_conv_mode(video_config is not None)
    clip = None
    if video is not None:
        from llava.video import read_video

        if video_config is None:
            raise InputError(f"--video needs a Video-LLaVA checkpoint; {model_path} is an image model (no video tower)")
        clip = read_video(video, video_config.num_frames, sampling=frames_sampling or "linspace")  # before the weights
    picture = load_image(image) if image is not None else None  # --image "" is a missing image, not no image
    if backend == "vllm":
        from llava.eval.backend import Prompt
        from llava.serve.vllm_backend import VllmBackend

        engine = VllmBackend.load(model_path, method, tensor_parallel_size=tensor_parallel_size, conv_mode=conv_mode,
                                  device=device, patch_merge=patch_merge, image_grid=image_grid)
        pipe = engine.pipeline  # the vision side: the overlay reads its processor and config
        (answer,) = engine.generate([Prompt(prompt, picture)], max_new_tokens=max_new_tokens, temperature=temperature,
                                    seed=0)
    else:
        pipe = LlavaPipeline.load(model_path, method=method, conv_mode=conv_mode, device=device,
                                  vision_tower=vision_tower, patch_merge=patch_merge, image_grid=image_grid,
                                  video_cls=video_cls)
        (answer,) = pipe.answer([Request(image=picture, text=prompt, video=clip)], max_new_tokens=max_new_tokens,
                                temperature=temperature)
    result = {"method": parsed.spec, "backend": backend, "conv_mode": conv_mode, **dataclasses.asdict(answer)}
    result["answer"] = result.pop("text")
    if clip is not None:
        result["total_frames"], result["frames_sampling"] = clip.total_frames, frames_sampling or "linspace"
    if overlay is not None:
        from fastv.overlay import write_overlay

        result["overlay"] = str(write_overlay(overlay, pipe, Request(image=picture, text=prompt, video=clip), answer))
    if as_json:
        print(json.dumps(result))
    else:
        config = pipe.model.config
        visual = ", ".join(str(n) for n in answer.visual_tokens) or "0 (no image or video)"
        print(f"answer: {answer.text}")
        print(f"method: {parsed.spec}" + (" (on vLLM)" if backend == "vllm" else ""))
        if config.anyres:
            grids = ", ".join(f"{rows}x{cols} crops" for rows, cols in answer.partition_grid)
            per = f"{config.tokens_per_image} per partition; {grids}; {config.patch_merge} merge"
        else:
            per = f"{config.tokens_per_image} per image"
        if clip is not None:
            video_tokens = f"{config.unpruned_video_tokens} in the video unpruned"
            per = video_tokens if picture is None else f"{per}; {video_tokens}"
        print(f"visual tokens entering the LLM: {visual} (of {per})")
        if clip is not None:
            print(f"video frames read: {', '.join(map(str, answer.frames))} (of {clip.total_frames},"
                  f" {frames_sampling or 'linspace'})")
            cls = ("each frame's [CLS] left out (--video-cls drop)" if config.video.cls == "drop" else
                   f"frames whose [CLS] is kept: {len(answer.kept_frame_cls)} of {len(answer.frames)}")
            print(f"patches kept per frame: {', '.join(str(len(k)) for k in answer.kept_frames)} (of"
                  f" {config.vision.num_patches}); {cls}")
        if answer.kept and len(answer.kept[0]) != (answer.visual_tokens or [0])[0]:
            print(f"visual tokens kept after in-LLM pruning: {', '.join(str(len(k)) for k in answer.kept)}")
        if answer.kept_stages and len(answer.kept_stages) > 1:
            stages = "; ".join(f"before layer {s['layer']}: {', '.join(str(len(k)) for k in s['kept'])}"
                               for s in answer.kept_stages)
            print(f"in-LLM stages (visual tokens per image): {stages}")
        if backend == "vllm":  # the engine reports no time to first token of its own
            print(f"total (vision side and vLLM's generation): {answer.total_s:.3f} s")
        else:
            print(f"prefill (time to first token): {answer.prefill_s:.3f} s, total: {answer.total_s:.3f} s")
        if overlay is not None:
            print(f"kept-token overlay: {result['overlay']}")
    return result


def check_video_options(video: str | list[str] | None, frames_sampling: str | None, video_cls: str | None,
                        backend: str) -> str | None:
    """The one video file of `--video` (given once at most), its options checked before anything is read."""
    from llava.model.llava_arch import VIDEO_CLS
    from llava.video import SAMPLINGS

    if video_cls is not None and video_cls not in VIDEO_CLS:
        raise InputError(f"unknown --video-cls '{video_cls}'; choose one of {', '.join(VIDEO_CLS)}")

    videos = [video] if isinstance(video, str) else list(video or [])
    if len(videos) > 1:
        raise InputError(f"--video was given {len(videos)} times; Video-LLaVA takes one video per prompt")
    if not videos:
        if frames_sampling is not None:
            raise InputError("--frames-sampling picks the frames of a video: give --video too")
        return None
    if frames_sampling is not None and frames_sampling not in SAMPLINGS:
        raise InputError(f"unknown --frames-sampling '{frames_sampling}'; choose one of {', '.join(SAMPLINGS)}")
    if backend != "torch":
        raise InputError("--video runs on --backend torch (the vLLM backend takes images)")
    return videos[0]
