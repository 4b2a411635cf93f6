"""Where the repository is, and how result files name a path: relative to the repository when the path lies
inside it (a reader reruns the command from their own clone), as given otherwise."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def recorded_path(path: str | os.PathLike | None) -> str | None:
    """`path` as a result file should record it: repo-relative inside the repository, else unchanged."""
    if path is None:
        return None
    resolved = Path(path).resolve()
    if resolved.is_relative_to(REPO_ROOT):
        return resolved.relative_to(REPO_ROOT).as_posix() or "."
    return str(path)
