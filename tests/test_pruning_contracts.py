"""Contracts every registered method keeps (STYLE.md): keep-all == none, budget kept, batch == single,
mask == inplace, cached decoding == recompute. The tiny model has 64 patches per image (per partition
on LLaVA-NeXT) and 3 LLM layers. The five contracts run on three models (`subject`): LLaVA-1.5, LLaVA-NeXT
with its stock spatial_unpad merge (crop grids chosen per image, newline tokens), and LLaVA-NeXT under
FasterVLM's protocol (spatial merge, a fixed 2x2 grid)."""

import math
from dataclasses import dataclass

import pytest
import torch
from torch.testing import assert_close

from llava.errors import InputError
from llava.generate import generate
from llava.model.builder import load_pretrained_model
from llava.model.pruning.base import LayerPruner, llm_parts, method_parts
from llava.model.pruning.divprune import DivPrune
from llava.model.pruning.hired import HiRED
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
    "hired": "hired:rate=0.25",
    "prumerge": "prumerge",
    "prumerge+": "prumerge+",
    "vispruner": "vispruner:keep={keep},important_ratio=0.5",
    "divprune": "divprune:keep={keep}",
    "visionzip": "visionzip:dominant=9,contextual=7",
    "dart": "dart:k=1,keep={keep}",
    "pdrop": "pdrop:layers=1,2,lambda=0.5",
    "sparsevlm": "sparsevlm:keep=64,layers=0,1",
}
# Chains of a pre-LLM method and in-LLM stages (llava/model/pruning/chain.py): every contract runs on them too.
CHAINS = ["fastervlm:keep=32+fastv:k=2,keep={keep}", "vispruner:keep=48+pdrop:layers=1,2,lambda=0.5",
          "random:keep=40,seed=1+dart:k=1,keep=16+fastv:k=2,keep=12"]
VARIANTS = list(SPECS.values()) + CHAINS + [
    "fastv:k=1,keep={keep},mode=mask", "fastv:k=2,ratio=0.75", "hired:rate=0.4,alpha=0.3,split=paper",
    "prumerge:merge=average", "pdrop:layers=2,lambda=0.3", "sparsevlm:keep=128,layers=0,1",
    "divprune:ratio=0.75", "visionzip:dominant=9,contextual=7,packing=stock",
]
NEXT_ONLY = ("alpha=", "split=", "packing=")  # NeXT-only options: HiRED's budget division, VisionZip's packing
LLAVA_15_ONLY = ("sparsevlm",)  # refused on LLaVA-NeXT (each method's own test file)
NO_PATCH_TOKENS = {"visionzip": 1}  # tokens of a method's budget that are no patch (VisionZip's [CLS])
PATCHES = 64
SUBJECTS = ("llava-1.5", "llava-next", "llava-next-spatial-2x2")


@pytest.fixture(scope="module", params=SUBJECTS)
def subject(request):
    """(tokenizer, model, image_processor, context_len) of one of the three models."""
    if request.param == "llava-1.5":
        return request.getfixturevalue("loaded")
    if request.param == "llava-next":
        return request.getfixturevalue("loaded_next")
    return load_pretrained_model(str(request.getfixturevalue("tiny_next_dir")), patch_merge="spatial", image_grid="224x224")


@pytest.fixture
def pruned(subject):
    """Set a method on the shared model for one test, and put 'none' back afterwards."""
    model = subject[1]

    def attach(spec):
        if not model.config.anyres and any(option in spec for option in NEXT_ONLY):
            pytest.skip("an option for LLaVA-NeXT images (refused on LLaVA-1.5: tests/test_hired.py)")
        if model.config.anyres and any(part.startswith(LLAVA_15_ONLY) for part in spec.split("+")):
            pytest.skip("a method refused on LLaVA-NeXT")
        return model.set_pruning(spec.format(keep=16))

    yield attach
    model.set_pruning("none")


@pytest.fixture(scope="module")
def batch(subject):
    tokenizer, _, processor, _ = subject
    questions = QUESTIONS + ["read the word"]
    return prompts_for(tokenizer, questions), processor(helpers.random_images(4, seed=21))


def test_every_registered_method_has_a_contract_spec():
    assert set(available_methods()) == set(SPECS)


KEEP_ALL = [s for s in SPECS.values() if "{keep}" in s and not s.startswith("dart")] + [  # DART keeps 4 + 8 x (keep // 8)
    "fastv:k=1,keep={keep},mode=mask", "hired:rate=1.0", "pdrop:layers=1,2,lambda=1", "divprune:ratio=0",
    "fastervlm:keep={keep}+fastv:k=2,keep={keep}", "random:keep={keep}+pdrop:layers=1,2,lambda=1"]


@pytest.mark.parametrize("spec", KEEP_ALL)
def test_keeping_everything_equals_no_pruning_exactly(subject, batch, spec):
    model = subject[1]
    if model.config.anyres and any(part.startswith(LLAVA_15_ONLY) for part in spec.split("+")):
        pytest.skip("a method refused on LLaVA-NeXT (its own test checks the refusal)")
    if spec.startswith("hired") and model.config.anyres and model.config.patch_merge == "spatial_unpad":
        pytest.skip("HiRED packs a NeXT image without the newline tokens of spatial_unpad")
    if spec.startswith("divprune:keep") and model.config.anyres and model.config.patch_merge == "spatial_unpad":
        pytest.skip("DivPrune counts a NeXT image's newline tokens in its budget: keep=64 per view can keep fewer"
                    " than all (divprune:ratio=0 keeps all)")
    prompts, pixel_values = batch
    model.set_pruning("none")
    expected = model(prompts, pixel_values, all_logits=True).logits
    model.set_pruning(spec.format(keep=PATCHES))
    try:
        out = model(prompts, pixel_values, all_logits=True)
    finally:
        model.set_pruning("none")
    assert torch.equal(out.logits, expected)


@dataclass
class ImageCount:
    """What one image of a forward gave the LLM, from PruneStats."""

    partitions: list[int]  # patches kept per partition
    candidates: int  # its visual tokens without pruning, newline tokens not counted
    padded: bool  # spatial_unpad: some crop patches fall in the padding and never enter the LLM
    length: int  # its visual tokens without pruning, newline tokens included
    entered: int  # its visual tokens that entered the LLM, newline tokens included


@pytest.mark.parametrize("spec", VARIANTS)
def test_number_kept_equals_the_budget(subject, pruned, spec):
    tokenizer, model, processor, _ = subject
    one_image = prompts_for(tokenizer, QUESTIONS[:1])[0]
    two_images = one_image[:3] + [helpers.IMAGE_TOKEN_INDEX] + one_image[3:]  # a second image in the prompt
    prompts = [two_images, prompts_for(tokenizer, QUESTIONS[1:2])[0]]
    images = processor(helpers.random_images(3, seed=22))
    full = model(prompts, images).stats
    method = pruned(spec)
    out = model(prompts, images).stats
    counts = [
        ImageCount(kept, visual - newline, sum(before) < PATCHES * len(before), visual, entered)
        for sample, sample_full, sample_visual, sample_newline, sample_entered in zip(
            out.partition_tokens(), full.partition_tokens(), full.visual_tokens, full.newline_tokens, out.visual_tokens)
        for kept, before, visual, newline, entered in zip(sample, sample_full, sample_visual, sample_newline, sample_entered)
    ]
    assert len(counts) == 3
    in_llm = llm_parts(method)
    if in_llm and not (len(method_parts(method)) == 1 and method.name == "fastv"):
        # An in-LLM method other than FastV alone, or a chain: its tokens after the last stage (merged ones included)
        # are what its last method states of the tokens that reached it (a pre-LLM part's choice).
        if model.config.anyres:
            pytest.skip("NeXT: these methods rank newline tokens too; their own tests count them")
        reached = [visual for sample in out.visual_tokens for visual in sample]
        after = [len(kept) for sample in out.kept_in_llm for kept in sample]
        assert after == [in_llm[-1].stage_budget(_before_last(method, n))[-1] for n in reached]
        return
    promised = method.budget(PATCHES)  # per image (LLaVA-1.5), per partition (NeXT); a ratio: of PATCHES
    if promised is not None:
        promised -= NO_PATCH_TOKENS.get(method.name, 0)
    for image in counts:
        partitions = len(image.partitions)
        if promised is None:  # adaptive (PruMerge): some patches of every partition, never more than it has
            assert all(1 <= n <= PATCHES for n in image.partitions)
        elif isinstance(method, HiRED):  # one budget per image, floor(P N rate); below it when quotas truncate
            budget = math.floor(partitions * PATCHES * method.args.rate)
            assert sum(image.partitions) <= budget and (partitions > 1 or image.partitions == [budget])
        elif isinstance(method, DivPrune) and partitions > 1:  # one choice over the whole NeXT image, newline tokens too
            assert image.entered == method.kept_count(image.length, partitions)
        elif isinstance(method, LayerPruner):  # chosen over the whole image
            expected = method.kept_count(image.candidates, partitions)
            assert sum(image.partitions) == min(expected, image.candidates)
        elif image.padded:  # every partition chose `promised`; the crops' patches in the padding are gone
            assert image.partitions[0] == promised and all(n <= promised for n in image.partitions)
        else:
            assert image.partitions == [promised] * partitions
    kept = out.kept_partitions_in_llm or out.kept_partitions
    for sample in kept:
        for image in sample:
            for indices in image:
                assert indices == sorted(indices) and len(set(indices)) == len(indices)
                assert all(0 <= i < PATCHES for i in indices)


def _before_last(method, tokens: int) -> int:
    """The tokens of an image that reach a chain's last in-LLM method: what the earlier in-LLM methods left of the
    `tokens` that entered the LLM."""
    for part in llm_parts(method)[:-1]:
        tokens = part.stage_budget(tokens)[-1]
    return tokens


def test_the_spatial_protocol_keeps_exactly_five_times_keep(subject):
    """FasterVLM's NeXT protocol: base + 2x2 crops, each its own top keep, no newline: 5 x keep tokens."""
    tokenizer, model, processor, _ = subject
    if model.config.patch_merge != "spatial" or not model.config.anyres:
        pytest.skip("the spatial 2x2 protocol only")
    model.set_pruning("fastervlm:keep=29")
    try:
        out = model(prompts_for(tokenizer, QUESTIONS[:2]), processor(helpers.random_images(2, seed=24)))
    finally:
        model.set_pruning("none")
    assert out.stats.visual_tokens == [[145], [145]] and out.stats.newline_tokens == [[0], [0]]
    assert out.stats.partition_tokens() == [[[29] * 5], [[29] * 5]]


def test_fastv_mask_mode_equals_inplace(subject, batch, pruned):
    model = subject[1]
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
    stats = results["inplace"].stats
    n = [len(p) - 1 + visual[0] for p, visual in zip(prompts, stats.visual_tokens)]
    dropped = [visual[0] - len(kept[0]) - newline[0]
               for visual, kept, newline in zip(stats.visual_tokens, stats.kept_in_llm, stats.newline_tokens)]
    assert min(dropped) > 0
    assert results["mask"].stats.seq_lens == [[m] * 3 for m in n]
    assert stats.seq_lens == [[m, m - d, m - d] for m, d in zip(n, dropped)]


@pytest.mark.parametrize("spec", VARIANTS)
def test_batch_of_four_equals_four_single_runs(subject, batch, pruned, spec):
    model = subject[1]
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
def test_cached_decoding_equals_recompute_without_cache(subject, batch, pruned, spec):
    model = subject[1]
    pruned(spec)
    prompts, pixel_values = batch
    cached = generate(model, prompts, pixel_values, max_new_tokens=10, use_cache=True).tokens
    recomputed = generate(model, prompts, pixel_values, max_new_tokens=10, use_cache=False).tokens
    assert cached == recomputed


def test_fastv_pruned_cache_layout(subject, batch, pruned):
    model = subject[1]
    pruned("fastv:k=2,keep=16")
    prompts, pixel_values = batch
    out = model(prompts, pixel_values)
    stats = out.stats
    n = [len(p) - 1 + visual[0] for p, visual in zip(prompts, stats.visual_tokens)]  # the -200 becomes the image's tokens
    dropped = [visual[0] - len(kept[0]) - newline[0]
               for visual, kept, newline in zip(stats.visual_tokens, stats.kept_in_llm, stats.newline_tokens)]
    assert stats.seq_lens == [[m, m, m - d] for m, d in zip(n, dropped)]
    after = max(m - d for m, d in zip(n, dropped))
    assert out.cache.seq_lens() == [max(n), max(n), after]
    assert out.cache.next_position.tolist() == n  # decoding continues the unpruned numbering
    _, cache = model.decode(torch.tensor([[5]] * 4), out.cache)
    assert cache.seq_lens() == [max(n) + 1, max(n) + 1, after + 1]
    assert cache.next_position.tolist() == [m + 1 for m in n]


def test_reselect_every_step_reprunes_from_the_newest_token(subject, batch, pruned):
    model = subject[1]
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


def test_stats_describe_the_prefill_on_every_decoding_path(subject, batch, pruned):
    model = subject[1]
    prompts, pixel_values = batch
    pruned("fastv:k=2,keep=16")
    cached = generate(model, prompts, pixel_values, max_new_tokens=6, use_cache=True).stats
    recomputed = generate(model, prompts, pixel_values, max_new_tokens=6, use_cache=False).stats
    assert cached == recomputed


# Every method keeps at least one visual token of every image (llava/model/pruning/base.py): per registered
# method, the budgets that would keep none, and its smallest budget that keeps one (64 patches per view).
NO_TOKEN = {
    "fastv": ["fastv:k=2,keep=0", "fastv:k=2,ratio=1", "fastv:k=2,ratio=0.995"],  # round(64 x 0.005) = 0
    "fastervlm": ["fastervlm:keep=0"], "random": ["random:keep=0,seed=3"], "uniform": ["uniform:keep=0"],
    "pool": ["pool:keep=0"],
    "hired": ["hired:rate=0.01"],  # floor(64 x 0.01) = 0
    "none": [], "prumerge": [], "prumerge+": [],  # nothing to set: all tokens, or at least one outlier
    "vispruner": ["vispruner:keep=0"],
    "divprune": ["divprune:keep=0"],
    "visionzip": ["visionzip:dominant=0,contextual=0"],  # dominant counts the [CLS] token
    "dart": ["dart:keep=0"],  # below 8 it is refused too, as keeping only its pivots (tests/test_dart.py)
    "pdrop": ["pdrop:layers=1,2,lambda=0.01", "pdrop:layers=1,lambda=0.01"],  # int(64 x 0.01) = 0
    "sparsevlm": [],  # its budgets are the release's lists, scaled to at least one token
}
ONE_TOKEN = ["none", "fastv:k=2,keep=1", "fastv:k=2,ratio=0.99", "fastervlm:keep=1", "random:keep=1,seed=3",
             "uniform:keep=1", "pool:keep=1", "hired:rate=0.015625", "hired:rate=0.015625,alpha=0", "prumerge",
             "prumerge+", "vispruner:keep=1", "divprune:keep=1",
             "visionzip:dominant=2,contextual=0",  # dominant=1 keeps [CLS] alone: a token, but no patch to count here
             "dart:k=1,keep=8",  # 4 pivots + 8 x 1
             "pdrop:layers=1,lambda=0.02",  # int(64 x 0.02) = 1
             "sparsevlm:keep=64,layers=0,1"]  # 7 then 3 by the scaled lists, plus merged tokens


def test_every_registered_method_says_what_a_budget_of_no_token_is():
    assert set(NO_TOKEN) == set(available_methods())
    assert {spec.partition(":")[0] for spec in ONE_TOKEN} == set(available_methods())


@pytest.mark.parametrize("spec", [spec for specs in NO_TOKEN.values() for spec in specs])
def test_a_budget_of_no_token_is_refused_in_one_line_on_every_model(subject, spec):
    model = subject[1]
    with pytest.raises(InputError) as error:
        model.set_pruning(spec)  # parse_method refuses keep=0 and ratio=1 before any model; the rest: the model
    message = str(error.value)
    assert "\n" not in message and ("at least 1" in message or "keeps at least one" in message)
    assert model.pruning.name == "none"


@pytest.mark.parametrize("spec", ONE_TOKEN)
def test_the_smallest_budget_keeps_at_least_one_token_of_every_image(subject, batch, pruned, spec):
    model = subject[1]
    prompts, pixel_values = batch
    pruned(spec)
    stats = model(prompts, pixel_values).stats
    per_image = [sum(image) for sample in stats.partition_tokens() for image in sample]  # after layer k for FastV
    assert len(per_image) == 4 and min(per_image) >= 1


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
def test_prompt_ending_in_an_image_keeps_its_query_token_and_mask_equals_inplace(subject, pruned, spec):
    tokenizer, model, processor, _ = subject
    if model.config.anyres and model.config.patch_merge == "spatial_unpad":
        pytest.skip("a spatial_unpad image ends in a newline token, which always stays")
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
        model.set_pruning("none")
        full = model(prompts, images).stats
        results, tokens = {}, {}
        for mode in ("inplace", "mask"):
            method = pruned(f"{spec},mode={mode}")
            results[mode] = model(prompts, images)
            tokens[mode] = generate(model, prompts, images, max_new_tokens=8).tokens
        assert results["inplace"].keep_mask.equal(results["mask"].keep_mask)
        assert_close(results["inplace"].logits, results["mask"].logits, atol=1e-5, rtol=1e-5)
        assert tokens["inplace"] == tokens["mask"]
        assert results["inplace"].keep_mask[:, -1].all()  # every sample's last real token stays
        for prompt, kept, every, visual, grids in zip(
                prompts, results["inplace"].stats.kept_in_llm, full.kept, full.visual_tokens, full.partition_grid):
            counts = [len(k) for k in kept]
            promised = [method.kept_count(n, 1 + rows * cols) for n, (rows, cols) in zip(visual, grids)]
            if prompt[-1] == helpers.IMAGE_TOKEN_INDEX:  # the query token is the last span's last patch
                assert kept[-1][-1] == every[-1][-1] and counts[-1] in (promised[-1], promised[-1] + 1)
                keep_plus_query += counts[-1] - promised[-1]
                counts, promised = counts[:-1], promised[:-1]
            assert counts == promised
    assert keep_plus_query > 0  # the query token was outside the top-keep at least once: the case that matters
