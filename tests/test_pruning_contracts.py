"""Contracts every registered method keeps (STYLE.md): keep-all == none, budget kept, batch == single,
mask == inplace, cached decoding == recompute. The tiny model has 64 patches per image and 3 LLM layers."""

import pytest
import torch
from torch.testing import assert_close

from llava.generate import generate
from llava.model.pruning.registry import available_methods, parse_method
from tests import helpers
from tests.test_model_parity import QUESTIONS, prompts_for

# One spec per registered method, {keep} filled in by the tests. A new method must be added here.
SPECS = {
    "none": "none",
    "fastv": "fastv:k=2,keep={keep}",
    "fastervlm": "fastervlm:keep={keep}",
    "random": "random:keep={keep},seed=3",
    "uniform": "uniform:keep={keep}",
    "pool": "pool:keep={keep}",
}
VARIANTS = list(SPECS.values()) + ["fastv:k=1,keep={keep},mode=mask", "fastv:k=2,ratio=0.75"]
PATCHES = 64


@pytest.fixture
def pruned(loaded):
    """Set a method on the shared model for one test, and put 'none' back afterwards."""
    model = loaded[1]
    yield lambda spec: model.set_pruning(spec.format(keep=16))
    model.set_pruning("none")


@pytest.fixture(scope="module")
def batch(loaded):
    tokenizer, _, processor, _ = loaded
    questions = QUESTIONS + ["read the word"]
    return prompts_for(tokenizer, questions), processor(helpers.random_images(4, seed=21))


def test_every_registered_method_has_a_contract_spec():
    assert set(available_methods()) == set(SPECS)


@pytest.mark.parametrize("spec", [s for s in SPECS.values() if "{keep}" in s] + ["fastv:k=1,keep={keep},mode=mask"])
def test_keeping_everything_equals_no_pruning_exactly(loaded, batch, spec):
    model = loaded[1]
    prompts, pixel_values = batch
    model.set_pruning("none")
    expected = model(prompts, pixel_values, all_logits=True).logits
    model.set_pruning(spec.format(keep=PATCHES))
    try:
        out = model(prompts, pixel_values, all_logits=True)
    finally:
        model.set_pruning("none")
    assert torch.equal(out.logits, expected)


@pytest.mark.parametrize("spec", VARIANTS)
def test_number_kept_equals_the_budget(loaded, pruned, spec):
    tokenizer, model, processor, _ = loaded
    method = pruned(spec)
    one_image = prompts_for(tokenizer, QUESTIONS[:1])[0]
    two_images = one_image[:3] + [helpers.IMAGE_TOKEN_INDEX] + one_image[3:]  # a second image in the prompt
    pixel_values = processor(helpers.random_images(3, seed=22))
    out = model([two_images, prompts_for(tokenizer, QUESTIONS[1:2])[0]], pixel_values)
    promised = method.budget(PATCHES)
    kept = out.stats.kept_in_llm or out.stats.kept
    assert [[len(k) for k in sample] for sample in kept] == [[promised, promised], [promised]]
    for sample in kept:
        for indices in sample:
            assert indices == sorted(indices) and len(set(indices)) == len(indices)
            assert all(0 <= i < PATCHES for i in indices)


def test_fastv_mask_mode_equals_inplace(loaded, batch, pruned):
    model = loaded[1]
    prompts, pixel_values = batch
    results, tokens = {}, {}
    for mode in ("inplace", "mask"):
        pruned(f"fastv:k=1,keep=10,mode={mode}")
        results[mode] = model(prompts, pixel_values)
        tokens[mode] = generate(model, prompts, pixel_values, max_new_tokens=8).tokens
    assert results["inplace"].keep_mask.equal(results["mask"].keep_mask)
    assert_close(results["inplace"].logits, results["mask"].logits, atol=1e-5, rtol=1e-5)
    assert tokens["inplace"] == tokens["mask"]
    # Mask mode saves nothing: every layer still runs on all rows, and the stats say so.
    n = [len(p) - 1 + PATCHES for p in prompts]
    assert results["mask"].stats.seq_lens == [[m] * 3 for m in n]
    assert results["inplace"].stats.seq_lens == [[m, m - 54, m - 54] for m in n]


@pytest.mark.parametrize("spec", VARIANTS)
def test_batch_of_four_equals_four_single_runs(loaded, batch, pruned, spec):
    model = loaded[1]
    pruned(spec)
    prompts, pixel_values = batch
    together = model(prompts, pixel_values)
    together_tokens = generate(model, prompts, pixel_values, max_new_tokens=8).tokens
    for b in range(4):
        alone = model(prompts[b : b + 1], pixel_values[b : b + 1])
        assert_close(together.logits[b], alone.logits[0], atol=1e-4, rtol=1e-4)
        assert (together.stats.kept_in_llm or together.stats.kept)[b] == (alone.stats.kept_in_llm or alone.stats.kept)[0]
        assert generate(model, prompts[b : b + 1], pixel_values[b : b + 1], max_new_tokens=8).tokens[0] == together_tokens[b]


@pytest.mark.parametrize("spec", VARIANTS)
def test_cached_decoding_equals_recompute_without_cache(loaded, batch, pruned, spec):
    model = loaded[1]
    pruned(spec)
    prompts, pixel_values = batch
    cached = generate(model, prompts, pixel_values, max_new_tokens=10, use_cache=True).tokens
    recomputed = generate(model, prompts, pixel_values, max_new_tokens=10, use_cache=False).tokens
    assert cached == recomputed


def test_fastv_pruned_cache_layout(loaded, batch, pruned):
    model = loaded[1]
    pruned("fastv:k=2,keep=16")
    prompts, pixel_values = batch
    out = model(prompts, pixel_values)
    real = out.stats.seq_lens
    n = [len(p) - 1 + PATCHES for p in prompts]  # the -200 becomes 64 tokens
    assert real == [[m, m, m - 48] for m in n]
    lengths = out.cache.seq_lens()
    assert lengths[0] == lengths[1] == max(n) and lengths[2] == max(n) - 48
    assert out.cache.next_position.tolist() == n  # decoding continues the unpruned numbering
    _, cache = model.decode(torch.tensor([[5]] * 4), out.cache)
    assert cache.seq_lens() == [max(n) + 1, max(n) + 1, max(n) - 47]
    assert cache.next_position.tolist() == [m + 1 for m in n]


def test_reselect_every_step_reprunes_from_the_newest_token(loaded, batch, pruned):
    model = loaded[1]
    prompts, pixel_values = batch
    pruned("fastv:k=2,keep=16")
    cached = generate(model, prompts, pixel_values, max_new_tokens=6).tokens
    pruned("fastv:k=2,keep=16,reselect_every_step=true")
    reselected = generate(model, prompts, pixel_values, max_new_tokens=6)
    # Reference, by hand: re-run the whole sequence at every step, FastV choosing again each time.
    for b in range(4):
        sequence, expected = list(prompts[b]), []
        for _ in range(6):
            expected.append(int(model([sequence], pixel_values[b : b + 1]).logits[0, -1].argmax()))
            sequence.append(expected[-1])
        assert reselected.tokens[b] == expected
    assert reselected.tokens != cached  # on this model, re-selecting changes what is generated
    # The stats describe the prefill's selection, as with the cache.
    prefill = model(prompts, pixel_values).stats
    assert reselected.stats.kept_in_llm == prefill.kept_in_llm and reselected.stats.seq_lens == prefill.seq_lens


def test_stats_describe_the_prefill_on_every_decoding_path(loaded, batch, pruned):
    model = loaded[1]
    prompts, pixel_values = batch
    pruned("fastv:k=2,keep=16")
    cached = generate(model, prompts, pixel_values, max_new_tokens=6, use_cache=True).stats
    recomputed = generate(model, prompts, pixel_values, max_new_tokens=6, use_cache=False).stats
    assert cached == recomputed


def test_spec_round_trip():
    for spec in ["fastv:k=3,keep=288", "fastervlm:keep=58", "random:keep=64", "fastv:ratio=0.5,mode=mask", "none"]:
        assert parse_method(spec).spec == spec


def prompts_ending_in_images(tokenizer) -> list[list[int]]:
    """An ordinary prompt's system text + 'USER:' ending in one image; the same ending in the second of two
    images; and the ordinary prompt itself (its image mid-sequence). Three lengths, 1 + 2 + 1 images."""
    ordinary = prompts_for(tokenizer, QUESTIONS[:1])[0]
    head = ordinary[: ordinary.index(helpers.IMAGE_TOKEN_INDEX)]
    image = helpers.IMAGE_TOKEN_INDEX
    return [head + [image], head[:5] + [image] + head[5:9] + [image], ordinary]


@pytest.mark.parametrize("spec", ["fastv:k=1,keep={keep}", "fastv:k=2,ratio=0.75"])
def test_prompt_ending_in_an_image_keeps_its_query_token_and_mask_equals_inplace(loaded, pruned, spec):
    tokenizer, model, processor, _ = loaded
    ending, two_images, ordinary = prompts_ending_in_images(tokenizer)
    pixel_values = processor(helpers.random_images(4, seed=23))
    cases = [  # (prompts, their images in order)
        ([ending], pixel_values[:1]),
        ([two_images], pixel_values[:2]),
        ([ending, two_images, ordinary], pixel_values),  # mixed batch, three lengths
        ([ordinary, ending], pixel_values[:2]),
    ]
    keep_plus_query = 0
    for prompts, images in cases:
        results, tokens = {}, {}
        for mode in ("inplace", "mask"):
            method = pruned(f"{spec},mode={mode}")
            results[mode] = model(prompts, images)
            tokens[mode] = generate(model, prompts, images, max_new_tokens=8).tokens
        assert results["inplace"].keep_mask.equal(results["mask"].keep_mask)
        assert_close(results["inplace"].logits, results["mask"].logits, atol=1e-5, rtol=1e-5)
        assert tokens["inplace"] == tokens["mask"]
        assert results["inplace"].keep_mask[:, -1].all()  # every sample's last real token stays
        promised = method.budget(PATCHES)
        for prompt, kept in zip(prompts, results["inplace"].stats.kept_in_llm):
            counts = [len(k) for k in kept]
            if prompt[-1] == helpers.IMAGE_TOKEN_INDEX:  # the query token is the last span's last patch
                assert kept[-1][-1] == PATCHES - 1 and counts[-1] in (promised, promised + 1)
                keep_plus_query += counts[-1] - promised
                counts = counts[:-1]
            assert counts == [promised] * len(counts)
    assert keep_plus_query > 0  # the query token was outside the top-keep at least once: the case that matters
