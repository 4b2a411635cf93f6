"""VisionZip: known answers worked out by hand (the dominant set with [CLS] counted in D, the target
arithmetic, the cosine assignment with a tie, the target + mean merge, a whole image), the model's tokens
against transformers' eager CLIP on LLaVA-1.5, and one-line refusals (bad arguments, LLaVA-NeXT)."""

import math

import pytest
import torch
from torch.testing import assert_close

from llava.errors import InputError
from llava.model.pruning.base import VisionInputs, top_k_indices
from llava.model.pruning.registry import parse_method
from llava.model.pruning.visionzip import contextual_tokens, dominant_patches, target_positions
from tests import helpers


def at(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def sixteen_patches() -> VisionInputs:
    """4 x 4 patches, 2 heads of 2 dims. Head sums: 9 .9 | 5 .8 (heads .1/.7) | 12 and 13 .5, a tie | 2 .45
    (one head: .45 beats 12's .25 per head, the sum does not) | the rest .01 per head.

    Metric (the keys averaged over heads), as angles: targets 0 at 0 and 7 at 90 degrees; 1 10 | 2 80 | 3 the
    diagonal (1, 1), equally close to both | 4 170 | 6 0 | 8 90 | 10 30 | 11 60 | 13 200 | 14 300 | 15 135.
    Features: patch i is (i, 1); [CLS] (100, -1)."""
    cls_attention = torch.full((2, 16), 0.01)
    for patch, (h0, h1) in {9: (.45, .45), 5: (.1, .7), 12: (.25, .25), 13: (.25, .25), 2: (.45, 0.)}.items():
        cls_attention[:, patch] = torch.tensor([h0, h1])
    angles = {0: 0, 1: 10, 2: 80, 4: 170, 6: 0, 7: 90, 8: 90, 10: 30, 11: 60, 13: 200, 14: 300, 15: 135}
    metric = torch.zeros(16, 2)
    for patch, degrees in angles.items():
        metric[patch] = torch.tensor(at(degrees))
    metric[3] = torch.tensor([1.0, 1.0])
    metric[[5, 9, 12]] = torch.tensor([1.0, 0.0])  # dominant: never compared
    # Per patch: head 0 = metric + r, head 1 = metric - r; their mean is the metric (head 0 alone is not).
    r = torch.tensor([0.5, -0.25])
    keys = torch.cat([torch.full((1, 4), 1e3), torch.cat([metric + r, metric - r], dim=-1)])  # (17, 4); [CLS] row unused
    features = torch.stack([torch.arange(16.0), torch.ones(16)], dim=-1)  # (16, 2)
    return VisionInputs(features, {1: cls_attention}, {1: keys}, (4, 4), 0, cls_feature=torch.tensor([100.0, -1.0]))


def test_the_dominant_set_is_the_top_of_the_head_sum_and_counts_the_cls_token():
    inputs = sixteen_patches()
    assert dominant_patches(inputs.cls_attention[1], 3).tolist() == [5, 9, 12]  # tie .5: 12, not 13; not 2
    out = parse_method("visionzip:dominant=4,contextual=0").select(inputs)
    assert out.indices.tolist() == [-1, 5, 9, 12]  # D = 4: [CLS] + 3 patches, in raster order
    assert out.features.tolist() == [[100, -1], [5, 1], [9, 1], [12, 1]]
    only_cls = parse_method("visionzip:dominant=1,contextual=0").select(inputs)
    assert only_cls.indices.tolist() == [-1] and only_cls.features.tolist() == [[100, -1]]


def test_target_positions_are_uniform_in_index_within_the_remaining_list():
    # D = 54, C = 10 on 577: M = 577 - 54 = 523, step 523 // 10 = 52: 0, 52, ..., 468.
    assert target_positions(523, 10).tolist() == [0, 52, 104, 156, 208, 260, 312, 364, 416, 468]
    assert target_positions(577 - 108, 20)[:3].tolist() == [0, 23, 46]  # M 469, step 23
    assert target_positions(577 - 162, 30)[:3].tolist() == [0, 13, 26]  # M 415, step 13
    assert target_positions(13, 2).tolist() == [0, 6]  # step 6; arange(0, 13, 6) = 0, 6, 12, cut to 2
    assert target_positions(13, 4).tolist() == [0, 3, 6, 9]  # step 3; 12 cut
    assert target_positions(5, 4).tolist() == [0, 1, 2, 3]  # step 1
    assert target_positions(5, 5).tolist() == [0, 1, 2, 3, 4]  # every remaining token a target
    assert target_positions(5, 0).tolist() == []


def test_each_member_joins_its_most_similar_target_ties_to_the_first_and_merges_as_target_plus_mean():
    # Targets at positions 0 (0 degrees) and 3 (90). 1: 10 -> t0; 2: the diagonal, a tie -> t0; 4: 80 -> t1;
    # 5: 100 -> t1. Features 1..6: t0 = 1 + mean(2, 3) = 3.5 (the group average would be 2); t1 = 4 + mean(5, 6) = 9.5.
    metric = torch.tensor([at(0), at(10), [1.0, 1.0], at(90), at(80), at(100)])
    features = torch.arange(1.0, 7.0)[:, None]
    merged = contextual_tokens(features, metric, torch.tensor([0, 3]))
    assert merged.tolist() == [[3.5], [9.5]]


def test_a_target_without_members_keeps_its_own_feature():
    metric = torch.tensor([at(0), at(5), at(180), at(10)])  # everything is nearer the target at 0 than at 180
    features = torch.tensor([[1.0], [2.0], [7.0], [4.0]])
    assert contextual_tokens(features, metric, torch.tensor([0, 2])).tolist() == [[4.0], [7.0]]  # 1 + 3; 7 alone


def test_a_whole_image_by_hand():
    # D = 4: [CLS], 5, 9, 12. Remaining (13): 0 1 2 3 4 6 7 8 10 11 13 14 15; C = 2: step 6, positions 0 and 6:
    # targets patch 0 and patch 7. Patch 0's members: 1 (10), 3 (tie), 6 (0), 10 (30), 14 (300: cos .5 vs -.87);
    # patch 7's: 2 (80), 4 (170), 8 (90), 11 (60), 13 (200: cos -.94 vs -.34), 15 (135).
    # contextual: (0, 1) + mean of (1,3,6,10,14 | 1) = (6.8, 2); (7, 1) + mean of (2,4,8,11,13,15 | 1) = (7 + 53/6, 2).
    out = parse_method("visionzip:dominant=4,contextual=2").select(sixteen_patches())
    assert out.indices.tolist() == [-1, 5, 9, 12, 0, 7]
    assert_close(out.features, torch.tensor([[100, -1], [5, 1], [9, 1], [12, 1], [6.8, 2], [7 + 53 / 6, 2]]))


def test_the_features_keep_their_dtype():
    inputs = sixteen_patches()
    inputs.features, inputs.cls_feature = inputs.features.half(), inputs.cls_feature.half()
    assert parse_method("visionzip:dominant=4,contextual=2").select(inputs).features.dtype == torch.float16


# ---- through the model, against transformers' eager CLIP ----------------------------------------------------


def reference(cls_row, hidden, keys, heads, dominant, contextual):
    """The rule, written out plainly, on transformers' tensors: cls_row (H, P), hidden (1 + P, D) and keys
    (1 + P, D) of the select layer -> (indices, features) before the projector."""
    patches = cls_row.shape[1]
    top = top_k_indices(cls_row.sum(dim=0), dominant - 1).tolist()
    remaining = [p for p in range(patches) if p not in top]
    step = max(1, len(remaining) // contextual)
    targets = list(range(0, len(remaining), step))[:contextual]
    metric = keys[1:].reshape(patches, heads, -1).mean(dim=1)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    groups = {t: [] for t in targets}
    for position, patch in enumerate(remaining):
        if position in targets:
            continue
        cosines = [float(metric[patch] @ metric[remaining[t]]) for t in targets]
        groups[targets[cosines.index(max(cosines))]].append(hidden[1 + patch])
    merged = [hidden[1 + remaining[t]] + (torch.stack(m).mean(dim=0) if m else 0) for t, m in groups.items()]
    features = torch.stack([hidden[0]] + [hidden[1 + p] for p in top] + merged)
    return [-1] + top + [remaining[t] for t in targets], features


def test_llava_15_tokens_are_the_rule_on_eager_attention_hidden_states_and_keys(loaded, tiny_llava_dir):
    from transformers import LlavaForConditionalGeneration

    _, model, processor, _ = loaded
    pixel_values = processor(helpers.random_images(2, seed=45))
    hf = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.float32, attn_implementation="eager")
    tower = hf.eval().model.vision_tower
    with torch.no_grad():
        out = tower(pixel_values, output_attentions=True, output_hidden_states=True)
        select = len(out.attentions) - 2  # the select layer (-2): its input is hidden_states[select]
        layer = tower.encoder.layers[select]
        keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[select]))  # (B, 1 + P, D)
    heads = tower.config.num_attention_heads
    model.set_pruning("visionzip:dominant=9,contextual=7")  # 8 patches; M 56, step 8: targets 0, 8, ..., 48
    try:
        with torch.no_grad():
            features, indices = model.encode_images(pixel_values)
        stats = model.prepare_inputs([[1, -200, 5], [1, -200, 6]], pixel_values).stats
    finally:
        model.set_pruning("none")
    for b in range(2):
        cls_row = out.attentions[-2][b, :, 0, 1:]  # (H, P)
        expected_indices, expected = reference(cls_row, out.hidden_states[-2][b], keys[b], heads, 9, 7)
        assert set(expected_indices[1:9]) == set(top_k_indices(cls_row.sum(dim=0), 8).tolist())
        assert indices[b].tolist() == expected_indices and stats.kept[b][0] == expected_indices
        with torch.no_grad():
            assert_close(features[b], model.mm_projector(expected), atol=1e-4, rtol=1e-4)  # SDPA vs eager, projected
    assert stats.visual_tokens == [[16], [16]]


def test_llava_next_is_refused_in_one_line(loaded_next):
    model = loaded_next[1]
    with pytest.raises(InputError) as error:
        model.set_pruning("visionzip")
    message = str(error.value)
    assert message.startswith("visionzip is not implemented for LLaVA-NeXT") and "\n" not in message
    assert model.pruning.name == "none"


# ---- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ("visionzip:dominant=0", "visionzip:dominant must be at least 1 (it counts the [CLS] token), got 0"),
    ("visionzip:contextual=-1", "visionzip:contextual must be at least 0, got -1"),
])
def test_bad_arguments_are_refused_in_one_line(spec, message):
    with pytest.raises(InputError) as error:
        parse_method(spec)
    assert str(error.value) == message


@pytest.mark.parametrize("spec, message", [
    ("visionzip:dominant=66,contextual=0", "visionzip:dominant=66 is more than [CLS] and the 64 patches of each image"),
    ("visionzip:dominant=9,contextual=57",
     "visionzip:contextual=57 is more than the 56 patches that dominant=9 leaves in each image"),
])
def test_budgets_beyond_the_image_are_refused_in_one_line(loaded, spec, message):
    model = loaded[1]
    with pytest.raises(InputError) as error:
        model.set_pruning(spec)
    assert str(error.value) == message
    assert model.pruning.name == "none"
    assert parse_method("visionzip:dominant=65,contextual=0").budget(64) == 65  # [CLS] and every patch: allowed
