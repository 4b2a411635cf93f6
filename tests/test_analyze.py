"""`fastv analyze shift|dispersion`: the measures on hand-made maps, and the command on the shipped model
(its maps are `fastv attn`'s rows over the image, renormalised; JSON and PNG written)."""

import json
import math

import pytest
import torch
from PIL import Image

from fastv import analyze
from fastv.cli import main
from fastv.shipped import SHIPPED_MODEL


def test_spread_by_hand():
    uniform = torch.full((1, 4), 0.25)
    assert analyze.spread(uniform) == pytest.approx({"tokens_50": 2, "tokens_90": 4, "entropy": math.log(4)})
    peaked = torch.tensor([[0.0, 0.7, 0.2, 0.1]])
    # sorted 0.7, 0.2, 0.1: 50% in 1 patch, 90% in 2 (0.7 + 0.2 = 0.9, not below 0.9)
    assert analyze.spread(peaked)["tokens_50"] == 1 and analyze.spread(peaked)["tokens_90"] == 2


def test_shift_by_hand():
    # a 2 x 2 grid: text attention all on the bottom row, [CLS] half and half
    text = torch.tensor([[[0.0, 0.0, 0.6, 0.4]]])  # (questions, layers, patches)
    cls = torch.tensor([[0.25, 0.25, 0.25, 0.25]])
    result = analyze.shift(text, cls, 2)
    assert result["text"][0]["row_share"] == pytest.approx([0.0, 1.0]) and result["text"][0]["mean_row"] == 1.0
    assert result["cls"]["row_share"] == pytest.approx([0.5, 0.5]) and result["cls"]["mean_row"] == 0.5


@pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="the shipped model is not here")
def test_the_maps_are_fastv_attn_rows_over_the_image(tmp_path):
    from fastv.attention_maps import analyse, on_patches
    from llava.pipeline import LlavaPipeline

    pipe = LlavaPipeline.load(str(SHIPPED_MODEL))
    image, prompt = Image.open("docs/examples/shapes.png"), "What color is the star?"
    text, cls = analyze.maps(pipe, [(image, prompt)])
    result = analyse(pipe, image, prompt, max_new_tokens=0, overlay_layer=1)
    last = result["spans"]["output"][0] - 1
    start, end = result["spans"]["image"]
    for layer, full in enumerate(result["maps"]):
        row = on_patches(full[last, start:end], result["span"], 12)
        torch.testing.assert_close(text[0, layer], row / row.sum(), atol=1e-5, rtol=1e-4)
    assert torch.allclose(cls.sum(dim=1), torch.ones(1))


@pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="the shipped model is not here")
@pytest.mark.parametrize("analysis", ["shift", "dispersion"])
def test_the_command_writes_json_and_png(tmp_path, capsys, analysis):
    assert main(["analyze", analysis, "--limit", "6", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / f"{analysis}.json").read_text())
    assert result["questions"] == 6 and len(result["text"]) == 4 and Image.open(tmp_path / f"{analysis}.png").size[0] > 100
    if analysis == "shift":
        assert all(sum(row["row_share"]) == pytest.approx(1) for row in result["text"])
    else:
        for row in [*result["text"], result["cls"]]:
            assert 1 <= row["tokens_50"] <= row["tokens_90"] <= 144 and 0 <= row["entropy"] <= math.log(144)
    assert "wrote" in capsys.readouterr().out


def test_an_unknown_benchmark_is_one_line(capsys, tmp_path):
    assert main(["analyze", "shift", "--benchmark", "textvq", "--data-root", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "unknown benchmark 'textvq'; did you mean 'textvqa'?" in capsys.readouterr().err
