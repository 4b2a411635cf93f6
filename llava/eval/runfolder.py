"""A run directory: its answer files and its run.json, the record of what the answers were made with.

The runner (`llava.eval.run`) keeps one folder per run; everything it needs to know about one is here:

- the answer files: answers.jsonl and the shards of several processes (`read_answers`, `merge_answers`);
- run.json: what the answers were made with (model, weights digest, method, generation settings,
  LLaVA-NeXT layout; `run_record`), when each invocation began (`invocation_times`), and the check that
  refuses to mix answers made with other settings into one file (`check_same_run`);
- the fingerprints that check compares: the weights' digest (`weights_fingerprint`), the image layout
  the model uses (`answer_layout`), the ordered question set's digest (`question_set`).

Paths are recorded as `llava.paths.recorded_path` names them (repo-relative inside the repository),
so a result file names the same model on every clone; a path is never one of the compared settings.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
from pathlib import Path

from llava.errors import InputError
from llava.eval.common import Question, answer_key, read_jsonl
from llava.jsonfile import json_type, read_json
from llava.paths import recorded_path

ANSWERS = "answers.jsonl"
SHARDS = "answers.rank*.jsonl"
# Settings that change the answers: a directory holding answers made with other values is not resumed. Each is
# recorded and compared as the model uses it (an omitted option as its default resolves), in both directions.
ANSWER_SETTINGS = ("benchmark", "model_id", "weights", "method", "conv_mode", "max_new_tokens", "temperature", "seed",
                   "patch_merge", "image_grid", "video_cls")
SAME_RUN_SETTINGS = ANSWER_SETTINGS + ("dtype", "device", "quantization")  # checked when something is left to answer
# The command-line option behind each setting, for the refusal's message.
OPTIONS = {"benchmark": "--benchmark", "model_id": "--model-path", "weights": "--model-path", "method": "--method",
           "conv_mode": "--conv-mode", "max_new_tokens": "--max-new-tokens", "temperature": "--temperature",
           "seed": "--seed", "patch_merge": "--patch-merge", "image_grid": "--image-grid", "video_cls": "--video-cls", "dtype": "--dtype",
           "device": "--device", "quantization": "--load-8bit / --load-4bit"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
WEIGHTS_DIGEST = "sha256:"  # the prefix of a whole-file weights digest; older run.json files hold 16 bare hex digits


# ----------------------------------------------------------------------------- the folder and its records


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


def read_record(path: Path) -> dict | None:
    """A JSON object the runner wrote into a run directory (run.json, scores.json), None when there is none.
    One that cannot be read is an InputError: without it nobody can tell what the answers beside it are."""
    if not path.is_file():
        return None
    fix = "fix it, or remove the run directory"
    record = read_json(path, None, fix=fix)
    if not isinstance(record, dict):
        raise InputError(f"{path} is not a JSON object ({json_type(record)}); {fix}")
    return record


def read_run(output_dir: Path) -> dict:
    """The run.json of a run directory ({} when there is none)."""
    return read_record(output_dir / "run.json") or {}


def read_answers(output_dir: Path) -> dict:
    """{question key: answer line} from answers.jsonl and any shard files.

    A later line replaces an earlier one for the same question, except that an
    error line never replaces an answer, whatever the file order: after a sharded
    run was killed before its merge, `--retry-errors` writes its fresh answer into
    answers.jsonl while the old error line still sits in a shard read after it.
    """
    answers = {}
    for path in [output_dir / ANSWERS, *sorted(output_dir.glob(SHARDS))]:
        for record in read_jsonl(path):
            if "question_id" not in record:
                continue
            key = answer_key(record)
            if is_error(record) and key in answers and not is_error(answers[key]):
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
    for shard in output_dir.glob(SHARDS):
        shard.unlink()
    return answers


def shard_file(output_dir: Path, rank: int, world_size: int) -> Path:
    """Where one process writes its answers: answers.jsonl alone, answers.rank<R>.jsonl among several."""
    return output_dir / (ANSWERS if world_size == 1 else f"answers.rank{rank}.jsonl")


def is_error(record: dict) -> bool:
    return bool((record.get("metadata") or {}).get("error"))


# ----------------------------------------------------------------------------- fingerprints


def weights_fingerprint(files: list[Path]) -> str | None:
    """A short digest of the weight files a run loads, so that answers of other weights saved
    under the same folder name (a retrained model, another CLIP folder) are not resumed.

    Hashes each file's name and its whole content ("sha256:" and 16 hex digits). The digest
    this replaced read only each file's first and last MiB, which two trainings of the shipped
    video model share (its frozen towers sit at both ends of the safetensors file); a 14 GB
    checkpoint takes seconds to read once it is in the page cache, and one process reads each
    file once (`_file_digest`). None when there are no files to hash.
    """
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}:{_file_digest(file.resolve(), *_stamp(file))}:".encode())
    return WEIGHTS_DIGEST + digest.hexdigest()[:16]


def _stamp(file: Path) -> tuple[int, int, int, int]:
    stat = file.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


@functools.lru_cache(maxsize=64)
def _file_digest(file: Path, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """The sha256 of one file, cached on its path, inode, size and times (a sweep's runs load the same files)."""
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


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


def answer_layout(loaded: dict | None, model_path: str | None, vision_tower: str | None, patch_merge: str | None,
                  image_grid: str | None, video_cls: str | None = None) -> dict:
    """{"patch_merge", "image_grid", "video_cls"}: how LLaVA-NeXT turns each image into tokens for these answers,
    the merge and the canvases the images are cut by (`canvases`), both None for LLaVA-1.5; whether Video-LLaVA
    keeps each frame's [CLS] ("keep", "drop"; None for an image model).

    What the model uses, not what was typed: a loaded backend says it itself (`loaded`, its
    `BackendInfo.layout`); otherwise the options are resolved against the checkpoint's config as the loader
    resolves them (omitted: the checkpoint's own), so that a resume that omits an option is compared with
    the run's layout as strictly as one that gives it. Without a checkpoint to read (scoring again without
    --model-path, a test's fake model), the options as given (None: not known, not compared).
    """
    if loaded is not None:
        return {"video_cls": video_cls, **loaded}
    if model_path and (Path(model_path) / "config.json").is_file():
        from llava.model.builder import anyres_options, read_checkpoint

        checkpoint = read_checkpoint(model_path, vision_tower)
        pinpoints = anyres_options(checkpoint, patch_merge, image_grid)  # refuses options LLaVA-1.5 has not
        video = checkpoint.config.video
        if video_cls is not None and video is None:
            raise InputError(f"--video-cls is for Video-LLaVA checkpoints; {model_path} has no video tower")
        cls = None if video is None else video_cls or video.cls
        if pinpoints is None:
            return {"patch_merge": None, "image_grid": None, "video_cls": cls}
        return {"patch_merge": patch_merge or checkpoint.config.patch_merge, "image_grid": canvases(pinpoints),
                "video_cls": cls}
    from llava.mm_utils import parse_image_grid

    return {"patch_merge": patch_merge, "image_grid": canvases([parse_image_grid(image_grid, 1)]) if image_grid else None,
            "video_cls": video_cls}


def canvases(pinpoints) -> str | list[str]:
    """(height, width) pinpoints in the --image-grid spelling: "WIDTHxHEIGHT" for one canvas (every image
    is cut by it, as `--image-grid` asks), ["WIDTHxHEIGHT", ...] for several (each image takes the best)."""
    names = [f"{width}x{height}" for height, width in pinpoints]
    return names[0] if len(names) == 1 else names


def question_set(questions: list[Question]) -> str:
    """A short digest of the ordered question keys: runs over the same questions share it."""
    keys = json.dumps([list(q.key) for q in questions], default=str, ensure_ascii=False)
    return hashlib.sha256(keys.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- resume


def check_same_run(previous: dict, settings: dict, output_dir: Path, names=SAME_RUN_SETTINGS,
                   omitted: dict | None = None) -> None:
    """Refuse to mix answers made with another model, method or setting (`names`) into one answers file.

    Both sides are the values the model uses (`settings` holds an omitted option's resolved default), so
    a setting is compared whether this invocation gave it or not; None is "not known" (an older run.json,
    a run without a checkpoint to read, an older form of the weights digest) and is not compared.
    `omitted`: {name: whose default it is} for the options this invocation left out, said in the message
    (their defaults are what differ).
    """
    for name in names:
        before, now = comparable_setting(name, previous.get(name)), comparable_setting(name, settings.get(name))
        if before is not None and now is not None and before != now:
            option = OPTIONS.get(name, name)
            default = f" ({option} not given: {omitted[name]})" if (omitted or {}).get(name) else ""
            raise InputError(
                f"{output_dir} holds answers made with {name}={previous[name]!r}, not {settings[name]!r}{default}: "
                f"answer into another --output-dir, or use the options those answers were made with ({option})"
            )


def comparable_setting(name: str, value):
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
    if name == "weights" and isinstance(value, str) and not value.startswith(WEIGHTS_DIGEST):
        return None  # an older run.json's digest (each file's ends only): this version cannot compute it again
    return value


def canonical_method(method: str | None) -> str:
    """A method spec as typed, without spaces; "none" for no method."""
    return re.sub(r"\s+", "", method or "none") or "none"


# ----------------------------------------------------------------------------- run.json


def run_settings(benchmark: str, model_path: str | None, vision_tower: str | None, method: str, layout: dict,
                 **given) -> dict:
    """run.json's settings of this invocation: the compared ones (`ANSWER_SETTINGS`, `SAME_RUN_SETTINGS`)
    as the model uses them, and the paths it was given, as result files record them."""
    return {
        "benchmark": benchmark, "model_path": recorded_path(model_path),
        "model_id": Path(model_path).name if model_path else None,
        "weights": weights_fingerprint(loaded_weight_files(model_path, vision_tower)),
        "vision_tower": recorded_path(vision_tower), "method": canonical_method(method), **given, **layout,
    }


def invocation_times(previous: dict, answered_before: bool) -> dict:
    """run.json's `started` (when the first invocation began answering into this folder) and `resumed`
    (when each later one that had questions left began): a resumed run says so, and when it began."""
    now = _now()
    if not answered_before:
        return {"started": now, "resumed": []}
    return {"started": previous.get("started"), "resumed": [*(previous.get("resumed") or []), now]}


def run_record(questions, answers, settings, previous, described, times, world_size, batch_size, data_root,
               question_file) -> dict:
    """run.json of a finished run: the settings, what the backend that answered said of itself
    (`described`, a `BackendInfo`, None when none was loaded), the answer counts and means, versions."""
    lines = [answers[q.key] for q in questions if q.key in answers]
    good = [line for line in lines if not is_error(line)]
    with_image = [line for line in good if (line.get("metadata") or {}).get("visual_tokens")]
    method_spec = (described and described.method_spec) or previous.get("method_spec") or settings["method"]
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
        "visual_tokens_per_layer_mean": _mean(visual_per_layer(l["metadata"]) for l in with_image
                                              if "layer_tokens" in l["metadata"] and "prompt_tokens" in l["metadata"]),
        "llm": (described and described.llm) or previous.get("llm"),
        "data_root": recorded_path(data_root),
        "question_file": recorded_path(question_file) if question_file else previous.get("question_file"),
        "world_size": world_size, "batch_size": batch_size,
        "versions": versions(),
        **times, "finished": _now(),
    }


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


def visual_per_layer(metadata: dict) -> float:
    """An answer's visual tokens per decoder layer, averaged over the layers: each layer's tokens less the text's
    (an in-LLM method's later layers run on fewer; a pre-LLM method's all on what it kept)."""
    text = metadata["prompt_tokens"] - sum(metadata["visual_tokens"])
    layers = metadata["layer_tokens"]
    return sum(layers) / len(layers) - text


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
