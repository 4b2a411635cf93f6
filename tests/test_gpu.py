"""Half-precision and quantized runs on a CUDA device (skipped where there is none, as in CI)."""

import pytest
import torch

from llava.generate import generate
from llava.model.builder import load_pretrained_model
from tests import helpers
from tests.test_model_parity import IMAGE_TOKEN_ID, NUM_PATCHES, QUESTIONS, prompts_for
from tests.test_pruning_contracts import VARIANTS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is visible"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_transformers_on_cuda(tiny_llava_dir, dtype):
    from transformers import LlavaForConditionalGeneration

    tokenizer, model, processor, _ = load_pretrained_model(str(tiny_llava_dir), device="cuda", dtype=dtype)
    reference = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=dtype).cuda().eval()
    prompts = prompts_for(tokenizer, QUESTIONS)
    pixel_values = processor(helpers.random_images(3, seed=71)).cuda()
    ids, mask = helpers.hf_input_ids(prompts, NUM_PATCHES, IMAGE_TOKEN_ID)
    with torch.no_grad():
        expected = reference(input_ids=ids.cuda(), attention_mask=mask.cuda(), pixel_values=pixel_values.to(dtype)).logits
    ours = model(prompts, pixel_values, all_logits=True)
    real = mask.bool().cuda()
    tolerance = 2e-2 if dtype == torch.float16 else 6e-2
    torch.testing.assert_close(ours.logits[real].float(), expected[real].float(), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("spec", VARIANTS)
def test_every_method_on_cuda_batch_equals_single_and_cache_equals_recompute(tiny_llava_dir, spec):
    tokenizer, model, processor, _ = load_pretrained_model(str(tiny_llava_dir), device="cuda", dtype=torch.float32)
    model.set_pruning(spec.format(keep=16))
    prompts = prompts_for(tokenizer, QUESTIONS)
    pixel_values = processor(helpers.random_images(3, seed=72)).cuda()
    together = generate(model, prompts, pixel_values, max_new_tokens=8).tokens
    assert together == generate(model, prompts, pixel_values, max_new_tokens=8, use_cache=False).tokens
    for b in range(3):
        assert generate(model, prompts[b : b + 1], pixel_values[b : b + 1], max_new_tokens=8).tokens[0] == together[b]


def test_four_bit_on_cuda(tiny_llava_dir):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    tokenizer, model, processor, _ = load_pretrained_model(str(tiny_llava_dir), device="cuda", load_4bit=True)
    prompts = prompts_for(tokenizer, QUESTIONS[:1])
    pixel_values = processor(helpers.random_images(1, seed=73)).cuda()
    assert torch.isfinite(model(prompts, pixel_values).logits).all()
