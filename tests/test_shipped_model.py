"""The shipped models load through transformers as well as through our loader, and both give the same logits."""

import pytest
import torch

from fastv.shipped import SHIPPED_MODEL, SHIPPED_NEXT_MODEL
from tests.helpers import hf_input_ids, hf_next_inputs


def shipped(folder):
    return pytest.mark.skipif(not (folder / "config.json").is_file(), reason=f"{folder.name} is not in this checkout")


def ours_and_prompt(folder, look):
    from llava.conversation import build_prompt
    from llava.data import synthetic
    from llava.mm_utils import tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(str(folder))
    sample = synthetic.make_sample("test", 0, look=look)
    ids = tokenizer_image_token(build_prompt(sample.prompt), tokenizer)
    images = processor([sample.image])
    with torch.no_grad():
        ours = model([ids], images, use_cache=False, all_logits=True).logits[0]
    return model, ids, images, ours


@shipped(SHIPPED_MODEL)
def test_shipped_model_matches_transformers_on_a_test_question():
    from transformers import LlavaForConditionalGeneration

    model, ids, pixels, ours = ours_and_prompt(SHIPPED_MODEL, "lattice")
    reference = LlavaForConditionalGeneration.from_pretrained(str(SHIPPED_MODEL), dtype=torch.float32).eval()
    input_ids, mask = hf_input_ids([ids], model.config.tokens_per_image, reference.config.image_token_index)
    with torch.no_grad():
        theirs = reference(input_ids=input_ids, attention_mask=mask, pixel_values=pixels).logits[0]

    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@shipped(SHIPPED_NEXT_MODEL)
def test_shipped_next_model_matches_transformers_on_a_high_resolution_question():
    from transformers import LlavaNextForConditionalGeneration

    model, ids, images, ours = ours_and_prompt(SHIPPED_NEXT_MODEL, "hr")
    assert model.config.anyres and model.config.patch_merge == "spatial_unpad" and images[0].pixel_values.shape[0] > 1
    reference = LlavaNextForConditionalGeneration.from_pretrained(str(SHIPPED_NEXT_MODEL), dtype=torch.float32).eval()
    inputs, _ = hf_next_inputs([ids], images, reference.config.image_token_index, model.config.vision.grid_size)
    with torch.no_grad():
        theirs = reference(**inputs).logits[0]

    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
