"""The methods on LLaVA-NeXT, with known answers: FasterVLM per partition against transformers' eager
CLIP attentions, the spatial protocol's 5 x keep, newline tokens under spatial_unpad, FastV's budget per
partition over the whole image, and the baselines per partition."""

import pytest
import torch

from llava.model.builder import load_pretrained_model
from llava.model.pruning.base import top_k_indices
from llava.model.pruning.registry import parse_method
from tests import helpers
from tests.test_next_parity import QUESTIONS, SIZES, prompts_for

PATCHES = 64  # per partition: 112 px / patch 14 = 8 x 8


@pytest.fixture(scope="module")
def spatial(tiny_next_dir):
    """FasterVLM's protocol: spatial merge, one 2x2 canvas (224 x 224 for the tiny 112-px tower; 672 x 672 at 336)."""
    return load_pretrained_model(str(tiny_next_dir), patch_merge="spatial", image_grid="224x224")


@pytest.fixture
def with_method():
    models = []

    def attach(model, spec):
        models.append(model)
        model.set_pruning(spec)
        return model

    yield attach
    for model in models:
        model.set_pruning("none")


def eager_cls_rows(tiny_next_dir, pixel_values: torch.Tensor) -> torch.Tensor:
    """transformers' eager CLIP: the head-mean CLS row over the patches inside the select layer (layer 1 of 3)."""
    from transformers import LlavaNextForConditionalGeneration

    hf = LlavaNextForConditionalGeneration.from_pretrained(tiny_next_dir, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        attentions = hf.eval().model.vision_tower(pixel_values, output_attentions=True).attentions
    return attentions[1][:, :, 0, 1:].mean(dim=1)  # (views, patches)


def test_fastervlm_spatial_protocol_keeps_the_top_29_of_each_partition_by_transformers_attention(
        tiny_next_dir, spatial, with_method):
    tokenizer, model, processor, _ = spatial
    images = processor(helpers.random_images(2, seed=31, sizes=SIZES[:2]))
    assert [i.grid for i in images] == [(2, 2), (2, 2)]  # the fixed canvas, whatever the aspect ratio
    out = with_method(model, "fastervlm:keep=29")(prompts_for(tokenizer, QUESTIONS[:2]), images)
    assert out.stats.visual_tokens == [[145], [145]] and out.stats.newline_tokens == [[0], [0]]
    for b, image in enumerate(images):
        rows = eager_cls_rows(tiny_next_dir, image.pixel_values)
        expected = [top_k_indices(row, 29).tolist() for row in rows]
        assert out.stats.kept_partitions[b][0] == expected


def test_fastervlm_spatial_unpad_keeps_newlines_and_drops_the_padding(loaded_next, with_method):
    tokenizer, model, processor, _ = loaded_next
    images = processor(helpers.random_images(1, seed=32, sizes=[(300, 100)]))  # 3:1 into a 1x3 canvas of 112 x 336
    prompt = prompts_for(tokenizer, QUESTIONS[:1])
    full = model(prompt, images).stats
    # 300 x 100 scaled by 1.12 fills 336 x 112 exactly: no padding, 8 stitched rows of 24 patches + 8 newlines
    assert full.visual_tokens == [[64 + 8 * 24 + 8]] and full.newline_tokens == [[8]]
    out = with_method(model, "fastervlm:keep=10")(prompt, images).stats
    assert out.partition_tokens() == [[[10, 10, 10, 10]]]
    assert out.visual_tokens == [[40 + 8]] and out.newline_tokens == [[8]]

    tall = processor(helpers.random_images(1, seed=33, sizes=[(90, 140)]))  # into a 2x1 canvas of 224 x 112
    full = with_method(model, "none")(prompt, tall).stats
    # scaled by 112 / 90 it is 174 px high: int(140 * 8 / 90) = 12 of the 16 stitched rows, 2 padding rows each side
    assert tall[0].grid == (2, 1) and full.newline_tokens == [[12]] and full.visual_tokens == [[64 + 12 * 8 + 12]]
    out = with_method(model, "fastervlm:keep=64")(prompt, tall).stats
    assert out.visual_tokens == full.visual_tokens  # keep-all: exactly the unpruned layout
    out = with_method(model, "fastervlm:keep=20")(prompt, tall).stats
    base, top, bottom = out.kept_partitions[0][0]
    assert len(base) == 20 and len(top) <= 20 and len(bottom) <= 20 and len(top) + len(bottom) < 40
    assert all(p // 8 >= 2 for p in top) and all(p // 8 < 6 for p in bottom)  # none in the padding rows
    assert out.visual_tokens == [[20 + len(top) + len(bottom) + 12]] and out.newline_tokens == [[12]]


def test_fastv_keeps_keep_per_partition_chosen_over_the_image_and_every_newline(loaded_next, with_method):
    tokenizer, model, processor, _ = loaded_next
    prompts = prompts_for(tokenizer, QUESTIONS[:2])
    images = processor(helpers.random_images(2, seed=34, sizes=SIZES[:2]))  # 2x2 and 2x1 crop grids
    out = with_method(model, "fastv:k=2,keep=12")(prompts, images)
    stats = out.stats
    assert [len(k[0]) for k in stats.kept_in_llm] == [12 * 5, 12 * 3]
    assert [sum(n[0]) for n in stats.partition_tokens()] == [60, 36]
    assert len({tuple(n[0]) for n in stats.partition_tokens()}) == 2  # not 12 in each: the image decides
    for b, span in enumerate(model.prepare_inputs(prompts, images).spans):
        (span,) = span
        newline = span.start + span.newline.nonzero()[:, 0]
        assert out.keep_mask[b, newline].all()  # every newline token stays, outside the budget
        assert int(out.keep_mask[b, span.start:span.end].sum()) == len(stats.kept_in_llm[b][0]) + len(newline)
    ratio = with_method(model, "fastv:k=2,ratio=0.5")(prompts, images).stats
    candidates = [v[0] - n[0] for v, n in zip(stats.visual_tokens, stats.newline_tokens)]
    assert [len(k[0]) for k in ratio.kept_in_llm] == [round(c * 0.5) for c in candidates]


@pytest.mark.parametrize("spec", ["random:keep=9,seed=1", "uniform:keep=9", "pool:keep=9"])
def test_baselines_run_per_partition(spatial, with_method, spec):
    tokenizer, model, processor, _ = spatial
    images = processor(helpers.random_images(1, seed=35))
    out = with_method(model, spec)(prompts_for(tokenizer, QUESTIONS[:1]), images).stats
    partitions = out.kept_partitions[0][0]
    assert [len(p) for p in partitions] == [9] * 5
    method = parse_method(spec)
    if spec.startswith(("uniform", "pool")):  # the same grid pattern in every partition
        assert all(p == partitions[0] for p in partitions)
    else:  # a subset of its own per view (seeded by the view's pixels)
        assert len({tuple(p) for p in partitions}) == 5
    assert method.budget(PATCHES) == 9
