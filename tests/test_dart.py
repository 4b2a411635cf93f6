"""DART: a known answer worked out by hand (L1-norm pivots, the least-similar picks, the release's set order of
the pivots), the kept counts 4 + 8 x quota, several images in a sample, the keys and hidden states it reads
against transformers' eager LLaVA and its kept set against the released rule applied to them (batch equals
single), LLaVA-NeXT with newline tokens as candidates, and one-line refusals of bad arguments."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from llava.errors import InputError
from llava.model.pruning.base import StageView, VisualSpan
from llava.model.pruning.dart import DART
from llava.model.pruning.registry import parse_method
from tests import helpers
from tests.test_model_parity import IMAGE_TOKEN_ID, NUM_PATCHES, QUESTIONS, prompts_for


def release_rule(keys: torch.Tensor, features: torch.Tensor, start: int, length: int, keep: int,
                 pivots: int = 4) -> list[int]:
    """The released `get_retained_image_token` restated from METHODS-NEWER.md, loop for loop, on one unpadded
    sample: keys (N, Hkv * hd) post-RoPE, features (N, D) already final-normed, the image at start..start+length.
    Returns the kept image tokens' indices in the sequence, sorted. Ties (none on random inputs): lower index."""
    quota = min(keep, length - pivots) // (2 * pivots)
    image_norm = keys[start : start + length].float().norm(p=1, dim=-1)
    query_norm = keys[start + length :].float().norm(p=1, dim=-1)
    image_indices = (torch.sort(image_norm, descending=True, stable=True).indices[:pivots] + start).tolist()
    query_indices = (torch.sort(query_norm, descending=True, stable=True).indices[:pivots] + start + length).tolist()
    indices_set = set(image_indices + query_indices)
    valid_indices = set(range(start, start + length))
    valid_indices.difference_update(image_indices)
    for item in list(indices_set.copy()):
        valid_indices_list = list(valid_indices)
        cos_sim = -F.cosine_similarity(features[item].float(), features[valid_indices_list].float(), dim=-1)
        top = torch.sort(cos_sim, descending=True, stable=True).indices[:quota]
        real = [valid_indices_list[i] for i in top.tolist()]
        indices_set.update(real)
        valid_indices.difference_update(real)
    indices_set.difference_update(query_indices)
    return sorted(indices_set)


def view_of(keys, features, spans, key_mask) -> StageView:
    return StageView(2, 0, spans, key_mask, features, features, attention=None, keys=lambda: keys,
                     final_norm=lambda x: x)


def kept(spec: str, view: StageView) -> list[list[int]]:
    return [cut.keep.tolist() for cut in parse_method(spec).cut(view)]


# ---- known answer ------------------------------------------------------------------------------------------

def degrees(angle: float) -> list[float]:
    return [math.cos(math.radians(angle)), math.sin(math.radians(angle))]


def hand_built_sample() -> StageView:
    """4 padding rows, then 48 real tokens (indices in the unpadded sequence): system 0-34, an image of 9 tokens
    35-43 (local 0-8), text 44-47. Keys (2 heads x 2 dims), L1 norms:
      image: 36 [3,-3,2,1] 9 | 40 [8,0,0,0] 8 | 43 [2,2,2,2] 8 | 39 [7.5,0,0,0] 7.5 | the others 1;
      text:  45 [0,7,0,0] 7 | 47 [-2,-2,-1,-1] 6 | 44, 46: 1;  system token 0 and the padding: 100 (never pivots).
    pivots=2: image pivots 36, then 40 (40 and 43 tie at 8: the lower index). By the L2 norm they would be 40 (8)
    and 39 (7.5): the L1 norm matters. Text pivots 45, 47.
    Features (final_norm = identity) on the unit circle, so a cosine is the cosine of an angle difference:
      35 270 | 36 10 | 37 255 | 38 185 | 39 30 | 40 0 | 41 60 | 42 200 | 43 165 || 45 90 | 47 80 (degrees)."""
    pad, real = 4, 48
    keys = torch.ones(pad + real, 4) / 4  # L1 norm 1
    keys[:pad] = 25.0
    keys[pad + 0] = 25.0
    for index, row in {36: [3, -3, 2, 1], 40: [8, 0, 0, 0], 43: [2, 2, 2, 2], 39: [7.5, 0, 0, 0],
                       45: [0, 7, 0, 0], 47: [-2, -2, -1, -1]}.items():
        keys[pad + index] = torch.tensor(row, dtype=torch.float32)
    features = torch.tensor([degrees(0)] * (pad + real))
    for index, angle in {35: 270, 36: 10, 37: 255, 38: 185, 39: 30, 40: 0, 41: 60, 42: 200, 43: 165,
                         45: 90, 47: 80}.items():
        features[pad + index] = torch.tensor(degrees(angle))
    key_mask = torch.arange(pad + real) >= pad
    return view_of(keys, features, [VisualSpan(pad + 35, 9, (3, 3), torch.arange(9))], key_mask)


def test_known_answer_with_the_release_set_order_of_the_pivots():
    # keep=4, pivots=2: quota = min(4, 9 - 2) // 4 = 1 token per pivot; 2 + 4 x 1 = 6 tokens kept.
    # Pivot order: list(set([36, 40] + [45, 47])) in CPython is [40, 36, 45, 47] (a 4-int set has 8 slots,
    # slot = value mod 8: 40 -> 0, 36 -> 4, 45 -> 5, 47 -> 7), neither sorted nor insertion order (36, 40, ...).
    assert list(set([36, 40, 45, 47])) == [40, 36, 45, 47]
    # Candidates 35, 37, 38, 39, 41, 42, 43. Angle to each (the largest = the least similar):
    #   40 (0):   35 90 | 37 105 | 38 175 | 39 30 | 41 60 | 42 160 | 43 165  -> 38
    #   36 (10):  35 100 | 37 115 | (38 175) | 39 20 | 41 50 | 42 170 | 43 155 -> 42 (38 is taken)
    #   45 (90):  35 180 | 37 165 | 39 60 | 41 30 | 43 75                   -> 35
    #   47 (80):  37 175 | 39 50 | 41 20 | 43 85                            -> 37
    # Kept: pivots 36, 40 and 38, 42, 35, 37 = 35 36 37 38 40 42, local 0 1 2 3 5 7. In sorted (= insertion)
    # order 36 would take 38 first and 40 then 43: 35 36 37 38 40 43. In the order of the padded rows (40, 44,
    # 49, 51: list(set(...)) = [40 (36), 49 (45), 51 (47), 44 (40)]) 36 takes 38, 45 35, 47 37, 40 43: that set
    # again. Only the indices in the unpadded sequence, in CPython's set order, give the release's answer.
    view = hand_built_sample()
    assert kept("dart:keep=4,pivots=2", view) == [[0, 1, 2, 3, 5, 7]]
    assert release_rule(view.keys()[4:], view.hidden[4:], 35, 9, keep=4, pivots=2) == [35, 36, 37, 38, 40, 42]


def test_the_text_pivots_pick_by_their_own_features():
    # The text pivots 45 and 47 turned to 185 degrees. 40 takes 38 and 36 takes 42, as before; then
    #   45 (185): 35 85 | 37 70 | 39 155 | 41 125 | 43 20 -> 39
    #   47 (185): 35 85 | 37 70 | 41 125 | 43 20         -> 41
    # Kept 36 38 39 40 41 42, local 1 3 4 5 6 7.
    view = hand_built_sample()
    view.hidden[4 + 45] = torch.tensor(degrees(185))
    view.hidden[4 + 47] = torch.tensor(degrees(185))
    assert kept("dart:keep=4,pivots=2", view) == [[1, 3, 4, 5, 6, 7]]


def test_quota_follows_the_pivot_count():
    # keep=8, pivots=2: quota = min(8, 7) // 4 = 1 (the span, not keep, limits it); keep=12 -> min(12, 7) // 4 = 1.
    view = hand_built_sample()
    assert kept("dart:keep=8,pivots=2", view) == kept("dart:keep=12,pivots=2", view) == [[0, 1, 2, 3, 5, 7]]


# ---- counts ------------------------------------------------------------------------------------------------

def random_sample(image_lengths: list[int], text: int = 20, prefix: int = 35, seed: int = 0, pad: int = 0):
    generator = torch.Generator().manual_seed(seed)
    spans, row = [], pad + prefix
    for length in image_lengths:
        spans.append(VisualSpan(row, length, (1, length), torch.arange(length)))
        row += length + 3  # three text tokens between images
    n = row - 3 + text
    keys = torch.randn(n, 16, generator=generator)
    features = torch.randn(n, 8, generator=generator)
    return view_of(keys, features, spans, torch.arange(n) >= pad)


@pytest.mark.parametrize("keep, count", [(64, 68), (128, 132), (192, 196)])
def test_a_576_token_image_keeps_4_plus_8_quota(keep, count):
    method = parse_method(f"dart:keep={keep}")
    view = random_sample([576])
    (cut,) = method.cut(view)
    assert len(cut.keep) == count == method.budget(576) == method.kept_count(576)
    assert cut.keep.tolist() == sorted(set(cut.keep.tolist()))
    start = view.spans[0].start
    assert (start + cut.keep).tolist() == release_rule(view.keys(), view.hidden, start, 576, keep)


def test_budget_near_the_whole_image():
    # min(keep, 576 - 4) // 8: keep 572 -> 71 (the release's 572 // 8), keep 576 -> still 71 (the release fails).
    assert parse_method("dart:keep=572").budget(576) == 4 + 8 * 71
    assert parse_method("dart:keep=576").budget(576) == 4 + 8 * 71
    assert parse_method("dart:keep=8").budget(576) == 12
    assert parse_method("dart:keep=16,pivots=2").budget(576) == 2 + 4 * 4


def test_each_image_has_its_own_pivots_and_quota_and_shares_the_text_pivots():
    view = random_sample([40, 30], seed=3, pad=2)  # quota = min(16, 36) // 8 = 2 and min(16, 26) // 8 = 2
    first, second = kept("dart:keep=16", view)
    assert len(first) == len(second) == 20
    # Each image alone (the other one's rows kept but not an image) gives the same answer, since the text
    # pivots are read from the tokens after the last image in both cases.
    alone = view_of(view.keys(), view.hidden, view.spans[1:], view.key_mask)
    assert kept("dart:keep=16", alone) == [second]
    first_span = view.spans[0]
    tail = view.spans[1].end  # the text after the last image
    keys = torch.cat([view.keys()[2 : first_span.end], view.keys()[tail:]])
    hidden = torch.cat([view.hidden[2 : first_span.end], view.hidden[tail:]])
    start = first_span.start - 2
    assert [i - start for i in release_rule(keys, hidden, start, 40, 16)] == first


def test_a_prompt_ending_in_its_image_has_no_text_pivots():
    view = random_sample([40], text=0, seed=4)  # the image is the last token: only the 4 image pivots pick
    (cut,) = kept("dart:keep=16", view)
    assert len(cut) == 4 + 4 * 2


# ---- against transformers' eager LLaVA ---------------------------------------------------------------------

class RecordingDART(DART):
    """DART that keeps a copy of what it was given and what it answered."""

    def select(self, keys, features, spans, text_rows, first_row):
        answer = super().select(keys, features, spans, text_rows, first_row)
        self.seen.append((keys.clone(), features.clone(), [s.start for s in spans], first_row, answer))
        return answer


def recording(spec: str) -> RecordingDART:
    method = RecordingDART(parse_method(spec).args)
    method.seen = []
    return method


@pytest.fixture(scope="module")
def hf_eager(tiny_llava_dir):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(
        tiny_llava_dir, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.mark.parametrize("k", [1, 2])
def test_keys_and_features_equal_eager_and_the_kept_set_is_the_release_rule(loaded, hf_eager, k):
    tokenizer, model, processor, _ = loaded
    prompts = prompts_for(tokenizer, QUESTIONS)  # three lengths: left padding in the batch
    pixel_values = processor(helpers.random_images(3, seed=31))
    recorder = recording(f"dart:k={k},keep=16")  # quota = min(16, 64 - 4) // 8 = 2: 20 tokens kept
    model.set_pruning(recorder)
    try:
        out = model(prompts, pixel_values)
        alone = [model(prompts[b : b + 1], pixel_values[b : b + 1]).stats.kept_in_llm[0] for b in range(3)]
    finally:
        model.set_pruning("none")

    ids, mask = helpers.hf_input_ids(prompts, NUM_PATCHES, IMAGE_TOKEN_ID)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # ours: 0.. over each sample's real tokens
    with torch.no_grad():
        reference = hf_eager(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, position_ids=positions,
                             output_hidden_states=True, use_cache=True)
        language_model = hf_eager.model.language_model
        keys = reference.past_key_values.layers[k - 1].keys  # (B, Hkv, N, hd): layer k-1's own keys after RoPE
        keys = keys.transpose(1, 2).reshape(*ids.shape, -1)  # (B, N, Hkv * hd) heads side by side
        features = language_model.norm(reference.hidden_states[k])  # output of layer k-1, final RMSNorm
    for b in range(3):
        seen_keys, seen_features, starts, first_row, _ = recorder.seen[b]
        real = mask[b].bool()
        assert first_row == int((~real).sum())
        assert_close(seen_keys[real], keys[b][real], atol=1e-5, rtol=1e-4)
        assert_close(seen_features[real], features[b][real], atol=1e-5, rtol=1e-4)
        start = int((ids[b][real] == IMAGE_TOKEN_ID).nonzero()[0])
        assert starts == [first_row + start]
        expected = release_rule(keys[b][real], features[b][real], start, NUM_PATCHES, keep=16)
        assert len(expected) == 20
        assert out.stats.kept_in_llm[b][0] == [i - start for i in expected]
        assert alone[b] == out.stats.kept_in_llm[b]  # batch equals single
    assert out.stats.seq_lens == [[int(m)] * k + [int(m) - 44] * (3 - k) for m in mask.sum(dim=1)]


# ---- LLaVA-NeXT --------------------------------------------------------------------------------------------

def test_next_chooses_over_the_whole_span_newline_tokens_included(loaded_next):
    from tests.test_next_parity import QUESTIONS as NEXT_QUESTIONS, SIZES, prompts_for as next_prompts

    tokenizer, model, processor, _ = loaded_next
    prompts = next_prompts(tokenizer, NEXT_QUESTIONS[:3])
    images = processor(helpers.random_images(3, seed=32, sizes=SIZES[:3]))  # 2x2, 2x1 and 1x2 crop grids
    spans = [span for (span,) in model.prepare_inputs(prompts, images).spans]
    recorder = recording("dart:keep=16")  # quota = min(16, L - 4) // 8 = 2 of an L-token span: 20 kept
    model.set_pruning(recorder)
    try:
        out = model(prompts, images)
    finally:
        model.set_pruning("none")
    dropped_newlines = 0
    for b, span in enumerate(spans):
        keys, features, starts, first_row, (local,) = recorder.seen[b]
        assert starts == [span.start] and span.length > NUM_PATCHES and span.newline.any()  # base, crops, newlines
        assert len(local) == 4 + 8 * 2
        rows = span.start + local
        assert out.keep_mask[b, span.start : span.end].nonzero()[:, 0].tolist() == local.tolist()
        # The released rule over the whole span (the sequence less its text), newline tokens as candidates.
        start = span.start - first_row
        assert (rows - first_row).tolist() == release_rule(keys[first_row:], features[first_row:], start, span.length, 16)
        newline = span.newline.nonzero()[:, 0]
        kept_newlines = int(torch.isin(newline, local).sum())
        dropped_newlines += len(newline) - kept_newlines
        assert len(out.stats.kept_in_llm[b][0]) == 20 - kept_newlines  # kept_ids leaves newline tokens out
    assert dropped_newlines > 0  # newline tokens are candidates like any other, not kept outside the budget


# ---- bad arguments -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("dart:keep=0", "dart:keep must be at least 1"),
    ("dart:keep=7", "dart:keep=7 is below 2 x pivots = 8"),
    ("dart:keep=5,pivots=3", "dart:keep=5 is below 2 x pivots = 6"),
    ("dart:pivots=0", "dart:pivots=0 must be at least 1"),
    ("dart:k=0", "dart:k=0 must be at least 1"),
    ("dart:kep=64", "unknown parameter 'kep' for method 'dart'; did you mean 'keep'?"),
    ("dart:keep=many", "dart:keep must be int"),
])
def test_bad_arguments_are_refused_in_one_line(spec, message):
    with pytest.raises(InputError) as error:
        parse_method(spec)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("spec, message", [
    ("dart:k=3,keep=16", "dart:k=3 is outside 1..2 for this 3-layer LLM"),
    ("dart:keep=65", "keep=65 is larger than the 64 visual tokens in each image"),
])
def test_arguments_that_do_not_fit_the_model_are_refused_in_one_line(loaded, spec, message):
    model = loaded[1]
    with pytest.raises(InputError) as error:
        model.set_pruning(spec)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert model.pruning.name == "none"


def test_an_image_too_small_for_one_pick_per_pivot_is_refused():
    method = parse_method("dart:keep=8")
    with pytest.raises(InputError, match="keeps no token beyond the pivots of 10 visual tokens"):
        method.check_model(3, 3, 10)
    method.check_model(3, 3, 12)  # 12 - 4 = 8: one pick per pivot
    method.check_model(3, 3, 10, anyres=True)  # NeXT: keep counts over the whole span, clamped to it


def test_the_spec_round_trips_and_the_method_says_what_it_reads():
    method = parse_method("dart")
    assert method.spec == "dart" and (method.args.k, method.args.keep, method.args.pivots) == (2, 128, 4)
    assert parse_method(method.spec).args == method.args
    assert method.layers == (2,) and method.acts == "in LLM"
    assert not method.reads_attention and method.reads_question and not method.renumbers and method.reads_keys
