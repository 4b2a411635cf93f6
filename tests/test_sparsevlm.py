"""SparseVLM v1.5: known answers worked out by hand (the raters, the per-stage counts with recycled tokens, DPC-kNN
on two obvious groups, which pruned tokens are recycled), the scores the model hands the method against
transformers' eager attention on the tiny LLaVA-1.5, batch == single and cached == recompute on it, and one-line
refusals of bad arguments."""

import math

import pytest
import torch
from torch.testing import assert_close

from llava.errors import InputError
from llava.generate import generate
from llava.model.pruning.base import StageView, VisualSpan
from llava.model.pruning.registry import parse_method
from llava.model.pruning.sparsevlm import STAGE_COUNTS, SparseVLM, cluster, raters, stage_counts, stage_lists
from tests import helpers
from tests.test_model_parity import IMAGE_TOKEN_ID, NUM_PATCHES, QUESTIONS, prompts_for

TINY = "sparsevlm:keep=64,layers=0,1"  # the tiny LLM has 3 layers: score with layers 0 and 1, prune before 1 and 2


def view_of(stage: int, rows: int, image: tuple[int, int], embeds, hidden, attention, memo: dict) -> StageView:
    """A one-sample StageView without padding: `image` = (start, length) of its one image span."""
    start, length = image
    span = VisualSpan(start, length, (24, 24), torch.arange(length))
    return StageView(stage + 1, stage, [span], torch.ones(rows, dtype=torch.bool), hidden, embeds, attention,
                     keys=lambda: None, final_norm=lambda x: x, memo=memo)


# ---- raters ----------------------------------------------------------------------------------------------------


def test_raters_known_answer():
    # Image v0 = (1, 0), v1 = (0, 1); text t0 = (ln 3, 0), t1 = (0, 0), t2 = (0, ln 3).
    # V T^T: v0 -> (ln 3, 0, 0), softmax (3/5, 1/5, 1/5); v1 -> (0, 0, ln 3), softmax (1/5, 1/5, 3/5).
    # Mean over the image: (2/5, 1/5, 2/5); their mean 1/3: t0 and t2 are above it, t1 is not.
    ln3 = math.log(3)
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[ln3, 0.0], [0.0, 0.0], [0.0, ln3]])
    assert raters(image, text).tolist() == [0, 2]
    # One text token: its softmax is 1 for every image token, nobody is above the mean: it rates alone.
    assert raters(image, text[:1]).tolist() == [0]


def test_raters_chosen_once_from_the_input_embeddings_and_found_again_after_pruning():
    # Rows: system 0, image 1-2, text 3-5 (the embeddings of the test above). Raters t0, t2 = rows 3, 5.
    ln3 = math.log(3)
    embeds = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [ln3, 0.0], [0.0, 0.0], [0.0, ln3]])
    asked = []

    def attention(rows, of="previous", width=6):
        asked.append((rows.tolist(), of))
        return torch.full((2, len(rows), width), 1 / width)

    memo = {}
    method = SparseVLM(parse_method("sparsevlm:keep=64").args)
    method.cut(view_of(0, 6, (1, 2), embeds, embeds, attention, memo))
    assert asked == [([3, 5], "previous")]  # layer l's attention (the stage is before layer l + 1)
    # A later stage on a sequence grown to 3 image tokens (rows 1-3), text now rows 4-6, other embeddings: the same
    # text tokens rate, found at their new rows; the raters are not chosen again.
    grown = torch.cat([embeds[:3], torch.zeros(1, 2), embeds[3:]])
    grown[1:4] = torch.tensor([[0.0, 5.0], [5.0, 0.0], [1.0, 1.0]])
    method.cut(view_of(1, 7, (1, 3), grown, grown, lambda rows, of="previous": attention(rows, of, 7), memo))
    assert asked[1] == ([4, 6], "previous")


# ---- stages ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep, expected", [(192, [309, 204, 113]), (128, [312, 117, 39]), (64, [82, 32, 18])])
def test_stage_counts_of_a_576_token_image_include_the_recycled_tokens(keep, expected):
    assert stage_lists(keep, 576) == list(STAGE_COUNTS[keep])  # the release's lists, unscaled
    # keep=192: 576 -> top 300, 276 pruned, int(82.8) + 1 = 83 recycled into int(8.3) + 1 = 9: 309;
    #           309 -> 200, 109 pruned, 33 recycled, 4 merged: 204; 204 -> 110, 94 pruned, 29 recycled, 3 merged: 113.
    # keep=128: 576 -> 303 + (273 -> 82 -> 9) = 312; 312 -> 110 + (202 -> 61 -> 7) = 117; 117 -> 36 + (81 -> 25 -> 3) = 39.
    # keep=64:  576 -> 66 + (510 -> 154 -> 16) = 82; 82 -> 30 + (52 -> 16 -> 2) = 32; 32 -> 17 + (15 -> 5 -> 1) = 18.
    assert stage_counts(keep, 576) == expected
    method = parse_method(f"sparsevlm:keep={keep}")
    assert method.stage_budget(576) == expected and method.budget(576) == expected[-1]

    # The same counts from the method's cuts, stage after stage, on a system row, the image and 4 text rows.
    generator = torch.Generator().manual_seed(5)
    memo, tokens, merged = {}, 576, []
    for stage in range(3):
        rows = 1 + tokens + 4
        embeds, hidden = torch.randn(rows, 8, generator=generator), torch.randn(rows, 8, generator=generator)
        attention = torch.rand(2, rows, rows, generator=generator).softmax(dim=-1)
        cut, = method.cut(view_of(stage, rows, (1, tokens), embeds, hidden, lambda r, of="previous": attention[:, r], memo))
        tokens = len(cut.keep) + len(cut.mix)
        merged.append(len(cut.mix))
        assert tokens == expected[stage]
        assert_close(cut.mix.sum(dim=1), cut.mix.new_ones(len(cut.mix)), atol=1e-5, rtol=0)  # averages
    assert merged == {192: [9, 4, 3], 128: [9, 7, 3], 64: [16, 2, 1]}[keep]


def test_a_one_token_image_keeps_its_token_as_a_merged_one():
    # min(count, 1 - 1) = 0 kept; the one pruned token is recycled alone: 1 cluster of 1 member.
    cut = parse_method("sparsevlm").select(torch.tensor([0.5]), torch.ones(1, 4), 300)
    assert cut.keep.tolist() == []
    assert_close(cut.mix, torch.tensor([[1 / (1 + 1e-6)]]))


def test_recycles_the_best_pruned_tokens_and_merges_each_group():
    # 40 tokens, score decreasing with the index; count 7: tokens 0-6 stay, 7-39 are pruned (33), of which the
    # int(0.3 x 33) + 1 = 10 best, 7-16, are recycled (in that order, the release's topk order) into
    # int(10 / 10) + 1 = 2 tokens. Features (on the x axis): the odd tokens 7, 9, .., 15 at 0, 1, 3, 6, 10, the
    # even ones 8, 10, .., 16 at 100, 102, 105, 109, 114; the tokens not recycled far off (never clustered).
    scores = (40 - torch.arange(40)) / 40
    hidden = torch.full((40, 2), -500.0)
    hidden[7:17] = 0.0
    hidden[7:17:2, 0] = torch.tensor([0.0, 1, 3, 6, 10])
    hidden[8:17:2, 0] = torch.tensor([100.0, 102, 105, 109, 114])
    # k = 2: density = exp(-(nearest other)^2 / 4): 7, 9 e^-0.25 (1 apart), 8, 10 and 11 e^-1 (2 apart), ...
    # Ties broken by seed 0's noise over the recycled order 7..16: .4963, .7682, .0885, .1320, .3074, ...: 7 is
    # the densest (parent: the largest distance), 8 the densest of its group (.7682 > .3074 of 11, .1320 of 10),
    # its parent 7 or 9, 99 or more away; every other parent is 5 / sqrt(2) at most (16 to 14). Centres 7, then 8; every
    # token joins the centre of its group. A merged token is the sum of its 5 members / (5 + 1e-6).
    cut = parse_method("sparsevlm").select(scores, hidden, 7)
    assert cut.keep.tolist() == list(range(7))
    expected = torch.zeros(2, 40)
    expected[0, 7:17:2] = expected[1, 8:17:2] = 1 / (5 + 1e-6)
    assert_close(cut.mix, expected)


# ---- DPC-kNN ---------------------------------------------------------------------------------------------------


def two_groups() -> torch.Tensor:
    """a0 (0, 0), a1 (1, 0), a2 (0, 2) and the same shifted by (10, 10): b0, b1, b2."""
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    return torch.cat([a, a + 10])


def test_dpc_knn_two_groups_known_answer():
    # distance = L2 / sqrt(2). k = 2 nearest (the token itself, at 0, and its nearest): density = exp(-d_nn^2 / 2)
    # = exp(-L2_nn^2 / 4): a0, a1, b0, b1 e^-0.25 (nearest 1 away), a2, b2 e^-1 (nearest, a0 / b0, 2 away).
    # The ties are broken by the noise, seed 0: U(0, 1) = .4963, .7682, .0885, .1320, .3074, .6341 (x 1e-6).
    noise = torch.rand(6, generator=torch.Generator().manual_seed(0))
    assert noise[1] > noise[0] > noise[4] > noise[3] and noise[5] > noise[2]
    # Density order: a1 > a0 > b1 > b0 > b2 > a2. Parent distances (to the nearest denser token), x sqrt(2):
    # a1 the largest of all (a0 to b2, sqrt(244)); a0 1 (a1); b1 sqrt(200) (a1); b0 1 (b1); b2 2 (b0); a2 2 (a0).
    # Score = parent x density: a1 11.05 x .78, b1 10 x .78, then the rest below 1: centres a1, b1, in that order.
    # Every token joins its group's centre.
    centres, assignment = cluster(two_groups(), 2, torch.Generator().manual_seed(0))
    assert centres.tolist() == [1, 4]
    assert assignment.tolist() == [0, 0, 0, 1, 1, 1]
    # Seed 1: U = .7576, .2793, .4031, .7347, .0293, .7999: a0 > b0 > a1 > b1, the centres are a0 and b0 (a0 the
    # densest, b0's parent a0 at sqrt(200)); the groups are the same.
    centres, assignment = cluster(two_groups(), 2, torch.Generator().manual_seed(1))
    assert centres.tolist() == [0, 3]
    assert assignment.tolist() == [0, 0, 0, 1, 1, 1]


def test_dpc_knn_noise_breaks_density_ties_and_the_parent_distance_orders_the_centres():
    # Four points on a line, x = 0, 1, 5, 6 (y = 0). k = 2: every nearest other point is 1 away, so all four
    # densities are e^-0.25, the ties broken by seed 0's noise (.4963, .7682, .0885, .1320): 1 > 0 > 3 > 2.
    # Parent distances (x sqrt(2)): point 1 the largest of all (0 to 6: 6); point 0 1 (to 1); point 3 5 (denser
    # 1 at 5, 0 at 6); point 2 1 (to 3). Scores in that ratio: centres 1, then 3; 0 joins 1, 2 joins 3.
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [6.0, 0.0]])
    centres, assignment = cluster(x, 2, torch.Generator().manual_seed(0))
    assert centres.tolist() == [1, 3] and assignment.tolist() == [0, 0, 1, 1]


# ---- the tiny LLaVA-1.5 ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_eager(tiny_llava_dir):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.float32,
                                                         attn_implementation="eager").eval()


class RecordingSparseVLM(SparseVLM):
    """SparseVLM that keeps, per stage and sample, the rows it asked attention for and what it got."""

    def cut(self, view):
        ask = view.attention

        def recorded(rows, of="previous"):
            out = ask(rows, of)
            self.seen.append((view.stage, rows.clone(), out))
            return out

        view.attention = recorded
        return super().cut(view)


@pytest.fixture
def with_method(loaded):
    model = loaded[1]
    yield lambda method: model.set_pruning(method)
    model.set_pruning("none")


def test_rater_rows_and_their_attention_equal_transformers_eager(loaded, hf_eager, with_method):
    tokenizer, model, processor, _ = loaded
    prompts = prompts_for(tokenizer, QUESTIONS)  # mixed lengths: left padding in the batch
    pixel_values = processor(helpers.random_images(3, seed=31))
    recorder = RecordingSparseVLM(parse_method(TINY).args)
    recorder.seen = []
    with_method(recorder)
    model(prompts, pixel_values)
    ids, mask = helpers.hf_input_ids(prompts, NUM_PATCHES, IMAGE_TOKEN_ID)
    with torch.no_grad():
        out = hf_eager(input_ids=ids, attention_mask=mask, pixel_values=pixel_values,
                       output_attentions=True, output_hidden_states=True)
    first = [seen for seen in recorder.seen if seen[0] == 0]
    assert len(first) == 3
    for b, (_, rows, attention) in enumerate(first):
        # The raters by the rule, from transformers' input embeddings: softmax over the text of V T^T, mean over V.
        image = (ids[b] == IMAGE_TOKEN_ID).nonzero()[:, 0]
        text = torch.arange(int(image[-1]) + 1, ids.shape[1])
        embeds = out.hidden_states[0][b]
        relation = (embeds[image] @ embeds[text].T).softmax(dim=-1).mean(dim=0)
        assert rows.tolist() == text[relation > relation.mean()].tolist()
        real = mask[b].bool()
        # Stage 0 is before layer 1: layer 0's attention, every token still there.
        assert_close(attention[:, :, real], out.attentions[0][b][:, rows][:, :, real], atol=1e-5, rtol=1e-4)


def test_batch_equals_single_and_recycled_tokens_show_as_minus_one(loaded, with_method):
    tokenizer, model, processor, _ = loaded
    prompts = prompts_for(tokenizer, QUESTIONS)
    pixel_values = processor(helpers.random_images(3, seed=32))
    with_method(TINY)
    together = model(prompts, pixel_values)
    # 64 patches: the lists (66, 30) scaled by 64 / 576 are (7, 3). Stage 0 keeps 7, 57 pruned, int(17.1) + 1 = 18
    # recycled into int(1.8) + 1 = 2 merged tokens (-1): 9; stage 1 keeps 3 of those 9, 6 pruned, 2 recycled into
    # 1: 4.
    stages = together.stats.kept_stages
    assert [s["layer"] for s in stages] == [1, 2]
    for b in range(3):
        assert stages[0]["kept"][b][0].count(-1) == 2 and len(stages[0]["kept"][b][0]) == 9
        # the new merged token, and stage 0's merged tokens that are among the 3 kept
        assert stages[1]["kept"][b][0].count(-1) in (1, 2, 3) and len(stages[1]["kept"][b][0]) == 4
        n = len(prompts[b]) - 1 + 64
        assert together.stats.seq_lens[b] == [n, n - 55, n - 60]
    for b in range(3):
        alone = model(prompts[b : b + 1], pixel_values[b : b + 1])
        assert_close(together.logits[b], alone.logits[0], atol=1e-4, rtol=1e-4)
        assert [s["kept"][b] for s in stages] == [s["kept"][0] for s in alone.stats.kept_stages]


def test_cached_decoding_equals_recompute_without_cache(loaded, with_method):
    tokenizer, model, processor, _ = loaded
    prompts = prompts_for(tokenizer, QUESTIONS)
    pixel_values = processor(helpers.random_images(3, seed=33))
    with_method(TINY)
    cached = generate(model, prompts, pixel_values, max_new_tokens=8, use_cache=True)
    recomputed = generate(model, prompts, pixel_values, max_new_tokens=8, use_cache=False)
    assert cached.tokens == recomputed.tokens
    assert cached.stats == recomputed.stats
    alone = generate(model, prompts[1:2], pixel_values[1:2], max_new_tokens=8).tokens[0]
    assert alone == cached.tokens[1]


def test_the_lists_scale_with_a_smaller_image():
    # Our rule for an image of N != 576 tokens (the shipped models' 144): the release's lists x N / 576, rounded.
    # keep=64 on 144: 66/4 = 16.5 -> 16 (round half to even), 30/4 = 7.5 -> 8, 17/4 = 4.25 -> 4. Then
    # 144 -> 16 + (128 pruned -> int(38.4) + 1 = 39 recycled -> int(3.9) + 1 = 4) = 20; 20 -> 8 + (12 -> 4 -> 1) = 9;
    # 9 -> 4 + (5 -> 2 -> 1) = 5.
    assert stage_lists(64, 144) == [16, 8, 4] and stage_counts(64, 144) == [20, 9, 5]
    assert stage_lists(128, 1) == [1, 1, 1]  # at least one


# ---- refusals --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ("sparsevlm:keep=100", "sparsevlm:keep=100 is not supported; the release's per-stage lists exist for keep=64, 128, 192"),
    ("sparsevlm:layers=6,2,15", "sparsevlm:layers=6,2,15 must be increasing layer indices from 0"),
    ("sparsevlm:layers=2,2", "sparsevlm:layers=2,2 must be increasing layer indices from 0"),
    ("sparsevlm:layers=-1,2", "sparsevlm:layers=-1,2 must be increasing layer indices from 0"),
    ("sparsevlm:layers=1,2,3,4", "sparsevlm:layers=1,2,3,4 must list one to three layers"),
    ("sparsevlm:seed=-1", "sparsevlm:seed must be an integer in [0, 2**63 - 1], got -1"),
])
def test_bad_arguments_are_refused_in_one_line(spec, message):
    with pytest.raises(InputError, match="^" + message.replace("[", r"\[").replace("*", r"\*")) as error:
        parse_method(spec)
    assert "\n" not in str(error.value)


def test_layers_out_of_range_and_llava_next_are_refused_in_one_line(loaded):
    model = loaded[1]
    with pytest.raises(InputError, match=r"^sparsevlm:layers=2,6,15 reaches layer 15, outside 0\.\.1 for this"
                                         r" 3-layer LLM") as error:
        model.set_pruning("sparsevlm:keep=192")  # the release's layers on the 3-layer tiny LLM
    assert "\n" not in str(error.value) and model.pruning.name == "none"
    with pytest.raises(InputError, match="outside 0..1"):
        model.set_pruning("sparsevlm:layers=0,2")
    with pytest.raises(InputError, match="not supported on LLaVA-NeXT") as error:
        parse_method("sparsevlm:keep=64").check_model(24, 32, 576, anyres=True)
    assert "\n" not in str(error.value)
    parse_method("sparsevlm").check_model(24, 32, 576)  # the release's setting is accepted
