"""scripts/kept_recall.py: the question's target tokens on the model's grid, and their recall under pruning."""

import pytest

from fastv.cli import SHIPPED_MODEL
from llava.data import synthetic
from tests.helpers import load_script


@pytest.fixture(scope="module")
def kept_recall():
    return load_script("kept_recall")


def test_target_tokens_follow_the_patch_grid():
    sample = next(s for s in synthetic.generate_split("test", 12) if len(s.patches) > 1)
    assert synthetic.tokens_on_grid(sample.patches, synthetic.PATCH_SIZE) == set(sample.patches)
    tokens = synthetic.tokens_on_grid(sample.patches, 28)
    for p in sample.patches:  # each 14-px patch lies inside the 28-px token it maps to
        row, col = divmod(p, synthetic.GRID_SIZE)
        assert (row // 2) * 12 + col // 2 in tokens
    assert len(tokens) <= len(sample.patches)


@pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="the shipped model is not in this checkout")
def test_recall_is_complete_when_everything_is_kept(kept_recall):
    from llava.pipeline import LlavaPipeline

    pipe = LlavaPipeline.load(str(SHIPPED_MODEL))
    samples = [s for s in synthetic.generate_split("test", 8) if s.patches]
    rows = kept_recall.recall_table(pipe, samples, ["fastervlm", "random"], [1.0, 0.05], batch_size=4)
    by = {(r["method"], r["share"]): r for r in rows}
    assert by["fastervlm", 1.0]["recall"] == by["random", 1.0]["recall"] == 100.0
    assert all(0 <= r["recall"] <= 100 and r["questions"] == len(samples) for r in rows)
    assert "| fastervlm |" in kept_recall.to_markdown(rows, 144)
