"""What the loader reads from a checkpoint folder: config fields honoured or refused, files, devices."""

import json
import shutil

import pytest
import torch

from llava.errors import CheckpointError, InputError
from llava.model import builder
from llava.device import resolve_device
from llava.model.builder import checkpoint_weight_files, load_pretrained_model
from tests import helpers


@pytest.fixture
def original(tiny_llava_dir, tmp_path):
    """An original-layout (liuhaotian) copy of the tiny checkpoint: (checkpoint folder, CLIP folder)."""
    helpers.to_original_layout(tiny_llava_dir, tmp_path / "ckpt", tmp_path / "clip")
    return tmp_path / "ckpt", tmp_path / "clip"


@pytest.fixture
def hf_copy(tiny_llava_dir, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(tiny_llava_dir, folder)
    return folder


def edit_config(folder, edit):
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


# ---- config fields ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("mm_use_im_start_end", True, "mm_use_im_start_end=true is not supported"),
    ("mm_use_im_patch_token", True, "mm_use_im_patch_token=true is not supported"),
    ("image_aspect_ratio", "anyres", "mm_patch_merge_type 'flat' is not supported with anyres (supported: spatial_unpad, spatial)"),
    ("image_aspect_ratio", "crop", "image_aspect_ratio 'crop' is not supported (supported: pad, square, anyres)"),
    ("mm_patch_merge_type", "spatial_unpad", "mm_patch_merge_type 'spatial_unpad' is not supported (only 'flat')"),
    ("mm_projector_type", "identity", "mm_projector_type 'identity' is not supported (supported: linear, mlp<N>x_gelu)"),
    ("mm_vision_select_layer", [-2, -5], "several vision feature layers ([-2, -5]) are not supported"),
    ("model_type", "llava_mpt", "model_type 'llava_mpt' is not supported (original LLaVA: llava, llava_llama, llava_mistral)"),
    ("hidden_act", "gelu", "hidden_act 'gelu' of the language model is not supported (only 'silu')"),
])
def test_original_config_fields_that_change_prompts_or_preprocessing_are_refused(original, field, value, message):
    folder, _ = original
    edit_config(folder, lambda c: c.__setitem__(field, value))
    with pytest.raises(CheckpointError) as error:
        load_pretrained_model(str(folder))
    assert message in str(error.value) and str(folder) in str(error.value)


def test_unsupported_vision_activation_is_a_checkpoint_error(hf_copy):
    edit_config(hf_copy, lambda c: c["vision_config"].__setitem__("hidden_act", "relu"))
    with pytest.raises(CheckpointError, match="vision hidden_act 'relu' is not supported \\(supported: gelu, quick_gelu\\)"):
        load_pretrained_model(str(hf_copy))


@pytest.mark.parametrize("layer", [-99, -4, 0, 4])
def test_a_vision_feature_layer_outside_the_tower_is_a_checkpoint_error(hf_copy, original, layer):
    """The tiny tower has 3 layers: hidden_states indices -3..-1 and 1..3 are its layers' outputs."""
    expected = f"vision feature layer {layer} is outside the 3-layer vision tower (valid: -3..-1 or 1..3)"
    edit_config(hf_copy, lambda c: c.__setitem__("vision_feature_layer", layer))
    folder, _ = original
    edit_config(folder, lambda c: c.__setitem__("mm_vision_select_layer", layer))
    for path in (hf_copy, folder):
        with pytest.raises(CheckpointError) as error:
            load_pretrained_model(str(path))
        assert str(error.value) == f"{path}: {expected}"


def test_the_first_and_last_vision_layers_are_accepted(hf_copy):
    for layer in (-3, 3):
        edit_config(hf_copy, lambda c: c.__setitem__("vision_feature_layer", layer))
        assert builder.read_checkpoint(str(hf_copy)).config.select_layer == layer


def test_a_vision_tower_other_than_clip_is_refused_by_name(hf_copy, original):
    edit_config(hf_copy, lambda c: c["vision_config"].__setitem__("model_type", "siglip_vision_model"))
    with pytest.raises(CheckpointError) as error:
        load_pretrained_model(str(hf_copy))
    assert str(error.value) == (f"{hf_copy}: vision tower 'siglip_vision_model' is not supported"
                                " (supported: CLIP, clip, clip_vision_model)")
    folder, clip = original  # original LLaVA: the folder mm_vision_tower names, as a whole SiglipModel
    edit_config(clip, lambda c: c.update(model_type="siglip", vision_config=dict(c, model_type="siglip_vision_model")))
    with pytest.raises(CheckpointError, match=f"{clip}: vision tower 'siglip' is not supported"):
        load_pretrained_model(str(folder))


@pytest.mark.parametrize("model_type", ["qwen2_vl", "llava_onevision", "idefics2"])
def test_a_model_type_other_than_llava_is_refused_by_name(hf_copy, tiny_next_dir, tmp_path, model_type):
    next_copy = tmp_path / "next"
    shutil.copytree(tiny_next_dir, next_copy)
    for folder in (hf_copy, next_copy):
        edit_config(folder, lambda c: c.__setitem__("model_type", model_type))
        with pytest.raises(CheckpointError) as error:
            load_pretrained_model(str(folder))
        assert str(error.value) == f"{folder}: model_type '{model_type}' is not supported (llava-hf: llava, llava_next, video_llava)"


@pytest.mark.parametrize("aspect_ratio, pads", [("pad", True), ("square", False), (None, False)])
def test_image_aspect_ratio_is_honoured(original, aspect_ratio, pads):
    """LLaVA's process_images pads to a square only for 'pad'; 'square' or no field: CLIP's resize and crop."""
    folder, _ = original
    edit_config(folder, lambda c: c.update(image_aspect_ratio=aspect_ratio) if aspect_ratio else c.pop("image_aspect_ratio"))
    *_, processor, _ = load_pretrained_model(str(folder))
    assert processor.pad_to_square is pads


@pytest.mark.parametrize("section", ["text_config", "vision_config"])
def test_llava_hf_config_without_a_section_is_refused(hf_copy, section):
    """transformers would fill Llama-7B / CLIP defaults for a missing section: we do not."""
    edit_config(hf_copy, lambda c: c.pop(section))
    with pytest.raises(CheckpointError, match=f"config.json has no {section}"):
        load_pretrained_model(str(hf_copy))
    edit_config(hf_copy, lambda c: c.__setitem__(section, [1, 2]))
    with pytest.raises(CheckpointError, match=f"config.json: {section} must be a JSON object, got a list"):
        load_pretrained_model(str(hf_copy))


def test_original_config_without_the_language_model_sizes_is_refused(original):
    folder, _ = original
    edit_config(folder, lambda c: [c.pop(k) for k in ("hidden_size", "num_attention_heads")])
    with pytest.raises(CheckpointError, match="config.json lacks hidden_size, num_attention_heads"):
        load_pretrained_model(str(folder))


@pytest.mark.parametrize("text, message", [
    ("{ not json", r"config.json is not valid JSON \(line 1"),
    ("[1, 2]", "config.json must hold a JSON object, got a list"),
])
def test_config_json_that_is_not_a_json_object(hf_copy, original, text, message):
    (hf_copy / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message) as error:
        load_pretrained_model(str(hf_copy))
    assert "\n" not in str(error.value)
    folder, clip = original
    (clip / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=f"{clip}.config.json"):
        load_pretrained_model(str(folder))


def test_checkpoint_path_that_is_missing_or_a_file(tiny_llava_dir, tmp_path):
    with pytest.raises(CheckpointError, match=f"checkpoint folder not found: {tmp_path / 'llava-v1.5-7b'}$"):
        load_pretrained_model(str(tmp_path / "llava-v1.5-7b"))
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="weights.safetensors is a file, not a checkpoint folder"):
        load_pretrained_model(str(tmp_path / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="checkpoint folder not found: .*nowhere"):
        load_pretrained_model(str(tiny_llava_dir), model_base=str(tmp_path / "nowhere"))


def test_vision_tower_given_for_a_llava_hf_checkpoint_is_refused(tiny_llava_dir, original):
    _, clip = original
    with pytest.raises(CheckpointError, match="--vision-tower is for original-LLaVA checkpoints"):
        load_pretrained_model(str(tiny_llava_dir), vision_tower=str(clip))


def test_vision_tower_folder_not_found(original, tmp_path):
    folder, _ = original
    with pytest.raises(CheckpointError, match=f"vision tower folder not found: {tmp_path / 'elsewhere'}"):
        load_pretrained_model(str(folder), vision_tower=str(tmp_path / "elsewhere"))


# ---- weight files ---------------------------------------------------------------------------------


def test_pickled_objects_in_a_bin_are_refused_without_torch_advice(hf_copy):
    (hf_copy / "model.safetensors").unlink()
    torch.save({"weight": torch.zeros(2), "layer": torch.nn.Linear(2, 2)}, hf_copy / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as error:
        load_pretrained_model(str(hf_copy))
    message = str(error.value)
    assert f"{hf_copy / 'pytorch_model.bin'}: not a plain tensor file" in message and "will not be unpickled" in message
    assert "weights_only" not in message and "\n" not in message


def test_bin_that_is_not_a_dict_of_tensors(hf_copy):
    (hf_copy / "model.safetensors").unlink()
    torch.save(torch.zeros(2), hf_copy / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin holds a Tensor, not a dict of named tensors"):
        load_pretrained_model(str(hf_copy))
    torch.save({"state_dict": {"w": torch.zeros(2)}}, hf_copy / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: 'state_dict' holds a dict, not a tensor"):
        load_pretrained_model(str(hf_copy))


def test_weight_files_are_the_ones_the_loader_reads(tiny_llava_dir, original, tmp_path, monkeypatch):
    folder, clip = original
    assert checkpoint_weight_files(str(tiny_llava_dir)) == [tiny_llava_dir / "model.safetensors"]
    assert checkpoint_weight_files(str(folder)) == [folder / "model.safetensors", clip / "pytorch_model.bin"]
    moved = shutil.copytree(clip, tmp_path / "other-clip")
    assert checkpoint_weight_files(str(folder), str(moved)) == [folder / "model.safetensors", moved / "pytorch_model.bin"]

    read = []
    real = builder.read_weights
    monkeypatch.setattr(builder, "read_weights", lambda files: read.extend(files) or real(files))
    load_pretrained_model(str(folder), vision_tower=str(moved))
    assert read == checkpoint_weight_files(str(folder), str(moved))

    def no_tensor_loading(*args, **kwargs):
        raise AssertionError("checkpoint_weight_files loaded a tensor")

    monkeypatch.setattr(torch, "load", no_tensor_loading)
    monkeypatch.setattr("safetensors.torch.load_file", no_tensor_loading)
    checkpoint_weight_files(str(folder))


def test_weight_files_of_a_sharded_checkpoint(hf_copy):
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (hf_copy / "model.safetensors").rename(hf_copy / "model-00001-of-00002.safetensors")
    (hf_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model.safetensors.index.json lists model-00002-of-00002.safetensors, which is not in the folder"):
        checkpoint_weight_files(str(hf_copy))
    (hf_copy / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="model.safetensors.index.json has no weight_map"):
        checkpoint_weight_files(str(hf_copy))


def test_weight_files_raise_as_the_loader_does(original, tmp_path):
    folder, clip = original
    shutil.rmtree(clip)
    with pytest.raises(CheckpointError, match="has no config.json; pass --vision-tower PATH"):
        checkpoint_weight_files(str(folder))
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        checkpoint_weight_files(str(tmp_path / "missing"))


# ---- devices ---------------------------------------------------------------------------------------


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match=r"unknown device 'foo' \(use cpu, cuda, cuda:N or mps\)"):
        resolve_device("foo")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="device 'cuda': no CUDA GPU is available on this machine"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(InputError, match=r"device 'cuda:7': this machine has 2 CUDA GPUs \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:7")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InputError, match="device 'mps': MPS is not available on this machine"):
        resolve_device("mps")


def test_loader_checks_the_device_before_reading_anything(tmp_path):
    with pytest.raises(InputError, match="unknown device 'foo'"):
        load_pretrained_model(str(tmp_path / "missing"), device="foo")


def test_both_quantizations_at_once_are_refused(tiny_llava_dir):
    with pytest.raises(InputError, match="choose one of 8-bit and 4-bit loading"):
        load_pretrained_model(str(tiny_llava_dir), load_8bit=True, load_4bit=True)
