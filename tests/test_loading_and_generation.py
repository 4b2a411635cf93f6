"""Loader paths beyond the basic two layouts, and generation options."""

import json
import shutil

import torch

from llava.generate import generate
from llava.model.builder import load_pretrained_model
from tests import helpers
from tests.test_model_parity import QUESTIONS, prompts_for


def test_sharded_safetensors_load(tiny_llava_dir, hf_reference, loaded, tmp_path):
    hf_reference.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(tiny_llava_dir / name, tmp_path / name)
    _, sharded, _, _ = load_pretrained_model(str(tmp_path))
    for (name, a), (_, b) in zip(sorted(sharded.state_dict().items()), sorted(loaded[1].state_dict().items())):
        assert torch.equal(a, b), name


def test_model_base_plus_projector_only_checkpoint(tiny_llava_dir, loaded, tmp_path):
    """LLaVA's pretrain-stage layout: the LLM in model_base, only mm_projector.bin in model_path."""
    from safetensors.torch import load_file, save_file

    helpers.to_original_layout(tiny_llava_dir, tmp_path / "full", tmp_path / "clip")
    weights = load_file(str(tmp_path / "full" / "model.safetensors"))
    projector = {k: v for k, v in weights.items() if "mm_projector" in k}
    base = tmp_path / "base"
    shutil.copytree(tmp_path / "full", base)
    save_file({k: v for k, v in weights.items() if k not in projector}, str(base / "model.safetensors"))
    stage = tmp_path / "projector-only"
    stage.mkdir()
    torch.save(projector, stage / "mm_projector.bin")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tmp_path / "full" / name, stage / name)
    _, model, _, _ = load_pretrained_model(str(stage), model_base=str(base))
    for (name, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(loaded[1].state_dict().items())):
        assert torch.equal(a, b), name


def test_bfloat16_load_generates(tiny_llava_dir, loaded):
    tokenizer, reference, processor, _ = loaded
    _, model, _, _ = load_pretrained_model(str(tiny_llava_dir), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    prompts = prompts_for(tokenizer, QUESTIONS[:2])
    pixel_values = processor(helpers.random_images(2, seed=61))
    model.set_pruning("fastv:k=2,keep=16")
    tokens = generate(model, prompts, pixel_values, max_new_tokens=5).tokens
    assert all(len(t) == 5 for t in tokens)


def test_sampling_is_seeded_and_top_p_near_zero_is_greedy(loaded):
    tokenizer, model, processor, _ = loaded
    prompts = prompts_for(tokenizer, QUESTIONS[:2])
    pixel_values = processor(helpers.random_images(2, seed=62))
    greedy = generate(model, prompts, pixel_values, max_new_tokens=8).tokens
    sample = lambda seed, **kw: generate(model, prompts, pixel_values, max_new_tokens=8, temperature=1.0, seed=seed, **kw).tokens
    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    assert sample(3, top_p=1e-6) == greedy  # the nucleus is the top token alone


def test_generation_stops_at_eos_per_sample(loaded):
    tokenizer, model, processor, _ = loaded
    prompts = prompts_for(tokenizer, QUESTIONS[:2])
    pixel_values = processor(helpers.random_images(2, seed=63))
    free = generate(model, prompts, pixel_values, max_new_tokens=8).tokens
    stop = free[0][3]  # make sample 0's fourth token the end-of-sequence token
    stopped = generate(model, prompts, pixel_values, max_new_tokens=8, eos_token_id=stop).tokens
    assert stopped[0] == free[0][: free[0].index(stop)]
    assert stopped[1] == (free[1][: free[1].index(stop)] if stop in free[1] else free[1])


def test_original_layout_with_embedded_vision_weights_and_a_full_clip_folder(tiny_llava_dir, loaded, tmp_path):
    for embed_vision, full_clip in ((True, False), (False, True), (True, True)):
        folder = tmp_path / f"ckpt-{embed_vision}-{full_clip}"
        helpers.to_original_layout(tiny_llava_dir, folder, tmp_path / f"clip-{embed_vision}-{full_clip}",
                                   embed_vision=embed_vision, full_clip=full_clip)
        _, model, _, _ = load_pretrained_model(str(folder))
        for (name, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(loaded[1].state_dict().items())):
            assert torch.equal(a, b), name


def test_unreadable_tokenizer_is_a_checkpoint_error(tiny_llava_dir, tmp_path):
    import pytest

    from llava.errors import CheckpointError

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_llava_dir, folder)
    (folder / "tokenizer.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="cannot load the tokenizer"):
        load_pretrained_model(str(folder))
