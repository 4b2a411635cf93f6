"""The answer loop of the eval runner, and the interface of what answers: a `Backend`.

A backend turns a batch of questions into answers; the runner does everything around it. To add one
(vLLM, next), subclass `Backend` and give the runner an instance (or a function of no arguments
returning one, called only when something is left to answer):

- `answer(prompts, max_new_tokens=, temperature=, seed=)`: `prompts` is a batch of `Prompt`s (the user
  turn as sent, without `<image>`, and its decoded image or None, or its video); return one `Reply` per prompt, in
  order: the answer's text and its metadata, `visual_tokens` (per image, tokens that entered the LLM),
  `kept_tokens` (per image, how many were kept) and `stop_reason` ("eos", "max_new_tokens", "context"),
  with `prompt_tokens` and LLaVA-NeXT's `partition_grid` / `partition_tokens` where known. Raise
  `llava.errors.InputError` with a one-line message for a prompt it cannot answer (too long for the
  context, a corrupt image); the generation options are checked before it is called
  (`llava.generate.check_generation_options`). A method it cannot run is refused by name when the
  backend is made (an InputError from its loader), before any question is asked.
- `describe()`: a `BackendInfo` for run.json: the model id the answer lines carry, the canonical method
  spec, the LLaVA-NeXT layout it uses (None: resolved from the checkpoint) and the LLM's sizes.

What the runner does for every backend (`answer_questions`): batches of `--batch-size`; the images,
read once (`llava.eval.common.open_image`); one JSONL line per question, keyed and given a deterministic
answer_id; a question it cannot read (malformed line, missing or corrupt image) becomes an error line
without reaching the backend; a batch the backend refuses is asked again one by one, so the error lines
land on the questions that caused them; resume and the shards of several processes
(`llava.eval.runfolder`). `TorchBackend` runs a `LlavaPipeline` (docs/PIPELINE_API.md) or any object
with its `answer` (the tests' `tests.eval_fakes.FakePipeline`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from llava.errors import InputError
from llava.eval.common import AnswerWriter, Question, open_image, open_video
from llava.eval.runfolder import canvases

if TYPE_CHECKING:
    from llava.video import Video


@dataclass(frozen=True)
class Prompt:
    """One question as a backend is asked it: the user turn as sent (without `<image>`) and its image or
    its video (a `llava.video.Video`, 8 sampled frames; video QA)."""

    text: str
    image: Image.Image | None
    video: Video | None = None


@dataclass(frozen=True)
class Reply:
    """One answer: its text and the answer line's metadata (see the module docstring)."""

    text: str
    metadata: dict


@dataclass(frozen=True)
class BackendInfo:
    """What a backend says of itself for run.json and the answer lines; None where it cannot tell."""

    model_id: str | None
    method_spec: str | None
    layout: dict | None  # {"patch_merge", "image_grid"[, "video_cls"]} as `runfolder.answer_layout` records them
    llm: dict | None  # {"hidden_size", "intermediate_size", "num_layers"}: what FLOPs are counted from
    num_frames: int | None = None  # Video-LLaVA: the frames a video is read as (config.video.num_frames)


class Backend(ABC):
    """What answers the runner's questions (see the module docstring)."""

    @abstractmethod
    def answer(self, prompts: list[Prompt], *, max_new_tokens: int, temperature: float, seed: int,
               method: str | None = None) -> list[Reply]:
        """One Reply per prompt, in order; InputError for a batch holding a prompt it cannot answer. `method`: a
        pruning spec for this call instead of the backend's own (fastv serve's per-request method); InputError
        when it cannot run it."""

    @abstractmethod
    def describe(self) -> BackendInfo:
        """The model id, method spec, layout and LLM sizes of the answers it gives."""


class TorchBackend(Backend):
    """A `LlavaPipeline` (or an object with its interface): requests are made with the `Request` class of
    the module defining the pipeline's class (llava.pipeline.Request for LlavaPipeline)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def answer(self, prompts: list[Prompt], *, max_new_tokens: int, temperature: float, seed: int,
               method: str | None = None) -> list[Reply]:
        """`method`: a pruning spec for this call only (the model's own method is restored after it);
        None: the model's method. An InputError when the model cannot run it."""
        request_type = sys.modules[type(self.pipeline).__module__].Request
        if any(p.video is not None for p in prompts) and "video" not in getattr(request_type, "__dataclass_fields__", {}):
            raise InputError(f"{type(self.pipeline).__name__} takes no video (its Request has no video field)")
        requests = [request_type(image=prompt.image, text=prompt.text) if prompt.video is None else
                    request_type(image=prompt.image, text=prompt.text, video=prompt.video) for prompt in prompts]
        own = None if method is None else self.pipeline.model.pruning
        if method is not None:
            self.pipeline.model.set_pruning(method)  # checked against the model first: nothing changes on an error
        try:
            answers = self.pipeline.answer(requests, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        finally:
            if own is not None:
                self.pipeline.model.pruning = own
        return [Reply(answer.text, answer_metadata(answer)) for answer in answers]

    def describe(self) -> BackendInfo:
        model = getattr(self.pipeline, "model", None)
        config, processor = getattr(model, "config", None), getattr(self.pipeline, "image_processor", None)
        layout = None
        if config is not None and processor is not None:
            layout = {"patch_merge": None, "image_grid": None}
            if config.anyres:
                layout = {"patch_merge": config.patch_merge, "image_grid": canvases(processor.image_grid_pinpoints)}
            if getattr(config, "video", None) is not None:
                layout["video_cls"] = config.video.cls
        text = getattr(config, "text", None)
        llm = None if text is None else {
            "hidden_size": text.hidden_size, "intermediate_size": text.intermediate_size, "num_layers": text.num_layers}
        video = getattr(config, "video", None)
        return BackendInfo(getattr(self.pipeline, "model_id", None), getattr(self.pipeline, "method_spec", None),
                           layout, llm, num_frames=None if video is None else video.num_frames)


def answer_metadata(answer) -> dict:
    """An answer line's metadata from a `llava.pipeline.Answer`."""
    metadata = {"visual_tokens": list(answer.visual_tokens), "kept_tokens": [len(k) for k in answer.kept],
                "stop_reason": answer.stop_reason}  # "eos", "max_new_tokens" or "context" (the window is full)
    if answer.prompt_ids:  # the prefill's length: the prompt with every image's visual tokens in place
        metadata["prompt_tokens"] = len(answer.prompt_ids) - len(answer.visual_tokens) + sum(answer.visual_tokens)
    if getattr(answer, "layer_tokens", None):  # per decoder layer, the tokens it ran on (in-LLM pruning: fewer later)
        metadata["layer_tokens"] = list(answer.layer_tokens)
    if getattr(answer, "frames", None):  # a video: the frame indices read, and what each frame kept
        metadata["frames"] = list(answer.frames)
        metadata["kept_frame_tokens"] = [len(k) for k in answer.kept_frames or []]
    grids = getattr(answer, "partition_grid", None)
    if grids and any(rows for rows, _ in grids):  # LLaVA-NeXT: what each partition kept
        metadata["partition_grid"] = grids
        metadata["partition_tokens"] = [[len(p) for p in image] for image in answer.kept_partitions]
    return metadata


def as_backend(answerer) -> Backend:
    """A Backend as it is; a pipeline object (anything else with `answer`) run by a TorchBackend."""
    return answerer if isinstance(answerer, Backend) else TorchBackend(answerer)


def is_loader(answerer) -> bool:
    """`answerer` is a function returning the backend or pipeline (called only when something is left to answer)."""
    return callable(answerer) and not hasattr(answerer, "answer")


# ----------------------------------------------------------------------------- the answer loop


def answer_questions(questions: list[Question], backend: Backend | None, writer: AnswerWriter, *, batch_size: int,
                     max_new_tokens: int, temperature: float, seed: int, progress: bool) -> None:
    """Ask `questions` in batches; every question ends as one line in `writer` (an answer or an error).
    `backend` may be None when every question is malformed (nothing reaches a model)."""
    described = backend.describe() if backend is not None else None
    model_id, num_frames = (described.model_id, described.num_frames) if described is not None else (None, None)
    bar = _progress(len(questions), progress)
    for start in range(0, len(questions), batch_size):
        ready = []
        for question in questions[start:start + batch_size]:
            try:
                if question.error:
                    raise InputError(question.error)
                image = open_image(question) if question.has_image else None
                video = open_video(question, num_frames) if question.video is not None else None
                ready.append((question, Prompt(question.text, image, video)))
            except InputError as error:
                writer.write(error_line(question, str(error), model_id))
        generation = dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        for question, line in ask(backend, ready, model_id, **generation):
            writer.write(line)
        bar.update(min(batch_size, len(questions) - start))
    bar.close()


def ask(backend: Backend, ready: list[tuple[Question, Prompt]], model_id: str | None, **generation) -> list:
    """[(question, answer or error line)]; a batch the backend refuses is asked again one by one,
    so the error lands on the question that caused it."""
    if not ready:
        return []
    try:
        replies = backend.answer([prompt for _, prompt in ready], **generation)
        return [(question, line(question, reply.text, model_id, reply.metadata))
                for (question, _), reply in zip(ready, replies)]
    except InputError as error:
        if len(ready) > 1:
            return [pair for item in ready for pair in ask(backend, [item], model_id, **generation)]
        question = ready[0][0]
        return [(question, error_line(question, str(error), model_id))]


def error_line(question: Question, message: str, model_id: str | None) -> dict:
    return line(question, "", model_id, {"error": message})


def line(question: Question, text: str, model_id: str | None, metadata: dict) -> dict:
    """One LLaVA answer line: question_id, prompt, text, answer_id, model_id, metadata."""
    metadata = dict(metadata)
    if question.occurrence:
        metadata["occurrence"] = question.occurrence
    digest = hashlib.sha1(json.dumps([model_id, list(question.key), text], default=str).encode()).hexdigest()
    return {
        "question_id": question.question_id, "prompt": question.text, "text": text,
        "answer_id": digest[:22],  # deterministic (LLaVA's is random), so a resumed run gives the same file
        "model_id": model_id, "metadata": metadata,
    }


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
