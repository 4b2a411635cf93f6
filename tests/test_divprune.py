"""DivPrune: known answers worked out by hand (the first pick by the nearest-other-token rule, the max-min
order, ties to the first index, keep = all and keep = 1), the greedy loop against the rule's direct
definition, the model's choice against transformers' projected image features, and one-line refusals
(LLaVA-NeXT, bad budgets)."""

import math

import pytest
import torch

from llava.errors import InputError
from llava.model.pruning.base import VisionInputs
from llava.model.pruning.divprune import cosine_distance, max_min_order
from llava.model.pruning.registry import parse_method
from tests import helpers


def on_circle(degrees: list[float]) -> torch.Tensor:
    """(L, 2) unit features at the given angles: 1 - cos is increasing in the angle between two tokens (up to
    180 degrees), so nearest, farthest and max-min can be read off the angles."""
    angle = torch.tensor([math.radians(d) for d in degrees], dtype=torch.float64)
    return torch.stack([angle.cos(), angle.sin()], dim=-1).float()


def inputs(features: torch.Tensor) -> VisionInputs:
    return VisionInputs(features, {}, {}, (1, features.shape[0]), 0)


def order(features: torch.Tensor, keep: int) -> list[int]:
    return max_min_order(features[None], keep)[0].tolist()


def select(spec: str, features: torch.Tensor) -> list[int]:
    return parse_method(spec).select(inputs(features)).indices.tolist()


# Five tokens at 0, 10, 90, 180, 200 degrees. Nearest other token: 0 10 (1) | 1 10 (0) | 2 80 (1) | 3 20 (4) |
# 4 20 (3): the first pick is 2. Angles to 2: 0 90 | 1 80 | 3 90 | 4 110: pick 4. Min over {2, 4}: 0 min(90, 160)
# = 90 | 1 min(80, 170) = 80 | 3 min(90, 20) = 20: pick 0. Min over {2, 4, 0}: 1 min(80, 170, 10) = 10 | 3
# min(90, 20, 180) = 20: pick 3, then 1.
FIVE = [0, 10, 90, 180, 200]


def test_first_pick_is_the_token_whose_nearest_other_token_is_farthest_then_max_min():
    assert order(on_circle(FIVE), 5) == [2, 4, 0, 3, 1]
    for keep, kept in [(1, [2]), (2, [2, 4]), (3, [0, 2, 4]), (4, [0, 2, 3, 4]), (5, [0, 1, 2, 3, 4])]:
        assert select(f"divprune:keep={keep}", on_circle(FIVE)) == kept  # raster order


def test_the_distance_is_one_minus_the_cosine_and_ignores_the_norm():
    features = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]])
    s = 1 - 1 / math.sqrt(2)
    expected = torch.tensor([[0, 1, 2, s], [1, 0, 1, s], [2, 1, 0, 2 - s], [s, s, 2 - s, 0]])
    torch.testing.assert_close(cosine_distance(features[None])[0], expected, atol=1e-6, rtol=0)


def test_ties_go_to_the_first_index():
    # The four axes, exact: every token's nearest other is at distance 1, so the first pick is 0. Distances from
    # 0: 1 1 | 2 2 | 3 1: pick 2. Min over {0, 2}: 1 min(1, 1) = 1 | 3 min(1, 1) = 1, a tie: 1, then 3.
    axes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert order(axes, 4) == [0, 2, 1, 3]
    assert select("divprune:keep=1", axes) == [0] and select("divprune:keep=3", axes) == [0, 1, 2]


def test_three_d_a_duplicate_direction_is_never_isolated_and_keep_all_keeps_every_token_once():
    # 0 e1 | 1 (2, 2, 0) | 2 e2 | 3 3 e1 (the direction of 0) | 4 e3. d(0, 3) = 0, d(0, 1) = d(1, 2) = 1 - 1/sqrt 2
    # = .29, e3 is at 1 from all. Nearest other: 0 0 | 1 .29 | 2 .29 | 3 0 | 4 1: the first pick is 4. Distances
    # from 4 are all 1, a tie: 0. Min over {4, 0}: 1 .29 | 2 1 | 3 0: pick 2. Min over {4, 0, 2}: 1 .29 | 3 0:
    # pick 1, then the duplicate 3, whose score 0 equals the picked tokens' own: it is still picked, not 0 again.
    features = torch.tensor([[1.0, 0, 0], [2, 2, 0], [0, 1, 0], [3, 0, 0], [0, 0, 1]])
    assert order(features, 5) == [4, 0, 2, 1, 3]
    assert select("divprune:keep=2", features) == [0, 4]
    assert select("divprune:keep=5", features) == [0, 1, 2, 3, 4]


def test_the_second_smallest_of_a_column_assumes_the_self_distance_is_the_smallest():
    # Two copies of one direction and a third token at 60 degrees: the copies' second-smallest distance is 0 (each
    # other), the third's is 1 - cos 60 = .5: it is picked first, although every token's column holds a 0.
    assert order(on_circle([0, 0, 60]), 3)[0] == 2


def test_one_token_and_a_batch_of_images():
    assert order(on_circle([40]), 1) == [0]
    first, second = on_circle(FIVE), on_circle([0, 90, 180, 270, 45])
    together = max_min_order(torch.stack([first, second]), 3).tolist()
    assert together == [order(first, 3), order(second, 3)]


def test_the_greedy_loop_equals_the_rule_written_out():
    """The running minimum against the definition: at each step, argmax over the unpicked tokens of the minimum
    distance to the picked ones, computed afresh."""
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(3, 40, 8, generator=generator)
    picked = max_min_order(features, 40)
    for b in range(3):
        distance = cosine_distance(features[b : b + 1])[0]
        chosen = [int(distance.sort(dim=0).values[1].argmax())]
        while len(chosen) < 40:
            rest = [j for j in range(40) if j not in chosen]
            scores = [min(float(distance[s, j]) for s in chosen) for j in rest]
            chosen.append(rest[scores.index(max(scores))])
        assert picked[b].tolist() == chosen


# ---- through the model, against transformers ------------------------------------------------------------------


def projected_features(folder, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' LLaVA: the select layer's patch features (-2, CLS dropped) before and after its projector."""
    from transformers import LlavaForConditionalGeneration

    hf = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        patches = hf.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        return patches, hf.model.multi_modal_projector(patches)


def test_llava_15_keeps_the_rule_applied_to_transformers_projected_features(loaded, tiny_llava_dir):
    _, model, processor, _ = loaded
    pixel_values = processor(helpers.random_images(2, seed=45))
    patches, projected = projected_features(tiny_llava_dir, pixel_values)
    model.set_pruning("divprune:keep=20")
    try:
        stats = model.prepare_inputs([[1, -200, 5], [1, -200, 6]], pixel_values).stats
    finally:
        model.set_pruning("none")
    expected = max_min_order(projected, 20).sort().values.tolist()
    assert [stats.kept[b][0] for b in range(2)] == expected
    # The projector matters: the same rule on the features before it chooses otherwise on these images.
    assert max_min_order(patches, 20).sort().values.tolist() != expected


# ---- bad input -------------------------------------------------------------------------------------------------


def test_llava_next_is_refused_in_one_line(loaded_next):
    model = loaded_next[1]
    with pytest.raises(InputError) as error:
        model.set_pruning("divprune:keep=16")
    message = str(error.value)
    assert "\n" not in message and "divprune" in message and "newline" in message and "LLaVA-1.5 only" in message
    assert model.pruning.name == "none"


def test_bad_budgets_are_refused_in_one_line(loaded):
    with pytest.raises(InputError) as error:
        parse_method("divprune:keep=0")
    assert "keep must be at least 1" in str(error.value) and "\n" not in str(error.value)
    model = loaded[1]
    with pytest.raises(InputError) as error:
        model.set_pruning("divprune:keep=65")
    assert str(error.value) == "keep=65 is larger than the 64 visual tokens in each image"
    assert model.pruning.name == "none"
    with pytest.raises(InputError) as error:
        select("divprune:keep=6", on_circle(FIVE))
    assert str(error.value) == "keep=6 is larger than the 5 visual tokens in image 0"
