"""VisionZip: known answers worked out by hand (the dominant set with [CLS] counted in D, the target
arithmetic, the cosine assignment with a tie, the target + mean merge, a whole image; LLaVA-NeXT's release
and stock packings of hand-made views), the model's tokens against transformers' eager CLIP on LLaVA-1.5 and
LLaVA-NeXT, NeXT's contracts (batch equals single, cached decoding equals recompute, the count P (D + C),
the kept ids), and one-line refusals (bad arguments, budgets beyond a view, packing=stock on LLaVA-1.5)."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from llava.conversation import build_prompt
from llava.errors import InputError
from llava.mm_utils import AnyresImage, tokenizer_image_token
from llava.model.anyres import anyres_layout, keep_in_layout
from llava.model.llava_arch import LlavaForCausalLM
from llava.model.pruning.base import NEWLINE, VisionInputs, top_k_indices
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


# ---- LLaVA-NeXT: the packing ----------------------------------------------------------------------------------

N = [NEWLINE, NEWLINE]


def lay_out(spec: str, grid, image_size, indices: list[list[int]], side: int = 2):
    """The model's `_lay_out` of one NeXT image whose views kept `indices` (rows of each view's Kept), on a
    stand-in model with `side` x `side` patches per view: feature of (view v, row r) = [v, r], the newline
    embedding [-1, -1]. -> ((view, row) per token read back from the features, (partition, patch) per token)."""
    method = parse_method(spec)
    model = SimpleNamespace(pruning=method, config=SimpleNamespace(vision=SimpleNamespace(grid_size=side),
                                                                   patch_merge="spatial_unpad"),
                            image_newline=torch.tensor([-1.0, -1.0]), device=torch.device("cpu"))
    views = 1 + grid[0] * grid[1]
    image = AnyresImage(torch.zeros(views, 3, 1, 1), grid, (0, 0), image_size)
    features = [torch.tensor([[float(v), float(r)] for r in range(len(kept))]) for v, kept in enumerate(indices)]
    tokens = LlavaForCausalLM._lay_out(model, image, features, [torch.tensor(i) for i in indices])
    return tokens.features.long().tolist(), torch.stack([tokens.partition, tokens.patch_index], dim=-1).tolist()


# D = 3 ([CLS] + 2 patches), C = 1 on 2 x 2-patch views. Rows of a view's Kept: 0 [CLS], 1-2 dominant patches in
# raster order, 3 the contextual token (its target's patch index).
BASE = [-1, 1, 2, 0]
LEFT_OR_TOP = [-1, 0, 3, 1]  # crop 1: dominant patches 0 and 3, target 1
RIGHT_OR_BOTTOM = [-1, 1, 2, 0]  # crop 2: dominant patches 1 and 2, target 0
SPEC = "visionzip:dominant=3,contextual=1"


def test_release_packing_stitches_the_crops_dominant_patches_then_their_cls_then_their_contextual_tokens():
    # A 1 x 2 crop grid: the stitched grid is 2 rows x 4 columns, crop 1 left, crop 2 right:
    #   row 0: c1 p0  c1 p1  c2 p0  c2 p1
    #   row 1: c1 p2  c1 p3  c2 p2  c2 p3
    # Dominant: c1 p0 (row 1 of view 1), c1 p3 (row 2), c2 p1 (row 1 of view 2), c2 p2 (row 2); raster: c1 p0, c2 p1,
    # c1 p3, c2 p2 -- the crops interleave (concatenating them would give c1 p0, c1 p3, c2 p1, c2 p2). No newline
    # token, although the model merges with spatial_unpad: the release skips unpad and newline (the next test).
    rows, layout = lay_out(SPEC, (1, 2), (10, 40), [BASE, LEFT_OR_TOP, RIGHT_OR_BOTTOM])
    assert rows == [[0, 0], [0, 1], [0, 2], [0, 3],  # the base view's block: [CLS], 1, 2, contextual
                    [1, 1], [2, 1], [1, 2], [2, 2],  # the crops' dominant patches, stitched raster
                    [1, 0], [2, 0],  # crop 1's [CLS], crop 2's
                    [1, 3], [2, 3]]  # crop 1's contextual token, crop 2's
    assert layout == [[0, -1], [0, 1], [0, 2], [0, 0],  # [CLS]: patch -1; contextual: its target's patch
                      [1, 0], [2, 1], [1, 3], [2, 2],
                      [1, -1], [2, -1],
                      [1, 1], [2, 0]]  # P (D + C) = 3 x 4 = 12 tokens


def test_stock_packing_puts_the_crops_dominant_patches_in_the_models_merge():
    # A 2 x 1 crop grid (crop 1 on top) for a 10 x 20 image: of the stitched 4 rows x 2 columns, rows 0 and 3 are
    # padding (tests/test_anyres_layout.py): the merge reads c1 p2, c1 p3, newline, c2 p0, c2 p1, newline.
    # Dominant: c1 p0 (padding: dropped), c1 p3 (row 2 of view 1), c2 p1 (row 1 of view 2), c2 p2 (padding: dropped).
    # c2 p0 is crop 2's target, no dominant patch: it enters only as the contextual token, after the grid.
    views = [BASE, LEFT_OR_TOP, RIGHT_OR_BOTTOM]
    rows, layout = lay_out(SPEC + ",packing=stock", (2, 1), (10, 20), views)
    assert rows == [[0, 0], [0, 1], [0, 2], [0, 3],
                    [1, 2], N, [2, 1], N,  # the merge, newline tokens and all
                    [1, 0], [2, 0], [1, 3], [2, 3]]
    assert layout == [[0, -1], [0, 1], [0, 2], [0, 0], [1, 3], N, [2, 1], N, [1, -1], [2, -1], [1, 1], [2, 0]]
    # The release on the same image: the stitched raster (for a 2 x 1 grid, crop 1's patches then crop 2's), all four
    # dominant patches, the two in the padding too, no newline.
    rows, _ = lay_out(SPEC, (2, 1), (10, 20), views)
    assert rows[4:8] == [[1, 1], [1, 2], [2, 1], [2, 2]] and len(rows) == 12


# ---- LLaVA-NeXT: through the model ---------------------------------------------------------------------------

SIZES = ((160, 120), (90, 140), (112, 112), (300, 100))  # crop grids 2x2, 2x1, 1x2, 1x3 on the tiny model
NEXT_SPEC = "visionzip:dominant=9,contextual=7"  # 8 patches + [CLS] + 7 contextual per view of 64


def next_batch(loaded_next, seed: int = 31):
    tokenizer, _, processor, _ = loaded_next
    questions = ["what is in this image ?", "describe it", "how many red left ? answer yes or no", "read the word"]
    prompts = [tokenizer_image_token(build_prompt(q), tokenizer) for q in questions]
    return prompts, processor(helpers.random_images(4, seed=seed, sizes=SIZES))


def release_order(kept: list[list[int]], grid, side: int, dominant: int) -> list[tuple[int, int]]:
    """The release's packing written out with loops: (view, row) per token."""
    rows, cols = grid
    order = [(0, r) for r in range(len(kept[0]))]
    for y in range(rows * side):  # restore the crops' dominant patches on the stitched grid, read it in raster order
        for x in range(cols * side):
            view, patch = 1 + (y // side) * cols + x // side, (y % side) * side + x % side
            if patch in kept[view][1:dominant]:
                order.append((view, kept[view].index(patch, 1)))
    order += [(view, 0) for view in range(1, len(kept))]
    order += [(view, r) for view in range(1, len(kept)) for r in range(dominant, len(kept[view]))]
    return order


def test_llava_next_tokens_are_the_release_packing_of_the_rule_on_eager_clip(loaded_next, tiny_next_dir):
    from transformers import LlavaNextForConditionalGeneration

    _, model, _, _ = loaded_next
    prompts, images = next_batch(loaded_next)
    hf = LlavaNextForConditionalGeneration.from_pretrained(tiny_next_dir, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    tower, heads = hf.model.vision_tower, hf.config.vision_config.num_attention_heads
    model.set_pruning(NEXT_SPEC)
    try:
        with torch.no_grad():
            inputs = model.prepare_inputs(prompts, images)
    finally:
        model.set_pruning("none")
    for b, image in enumerate(images):
        with torch.no_grad():
            out = tower(image.pixel_values, output_attentions=True, output_hidden_states=True)
            select = len(out.attentions) - 2
            layer = tower.encoder.layers[select]
            keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[select]))  # (V, 1 + P, D)
        views = [reference(out.attentions[-2][v, :, 0, 1:], out.hidden_states[-2][v], keys[v], heads, 9, 7)
                 for v in range(len(image.pixel_values))]
        kept = [indices for indices, _ in views]
        order = release_order(kept, image.grid, 8, 9)
        assert len(order) == len(views) * (9 + 7)  # P (D + C)
        with torch.no_grad():
            expected = torch.stack([hf.model.multi_modal_projector(views[v][1][r]) for v, r in order])
        (span,) = inputs.spans[b]
        assert span.length == len(order) and int(span.newline.sum()) == 0
        assert span.partition.tolist() == [v for v, _ in order]
        assert span.patch_index.tolist() == [kept[v][r] for v, r in order]
        assert_close(inputs.embeds[b, span.start : span.end], expected, atol=1e-4, rtol=1e-4)  # SDPA vs eager
        # Bookkeeping: a [CLS] token per view (-1), the rest its dominant patches and contextual targets.
        assert inputs.stats.kept[b][0] == span.kept_ids() and span.kept_ids().count(-1) == len(views)
        assert inputs.stats.kept_partitions[b][0] == [sorted(k[1:]) for k in kept]


def test_stock_packing_is_the_release_with_the_crops_patches_in_the_models_merge(loaded_next):
    _, model, _, _ = loaded_next
    prompts, images = next_batch(loaded_next)
    spans, embeds = {}, {}
    for packing in ("release", "stock"):
        model.set_pruning(f"{NEXT_SPEC},packing={packing}")
        try:
            with torch.no_grad():
                inputs = model.prepare_inputs(prompts, images)
        finally:
            model.set_pruning("none")
        spans[packing] = [s for (s,) in inputs.spans]
        embeds[packing] = [inputs.embeds[b, s.start : s.end] for b, (s,) in enumerate(inputs.spans)]
    padded = 0
    for b, image in enumerate(images):
        release, stock = spans["release"][b], spans["stock"][b]
        views = 1 + image.grid[0] * image.grid[1]
        grid_end = release.length - (views - 1) * 8  # the release's stitched block ends before the crops' [CLS]
        dominant = [release.patch_index[16:grid_end][release.partition[16:grid_end] == v] for v in range(views)]
        dominant[0] = release.patch_index[1:9]
        merge = anyres_layout(image.grid, 8, image.image_size, "spatial_unpad")
        merge = merge[keep_in_layout(merge, dominant, views)]
        merge = merge[merge[:, 0] != 0]  # the crops' part of the model's merge
        tail = (views - 1) * 8  # the crops' [CLS] and contextual tokens
        assert stock.length == 16 + len(merge) + tail
        stock_layout = torch.stack([stock.partition, stock.patch_index], dim=-1)
        assert stock_layout[16 : 16 + len(merge)].tolist() == merge.tolist()
        for part in (slice(0, 16), slice(-tail, None)):  # the base view's block and the crops' tail: the release's
            assert torch.equal(embeds["stock"][b][part], embeds["release"][b][part])
            assert torch.equal(stock.patch_index[part], release.patch_index[part])
        padded += release.length - 16 - tail - int((merge[:, 0] != NEWLINE).sum())
    assert padded > 0  # some dominant patches fell in the padding: the case that differs


def test_next_batch_equals_single_runs_and_cached_decoding_equals_recompute(loaded_next):
    _, model, _, _ = loaded_next
    prompts, images = next_batch(loaded_next, seed=32)
    assert len({image.grid for image in images}) == 4  # a mixed batch
    for packing in ("release", "stock"):
        model.set_pruning(f"{NEXT_SPEC},packing={packing}")
        try:
            together = helpers.batch_equals_single(model, prompts, images)
        finally:
            model.set_pruning("none")
        if packing == "release":  # P (D + C) tokens per image, no newline token
            views = [1 + image.grid[0] * image.grid[1] for image in images]
            assert together.stats.visual_tokens == [[v * 16] for v in views]
            assert together.stats.newline_tokens == [[0]] * 4
            assert together.stats.partition_tokens() == [[[15] * v] for v in views]  # [CLS] is no patch


def test_the_spatial_merge_packs_the_same_in_both_modes(tiny_next_dir):
    from llava.model.builder import load_pretrained_model

    loaded = load_pretrained_model(str(tiny_next_dir), patch_merge="spatial")
    model = loaded[1]
    prompts, images = next_batch(loaded, seed=33)
    logits = {}
    for packing in ("release", "stock"):
        model.set_pruning(f"{NEXT_SPEC},packing={packing}")
        out = model(prompts, images)
        logits[packing] = out.logits
    assert torch.equal(logits["release"], logits["stock"]) and out.stats.newline_tokens == [[0]] * 4


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


def test_budgets_beyond_a_view_are_refused_in_one_line_on_llava_next(loaded_next):
    model = loaded_next[1]
    with pytest.raises(InputError) as error:
        model.set_pruning("visionzip:dominant=9,contextual=57")
    assert str(error.value) == "visionzip:contextual=57 is more than the 56 patches that dominant=9 leaves in each view"
    assert model.pruning.name == "none"


def test_stock_packing_is_refused_on_llava_15_in_one_line(loaded):
    model = loaded[1]
    with pytest.raises(InputError) as error:
        model.set_pruning("visionzip:packing=stock")
    message = str(error.value)
    assert message.startswith("visionzip:packing lays out a LLaVA-NeXT image's crops") and "\n" not in message
    assert model.pruning.name == "none"
    with pytest.raises(InputError) as error:
        parse_method("visionzip:packing=merge")
    assert str(error.value) == "visionzip:packing must be one of release, stock, got 'merge'"


def test_keep_splits_as_the_papers_budgets():
    # 64 = 54 + 10, 128 = 108 + 20, 192 = 162 + 30; 100: round(84.375) = 84 + 16; 3: round(2.53) = 3 + 0; 1: 1 + 0.
    for keep, counts in [(64, (54, 10)), (128, (108, 20)), (192, (162, 30)), (100, (84, 16)), (3, (3, 0)), (1, (1, 0))]:
        method = parse_method(f"visionzip:keep={keep}")
        assert method.args.counts == counts and method.budget(576) == keep and method.spec == f"visionzip:keep={keep}"
    assert parse_method("visionzip").args.counts == (54, 10)  # the default: the paper's 64
    with pytest.raises(InputError, match="^visionzip takes keep=N .* or dominant=D,contextual=C, not both$"):
        parse_method("visionzip:keep=64,dominant=54")
    with pytest.raises(InputError, match="^visionzip:keep must be at least 1"):
        parse_method("visionzip:keep=0")
