"""The original Video-LLaVA checkpoint layout (`LanguageBind/Video-LLaVA-7B`): its towers and its weight names.

Read from the release (PKU-YuanGroup/Video-LLaVA: `videollava/model/multimodal_encoder/builder.py`,
`languagebind/__init__.py`, `llava_arch.py`). Its config.json is an original LLaVA one (`llava` /
`llava_llama`, `mm_*` fields; builder.py reads those) that names two towers instead of `mm_vision_tower`:

- `mm_image_tower`: `LanguageBind/LanguageBind_Image`, a `LanguageBindImage` folder whose vision model is CLIP's
  ViT (no temporal parts); images read `hidden_states[mm_vision_select_layer]` less CLS ('patch'), as LLaVA's
  CLIP tower does. The release also takes a CLIP folder here (a local path, `openai/*`, `laion/*`).
- `mm_video_tower`: `LanguageBind/LanguageBind_Video_merge`, a `LanguageBindVideo` folder whose `vision_config`
  adds `add_time_attn` (temporal attention in every layer) and `num_frames` (8): videos read
  `hidden_states[mm_vision_select_layer]` of every frame with its CLS (the release's video `feature_select`
  returns all tokens). The tower is multimodal_encoder/languagebind.py. The release refuses any other video tower.

One projector (`model.mm_projector`) serves both. The towers' weights are saved inside the checkpoint under
`model.image_tower.image_tower.` and `model.video_tower.video_tower.`, followed by LanguageBind's `vision_model`
names (CLIP's, plus `temporal_embedding`, `temporal_layer_norm1.*`, `temporal_attn.*` in the video tower);
`TOWER_KEY_RULES` maps them onto ours and the loader checks every key (builder.check_weights): a temporal weight
missing, or one we have no home for (say a `temporal_mlp`), is refused by name. The tower folders give the
towers' configs; the release reloads the towers' weights from them at run time, which we do not (the copies
saved in the checkpoint are the frozen towers it was trained with).

transformers' port (`LanguageBind/Video-LLaVA-7B-hf`) has no temporal attention (VIDEO.md R0.4): its video
tower is CLIP frame by frame. Only this layout runs the original video tower.
"""

from __future__ import annotations

from pathlib import Path

from llava.errors import CheckpointError
from llava.jsonfile import json_type

# The original layout's tower prefixes -> ours; LanguageBind's vision_model names below them are ours too.
TOWER_KEY_RULES = [
    (r"^model\.image_tower\.image_tower\.", "vision_tower."),
    (r"^model\.video_tower\.video_tower\.", "video_tower."),
]
# The towers' folders by their config's model_type (LanguageBind's config classes write it).
VIDEO_TOWER_TYPES = ("LanguageBindVideo",)
IMAGE_TOWER_TYPES = ("LanguageBindImage", "clip", "clip_vision_model")
# LanguageBind's own vision_config fields: read here (add_time_attn, num_frames) or training-only (patch dropout,
# the LoRA that the merge folder has folded into its weights, audio's mel bins, the decoder name), never CLIP's.
LANGUAGEBIND_FIELDS = (
    "add_time_attn", "num_frames", "force_patch_dropout", "lora_r", "lora_alpha", "lora_dropout", "num_mel_bins",
    "target_length", "video_decode_backend",
)


def video_tower_config(raw: dict, source: Path) -> tuple[dict, int, bool]:
    """A LanguageBind video folder's config.json -> (its CLIP vision fields, num_frames, add_time_attn)."""
    kind = raw.get("model_type")
    if kind not in VIDEO_TOWER_TYPES:
        raise CheckpointError(f"{source}: video tower '{kind}' is not supported (supported: {', '.join(VIDEO_TOWER_TYPES)},"
                              " e.g. LanguageBind/LanguageBind_Video_merge)")
    vision = _vision_section(raw, source)
    frames, temporal = vision.get("num_frames", 1), vision.get("add_time_attn", False)
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise CheckpointError(f"{source}: num_frames must be a positive integer, got {json_type(frames)} {frames!r}")
    if not isinstance(temporal, bool):
        raise CheckpointError(f"{source}: add_time_attn must be true or false, got {json_type(temporal)} {temporal!r}")
    return _clip_fields(vision), frames, temporal


def image_tower_config(raw: dict, source: Path) -> dict:
    """A LanguageBind image folder's (or a CLIP folder's) config.json -> its CLIP vision fields."""
    kind = raw.get("model_type")
    if kind not in IMAGE_TOWER_TYPES:
        raise CheckpointError(f"{source}: image tower '{kind}' is not supported (supported: {', '.join(IMAGE_TOWER_TYPES)},"
                              " e.g. LanguageBind/LanguageBind_Image)")
    vision = _vision_section(raw, source) if "vision_config" in raw or kind != "clip_vision_model" else raw
    if vision.get("add_time_attn", False):
        raise CheckpointError(f"{source}: an image tower with temporal attention (add_time_attn) is not supported")
    return _clip_fields(vision)


def _vision_section(raw: dict, source: Path) -> dict:
    section = raw.get("vision_config")
    if not isinstance(section, dict):
        raise CheckpointError(f"{source}: no vision_config object (the tower's sizes), got {json_type(section)}")
    return section


def _clip_fields(vision: dict) -> dict:
    """The vision config less LanguageBind's fields: what transformers' CLIPVisionConfig reads."""
    return {k: v for k, v in vision.items() if k not in LANGUAGEBIND_FIELDS}
