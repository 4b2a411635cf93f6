"""llava-v1.6-mistral-7b's decoder is Llama's code path with Mistral's config: a tiny LLaVA-NeXT with a
MistralConfig decoder matches transformers' LlavaNextForConditionalGeneration (fp32, 1e-4) and greedy
generation, in the llava-hf and the original (llava_mistral) layout; its sliding window caps the context;
the presets have the published sizes."""

import json

import pytest
import torch
from torch.testing import assert_close

from llava.conversation import build_prompt
from llava.errors import CheckpointError
from llava.generate import generate
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_pretrained_model, read_checkpoint
from llava.model.llava_arch import LLAVA_PRESETS, LlavaForCausalLM
from tests import helpers

IMAGE_TOKEN_ID = 319
SIDE = 8  # 112 px / patch 14
WINDOW = 600  # longer than any sequence here: sliding and full attention agree
SIZES = ((160, 120), (90, 140))


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llava-next-mistral")
    helpers.make_tiny_llava_next(folder, seed=7, text_model="mistral", sliding_window=WINDOW)
    return folder


@pytest.fixture(scope="module")
def reference(mistral_dir):
    from transformers import LlavaNextForConditionalGeneration

    return LlavaNextForConditionalGeneration.from_pretrained(mistral_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def loaded(mistral_dir):
    return load_pretrained_model(str(mistral_dir))


def inputs_for(tokenizer, processor, questions, pictures):
    prompts = [tokenizer_image_token(build_prompt(q, "mistral_instruct"), tokenizer) for q in questions]
    images = processor(pictures)
    inputs, _ = helpers.hf_next_inputs(prompts, images, IMAGE_TOKEN_ID, SIDE)
    return prompts, images, inputs


def test_the_decoder_is_read_as_mistral_with_its_window_as_the_context(loaded, reference):
    _, model, _, context_len = loaded
    text = model.config.text
    assert reference.config.text_config.model_type == "mistral"
    assert (text.num_kv_heads, text.max_position_embeddings, context_len) == (2, WINDOW, WINDOW)


def test_logits_and_greedy_generation_match_transformers(loaded, reference):
    tokenizer, model, processor, _ = loaded
    pictures = helpers.random_images(2, seed=8, sizes=SIZES)
    prompts, images, inputs = inputs_for(tokenizer, processor, ["what is in this image ?", "describe it"], pictures)
    out = model(prompts, images, all_logits=True)
    with torch.no_grad():
        theirs = reference(**inputs)
        generated = reference.generate(**inputs, do_sample=False, max_new_tokens=12, min_new_tokens=12, pad_token_id=3)
    mask = inputs["attention_mask"].bool()
    assert torch.equal(out.key_mask, mask)
    assert_close(out.logits[mask], theirs.logits[mask], atol=1e-4, rtol=1e-4)
    assert generate(model, prompts, images, max_new_tokens=12).tokens == generated[:, mask.shape[1]:].tolist()


def test_the_original_llava_mistral_layout_loads_to_the_same_model(mistral_dir, loaded, tmp_path):
    helpers.to_original_layout(mistral_dir, tmp_path / "llava-v1.6-mistral-tiny", tmp_path / "clip")
    assert json.loads((tmp_path / "llava-v1.6-mistral-tiny" / "config.json").read_text())["model_type"] == "llava_mistral"
    _, original, _, _ = load_pretrained_model(str(tmp_path / "llava-v1.6-mistral-tiny"))
    _, hf_layout, _, _ = loaded
    assert original.config == hf_layout.config
    for (name, a), (_, b) in zip(sorted(original.state_dict().items()), sorted(hf_layout.state_dict().items())):
        assert torch.equal(a, b), name


def test_no_sliding_window_keeps_the_whole_context(tmp_path):
    helpers.make_tiny_llava_next(tmp_path, text_model="mistral", sliding_window=None)
    assert read_checkpoint(str(tmp_path)).config.text.max_position_embeddings == 1024


def test_other_decoders_are_refused_by_name(tmp_path):
    helpers.make_tiny_llava_next(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"]["model_type"] = "qwen2"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="language model 'qwen2' is not supported \\(supported: llama, mistral\\)"):
        read_checkpoint(str(tmp_path))


@pytest.mark.parametrize("preset, billions", [
    ("llava-v1.5-7b", 7.06), ("llava-v1.5-13b", 13.35),
    ("llava-v1.6-vicuna-7b", 7.06), ("llava-v1.6-vicuna-13b", 13.35), ("llava-v1.6-mistral-7b", 7.57),
])
def test_presets_have_the_published_parameter_counts(preset, billions):
    with torch.device("meta"):
        model = LlavaForCausalLM(LLAVA_PRESETS[preset])
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == billions
