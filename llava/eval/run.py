"""Run one benchmark: answer its questions, then score them.

    python -m llava.eval.run --benchmark textvqa --model-path checkpoints/llava-v1.5-7b \\
        --method fastervlm:keep=58 [--data-root playground/data/eval] [--output-dir DIR]
    torchrun --nproc_per_node 4 -m llava.eval.run ...       one shard of the questions per process

The output directory holds:
    answers.jsonl   one LLaVA answer line per question (question_id, prompt, text, answer_id,
                    model_id, metadata), written and flushed as each answer comes, merged into
                    question order at the end
    run.json        the run's settings and what happened (model, weights digest, method spec, budget,
                    dtype, device, quantization, mean visual tokens entering the LLM, versions,
                    seed, LLaVA-NeXT layout, Video-LLaVA's video_cls, questions, question_set digest, answered,
                    errors, missing;
                    `started`: when the first invocation began answering, `resumed`: when each later
                    one did, `finished`: when the answers were last scored, null while a run answers)
    scores.json     the benchmark's metrics, its headline number, the unreadable question lines
                    (counted wrong) and run.json's content; removed when a run starts to answer,
                    so a killed run leaves no stale score
    scores.txt      the same as a table a person can read
    plus the files a benchmark's server or judge takes (submission JSON, .xlsx, ...)

A question that cannot be answered (missing or corrupt image, prompt too long for
the context, unreadable question line) gets an answer line with `text` "" and
`metadata.error`, and the run goes on. Running again resumes: questions already
in answers.jsonl are not asked again (error lines neither, unless
`--retry-errors`; an error line never replaces an answer); when every question is
answered, no model is loaded and the run only scores again. A directory holding
answers made with another model, weights, method, generation setting, image layout or video_cls is
refused, each compared as the model uses it (an omitted option by its default), and scoring again never
rewrites what run.json says the answers were made with.

Several processes (torchrun sets WORLD_SIZE, RANK, LOCAL_RANK): each answers every
WORLD_SIZE-th of the questions still unanswered into `answers.rank<R>.jsonl` on
`cuda:LOCAL_RANK` when there is CUDA; after a barrier, rank 0 merges the shards
in question order into answers.jsonl and scores. The process group uses gloo even
on GPUs: its only collective is a barrier, which needs no GPU memory, and
processes that finish early may wait there for hours, longer than NCCL's watchdog allows.

`--pipeline MODULE:ATTR` replaces `llava.pipeline:LlavaPipeline.load` by another
loader with the same signature; requests are made with the `Request` class of the
module that defines the pipeline's class. The tests use it to drive the runner with
a fake pipeline (tests/eval_fakes.py) without a model.

This module is the command and the order of the steps; the steps are in their own modules:
`llava.eval.options` (the command line and its checks), `llava.eval.runfolder` (the run directory:
answer files, run.json, fingerprints, resume), `llava.eval.backend` (the answer loop and the `Backend`
interface a second backend implements) and `llava.eval.registry` (the benchmarks).
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable
from itertools import islice
from pathlib import Path

from llava.errors import CheckpointError, InputError, print_error
from llava.eval.backend import answer_questions, as_backend, is_loader
from llava.eval.common import AnswerWriter, Question, format_table, number_repeats, write_json
from llava.eval.options import (
    check_backend_options, check_run_options, default_output_dir, import_object, parse_args, resolve_device_and_dtype,
)
from llava.eval.registry import Benchmark, get_benchmark
from llava.eval.runfolder import (
    ANSWER_SETTINGS, SAME_RUN_SETTINGS, answer_layout, check_same_run, invocation_times, is_error, merge_answers,
    prepare_output_dir, question_set, read_answers, read_run, run_record, run_settings, shard_file,
)


def answering_conv_mode(answerer, given: str | None) -> str:
    """The conversation template `answerer` answers with (run_benchmark's docstring says which)."""
    own = None if is_loader(answerer) else getattr(getattr(answerer, "pipeline", answerer), "conv_mode", None)
    if own is not None and given is not None and own != given:
        raise InputError(f"conv_mode={given!r} was given, but the pipeline answers with {own!r}")
    return own or given or "vicuna_v1"


def run_benchmark(
    benchmark: str,
    pipeline,
    data_root: str | Path,
    output_dir: str | Path,
    *,
    model_path: str | None = None,
    method: str | None = None,
    conv_mode: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 1,
    limit: int | None = None,
    retry_errors: bool = False,
    question_file: str | Path | None = None,
    image_folder: str | Path | None = None,
    vision_tower: str | None = None,
    patch_merge: str | None = None,
    image_grid: str | None = None,
    video_cls: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    quantization: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    progress: bool = True,
) -> dict | None:
    """Answer what is unanswered, then (rank 0) merge, score and write the run's files.

    `pipeline` is what answers: a `llava.eval.backend.Backend`, a pipeline object (docs/PIPELINE_API.md,
    run by a `TorchBackend`), or a function of no arguments returning either, called only if there is
    something to answer. `conv_mode` is recorded as the template the answers are made with: a pipeline's (or a
    backend's pipeline's) own when it has one (a different `conv_mode` given is refused), else the one given (a
    loader's caller passes it to both), else vicuna_v1. `method=None` means the method
    recorded in the directory's run.json, else "none". `vision_tower`, `dtype`
    (e.g. "float16"), `device` (its type: "cuda", "cpu") and `quantization`
    ("8bit", "4bit" or "none") are recorded, and a directory holding answers made
    with other values is not resumed (None: not known, not checked). `patch_merge`
    and `image_grid` are LLaVA-NeXT's options as given to the pipeline (None: the
    checkpoint's), resolved to the layout the model uses (`runfolder.answer_layout`), recorded and checked the
    same way; so is Video-LLaVA's `video_cls` ("keep" or "drop" each frame's [CLS]; None: the checkpoint's, keep). Returns scores.json's content on rank 0, None on the other ranks.
    """
    from llava.generate import check_generation_options

    bench = get_benchmark(benchmark)
    check_run_options(batch_size, limit)
    # The options left out, and whose default stands in for each (said when a resume is refused).
    omitted = {name: default for name, value, default in (
        ("max_new_tokens", max_new_tokens, f"{bench.name}'s default"),
        ("patch_merge", patch_merge, "the checkpoint's"), ("image_grid", image_grid, "the checkpoint's pinpoints"),
        ("video_cls", video_cls, "the checkpoint's, keep"),
    ) if value is None}
    max_new_tokens = bench.max_new_tokens if max_new_tokens is None else max_new_tokens
    check_generation_options(max_new_tokens, temperature, seed=seed)
    output_dir = prepare_output_dir(Path(output_dir))
    questions = load_questions(bench, Path(data_root), question_file, image_folder, limit)
    bench.check_inputs(questions, Path(data_root) / bench.folder)  # what scoring reads, before any answer
    previous = read_run(output_dir)
    known_layout = None if is_loader(pipeline) else as_backend(pipeline).describe().layout
    conv_mode = answering_conv_mode(pipeline, conv_mode)
    settings = run_settings(
        bench.name, model_path, vision_tower, method or previous.get("method"),
        answer_layout(known_layout, model_path, vision_tower, patch_merge, image_grid, video_cls),
        conv_mode=conv_mode, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, dtype=dtype,
        device=device, quantization=quantization,
    )
    done = read_answers(output_dir)
    todo = [q for q in questions if q.key not in done or (retry_errors and is_error(done[q.key]))]
    # Scoring finished answers again needs no model: another machine (dtype, device) may do it, and
    # run.json keeps saying what the answers were made with, whatever this invocation was given.
    check_same_run(previous, settings, output_dir, SAME_RUN_SETTINGS if todo else ANSWER_SETTINGS,
                   omitted)
    if not todo:
        settings.update({name: previous[name] for name in (*SAME_RUN_SETTINGS, "model_path", "vision_tower")
                         if name in previous})
    times = invocation_times(previous, bool(done)) if todo else {
        "started": previous.get("started"), "resumed": list(previous.get("resumed") or [])}
    if barrier:
        barrier()  # every rank has read the same answers before any writes more
    mine = todo[rank::world_size]
    backend = None
    if mine:
        if rank == 0:
            # The old scores no longer describe answers.jsonl: a run killed from here on leaves none.
            for stale in ("scores.json", "scores.txt"):
                (output_dir / stale).unlink(missing_ok=True)
            write_json(output_dir / "run.json", {
                **previous, **settings, "questions": len(questions), "question_set": question_set(questions),
                **times, "finished": None,
            })
        if any(q.error is None for q in mine):  # malformed question lines need no model
            backend = as_backend(pipeline() if is_loader(pipeline) else pipeline)
        with AnswerWriter(shard_file(output_dir, rank, world_size)) as writer:
            answer_questions(
                mine, backend, writer, batch_size=batch_size, max_new_tokens=max_new_tokens,
                temperature=temperature, seed=seed, progress=progress and rank == 0,
            )
    if barrier:
        barrier()
    if rank != 0:
        return None

    answers = merge_answers(output_dir, questions)
    described = backend.describe() if backend is not None else None
    run = run_record(questions, answers, settings, previous, described, times, world_size, batch_size, data_root,
                     question_file)
    write_json(output_dir / "run.json", run)
    return score(bench, questions, answers, Path(data_root), output_dir, run)


def load_questions(bench: Benchmark, data_root: Path, question_file, image_folder, limit: int | None) -> list[Question]:
    """The benchmark's questions, the first `limit` of them if given; a file holding none is an InputError."""
    folder = data_root / bench.folder
    question_file = Path(question_file) if question_file else folder / bench.question_file
    if image_folder:
        image_folder = Path(image_folder)
    elif bench.image_folder is not None:
        image_folder = folder / bench.image_folder
    questions = list(islice(bench.load_questions(question_file, image_folder), limit))
    if not questions:
        raise InputError(f"{question_file} holds no questions: nothing to answer or score")
    if limit is not None and len(questions) < limit:
        print(f"note: --limit {limit} but {question_file} holds {len(questions)} questions: all "
              f"{len(questions)} are asked", file=sys.stderr)
    return number_repeats(questions)


def score(bench: Benchmark, questions: list[Question], answers: dict, data_root: Path, output_dir: Path,
          run: dict) -> dict:
    """Score every question the file holds (an unreadable one counts as wrong, and is named), write
    scores.json and scores.txt, print the table; returns scores.json's content."""
    metrics = bench.score(questions, answers, data_root / bench.folder, output_dir)
    headline = {"metric": bench.headline, "value": metrics.get(bench.headline) if bench.headline else None}
    scores = {
        "benchmark": bench.name, "title": bench.title, "headline": headline, "metrics": metrics,
        "unreadable": [{"question_id": q.question_id, "error": q.error} for q in questions if q.error],
        "run": run,
    }
    write_json(output_dir / "scores.json", scores)
    table = scores_table(scores)
    (output_dir / "scores.txt").write_text(table + "\n", encoding="utf-8")
    print(table)
    return scores


def scores_table(scores: dict) -> str:
    run = scores["run"]
    head = scores["headline"]
    value = head["value"]
    lines = [
        format_table(scores["metrics"], f"{scores['title']} ({scores['benchmark']})"),
        "",
        f"headline: {head['metric']} = {value:.2f}" if isinstance(value, (int, float)) else
        "headline: none (scored by an external server or judge, see EVAL.md)",
        f"model: {run.get('model_id')}   method: {run.get('method_spec')}   "
        f"visual tokens entering the LLM (mean): {_fmt(run.get('visual_tokens_mean'))}",
        f"questions: {run['questions']}   answered: {run['answered']}   errors: {run['errors']}   "
        f"missing: {run['missing']}",
    ]
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


# ----------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    args = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    barrier = None
    if world_size > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=48))
        barrier = dist.barrier
    try:
        get_benchmark(args.benchmark)
        output_dir = Path(args.output_dir or default_output_dir(args.model_path, args.method, args.benchmark,
                                                                args.video_cls))
        method = args.method or read_run(output_dir).get("method") or "none"
        device, dtype = resolve_device_and_dtype(args.device, args.dtype, local_rank)

        # Passed only when given, so that a --pipeline without them keeps working for LLaVA-1.5.
        anyres_options = {k: v for k, v in (("patch_merge", args.patch_merge), ("image_grid", args.image_grid)) if v}
        video_options = {"video_cls": args.video_cls} if args.video_cls else {}

        quantization = "8bit" if args.load_8bit else "4bit" if args.load_4bit else "none"
        check_backend_options(args.backend, args.tensor_parallel_size, pipeline=args.pipeline,
                              vision_tower=args.vision_tower, quantization=quantization, video_cls=args.video_cls)
        if args.backend == "vllm":
            from llava.model.pruning.registry import parse_method
            from llava.serve.vllm_backend import check_servable

            check_servable(parse_method(method))  # an in-LLM method is refused before anything is loaded

        def load():  # only called when something is left to answer
            if not args.model_path:
                raise InputError("--model-path is needed: some questions have no answer yet")
            if args.backend == "vllm":
                from llava.serve.vllm_backend import VllmBackend

                return VllmBackend.load(args.model_path, method, tensor_parallel_size=args.tensor_parallel_size,
                                        dtype=dtype, conv_mode=args.conv_mode, device=str(device), **anyres_options)
            return import_object(args.pipeline)(
                args.model_path, method=method, conv_mode=args.conv_mode, device=str(device), dtype=dtype,
                vision_tower=args.vision_tower, load_8bit=args.load_8bit, load_4bit=args.load_4bit,
                **anyres_options, **video_options,
            )

        run_benchmark(
            args.benchmark, load, args.data_root, output_dir, model_path=args.model_path,
            method=method, conv_mode=args.conv_mode, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, seed=args.seed, batch_size=args.batch_size, limit=args.limit,
            retry_errors=args.retry_errors, question_file=args.question_file, image_folder=args.image_folder,
            vision_tower=args.vision_tower, patch_merge=args.patch_merge, image_grid=args.image_grid,
            video_cls=args.video_cls,
            dtype=str(dtype).removeprefix("torch."), device=device.type,
            quantization=quantization, rank=rank, world_size=world_size, barrier=barrier,
            progress=not args.no_progress,
        )
    except (InputError, CheckpointError, OSError) as error:  # OSError: a full disk, a folder removed under a run
        return print_error(error)
    finally:
        if barrier:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
