"""The eval runner's command line: its options, their checks and defaults.

`parse_args` is `python -m llava.eval.run --help`; `check_run_options` checks the runner's own numbers
(the generation options are `llava.generate.check_generation_options`'); `resolve_device_and_dtype`
turns `--device` and `--dtype` into what this machine runs; `default_output_dir` is the run directory
when `--output-dir` is left out; `import_object` finds the `--pipeline` loader.
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

from llava.errors import InputError, check_at_least
from llava.eval.registry import BENCHMARKS
from llava.eval.runfolder import canonical_method

DEFAULT_PIPELINE = "llava.pipeline:LlavaPipeline.load"


def check_run_options(batch_size: int, limit: int | None) -> None:
    """The runner's own numeric options (generation options: llava.generate.check_generation_options)."""
    check_at_least("--batch-size", batch_size, 1)
    if limit is not None:
        check_at_least("--limit", limit, 1, "it is the number of questions asked")


def check_backend_options(backend: str, tensor_parallel_size: int, *, pipeline: str, vision_tower: str | None,
                          quantization: str, video_cls: str | None = None) -> None:
    """`--backend vllm` with what it cannot take, or `--tensor-parallel-size` without it, is an InputError."""
    check_at_least("--tensor-parallel-size", tensor_parallel_size, 1)
    if backend != "vllm":
        if tensor_parallel_size != 1:
            raise InputError("--tensor-parallel-size is for --backend vllm")
        return
    refused = [name for name, given in (("--pipeline", pipeline != DEFAULT_PIPELINE), ("--vision-tower", vision_tower),
                                        (f"--load-{quantization}", quantization != "none"),
                                        ("--video-cls", video_cls)) if given]
    if refused:
        raise InputError(f"--backend vllm takes a llava-hf checkpoint as it is: {', '.join(refused)} is for --backend torch")


def resolve_device_and_dtype(device: str | None, dtype: str, local_rank: int):
    """(torch.device, torch.dtype) of a run: `--device` checked against this machine (default
    cuda:LOCAL_RANK when there is CUDA, else cpu) and `--dtype` ("auto": the loader's default for it)."""
    import torch

    from llava.device import default_dtype, resolve_device

    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    resolved = resolve_device(device)
    return resolved, default_dtype(resolved) if dtype == "auto" else getattr(torch, dtype)


def default_output_dir(model_path: str | None, method: str, benchmark: str, video_cls: str | None = None) -> Path:
    """outputs/eval/<model>/<method>/<benchmark>; <method>_video_cls_drop for Video-LLaVA without the frames' [CLS]
    (keep, the stock layout, is every checkpoint's default and shares the default's directory)."""
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", canonical_method(method).replace("=", ""))
    if video_cls is not None and video_cls != "keep":
        label = f"{label}_video_cls_{video_cls}"
    return Path("outputs/eval") / (Path(model_path).name if model_path else "model") / label / benchmark


def import_object(spec: str):
    """'package.module:Class.attribute' -> that object."""
    module_name, _, attributes = spec.partition(":")
    found = importlib.import_module(module_name)
    for name in filter(None, attributes.split(".")):
        found = getattr(found, name)
    return found


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m llava.eval.run", description="Run one benchmark: answer its questions, then score them.",
        epilog="Run directories, resume, errors, several processes: see EVAL.md.",
    )
    parser.add_argument("--benchmark", required=True, help=f"one of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--model-path", help="checkpoint folder (llava-hf or original LLaVA); "
                        "not needed to score a finished answers file again")
    parser.add_argument("--method", help="pruning spec, e.g. 'fastervlm:keep=58' (keep = visual tokens "
                        "kept per image, per crop for LLaVA-NeXT), 'fastv:k=2,ratio=0.75' (ratio = fraction DROPPED), 'none' "
                        "[default: the one recorded in the output directory, else none]")
    parser.add_argument("--data-root", default="playground/data/eval", help="folder holding one folder per benchmark [default: playground/data/eval]")
    parser.add_argument("--output-dir", help="run directory [default: outputs/eval/<model>/<method>/<benchmark>]")
    parser.add_argument("--max-new-tokens", type=int, help="longest answer, in tokens [default: 128; 1024 for "
                        "llavabench and mmvet, as LLaVA]")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy, as LLaVA's evaluation [default: 0]")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed, recorded [default: 0]")
    parser.add_argument("--conv-mode", default="vicuna_v1", help="conversation template [default: vicuna_v1]")
    parser.add_argument("--batch-size", type=int, default=1, help="questions per forward pass [default: 1]")
    parser.add_argument("--limit", type=int, help="only the first N questions (smoke runs)")
    parser.add_argument("--retry-errors", action="store_true", help="ask again the questions whose answer is an error line")
    parser.add_argument("--question-file", help="another question file in the benchmark's format")
    parser.add_argument("--image-folder", help="another image folder")
    parser.add_argument("--device", help="default: cuda:LOCAL_RANK when CUDA is there, else cpu")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                        help="weights' dtype [default: auto = float16 on CUDA, float32 on CPU]")
    parser.add_argument("--vision-tower", help="CLIP folder for original-LLaVA checkpoints")
    parser.add_argument("--patch-merge", metavar="spatial|spatial_unpad",
                        help="LLaVA-NeXT: how the crops become tokens [default: the checkpoint's]")
    parser.add_argument("--image-grid", metavar="WxH",
                        help="LLaVA-NeXT: cut every image into this canvas in pixels, e.g. 672x672 [default: the best"
                             " of the checkpoint's image_grid_pinpoints]")
    parser.add_argument("--video-cls", choices=("keep", "drop"),
                        help="Video-LLaVA: keep each frame's [CLS] token (8 x 257 = 2056 video tokens unpruned, the "
                             "stock layout) or drop it (8 x 256 = 2048, FasterVLM's video rows) [default: keep]")
    parser.add_argument("--load-8bit", action="store_true", help="8-bit weights through bitsandbytes (CUDA)")
    parser.add_argument("--load-4bit", action="store_true", help="4-bit weights through bitsandbytes (CUDA)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--backend", choices=("torch", "vllm"), default="torch",
                        help="what runs the language model: torch (ours, every method) or vllm (vLLM's engine on our "
                             "pruned image features: pre-LLM methods only; `bash setup.sh --vllm`) [default: torch]")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, metavar="N",
                        help="--backend vllm: split the LLM over N GPUs (vLLM's tensor parallelism) [default: 1]")
    parser.add_argument("--pipeline", default=DEFAULT_PIPELINE, help="loader 'module:attr' with LlavaPipeline.load's "
                        "signature; requests are made with the Request class beside the pipeline's class "
                        f"(testing: tests.eval_fakes:FakePipeline.load) [default: {DEFAULT_PIPELINE}]")
    return parser.parse_args(argv)
