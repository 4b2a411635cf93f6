"""What this repository ships for the commands to fall back on: the two small LLaVAs it trains (MODEL_CARD.md in
each folder) and their example image. Every `fastv` subcommand and script takes these from here, so that a
command given no `--model-path` or `--image` runs on the shipped ones."""

from __future__ import annotations

from pathlib import Path

from llava.errors import InputError
from llava.paths import REPO_ROOT

SHIPPED_MODEL = REPO_ROOT / "models" / "llava-shapes-tiny"
SHIPPED_NEXT_MODEL = REPO_ROOT / "models" / "llava-next-shapes-tiny"
SHIPPED_VIDEO_MODEL = REPO_ROOT / "models" / "llava-video-shapes-tiny"  # Video-LLaVA, on shapes_video (issue 28)
EXAMPLE_IMAGE = REPO_ROOT / "docs" / "examples" / "shapes.png"


def model_or_shipped(model_path: str | None, shipped: Path = SHIPPED_MODEL) -> str:
    """`model_path`, or a shipped model's folder (LLaVA-1.5's by default) when none is given (InputError if this
    checkout lacks it)."""
    if model_path is not None:
        return model_path
    if not (shipped / "config.json").is_file():
        raise InputError(f"no --model-path given and the shipped model is not in this checkout ({shipped})")
    return str(shipped)
