"""Result files: what a `fastv` command that measures something leaves behind, a JSON object a program reads
and the same result as a Markdown table a person reads, written beside it (the paths were checked before the
work by fastv/paths.py)."""

from __future__ import annotations

import json
from pathlib import Path


def write_result(out: str | None, result: dict, table: str, echo: bool = True) -> None:
    """Print a result's Markdown table (unless not `echo`); with `out`, write the result as JSON there and the
    table beside it."""
    if echo:
        print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        Path(out).with_suffix(".md").write_text(table + "\n")
