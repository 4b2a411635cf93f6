"""Video-LLaVA's GPT judge of the video QA benchmarks (MSVD-QA, MSRVTT-QA, TGIF-QA, ActivityNet-QA).

Reproduces Video-LLaVA's `videollava/eval/video/eval_video_qa.py` (FasterVLM's video branch ships the same
file): the same system and user prompt, sent as one chat request per question to any OpenAI-compatible
endpoint (`/chat/completions`, the model and the two messages, nothing else: upstream sets no temperature),
and its reading of the reply:

- the reply is a Python dict string, read with `ast.literal_eval`;
- its 'pred' is "yes" when it contains "yes" (any case), else "no" when it contains "no" (substring tests,
  in that order, as released);
- its 'score' is `int(score)`: 4.8 counts 4 (truncation, as released);
- Accuracy = yes / (yes + no), Score = the mean of the scores.

Where this differs from the release, on purpose: upstream asks again until a reply parses (and a question
whose video was missing never reaches it); here every question of the set is in both denominators. A reply
that cannot be read (not a dict, no 'pred' holding yes or no, a 'score' `int()` refuses) counts as "no"
with score 0 and is counted in `unparsed`; an answer line that is an error (a missing or unreadable
video) counts as "no" with score 0 without asking the judge, counted in `errors`.

Judging a run (`python -m llava.eval.judge_run RUN_DIR --judge-url URL`) is `llava.eval.judge_run`; this module is
the judge itself: the prompt, the endpoint (`ChatJudge`: the model and the two messages, POSTed to
`<url>/chat/completions`, the model name the endpoint reports kept), the reading of a reply (`parse_reply`),
the tally (`tally`) and the cache of replies, one JSON per question holding the question, answer and
prediction it judged (`read_cached`, `write_cached`), so that a changed answer is judged again.
"""

from __future__ import annotations

import ast
import hashlib
import http.client
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from llava.errors import InputError
from llava.jsonfile import read_json

# The prompt is the metric: both texts are eval_video_qa.py's, character for character (its string pieces
# are joined without separators, hence "task:------##INSTRUCTIONS: " and "STRING.DO NOT", and its double
# space in "is  a string").
SYSTEM_PROMPT = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for "
    "question-answer pairs. "
    "Your task is to compare the predicted answer with the correct answer and determine if they match "
    "meaningfully. Here's how you can accomplish the task:"
    "------"
    "##INSTRUCTIONS: "
    "- Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)
USER_PROMPT = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\n"
    "Correct Answer: {answer}\n"
    "Predicted Answer: {pred}\n\n"
    "Provide your evaluation only as a yes/no and score where the score is an integer value between 0 and 5, "
    "with 5 indicating the highest meaningful match. "
    "Please generate the response in the form of a Python dictionary string with keys 'pred' and 'score', "
    "where value of 'pred' is  a string of 'yes' or 'no' and value of 'score' is in INTEGER, not STRING."
    "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. "
    "For example, your response should look like this: {{'pred': 'yes', 'score': 4.8}}."
)
JUDGE_FOLDER = "judge"  # in the run directory: one folder of cached replies per judge model
JUDGE_RECORD = "judge.json"  # in the run directory: the judge the scores use
DEFAULT_MODEL = "gpt-3.5-turbo"  # Video-LLaVA's and FasterVLM's judge


def messages(question: str, answer: str, pred: str) -> list[dict]:
    """The chat messages eval_video_qa.py sends for one question-answer pair."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_PROMPT.format(question=question, answer=answer, pred=pred)}]


# ----------------------------------------------------------------------------- reading a reply


@dataclass(frozen=True)
class Verdict:
    """One judged question: `correct` ('pred' said yes), its integer score, and whether the reply could be read."""

    correct: bool
    score: int
    parsed: bool


UNREADABLE = Verdict(correct=False, score=0, parsed=False)


def parse_reply(reply: str) -> Verdict:
    """The verdict in a judge's reply, read as eval_video_qa.py reads it; an unreadable reply is wrong, 0.

    "{'pred': 'yes', 'score': 4.8}" -> yes, 4; "{'pred': 'Yes.', 'score': 3}" -> yes, 3 ("yes" is looked
    for in the lower-cased text); "{'pred': 'no', 'score': '2'}" -> no, 2 (int() takes the string, as released);
    "Yes, score 4" or "{'pred': 'maybe', 'score': 3}" -> unreadable: no, 0.
    """
    try:
        verdict = ast.literal_eval(reply.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return UNREADABLE
    if not isinstance(verdict, dict) or not isinstance(verdict.get("pred"), str):
        return UNREADABLE
    pred = verdict["pred"].lower()
    if "yes" in pred:
        correct = True
    elif "no" in pred:
        correct = False
    else:
        return UNREADABLE
    try:
        score = int(verdict.get("score"))
    except (TypeError, ValueError, OverflowError):
        return UNREADABLE
    return Verdict(correct, score, parsed=True)


def tally(verdicts: list[Verdict], errors: int = 0) -> dict:
    """Accuracy (percent) and Score over every question: `verdicts` of the judged ones, and `errors` answer lines
    (no answer: a missing or unreadable video) counted as "no" with score 0."""
    total = len(verdicts) + errors
    yes = sum(v.correct for v in verdicts)
    return {
        "accuracy": 100.0 * yes / total if total else None,
        "score": sum(v.score for v in verdicts) / total if total else None,
        "yes": yes, "no": total - yes, "unparsed": sum(not v.parsed for v in verdicts), "errors": errors,
    }


# ----------------------------------------------------------------------------- the cache


def model_folder(model: str) -> str:
    """The cache folder's name of a judge model: its name where that is a safe file name, else a digest."""
    return model if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", model) else "model-" + _digest(model)


def cache_name(question_id, occurrence: int = 0) -> str:
    """The cached reply's file name of a question: its id where that is a safe file name, else a digest."""
    name = str(question_id)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,150}", name):
        name = "id-" + _digest(json.dumps(question_id))
    return f"{name}~{occurrence}.json" if occurrence else f"{name}.json"


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def read_cached(folder: Path, question_id, occurrence: int, qa: dict) -> dict | None:
    """The cached reply to this question, None when there is none or it judged another answer or prediction
    (the answers changed since: it is asked again). A cache file that cannot be read is not a reply."""
    path = folder / cache_name(question_id, occurrence)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("qa") != qa or not isinstance(record.get("reply"), str):
        return None
    return record


def write_cached(folder: Path, question_id, occurrence: int, qa: dict, reply: str, answered_by: str | None) -> None:
    """Cache one reply, with what it judged and the model name the endpoint reported (written atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / cache_name(question_id, occurrence)
    record = {"question_id": question_id, "occurrence": occurrence, "qa": qa, "reply": reply, "model": answered_by}
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    temporary.replace(path)


def write_judge_record(run_dir: Path, model: str, url: str, folder: Path) -> None:
    """judge.json: the judge whose cached replies the run's scores use."""
    record = {"model": model, "url": url, "folder": folder.relative_to(run_dir).as_posix()}
    temporary = run_dir / (JUDGE_RECORD + ".tmp")
    temporary.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    temporary.replace(run_dir / JUDGE_RECORD)


def read_judge_record(run_dir: Path) -> dict | None:
    """judge.json of a run directory ({model, url, folder}), None when the run was never judged."""
    path = run_dir / JUDGE_RECORD
    if not path.is_file():
        return None
    record = read_json(path, dict, fix="run the judge again")
    if not isinstance(record.get("model"), str) or not isinstance(record.get("folder"), str):
        raise InputError(f"{path} lacks the judge's model or folder; run the judge again")
    return record


# ----------------------------------------------------------------------------- the endpoint


class ChatJudge:
    """An OpenAI-compatible chat endpoint: `ask(messages)` -> (reply text, the model name the endpoint reports).

    Transient failures (no connection, HTTP 429 and 5xx) are tried again `retries` times, waiting
    `wait`, 2 `wait`, 4 `wait`, ... seconds; what still fails, and any other HTTP error, is an InputError.
    A URL that cannot name a server (no host, a port that is no number, spaces) and a timeout that is not a
    positive number of seconds are InputErrors here, before any request (never retried as if transient)."""

    def __init__(self, url: str, model: str, api_key: str | None = None, *, timeout: float = 60.0,
                 retries: int = 4, wait: float = 2.0):
        if not url.startswith(("http://", "https://")):
            raise InputError(f"--judge-url {url!r} is no http:// or https:// URL")
        parts = urllib.parse.urlsplit(url)
        try:
            parts.port  # a port that is no number, or out of range, raises here
        except ValueError as error:
            raise InputError(f"--judge-url {url!r} is no valid URL ({error})") from None
        if not parts.hostname or any(c.isspace() or not c.isprintable() for c in url):
            raise InputError(f"--judge-url {url!r} is no valid URL (no host name, or spaces in it)")
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise InputError(f"--timeout must be a positive number of seconds, got {timeout}")
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model, self.api_key, self.timeout, self.retries, self.wait = model, api_key, timeout, retries, wait

    def ask(self, chat: list[dict]) -> tuple[str, str | None]:
        body = json.dumps({"model": self.model, "messages": chat}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return self._reply(response.read())
            except urllib.error.HTTPError as error:
                problem = f"HTTP {error.code} {error.reason}"
                if error.code != 429 and error.code < 500:
                    raise InputError(f"the judge at {self.url} refused the request: {problem}") from None
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as error:
                problem = str(getattr(error, "reason", error))
            if attempt < self.retries:
                time.sleep(self.wait * 2 ** attempt)
        raise InputError(f"the judge at {self.url} did not answer ({problem}, {self.retries + 1} tries)")

    def _reply(self, raw: bytes) -> tuple[str, str | None]:
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise InputError(f"the judge at {self.url} sent no chat completion (no choices[0].message.content)") from None
        answered_by = data.get("model") if isinstance(data.get("model"), str) else None
        return (content if isinstance(content, str) else ""), answered_by
