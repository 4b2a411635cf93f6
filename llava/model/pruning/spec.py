"""Method spec strings' formatting, below both the base classes and the registry (each uses it; neither
imports the other for it).

A spec is `name` or `name:key=value,...`; the canonical spec of a method names every argument that differs
from its default, booleans written `true` / `false`.
"""

from __future__ import annotations

import dataclasses
import keyword


def is_required(f: dataclasses.Field) -> bool:
    """An argument with no default (a spec must name it)."""
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def spec_key(f: dataclasses.Field) -> str:
    """The key a spec names an argument by: its field name, less PEP 8's trailing underscore of a Python keyword
    (PyramidDrop's `lambda_` is written `lambda`)."""
    return f.name[:-1] if f.name.endswith("_") and keyword.iskeyword(f.name[:-1]) else f.name


def format_spec(name: str, args) -> str:
    """Canonical spec of method `name` with arguments `args` (its Args dataclass), e.g. 'fastv:k=2,keep=288'."""
    parts = []
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if is_required(f) or value != f.default:
            parts.append(f"{spec_key(f)}={_format_value(value)}")
    return name + (":" + ",".join(parts) if parts else "")


def _format_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):  # a list-valued parameter: its values comma-separated
        return ",".join(_format_value(v) for v in value)
    return str(value)
