"""Output paths checked before the work: every `fastv` subcommand that writes files names them here first,
so that a path it cannot write fails in one line before a model is loaded, not after the whole run.

Nothing is created: a missing folder on the way is made when the files are written, so the check is that
the nearest folder that exists is a folder this process may write into.
"""

from __future__ import annotations

import os
from pathlib import Path

from llava.errors import InputError


def check_not_empty(option: str, path: str | Path, what: str) -> Path:
    """`path` as a Path, unless it is empty: `Path("")` is the current folder, where nobody asked to write."""
    if not str(path).strip():
        raise InputError(f"{option} is empty: name {what} to write")
    return Path(path)


def check_output_file(option: str, path: str | Path, *beside: str, what: str = "the file") -> Path:
    """`path` as a file to write, with the files of suffixes `beside` (".md", ".png") next to it: not empty,
    not a folder, under a folder that is or can be made. InputError naming `option` otherwise."""
    path = check_not_empty(option, path, what)
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder: name {what} to write")
    for target in (path.with_suffix(suffix) for suffix in beside):
        if target.is_dir():
            raise InputError(f"{option} {path}: {target}, written beside it, is a folder")
    _check_writable_above(option, path.parent)
    return path


def check_output_dir(option: str, path: str | Path) -> Path:
    """`path` as a folder to write into (made if missing): not empty, not a file, under a folder that is or
    can be made. InputError naming `option` otherwise."""
    path = check_not_empty(option, path, "the folder")
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file: name a folder")
    _check_writable_above(option, path)
    return path


def _check_writable_above(option: str, folder: Path) -> None:
    """The nearest existing one of `folder` and the folders above it must be a folder this process can write in."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option}: cannot make the folder {folder}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option}: cannot write in {existing}")
