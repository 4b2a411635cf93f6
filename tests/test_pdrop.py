"""PyramidDrop: known answers worked out by hand (three stages, counts from the first stage's N0, ties, order,
NeXT's newline tokens as candidates), the per-stage counts of the release's lambda, the rows it ranks by
against transformers' eager attention on the tiny random checkpoints (the second stage's on the pruned,
renumbered sequence, by running transformers' layers by hand), batch == single, cached decoding ==
recompute, and one-line refusals of bad arguments."""

import pytest
import torch
from torch.testing import assert_close

from llava.errors import InputError
from llava.generate import generate
from llava.model.pruning.base import NEWLINE, StageView, VisualSpan, top_k_indices
from llava.model.pruning.pdrop import PDropArgs, PyramidDrop, stage_ratios
from llava.model.pruning.registry import parse_method
from tests import helpers
from tests.test_model_parity import IMAGE_TOKEN_ID, NUM_PATCHES, QUESTIONS, prompts_for

def pdrop(spec: str) -> PyramidDrop:
    return parse_method(spec)


class Recorder:
    """Wraps a StageView's `attention`: keeps every row the method read, with the stage and `of` it asked for."""

    def __init__(self):
        self.seen: list[tuple[int, str, torch.Tensor]] = []  # (stage, of, (H, N) row)

    def wrap(self, view: StageView) -> StageView:
        attention = view.attention

        def recorded(rows, of="previous"):
            assert rows.tolist() == [view.last_row]
            row = attention(rows, of)
            self.seen.append((view.stage, of, row[:, 0]))
            return row

        view.attention = recorded
        return view


class RecordingPDrop(PyramidDrop):
    """PyramidDrop that keeps the attention rows the model gave it (per stage, per sample, in call order)."""

    def cut(self, view):
        return super().cut(self.recorder.wrap(view))


def recording(spec: str) -> RecordingPDrop:
    method = RecordingPDrop(pdrop(spec).args)
    method.recorder = Recorder()
    return method


# ---- known answers, by hand ------------------------------------------------------------------------------------


def hand_view(stage: int, layout: tuple[int, int, int], sums: list[int], memo: dict) -> StageView:
    """One sample: `layout` = (system rows, image tokens, text rows after the image), the last text row the
    query. Two heads; the image tokens' head values add up to `sums` (in 16ths; mean = sum / 32). The system
    row 0 gets 0.9 in both heads: it is no candidate and must not matter."""
    system, image, text = layout
    N = system + image + text
    row = torch.zeros(2, N)
    row[:, 0] = 0.9
    for i, total in enumerate(sums):
        first = min(total, 6)  # head 0 takes up to 6/16, head 1 the rest: only the mean ranks
        row[0, system + i], row[1, system + i] = first / 16, (total - first) / 16

    def attention(rows, of="previous"):
        assert of == "next", "PyramidDrop ranks with the projections of the layer it prunes before"
        return row[:, None]  # (H, 1, N)

    def keys():
        raise AssertionError("PyramidDrop reads no keys of the previous layer")

    span = VisualSpan(system, image, (1, image), torch.arange(image))
    return StageView(stage + 1, stage, [span], torch.ones(N, dtype=torch.bool), torch.zeros(N, 4), torch.zeros(N, 4),
                     attention, keys, lambda x: x, memo)


def test_three_stages_known_answer_counts_from_the_first_n0_ties_low_and_order_kept():
    # lambda = 0.6, N0 = 10 image tokens: stage s keeps int(10 * 0.6^(s+1)) = int(6.0), int(3.6), int(2.16)
    # = 6, 3, 2. Counting from the current tokens instead would keep int(3 * 0.6) = 1 at the third stage.
    method = pdrop("pdrop:layers=1,2,3,lambda=0.6")
    assert method.stage_budget(10) == [6, 3, 2]
    memo: dict = {}

    # Stage 0: system rows 0-1, image rows 2-11 (local 0-9), text rows 12-13. Head sums (16ths), per local:
    #   0: 6 (6 + 0: the largest single head value, but the mean ranks), 1: 10, 2: 2, 3: 8, 4: 9, 5: 8, 6: 1,
    #   7: 8, 8: 7, 9: 7.  Descending: 1 (10), 4 (9), 3, 5, 7 (8), then 8 and 9 tie at 7 for the last of the
    #   six places: the lower index, 8. Kept, in their order: 1, 3, 4, 5, 7, 8.
    cut = method.cut(hand_view(0, (2, 10, 2), [6, 10, 2, 8, 9, 8, 1, 8, 7, 7], memo))
    assert [c.keep.tolist() for c in cut] == [[1, 3, 4, 5, 7, 8]]
    assert memo == {"tokens": [10]}  # N0, kept for the stages to come

    # Stage 1: the six survivors are local 0-5 (rows 2-7). Sums: 8, 3, 9, 2, 1, 12. Top three: 5 (12), 2 (9),
    # 0 (8), returned in their order 0, 2, 5 (the original locals 1, 4, 8).
    cut = method.cut(hand_view(1, (2, 6, 2), [8, 3, 9, 2, 1, 12], memo))
    assert [c.keep.tolist() for c in cut] == [[0, 2, 5]]

    # Stage 2: three left (local 0-2). Sums 4, 4, 5: keep int(10 * 0.216) = 2 (not int(3 * 0.6) = 1): 2 (5), then
    # 0 and 1 tie at 4: 0. Kept 0, 2: the original locals 1 and 8 survive the pyramid.
    cut = method.cut(hand_view(2, (2, 3, 2), [4, 4, 5], memo))
    assert [c.keep.tolist() for c in cut] == [[0, 2]]


def test_every_image_keeps_its_own_pyramid_and_at_least_one_token():
    # Two images of 10 and 3 tokens, lambda = 0.6: stage 0 keeps 6 and int(1.8) = 1; stage 2 keeps int(2.16) = 2
    # and int(0.648) = 0 -> 1 (every method keeps at least one token of every image).
    method = pdrop("pdrop:layers=1,2,3,lambda=0.6")
    N = 2 + 10 + 1 + 3 + 2
    row = torch.zeros(1, N)
    row[0, 2:12] = torch.arange(10) / 16  # image A: the later, the higher
    row[0, 13:16] = torch.tensor([2, 3, 1]) / 16  # image B: local 1 highest
    spans = [VisualSpan(2, 10, (1, 10), torch.arange(10)), VisualSpan(13, 3, (1, 3), torch.arange(3))]
    memo: dict = {}
    view = StageView(1, 0, spans, torch.ones(N, dtype=torch.bool), torch.zeros(N, 4), torch.zeros(N, 4),
                     lambda rows, of="previous": row[:, None], None, lambda x: x, memo)
    assert [c.keep.tolist() for c in method.cut(view)] == [[4, 5, 6, 7, 8, 9], [1]]
    assert memo == {"tokens": [10, 3]}
    # Stage 2 with 3 and 1 tokens left (A: rows 2-4, B: row 6); A keeps its two highest, B its only token.
    N = 2 + 3 + 1 + 1 + 2
    row = torch.tensor([[0, 0, 0.3, 0.1, 0.2, 0, 0.5, 0, 0]])
    spans = [VisualSpan(2, 3, (1, 10), torch.tensor([7, 8, 9])), VisualSpan(6, 1, (1, 3), torch.tensor([1]))]
    view = StageView(3, 2, spans, torch.ones(N, dtype=torch.bool), torch.zeros(N, 4), torch.zeros(N, 4),
                     lambda rows, of="previous": row[:, None], None, lambda x: x, memo)
    assert [c.keep.tolist() for c in method.cut(view)] == [[0, 2], [0]]


def test_next_newline_tokens_are_candidates_ranked_with_the_rest():
    # A NeXT image of 6 tokens: patches at locals 0, 1, 3, 4 and newline tokens at 2 and 5; N0 = 6 counts them.
    # lambda = 0.5, one stage: keep int(6 * 0.5) = 3. Scores: newline 2 the highest (.5), then patches 0 (.3)
    # and 4 (.2); patch 1 (.1) and newline 5 (0) go. FastV would keep both newline tokens outside its budget.
    method = pdrop("pdrop:layers=1,lambda=0.5")
    N = 1 + 6 + 1
    row = torch.tensor([[0.9, 0.3, 0.1, 0.5, 0.05, 0.2, 0.0, 0.0]])
    partition = torch.tensor([0, 0, NEWLINE, 0, 0, NEWLINE])
    span = VisualSpan(1, 6, (2, 2), torch.tensor([0, 1, NEWLINE, 2, 3, NEWLINE]), partition, (0, 0))
    view = StageView(1, 0, [span], torch.ones(N, dtype=torch.bool), torch.zeros(N, 4), torch.zeros(N, 4),
                     lambda rows, of="previous": row[:, None], None, lambda x: x, {})
    assert [c.keep.tolist() for c in method.cut(view)] == [[0, 2, 4]]


# ---- counts ----------------------------------------------------------------------------------------------------


def test_the_release_counts_and_other_lambdas():
    method = pdrop("pdrop")
    assert method.layers == (8, 16, 24) and method.args.lambda_ == 0.5
    assert stage_ratios(0.5, 3) == [0.5, 0.25, 0.125]  # the release's image_token_ratio_list
    assert method.stage_budget(576) == [288, 144, 72] and method.budget(576) == 72
    assert pdrop("pdrop:layers=8,16,24,lambda=0.5").spec == "pdrop"  # the defaults, written out
    # lambda 0.7: the scripts would write 0.7, 0.49, 0.343; 576 * them = 403.2, 282.24, 197.568.
    assert pdrop("pdrop:lambda=0.7").stage_budget(576) == [403, 282, 197]
    # ... and 100 * them = 70, 49, 34.3: 49, where the float power 0.7**2 would give 48.
    assert pdrop("pdrop:lambda=0.7").stage_budget(100) == [70, 49, 34] and int(100 * 0.7**2) == 48
    assert pdrop("pdrop:layers=2,12,lambda=0.25").stage_budget(576) == [144, 36]
    assert pdrop("pdrop:lambda=1").stage_budget(576) == [576, 576, 576]
    assert pdrop("pdrop:layers=1,2").stage_budget(64) == [32, 16]
    spec = "pdrop:layers=1,2,lambda=0.25"
    assert parse_method(spec).spec == spec  # the canonical spec round-trips


def test_what_it_declares():
    method = pdrop("pdrop")
    assert method.renumbers and method.reads_attention and method.reads_question and not method.reads_keys
    assert method.acts == "in LLM" and method.mode == "inplace"


def test_the_spec_key_is_lambda():
    # The field is PEP 8's lambda_ (a keyword cannot name a field); the spec writes and reads it as lambda.
    assert PyramidDrop(PDropArgs(lambda_=0.25)).spec == "pdrop:lambda=0.25"
    assert parse_method("pdrop:layers=8,16,24,lambda=0.5").spec == "pdrop"
    assert parse_method("pdrop:layers=1,2,lambda=0.25").spec == "pdrop:layers=1,2,lambda=0.25"


# ---- through the model: LLaVA-1.5 (3 LLM layers: stages before layers 1 and 2) --------------------------------


@pytest.fixture(scope="module")
def hf_eager(tiny_llava_dir):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(
        tiny_llava_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()


@pytest.fixture
def attach(loaded):
    """Set a method (a spec with `lambda=`, or a PyramidDrop) on the shared model for one test; 'none' after."""
    model = loaded[1]
    yield lambda method: model.set_pruning(pdrop(method) if isinstance(method, str) else method)
    model.set_pruning("none")


def image_rows(prompt: list[int], patches: int) -> torch.Tensor:
    """The rows of a one-image prompt's image in its unpadded input (the -200 becomes `patches` tokens)."""
    start = prompt.index(helpers.IMAGE_TOKEN_INDEX)
    return torch.arange(start, start + patches)


def layer_2_row_by_hand(hf, hidden: torch.Tensor) -> torch.Tensor:
    """transformers' eager layers 1 and 2 on `hidden` (1, n, D), layer 0's output at the rows stage 1 kept, with
    position ids 0..n-1 (renumbered): layer 2's attention row of the last token, (H, n)."""
    lm = hf.model.language_model
    n = hidden.shape[1]
    positions = torch.arange(n)[None]
    rope = lm.rotary_emb(hidden, positions)
    causal = torch.full((n, n), torch.finfo(hidden.dtype).min).triu(1)[None, None]  # (1, 1, n, n) additive
    with torch.no_grad():
        hidden = lm.layers[1](hidden, attention_mask=causal, position_ids=positions, position_embeddings=rope)
        _, weights = lm.layers[2].self_attn(lm.layers[2].input_layernorm(hidden), position_embeddings=rope,
                                            attention_mask=causal)
    return weights[0, :, -1]  # (H, n)


def test_rows_equal_eager_attention_of_the_next_layer_before_and_after_renumbering(loaded, hf_eager, attach):
    tokenizer, model, processor, _ = loaded
    prompts = prompts_for(tokenizer, QUESTIONS)  # mixed lengths: left padding in the batch
    pixel_values = processor(helpers.random_images(3, seed=51))
    method = attach(recording("pdrop:layers=1,2"))  # keep int(64 / 2) = 32, then int(64 / 4) = 16
    out = model(prompts, pixel_values)
    seen = method.recorder.seen
    assert [(stage, of) for stage, of, _ in seen] == [(0, "next")] * 3 + [(1, "next")] * 3
    ids, mask = helpers.hf_input_ids(prompts, NUM_PATCHES, IMAGE_TOKEN_ID)
    with torch.no_grad():
        batch = hf_eager(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, output_attentions=True)
    for b in range(3):
        # Stage 1 (before layer 1): nothing was dropped yet, so the row is transformers' own layer-1 attention.
        real = mask[b].bool()
        reference = batch.attentions[1][b, :, -1]  # (H, N)
        assert_close(seen[b][2][:, real], reference[:, real], atol=1e-5, rtol=1e-4)
        kept_1 = top_k_indices(reference[:, ids[b] == IMAGE_TOKEN_ID].mean(dim=0), 32)
        assert out.stats.kept_stages[0]["kept"][b][0] == kept_1.tolist()

        # Stage 2 (before layer 2): layer 2's attention on the sequence stage 1 left, positions renumbered 0..n-1.
        # transformers has no such run: take layer 0's output of the sample's own unpruned eager run, keep the
        # rows stage 1 kept, and run transformers' layers 1 and 2 on them by hand.
        rows = image_rows(prompts[b], NUM_PATCHES)
        n_input = len(prompts[b]) - 1 + NUM_PATCHES
        kept_rows = torch.cat([torch.arange(rows[0]), rows[kept_1], torch.arange(rows[-1] + 1, n_input)])
        with torch.no_grad():
            single = hf_eager(input_ids=ids[b : b + 1, real], pixel_values=pixel_values[b : b + 1],
                              output_hidden_states=True)
        reference = layer_2_row_by_hand(hf_eager, single.hidden_states[1][:, kept_rows])  # (H, n)
        row = seen[3 + b][2]
        assert row.shape[1] - reference.shape[1] == max(len(p) for p in prompts) - len(prompts[b])  # left padding
        assert_close(row[:, -reference.shape[1]:], reference, atol=1e-5, rtol=1e-4)
        image = torch.arange(rows[0], rows[0] + 32)  # stage 1's image rows in the pruned sequence
        kept_2 = top_k_indices(reference[:, image].mean(dim=0), 16)
        assert out.stats.kept_stages[1]["kept"][b][0] == kept_1[kept_2].tolist()


def test_cache_holds_what_each_layer_saw_and_decoding_continues_the_renumbered_positions(loaded, attach):
    tokenizer, model, processor, _ = loaded
    prompts = prompts_for(tokenizer, QUESTIONS)
    attach("pdrop:layers=1,2")
    out = model(prompts, processor(helpers.random_images(3, seed=52)))
    n = [len(p) - 1 + NUM_PATCHES for p in prompts]
    assert out.stats.seq_lens == [[m, m - 32, m - 48] for m in n]  # 64 image tokens, then 32, then 16
    assert out.cache.seq_lens() == [max(n), max(n) - 32, max(n) - 48]
    assert out.cache.next_position.tolist() == n
    # The next token sits at n in layer 0, n - 32 in layer 1, n - 48 in layer 2: the renumbered sequences.
    assert out.cache.position_shift[0] is None
    assert out.cache.position_shift[1].tolist() == [32] * 3 and out.cache.position_shift[2].tolist() == [48] * 3


def test_batch_equals_single_and_cached_decoding_equals_recompute(loaded, attach):
    tokenizer, model, processor, _ = loaded
    one_image = prompts_for(tokenizer, QUESTIONS)
    two_images = one_image[0][:3] + [helpers.IMAGE_TOKEN_INDEX] + one_image[0][3:]
    prompts = [two_images] + one_image[1:]
    pixel_values = processor(helpers.random_images(4, seed=53))
    image_of = [[0, 1], [2], [3]]
    attach("pdrop:layers=1,2,lambda=0.4")  # int(64 * 0.4) = 25, int(64 * 0.16) = 10 per image
    together = model(prompts, pixel_values)
    assert [[len(image) for image in sample] for sample in together.stats.kept_stages[0]["kept"]] == [[25, 25], [25], [25]]
    assert [[len(image) for image in sample] for sample in together.stats.kept_stages[1]["kept"]] == [[10, 10], [10], [10]]
    tokens = generate(model, prompts, pixel_values, max_new_tokens=10, use_cache=True).tokens
    assert generate(model, prompts, pixel_values, max_new_tokens=10, use_cache=False).tokens == tokens
    for b, images in enumerate(image_of):
        alone = model(prompts[b : b + 1], pixel_values[images])
        assert_close(together.logits[b], alone.logits[0], atol=1e-4, rtol=1e-4)
        assert [stage["kept"][b] for stage in together.stats.kept_stages] == [stage["kept"][0] for stage in alone.stats.kept_stages]
        assert generate(model, prompts[b : b + 1], pixel_values[images], max_new_tokens=10).tokens[0] == tokens[b]


# ---- through the model: LLaVA-NeXT ---------------------------------------------------------------------------


def test_next_ranks_the_whole_image_newline_tokens_included_by_eager_attention(loaded_next, tiny_next_dir):
    from transformers import LlavaNextForConditionalGeneration

    from tests.test_next_parity import SIZES, hf_inputs

    tokenizer, model, processor, _ = loaded_next
    prompts = prompts_for(tokenizer, QUESTIONS[:2])
    images = processor(helpers.random_images(2, seed=54, sizes=SIZES[:2]))
    spans = [sample[0] for sample in model.prepare_inputs(prompts, images).spans]
    model.set_pruning("pdrop:layers=1,2")
    try:
        out = model(prompts, images)
    finally:
        model.set_pruning("none")
    hf = LlavaNextForConditionalGeneration.from_pretrained(tiny_next_dir, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    inputs, mask = hf_inputs(prompts, images)
    with torch.no_grad():
        reference = hf(**inputs, output_attentions=True).attentions[1][:, :, -1]  # (B, H, N): layer 1's last row
    dropped_newline = False
    for b, span in enumerate(spans):
        n0 = out.stats.visual_tokens[b][0]  # the whole packed image, newline tokens included
        assert span.length == n0 and int(span.newline.sum()) == out.stats.newline_tokens[b][0] > 0
        n = int(mask[b].sum())
        assert out.stats.seq_lens[b] == [n, n - (n0 - n0 // 2), n - (n0 - n0 // 4)]
        keep = torch.zeros(span.length, dtype=torch.bool)
        keep[top_k_indices(reference[b, :, span.start : span.end].mean(dim=0), n0 // 2)] = True
        assert out.stats.kept_stages[0]["kept"][b][0] == sorted(span.kept_ids(keep))
        dropped_newline |= bool((span.newline & ~keep).any())
    assert dropped_newline  # on this model some newline tokens rank too low to stay: they are candidates


# ---- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ("pdrop:layers=3,2", "pdrop:layers=3,2 must be strictly increasing"),
    ("pdrop:layers=2,2", "pdrop:layers=2,2 must be strictly increasing"),
    ("pdrop:layers=0,2", "pdrop:layers=0,2 must all be at least 1"),
    ("pdrop:lambda=0", "pdrop:lambda is the share each stage keeps and must be in (0, 1], got 0.0"),
    ("pdrop:lambda=1.5", "pdrop:lambda is the share each stage keeps and must be in (0, 1], got 1.5"),
    ("pdrop:lambda=-0.5", "must be in (0, 1], got -0.5"),
    ("pdrop:lambda=nan", "must be in (0, 1], got nan"),
])
def test_bad_arguments_are_refused_in_one_line(spec, message):
    with pytest.raises(InputError) as error:
        pdrop(spec)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_no_layers_is_refused_in_one_line():
    with pytest.raises(InputError) as error:
        PDropArgs(layers=())
    assert str(error.value) == "pdrop:layers needs at least one layer, e.g. pdrop:layers=8,16,24"


def test_layers_the_model_lacks_and_empty_stages_are_refused_in_one_line(loaded):
    model = loaded[1]
    with pytest.raises(InputError) as error:
        model.set_pruning("pdrop")  # the release's 8,16,24 on the 3-layer tiny LLM
    assert str(error.value) == ("pdrop:layers=8,16,24 is outside 1..2 for this 3-layer LLM; the default 8,16,24 is for"
                                " 32 layers: on a shallower LLM give the layers explicitly, e.g. pdrop:layers=1,2")
    with pytest.raises(InputError) as error:
        model.set_pruning("pdrop:layers=1,3")
    assert "pdrop:layers=1,3 is outside 1..2 for this 3-layer LLM" in str(error.value)
    with pytest.raises(InputError) as error:
        model.set_pruning(pdrop("pdrop:layers=1,2,lambda=0.1"))  # int(64 * 0.1) = 6, int(64 * 0.01) = 0
    assert str(error.value) == ("pdrop:layers=1,2,lambda=0.1 keeps int(64 * 0.1^2) = 0 tokens of 64 visual tokens"
                                " before layer 2; every method keeps at least one (raise lambda or use fewer layers)")
    assert "\n" not in str(error.value) and model.pruning.name == "none"
    model.set_pruning("pdrop:layers=1,2").check_model(24, 32, 576)  # the same method fits a 32-layer LLM
    model.set_pruning("none")
    pdrop("pdrop").check_model(24, 32, 576)
