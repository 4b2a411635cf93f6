"""`fastv serve`: an OpenAI-compatible chat server (/v1/chat/completions, /v1/models) where each request may pick
its own pruning method (llava/serve/server.py says what it accepts and answers).

    fastv serve --port 8000                                        # the shipped model, no pruning by default
    fastv serve --model-path checkpoints/llava-v1.5-7b --method fastervlm:keep=58 --device cuda
    fastv serve --model-path checkpoints/llava-v1.5-7b --backend vllm --tensor-parallel-size 2

    client.chat.completions.create(model=..., messages=[...], extra_body={"pruning": "fastervlm:keep=36"})
"""

from __future__ import annotations

import argparse
import math
import sys

from fastv.run import METHOD_HELP
from fastv.shipped import model_or_shipped
from llava.errors import InputError, check_at_least


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", help="llava-hf or original LLaVA checkpoint folder (default: the shipped model)")
    parser.add_argument("--method", default="none", help="the default method of requests that name none; " + METHOD_HELP)
    parser.add_argument("--backend", choices=["torch", "vllm"], default="torch",
                        help="torch: our model; vllm: vLLM runs the language model on our pruned image features "
                             "(pre-LLM methods only; needs `bash setup.sh --vllm`)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port, printed)")
    parser.add_argument("--conv-mode", help="conversation template [default: llava_v1 on a Video-LLaVA checkpoint, "
                                                "as its evaluation; vicuna_v1 otherwise]")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or mps: where our model runs (vllm backend: its vision side)"
                                         " [default: cpu; vllm backend: cuda where there is one]")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="weights' dtype (default: float32 on CPU, float16 on CUDA)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="requests answered by one backend call, at most")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0,
                        help="how long a request waits for others to join its batch, in milliseconds")
    parser.add_argument("--max-new-tokens", type=int, default=128,
                        help="new tokens of a request that gives no max_tokens")
    parser.add_argument("--max-tokens-limit", type=int, default=1024,
                        help="the most new tokens a request may ask for (a larger max_tokens is refused)")
    parser.add_argument("--max-image-mb", type=float, default=20.0,
                        help="largest image file accepted, in MB of 2**20 bytes (decoded from its data URL)")
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                        help="largest image accepted, width x height in pixels (read before decoding)")
    parser.add_argument("--max-waiting", type=int, default=256,
                        help="requests waiting for the model, at most; more are answered 503 (try again later)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm backend: GPUs the LLM is split over")
    parser.add_argument("--max-model-len", type=int, help="vllm backend: context length (default: the model's)")
    parser.add_argument("--quiet", action="store_true", help="no line per request on stderr")


def main(model_path: str | None = None, method: str = "none", backend: str = "torch", host: str = "127.0.0.1",
         port: int = 8000, conv_mode: str | None = None, device: str | None = None, dtype: str | None = None,
         max_batch_size: int = 8, batch_wait_ms: float = 10.0, max_new_tokens: int = 128,
         max_tokens_limit: int = 1024, max_image_mb: float = 20.0, max_image_pixels: int = 4096 * 4096,
         max_waiting: int = 256, tensor_parallel_size: int = 1, max_model_len: int | None = None, quiet: bool = False) -> None:
    """Load the model behind the backend, then serve until interrupted. Every option is checked first."""
    from llava.conversation import conversation_template
    from llava.generate import check_generation_options
    from llava.model.pruning.registry import parse_method
    from llava.serve.server import ChatServer, Limits

    parse_method(method)
    if conv_mode is not None:
        conversation_template(conv_mode)
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be in 0..65535, got {port}")
    check_at_least("--max-batch-size", max_batch_size, 1)
    check_at_least("--max-tokens-limit", max_tokens_limit, 1)
    check_at_least("--max-image-pixels", max_image_pixels, 1)
    check_at_least("--max-waiting", max_waiting, 1)
    check_at_least("--tensor-parallel-size", tensor_parallel_size, 1)
    check_generation_options(max_new_tokens, 0.0)
    if max_new_tokens > max_tokens_limit:
        raise InputError(f"--max-new-tokens ({max_new_tokens}) is above --max-tokens-limit ({max_tokens_limit})")
    if not (math.isfinite(batch_wait_ms) and batch_wait_ms >= 0):
        raise InputError(f"--batch-wait-ms must be a finite number >= 0, got {batch_wait_ms}")
    if not (math.isfinite(max_image_mb) and max_image_mb > 0):
        raise InputError(f"--max-image-mb must be a finite number > 0, got {max_image_mb}")
    if backend == "torch" and (tensor_parallel_size != 1 or max_model_len is not None):
        raise InputError("--tensor-parallel-size and --max-model-len are options of --backend vllm")
    limits = Limits(max_image_bytes=int(max_image_mb * 2**20), max_image_pixels=max_image_pixels,
                    max_tokens=max_tokens_limit, default_max_tokens=max_new_tokens, max_batch_size=max_batch_size,
                    max_waiting=max_waiting, batch_wait_s=batch_wait_ms / 1000)
    model_path = model_or_shipped(model_path)
    answerer = load_backend(backend, model_path, method, conv_mode=conv_mode, device=device, dtype=dtype,
                            tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len)
    tokenizer = answerer.pipeline.tokenizer  # both backends' (the vLLM one decodes with ours too)
    count_tokens = lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    try:
        server = ChatServer((host, port), answerer, limits=limits, count_tokens=count_tokens, log=not quiet)
    except OSError as error:
        raise InputError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    info = answerer.describe()
    print(f"fastv serve: {server.model_id} ({backend} backend, default method {info.method_spec}) on {server.url}",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("fastv serve: stopped", file=sys.stderr)
    finally:
        server.server_close()


def load_backend(backend: str, model_path: str, method: str, *, conv_mode: str | None, device: str | None, dtype: str | None,
                 tensor_parallel_size: int, max_model_len: int | None):
    """The TorchBackend or VllmBackend serving `model_path`; the vLLM module is imported only when asked for."""
    import torch

    torch_dtype = None if dtype is None else getattr(torch, dtype)
    if backend == "vllm":
        from llava.serve.vllm_backend import VllmBackend  # an InputError from load where vLLM is not installed

        return VllmBackend.load(model_path, method, tensor_parallel_size=tensor_parallel_size, dtype=torch_dtype,
                                max_model_len=max_model_len, conv_mode=conv_mode, device=device)
    from llava.device import resolve_device
    from llava.eval.backend import TorchBackend
    from llava.pipeline import LlavaPipeline

    device = device or "cpu"
    resolve_device(device)
    return TorchBackend(LlavaPipeline.load(model_path, method=method, conv_mode=conv_mode, device=device, dtype=torch_dtype))
