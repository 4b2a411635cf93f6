"""The FastV paper's FLOPs formula, with its headline worked by hand."""

from fastv.flops import fastv_flops_ratio, layer_flops


def test_layer_flops_by_hand():
    # n = 10, d = 4, m = 8: 4*10*16 + 2*100*4 + 2*10*4*8 = 640 + 800 + 640
    assert layer_flops(10, 4, 8) == 2080


def test_fastv_headline_on_llava_15_13b():
    # LLaVA-1.5-13B (d 5120, m 13824, 40 layers), n = 612 (35 system + 576 image + 1), K = 2, R = 50%: 288 dropped.
    ratio = fastv_flops_ratio(612, 288, 2, 40, 5120, 13824)
    assert 0.54 < ratio < 0.56  # about 45% fewer FLOPs, the paper's headline
    assert fastv_flops_ratio(612, 0, 2, 40, 5120, 13824) == 1.0
    assert fastv_flops_ratio(612, 288, 40, 40, 5120, 13824) == 1.0  # pruning after the last layer saves nothing


import pytest
import torch


@pytest.fixture(scope="module")
def tiny(loaded):
    return loaded


@pytest.mark.parametrize("spec", ["none", "fastv:k=1,keep=16", "fastv:k=2,ratio=0.5,mode=mask", "fastervlm:keep=16",
                                  "prumerge+"])
def test_the_analytic_count_equals_torchs_flop_counter(tiny, spec):
    """FlopCounterMode over the real forward (SDPA's math kernel, which it can count) against fastv.flops.count
    from the forward's own PruneStats: prefill and one decoded token, within 2% (norms, softmax, the
    scores' single query rows are not in the analytic count)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from fastv.flops import count
    from tests import helpers
    from tests.test_model_parity import QUESTIONS, prompts_for

    tokenizer, model, processor, _ = tiny
    prompts = prompts_for(tokenizer, QUESTIONS[:1])
    pixels = processor(helpers.random_images(1, seed=71))
    method = model.set_pruning(spec)
    try:
        with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
            with FlopCounterMode(display=False) as prefill_counter:
                out = model(prompts, pixels)
            with FlopCounterMode(display=False) as decode_counter:
                model.decode(torch.tensor([[5]]), out.cache)
    finally:
        model.set_pruning("none")
    stats = out.stats
    projected = stats.visual_tokens[0][0] if spec.startswith(("fastervlm", "prumerge")) else 64
    analytic = count(model.config, method, stats.seq_lens[0], views=1, projected_tokens=projected)
    assert analytic.prefill == pytest.approx(prefill_counter.get_total_flops(), rel=0.02)
    assert analytic.decode_per_token == pytest.approx(decode_counter.get_total_flops(), rel=0.02)


def test_fastv_flops_on_the_llava_15_13b_preset_reproduce_the_papers_45_percent(capsys):
    from fastv import flops_table

    result = flops_table.main(preset="llava-v1.5-13b", methods=["none", "fastv:k=2,ratio=0.5"], formula="paper")
    none, fastv = result["rows"]
    assert none["seq_lens"] == [35 + 576 + 20] * 40 and fastv["seq_lens"] == [631] * 2 + [631 - 288] * 38
    assert 0.54 < fastv["llm_prefill_vs_none"] < 0.57  # about 45% fewer LLM FLOPs
    assert "| fastv:ratio=0.5 | 576 | 288 |" in capsys.readouterr().out


def test_flops_json_interface_gives_one_object_with_the_reduction(capsys):
    """`fastv flops --preset NAME --method SPEC --formula paper --json`: one JSON object with the interface's fields;
    at the paper's n (35 system tokens + 576 image + 1 = 612) FastV K=2 R=50% on 13B is its 45% headline."""
    import json

    from fastv.cli import main
    from fastv.flops import fastv_flops_ratio

    assert main(["flops", "--preset", "llava-v1.5-13b", "--method", "fastv:k=2,ratio=0.5", "--formula", "paper",
                 "--text-tokens", "36", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"vision", "projector", "llm_prefill", "llm_decode_per_token", "total_prefill", "reduction_llm_prefill"} <= set(result)
    assert result["total_prefill"] == result["vision"] + result["projector"] + result["llm_prefill"]
    assert result["seq_lens"] == [612] * 2 + [612 - 288] * 38
    assert result["reduction_llm_prefill"] == pytest.approx(1 - fastv_flops_ratio(612, 288, 2, 40, 5120, 13824), abs=1e-9)
    assert abs(result["reduction_llm_prefill"] - 0.45) < 0.01  # within a point of the paper's 45%

    assert main(["flops", "--preset", "llava-v1.5-7b", "--method", "none", "--json"]) == 0
    unpruned = json.loads(capsys.readouterr().out)
    assert unpruned["reduction_llm_prefill"] == 0 and unpruned["formula"] == "measured" and unpruned["text_tokens"] == 55
