"""Loading LLaVA-NeXT checkpoints: what the config says is honoured, and each bad checkpoint or option
gets one clear error naming the problem."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from llava.errors import CheckpointError, InputError
from llava.model.builder import load_pretrained_model
from tests import helpers


@pytest.fixture
def next_copy(tiny_next_dir, tmp_path):
    folder = tmp_path / "next"
    shutil.copytree(tiny_next_dir, folder)
    return folder


@pytest.fixture
def original_next(tiny_next_dir, tmp_path):
    helpers.to_original_layout(tiny_next_dir, tmp_path / "llava-v1.6", tmp_path / "clip")
    return tmp_path / "llava-v1.6"


def edit_config(folder, edit):
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def drop_weight(folder, name):
    weights = load_file(str(folder / "model.safetensors"))
    del weights[name]
    save_file(weights, str(folder / "model.safetensors"))


def test_the_checkpoints_settings_are_read(loaded_next, original_next):
    _, model, processor, _ = loaded_next
    assert model.config.anyres and model.config.patch_merge == "spatial_unpad"
    assert processor.image_grid_pinpoints == tuple(map(tuple, helpers.TINY_PINPOINTS))
    _, original, _, _ = load_pretrained_model(str(original_next))
    assert original.config.image_grid_pinpoints == model.config.image_grid_pinpoints  # [width, height] swapped back


def test_original_pinpoints_written_as_a_string_are_read(original_next):
    edit_config(original_next, lambda c: c.update(image_grid_pinpoints=str([tuple(p) for p in c["image_grid_pinpoints"]])))
    _, model, _, _ = load_pretrained_model(str(original_next))
    assert model.config.image_grid_pinpoints[1] == (224, 112)


def test_options_override_the_merge_and_the_grid(tiny_next_dir):
    _, model, processor, _ = load_pretrained_model(str(tiny_next_dir), patch_merge="spatial", image_grid="336x112")
    assert model.config.patch_merge == "spatial" and processor.image_grid_pinpoints == ((112, 336),)
    (image,) = processor(helpers.random_images(1, sizes=[(50, 200)]))  # tall, but cut into the one canvas asked for
    assert image.grid == (1, 3) and image.resolution == (112, 336)


def test_a_checkpoint_without_image_newline_is_refused(next_copy):
    drop_weight(next_copy, "image_newline")
    with pytest.raises(CheckpointError, match="has no image_newline weight"):
        load_pretrained_model(str(next_copy))


def test_an_original_spatial_checkpoint_needs_no_newline_but_cannot_unpad(original_next):
    """Original LLaVA makes image_newline only for an 'unpad' merge: a 'spatial' checkpoint has none."""
    edit_config(original_next, lambda c: c.update(mm_patch_merge_type="spatial"))
    drop_weight(original_next, "model.image_newline")
    tokenizer, model, processor, _ = load_pretrained_model(str(original_next))
    assert model.image_newline is None and model.config.patch_merge == "spatial"
    prompt = [helpers.IMAGE_TOKEN_INDEX, 5, 6]
    assert model([prompt], processor(helpers.random_images(1))).logits.isfinite().all()
    with pytest.raises(InputError, match="no image_newline, which the spatial_unpad merge needs"):
        load_pretrained_model(str(original_next), patch_merge="spatial_unpad")


@pytest.mark.parametrize("pinpoints", [[[112, 200]], [[0, 112]], [[112]], [], "not a list"])
def test_pinpoints_that_are_not_whole_crops_are_refused(next_copy, pinpoints):
    edit_config(next_copy, lambda c: c.update(image_grid_pinpoints=pinpoints))
    with pytest.raises(CheckpointError, match="image_grid_pinpoints") as error:
        load_pretrained_model(str(next_copy))
    assert str(next_copy) in str(error.value)


def test_original_pinpoints_that_are_not_whole_crops_are_refused(original_next):
    edit_config(original_next, lambda c: c.update(image_grid_pinpoints=[[224, 100]]))
    with pytest.raises(CheckpointError, match=r"entry \[100, 224\] is not a \[height, width\] in multiples of 112"):
        load_pretrained_model(str(original_next))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(mm_patch_merge_type="flat"), "mm_patch_merge_type 'flat' is not supported with anyres"),
    (lambda c: c.update(mm_patch_merge_type="spatial_unpad_anyres_max_9"),
     "mm_patch_merge_type 'spatial_unpad_anyres_max_9' is not supported with anyres"),
    (lambda c: c.pop("image_grid_pinpoints"), "image_aspect_ratio 'anyres' needs image_grid_pinpoints"),
    (lambda c: c.update(image_grid_pinpoints="(1x1),...,(3x3)"), "is not a list of [width, height] pairs"),
])
def test_original_next_config_errors(original_next, edit, message):
    edit_config(original_next, edit)
    with pytest.raises(CheckpointError) as error:
        load_pretrained_model(str(original_next))
    assert message in str(error.value)


@pytest.mark.parametrize("options, message", [
    (dict(patch_merge="unpad"), "unknown patch merge 'unpad' (known: spatial_unpad, spatial)"),
    (dict(image_grid="672"), "--image-grid must be WIDTHxHEIGHT in pixels, e.g. 224x224; got '672'"),
    (dict(image_grid="200x224"), "--image-grid 200x224 must be made of whole 112-pixel crops"),
    (dict(image_grid="0x112"), "--image-grid 0x112 must be made of whole 112-pixel crops"),
])
def test_bad_anyres_options_are_refused(tiny_next_dir, options, message):
    with pytest.raises(InputError) as error:
        load_pretrained_model(str(tiny_next_dir), **options)
    assert message in str(error.value)


@pytest.mark.parametrize("option", ["patch_merge", "image_grid"])
def test_anyres_options_on_a_llava_15_checkpoint_are_refused(tiny_llava_dir, option):
    value = {"patch_merge": "spatial", "image_grid": "224x224"}[option]
    with pytest.raises(InputError, match="is for LLaVA-NeXT \\(anyres\\) checkpoints"):
        load_pretrained_model(str(tiny_llava_dir), **{option: value})


def test_images_of_the_wrong_kind_are_refused(loaded, loaded_next):
    prompt = [[helpers.IMAGE_TOKEN_INDEX, 5]]
    picture = helpers.random_images(1)
    with pytest.raises(InputError, match="LLaVA-NeXT model takes anyres images"):
        loaded_next[1](prompt, loaded[2](picture))
    with pytest.raises(InputError, match="LLaVA-1.5 model takes pixel values"):
        loaded[1](prompt, loaded_next[2](picture))


def test_a_llava_15_folder_relabelled_next_is_refused_by_its_missing_newline(tiny_llava_dir, tmp_path):
    folder = tmp_path / "relabelled"
    shutil.copytree(tiny_llava_dir, folder)
    edit_config(folder, lambda c: c.update(model_type="llava_next", architectures=["LlavaNextForConditionalGeneration"]))
    with pytest.raises(CheckpointError, match="has no image_newline weight"):
        load_pretrained_model(str(folder))


def test_next_weights_load_in_half_precision(tiny_next_dir):
    _, model, processor, _ = load_pretrained_model(str(tiny_next_dir), dtype=torch.bfloat16)
    assert model.image_newline.dtype == torch.bfloat16
    out = model([[helpers.IMAGE_TOKEN_INDEX, 5]], processor(helpers.random_images(1)))
    assert out.logits.isfinite().all()
