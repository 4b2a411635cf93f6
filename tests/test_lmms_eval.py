"""The lmms-eval plugin (`llava.integrations.lmms_eval_plugin`) answers lmms-eval's own `Instance`
requests on the shipped model: generate_until equals our pipeline's answers (batched, stop strings
applied), loglikelihood equals a direct computation and knows the greedy answer, the method's spec is
rebuilt from lmms-eval's comma-split model_args, and the entry point registers `llava_fastv`.
Skipped where lmms-eval does not import (setup.sh installs it)."""

import pytest
import torch

from fastv.cli import SHIPPED_MODEL
from llava.data import synthetic

lmms_eval = pytest.importorskip("lmms_eval.api.instance", reason="lmms-eval is not installed (pip install -e '.[lmms]')")
Instance = lmms_eval.Instance
plugin = pytest.importorskip("llava.integrations.lmms_eval_plugin")
pytestmark = pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="the shipped model is not here")

TASK, SPLIT = "shapes_test", "test"
DOCS = {n: synthetic.make_sample("test", n) for n in range(6)}


def doc_to_visual(doc):
    return [doc.image]


def instance(request_type: str, n: int, second) -> Instance:
    arguments = (DOCS[n].prompt, second, doc_to_visual, n, TASK, SPLIT)
    return Instance(request_type=request_type, arguments=arguments, idx=0,
                    metadata={"task": TASK, "doc_id": n, "repeats": 1})


@pytest.fixture(scope="module", params=["none", "fastv"])
def model(request):
    """`--model_args pretrained=...,method=fastv:k=2,keep=36` arrives split at its commas."""
    args = {"pretrained": str(SHIPPED_MODEL), "batch_size": 4}
    if request.param == "fastv":
        args.update(method="fastv:k=2", keep=36)
    lm = plugin.LlavaFastV(**args)
    lm.task_dict = {TASK: {SPLIT: DOCS}}
    return lm


def test_the_spec_is_rebuilt_from_comma_split_model_args(model):
    assert model.pipeline.method_spec in ("none", "fastv:keep=36")  # canonical: k=2 is the default
    assert plugin.method_spec("fastv:k=2", {"keep": 36, "mode": "mask"}) == "fastv:k=2,keep=36,mode=mask"
    assert plugin.method_spec("fastervlm", {"keep": 58}) == "fastervlm:keep=58"


def test_generate_until_equals_the_pipeline_and_applies_stop_strings(model):
    from llava.pipeline import Request

    kwargs = {"max_new_tokens": 8, "temperature": 0, "do_sample": False, "until": ["\n\n"]}
    requests = [instance("generate_until", n, dict(kwargs)) for n in range(6)]
    requests[5] = instance("generate_until", 5, dict(kwargs, until=[" "]))  # a second setting: its own batch
    texts = model.generate_until(requests)
    expected = model.pipeline.answer([Request(DOCS[n].image, DOCS[n].prompt) for n in range(6)], max_new_tokens=8)
    assert texts[:5] == [a.text for a in expected[:5]]
    assert texts[5] == expected[5].text.split(" ", 1)[0]
    assert sum(text == DOCS[n].answer for n, text in enumerate(texts[:5])) >= 3  # the shipped model answers


def test_loglikelihood_equals_a_direct_computation_and_flags_the_greedy_answer(model):
    from llava.pipeline import Request

    greedy = model.generate_until([instance("generate_until", 0, {"max_new_tokens": 8})])[0]
    results = model.loglikelihood([instance("loglikelihood", 0, greedy), instance("loglikelihood", 0, "zzz qqq")])
    (logprob, is_greedy), (other, other_greedy) = results
    assert is_greedy and not other_greedy and other < logprob < 0
    # Direct: prefill the question, then feed the continuation one token at a time through a fresh forward
    # each (no cache), as reselect_every_step does; equal to the cached scoring for every method here.
    pipe = model.pipeline
    _, (prompt,), images = pipe.encode([Request(DOCS[0].image, DOCS[0].prompt)])
    tokens = pipe.tokenizer(greedy, add_special_tokens=False)["input_ids"]
    inputs = pipe.model.prepare_inputs([prompt], images)
    out = pipe.model.forward_inputs(inputs)
    fixed = out.keep_mask  # FastV's keep set of the prefill, replayed over the grown sequence
    total = 0.0
    for i, token in enumerate(tokens):
        logits = out.logits[0, -1] if i == 0 else None
        if logits is None:
            grown = pipe.model.prepare_inputs([prompt + tokens[:i]], images)
            keep = None if fixed is None else torch.cat([fixed, torch.ones(1, i, dtype=torch.bool)], dim=1)
            logits = pipe.model.forward_inputs(grown, use_cache=False, fixed_keep=keep).logits[0, -1]
        total += float(logits.float().log_softmax(dim=-1)[token])
    assert abs(total - logprob) < 1e-4


def test_multi_round_and_beam_search_are_refused_by_name(model):
    with pytest.raises(NotImplementedError, match="generate_until_multi_round"):
        model.generate_until_multi_round([])
    from llava.errors import InputError

    with pytest.raises(InputError, match="num_beams > 1 is not supported"):
        model.generate_until([instance("generate_until", 0, {"num_beams": 4})])


def test_the_entry_point_registers_llava_fastv():
    from importlib.metadata import entry_points

    points = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == "llava_fastv"]
    assert len(points) == 1 and points[0].value == "llava.integrations.lmms_eval_plugin:manifest"
    from lmms_eval.models import get_model

    assert get_model("llava_fastv") is plugin.LlavaFastV
