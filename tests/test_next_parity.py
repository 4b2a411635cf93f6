"""Parity with transformers for LLaVA-NeXT: with pruning off, our anyres model is transformers'
LlavaNextForConditionalGeneration (fp32, 1e-4), single and batched, over images of four aspect
ratios; greedy generations are identical; the original LLaVA-NeXT layout loads to the same model."""

import pytest
import torch
from torch.testing import assert_close

from llava.conversation import build_prompt
from llava.generate import generate
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_pretrained_model
from tests import helpers

QUESTIONS = ["what is in this image ?", "describe it", "how many red left ? answer yes or no", "read the word"]
IMAGE_TOKEN_ID = 319
SIDE = 8  # 112 px / patch 14
# (width, height): 4:3, 9:14, square (small: fits every canvas, the least wasteful wins), 3:1
SIZES = ((160, 120), (90, 140), (112, 112), (300, 100))


def prompts_for(tokenizer, questions):
    return [tokenizer_image_token(build_prompt(q), tokenizer) for q in questions]


def hf_inputs(prompts, images):
    return helpers.hf_next_inputs(prompts, images, IMAGE_TOKEN_ID, SIDE)


def test_the_four_images_use_different_crop_grids(loaded_next):
    _, _, processor, _ = loaded_next
    images = processor(helpers.random_images(4, seed=1, sizes=SIZES))
    assert [i.grid for i in images] == [(2, 2), (2, 1), (1, 2), (1, 3)]


def test_preprocessing_matches_llava_next_image_processor(tiny_next_dir, loaded_next):
    transformers = pytest.importorskip("transformers")
    processor_class = getattr(transformers, "LlavaNextImageProcessorPil", None)
    if processor_class is None:
        pytest.skip("this transformers has no LlavaNextImageProcessorPil")
    reference = processor_class.from_pretrained(tiny_next_dir)
    _, _, processor, _ = loaded_next
    for image in helpers.random_images(4, seed=2, sizes=SIZES):
        (ours,) = processor([image])
        theirs = reference(images=[image], return_tensors="pt")
        assert tuple(theirs["image_sizes"][0].tolist()) == ours.image_size
        assert_close(ours.pixel_values, theirs["pixel_values"][0], atol=1e-5, rtol=1e-5)


def test_logits_match_transformers_single(loaded_next, hf_next_reference):
    tokenizer, model, processor, _ = loaded_next
    for question, image in zip(QUESTIONS, helpers.random_images(4, seed=3, sizes=SIZES)):
        prompt = prompts_for(tokenizer, [question])
        images = processor([image])
        ours = model(prompt, images, all_logits=True).logits
        inputs, _ = hf_inputs(prompt, images)
        with torch.no_grad():
            reference = hf_next_reference(**inputs).logits
        assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def test_logits_match_transformers_batched_mixed_aspect_ratios(loaded_next, hf_next_reference):
    tokenizer, model, processor, _ = loaded_next
    prompts = prompts_for(tokenizer, QUESTIONS)
    images = processor(helpers.random_images(4, seed=4, sizes=SIZES))
    out = model(prompts, images, all_logits=True)
    assert len(set(out.stats.visual_tokens[b][0] for b in range(4))) >= 3  # different token counts in one batch
    inputs, mask = hf_inputs(prompts, images)
    with torch.no_grad():
        reference = hf_next_reference(**inputs).logits
    assert torch.equal(out.key_mask, mask)
    assert_close(out.logits[mask], reference[mask], atol=1e-4, rtol=1e-4)


def test_greedy_generation_matches_transformers_single_and_batched(loaded_next, hf_next_reference):
    tokenizer, model, processor, _ = loaded_next
    prompts = prompts_for(tokenizer, QUESTIONS)
    images = processor(helpers.random_images(4, seed=5, sizes=SIZES))

    def theirs(prompts, images):
        inputs, _ = hf_inputs(prompts, images)
        with torch.no_grad():
            out = hf_next_reference.generate(**inputs, do_sample=False, max_new_tokens=20, min_new_tokens=20, pad_token_id=3)
        return out[:, inputs["input_ids"].shape[1]:].tolist()

    batched = generate(model, prompts, images, max_new_tokens=20).tokens
    assert batched == theirs(prompts, images)
    for b in range(4):
        single = generate(model, prompts[b : b + 1], images[b : b + 1], max_new_tokens=20).tokens
        assert single == theirs(prompts[b : b + 1], images[b : b + 1])
        assert single[0] == batched[b]


def test_original_llava_next_layout_loads_and_matches(tiny_next_dir, loaded_next, tmp_path):
    helpers.to_original_layout(tiny_next_dir, tmp_path / "llava-v1.6-tiny", tmp_path / "clip")
    tokenizer, original, processor, _ = load_pretrained_model(str(tmp_path / "llava-v1.6-tiny"))
    _, hf_layout, hf_processor, _ = loaded_next
    assert original.config == hf_layout.config  # pinpoints read back as [height, width], same merge
    for (name, a), (_, b) in zip(sorted(original.state_dict().items()), sorted(hf_layout.state_dict().items())):
        assert torch.equal(a, b), name
    prompts = prompts_for(tokenizer, QUESTIONS[:2])
    pictures = helpers.random_images(2, seed=6, sizes=SIZES[1:])
    images = processor(pictures)
    assert all(torch.equal(a.pixel_values, b.pixel_values) for a, b in zip(images, hf_processor(pictures)))
    assert torch.equal(original(prompts, images).logits, hf_layout(prompts, images).logits)
