"""scripts/kept_recall.py: the question's target tokens on the model's grid, and their recall under pruning."""

import pytest

from fastv.shipped import SHIPPED_MODEL, SHIPPED_NEXT_MODEL
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


def test_hr_targets_lie_in_the_busy_crops(kept_recall):
    from types import SimpleNamespace

    from llava.model.multimodal_encoder.clip_encoder import VisionConfig

    config = SimpleNamespace(vision=VisionConfig(image_size=336, patch_size=28), anyres=True)  # what target_tokens reads
    for sample in [s for s in synthetic.generate_split("test", 24, look="hr") if s.patches]:
        tokens = kept_recall.target_tokens(sample, config)
        assert tokens and {t // 144 - 1 for t in tokens} <= set(sample.layout["busy_crops"])
        for token in tokens:  # the token's box in canvas pixels holds one of the target's 14-px patches
            partition, patch = divmod(token, 144)
            rows, cols = sample.layout["crop_grid"]
            y0 = (partition - 1) // cols * 336 + patch // 12 * 28
            x0 = (partition - 1) % cols * 336 + patch % 12 * 28
            width = sample.size[0] // synthetic.PATCH_SIZE
            assert any(y0 <= p // width * 14 < y0 + 28 and x0 <= p % width * 14 < x0 + 28 for p in sample.patches)


@pytest.mark.skipif(not (SHIPPED_NEXT_MODEL / "config.json").is_file(),
                    reason="the shipped NeXT model is not in this checkout")
def test_hr_recall_and_budget_shares_when_everything_is_kept(kept_recall):
    from llava.pipeline import LlavaPipeline

    pipe = LlavaPipeline.load(str(SHIPPED_NEXT_MODEL))
    samples = [s for s in synthetic.generate_split("test", 6, look="hr") if s.patches]
    rows = kept_recall.recall_table(pipe, samples, ["fastervlm", "hired"], [1.0, 0.1], batch_size=3)
    by = {(r["method"], r["share"]): r for r in rows}
    full = by["fastervlm", 1.0]
    assert full["recall"] == 100.0 and full["busy_share"] == pytest.approx(full["even_share"])
    assert full["base_share"] > 0 and by["hired", 0.1]["base_share"] > 0
    table = kept_recall.to_markdown(rows, 0)
    assert "| method | 100% | 10% |" in table and "| hired | 10% |" in table
    attention = kept_recall.base_attention_on_busy(pipe, samples)
    assert set(attention["layers"]) == {"0", "4"} and attention["questions"] == len(samples)  # 6 layers, select -2
    assert all(0 < share < 100 for share in attention["layers"].values()) and 0 < attention["even"] < 100
