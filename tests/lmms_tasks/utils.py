"""Functions the shapes tasks' YAMLs name (`!function utils.NAME`): lmms-eval loads this file by path."""

from PIL import Image


def doc_to_visual(doc):
    """The question's image, as LLaVA's evaluation opens it (RGB)."""
    return [Image.open(doc["image"]).convert("RGB")]
