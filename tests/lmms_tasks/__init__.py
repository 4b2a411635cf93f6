"""Local lmms-eval tasks on the shapes benchmark, for the tests of the `llava_fastv` plugin (no hub download).

`shapes_lmms_gen.yaml` (generate_until, exact match) and `shapes_lmms_mc.yaml` (multiple_choice: acc and
acc_norm from lmms-eval's own `process_results`) read `shapes_docs.jsonl` from the working directory (lmms-eval
is run there, `--include_path` this folder). `write_docs` writes it beside the shapes split our own runner reads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from PIL import Image

from llava.data import synthetic
from llava.mm_utils import tokenizer_image_token
from llava.pipeline import Request

TASKS = Path(__file__).parent
SHIPPED_MODEL = TASKS.parents[1] / "models" / "llava-shapes-tiny"  # the model the repository ships
DOCS = "shapes_docs.jsonl"
SHAPES_FOLDER = "shapes"  # the runner's benchmark folder under the data root


def choices(question_type: str, question: str) -> list[str] | None:
    """Every answer a question of this type could have (None for ocr: an open set of words and numbers)."""
    if question_type == "color":
        return list(synthetic.COLORS)
    if question_type == "shape":
        return list(synthetic.SHAPES)
    if question_type == "exist":
        return ["yes", "no"]
    if question_type == "count":
        return [str(n) for n in range(1, synthetic.MAX_OBJECTS + 1)]
    if question_type == "position":  # "on the left or the right" / "at the top or the bottom"
        return re.findall(r"\b(left|right|top|bottom)\b", question)
    return None


def write_docs(folder: Path, n: int) -> list[dict]:
    """Write the first `n` shapes test questions as the runner reads them (`folder/shapes`, by
    `synthetic.write_split`) and, as `folder/shapes_docs.jsonl`, the lmms-eval docs of those with a closed
    answer set (every type but ocr): question_id, image (its path), prompt (question + short-answer
    instruction, as the runner asks it), answer, choices, question_type. Returns the docs in file order."""
    data = synthetic.write_split("test", n, folder / SHAPES_FOLDER)
    questions = [json.loads(line) for line in (data / "questions.jsonl").read_text().splitlines()]
    answers = {record["question_id"]: record for record in json.loads((data / "annotations.json").read_text())}
    docs = []
    for question in questions:
        annotation = answers[question["question_id"]]
        options = choices(annotation["question_type"], question["text"])
        if options:
            docs.append({"question_id": question["question_id"], "image": str(data / "images" / question["image"]),
                         "prompt": question["text"], "answer": annotation["answer"], "choices": options,
                         "question_type": annotation["question_type"]})
    (folder / DOCS).write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    return docs


def need_lmms_eval(command: Path | None = None) -> None:
    """Skip the calling test module where lmms-eval does not import (or its `command` is missing); fail in CI
    (CI=true), where setup.sh installs it."""
    import os

    import pytest

    try:
        import lmms_eval.api.instance  # noqa: F401
        reason = None if command is None or command.is_file() else f"{command} is missing"
    except ImportError as error:
        reason = f"lmms-eval does not import ({error})"
    if reason:
        reason += "; install it as EVAL.md's lmms-eval section says"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{reason} (CI=true: these tests must run)", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


@torch.inference_mode()
def direct_logprobs(pipe, request: Request, continuations: list[str]) -> list[float]:
    """log p(continuation | request) per continuation, straight from the model's forward, without the plugin
    and without a cache: the question prefilled (the pruning decided there), then each further token by a
    fresh forward over the grown sequence with the prefill's keep set replayed. The continuation's tokens
    are those the whole text adds after the prompt (the tokens the model generates for it)."""
    (text,), (prompt,), images, _ = pipe.encode([request])
    out = pipe.model.forward_inputs(pipe.model.prepare_inputs([prompt], images))
    replay = out.replay  # the in-LLM decisions of the prefill, replayed over the grown sequence
    totals = []
    for continuation in continuations:
        whole = tokenizer_image_token(text + continuation, pipe.tokenizer)
        assert whole[: len(prompt)] == prompt
        tokens, total = whole[len(prompt):], 0.0
        for i, token in enumerate(tokens):
            if i == 0:
                logits = out.logits[0, -1]
            else:
                grown = pipe.model.prepare_inputs([prompt + tokens[:i]], images)
                logits = pipe.model.forward_inputs(grown, use_cache=False, replay=replay).logits[0, -1]
            total += float(logits.float().log_softmax(dim=-1)[token])
        totals.append(total)
    return totals


def choice_logprobs(pipe, doc: dict) -> list[float]:
    """log p(" " + choice | the doc's question and image) per choice: what lmms-eval asks for each choice."""
    image = Image.open(doc["image"]).convert("RGB")
    return direct_logprobs(pipe, Request(image, doc["prompt"]), [" " + choice for choice in doc["choices"]])
