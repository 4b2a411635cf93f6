"""Parity with transformers: with pruning off, our LLaVA is transformers' LLaVA (fp32, 1e-4)."""

import pytest
import torch
from torch.testing import assert_close

from llava.conversation import build_prompt
from llava.generate import generate
from llava.mm_utils import ImageProcessor, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from tests import helpers

QUESTIONS = ["what is in this image ?", "describe it", "how many red left ? answer yes or no"]
NUM_PATCHES = 64
IMAGE_TOKEN_ID = 319


def prompts_for(tokenizer, questions):
    return [tokenizer_image_token(build_prompt(q), tokenizer) for q in questions]


def hf_logits(hf, prompts, pixel_values):
    ids, mask = helpers.hf_input_ids(prompts, NUM_PATCHES, IMAGE_TOKEN_ID)
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask, pixel_values=pixel_values).logits, mask.bool()


def test_logits_match_transformers_single(loaded, hf_reference):
    tokenizer, model, processor, _ = loaded
    for question, image in zip(QUESTIONS, helpers.random_images(3, seed=1)):
        prompt = prompts_for(tokenizer, [question])
        pixel_values = processor([image])
        ours = model(prompt, pixel_values, all_logits=True).logits
        reference, _ = hf_logits(hf_reference, prompt, pixel_values)
        assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def test_logits_match_transformers_batched_mixed_lengths(loaded, hf_reference):
    tokenizer, model, processor, _ = loaded
    prompts = prompts_for(tokenizer, QUESTIONS)
    assert len({len(p) for p in prompts}) == 3
    pixel_values = processor(helpers.random_images(3, seed=2))
    out = model(prompts, pixel_values, all_logits=True)
    reference, mask = hf_logits(hf_reference, prompts, pixel_values)
    assert torch.equal(out.key_mask, mask)
    assert_close(out.logits[mask], reference[mask], atol=1e-4, rtol=1e-4)


def test_vision_tower_matches_clip_hidden_states(loaded, hf_reference):
    _, model, processor, _ = loaded
    pixel_values = processor(helpers.random_images(2, seed=3))
    with torch.no_grad():
        hidden = hf_reference.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    ours = model.vision_tower(pixel_values, select_layer=-2)
    assert_close(ours.features, hidden[-2][:, 1:], atol=1e-5, rtol=1e-5)


def test_image_processor_matches_clip_image_processor(tiny_llava_dir):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    reference = CLIPImageProcessorPil.from_pretrained(tiny_llava_dir)
    ours = ImageProcessor.from_folder(tiny_llava_dir)
    for image in helpers.random_images(4, seed=4):
        square = ours.preprocess(image)
        padded = __import__("llava.mm_utils", fromlist=["expand_to_square"]).expand_to_square(image, ours.background)
        expected = torch.as_tensor(reference(images=[padded], return_tensors="np")["pixel_values"][0])
        assert_close(square, expected, atol=1e-5, rtol=1e-5)


def _hf_greedy(hf, prompts, pixel_values, new_tokens):
    ids, mask = helpers.hf_input_ids(prompts, NUM_PATCHES, IMAGE_TOKEN_ID)
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, do_sample=False,
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=3)
    return out[:, ids.shape[1]:].tolist()


def test_greedy_generation_matches_transformers_single_and_batched(loaded, hf_reference):
    tokenizer, model, processor, _ = loaded
    prompts = prompts_for(tokenizer, QUESTIONS)
    pixel_values = processor(helpers.random_images(3, seed=5))
    expected = _hf_greedy(hf_reference, prompts, pixel_values, 20)
    ours_batched = generate(model, prompts, pixel_values, max_new_tokens=20).tokens
    assert ours_batched == expected
    for b in range(3):
        single = generate(model, prompts[b : b + 1], pixel_values[b : b + 1], max_new_tokens=20).tokens
        assert single == _hf_greedy(hf_reference, prompts[b : b + 1], pixel_values[b : b + 1], 20)
        assert single[0] == ours_batched[b]


def test_original_llava_layout_loads_and_matches(tiny_llava_dir, loaded, tmp_path):
    helpers.to_original_layout(tiny_llava_dir, tmp_path / "llava-v1.5-tiny", tmp_path / "clip")
    tokenizer, original, processor, _ = load_pretrained_model(str(tmp_path / "llava-v1.5-tiny"))
    _, hf_layout, _, _ = loaded
    for (name, a), (_, b) in zip(sorted(original.state_dict().items()), sorted(hf_layout.state_dict().items())):
        assert torch.equal(a, b), name
    prompts = prompts_for(tokenizer, QUESTIONS[:1])
    pixel_values = processor(helpers.random_images(1, seed=6))
    assert torch.equal(original(prompts, pixel_values).logits, hf_layout(prompts, pixel_values).logits)


def test_vision_tower_flag_overrides_mm_vision_tower(tiny_llava_dir, tmp_path):
    helpers.to_original_layout(tiny_llava_dir, tmp_path / "ckpt", tmp_path / "clip")
    moved = tmp_path / "elsewhere"
    (tmp_path / "clip").rename(moved)
    load_pretrained_model(str(tmp_path / "ckpt"), vision_tower=str(moved))


@pytest.mark.parametrize("rope_scaling", [
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 64},
])
def test_rope_scaling_matches_transformers(tmp_path, rope_scaling):
    from transformers import LlavaForConditionalGeneration

    helpers.make_tiny_llava(tmp_path, rope_scaling=rope_scaling, rope_theta=500000.0)
    reference = LlavaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tokenizer, model, processor, _ = load_pretrained_model(str(tmp_path))
    assert model.config.text.rope_type == rope_scaling["rope_type"]
    prompts = prompts_for(tokenizer, QUESTIONS[:1])
    pixel_values = processor(helpers.random_images(1, seed=7))
    expected, _ = hf_logits(reference, prompts, pixel_values)
    assert_close(model(prompts, pixel_values, all_logits=True).logits, expected, atol=1e-4, rtol=1e-4)
