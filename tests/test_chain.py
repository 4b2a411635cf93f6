"""Chained specs (`a+b`, llava/model/pruning/chain.py): parsing and one-line refusals, a later method counting its
budget on what the earlier left, the stages reported per layer (`kept_stages`, `fastv run --json`), and a chain's
in-LLM choice equal to the rule applied by hand to the attention of the tokens the pre-LLM method let in."""

import json

import pytest
import torch

from fastv.cli import main
from llava.errors import InputError
from llava.model.pruning.base import top_k_indices
from llava.model.pruning.registry import parse_method
from tests import helpers
from tests.test_model_parity import QUESTIONS, prompts_for


def test_a_chain_parses_round_trips_and_reports_its_parts():
    chain = parse_method("fastervlm:keep=192 + fastv:k=2,keep=96")
    assert chain.spec == "fastervlm:keep=192+fastv:keep=96"
    assert [part.name for part in chain.parts] == ["fastervlm", "fastv"]
    assert chain.acts == "vision + in LLM"
    assert parse_method(chain.spec).spec == chain.spec
    chain.check_model(24, 32, 576)
    assert chain.budget(576) == 96  # the in-LLM part counts on the 192 FasterVLM let in
    staged = parse_method("visionzip:keep=128+pdrop:layers=2,3,lambda=0.5")
    assert staged.parts[1].layers == (2, 3) and staged.budget(576) == 32  # 128 -> 64 -> 32
    assert parse_method("prumerge+").name == "prumerge+"  # a '+' ends a name unless another name follows


@pytest.mark.parametrize("spec, message", [
    ("fastervlm:keep=192+random:keep=9", "'fastervlm:keep=192+random:keep=9' chains two pre-LLM methods; a chain is at"
                                         " most one pre-LLM method, first, then in-LLM methods"),
    ("fastv:keep=96+fastervlm:keep=192", "'fastv:keep=96+fastervlm:keep=192' chains an in-LLM method before a pre-LLM"
                                         " one; a chain is at most one pre-LLM method, first, then in-LLM methods"),
    ("fastv:k=3,keep=9+fastv:k=2,keep=4", "the in-LLM stages of 'fastv:k=3,keep=9+fastv:keep=4' prune before layers"
                                          " 3, 2; a later method must prune after the earlier one's last stage"),
    ("pdrop:layers=2,4,lambda=0.5+dart:k=3", "the in-LLM stages of 'pdrop:layers=2,4+dart:k=3' prune before layers"
                                             " 2, 4, 3; a later method must prune after the earlier one's last stage"),
    ("none+fastv:keep=3", "'none' cannot be chained ('none+fastv:keep=3'): a chain is one pre-LLM method and/or"
                          " in-LLM methods"),
    ("fastervlm:keep=64+fastv:keep=9,mode=mask", "'fastv:keep=9,mode=mask' studies FastV alone (mask mode,"
                                                 " re-selection without a cache); it cannot be chained"),
    ("fastervlm:keep=64+sparsevlm:keep=100", "sparsevlm:keep=100 is not supported; the release's per-stage lists exist"
                                             " for keep=64, 128, 192"),
    ("fastervlm:keep=64+fastv:keep=5,keep=6", "method parameter 'keep' is given twice in 'fastv:keep=5,keep=6'"),
    ("fastervlm:keep=64+pdrop:layerz=2", "unknown parameter 'layerz' for method 'pdrop'"),
])
def test_bad_chains_are_refused_in_one_line(spec, message):
    with pytest.raises(InputError) as error:
        parse_method(spec)
    assert "\n" not in str(error.value) and str(error.value).startswith(message)


@pytest.mark.parametrize("spec, message", [
    ("fastervlm:keep=10+fastv:k=2,keep=96", "keep=96 is larger than the 10 visual tokens in each image"),
    ("fastervlm:keep=10+pdrop:layers=1,2,lambda=0.2", "pdrop:layers=1,2,lambda=0.2 keeps int(10 * 0.2^2) = 0 tokens"),
    ("fastervlm:keep=32+fastv:k=3,keep=8", "fastv:k=3 is outside 1..2 for this 3-layer LLM"),
])
def test_a_later_budget_the_earlier_method_cannot_feed_is_refused_when_attached(loaded, spec, message):
    model = loaded[1]
    with pytest.raises(InputError) as error:
        model.set_pruning(spec)
    assert "\n" not in str(error.value) and str(error.value).startswith(message)
    assert model.pruning.name == "none"


def test_the_chains_fastv_ranks_the_tokens_fastervlm_let_in(loaded):
    """fastervlm:keep=32 then FastV keep=8 before layer 2: by hand, layer 1's last-row attention over the 32 tokens
    FasterVLM kept (FasterVLM alone, attention read by the decoder's analysis path), mean over heads, top 8."""
    tokenizer, model, processor, _ = loaded
    prompts = prompts_for(tokenizer, QUESTIONS)
    pixel_values = processor(helpers.random_images(3, seed=61))
    model.set_pruning("fastervlm:keep=32")
    try:
        inputs = model.prepare_inputs(prompts, pixel_values)
        rows = model.forward_inputs(inputs, attention_layers=(1,), attention_rows="last").attention[1]  # (B, H, N)
        model.set_pruning("fastervlm:keep=32+fastv:k=2,keep=8")
        out = model(prompts, pixel_values)
    finally:
        model.set_pruning("none")
    stats = out.stats
    for b, spans in enumerate(inputs.spans):
        span = spans[0]
        scores = rows[b, :, span.start:span.end].mean(dim=0)
        expected = span.patch_index[top_k_indices(scores, 8)].tolist()
        assert stats.kept[b][0] == span.patch_index.tolist()  # what entered the LLM: FasterVLM's 32
        assert stats.kept_in_llm[b][0] == expected
        assert stats.kept_stages[0]["layer"] == 2 and stats.kept_stages[0]["kept"][b] == [sorted(expected)]
        n = len(prompts[b]) - 1 + 32
        assert stats.seq_lens[b] == [n, n, n - 24]


def test_run_json_reports_every_stage(capsys, tiny_llava_dir, tmp_path):
    image = tmp_path / "picture.png"
    helpers.random_images(1, seed=62)[0].save(image)
    common = ["run", "--model-path", str(tiny_llava_dir), "--image", str(image), "--prompt", "what is in this image ?",
              "--max-new-tokens", "3", "--json"]
    assert main(common + ["--method", "random:keep=40,seed=1+pdrop:layers=1,2,lambda=0.5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "random:keep=40,seed=1+pdrop:layers=1,2"
    assert result["visual_tokens"] == [40]  # what entered the LLM
    stages = result["kept_stages"]
    assert [stage["layer"] for stage in stages] == [1, 2]
    assert [len(stage["kept"][0]) for stage in stages] == [20, 10]  # int(40 x 0.5), int(40 x 0.25)
    assert set(stages[1]["kept"][0]) <= set(stages[0]["kept"][0])  # a stage chooses among what the last one left
    assert sorted(result["kept"][0]) == stages[-1]["kept"][0]  # `kept`: after the last stage
    assert result["layer_tokens"][1:] == [result["layer_tokens"][0] - 20, result["layer_tokens"][0] - 30]

    assert main(common + ["--method", "fastervlm:keep=16"]) == 0
    assert json.loads(capsys.readouterr().out)["kept_stages"] is None  # no in-LLM stage

    assert main(common[:-1] + ["--method", "random:keep=40,seed=1+pdrop:layers=1,2,lambda=0.5"]) == 0
    assert "in-LLM stages (visual tokens per image): before layer 1: 20; before layer 2: 10" in capsys.readouterr().out
