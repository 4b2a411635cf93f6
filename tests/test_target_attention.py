"""scripts/target_attention.py: per decoder layer and head, the last token's attention on the question's targets."""

import pytest

from fastv.shipped import SHIPPED_MODEL
from llava.data import synthetic
from tests.helpers import load_script


@pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="the shipped model is not in this checkout")
def test_shares_are_consistent():
    from llava.pipeline import LlavaPipeline

    target_attention = load_script("target_attention")
    pipe = LlavaPipeline.load(str(SHIPPED_MODEL))
    samples = [s for s in synthetic.generate_split("test", 8) if s.patches]
    rows = target_attention.attention_rows(pipe, samples, batch_size=3)
    text = pipe.model.config.text
    assert [(r["layer"], r["head"]) for r in rows] == [(layer, head) for layer in range(text.num_layers)
                                                       for head in range(text.num_heads)]
    for r in rows:  # the target's tokens are some of the objects' tokens, which are some of the image's
        assert 0 <= r["target"] <= r["objects"] + 1e-4 <= 100 + 1e-4 and 0 <= r["image"] <= 100 + 1e-4
    assert 0 < rows[0]["uniform"] < rows[0]["uniform_objects"] <= 100
    assert "| 0 |" in target_attention.to_markdown(rows)
