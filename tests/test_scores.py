"""The scores pruning methods rank by equal transformers' eager attention maps, and known answers hold."""

import pytest
import torch
from torch.testing import assert_close

from llava.model.pruning.base import VisionInputs, VisualSpan, top_k_indices
from llava.model.pruning.fastervlm import FasterVLM
from llava.model.pruning.fastv import FastV
from llava.model.pruning.registry import parse_method
from tests import helpers
from tests.test_model_parity import IMAGE_TOKEN_ID, NUM_PATCHES, QUESTIONS, prompts_for


@pytest.fixture(scope="module")
def hf_eager(tiny_llava_dir):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(
        tiny_llava_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()


class RecordingFastV(FastV):
    """FastV that keeps a copy of the attention rows it was given."""

    def select(self, attention, spans):
        self.seen.append(attention)
        return super().select(attention, spans)


@pytest.mark.parametrize("k", [1, 2])
def test_fastv_score_equals_eager_last_row(loaded, hf_eager, k):
    tokenizer, model, processor, _ = loaded
    prompts = prompts_for(tokenizer, QUESTIONS)  # mixed lengths: left padding in the batch
    pixel_values = processor(helpers.random_images(3, seed=11))
    recorder = RecordingFastV(parse_method(f"fastv:k={k},keep=16").args)
    recorder.seen = []
    model.set_pruning(recorder)
    try:
        out = model(prompts, pixel_values)
    finally:
        model.set_pruning("none")
    ids, mask = helpers.hf_input_ids(prompts, NUM_PATCHES, IMAGE_TOKEN_ID)
    with torch.no_grad():
        attentions = hf_eager(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, output_attentions=True).attentions
    reference = attentions[k - 1][:, :, -1, :]  # (B, H, N)
    for b in range(3):
        real = mask[b].bool()
        assert_close(recorder.seen[b][:, real], reference[b][:, real], atol=1e-5, rtol=1e-4)
        image = ids[b] == IMAGE_TOKEN_ID
        expected_kept = top_k_indices(reference[b][:, image].mean(dim=0), 16)
        assert out.stats.kept_in_llm[b][0] == expected_kept.tolist()


def test_fastervlm_score_equals_eager_clip_cls_row(loaded, hf_eager):
    _, model, processor, _ = loaded
    pixel_values = processor(helpers.random_images(2, seed=12))
    select = model.config.vision.layer_index(-2)
    probes = model.vision_tower(pixel_values, select_layer=-2, attention_layers=(select,)).probes
    with torch.no_grad():
        attentions = hf_eager.model.vision_tower(pixel_values, output_attentions=True).attentions
    reference = attentions[-2][:, :, 0, 1:]  # select layer -2: CLS query over the patches, (B, H, P)
    assert_close(probes[select].cls_attention, reference, atol=1e-6, rtol=1e-5)

    model.set_pruning("fastervlm:keep=10")
    try:
        stats = model.prepare_inputs([[1, -200, 5], [1, -200, 6]], pixel_values).stats
    finally:
        model.set_pruning("none")
    for b in range(2):
        assert stats.kept[b][0] == top_k_indices(reference[b].mean(dim=0), 10).tolist()


def test_top_k_breaks_ties_towards_lower_index_and_returns_raster_order():
    scores = torch.tensor([0.1, 0.5, 0.3, 0.5, 0.3, 0.9])
    assert top_k_indices(scores, 3).tolist() == [1, 3, 5]
    assert top_k_indices(scores, 4).tolist() == [1, 2, 3, 5]  # 0.3 tie: index 2 before 4


def test_fastv_known_answer_per_image_and_mean_over_heads():
    # 2 heads, 14 tokens: system 0-1, image A 2-6, text 7, image B 8-12, last token 13.
    attention = torch.zeros(2, 14)
    attention[0, [3, 5, 9]] = 1.0
    attention[1, [4, 5, 12, 8]] = torch.tensor([0.8, 0.2, 0.9, 0.1])
    # head means: 3 -> .5, 4 -> .4, 5 -> .6 | 9 -> .5, 12 -> .45, 8 -> .05
    spans = [VisualSpan(2, 5, (1, 5), torch.arange(5)), VisualSpan(8, 5, (1, 5), torch.arange(5))]
    kept = parse_method("fastv:keep=2").select(attention, spans)
    assert [k.tolist() for k in kept] == [[1, 3], [1, 4]]  # local indices: A keeps 3,5; B keeps 9,12
    kept = parse_method("fastv:ratio=0.6").select(attention, spans)  # round(5 * 0.4) = 2
    assert [len(k) for k in kept] == [2, 2]


def test_fastervlm_known_answer():
    cls_attention = torch.zeros(3, 16)
    cls_attention[:, 7] = 0.9
    cls_attention[0, 2] = 0.6
    cls_attention[1, 12] = 0.3
    inputs = VisionInputs(torch.zeros(16, 4), {5: cls_attention}, {}, (4, 4), 0)
    assert FasterVLM(parse_method("fastervlm:keep=3").args).select(inputs).indices.tolist() == [2, 7, 12]


def test_uniform_is_a_spatially_uniform_grid():
    uniform = parse_method("uniform:keep=144")
    index = uniform.select(VisionInputs(torch.zeros(576, 4), {}, {}, (24, 24), 0)).indices
    assert sorted(set((index // 24).tolist())) == list(range(1, 24, 2))  # 12 rows, every other one
    assert sorted(set((index % 24).tolist())) == list(range(1, 24, 2))  # 12 columns
    index = parse_method("uniform:keep=36").select(VisionInputs(torch.zeros(576, 4), {}, {}, (24, 24), 0)).indices
    assert index.tolist() == [r * 24 + c for r in (2, 6, 10, 14, 18, 22) for c in (2, 6, 10, 14, 18, 22)]
    index = parse_method("uniform:keep=10").select(VisionInputs(torch.zeros(576, 4), {}, {}, (24, 24), 0)).indices
    assert len(set(index.tolist())) == 10 and index.tolist() == sorted(index.tolist())


def test_random_differs_between_images_and_repeats_for_one_image():
    method = parse_method("random:keep=8,seed=0")
    pick = lambda pixels: method.select(VisionInputs(torch.zeros(64, 4), {}, {}, (8, 8), 0, pixels)).indices.tolist()
    first, second = torch.zeros(3, 4, 4), torch.ones(3, 4, 4)
    assert pick(first) == pick(first.clone())
    assert pick(first) != pick(second)
    assert parse_method("random:keep=8,seed=1").select(
        VisionInputs(torch.zeros(64, 4), {}, {}, (8, 8), 0, first)).indices.tolist() != pick(first)
