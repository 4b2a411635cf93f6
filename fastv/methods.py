"""`fastv methods`: the registered pruning methods, each with what it does, where it acts, what it reads, how it
treats positions, how its budget counts on a video, and its parameters and defaults (the names and keys a method spec, `name:key=value,...`, is
written in; `a+b` chains one pre-LLM method with in-LLM ones)."""

from __future__ import annotations

import dataclasses

COLUMNS = ("method", "acts", "attention", "question", "positions", "video")


def rows() -> list[dict]:
    """One row per registered method: the columns above, `summary` and `parameters` (name=default, ...)."""
    from llava.model.pruning.base import LayerPruner
    from llava.model.pruning.registry import available_methods, method_class
    from llava.model.pruning.spec import spec_key

    table = []
    for name in available_methods():
        cls = method_class(name)
        params = []
        for f in dataclasses.fields(cls.Args):
            default = "" if f.default is dataclasses.MISSING else f"={_value(f.default)}"
            params.append(f"{spec_key(f)}{default}")
        in_llm = issubclass(cls, LayerPruner)
        table.append({
            "method": name,
            "acts": cls.acts,
            "attention": "yes" if cls.reads_attention else "no",
            "question": "yes" if cls.reads_question else "no",
            "positions": ("renumbered" if cls.renumbers else "kept") if in_llm else "-",
            "video": cls.video,
            "summary": cls.summary,
            "parameters": ", ".join(params) or "(none)",
        })
    return table


def _value(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def main() -> None:
    """Print every registered method: a table of where it acts and what it reads, then its summary and parameters."""
    table = rows()
    widths = {c: max(len(c), *(len(r[c]) for r in table)) for c in COLUMNS}
    print("  ".join(c.ljust(widths[c]) for c in COLUMNS))
    for r in table:
        print("  ".join(r[c].ljust(widths[c]) for c in COLUMNS))
    print()
    print("acts: vision = on the vision tower's output, before the projector; llm input = on the projected tokens;")
    print("in LLM = inside the decoder, before the layers a stage names. attention: ranks by attention probabilities")
    print("(CLIP's or the LLM's). question: its choice depends on the question's tokens. positions (in-LLM): kept")
    print("tokens keep their position ids, or are renumbered 0, 1, ... after each stage. Chains: 'a+b', one pre-LLM")
    print("method first, then in-LLM methods, each counting its budget on what the earlier left. video (Video-LLaVA):")
    print("per frame = each frame chosen as an image, keep counts patches per frame (8 x keep in all; the frames' [CLS]")
    print("by --video-cls); over the span = one choice over the whole video, keep counts tokens of the span (the frames'")
    print("[CLS] included when kept) and ratio is a fraction of it; refused = it does not apply to videos.")
    print()
    for r in table:
        print(f"{r['method']:10s} {r['summary']}")
        print(f"{'':10s} parameters: {r['parameters']}")
