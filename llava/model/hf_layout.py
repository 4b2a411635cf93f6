"""Our LLaVA in transformers' llava-hf layout: parameter names and config.json, the inverse of what
`llava.model.builder` reads. Used to export the shipped models and to build transformers' reference
of a preset (the latency benchmark's)."""

from __future__ import annotations

from llava.model.llava_arch import LlavaConfig

# Our parameter names -> llava-hf's legacy names, which transformers still loads (the inverse of builder.KEY_RULES)
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


def hf_config(config: LlavaConfig, image_token_index: int, bos_token_id: int = 1, eos_token_id: int = 2,
              pad_token_id: int | None = None) -> dict:
    """config.json of `LlavaForConditionalGeneration`, or `LlavaNextForConditionalGeneration` for an anyres config."""
    v, t = config.vision, config.text
    if config.projector_type != "mlp2x_gelu" or v.hidden_act not in ("quick_gelu", "gelu"):
        raise ValueError("llava-hf has only the mlp2x_gelu projector and CLIP's activations")
    out = {
        "architectures": ["LlavaNextForConditionalGeneration" if config.anyres else "LlavaForConditionalGeneration"],
        "model_type": "llava_next" if config.anyres else "llava",
        "image_token_index": image_token_index,
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
            "rope_theta": t.rope_theta, "hidden_act": "silu", "attention_bias": t.attention_bias,
            "mlp_bias": t.mlp_bias, "tie_word_embeddings": t.tie_word_embeddings, "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
        },
    }
    if t.rope_type != "default":
        raise ValueError("hf_config writes default rope only")
    if config.anyres:
        out["image_grid_pinpoints"] = [list(p) for p in config.image_grid_pinpoints]  # [height, width]
    return out
