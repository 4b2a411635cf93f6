"""The shipped model loads through transformers as well as through our loader, and both give the same logits."""

import pytest
import torch

from fastv.cli import SHIPPED_MODEL
from tests.helpers import hf_input_ids

pytestmark = pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(),
                                reason="the shipped model is not in this checkout")


def test_shipped_model_matches_transformers_on_a_test_question():
    from transformers import LlavaForConditionalGeneration

    from llava.conversation import build_prompt
    from llava.data import synthetic
    from llava.mm_utils import tokenizer_image_token
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(str(SHIPPED_MODEL))
    sample = synthetic.make_sample("test", 0)
    ids = tokenizer_image_token(build_prompt(sample.prompt), tokenizer)
    pixels = processor([sample.image])
    with torch.no_grad():
        ours = model([ids], pixels, use_cache=False, all_logits=True).logits[0]

    reference = LlavaForConditionalGeneration.from_pretrained(str(SHIPPED_MODEL), dtype=torch.float32).eval()
    input_ids, mask = hf_input_ids([ids], model.config.tokens_per_image, reference.config.image_token_index)
    with torch.no_grad():
        theirs = reference(input_ids=input_ids, attention_mask=mask, pixel_values=pixels).logits[0]

    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
