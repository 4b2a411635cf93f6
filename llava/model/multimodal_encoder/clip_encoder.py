"""CLIP ViT vision tower, as used by LLaVA-1.5 (openai/clip-vit-large-patch14-336).

Reproduces transformers' `CLIPVisionModel` numerically (tested to 1e-4 in fp32),
with two differences that pruning needs:

- it stops after the layer whose output LLaVA feeds the LLM (`select_layer`,
  -2 by default: the second-to-last layer) unless a caller asks for attention
  of a later layer, so the unused last layer costs nothing;
- for the layers a caller names, it also returns the **CLS attention row** per
  head, softmax(q_cls . K^T / sqrt(hd)) over all keys with the CLS->CLS entry
  dropped (not renormalised), and that layer's keys and CLS query (projections of
  the layer's post-LayerNorm input). The full N x N map is never materialised:
  attention itself runs through SDPA. A probed layer after the select layer that is
  the last one asked for (PruMerge's layer 23) runs only its LayerNorm and the
  query and key projections.

Layer numbering: "layer L" is the L-th encoder layer (0-based); its output is
transformers' `hidden_states[L + 1]`, so `select_layer=-2` is layer
`num_layers - 2`.

Where this file sits among the others, and one request's path through them: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def layer_index(self, layer: int) -> int:
        """A layer given as transformers' hidden_states index (-2) -> 0-based encoder layer."""
        index = layer + self.num_layers if layer < 0 else layer - 1
        if not 0 <= index < self.num_layers:
            raise ValueError(f"vision feature layer {layer} is outside the {self.num_layers}-layer vision tower")
        return index


VISION_PRESETS = {
    "clip-vit-large-patch14-336": VisionConfig(),
    "clip-vit-large-patch14": VisionConfig(image_size=224),
}


@dataclass
class AttentionProbe:
    """What one encoder layer exposes to a pruning method (per image in the batch)."""

    cls_attention: torch.Tensor  # (B, H, P) fp32, CLS query over the P patch keys
    keys: torch.Tensor  # (B, 1 + P, D) the layer's keys, before the head split
    cls_query: torch.Tensor  # (B, D) for methods that score with their own head layout (PruMerge: one 1024-wide head)


@dataclass
class VisionOutput:
    features: torch.Tensor  # (B, P, D) patch features of the select layer, CLS removed
    cls_features: torch.Tensor | None = None  # (B, D) the select layer's CLS feature (VisionZip keeps it)
    probes: dict[int, AttentionProbe] = field(default_factory=dict)  # keyed by 0-based layer


def _activation(name: str):
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu
    raise ValueError(f"unsupported vision activation '{name}'")


class CLIPEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size, bias=False
        )
        self.position_embedding = nn.Embedding(config.num_patches + 1, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, D, g, g)
        patches = patches.flatten(2).transpose(1, 2)  # (B, P, D)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)  # (B, 1, D)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight  # (B, 1+P, D)


class CLIPAttention(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        d = config.hidden_size
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor, probe: bool) -> tuple[torch.Tensor, AttentionProbe | None]:
        B, N, D = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, N, D)
        out = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))  # (B, H, N, hd)
        out = self.out_proj(out.transpose(1, 2).reshape(B, N, D))
        return out, self._probe(q, k) if probe else None

    def probe(self, x: torch.Tensor) -> AttentionProbe:
        """The probe alone, without the attention output: x (B, N, D) is the post-LayerNorm input."""
        return self._probe(self.q_proj(x[:, :1]), self.k_proj(x))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        return t.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, hd)

    def _probe(self, q: torch.Tensor, k: torch.Tensor) -> AttentionProbe:
        # One query row, O(N d): the CLS token's attention over every key, in fp32.
        q_cls = self._split(q[:, :1]).float()  # (B, H, 1, hd)
        logits = q_cls @ self._split(k).float().transpose(-1, -2) * self.head_dim**-0.5  # (B, H, 1, N)
        cls_attention = logits.softmax(dim=-1)[:, :, 0, 1:]  # (B, H, P): drop CLS->CLS, no renormalisation
        return AttentionProbe(cls_attention=cls_attention, keys=k, cls_query=q[:, 0])


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = CLIPAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)

    def forward(self, x: torch.Tensor, probe: bool = False) -> tuple[torch.Tensor, AttentionProbe | None]:
        attn, attention_probe = self.self_attn(self.layer_norm1(x), probe)
        x = x + attn
        x = x + self.mlp(self.layer_norm2(x))
        return x, attention_probe

    def probe(self, x: torch.Tensor) -> AttentionProbe:
        """The probe of this layer alone (its output unused): x (B, N, D) is the layer's input."""
        return self.self_attn.probe(self.layer_norm1(x))


class CLIPMLP(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = _activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPVisionTower(nn.Module):
    """CLIP's vision transformer. Parameter names follow transformers' CLIPVisionModel."""

    def __init__(self, config: VisionConfig, layer=CLIPEncoderLayer):
        """`layer(config)` builds one encoder layer (LanguageBind's video tower passes its layer with temporal
        attention, multimodal_encoder/languagebind.py)."""
        super().__init__()
        self.config = config
        self.embeddings = CLIPEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # sic, CLIP's name
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(layer(config) for _ in range(config.num_layers))
        # Unused by LLaVA (it reads a hidden layer), kept so every checkpoint weight has a home.
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, pixel_values: torch.Tensor, select_layer: int = -2, attention_layers: tuple[int, ...] = ()
    ) -> VisionOutput:
        """pixel_values (B, 3, S, S) -> features of `select_layer` (B, P, D) + probes of `attention_layers`.

        `attention_layers` are 0-based encoder layers (see the module docstring).
        """
        image_size = self.config.image_size
        if pixel_values.shape[-2:] != (image_size, image_size):
            raise ValueError(f"images must be {image_size}x{image_size}, got {tuple(pixel_values.shape[-2:])}")
        select = self.config.layer_index(select_layer)
        outside = [layer for layer in attention_layers if not 0 <= layer < self.config.num_layers]
        if outside:
            raise ValueError(f"attention of layer(s) {outside} asked of a {self.config.num_layers}-layer vision tower")
        last = max([select, *attention_layers])
        x = self.pre_layrnorm(self.embeddings(pixel_values))  # (B, 1+P, D)
        probes, features, cls_features = {}, None, None
        for index, layer in enumerate(self.encoder.layers[: last + 1]):
            if index == last and index > select:  # its output is not needed, only its probe
                probes[index] = layer.probe(x)
                break
            x, probe = layer(x, probe=index in attention_layers)
            if probe is not None:
                probes[index] = probe
            if index == select:
                features, cls_features = x[:, 1:], x[:, 0]  # (B, P, D), CLS removed ("default" strategy); (B, D)
        return VisionOutput(features=features, cls_features=cls_features, probes=probes)
