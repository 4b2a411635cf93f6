"""PruMerge and PruMerge+ with known answers: the IQR fence, the kept set in descending score order, the
merged features and the extra token on a hand-built 8-patch view; PruMerge+'s uniform samples; the
degenerate cases; the single-head last-layer scores against a direct computation from transformers'
LayerNorm output and projection weights; LLaVA-1.5 and LLaVA-NeXT (per partition, concatenated) runs."""

import math

import pytest
import torch
from torch.testing import assert_close

from llava.model.pruning import prumerge
from llava.model.pruning.base import VisionInputs
from llava.model.pruning.registry import parse_method
from tests import helpers
from tests.test_next_parity import QUESTIONS, prompts_for

# Patch scores of the hand-built view (the CLS entry takes the remaining 0.02 of the softmax):
SCORES = torch.tensor([0.02, 0.03, 0.40, 0.04, 0.05, 0.06, 0.30, 0.08])
FEATURES = torch.tensor([[1.0, float(j)] for j in range(8)])  # patch j's feature: (1, j)
LAYER = 5  # the last vision layer of the hand-built view


def hand_view(scores: torch.Tensor = SCORES) -> VisionInputs:
    """Keys whose first column makes softmax(q . K / sqrt(3)) = (1 - sum(scores), scores) for q = sqrt(3) e0, and
    whose other columns, 100 times larger, place the patches 45 degrees apart on a circle: the two nearest of
    patch j are j - 1 and j + 1 (mod 8)."""
    angle = torch.arange(8) * math.pi / 4
    patches = torch.stack([scores.log(), 100 * angle.cos(), 100 * angle.sin()], dim=1)
    keys = torch.cat([torch.tensor([[math.log(1 - float(scores.sum())), 0.0, 0.0]]), patches])
    query = torch.tensor([3**0.5, 0.0, 0.0])
    return VisionInputs(FEATURES, {}, {LAYER: keys}, (2, 4), 0, cls_query={LAYER: query})


def test_scores_fence_and_outliers_by_hand():
    view = hand_view()
    assert_close(prumerge.single_head_scores(view.cls_query[LAYER], view.keys[LAYER]), SCORES)
    # Sorted: .02 .03 .04 .05 .06 .08 .30 .40. Q1 at 7 x 0.25 = 1.75: .03 + 0.75 x .01 = .0375; Q3 at 5.25:
    # .08 + 0.25 x .22 = .135; fence = .135 + 1.5 x .0975 = .28125: patches 2 (.40) and 6 (.30), best first.
    assert prumerge.outliers(SCORES).tolist() == [2, 6]


@pytest.fixture
def two_neighbours(monkeypatch):
    monkeypatch.setattr(prumerge, "NEIGHBOURS", 2)  # an 8-patch view: merge the 2 nearest, not 32


def test_prumerge_merges_the_two_nearest_and_adds_the_pruned_as_one_token(two_neighbours):
    kept = parse_method("prumerge").select(hand_view())
    assert kept.indices.tolist() == [2, 6, -1]
    assert_close(kept.features, torch.tensor([
        [1.07, 2.15],  # (1, 2) + .03 (1, 1) + .04 (1, 3): its neighbours 1 and 3
        [1.14, 6.86],  # (1, 6) + .06 (1, 5) + .08 (1, 7)
        [0.28, 1.21],  # extra: .02 (1, 0) + .03 (1, 1) + .04 (1, 3) + .05 (1, 4) + .06 (1, 5) + .08 (1, 7)
    ]))


def test_merge_average_is_the_papers_weighted_mean(two_neighbours):
    kept = parse_method("prumerge:merge=average").select(hand_view())
    # (.40 (1, 2) + .03 (1, 1) + .04 (1, 3)) / .47 = (1, .95 / .47); (.30 (1, 6) + .06 (1, 5) + .08 (1, 7)) / .44
    assert_close(kept.features[:2], torch.tensor([[1.0, 0.95 / 0.47], [1.0, 2.66 / 0.44]]))
    assert_close(kept.features[2], torch.tensor([0.28, 1.21]))  # the extra token is the same sum


def test_prumerge_plus_adds_uniform_samples_after_the_outliers(two_neighbours):
    # 2 outliers of 8: step = int(1 / 0.25) = 4, stride int(4 / 3) = 1: arange(0, 7) less 2 and 6.
    kept = parse_method("prumerge+").select(hand_view())
    assert kept.indices.tolist() == [2, 6, 0, 1, 3, 4, 5, -1]
    assert_close(kept.features[-1], 0.08 * FEATURES[7])  # only patch 7 was pruned
    assert_close(kept.features[2], FEATURES[0] + 0.08 * FEATURES[7] + 0.03 * FEATURES[1])  # 0's neighbours: 7, 1


def test_uniform_samples_on_576_patches():
    outliers = torch.tensor([9, 18, 100, 101] + list(range(200, 216)))  # 20 outliers
    # step = int(576 / 20) = 28 (28.8), stride int(28 / 3) = 9: 0, 9, ..., 567 (64 patches) less 9, 18 and 207
    samples = prumerge.uniform_samples(outliers, 576)
    assert samples.tolist() == [i for i in range(0, 575, 9) if i not in (9, 18, 207)] and len(samples) == 61


def test_degenerate_cases_follow_the_stated_rules():
    flat = torch.full((16,), 1 / 17)
    assert prumerge.outliers(flat).tolist() == [0]  # nothing above the fence: the top patch, lowest index
    assert prumerge.uniform_samples(torch.arange(10), 16).tolist() == list(range(10, 15))  # step 1, stride 0 -> 1
    # 8 patches, fewer than 32 others: all 7 are neighbours; no crash
    view = hand_view()
    kept = parse_method("prumerge").select(view)
    others = lambda i: [j for j in range(8) if j != i]
    assert_close(kept.features[0], FEATURES[2] + sum(SCORES[j] * FEATURES[j] for j in others(2)))
    # a flat map: 1 outlier
    every = VisionInputs(FEATURES, {}, view.keys, (2, 4), 0, cls_query={LAYER: torch.zeros(3)})
    plus = parse_method("prumerge+").select(every)  # step 8, stride 2: 0, 2, 4, 6 -> 0 is the outlier
    assert plus.indices.tolist() == [0, 2, 4, 6, -1]


def test_prumerge_plus_with_nothing_pruned_still_appends_the_extra_token_as_zero(two_neighbours):
    # Sorted: .04 x 6, .30, .34. Q1 = .04; Q3 at 5.25: .04 + 0.25 x .26 = .105; fence .105 + 1.5 x .065 = .2025:
    # outliers 7 (.34) and 6 (.30). step int(8 / 2) = 4, stride 1: arange(0, 7) less 6 = 0..5. Every patch is kept;
    # the release still appends its extra token, the sum over no pruned patch: zero.
    scores = torch.tensor([0.04] * 6 + [0.30, 0.34])
    kept = parse_method("prumerge+").select(hand_view(scores))
    assert kept.indices.tolist() == [7, 6, 0, 1, 2, 3, 4, 5, -1]
    assert_close(kept.features[-1], torch.zeros(2))
    # patch 7's neighbours on the circle are 6 and 0: (1, 7) + .30 (1, 6) + .04 (1, 0)
    assert_close(kept.features[0], torch.tensor([1.34, 7 + 1.8]))


def test_adaptive_budget_and_argument_errors():
    assert parse_method("prumerge").budget(576) is None and parse_method("prumerge+").budget(576) is None
    from llava.errors import InputError

    with pytest.raises(InputError, match="prumerge:merge must be one of residual, average, got 'mean'"):
        parse_method("prumerge:merge=mean")
    with pytest.raises(InputError, match="did you mean 'prumerge'"):
        parse_method("prumege")


def test_last_layer_scores_match_transformers_layer_norm_output_and_projections(tiny_llava_dir, loaded):
    from transformers import LlavaForConditionalGeneration

    _, model, processor, _ = loaded
    pixel_values = processor(helpers.random_images(2, seed=51))
    hf = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.float32).eval()
    tower = hf.model.vision_tower
    last = tower.encoder.layers[-1]
    with torch.no_grad():
        hidden = tower(pixel_values, output_hidden_states=True).hidden_states[-2]  # the last layer's input
        normed = last.layer_norm1(hidden)
        q, k = last.self_attn.q_proj(normed), last.self_attn.k_proj(normed)
        width = q.shape[-1]
        expected = (q[:, :1] @ k.transpose(1, 2) / width**0.5).softmax(dim=-1)[:, 0, 1:]  # one head, CLS dropped
        probe = model.vision_tower(pixel_values, -2, (2,)).probes[2]
    for b in range(2):
        assert_close(prumerge.single_head_scores(probe.cls_query[b], probe.keys[b]), expected[b], atol=1e-6, rtol=1e-5)


def test_on_llava_15_the_tokens_are_the_outliers_then_the_extra_one(loaded):
    tokenizer, model, processor, _ = loaded
    pixel_values = processor(helpers.random_images(2, seed=52))
    probe = model.vision_tower(pixel_values, -2, (2,)).probes[2]
    model.set_pruning("prumerge")
    try:
        out = model(prompts_for(tokenizer, QUESTIONS[:2]), pixel_values).stats
    finally:
        model.set_pruning("none")
    for b in range(2):
        order = prumerge.outliers(prumerge.single_head_scores(probe.cls_query[b], probe.keys[b])).tolist()
        assert out.kept[b][0] == order + [-1]  # descending score, then the extra token
        assert out.kept_partitions[b][0] == [sorted(order)]
        assert out.visual_tokens[b] == [len(order) + 1]


def test_on_next_each_partition_is_pruned_on_its_own_and_concatenated(loaded_next):
    tokenizer, model, processor, _ = loaded_next
    images = processor(helpers.random_images(1, seed=53, sizes=[(160, 120)]))  # 2x2 grid, padded
    probe = model.vision_tower(images[0].pixel_values, -2, (2,)).probes[2]
    model.set_pruning("prumerge+")
    try:
        out = model(prompts_for(tokenizer, QUESTIONS[:1]), images).stats
    finally:
        model.set_pruning("none")
    expected = []
    for v in range(5):
        kept = prumerge.outliers(prumerge.single_head_scores(probe.cls_query[v], probe.keys[v]))
        kept = torch.cat([kept, prumerge.uniform_samples(kept, 64)]).tolist()
        expected += [v * 64 + i for i in kept] + [-1]  # the extra token, even when nothing was pruned
    assert out.kept[0][0] == expected  # base, then each crop: its tokens, then its own extra token
    assert out.newline_tokens == [[0]] and out.visual_tokens == [[len(expected)]]  # nothing unpadded or added
    assert out.partition_grid == [[(2, 2)]]
