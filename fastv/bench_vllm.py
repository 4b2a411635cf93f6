"""`fastv bench-vllm`: answers per second of the vLLM backend against ours, batch by batch, with and without pruning.

    fastv bench-vllm --json results/X/bench_vllm.json                      (both shipped models and bench-v1.5)
    fastv bench-vllm --model-path checkpoints/llava-1.5-7b-hf --batches 1 8 32 --keep-shares 0.25 0.1

For every model (`--model-path`, each a llava-hf folder, and `--preset`, a named size with random weights saved to a
scratch folder with the shipped tokenizer), both backends answer the same batches: the first `--batch` shapes
questions (playground/data/eval/shapes) with their images, greedy, `--new-tokens` tokens per answer (no stop at EOS,
so both do the same work). Methods: `none`, and FasterVLM keeping each of `--keep-shares` of an image's tokens (a
NeXT partition's). A backend's time is the whole call: image processing, vision tower, pruning, the LLM.

    ours   llava.pipeline's encode + llava.generate.generate (our KV cache, left-padded static batch)
    vllm   llava/serve/vllm_backend.py: the same vision side, then vLLM's engine (paged KV cache, continuous batching)

One untimed call per backend and model first, then each row once (rows: answers_per_s = batch / seconds,
tokens_per_s = batch * new_tokens / seconds; vllm_over_ours: vLLM's answers per second over ours).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from fastv.output import write_result

SHIPPED = ("models/llava-shapes-tiny", "models/llava-next-shapes-tiny")
SHAPES = Path("playground/data/eval/shapes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", nargs="*", default=list(SHIPPED),
                        help=f"llava-hf checkpoint folders [default: {' '.join(SHIPPED)}]")
    parser.add_argument("--preset", nargs="*", default=["bench-v1.5"],
                        help="named sizes with random weights (fastv bench's presets, e.g. bench-v1.5) [default: "
                             "bench-v1.5; none: give the option alone]")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="questions per call [default: 1 8 32]")
    parser.add_argument("--keep-shares", type=float, nargs="+", default=[0.25, 0.1],
                        help="FasterVLM rows keep this share of an image's (NeXT: a partition's) tokens [default: 0.25 0.1]")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per answer [default: 16]")
    parser.add_argument("--json", dest="out", help="write the rows here (and the table beside it, .md)")


def main(model_path: list[str], preset: list[str], batches: list[int], keep_shares: list[float], new_tokens: int,
         out: str | None) -> dict:
    from llava.errors import InputError, check_at_least

    for batch in batches:
        check_at_least("--batches", batch, 1)
    check_at_least("--new-tokens", new_tokens, 1)
    if any(not 0 < share <= 1 for share in keep_shares):
        raise InputError(f"--keep-shares are shares of an image's tokens, in (0, 1]: got {keep_shares}")
    prompts = shapes_prompts(max(batches))
    result = {"new_tokens": new_tokens, "machine": machine(), "rows": []}

    def record(row: dict) -> None:  # every row as it comes: a long run stopped early keeps what it measured
        result["rows"].append(row)
        write_result(out, result, table(result["rows"]), echo=False)

    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as scratch:
        for name in [Path(p).name for p in model_path] + preset:
            folder = Path(next((p for p in model_path if Path(p).name == name), None) or save_preset(
                name, Path(scratch) / name))
            bench_model(name, folder, prompts, batches, keep_shares, new_tokens, record)
    print(table(result["rows"]))
    return result


def shapes_prompts(n: int) -> list:
    from PIL import Image

    from llava.eval.backend import Prompt

    from fastv.sweep import generate_questions

    generate_questions(SHAPES, "questions.jsonl", max(n, 32), "lattice")  # a fresh clone has no benchmark data
    lines = (SHAPES / "questions.jsonl").read_text().splitlines()
    questions = [json.loads(line) for line in lines[:n]]
    return [Prompt(q["text"], Image.open(SHAPES / "images" / q["image"]).convert("RGB")) for q in questions]


def save_preset(name: str, folder: Path) -> Path:
    """A llava-hf folder of the preset with random weights (transformers' init, seed 0) and the shipped tokenizer
    and image processor config."""
    import torch

    from fastv.bench.contestants import random_models

    _, hf, _ = random_models(name, torch.device("cpu"), torch.float32)
    hf.save_pretrained(folder)
    for file in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(Path(SHIPPED[0]) / file, folder / file)
    # vLLM finds the image placeholder through the tokenizer's <image> token: the config must name the same id
    config = json.loads((folder / "config.json").read_text())
    config["image_token_index"] = json.loads((Path(SHIPPED[0]) / "config.json").read_text())["image_token_index"]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def bench_model(name: str, folder: Path, prompts: list, batches: list[int], keep_shares: list[float],
                new_tokens: int, record) -> None:
    """Both backends on one model, every method and batch; each pair of rows (ours, vllm) goes to `record`."""
    from llava.pipeline import LlavaPipeline
    from llava.serve.vllm_backend import VllmBackend

    ours = LlavaPipeline.load(str(folder))
    engine = VllmBackend.load(str(folder), max_num_seqs=max(batches))
    per_image = ours.model.config.tokens_per_image
    methods = ["none"] + [f"fastervlm:keep={max(1, round(share * per_image))}" for share in keep_shares]
    run = {"ours": lambda batch, method: run_ours(ours, batch, method, new_tokens),
           "vllm": lambda batch, method: run_vllm(engine, batch, method, new_tokens)}
    for backend in run.values():  # untimed: first-call costs
        backend(prompts[:1], "none")
    for method in methods:
        for batch in batches:
            pair = []
            for backend, call in run.items():
                seconds, visual = call(prompts[:batch], method)
                pair.append({"model": name, "method": method, "batch": batch, "backend": backend,
                             "seconds": round(seconds, 4), "answers_per_s": round(batch / seconds, 3),
                             "tokens_per_s": round(batch * new_tokens / seconds, 1), "visual_tokens_mean": visual})
            pair[1]["vllm_over_ours"] = round(pair[1]["answers_per_s"] / pair[0]["answers_per_s"], 2)
            for row in pair:
                record(row)
            print(f"{name} {method} batch {batch}: ours {pair[0]['answers_per_s']:.2f}, vllm "
                  f"{pair[1]['answers_per_s']:.2f} answers/s", flush=True)
    del engine


def run_ours(pipeline, prompts: list, method: str, new_tokens: int) -> tuple[float, float]:
    import torch

    from llava.generate import generate
    from llava.pipeline import Request

    pipeline.model.set_pruning(method)
    start = time.perf_counter()
    with torch.inference_mode():
        encoded = pipeline.encode([Request(image=p.image, text=p.text) for p in prompts])
        ids, images = encoded[1], encoded[2]  # (prompts, ids, images, ...)
        out = generate(pipeline.model, ids, images, max_new_tokens=new_tokens, eos_token_id=None,
                       context_len=pipeline.context_len)
    seconds = time.perf_counter() - start
    return seconds, sum(v[0] for v in out.stats.visual_tokens) / len(prompts)


def run_vllm(engine, prompts: list, method: str, new_tokens: int) -> tuple[float, float]:
    start = time.perf_counter()
    answers = engine.generate(prompts, max_new_tokens=new_tokens, temperature=0.0, seed=0, method=method,
                              ignore_eos=True)
    seconds = time.perf_counter() - start
    return seconds, sum(a.visual_tokens[0] for a in answers) / len(prompts)


def machine() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def table(rows: list[dict]) -> str:
    """One line per model, method and batch: both backends' answers per second and their ratio."""
    lines = ["| model | method | visual tokens | batch | ours answers/s | vLLM answers/s | vLLM / ours |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for ours, vllm in zip(rows[0::2], rows[1::2]):
        lines.append(f"| {ours['model']} | {ours['method']} | {ours['visual_tokens_mean']:.0f} | {ours['batch']} | "
                     f"{ours['answers_per_s']:.2f} | {vllm['answers_per_s']:.2f} | {vllm['vllm_over_ours']:.2f} |")
    return "\n".join(lines)
