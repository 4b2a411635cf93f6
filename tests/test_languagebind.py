"""LanguageBind's video tower (temporal attention before spatial attention in every layer) against the test's
transcription of the released forward (tests/reference_languagebind.py), and against transformers' CLIP with the
temporal parts off or zeroed; the original Video-LLaVA checkpoint layout's key mapping."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from llava.errors import CheckpointError
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower, VisionConfig
from llava.model.multimodal_encoder.languagebind import LanguageBindVideoTower, VideoTowerConfig
from llava.model.video_checkpoint import TOWER_KEY_RULES, image_tower_config, video_tower_config
from tests import reference_languagebind as reference

FRAMES = 8
RAW = {  # a tiny LanguageBind vision config: 28 px, patch 14 -> 4 patches + CLS per frame
    "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 3,
    "image_size": 28, "patch_size": 14, "num_channels": 3, "layer_norm_eps": 1e-5, "hidden_act": "gelu",
    "add_time_attn": True, "num_frames": FRAMES,
}
VISION = VisionConfig(hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4, image_size=28, patch_size=14,
                      hidden_act="gelu")
ALL_LAYERS = tuple(range(RAW["num_hidden_layers"]))


def _weights(seed=0, temporal_scale=1.0):
    return reference.random_weights(RAW, torch.Generator().manual_seed(seed), temporal_scale)


def _tower(weights, temporal=True):
    tower = LanguageBindVideoTower(VideoTowerConfig(VISION, num_frames=FRAMES, temporal_attention=temporal))
    tower.load_state_dict(weights)  # strict: every parameter named as LanguageBind names it
    return tower.eval()


def _videos(seed=1, videos=2):
    return torch.randn(videos, FRAMES, 3, 28, 28, generator=torch.Generator().manual_seed(seed))  # (V, T, 3, S, S)


def _frames(videos):
    return videos.flatten(0, 1)  # (V*T, 3, S, S), each video's frames consecutive: the tower's input


def _reference(weights, videos, **config):
    """The released forward on the release's (B, C, T, H, W) layout."""
    return reference.video_vision_model(weights, {**RAW, **config}, videos.permute(0, 2, 1, 3, 4))


@pytest.mark.parametrize("select_layer", [-2, -1, 1])
def test_temporal_tower_equals_the_released_forward(select_layer):
    """Features, CLS feature and every layer's spatial [CLS] row (FasterVLM's) equal the transcription, T=8, fp32."""
    weights, videos = _weights(), _videos()
    with torch.no_grad():
        out = _tower(weights)(_frames(videos), select_layer=select_layer, attention_layers=ALL_LAYERS)
        states, attentions = _reference(weights, videos)
    selected = states[select_layer].flatten(0, 1)  # (V*T, N, D), video-major as the tower's rows
    torch.testing.assert_close(out.features, selected[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.cls_features, selected[:, 0], rtol=1e-5, atol=1e-5)
    assert sorted(out.probes) == list(ALL_LAYERS)  # the last layer past select -2 runs as a probe only
    for layer in ALL_LAYERS:
        torch.testing.assert_close(out.probes[layer].cls_attention, attentions[layer][:, :, 0, 1:], rtol=1e-5, atol=1e-5)


def test_the_temporal_attention_mixes_frames_and_the_frame_wise_tower_does_not():
    weights, videos = _weights(), _videos()
    changed = videos.clone()
    changed[:, 5] = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(9))  # another frame 5
    for temporal, mixes in ((True, True), (False, False)):
        tower_weights = weights if temporal else {k: v for k, v in weights.items() if ".temporal_" not in k}
        tower = _tower(tower_weights, temporal=temporal)
        with torch.no_grad():
            before, after = tower(_frames(videos)).features, tower(_frames(changed)).features
        frame_0 = [0, FRAMES]  # frame 0 of each video
        assert (not torch.allclose(before[frame_0], after[frame_0])) == mixes


def test_frame_wise_tower_equals_transformers_clip_frame_by_frame():
    """temporal_attention=False is transformers' Video-LLaVA video tower: CLIPVisionModel on each frame."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    weights = {k: v for k, v in _weights().items() if ".temporal_" not in k}
    hf = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=28,
        patch_size=14, hidden_act="gelu", attn_implementation="eager",
    )).eval()
    hf.load_state_dict(weights)  # transformers 5 holds the vision model at the top level
    videos = _videos()
    with torch.no_grad():
        out = _tower(weights, temporal=False)(_frames(videos), attention_layers=ALL_LAYERS)
        expected = hf(videos.flatten(0, 1), output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(out.features, expected.hidden_states[-2][:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.cls_features, expected.hidden_states[-2][:, 0], rtol=1e-5, atol=1e-5)
    for layer in ALL_LAYERS:
        torch.testing.assert_close(out.probes[layer].cls_attention, expected.attentions[layer][:, :, 0, 1:],
                                   rtol=1e-5, atol=1e-5)


def test_zeroed_temporal_parts_give_the_plain_clip_tower():
    """With temporal_embedding and temporal_attn's output projection at zero the temporal step adds nothing: the
    tower equals our CLIP tower on the frames (the weights the -hf port keeps)."""
    weights = _weights()
    for layer in ALL_LAYERS:
        for name in ("temporal_embedding", "temporal_attn.out_proj.weight", "temporal_attn.out_proj.bias"):
            weights[f"encoder.layers.{layer}.{name}"] = torch.zeros_like(weights[f"encoder.layers.{layer}.{name}"])
    clip = CLIPVisionTower(VISION).eval()
    clip.load_state_dict({k: v for k, v in weights.items() if ".temporal_" not in k})
    videos = _videos()
    with torch.no_grad():
        out = _tower(weights)(_frames(videos), attention_layers=ALL_LAYERS)
        expected = clip(videos.flatten(0, 1), attention_layers=ALL_LAYERS)
    torch.testing.assert_close(out.features, expected.features, rtol=0, atol=1e-6)
    for layer in ALL_LAYERS:
        torch.testing.assert_close(out.probes[layer].cls_attention, expected.probes[layer].cls_attention, rtol=0, atol=1e-6)


def test_one_video_alone_equals_its_row_in_a_batch():
    weights, videos = _weights(), _videos(videos=3)
    tower = _tower(weights)
    with torch.no_grad():
        batch = tower(_frames(videos), attention_layers=(1,))
        single = tower(_frames(videos[1:2]), attention_layers=(1,))
    rows = slice(FRAMES, 2 * FRAMES)
    torch.testing.assert_close(single.features, batch.features[rows], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(single.probes[1].cls_attention, batch.probes[1].cls_attention[rows], rtol=1e-5, atol=1e-6)


def test_the_tower_refuses_frames_that_are_not_whole_videos():
    with pytest.raises(ValueError, match="takes 8 frames per video, got 12 frames"):
        _tower(_weights())(_frames(_videos())[:12])


# ---- the original Video-LLaVA layout's towers (llava/model/video_checkpoint.py) ----------------------------------

CLIP_FIELDS = {k: v for k, v in RAW.items() if k not in ("add_time_attn", "num_frames")}
VIDEO_FOLDER = {"model_type": "LanguageBindVideo", "vision_config": {
    **CLIP_FIELDS, "model_type": "clip_vision_model", "add_time_attn": True, "num_frames": 8,
    "force_patch_dropout": 0.0, "lora_r": 16, "video_decode_backend": "decord",
}}


def test_a_languagebind_video_folder_gives_its_clip_fields_frames_and_temporal_switch():
    fields, frames, temporal = video_tower_config(VIDEO_FOLDER, Path("video"))
    assert (frames, temporal) == (8, True)
    assert fields == {**CLIP_FIELDS, "model_type": "clip_vision_model"}  # LanguageBind's own fields left out
    image = image_tower_config({"model_type": "LanguageBindImage", "vision_config": {**CLIP_FIELDS, "add_time_attn": False}},
                               Path("image"))
    assert image == CLIP_FIELDS


@pytest.mark.parametrize("config, message", [
    ({"model_type": "clip", "vision_config": CLIP_FIELDS}, "video tower 'clip' is not supported"),
    ({"model_type": "LanguageBindVideo"}, "no vision_config object"),
    ({"model_type": "LanguageBindVideo", "vision_config": {**CLIP_FIELDS, "num_frames": 0}}, "num_frames must be a positive"),
    ({"model_type": "LanguageBindVideo", "vision_config": {**CLIP_FIELDS, "add_time_attn": "yes"}}, "add_time_attn must be"),
])
def test_a_video_tower_we_do_not_run_is_refused_by_name(config, message):
    with pytest.raises(CheckpointError, match=message):
        video_tower_config(config, Path("video"))


@pytest.mark.parametrize("config, message", [
    ({"model_type": "siglip_vision_model"}, "image tower 'siglip_vision_model' is not supported"),
    ({"model_type": "LanguageBindImage", "vision_config": {**CLIP_FIELDS, "add_time_attn": True}}, "temporal attention"),
])
def test_an_image_tower_we_do_not_run_is_refused_by_name(config, message):
    with pytest.raises(CheckpointError, match=message):
        image_tower_config(config, Path("image"))


def test_the_original_tower_keys_map_onto_ours():
    def mapped(key):
        for pattern, replacement in TOWER_KEY_RULES:
            new, n = re.subn(pattern, replacement, key, count=1)
            if n:
                return new
        return None

    assert mapped("model.video_tower.video_tower.encoder.layers.3.temporal_attn.q_proj.weight") == \
        "video_tower.encoder.layers.3.temporal_attn.q_proj.weight"
    assert mapped("model.image_tower.image_tower.embeddings.class_embedding") == "vision_tower.embeddings.class_embedding"
    assert mapped("model.mm_projector.0.weight") is None  # LLaVA's names: builder.KEY_RULES


# ---- the original Video-LLaVA folder loads as the llava-hf one (builder + video_checkpoint) ---------------------

ORIGINAL_PREFIXES = (  # our parameter names -> the original Video-LLaVA checkpoint's
    ("language_model.", "model."), ("mm_projector.", "model.mm_projector."), ("lm_head.", "lm_head."),
    ("vision_tower.", "model.image_tower.image_tower."), ("video_tower.", "model.video_tower.video_tower."),
)


def _original_name(name):
    for ours, theirs in ORIGINAL_PREFIXES:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    raise AssertionError(name)


def write_original_video_llava(hf_folder, loaded, out, temporal=None, add_time_attn=True):
    """The weights of `loaded` (our model read from a llava-hf Video-LLaVA folder) in the original layout: config.json
    naming mm_image_tower / mm_video_tower folders (LanguageBindImage / LanguageBindVideo configs), the towers'
    weights saved inside the checkpoint under their original names, plus `temporal` (LanguageBind vision_model names
    of the temporal parts) in the video tower."""
    import json
    import shutil

    from safetensors.torch import save_file

    cfg = json.loads((hf_folder / "config.json").read_text())
    weights = {_original_name(k): v.contiguous() for k, v in loaded.state_dict().items()}
    weights.update({f"model.video_tower.video_tower.{k}": v for k, v in (temporal or {}).items()})
    out.mkdir(parents=True)
    save_file(weights, str(out / "model.safetensors"))
    vision = dict(cfg["vision_config"], model_type="clip_vision_model")
    for kind, extra in (("image", {}), ("video", {"add_time_attn": add_time_attn, "num_frames": FRAMES})):
        folder = out.parent / f"LanguageBind_{kind.capitalize()}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({
            "model_type": f"LanguageBind{kind.capitalize()}", "vision_config": {**vision, **extra},
            "text_config": {"hidden_size": 8},
        }))
    text = cfg["text_config"]
    (out / "config.json").write_text(json.dumps({
        **text, "model_type": "llava", "architectures": ["LlavaLlamaForCausalLM"],
        "mm_image_tower": str(out.parent / "LanguageBind_Image"), "mm_video_tower": str(out.parent / "LanguageBind_Video"),
        "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_hidden_size": vision["hidden_size"], "image_aspect_ratio": "pad", "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
    }))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"):
        if (hf_folder / name).exists():
            shutil.copy(hf_folder / name, out / name)
    return out


@pytest.fixture(scope="module")
def hf_video_llava(tmp_path_factory):
    from llava.model.builder import load_pretrained_model
    from tests.helpers import make_tiny_video_llava

    folder = tmp_path_factory.mktemp("video_llava_hf")
    make_tiny_video_llava(folder, vision_layers=2)
    _, model, _, _ = load_pretrained_model(str(folder), dtype=torch.float32)
    return folder, model


def _temporal_weights(model, seed, zero=False):
    """LanguageBind temporal parts for every layer of `model`'s video tower (random, or the temporal step's output zero)."""
    vision = model.config.vision
    raw = {"hidden_size": vision.hidden_size, "intermediate_size": vision.intermediate_size,
           "num_attention_heads": vision.num_heads, "num_hidden_layers": vision.num_layers,
           "image_size": vision.image_size, "patch_size": vision.patch_size, "num_channels": 3,
           "add_time_attn": True, "num_frames": FRAMES}
    weights = reference.random_weights(raw, torch.Generator().manual_seed(seed))
    temporal = {k: v for k, v in weights.items() if ".temporal_" in k}
    if zero:
        for key in temporal:
            if key.endswith("temporal_embedding") or ".temporal_attn.out_proj." in key:
                temporal[key] = torch.zeros_like(temporal[key])
    return temporal


def _video_logits(model, seed=3):
    from llava.constants import VIDEO_TOKEN_INDEX

    size = model.config.vision.image_size
    videos = torch.randn(1, FRAMES, 3, size, size, generator=torch.Generator().manual_seed(seed))
    prompt = [[1, 20, 21, VIDEO_TOKEN_INDEX, 22, 23, 24]]
    with torch.no_grad():
        return model(prompt, videos=videos, all_logits=True).logits


@pytest.mark.parametrize("temporal, add_time_attn", [("absent", False), ("zeroed", True)])
def test_the_original_layout_without_working_temporal_parts_loads_as_the_llava_hf_model(hf_video_llava, tmp_path,
                                                                                       temporal, add_time_attn):
    from llava.model.builder import load_pretrained_model

    hf_folder, hf_model = hf_video_llava
    extra = _temporal_weights(hf_model, seed=5, zero=True) if temporal == "zeroed" else None
    folder = write_original_video_llava(hf_folder, hf_model, tmp_path / "Video-LLaVA-7B", extra, add_time_attn)
    _, model, _, _ = load_pretrained_model(str(folder), dtype=torch.float32)
    assert model.config.video.temporal_attention is add_time_attn
    ours = {k: v for k, v in model.state_dict().items() if ".temporal_" not in k}
    assert ours.keys() == hf_model.state_dict().keys()
    for key, value in ours.items():
        assert torch.equal(value, hf_model.state_dict()[key]), key
    torch.testing.assert_close(_video_logits(model), _video_logits(hf_model), rtol=1e-5, atol=1e-5)


def test_the_original_layout_runs_the_released_temporal_tower(hf_video_llava, tmp_path):
    """With temporal weights the loaded video tower equals the transcription of the released forward on the
    checkpoint's weights (features and every layer's spatial [CLS] row), and the answer differs from the -hf model's."""
    from safetensors.torch import load_file

    from llava.model.builder import load_pretrained_model

    hf_folder, hf_model = hf_video_llava
    folder = write_original_video_llava(hf_folder, hf_model, tmp_path / "Video-LLaVA-7B", _temporal_weights(hf_model, 7))
    _, model, _, _ = load_pretrained_model(str(folder), dtype=torch.float32)
    prefix = "model.video_tower.video_tower."
    tower_weights = {k[len(prefix):]: v for k, v in load_file(str(folder / "model.safetensors")).items() if k.startswith(prefix)}
    vision = model.config.vision
    raw = {"hidden_size": vision.hidden_size, "num_attention_heads": vision.num_heads, "num_hidden_layers": vision.num_layers,
           "patch_size": vision.patch_size, "layer_norm_eps": vision.layer_norm_eps, "hidden_act": vision.hidden_act,
           "add_time_attn": True, "num_frames": FRAMES}
    videos = torch.randn(2, FRAMES, 3, vision.image_size, vision.image_size, generator=torch.Generator().manual_seed(4))
    layers = tuple(range(vision.num_layers))
    with torch.no_grad():
        out = model.video_tower(videos.flatten(0, 1), select_layer=-2, attention_layers=layers)
        states, attentions = reference.video_vision_model(tower_weights, raw, videos.permute(0, 2, 1, 3, 4))
    torch.testing.assert_close(out.features, states[-2].flatten(0, 1)[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.cls_features, states[-2].flatten(0, 1)[:, 0], rtol=1e-5, atol=1e-5)
    for layer in layers:
        torch.testing.assert_close(out.probes[layer].cls_attention, attentions[layer][:, :, 0, 1:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_video_logits(model), _video_logits(hf_model), atol=1e-3)


def test_an_original_checkpoint_missing_a_temporal_weight_or_its_tower_folder_is_refused_by_name(hf_video_llava, tmp_path):
    import json

    from llava.model.builder import load_pretrained_model

    hf_folder, hf_model = hf_video_llava
    temporal = _temporal_weights(hf_model, 7)
    del temporal["encoder.layers.1.temporal_attn.k_proj.bias"]
    folder = write_original_video_llava(hf_folder, hf_model, tmp_path / "Video-LLaVA-7B", temporal)
    with pytest.raises(CheckpointError, match=r"missing weights: video_tower\.encoder\.layers\.1\.temporal_attn\.k_proj\.bias"):
        load_pretrained_model(str(folder), dtype=torch.float32)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mm_video_tower": "LanguageBind/LanguageBind_Video_merge"}))
    with pytest.raises(CheckpointError, match=r"'LanguageBind/LanguageBind_Video_merge' \(mm_video_tower\) has no config.json"):
        load_pretrained_model(str(folder), dtype=torch.float32)
