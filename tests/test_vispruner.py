"""VisPruner: known answers worked out by hand (the important set, each bipartite round, the kept set, the
degenerate budgets), the model's choice against transformers' eager CLIP (LLaVA-1.5 and NeXT's spatial
protocol), and one-line refusals of bad arguments."""

import math

import pytest
import torch
from torch.testing import assert_close

from llava.errors import InputError
from llava.model.anyres import anyres_layout
from llava.model.builder import load_pretrained_model
from llava.model.pruning.base import VisionInputs, top_k_indices
from llava.model.pruning.registry import parse_method
from llava.model.pruning.vispruner import bipartite_rounds, important_and_residual
from tests import helpers
from tests.test_next_parity import QUESTIONS, SIZES, prompts_for


def on_circle(degrees: dict[int, float], patches: int) -> torch.Tensor:
    """(patches, 2) unit features at the given angles (0 degrees elsewhere): the cosine of two patches is the
    cosine of their angular distance, so each a's largest cosine to the b's is its distance to the nearest b."""
    angle = torch.zeros(patches, dtype=torch.float64)
    for patch, value in degrees.items():
        angle[patch] = math.radians(value)
    return torch.stack([angle.cos(), angle.sin()], dim=-1).float()


def sixteen_patches() -> VisionInputs:
    """4 x 4 patches, 2 heads. Head means: 9 .60 | 5 .50 (heads .75/.25) and 12 .50 (.5/.5), a tie | 10 .45 |
    4 .40 | 1 .35 | 7 .30 | 8 .25 | 15 .22 | 2 .20 | 6 .15 | 13 .12 | 0 .10 | 14 .08 | 3 .05 | 11 0."""
    mean = {9: .60, 5: .50, 12: .50, 10: .45, 4: .40, 1: .35, 7: .30, 8: .25, 15: .22, 2: .20, 6: .15, 13: .12,
            0: .10, 14: .08, 3: .05, 11: 0.0}
    cls_attention = torch.zeros(2, 16)
    for patch, value in mean.items():
        cls_attention[:, patch] = value
    cls_attention[:, 5] = torch.tensor([0.75, 0.25])  # head 0 prefers 5 to 9: the mean, not the max, ranks
    # Residual after the top 3: [10, 4, 1, 7, 8, 15, 2, 6, 13, 0, 14, 3, 11]; a = [10, 1, 8, 2, 13, 14, 11],
    # b = [4, 7, 15, 6, 0, 3]. b's at 0, 90, 180, 270, 45, 135 degrees; each a's distance to its nearest b:
    # 10 0 (at 4) | 1 10 (7) | 14 15 (0) | 2 20 (15) | 11 25 (6) | 13 30 (6) | 8 45 (15 and 6).
    features = on_circle({4: 0, 7: 90, 15: 180, 6: 270, 0: 45, 3: 135,
                          10: 0, 1: 100, 8: 225, 2: 200, 13: 300, 14: 60, 11: 245}, 16)
    return VisionInputs(features, {1: cls_attention}, {}, (4, 4), 0)


def twenty_patches() -> VisionInputs:
    """5 x 4 patches, 1 head, score = index: the descending order is 19, 18, ..., 0."""
    cls_attention = torch.arange(20, dtype=torch.float32)[None] / 32  # (1, 20)
    # Round 1 (residual [18, 17, ..., 0]): a = [18, 16, ..., 0], b = [17, 15, ..., 1]. b's at 17 0, 15 40,
    # 13 78, 11 120, 9 163, 7 200, 5 244, 3 280, 1 318 degrees. a's distance to the nearest b: 18 0 (17) |
    # 16 2 (15) | 10 5 (9) | 14 6 (13) | 12 7 (11) | 6 8 (5) | 8 10 (7) | 4 14 (3) | 0 17 (3) | 2 20 (17).
    features = on_circle({17: 0, 15: 40, 13: 78, 11: 120, 9: 163, 7: 200, 5: 244, 3: 280, 1: 318,
                          18: 0, 16: 42, 14: 84, 12: 127, 10: 168, 8: 210, 6: 252, 4: 294, 2: 340, 0: 297}, 20)
    return VisionInputs(features, {1: cls_attention}, {}, (5, 4), 0)


def select(spec: str, inputs: VisionInputs) -> list[int]:
    return parse_method(spec).select(inputs).indices.tolist()


def test_the_important_set_is_the_top_of_the_head_mean_and_the_residual_keeps_descending_order():
    important, residual = important_and_residual(sixteen_patches().cls_attention[1], 3)
    assert important.tolist() == [9, 5, 12]  # the .50 tie goes to the lower index, 5 before 12
    assert residual.tolist() == [10, 4, 1, 7, 8, 15, 2, 6, 13, 0, 14, 3, 11]


def test_one_round_drops_the_a_tokens_nearest_a_b_and_orders_the_survivors_by_similarity():
    # keep 12, ratio .25: T_imp = int(3.0) = 3, T_div = 9, R = 13: one round of min(8, 13 - 9) = 4.
    inputs = sixteen_patches()
    _, residual = important_and_residual(inputs.cls_attention[1], 3)
    lists = bipartite_rounds(residual, inputs.features, 9)
    assert len(lists) == 2
    # Dropped: 10, 1, 14, 2 (nearest a b); survivors by descending cosine: 11 (25), 13 (30), 8 (45); then the b's.
    assert lists[1].tolist() == [11, 13, 8, 4, 7, 15, 6, 0, 3]
    assert select("vispruner:keep=12,important_ratio=0.25", inputs) == [0, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15]


def test_two_rounds_the_second_split_from_the_reordered_list():
    # keep 11, ratio .1: T_imp = int(1.1) = 1 (patch 19), T_div = 10, R = 19: rounds of 8, then 1.
    inputs = twenty_patches()
    important, residual = important_and_residual(inputs.cls_attention[1], 1)
    assert important.tolist() == [19] and residual.tolist() == list(range(18, -1, -1))
    lists = bipartite_rounds(residual, inputs.features, 10)
    assert len(lists) == 3
    # Round 1 drops 18, 16, 10, 14, 12, 6, 8, 4; the survivors 0 (17 degrees) then 2 (20), then the 9 b's.
    assert lists[1].tolist() == [0, 2, 17, 15, 13, 11, 9, 7, 5, 3, 1]
    # Round 2: a = [0, 17, 13, 9, 5, 1], b = [2, 15, 11, 7, 3]. Distances: 0 17 (3) | 17 20 (2) | 1 22 (2) |
    # 5 36 (3) | 9 37 (7) | 13 38 (15). min(8, 11 - 10) = 1 drop: 0; the rest by descending cosine, then b.
    assert lists[2].tolist() == [17, 1, 5, 9, 13, 2, 15, 11, 7, 3]
    assert select("vispruner:keep=11,important_ratio=0.1", inputs) == [1, 2, 3, 5, 7, 9, 11, 13, 15, 17, 19]


def test_a_round_drops_at_most_every_a():
    # keep 6, ratio .5 on 16: R = 13, T_div = 3. Round 1: min(8, 10) = 8 > 7 a's: all 7 go, the 6 b's stay;
    # round 2: min(8, 3) = 3 of a = [4, 15, 0]: all go, b = [7, 6, 3] stays.
    inputs = sixteen_patches()
    _, residual = important_and_residual(inputs.cls_attention[1], 3)
    lists = bipartite_rounds(residual, inputs.features, 3)
    assert [x.tolist() for x in lists[1:]] == [[4, 7, 15, 6, 0, 3], [7, 6, 3]]
    assert select("vispruner:keep=6", inputs) == [3, 5, 6, 7, 9, 12]


def test_degenerate_budgets():
    inputs = sixteen_patches()
    assert select("vispruner:keep=3,important_ratio=1", inputs) == [5, 9, 12]  # T_div = 0: the top 3 alone
    assert select("vispruner:keep=1,important_ratio=1", inputs) == [9]  # the head mean (the max would pick 5)
    assert select("vispruner:keep=2,important_ratio=1", inputs) == [5, 9]  # the .50 tie: 5, not 12
    # keep 1: T_imp = int(.5) = 0, T_div = 1; the residual is all 16 in descending order and every round
    # drops every a (8 of 8, 4 of 7, 2 of 3, 1 of 1): [9, 5, 12, ...] -> [5, 10, 1, 8, 2, 13, 14, 11] ->
    # [10, 8, 13, 11] -> [8, 11] -> [11], the lowest-scored patch.
    assert select("vispruner:keep=1,important_ratio=0.5", inputs) == [11]
    for ratio in (0, 0.5, 1):  # keep = all: no round runs
        assert select(f"vispruner:keep=16,important_ratio={ratio}", inputs) == list(range(16))


# ---- through the model, against transformers' eager CLIP ----------------------------------------------------


def eager_vision(folder, pixel_values: torch.Tensor, next_model: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager CLIP at the select layer (-2 = layer 1 of 3): the CLS row over the patches
    (views, heads, patches) and the patch features (views, patches, D)."""
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    cls = LlavaNextForConditionalGeneration if next_model else LlavaForConditionalGeneration
    hf = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        out = hf.model.vision_tower(pixel_values, output_attentions=True, output_hidden_states=True)
    return out.attentions[-2][:, :, 0, 1:], out.hidden_states[-2][:, 1:]


def expected_sets(cls_row: torch.Tensor, features: torch.Tensor, keep: int, ratio: float) -> tuple[set, set]:
    """The important set (top of the head-mean row) and the diverse set (the rounds on these features)."""
    important_count = int(keep * ratio)
    important = top_k_indices(cls_row.mean(dim=0), important_count).tolist()
    residual = torch.sort(cls_row.mean(dim=0), descending=True, stable=True).indices[important_count:]
    diverse = bipartite_rounds(residual, features, keep - important_count)[-1].tolist()
    return set(important), set(diverse)


def test_llava_15_important_set_is_eager_attention_and_diverse_set_the_rule_on_hidden_states(loaded, tiny_llava_dir):
    _, model, processor, _ = loaded
    pixel_values = processor(helpers.random_images(2, seed=41))
    cls_rows, features = eager_vision(tiny_llava_dir, pixel_values, next_model=False)
    model.set_pruning("vispruner:keep=20")  # T_imp 10; R 54 -> 46 -> 38 -> 30 -> 22 -> 14 -> 10: six rounds
    try:
        stats = model.prepare_inputs([[1, -200, 5], [1, -200, 6]], pixel_values).stats
    finally:
        model.set_pruning("none")
    for b in range(2):
        important, diverse = expected_sets(cls_rows[b], features[b], 20, 0.5)
        kept = stats.kept[b][0]
        assert len(kept) == 20 and kept == sorted(kept)
        assert important <= set(kept) and set(kept) - important == diverse


@pytest.fixture(scope="module")
def spatial(tiny_next_dir):
    """FasterVLM's (and VisPruner's) protocol: spatial merge, one 2x2 canvas (224 x 224 for the 112-px tower)."""
    return load_pretrained_model(str(tiny_next_dir), patch_merge="spatial", image_grid="224x224")


def test_next_spatial_protocol_keeps_keep_per_partition_by_eager_attention_and_hidden_states(spatial, tiny_next_dir):
    tokenizer, model, processor, _ = spatial
    images = processor(helpers.random_images(2, seed=43, sizes=SIZES[:2]))
    assert [i.grid for i in images] == [(2, 2), (2, 2)]
    model.set_pruning("vispruner:keep=29,important_ratio=0.75")  # T_imp 21, T_div 8: R 43 -> 35 -> 27 -> 19 -> 11 -> 8
    try:
        stats = model(prompts_for(tokenizer, QUESTIONS[:2]), images).stats
    finally:
        model.set_pruning("none")
    assert stats.visual_tokens == [[5 * 29], [5 * 29]] and stats.newline_tokens == [[0], [0]]
    side = model.config.vision.grid_size
    for b, image in enumerate(images):
        cls_rows, features = eager_vision(tiny_next_dir, image.pixel_values, next_model=True)
        for p in range(5):  # base, then the four crops: each its own budget and its own CLS row
            important, diverse = expected_sets(cls_rows[p], features[p], 29, 0.75)
            kept = set(stats.kept_partitions[b][0][p])
            assert len(kept) == 29 and important <= kept and kept - important == diverse
        # Packed as the spatial merge: base in raster order, then the crops stitched, no unpad, no newline.
        layout = anyres_layout(image.grid, side, image.image_size, "spatial")
        chosen = torch.tensor([int(patch) in stats.kept_partitions[b][0][int(part)] for part, patch in layout])
        assert stats.kept[b][0] == (layout[chosen, 0] * side * side + layout[chosen, 1]).tolist()


def test_the_model_feeds_the_select_layer_features_before_the_projector(loaded, tiny_llava_dir):
    _, model, processor, _ = loaded
    pixel_values = processor(helpers.random_images(1, seed=44))
    select = model.config.vision.layer_index(-2)
    with torch.no_grad():
        out = model.vision_tower(pixel_values, select_layer=-2, attention_layers=(select,))
    cls_rows, features = eager_vision(tiny_llava_dir, pixel_values, next_model=False)
    assert_close(out.features, features, atol=1e-5, rtol=1e-5)
    assert_close(out.probes[select].cls_attention, cls_rows, atol=1e-6, rtol=1e-5)


# ---- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ("vispruner:keep=0", "keep must be at least 1"),
    ("vispruner:keep=8,important_ratio=1.5", "vispruner:important_ratio must be in [0, 1], got 1.5"),
    ("vispruner:keep=8,important_ratio=-0.1", "vispruner:important_ratio must be in [0, 1], got -0.1"),
])
def test_bad_arguments_are_refused_in_one_line(spec, message):
    with pytest.raises(InputError) as error:
        parse_method(spec)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_keep_above_the_patches_is_refused_in_one_line(loaded):
    model = loaded[1]
    with pytest.raises(InputError) as error:
        model.set_pruning("vispruner:keep=65")
    assert str(error.value) == "keep=65 is larger than the 64 visual tokens in each image"
    assert model.pruning.name == "none"
    with pytest.raises(InputError) as error:
        parse_method("vispruner:keep=17").select(sixteen_patches())
    assert str(error.value) == "keep=17 is larger than the 16 visual tokens in image 0"
