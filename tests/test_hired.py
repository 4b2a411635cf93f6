"""HiRED with known answers: budgets, crop quotas (both split variants) and kept indices on hand-built
[CLS] maps for a 2x2 and a 1x2 crop grid; through the model, the scores are transformers' eager CLIP
attentions (layer 0 and the select layer, summed over heads), no newline tokens, and crops in the padding
leave the image below its budget; the LLaVA-1.5 variant; bad arguments."""

import math

import pytest
import torch

from llava.errors import InputError
from llava.model.anyres import anyres_layout, keep_in_layout
from llava.model.pruning.base import VisionInputs, top_k_indices
from llava.model.pruning.registry import parse_method
from tests import helpers
from tests.test_next_parity import QUESTIONS, prompts_for

SELECT = 2  # the select layer of the hand-built views (any layer above 0)

# Layer-0 scores of the base view, a 4 x 4 patch grid (N = 16), by hand:
EARLY = torch.tensor([
    [0.20, 0.19, 0.18, 0.17],
    [0.01, 0.02, 0.16, 0.15],
    [0.03, 0.14, 0.04, 0.13],
    [0.005, 0.006, 0.007, 0.008],
]).flatten()


def peaked(order: list[int]) -> torch.Tensor:
    """Select-layer scores over 16 patches where `order` are the best, best first; the rest 0.001."""
    scores = torch.full((16,), 0.001)
    for rank, patch in enumerate(order):
        scores[patch] = 0.9 - 0.05 * rank
    return scores


def view(early: torch.Tensor, final: torch.Tensor) -> VisionInputs:
    """Two heads that sum to the given scores (HiRED sums over heads)."""
    heads = lambda scores: torch.stack([0.25 * scores, 0.75 * scores])
    return VisionInputs(torch.zeros(16, 4), {0: heads(early), SELECT: heads(final)}, {}, (4, 4), 0)


BASE_FINAL = [15, 0, 5, 10, 3, 12, 6, 9, 1, 14, 2, 7, 4, 8, 11, 13]  # every patch, best first
CROP_FINAL = [[7, 3, 12, 0, 9, 15], [1, 2, 4, 8], [11, 6, 13], [5, 10]]


def kept(spec: str, partition_grid, crops: int):
    views = [view(EARLY, peaked(BASE_FINAL))] + [view(EARLY, peaked(CROP_FINAL[i])) for i in range(crops)]
    return [k.indices.tolist() for k in parse_method(spec).select_image(views, partition_grid)]


def test_2x2_grid_code_split():
    # P = 5, N = 16, rate 0.25: B = floor(5 * 16 * 0.25) = 20, B0 = floor(20 * 0.5) = 10, Bc = 10.
    method = parse_method("hired:rate=0.25")
    assert method.budgets(5, 16) == (10, 10)
    # The base view's top floor(16 * 0.5) = 8 by layer 0: row 0 (4), 0.16 and 0.15 in row 1, 0.14 and 0.13 in row 2.
    # A 2x2 grid's regions are the flat raster in 4 bands of 4 (here: one patch row each): counts 4, 2, 2, 0;
    # quotas int(4/8 * 10) = 5, int(2/8 * 10) = 2 (2.5 truncated), 2, 0; the 1 left over is not handed out.
    assert method.crop_quotas(EARLY, (4, 4), (2, 2), 10) == [5, 2, 2, 0]
    assert kept("hired:rate=0.25", (2, 2), 4) == [
        sorted(BASE_FINAL[:10]),  # [0, 1, 3, 5, 6, 9, 10, 12, 14, 15]
        [0, 3, 7, 9, 12],  # crop 0's top 5
        [1, 2],
        [6, 11],
        [],
    ]


def test_2x2_grid_paper_split():
    # Crop (r, c) lies over the base view's 2 x 2 block of patches rows 2r..2r+1, columns 2c..2c+1:
    # s = 0.20+0.19+0.01+0.02 = 0.42, 0.18+0.17+0.16+0.15 = 0.66, 0.03+0.14+0.005+0.006 = 0.181,
    # 0.04+0.13+0.007+0.008 = 0.185 (sum 1.446); quotas floor(10 s / 1.446) = 2 (2.90), 4 (4.56), 1 (1.25), 1 (1.28).
    method = parse_method("hired:rate=0.25,split=paper")
    assert method.crop_quotas(EARLY, (4, 4), (2, 2), 10) == [2, 4, 1, 1]
    assert kept("hired:rate=0.25,split=paper", (2, 2), 4)[1:] == [[3, 7], [1, 2, 4, 8], [11], [5]]


def test_1x2_grid_both_splits():
    # P = 3, rate 0.5: B = 24, B0 = 12, Bc = min(12, 2 * 16) = 12.
    code, paper = parse_method("hired:rate=0.5"), parse_method("hired:rate=0.5,split=paper")
    assert code.budgets(3, 16) == (12, 12)
    # code: 2 bands of 8 flat patches = the top and bottom halves (the release's reading, though crop 0 is the
    # left half of the image): the 8 marked patches are 6 in the top half, 2 in the bottom; int(6/8 * 12) = 9,
    # int(2/8 * 12) = 3.
    assert code.crop_quotas(EARLY, (4, 4), (1, 2), 12) == [9, 3]
    # paper: the left and right halves: s = 0.601 and 0.845 (sum 1.446); floor(12 s / 1.446) = 4 (4.99), 7 (7.01).
    assert paper.crop_quotas(EARLY, (4, 4), (1, 2), 12) == [4, 7]
    # Crop 0's 9 are its 6 peaked patches and the lowest-index 3 of the tied rest (1, 2, 4); crop 1's 3 its best 3.
    assert kept("hired:rate=0.5", (1, 2), 2) == [sorted(BASE_FINAL[:12]), [0, 1, 2, 3, 4, 7, 9, 12, 15], [1, 2, 4]]
    assert kept("hired:rate=0.5,split=paper", (1, 2), 2)[1:] == [[0, 3, 7, 12], [0, 1, 2, 3, 4, 5, 8]]


def test_alpha_one_gives_the_crops_nothing_and_quotas_never_exceed_a_crop():
    method = parse_method("hired:rate=1.0,alpha=1.0")
    assert method.budgets(5, 16) == (16, 64)  # B = 80, B0 = min(80, 16), the pool is left over
    assert method.crop_quotas(EARLY, (4, 4), (2, 2), 64) == [0, 0, 0, 0]  # nothing marked: no 0 / 0
    # rate 1, alpha 0: B0 = 0, Bc = min(80, 64) = 64; all 16 patches marked, counts 4 each: quota 16 each.
    assert parse_method("hired:rate=1.0,alpha=0.0").crop_quotas(EARLY, (4, 4), (2, 2), 64) == [16] * 4
    # paper split, a pool of 64 over a crop score of 0.66 / 1.446: floor(29.2) = 29, clamped to 16
    assert parse_method("hired:rate=1.0,alpha=0.0,split=paper").crop_quotas(EARLY, (4, 4), (2, 2), 64)[1] == 16


def test_llava_15_variant_keeps_the_top_floor_n_rate():
    method = parse_method("hired:rate=0.3")
    index = method.select(view(EARLY, peaked(BASE_FINAL))).indices
    assert index.tolist() == sorted(BASE_FINAL[:4])  # floor(16 * 0.3) = 4
    assert method.budget(576) == 172 and parse_method("hired").budget(576) == 115  # floor(576 * 0.2)


@pytest.mark.parametrize("spec, message", [
    ("hired:rate=0", "hired:rate must be in (0, 1], got 0.0"),
    ("hired:rate=1.5", "hired:rate must be in (0, 1], got 1.5"),
    ("hired:alpha=-0.1", "hired:alpha must be in [0, 1], got -0.1"),
    ("hired:alpha=2", "hired:alpha must be in [0, 1], got 2.0"),
    ("hired:split=both", "hired:split must be one of code, paper, got 'both'"),
    ("hired:rat=0.2", "unknown parameter 'rat' for method 'hired'; did you mean 'rate'?"),
    ("hird:rate=0.2", "unknown method 'hird'; did you mean 'hired'?"),
])
def test_bad_arguments_are_refused(spec, message):
    with pytest.raises(InputError) as error:
        parse_method(spec)
    assert message in str(error.value)


@pytest.mark.parametrize("spec", ["hired:alpha=0.3", "hired:split=paper"])
def test_next_only_options_on_a_llava_15_model_are_refused(loaded, spec):
    with pytest.raises(InputError, match="this LLaVA-1.5 model has one partition per image"):
        loaded[1].set_pruning(spec)
    assert loaded[1].pruning.name == "none"


def eager_attentions(folder, pixel_values, next_model: bool):
    """transformers' eager CLIP attentions of every layer, (views, heads, 1 + N, 1 + N) each."""
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    cls = LlavaNextForConditionalGeneration if next_model else LlavaForConditionalGeneration
    hf = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return hf.model.vision_tower(pixel_values, output_attentions=True).attentions


@pytest.mark.parametrize("spec", ["hired:rate=0.25", "hired:rate=0.4,alpha=0.3,split=paper"])
def test_on_next_the_scores_are_transformers_attentions_and_the_padding_leaves_the_image_short(
        tiny_next_dir, loaded_next, spec):
    tokenizer, model, processor, _ = loaded_next
    pictures = helpers.random_images(2, seed=41, sizes=[(160, 120), (90, 140)])  # 2x2 and 2x1 grids, both padded
    images = processor(pictures)
    model.set_pruning(spec)
    try:
        out = model(prompts_for(tokenizer, QUESTIONS[:2]), images).stats
    finally:
        model.set_pruning("none")
    method = parse_method(spec)
    for b, image in enumerate(images):
        attentions = eager_attentions(tiny_next_dir, image.pixel_values, next_model=True)
        rows = lambda layer, v: attentions[layer][v, :, 0, 1:]  # (heads, N) CLS row of layer `layer`, view v
        views = [VisionInputs(torch.zeros(64, 4), {0: rows(0, v), 1: rows(1, v)}, {}, (8, 8), v)
                 for v in range(image.pixel_values.shape[0])]
        chosen = [k.indices for k in method.select_image(views, image.grid)]
        layout = anyres_layout(image.grid, 8, image.image_size, "spatial_unpad")
        layout = layout[layout[:, 0] >= 0]  # no newline tokens
        layout = layout[keep_in_layout(layout, chosen, len(views))]
        expected = [sorted(layout[layout[:, 0] == p, 1].tolist()) for p in range(len(views))]
        assert out.kept_partitions[b][0] == expected
        budget = math.floor(len(views) * 64 * method.args.rate)
        assert out.newline_tokens[b] == [0]
        assert out.visual_tokens[b][0] == len(layout) < budget  # crop patches in the padding are gone
        assert out.kept[b][0] == [int(p) * 64 + int(i) for p, i in layout]  # base first, then the stitched order
        assert sum(len(c) for c in chosen) <= budget


def test_on_llava_15_the_scores_are_the_select_layers_attention(tiny_llava_dir, loaded):
    tokenizer, model, processor, _ = loaded
    pixel_values = processor(helpers.random_images(2, seed=42))
    model.set_pruning("hired:rate=0.25")
    try:
        out = model(prompts_for(tokenizer, QUESTIONS[:2]), pixel_values).stats
    finally:
        model.set_pruning("none")
    attentions = eager_attentions(tiny_llava_dir, pixel_values, next_model=False)
    for b in range(2):
        assert out.kept[b][0] == top_k_indices(attentions[1][b, :, 0, 1:].sum(dim=0), 16).tolist()
    assert out.visual_tokens == [[16], [16]]


def test_rate_one_keeps_every_patch_as_the_release_does():
    # The split would give the 2x2 grid's crops int(4/8 * 64) = 32, 16, 16 and 0 of the pool of 64, clamped to
    # 16, 16, 16, 0: crop 3 would lose all 16. The release selects only below rate 1; at 1 every patch stays.
    assert kept("hired:rate=1", (2, 2), 4) == [list(range(16))] * 5
    assert kept("hired:rate=1,alpha=0.2,split=paper", (1, 2), 2) == [list(range(16))] * 3


def test_rate_one_on_next_is_the_unpruned_layout_without_newlines(loaded_next):
    tokenizer, model, processor, _ = loaded_next
    images = processor(helpers.random_images(2, seed=43, sizes=[(160, 120), (90, 140)]))  # padded 2x2 and 2x1
    prompts = prompts_for(tokenizer, QUESTIONS[:2])
    full = model(prompts, images).stats
    model.set_pruning("hired:rate=1")
    try:
        out = model(prompts, images).stats
    finally:
        model.set_pruning("none")
    assert out.kept_partitions == full.kept_partitions  # every patch the unpruned model shows the LLM
    assert out.newline_tokens == [[0], [0]]
    assert out.visual_tokens == [[v[0] - n[0]] for v, n in zip(full.visual_tokens, full.newline_tokens)]
