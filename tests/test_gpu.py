"""Half-precision and quantized runs on a CUDA device (skipped where there is none, as in CI)."""

import pytest
import torch

from llava.generate import generate
from llava.model.builder import load_pretrained_model
from tests import helpers
from tests.test_model_parity import IMAGE_TOKEN_ID, NUM_PATCHES, QUESTIONS, prompts_for

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


@pytest.mark.parametrize("spec", ["fastv:k=2,keep=16", "fastervlm:keep=16"])
def test_pruned_generation_on_cuda_equals_batch_and_single(tiny_llava_dir, spec):
    tokenizer, model, processor, _ = load_pretrained_model(str(tiny_llava_dir), device="cuda", dtype=torch.float16)
    model.set_pruning(spec)
    prompts = prompts_for(tokenizer, QUESTIONS)
    pixel_values = processor(helpers.random_images(3, seed=72)).cuda()
    together = generate(model, prompts, pixel_values, max_new_tokens=8).tokens
    cached_vs_recomputed = generate(model, prompts, pixel_values, max_new_tokens=8, use_cache=False).tokens
    assert together == cached_vs_recomputed
    assert all(len(t) == 8 for t in together)


def test_four_bit_on_cuda(tiny_llava_dir):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    tokenizer, model, processor, _ = load_pretrained_model(str(tiny_llava_dir), device="cuda", load_4bit=True)
    prompts = prompts_for(tokenizer, QUESTIONS[:1])
    pixel_values = processor(helpers.random_images(1, seed=73)).cuda()
    assert torch.isfinite(model(prompts, pixel_values).logits).all()
