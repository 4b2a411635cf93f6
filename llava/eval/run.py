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
                    seed, LLaVA-NeXT layout, questions, question_set digest, answered, errors, missing;
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
answers made with another model, weights, method, generation setting or image layout is refused,
each compared as the model uses it (an omitted option by its default), and scoring again never
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
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import importlib.metadata
import json
import os
import platform
import re
import sys
from collections.abc import Callable
from itertools import islice
from pathlib import Path

from llava.errors import CheckpointError, InputError, check_at_least, print_error
from llava.eval.common import (
    AnswerWriter, Question, answer_key, format_table, number_repeats, open_image, read_jsonl, write_json,
)
from llava.eval.registry import BENCHMARKS, Benchmark, get_benchmark

ANSWERS = "answers.jsonl"
DEFAULT_PIPELINE = "llava.pipeline:LlavaPipeline.load"
# Settings that change the answers: a directory holding answers made with other values is not resumed. Each is
# recorded and compared as the model uses it (an omitted option as its default resolves), in both directions.
ANSWER_SETTINGS = ("benchmark", "model_id", "weights", "method", "conv_mode", "max_new_tokens", "temperature", "seed",
                   "patch_merge", "image_grid")
SAME_RUN_SETTINGS = ANSWER_SETTINGS + ("dtype", "device", "quantization")  # checked when something is left to answer
# The command-line option behind each setting, for the refusal's message.
OPTIONS = {"benchmark": "--benchmark", "model_id": "--model-path", "weights": "--model-path", "method": "--method",
           "conv_mode": "--conv-mode", "max_new_tokens": "--max-new-tokens", "temperature": "--temperature",
           "seed": "--seed", "patch_merge": "--patch-merge", "image_grid": "--image-grid", "dtype": "--dtype",
           "device": "--device", "quantization": "--load-8bit / --load-4bit"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
FINGERPRINT_BYTES = 1 << 20  # read from each end of every weights file


def weights_fingerprint(files: list[Path]) -> str | None:
    """A short digest of the weight files a run loads, so that answers of other weights saved
    under the same folder name (a retrained model, another CLIP folder) are not resumed.

    Hashes each file's name, size and first and last MiB (the header and the data
    at both ends: retraining changes them, and a 14 GB checkpoint is not read in
    full). None when there are no files to hash.
    """
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}:".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(FINGERPRINT_BYTES))
            handle.seek(max(size - FINGERPRINT_BYTES, 0))
            digest.update(handle.read(FINGERPRINT_BYTES))
    return digest.hexdigest()[:16]


def loaded_weight_files(model_path: str | None, vision_tower: str | None = None) -> list[Path]:
    """Every weight file a run of `model_path` loads: the checkpoint's and, for the original
    layout, its separate CLIP folder's (as the loader resolves it). [] when `model_path` is not
    a local folder; a folder without config.json (a test's fake model) has its own files."""
    if not model_path or not Path(model_path).is_dir():
        return []
    if not (Path(model_path) / "config.json").is_file():
        return sorted(f for f in Path(model_path).iterdir() if f.suffix in WEIGHT_SUFFIXES and f.is_file())
    from llava.model.builder import checkpoint_weight_files

    return checkpoint_weight_files(model_path, vision_tower)


def answer_layout(pipeline, model_path: str | None, vision_tower: str | None, patch_merge: str | None,
                  image_grid: str | None) -> dict:
    """{"patch_merge", "image_grid"}: how LLaVA-NeXT turns each image into tokens for these answers, the
    merge and the canvases the images are cut by (`canvases`); both None for LLaVA-1.5.

    What the model uses, not what was typed: a loaded pipeline says it itself; otherwise the options are
    resolved against the checkpoint's config as the loader resolves them (omitted: the checkpoint's own),
    so that a resume that omits an option is compared with the run's layout as strictly as one that
    gives it. Without a checkpoint to read (scoring again without --model-path, a test's fake model),
    the options as given (None: not known, not compared).
    """
    model, processor = getattr(pipeline, "model", None), getattr(pipeline, "image_processor", None)
    config = getattr(model, "config", None)
    if not _is_loader(pipeline) and config is not None and processor is not None:
        if not config.anyres:
            return {"patch_merge": None, "image_grid": None}
        return {"patch_merge": config.patch_merge, "image_grid": canvases(processor.image_grid_pinpoints)}
    if model_path and (Path(model_path) / "config.json").is_file():
        from llava.model.builder import anyres_options, read_checkpoint

        checkpoint = read_checkpoint(model_path, vision_tower)
        pinpoints = anyres_options(checkpoint, patch_merge, image_grid)  # refuses options LLaVA-1.5 has not
        if pinpoints is None:
            return {"patch_merge": None, "image_grid": None}
        return {"patch_merge": patch_merge or checkpoint.config.patch_merge, "image_grid": canvases(pinpoints)}
    from llava.mm_utils import parse_image_grid

    return {"patch_merge": patch_merge, "image_grid": canvases([parse_image_grid(image_grid, 1)]) if image_grid else None}


def canvases(pinpoints) -> str | list[str]:
    """(height, width) pinpoints in the --image-grid spelling: "WIDTHxHEIGHT" for one canvas (every image
    is cut by it, as `--image-grid` asks), ["WIDTHxHEIGHT", ...] for several (each image takes the best)."""
    names = [f"{width}x{height}" for height, width in pinpoints]
    return names[0] if len(names) == 1 else names


def check_run_options(batch_size: int, limit: int | None) -> None:
    """The runner's own numeric options (generation options: llava.generate.check_generation_options)."""
    check_at_least("--batch-size", batch_size, 1)
    if limit is not None:
        check_at_least("--limit", limit, 1, "it is the number of questions asked")


def question_set(questions: list[Question]) -> str:
    """A short digest of the ordered question keys: runs over the same questions share it."""
    keys = json.dumps([list(q.key) for q in questions], default=str, ensure_ascii=False)
    return hashlib.sha256(keys.encode()).hexdigest()[:16]


def run_benchmark(
    benchmark: str,
    pipeline,
    data_root: str | Path,
    output_dir: str | Path,
    *,
    model_path: str | None = None,
    method: str | None = None,
    conv_mode: str = "vicuna_v1",
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
    dtype: str | None = None,
    device: str | None = None,
    quantization: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    progress: bool = True,
) -> dict | None:
    """Answer what is unanswered, then (rank 0) merge, score and write the run's files.

    `pipeline` is a pipeline object (docs/PIPELINE_API.md) or a function of no
    arguments returning one, called only if there is something to answer. Its
    requests are made with the `Request` class of the module defining its class
    (llava.pipeline.Request for LlavaPipeline). `method=None` means the method
    recorded in the directory's run.json, else "none". `vision_tower`, `dtype`
    (e.g. "float16"), `device` (its type: "cuda", "cpu") and `quantization`
    ("8bit", "4bit" or "none") are recorded, and a directory holding answers made
    with other values is not resumed (None: not known, not checked). `patch_merge`
    and `image_grid` are LLaVA-NeXT's options as given to the pipeline (None: the
    checkpoint's), resolved to the layout the model uses (`answer_layout`), recorded and checked the same way.
    Returns scores.json's content on rank 0, None on the other ranks.
    """
    from llava.generate import check_generation_options

    bench = get_benchmark(benchmark)
    check_run_options(batch_size, limit)
    # The options left out, and whose default stands in for each (said when a resume is refused).
    omitted = {name: default for name, value, default in (
        ("max_new_tokens", max_new_tokens, f"{bench.name}'s default"),
        ("patch_merge", patch_merge, "the checkpoint's"), ("image_grid", image_grid, "the checkpoint's pinpoints"),
    ) if value is None}
    max_new_tokens = bench.max_new_tokens if max_new_tokens is None else max_new_tokens
    check_generation_options(max_new_tokens, temperature, seed=seed)
    output_dir = prepare_output_dir(Path(output_dir))
    questions = load_questions(bench, Path(data_root), question_file, image_folder, limit)
    bench.check_inputs(questions, Path(data_root) / bench.folder)  # what scoring reads, before any answer
    previous = read_run(output_dir)
    settings = {
        "benchmark": bench.name, "model_path": model_path, "model_id": Path(model_path).name if model_path else None,
        "weights": weights_fingerprint(loaded_weight_files(model_path, vision_tower)), "vision_tower": vision_tower,
        "method": _canonical(method or previous.get("method")), "conv_mode": conv_mode, "max_new_tokens": max_new_tokens,
        "temperature": temperature, "seed": seed, "dtype": dtype, "device": device, "quantization": quantization,
        **answer_layout(pipeline, model_path, vision_tower, patch_merge, image_grid),
    }
    done = read_answers(output_dir)
    todo = [q for q in questions if q.key not in done or (retry_errors and _is_error(done[q.key]))]
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
    loaded = None
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
            loaded = pipeline() if _is_loader(pipeline) else pipeline
        request_type = sys.modules[type(loaded).__module__].Request if loaded is not None else None
        shard = output_dir / (ANSWERS if world_size == 1 else f"answers.rank{rank}.jsonl")
        with AnswerWriter(shard) as writer:
            answer_questions(
                mine, loaded, request_type, writer, batch_size=batch_size, max_new_tokens=max_new_tokens,
                temperature=temperature, seed=seed, progress=progress and rank == 0,
            )
    if barrier:
        barrier()
    if rank != 0:
        return None

    answers = merge_answers(output_dir, questions)
    run = run_record(questions, answers, settings, previous, loaded, world_size, batch_size, data_root, question_file)
    run.update(times, finished=_now())
    write_json(output_dir / "run.json", run)
    # Every question the file holds is scored: an unreadable one counts as wrong, and is named here.
    metrics = bench.score(questions, answers, Path(data_root) / bench.folder, output_dir)
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


def prepare_output_dir(output_dir: Path) -> Path:
    """Create the run directory; a path that cannot be one is an InputError naming it."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"cannot use {output_dir} as the output directory: it or a folder above it is a file")
    except OSError as error:
        raise InputError(f"cannot create the output directory {output_dir}: {error.strerror}")
    if not os.access(output_dir, os.W_OK):
        raise InputError(f"cannot write to the output directory {output_dir}")
    return output_dir


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


# ----------------------------------------------------------------------------- answering


def answer_questions(questions, pipeline, request_type, writer, *, batch_size, max_new_tokens, temperature, seed, progress):
    """Ask `questions` in batches; every question ends as one line in `writer` (an answer or an error)."""
    bar = _progress(len(questions), progress)
    for start in range(0, len(questions), batch_size):
        ready = []
        for question in questions[start:start + batch_size]:
            try:
                if question.error:
                    raise InputError(question.error)
                image = open_image(question) if question.has_image else None
                ready.append((question, request_type(image=image, text=question.text)))
            except InputError as error:
                writer.write(error_line(question, str(error), pipeline))
        for question, result in ask(pipeline, ready, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed):
            writer.write(result if isinstance(result, dict) else answer_line(question, result, pipeline))
        bar.update(min(batch_size, len(questions) - start))
    bar.close()


def ask(pipeline, ready: list, **generation) -> list:
    """[(question, Answer or error line)]; a batch the pipeline refuses is asked again one by one,
    so the error lands on the question that caused it."""
    if not ready:
        return []
    try:
        answers = pipeline.answer([request for _, request in ready], **generation)
        return [(question, answer) for (question, _), answer in zip(ready, answers)]
    except InputError as error:
        if len(ready) > 1:
            return [pair for item in ready for pair in ask(pipeline, [item], **generation)]
        question = ready[0][0]
        return [(question, error_line(question, str(error), pipeline))]


def answer_line(question: Question, answer, pipeline) -> dict:
    metadata = {"visual_tokens": list(answer.visual_tokens), "kept_tokens": [len(k) for k in answer.kept],
                "stop_reason": answer.stop_reason}  # "eos", "max_new_tokens" or "context" (the window is full)
    if answer.prompt_ids:  # the prefill's length: the prompt with every image's visual tokens in place
        metadata["prompt_tokens"] = len(answer.prompt_ids) - len(answer.visual_tokens) + sum(answer.visual_tokens)
    grids = getattr(answer, "partition_grid", None)
    if grids and any(rows for rows, _ in grids):  # LLaVA-NeXT: what each partition kept
        metadata["partition_grid"] = grids
        metadata["partition_tokens"] = [[len(p) for p in image] for image in answer.kept_partitions]
    return _line(question, answer.text, pipeline, metadata)


def error_line(question: Question, message: str, pipeline) -> dict:
    return _line(question, "", pipeline, {"error": message})


def _line(question: Question, text: str, pipeline, metadata: dict) -> dict:
    if question.occurrence:
        metadata["occurrence"] = question.occurrence
    model_id = getattr(pipeline, "model_id", None)
    digest = hashlib.sha1(json.dumps([model_id, list(question.key), text], default=str).encode()).hexdigest()
    return {
        "question_id": question.question_id, "prompt": question.text, "text": text,
        "answer_id": digest[:22],  # deterministic (LLaVA's is random), so a resumed run gives the same file
        "model_id": model_id, "metadata": metadata,
    }


# ----------------------------------------------------------------------------- answer files


def read_answers(output_dir: Path) -> dict:
    """{question key: answer line} from answers.jsonl and any shard files.

    A later line replaces an earlier one for the same question, except that an
    error line never replaces an answer, whatever the file order: after a sharded
    run was killed before its merge, `--retry-errors` writes its fresh answer into
    answers.jsonl while the old error line still sits in a shard read after it.
    """
    answers = {}
    for path in [output_dir / ANSWERS, *sorted(output_dir.glob("answers.rank*.jsonl"))]:
        for record in read_jsonl(path):
            if "question_id" not in record:
                continue
            key = answer_key(record)
            if _is_error(record) and key in answers and not _is_error(answers[key]):
                continue
            answers[key] = record
    return answers


def merge_answers(output_dir: Path, questions: list[Question]) -> dict:
    """Rewrite answers.jsonl in question order (answers to questions not asked this time are kept,
    after them) and remove the shard files. Returns {question key: answer line}."""
    answers = read_answers(output_dir)
    asked = [q.key for q in questions if q.key in answers]
    asked_set = set(asked)
    ordered = asked + [k for k in answers if k not in asked_set]
    temporary = output_dir / (ANSWERS + ".tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        for key in ordered:
            file.write(json.dumps(answers[key], ensure_ascii=False) + "\n")
    temporary.replace(output_dir / ANSWERS)
    for shard in output_dir.glob("answers.rank*.jsonl"):
        shard.unlink()
    return answers


def _is_loader(pipeline) -> bool:
    """`pipeline` is a function returning the pipeline (called only when something is left to answer)."""
    return callable(pipeline) and not hasattr(pipeline, "answer")


def _is_error(record: dict) -> bool:
    return bool((record.get("metadata") or {}).get("error"))


# ----------------------------------------------------------------------------- run metadata


def check_same_run(previous: dict, settings: dict, output_dir: Path, names=SAME_RUN_SETTINGS,
                   omitted: dict | None = None) -> None:
    """Refuse to mix answers made with another model, method or setting (`names`) into one answers file.

    Both sides are the values the model uses (`settings` holds an omitted option's resolved default), so
    a setting is compared whether this invocation gave it or not; None is "not known" (an older run.json,
    a run without a checkpoint to read) and is not compared. `omitted`: {name: whose default it is} for the
    options this invocation left out, said in the message (their defaults are what differ).
    """
    for name in names:
        before, now = _comparable(name, previous.get(name)), _comparable(name, settings.get(name))
        if before is not None and now is not None and before != now:
            option = OPTIONS.get(name, name)
            default = f" ({option} not given: {omitted[name]})" if (omitted or {}).get(name) else ""
            raise InputError(
                f"{output_dir} holds answers made with {name}={previous[name]!r}, not {settings[name]!r}{default}: "
                f"answer into another --output-dir, or use the options those answers were made with ({option})"
            )


def _comparable(name: str, value):
    """A setting as two runs are compared: a method by its canonical spec ('fastv:k=2,ratio=0.75' is
    'fastv:ratio=0.75'), a conversation template by its name (not an alias), one canvas as an older runner
    recorded it ('672X672' as typed) in today's spelling."""
    if name == "method" and isinstance(value, str):
        from llava.model.pruning.registry import parse_method

        try:
            return parse_method(value).spec
        except InputError:
            return value  # not a spec this version knows: compared as written
    if name == "conv_mode" and isinstance(value, str):  # an alias ('v1') by the template's first name
        from llava.conversation import conv_templates

        template = conv_templates.get(value)
        return next((known for known, t in conv_templates.items() if t is template), value)
    if name == "image_grid" and isinstance(value, str):
        return re.sub(r"\s+", "", value).lower()
    return value


def invocation_times(previous: dict, answered_before: bool) -> dict:
    """run.json's `started` (when the first invocation began answering into this folder) and `resumed`
    (when each later one that had questions left began): a resumed run says so, and when it began."""
    now = _now()
    if not answered_before:
        return {"started": now, "resumed": []}
    return {"started": previous.get("started"), "resumed": [*(previous.get("resumed") or []), now]}


def run_record(questions, answers, settings, previous, pipeline, world_size, batch_size, data_root, question_file) -> dict:
    lines = [answers[q.key] for q in questions if q.key in answers]
    good = [line for line in lines if not _is_error(line)]
    with_image = [line for line in good if (line.get("metadata") or {}).get("visual_tokens")]
    method_spec = getattr(pipeline, "method_spec", None) or previous.get("method_spec") or settings["method"]
    return {
        "model_id": next((l["model_id"] for l in good if l.get("model_id")), None),  # without a model path
        **previous, **{k: v for k, v in settings.items() if v is not None},  # model_id: the checkpoint folder's name
        "method_spec": method_spec,
        **parse_budget(method_spec),
        "questions": len(questions),
        "question_set": question_set(questions),
        "answered": len(good),
        "errors": len(lines) - len(good),
        "missing": len(questions) - len(lines),
        "visual_tokens_mean": _mean(sum(l["metadata"]["visual_tokens"]) for l in with_image),
        "kept_tokens_mean": _mean(sum(l["metadata"].get("kept_tokens") or [0]) for l in with_image),
        "prompt_tokens_mean": _mean(l["metadata"]["prompt_tokens"] for l in with_image if "prompt_tokens" in l["metadata"]),
        "llm": llm_size(pipeline) or previous.get("llm"),
        "data_root": str(data_root),
        "question_file": str(question_file) if question_file else previous.get("question_file"),
        "world_size": world_size, "batch_size": batch_size,
        "versions": versions(),
    }


def llm_size(pipeline) -> dict | None:
    """The language model's widths and depth (what FLOPs are counted from), when the pipeline has a model."""
    text = getattr(getattr(getattr(pipeline, "model", None), "config", None), "text", None)
    if text is None:
        return None
    return {"hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size, "num_layers": text.num_layers}


def parse_budget(method_spec: str | None) -> dict:
    """{"method_name", "budget" (visual tokens kept per image or crop), "ratio" (fraction dropped)}."""
    spec = method_spec or "none"
    name = spec.split(":")[0].strip() or "none"
    keep = re.search(r"\bkeep=(\d+)", spec)
    ratio = re.search(r"\bratio=([0-9.]+)", spec)
    return {"method_name": name, "budget": int(keep.group(1)) if keep else None,
            "ratio": float(ratio.group(1)) if ratio else None}


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in ("torch", "transformers", "llava-fastv"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


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


def read_run(output_dir: Path) -> dict:
    """The run.json of a run directory ({} when there is none). One that cannot be read is an InputError:
    without it nobody can tell which settings the answers beside it were made with."""
    path = output_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        run = error
    if not isinstance(run, dict):
        raise InputError(f"{path} is not a JSON object of run settings ({run}): fix it, or remove the run directory")
    return run


def _canonical(method: str | None) -> str:
    return re.sub(r"\s+", "", method or "none") or "none"


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _fmt(value) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, show: bool):
    if not show:
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoProgress()
    return tqdm(total=total, unit="question", file=sys.stderr, dynamic_ncols=True)


# ----------------------------------------------------------------------------- command line


def default_output_dir(model_path: str | None, method: str, benchmark: str) -> Path:
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", _canonical(method).replace("=", ""))
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
        prog="python -m llava.eval.run", description=__doc__.split("\n\n")[0],
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
    parser.add_argument("--load-8bit", action="store_true", help="8-bit weights through bitsandbytes (CUDA)")
    parser.add_argument("--load-4bit", action="store_true", help="4-bit weights through bitsandbytes (CUDA)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--pipeline", default=DEFAULT_PIPELINE, help="loader 'module:attr' with LlavaPipeline.load's "
                        "signature; requests are made with the Request class beside the pipeline's class "
                        f"(testing: tests.eval_fakes:FakePipeline.load) [default: {DEFAULT_PIPELINE}]")
    return parser.parse_args(argv)


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
        output_dir = Path(args.output_dir or default_output_dir(args.model_path, args.method, args.benchmark))
        method = args.method or read_run(output_dir).get("method") or "none"
        device, dtype = resolve_device_and_dtype(args.device, args.dtype, local_rank)

        # Passed only when given, so that a --pipeline without them keeps working for LLaVA-1.5.
        anyres_options = {k: v for k, v in (("patch_merge", args.patch_merge), ("image_grid", args.image_grid)) if v}

        def load():  # only called when something is left to answer
            if not args.model_path:
                raise InputError("--model-path is needed: some questions have no answer yet")
            return import_object(args.pipeline)(
                args.model_path, method=method, conv_mode=args.conv_mode, device=str(device), dtype=dtype,
                vision_tower=args.vision_tower, load_8bit=args.load_8bit, load_4bit=args.load_4bit,
                **anyres_options,
            )

        quantization = "8bit" if args.load_8bit else "4bit" if args.load_4bit else "none"
        run_benchmark(
            args.benchmark, load, args.data_root, output_dir, model_path=args.model_path,
            method=method, conv_mode=args.conv_mode, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, seed=args.seed, batch_size=args.batch_size, limit=args.limit,
            retry_errors=args.retry_errors, question_file=args.question_file, image_folder=args.image_folder,
            vision_tower=args.vision_tower, patch_merge=args.patch_merge, image_grid=args.image_grid,
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


def resolve_device_and_dtype(device: str | None, dtype: str, local_rank: int):
    """(torch.device, torch.dtype) of a run: `--device` checked against this machine (default
    cuda:LOCAL_RANK when there is CUDA, else cpu) and `--dtype` ("auto": the loader's default for it)."""
    import torch

    from llava.device import default_dtype, resolve_device

    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    resolved = resolve_device(device)
    return resolved, default_dtype(resolved) if dtype == "auto" else getattr(torch, dtype)


if __name__ == "__main__":
    sys.exit(main())
