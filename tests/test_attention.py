"""`fastv attn` on the shipped model: the maps are the attention the model runs (equal to transformers'
eager attentions; rows sum to 1; the last prompt row at layer k-1 ranks image tokens as FastV does),
the shares sum to 1 per layer, and the command writes its JSON and PNGs; bad options are one line."""

import json

import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from fastv.cli import main
from fastv.shipped import SHIPPED_MODEL

pytestmark = pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="the shipped model is not here")
IMAGE, PROMPT = "docs/examples/shapes.png", "What color is the star?"


@pytest.fixture(scope="module")
def analysed():
    from fastv.attention_maps import analyse
    from llava.pipeline import LlavaPipeline

    pipe = LlavaPipeline.load(str(SHIPPED_MODEL))
    return pipe, analyse(pipe, Image.open(IMAGE), PROMPT, max_new_tokens=8, overlay_layer=1)


def test_the_maps_are_transformers_eager_attentions(analysed):
    from transformers import LlavaForConditionalGeneration

    from llava.pipeline import Request
    from tests.helpers import hf_input_ids

    pipe, result = analysed
    _, (prompt_ids,), pixels, _ = pipe.encode([Request(Image.open(IMAGE), PROMPT)])
    reference = LlavaForConditionalGeneration.from_pretrained(str(SHIPPED_MODEL), dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    ids, mask = hf_input_ids([prompt_ids], 144, reference.config.image_token_index)
    with torch.no_grad():
        theirs = reference(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_attentions=True).attentions
    n = ids.shape[1]  # the prompt; our maps also hold the answer's rows, which the prompt's rows do not see
    for layer, ours in enumerate(result["maps"]):
        assert_close(ours[:n, :n], theirs[layer][0].mean(dim=0), atol=1e-5, rtol=1e-4)
        assert_close(ours.sum(dim=1), torch.ones(ours.shape[0]), atol=1e-5, rtol=0)


def test_the_last_prompt_row_at_layer_k_minus_1_ranks_as_fastv(analysed):
    from llava.model.pruning.base import top_k_indices
    from llava.pipeline import Request

    pipe, result = analysed
    start, end = result["spans"]["image"]
    last = result["spans"]["output"][0] - 1
    expected = top_k_indices(result["maps"][1][last, start:end], 36).tolist()  # layer k-1 = 1 for k = 2
    pipe.model.set_pruning("fastv:k=2,keep=36")
    try:
        _, ids, pixels, _ = pipe.encode([Request(Image.open(IMAGE), PROMPT)])
        kept = pipe.model(ids, pixels).stats.kept_in_llm[0][0]
    finally:
        pipe.model.set_pruning("none")
    assert kept == expected


def test_fastv_attn_writes_shares_that_sum_to_one_and_its_pictures(tmp_path, capsys):
    assert main(["attn", "--image", IMAGE, "--prompt", PROMPT, "--out", str(tmp_path / "attn")]) == 0
    record = json.loads((tmp_path / "attn/attention.json").read_text())
    assert [row["layer"] for row in record["layers"]] == [0, 1, 2, 3]
    assert record["spans"]["image"][1] - record["spans"]["image"][0] == 144
    for table in ("layers", "output_rows"):
        for row in record[table]:
            assert sum(row[name] for name in ("system", "image", "instruction", "output")) == pytest.approx(1, abs=1e-5)
    assert all(row["output"] == 0 for row in record["layers"])  # the last prompt token cannot see the answer
    for name in ("heatmaps.png", "allocation.png", "image_attention.png"):
        assert Image.open(tmp_path / "attn" / name).size[0] > 100
    assert record["answer"] in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--layer", "4"], "--layer must be in 0..3 for this 4-layer LLM, got 4"),
    (["--prompt", "<image> hi"], "without '<image>'"),
])
def test_bad_options_are_one_line(tmp_path, capsys, args, message):
    base = {"--image": IMAGE, "--prompt": PROMPT, "--out": str(tmp_path / "x")}
    for key, value in zip(args[::2], args[1::2]):
        base[key] = value
    assert main(["attn", *[part for pair in base.items() for part in pair]]) == 2
    assert message in capsys.readouterr().err
