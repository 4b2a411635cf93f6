"""The one reader of JSON files, and JSON's types named for a message.

A checkpoint's config.json, a benchmark's annotations and a run's run.json are read by `read_json`:
every way such a file can fail (missing, unreadable, not UTF-8, empty, not JSON, another top-level
type) is one line naming the file and the problem, raised as the caller's error class
(`llava.errors.InputError` by default, `CheckpointError` for a checkpoint). `read_text` is its first
half, for a text file of another format (MME's annotations). It sits below
`llava.model` and `llava.eval` and imports neither.
"""

from __future__ import annotations

import json
from pathlib import Path

from llava.errors import InputError

_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}
_EXPECTED = {**_JSON_NAMES, dict: "a JSON object"}  # what a file's top level must be, as a message says it


def json_type(value) -> str:
    """What a JSON value is, in words for a message: null, true/false, a number, a string, a list, an object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (true/false)"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" if len(value) <= 40 else "a string"
    return _JSON_NAMES.get(type(value), type(value).__name__)


def is_json_type(value, kinds: tuple) -> bool:
    """isinstance, as JSON's types: true/false is no number."""
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def kinds_named(kinds: tuple, names: dict = _JSON_NAMES) -> str:
    """('an object or a list'): JSON types in words, each named once."""
    return " or ".join(dict.fromkeys(names[kind] for kind in kinds))


def read_text(path: Path, *, what: str = "", error: type[Exception] = InputError, fix: str = "") -> str:
    """The UTF-8 text of `path` (a byte order mark skipped); not found, unreadable or not UTF-8 is one line,
    `error("<what> <path> <problem>[; <fix>]")`, as `read_json` words it."""
    subject = f"{what} {path}" if what else str(path)
    tail = f"; {fix}" if fix else ""
    if not path.is_file():
        raise error(f"{what or 'file'} not found: {path}{tail}")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as problem:
        raise error(f"{subject} is not UTF-8 text (byte {problem.start + 1}){tail}") from None
    except OSError as problem:
        raise error(f"cannot read {subject}: {problem.strerror}{tail}") from None


def read_json(path: Path, kind: type | tuple | None = dict, *, what: str = "", error: type[Exception] = InputError,
              fix: str = ""):
    """The JSON value in `path`, whose top level must be `kind` (dict: an object, list: a list, None: any).

    Each failure is one line, `error("<what> <path> <problem>[; <fix>]")`: not found, cannot be read,
    not UTF-8 text, empty, not valid JSON (line and column), "must hold a JSON object, got a list".
    `what` names the file's role ("shapes annotations"); `fix` says what the reader can do about it.
    A UTF-8 byte order mark is skipped.
    """
    subject = f"{what} {path}" if what else str(path)
    tail = f"; {fix}" if fix else ""
    text = read_text(path, what=what, error=error, fix=fix)
    if not text.strip():
        raise error(f"{subject} is empty{tail}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as problem:
        where = f"line {problem.lineno}, column {problem.colno}"
        raise error(f"{subject} is not valid JSON ({where}: {problem.msg}){tail}") from None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if kind is not None and not is_json_type(data, kinds):
        raise error(f"{subject} must hold {kinds_named(kinds, _EXPECTED)}, got {json_type(data)}{tail}")
    return data
