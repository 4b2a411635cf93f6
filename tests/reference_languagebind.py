"""Test oracle: LanguageBind's video vision model, transcribed plainly from the released forward.

Source read: PKU-YuanGroup/LanguageBind `languagebind/video/modeling_video.py` (CLIPEncoderLayer.forward,
CLIPEncoder.forward, CLIPVisionTransformer.forward), the same file Video-LLaVA ships. This is an independent
transcription of its rules for the tests, written without the implementation (llava/model/multimodal_encoder/
languagebind.py): eager attention with the full N x N weights, one step per line of the released forward,
tensors named as the release's rearranges name them. Inference only (no patch dropout, no LoRA).

`weights` are LanguageBind's `vision_model` state dict names (`embeddings.*`, `pre_layrnorm.*`,
`encoder.layers.{i}.*`, `post_layernorm.*`); `config` holds its vision config fields (hidden_size,
num_attention_heads, num_hidden_layers, patch_size, layer_norm_eps, hidden_act, add_time_attn, num_frames).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _linear(weights, name, x):
    return F.linear(x, weights[f"{name}.weight"], weights[f"{name}.bias"])


def _layer_norm(weights, name, x, eps):
    return F.layer_norm(x, x.shape[-1:], weights[f"{name}.weight"], weights[f"{name}.bias"], eps)


def _act(name, x):
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu(x)
    raise ValueError(name)


def clip_attention(weights, name, x, num_heads):
    """transformers' CLIPAttention, eager: x (b, n, d) -> (output (b, n, d), weights (b, heads, n, n))."""
    b, n, d = x.shape
    hd = d // num_heads
    q = _linear(weights, f"{name}.q_proj", x) * hd**-0.5
    k = _linear(weights, f"{name}.k_proj", x)
    v = _linear(weights, f"{name}.v_proj", x)
    q, k, v = (t.reshape(b, n, num_heads, hd).permute(0, 2, 1, 3) for t in (q, k, v))
    attn = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
    out = (attn @ v).permute(0, 2, 1, 3).reshape(b, n, d)
    return _linear(weights, f"{name}.out_proj", out), attn


def encoder_layer(weights, i, hidden, config):
    """One released CLIPEncoderLayer.forward with output_attentions: (b t) n d -> ((b t) n d, spatial weights)."""
    p = f"encoder.layers.{i}"
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]
    if config["add_time_attn"]:
        bt, n, d = hidden.shape
        t = config["num_frames"]
        b = bt // t
        if t != 1:
            # '(b t) n d -> (b n) t d', add temporal_embedding[:, :t], back to '(b t) n d'
            x = hidden.reshape(b, t, n, d).permute(0, 2, 1, 3).reshape(b * n, t, d)
            x = x + weights[f"{p}.temporal_embedding"][:, :t, :]
            hidden = x.reshape(b, n, t, d).permute(0, 2, 1, 3).reshape(bt, n, d)
        residual = hidden
        x = hidden.reshape(b, t, n, d).permute(0, 2, 1, 3).reshape(b * n, t, d)
        x = _layer_norm(weights, f"{p}.temporal_layer_norm1", x, eps)
        x, _temporal_weights = clip_attention(weights, f"{p}.temporal_attn", x, heads)  # overwritten below, as released
        hidden = residual + x.reshape(b, n, t, d).permute(0, 2, 1, 3).reshape(bt, n, d)
    residual = hidden
    x = _layer_norm(weights, f"{p}.layer_norm1", hidden, eps)
    x, attn_weights = clip_attention(weights, f"{p}.self_attn", x, heads)
    hidden = residual + x
    residual = hidden
    x = _layer_norm(weights, f"{p}.layer_norm2", hidden, eps)
    x = _linear(weights, f"{p}.mlp.fc2", _act(config["hidden_act"], _linear(weights, f"{p}.mlp.fc1", x)))
    return residual + x, attn_weights


def video_vision_model(weights, config, pixel_values):
    """pixel_values (B, C, T, H, W), the release's video layout -> (hidden_states, attentions):
    hidden_states: num_hidden_layers + 1 tensors (B, T, N, D), the embeddings' first (Video-LLaVA's
    rearrange '(b t) n c -> b t n c'); attentions: one (B*T, heads, N, N) per layer, the spatial weights."""
    B, C, T, H, W = pixel_values.shape
    frames = pixel_values.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)  # 'b c t h w -> (b t) c h w'
    patch = config["patch_size"]
    x = F.conv2d(frames, weights["embeddings.patch_embedding.weight"], stride=patch)  # (BT, D, g, g)
    x = x.flatten(2).transpose(1, 2)
    cls = weights["embeddings.class_embedding"].expand(B * T, 1, -1)
    x = torch.cat([cls, x], dim=1) + weights["embeddings.position_embedding.weight"][None]
    x = _layer_norm(weights, "pre_layrnorm", x, config["layer_norm_eps"])
    states, attentions = [x], []
    for i in range(config["num_hidden_layers"]):
        x, attn = encoder_layer(weights, i, x, config)
        states.append(x)
        attentions.append(attn)
    n, d = x.shape[1:]
    return [s.reshape(B, T, n, d) for s in states], attentions


def random_weights(config, generator: torch.Generator, temporal_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Random LanguageBind vision_model weights for a tiny config (temporal parts scaled by temporal_scale)."""
    d, inter = config["hidden_size"], config["intermediate_size"]
    g = config["image_size"] // config["patch_size"]

    def randn(*shape, std=0.2):
        return torch.randn(*shape, generator=generator) * std

    w = {
        "embeddings.class_embedding": randn(d),
        "embeddings.patch_embedding.weight": randn(d, config["num_channels"], config["patch_size"], config["patch_size"], std=0.05),
        "embeddings.position_embedding.weight": randn(g * g + 1, d),
        "pre_layrnorm.weight": 1 + randn(d, std=0.1), "pre_layrnorm.bias": randn(d, std=0.1),
        "post_layernorm.weight": 1 + randn(d, std=0.1), "post_layernorm.bias": randn(d, std=0.1),
    }
    attn_parts = ("q_proj", "k_proj", "v_proj", "out_proj")
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layers.{i}"
        for norm in ("layer_norm1", "layer_norm2"):
            w[f"{p}.{norm}.weight"], w[f"{p}.{norm}.bias"] = 1 + randn(d, std=0.1), randn(d, std=0.1)
        for part in attn_parts:
            w[f"{p}.self_attn.{part}.weight"], w[f"{p}.self_attn.{part}.bias"] = randn(d, d, std=d**-0.5), randn(d, std=0.05)
        w[f"{p}.mlp.fc1.weight"], w[f"{p}.mlp.fc1.bias"] = randn(inter, d, std=d**-0.5), randn(inter, std=0.05)
        w[f"{p}.mlp.fc2.weight"], w[f"{p}.mlp.fc2.bias"] = randn(d, inter, std=inter**-0.5), randn(d, std=0.05)
        if config["add_time_attn"]:
            s = temporal_scale
            w[f"{p}.temporal_embedding"] = randn(1, config["num_frames"], d, std=s * math.sqrt(1 / d) * 4)
            w[f"{p}.temporal_layer_norm1.weight"] = 1 + randn(d, std=0.1)
            w[f"{p}.temporal_layer_norm1.bias"] = randn(d, std=0.1)
            for part in attn_parts:
                w[f"{p}.temporal_attn.{part}.weight"] = randn(d, d, std=s * d**-0.5)
                w[f"{p}.temporal_attn.{part}.bias"] = randn(d, std=s * 0.05)
    return w
