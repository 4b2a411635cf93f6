"""The one place methods are registered, and the parser of method spec strings.

A spec is `name` or `name:key=value,key=value` (or such specs joined by `+`: a chain,
pruning/chain.py), e.g. `fastv:k=2,keep=288`,
`fastervlm:keep=58`, `random:keep=64,seed=0`; each key at most once. Values are
converted to the types of the method's `Args` dataclass, which validates them. A
list-valued parameter (a `tuple[int, ...]` field) takes the comma-separated values
that follow it: `pdrop:layers=8,16,24,lambda=0.5`.

The built-in methods register themselves when the package `llava.model.pruning` is imported (its
`__init__` imports each method module), so this module never imports a method back.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing

from llava.errors import InputError
from llava.model.pruning.base import PruningMethod
from llava.model.pruning.chain import Chain
from llava.model.pruning.spec import is_required, spec_key

_METHODS: dict[str, type[PruningMethod]] = {}


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    if cls.name in _METHODS:
        raise ValueError(f"pruning method '{cls.name}' is registered twice")
    _METHODS[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type[PruningMethod]:
    if name not in _METHODS:
        raise InputError(f"unknown method '{name}'{_did_you_mean(name, _METHODS)} (available: {', '.join(sorted(_METHODS))})")
    return _METHODS[name]


def parse_method(spec: str | None) -> PruningMethod:
    """'fastv:k=2,keep=288' -> a FastV instance with validated arguments. None or '' means 'none'. Methods joined
    by '+' make a chain (pruning.chain): 'fastervlm:keep=192+fastv:k=2,keep=96'."""
    spec = (spec or "none").strip()
    parts = [p.strip() for p in re.split(r"\+(?=\s*[A-Za-z])", spec)]  # a '+' before a name joins (prumerge+ is one)
    if len(parts) > 1:
        return Chain([_parse_one(p) for p in parts])
    return _parse_one(spec)


def _parse_one(spec: str) -> PruningMethod:
    name, _, params = spec.partition(":")
    cls = method_class(name.strip())
    fields = {spec_key(f): f for f in dataclasses.fields(cls.Args)}  # by the key a spec writes
    field_hints = typing.get_type_hints(cls.Args)
    hints = {key: field_hints[f.name] for key, f in fields.items()}
    values = {}
    items: list[str] = []
    for item in filter(None, (p.strip() for p in params.split(","))):
        if "=" not in item and items and _is_list(hints.get(items[-1].partition("=")[0].strip())):
            items[-1] += "," + item  # another value of a list-valued parameter
        else:
            items.append(item)
    for item in items:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq:
            raise InputError(f"method parameter '{item}' in '{spec}' must be written key=value")
        if key not in fields:
            raise InputError(
                f"unknown parameter '{key}' for method '{cls.name}'{_did_you_mean(key, fields)}"
                f" (parameters: {', '.join(fields) or 'none'})"
            )
        if key in values:  # which one was meant is not for us to guess
            raise InputError(f"method parameter '{key}' is given twice in '{spec}'")
        values[key] = _convert(raw.strip(), hints[key], f"{cls.name}:{key}")
    try:
        args = cls.Args(**{fields[key].name: value for key, value in values.items()})
    except TypeError as error:  # a required field left out
        missing = [key for key, f in fields.items() if key not in values and is_required(f)]
        raise InputError(f"method '{cls.name}' needs {', '.join(missing)} (e.g. {cls.name}:{missing[0]}=...)") from error
    return cls(args)


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _is_list(hint) -> bool:
    return typing.get_origin(hint) is tuple


def _convert(raw: str, hint, where: str):
    if _is_list(hint):
        kind = typing.get_args(hint)[0]
        values = [v.strip() for v in raw.split(",")]
        if not all(values):
            raise InputError(f"{where} must be comma-separated {kind.__name__}s, got '{raw}'")
        return tuple(_convert(v, kind, where) for v in values)
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    if raw.lower() == "none" and type(None) in options:
        return None
    for option in options:
        if option is type(None):
            continue
        if typing.get_origin(option) is typing.Literal:
            if raw in typing.get_args(option):
                return raw
            raise InputError(f"{where} must be one of {', '.join(typing.get_args(option))}, got '{raw}'")
        if option is bool:
            if raw.lower() in ("true", "1", "yes"):
                return True
            if raw.lower() in ("false", "0", "no"):
                return False
            raise InputError(f"{where} must be true or false, got '{raw}'")
        try:
            return option(raw)
        except ValueError:
            continue
    kinds = " or ".join(getattr(o, "__name__", str(o)) for o in options if o is not type(None))
    raise InputError(f"{where} must be {kinds}, got '{raw}'")
