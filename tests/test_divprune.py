"""DivPrune: known answers worked out by hand (the first pick by the nearest-other-token rule, the max-min
order, ties to the first index, keep = all and keep = 1; on a hand-made LLaVA-NeXT image, one selection over
the laid-out tokens with the newline tokens as candidates and the padding out), the greedy loop against the
rule's direct definition, the model's choice against transformers' projected (LLaVA-1.5) and packed
(LLaVA-NeXT) image features, NeXT's contracts (the budget, batch equals single, cached decoding equals
recompute, ratio=0 equals no pruning, the kept ids), and one-line refusals (bad budgets)."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from llava.conversation import build_prompt
from llava.errors import InputError
from llava.mm_utils import AnyresImage, tokenizer_image_token
from llava.model.anyres import NEWLINE, anyres_layout
from llava.model.llava_arch import LlavaForCausalLM
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


# ---- LLaVA-NeXT: one selection over the laid-out image ------------------------------------------------------

# A 2 x 1 crop grid of 2 x 2-patch views for a 10 x 20 image: stitched rows 0 and 3 are padding, so the model's
# merge reads (tests/test_anyres_layout.py), by position:
#   0-3 base p0-p3 | 4 c1 p2 | 5 c1 p3 | 6 newline | 7 c2 p0 | 8 c2 p1 | 9 newline
# Features on the unit circle, in degrees: base 0, 20, 30, 40; c1 p2 50, p3 60; c2 p0 70, p1 100; the newline
# embedding 210. The padded patches c1 p0, c1 p1, c2 p2, c2 p3 sit at 300, 310, 320, 330 -- the most isolated
# of all, had they been candidates: they never are (not in the layout).
ANGLES = [[0, 20, 30, 40], [300, 310, 50, 60], [70, 100, 320, 330]]


def lay_out(spec: str):
    """The model's `_lay_out` of that image on a stand-in model (features per view, the newline embedding) ->
    the kept tokens' (partition, patch) and features."""
    method = parse_method(spec)
    model = SimpleNamespace(pruning=method, config=SimpleNamespace(vision=SimpleNamespace(grid_size=2),
                                                                   patch_merge="spatial_unpad"),
                            image_newline=on_circle([210])[0], device=torch.device("cpu"))
    image = AnyresImage(torch.zeros(3, 3, 1, 1), (2, 1), (0, 0), (10, 20))
    views = [VisionInputs(on_circle(angles), {}, {}, (2, 2), v) for v, angles in enumerate(ANGLES)]
    kept = method.select_image(views, image.grid)
    assert [k.indices.tolist() for k in kept] == [[0, 1, 2, 3]] * 3  # every patch goes on to the layout
    features = [view.features[k.indices] for view, k in zip(views, kept)]
    tokens = LlavaForCausalLM._lay_out(model, image, features, [k.indices for k in kept])
    return torch.stack([tokens.partition, tokens.patch_index], dim=-1).tolist(), tokens.features


def test_next_selects_once_over_the_laid_out_image_newline_tokens_included():
    # L = 10 candidates. Nearest other token: 0 20 | 20, 30, 40, 50, 60, 70: 10 | 100: 30 (70) | each newline: 0
    # (the other newline, the same embedding): the first pick is 100 (position 8). Angles to it: 0 100 | 20 80 |
    # 30 70 | 40 60 | 50 50 | 60 40 | 70 30 | newline 110: pick the first newline (position 6; 9 ties it exactly).
    # Min over {100, 210}: 0 min(100, 150) = 100 | 20 80 | ... | newline 9: 0: pick 0 (position 0). Min over
    # {100, 210, 0}: 20 20 | 30 30 | 40 40 | 50 min(50, 160, 50) = 50 | 60 40 | 70 30: pick 50 (position 4).
    # keep=1 per view: min(1 x 3 views, 10) = 3 tokens; ratio=0.6: round(10 x 0.4) = 4.
    n = [NEWLINE, NEWLINE]
    layout, features = lay_out("divprune:keep=1")
    assert layout == [[0, 0], n, [2, 1]]
    assert_close(features, on_circle([0, 210, 100]))
    assert lay_out("divprune:ratio=0.6")[0] == [[0, 0], [1, 2], n, [2, 1]]  # in the layout's order
    assert len(lay_out("divprune:keep=4")[0]) == 10  # min(4 x 3, 10): every token, both newlines
    assert len(lay_out("divprune:ratio=0")[0]) == 10


def test_the_budget_per_view_or_as_the_fraction_dropped():
    assert parse_method("divprune:keep=16").kept_count(268, 5) == 80  # 16 per view of a 2 x 2 grid
    assert parse_method("divprune:keep=64").kept_count(136, 3) == 136  # min(192, L)
    assert parse_method("divprune:ratio=0.75").kept_count(268, 5) == 67  # round(268 x .25)
    release_r = 0.098  # the release's SUBSET_RATIO: int(round(r L)) kept
    assert parse_method(f"divprune:ratio={1 - release_r}").kept_count(576) == round(release_r * 576) == 56
    assert parse_method("divprune:ratio=0.5").budget(64) == 32 and parse_method("divprune:keep=20").budget(64) == 20


# ---- LLaVA-NeXT: through the model ---------------------------------------------------------------------------

SIZES = ((160, 120), (90, 140), (112, 112), (300, 100))  # crop grids 2x2, 2x1, 1x2, 1x3 on the tiny model


def next_batch(loaded_next, seed: int = 41):
    tokenizer, _, processor, _ = loaded_next
    questions = ["what is in this image ?", "describe it", "how many red left ? answer yes or no", "read the word"]
    prompts = [tokenizer_image_token(build_prompt(q), tokenizer) for q in questions]
    return prompts, processor(helpers.random_images(4, seed=seed, sizes=SIZES))


def test_llava_next_keeps_the_rule_applied_to_transformers_packed_features(loaded_next, tiny_next_dir):
    from transformers import LlavaNextForConditionalGeneration

    _, model, _, _ = loaded_next
    prompts, images = next_batch(loaded_next)
    hf = LlavaNextForConditionalGeneration.from_pretrained(tiny_next_dir, dtype=torch.float32).eval()
    for spec in ("divprune:keep=16", "divprune:ratio=0.8"):
        method = model.set_pruning(spec)
        try:
            with torch.no_grad():
                inputs = model.prepare_inputs(prompts, images)
        finally:
            model.set_pruning("none")
        newline_kept = 0
        for b, image in enumerate(images):
            with torch.no_grad():  # base view + unpadded stitched crops + newline tokens, projected (spatial_unpad)
                (packed,) = hf.model.get_image_features(pixel_values=image.pixel_values,
                                                        image_sizes=torch.tensor([image.image_size])).pooler_output
            layout = anyres_layout(image.grid, 8, image.image_size, "spatial_unpad")
            assert len(packed) == len(layout)
            budget = method.kept_count(len(packed), 1 + image.grid[0] * image.grid[1])
            kept = max_min_order(packed[None], budget)[0].sort().values
            (span,) = inputs.spans[b]
            assert span.length == budget == (16 * (1 + image.grid[0] * image.grid[1]) if "keep" in spec
                                             else round(len(packed) * 0.2))
            assert torch.stack([span.partition, span.patch_index], dim=-1).tolist() == layout[kept].tolist()
            assert_close(inputs.embeds[b, span.start : span.end], packed[kept], atol=1e-5, rtol=1e-5)
            # Bookkeeping: the newline tokens kept are in the count; ids and partitions name the patches kept.
            stats = inputs.stats
            assert stats.visual_tokens[b] == [budget] and stats.newline_tokens[b] == [int(span.newline.sum())]
            assert sum(stats.partition_tokens()[b][0]) + stats.newline_tokens[b][0] == budget
            assert stats.kept[b][0] == [int(p) * 64 + int(i) for p, i in layout[kept] if p != NEWLINE]
            newline_kept += stats.newline_tokens[b][0]
        assert newline_kept > 0  # the newline embedding is a candidate, and was chosen


def test_next_batch_equals_single_runs_and_cached_decoding_equals_recompute(loaded_next):
    _, model, _, _ = loaded_next
    prompts, images = next_batch(loaded_next, seed=42)
    assert len({image.grid for image in images}) == 4  # a mixed batch
    model.set_pruning("divprune:keep=10")
    try:
        together = helpers.batch_equals_single(model, prompts, images)
    finally:
        model.set_pruning("none")
    assert together.stats.visual_tokens == [[10 * (1 + image.grid[0] * image.grid[1])] for image in images]


def test_next_ratio_zero_keeps_every_token_and_equals_no_pruning(loaded_next):
    _, model, _, _ = loaded_next
    prompts, images = next_batch(loaded_next, seed=43)
    expected = model(prompts, images, all_logits=True)
    model.set_pruning("divprune:ratio=0")
    try:
        out = model(prompts, images, all_logits=True)
    finally:
        model.set_pruning("none")
    assert torch.equal(out.logits, expected.logits) and out.stats.kept == expected.stats.kept


# ---- bad input -------------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("spec, message", [
    ("divprune", "divprune needs exactly one budget: keep=N (tokens kept per image, per view on LLaVA-NeXT)"
                 " or ratio=R (fraction dropped)"),
    ("divprune:keep=16,ratio=0.5", "divprune needs exactly one budget: keep=N (tokens kept per image, per view on"
                                   " LLaVA-NeXT) or ratio=R (fraction dropped)"),
    ("divprune:ratio=1", "divprune:ratio is the fraction dropped and must be in [0, 1), got 1.0"),
    ("divprune:ratio=-0.1", "divprune:ratio is the fraction dropped and must be in [0, 1), got -0.1"),
])
def test_bad_arguments_are_refused_in_one_line(spec, message):
    with pytest.raises(InputError) as error:
        parse_method(spec)
    assert str(error.value) == message


def test_budgets_beyond_a_view_or_keeping_nothing_are_refused_in_one_line_on_llava_next(loaded_next):
    model = loaded_next[1]
    with pytest.raises(InputError) as error:
        model.set_pruning("divprune:keep=65")
    assert str(error.value) == "keep=65 is larger than the 64 visual tokens in each view"
    with pytest.raises(InputError) as error:
        model.set_pruning("divprune:ratio=0.995")  # round(64 x .005) = 0 of a view's patches
    assert "keeps no visual token" in str(error.value) and "\n" not in str(error.value)
    assert model.pruning.name == "none"
