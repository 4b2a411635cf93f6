"""load_pretrained_model(): LLaVA-1.5 checkpoints in either layout, every weight accounted for.

Two layouts are read:

- **llava-hf** (`LlavaForConditionalGeneration`, e.g. `llava-hf/llava-1.5-7b-hf`): one
  folder, `config.json` with `text_config` / `vision_config`, keys
  `language_model.model.*`, `multi_modal_projector.linear_{1,2}`, `vision_tower(.vision_model).*`
  (or transformers 5's `model.language_model.*` / `model.vision_tower.*` names);
- **original LLaVA** (`liuhaotian/llava-v1.5-7b`): `config.json` of a `llava_llama`
  model with `mm_*` fields, keys `model.layers.*`, `model.mm_projector.{0,2}`, and the
  CLIP weights in the folder named by `mm_vision_tower` (override with `vision_tower=`).

Weights come from safetensors, or `.bin` files read with `weights_only=True`; no
code from a checkpoint ever runs. A missing, unexpected or mis-shaped weight is a
`CheckpointError` naming it. The model is built on the meta device and the
checkpoint's tensors are assigned to it, so a 7B model is held in memory once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import transformers

from llava.errors import CheckpointError
from llava.mm_utils import ImageProcessor
from llava.model.language_model.llava_llama import LlamaConfig, rope_inverse_frequencies
from llava.model.llava_arch import LlavaConfig, LlavaForCausalLM
from llava.model.multimodal_encoder.clip_encoder import VisionConfig

# Checkpoint keys that are buffers, not weights: safe to drop.
IGNORED_KEYS = re.compile(r"(rotary_emb\.inv_freq|embeddings\.position_ids)$")

# (pattern, replacement) applied in order; the first match wins. Targets are our parameter names.
KEY_RULES = [
    (r"^(?:model\.)?language_model\.lm_head\.", "lm_head."),
    (r"^(?:language_model\.model|model\.language_model)\.", "language_model."),
    (r"^(?:model\.)?multi_modal_projector\.linear_1\.", "mm_projector.0."),
    (r"^(?:model\.)?multi_modal_projector\.linear_2\.", "mm_projector.2."),
    (r"^(?:model\.)?vision_tower\.(?:vision_tower\.)?(?:vision_model\.)?", "vision_tower."),
    (r"^model\.mm_projector\.", "mm_projector."),
    (r"^model\.(embed_tokens|layers|norm)\.", r"language_model.\1."),
    (r"^lm_head\.", "lm_head."),
]
# Keys of a standalone CLIP folder (CLIPModel or CLIPVisionModel): only the vision model is ours.
CLIP_RULES = [(r"^(?:vision_model\.)?", "vision_tower.")]
CLIP_SKIPPED = re.compile(r"^(text_model\.|text_projection\.|visual_projection\.|logit_scale$)")


def load_pretrained_model(
    model_path: str,
    model_base: str | None = None,
    model_name: str | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    pruning=None,
    vision_tower: str | None = None,
):
    """Returns (tokenizer, model, image_processor, context_len), as LLaVA's builder does.

    `model_base`: a folder whose weights are loaded first (e.g. the base LLM of a
    projector-only checkpoint); `model_path`'s weights override them. `model_name`
    is accepted for LLaVA compatibility and not used: behaviour follows config.json.
    `pruning`: a method spec string or object, attached with `model.set_pruning`.
    """
    del model_name  # behaviour is chosen by config fields, never by the folder's name
    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{model_path}: no config.json (is this a LLaVA checkpoint folder?)")
    if (path / "adapter_config.json").is_file():
        raise CheckpointError(f"{model_path}: LoRA checkpoints are not supported; merge the adapter first")
    dtype = dtype or (torch.float16 if str(device).startswith("cuda") else torch.float32)
    config, vision_folder = read_config(path, vision_tower)
    tokenizer = load_tokenizer(path)  # before the weights: a bad tokenizer fails in seconds, not minutes

    weights = {}
    if model_base is not None:
        weights.update(_normalise(read_weights(Path(model_base)), KEY_RULES))
    weights.update(_normalise(read_weights(path), KEY_RULES))
    if vision_folder is not None and not any(k.startswith("vision_tower.") for k in weights):
        clip = {k: v for k, v in read_weights(vision_folder).items() if not CLIP_SKIPPED.match(k)}
        weights.update(_normalise(clip, CLIP_RULES))

    with torch.device("meta"):
        model = LlavaForCausalLM(config)
    if config.text.tie_word_embeddings and "lm_head.weight" not in weights:
        weights["lm_head.weight"] = weights.get("language_model.embed_tokens.weight")
    check_weights(model, weights, model_path)
    quantize = load_8bit or load_4bit
    target = "cpu" if quantize else device
    # Convert tensor by tensor, dropping each source as it goes, so the checkpoint is not held twice.
    state = {key: weights.pop(key).to(device=target, dtype=dtype) for key in list(weights)}
    model.load_state_dict(state, assign=True)
    model.language_model.inv_freq = rope_inverse_frequencies(config.text).to(target)
    if quantize:
        from llava.model.quantization import quantize_language_model

        quantize_language_model(model, bits=8 if load_8bit else 4, device=device, compute_dtype=dtype)
    model.eval().requires_grad_(False)
    if pruning is not None:
        model.set_pruning(pruning)

    image_processor = ImageProcessor.from_folder(path, vision_folder, image_size=config.vision.image_size)
    return tokenizer, model, image_processor, config.text.max_position_embeddings


def load_tokenizer(path: Path):
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, ImportError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: cannot load the tokenizer ({detail})") from error


# ---- config ------------------------------------------------------------------------------------


def read_config(path: Path, vision_tower: str | None = None) -> tuple[LlavaConfig, Path | None]:
    """config.json (either layout) -> our LlavaConfig, and the separate CLIP folder if the layout has one."""
    raw = json.loads((path / "config.json").read_text())
    if raw.get("model_type") == "llava_next" or "image_grid_pinpoints" in raw:
        raise CheckpointError(f"{path}: LLaVA-NeXT (anyres) checkpoints are not supported yet; LLaVA-1.5 ones are")
    if "text_config" in raw or "vision_config" in raw:  # llava-hf
        text_raw = dict(raw.get("text_config") or {})
        if text_raw.get("model_type", "llama") != "llama":
            raise CheckpointError(f"{path}: only Llama language models are supported, got '{text_raw['model_type']}'")
        strategy = raw.get("vision_feature_select_strategy", "default")
        if strategy != "default":
            raise CheckpointError(f"{path}: vision_feature_select_strategy '{strategy}' is not supported (only 'default')")
        act = raw.get("projector_hidden_act", "gelu")
        if act != "gelu":
            raise CheckpointError(f"{path}: projector_hidden_act '{act}' is not supported (only 'gelu')")
        layer = raw.get("vision_feature_layer", -2)
        if not isinstance(layer, int):
            raise CheckpointError(f"{path}: several vision feature layers ({layer}) are not supported")
        vision_raw = dict(raw.get("vision_config") or {})
        text_raw.setdefault("tie_word_embeddings", raw.get("tie_word_embeddings", False))
        config = LlavaConfig(
            vision=vision_config_from(vision_raw),
            text=text_config_from(text_raw),
            projector_type="mlp2x_gelu",
            select_layer=layer,
        )
        return config, None

    if "mm_vision_tower" in raw or vision_tower is not None:  # original LLaVA
        folder = Path(vision_tower or raw["mm_vision_tower"])
        if not (folder / "config.json").is_file():  # the hub name in mm_vision_tower, not a local folder
            raise CheckpointError(
                f"{path}: the vision tower folder '{folder}' (mm_vision_tower) has no config.json;"
                " pass --vision-tower PATH to a local CLIP folder"
            )
        feature = raw.get("mm_vision_select_feature", "patch")
        if feature != "patch":
            raise CheckpointError(f"{path}: mm_vision_select_feature '{feature}' is not supported (only 'patch')")
        clip_raw = json.loads((folder / "config.json").read_text())
        vision_raw = clip_raw.get("vision_config", clip_raw)
        text_raw = {k: v for k, v in raw.items() if not k.startswith("mm_")}
        config = LlavaConfig(
            vision=vision_config_from(vision_raw),
            text=text_config_from(text_raw),
            projector_type=raw.get("mm_projector_type", "linear"),
            select_layer=raw.get("mm_vision_select_layer", -2),
        )
        return config, folder
    raise CheckpointError(f"{path}: config.json is neither a llava-hf nor an original LLaVA config")


def text_config_from(raw: dict) -> LlamaConfig:
    """Fill transformers' LlamaConfig defaults (it also normalises legacy rope fields), then copy ours."""
    hf = transformers.LlamaConfig(**_config_fields(raw))
    rope = dict(hf.rope_parameters or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type not in ("default", "linear", "llama3"):
        raise CheckpointError(f"rope scaling '{rope_type}' is not supported (supported: default, linear, llama3)")
    return LlamaConfig(
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=hf.num_key_value_heads or hf.num_attention_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
        rms_norm_eps=hf.rms_norm_eps,
        max_position_embeddings=hf.max_position_embeddings,
        rope_theta=rope.get("rope_theta", 10000.0),
        rope_type=rope_type,
        rope_factor=rope.get("factor", 1.0),
        rope_low_freq_factor=rope.get("low_freq_factor", 1.0),
        rope_high_freq_factor=rope.get("high_freq_factor", 4.0),
        rope_original_max_position_embeddings=rope.get("original_max_position_embeddings", 8192),
        attention_bias=hf.attention_bias,
        mlp_bias=hf.mlp_bias,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
    )


def vision_config_from(raw: dict) -> VisionConfig:
    hf = transformers.CLIPVisionConfig(**_config_fields(raw))
    return VisionConfig(
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        image_size=hf.image_size,
        patch_size=hf.patch_size,
        num_channels=hf.num_channels,
        layer_norm_eps=hf.layer_norm_eps,
        hidden_act=hf.hidden_act,
    )


def _config_fields(raw: dict) -> dict:
    """A config.json section less the keys that name a class rather than set a field."""
    return {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "_name_or_path")}


# ---- weights -----------------------------------------------------------------------------------


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: safetensors (single or sharded), else .bin with weights_only."""
    from safetensors.torch import load_file

    files = _weight_files(folder, "model.safetensors")
    if files:
        loader = lambda f: load_file(str(f))
    else:
        files = _weight_files(folder, "pytorch_model.bin") or sorted(folder.glob("mm_projector*.bin"))
        loader = lambda f: torch.load(f, map_location="cpu", weights_only=True)
    if not files:
        raise CheckpointError(f"{folder}: no weights found (looked for *.safetensors and pytorch_model*.bin)")
    weights = {}
    for file in files:
        try:
            weights.update(loader(file))
        except Exception as error:  # corrupt or truncated file
            raise CheckpointError(f"{file}: cannot read weights ({type(error).__name__}: {error})") from error
    return {k: v for k, v in weights.items() if not IGNORED_KEYS.search(k)}


def _weight_files(folder: Path, name: str) -> list[Path]:
    if (folder / name).is_file():
        return [folder / name]
    index = folder / f"{name}.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / shard for shard in shards]
    stem, suffix = name.rsplit(".", 1)
    return sorted(folder.glob(f"{stem}*.{suffix}"))


def _normalise(weights: dict[str, torch.Tensor], rules) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in weights.items():
        new = key
        for pattern, replacement in rules:
            new, n = re.subn(pattern, replacement, key, count=1)
            if n:
                break
        out[new] = value
    return out


def check_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor | None], source: str) -> None:
    """Every parameter of the model gets a tensor of its shape, and every tensor has a home."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(k for k in expected if weights.get(k) is None)
    unexpected = sorted(k for k in weights if k not in expected)
    wrong = sorted(
        f"{k} {tuple(weights[k].shape)} (model expects {expected[k]})"
        for k in expected
        if weights.get(k) is not None and tuple(weights[k].shape) != expected[k]
    )
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label} weights: {shown}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
