"""Writing a trained model in the llava-hf layout, which `llava.model.builder.load_pretrained_model`
and transformers' `LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration` both load."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llava.mm_utils import CLIP_MEAN, CLIP_STD
from llava.model.llava_arch import LlavaConfig, LlavaForCausalLM

# Our parameter names -> llava-hf's (the inverse of llava.model.builder.KEY_RULES)
HF_PREFIXES = (
    ("lm_head.", "language_model.lm_head."),
    ("language_model.", "language_model.model."),
    ("mm_projector.0.", "multi_modal_projector.linear_1."),
    ("mm_projector.2.", "multi_modal_projector.linear_2."),
    ("vision_tower.", "vision_tower.vision_model."),
    ("image_newline", "image_newline"),
)


def hf_key(name: str) -> str:
    for ours, theirs in HF_PREFIXES:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    raise KeyError(name)


def hf_config(config: LlavaConfig, tokenizer) -> dict:
    v, t = config.vision, config.text
    out = {
        "architectures": ["LlavaNextForConditionalGeneration" if config.anyres else "LlavaForConditionalGeneration"],
        "model_type": "llava_next" if config.anyres else "llava",
        "image_token_index": tokenizer.convert_tokens_to_ids("<image>"),
        "projector_hidden_act": "gelu",
        "vision_feature_layer": config.select_layer,
        "vision_feature_select_strategy": "default",
        "image_seq_length": v.num_patches,
        "tie_word_embeddings": t.tie_word_embeddings,
        "torch_dtype": "float16",
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size, "num_hidden_layers": v.num_layers,
            "num_attention_heads": v.num_heads, "image_size": v.image_size, "patch_size": v.patch_size,
            "num_channels": v.num_channels, "layer_norm_eps": v.layer_norm_eps, "hidden_act": v.hidden_act,
            "projection_dim": v.hidden_size,
        },
        "text_config": {
            "model_type": "llama", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads, "num_key_value_heads": t.num_kv_heads, "head_dim": t.head_dim,
            "rms_norm_eps": t.rms_norm_eps, "max_position_embeddings": t.max_position_embeddings,
            "rope_theta": t.rope_theta, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": False, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
        },
    }
    if config.anyres:
        out["image_grid_pinpoints"] = [list(p) for p in config.image_grid_pinpoints]  # [height, width]
    return out


def preprocessor_config(config: LlavaConfig) -> dict:
    size = config.vision.image_size
    out = {
        "crop_size": {"height": size, "width": size}, "size": {"shortest_edge": size},
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "do_center_crop": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "do_convert_rgb": True, "resample": 3, "rescale_factor": 1 / 255,
        "image_processor_type": "CLIPImageProcessor",
    }
    if config.anyres:
        out.update(image_processor_type="LlavaNextImageProcessor", do_pad=True,
                   image_grid_pinpoints=[list(p) for p in config.image_grid_pinpoints])
    return out


def export_hf(model: LlavaForCausalLM, tokenizer, folder: Path, dtype=torch.float16) -> None:
    """Write the llava-hf layout: config.json, model.safetensors, tokenizer, preprocessor_config.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {hf_key(k): v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config(model.config, tokenizer), indent=2) + "\n")
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(model.config), indent=2) + "\n")
