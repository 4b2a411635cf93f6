"""`fastv methods`: the registered pruning methods, each with what it does and its parameters and defaults (the
names and keys a method spec, `name:key=value,...`, is written in)."""

from __future__ import annotations

import dataclasses


def main() -> None:
    """Print every registered method with its parameters and defaults."""
    from llava.model.pruning.registry import available_methods, method_class

    for name in available_methods():
        cls = method_class(name)
        params = []
        for f in dataclasses.fields(cls.Args):
            default = "" if f.default is dataclasses.MISSING else f"={f.default}"
            params.append(f"{f.name}{default}")
        print(f"{name:10s} {cls.summary}")
        print(f"{'':10s} parameters: {', '.join(params) or '(none)'}")
