"""Bad input gets a clear one-line error that names the problem."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastv.cli import main
from llava.errors import CheckpointError, InputError
from llava.generate import generate
from llava.mm_utils import load_image
from llava.model.builder import load_pretrained_model
from llava.model.pruning.registry import parse_method
from tests import helpers


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "picture.png"
    helpers.random_images(1, seed=41)[0].save(path)
    return path


def cli_error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("spec, message", [
    ("fastvv:keep=3", "unknown method 'fastvv'; did you mean 'fastv'?"),
    ("fastv:kep=3", "unknown parameter 'kep' for method 'fastv'; did you mean 'keep'?"),
    ("fastv:k=two,keep=3", "fastv:k must be int, got 'two'"),
    ("fastv:k=2", "fastv needs exactly one budget: keep=N (image tokens kept) or ratio=R (fraction dropped)"),
    ("fastv:keep=3,ratio=0.5", "fastv needs exactly one budget"),
    ("fastv:ratio=1.5", "fastv:ratio is the fraction dropped and must be in [0, 1], got 1.5"),
    ("fastv:k=0,keep=3", "fastv:k=0 must be at least 1"),
    ("fastv:keep=3,mode=fast", "fastv:mode must be one of inplace, mask, got 'fast'"),
    ("fastervlm", "method 'fastervlm' needs keep (e.g. fastervlm:keep=...)"),
    ("fastervlm:keep", "method parameter 'keep' in 'fastervlm:keep' must be written key=value"),
    ("fastv:keep=36,keep=10", "method parameter 'keep' is given twice in 'fastv:keep=36,keep=10'"),
    ("random:keep=8,seed=9223372036854775808", "random:seed must be in 0..9223372036854775807, got 9223372036854775808"),
    ("random:keep=8,seed=-1", "random:seed must be in 0..9223372036854775807, got -1"),
    ("fastv:ratio=nan", "fastv:ratio is the fraction dropped and must be in [0, 1], got nan"),
    ("fastv:keep=-1", "fastv:keep must be at least 1 (every method keeps at least one visual token of an image), got -1"),
    ("pool:keep=-4", "keep must be at least 1 (every method keeps at least one visual token of an image), got -4"),
])
def test_method_spec_errors(spec, message):
    with pytest.raises(InputError) as error:
        parse_method(spec)
    assert message in str(error.value)


def test_random_accepts_every_seed_it_validates():
    from llava.model.pruning.base import VisionInputs

    inputs = VisionInputs(features=torch.zeros(16, 8), cls_attention={}, keys={}, grid=(4, 4), image_index=0,
                          pixel_values=torch.ones(3, 4, 4))
    for seed in (0, 2**40, 2**63 - 1):
        assert len(parse_method(f"random:keep=4,seed={seed}").select(inputs).indices) == 4


@pytest.mark.parametrize("spec, message", [
    ("fastervlm:keep=65", "keep=65 is larger than the 64 visual tokens in each image"),
    ("fastv:k=2,keep=100", "keep=100 is larger than the 64 visual tokens in each image"),
    ("random:keep=65", "keep=65 is larger than the 64 visual tokens in each image"),
    ("fastv:k=3,keep=8", "fastv:k=3 is outside 1..2 for this 3-layer LLM"),
    ("pool:keep=20", "pool:keep must be a square number (a side x side grid); try 16 or 25"),
])
def test_method_checked_against_the_model(loaded, spec, message):
    model = loaded[1]
    with pytest.raises(InputError) as error:
        model.set_pruning(spec)
    assert message in str(error.value)
    assert model.pruning.name == "none"  # a rejected method leaves the model as it was


def test_missing_and_corrupt_images(tmp_path):
    with pytest.raises(InputError, match="image not found: .*nothing.png"):
        load_image(tmp_path / "nothing.png")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="cannot read image .*garbage.png: not an image or corrupt"):
        load_image(garbage)
    whole = tmp_path / "whole.png"
    helpers.random_images(1)[0].save(whole)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[:200])
    with pytest.raises(InputError, match="cannot read image .*truncated.png"):
        load_image(truncated)


def test_prompt_problems(loaded):
    _, model, processor, _ = loaded
    pixel_values = processor(helpers.random_images(1))
    with pytest.raises(InputError, match=r"the prompts have 2 <image> placeholder\(s\) but 1 image\(s\) were given"):
        model.prepare_inputs([[1, -200, 5, -200]], pixel_values)
    with pytest.raises(InputError, match="empty prompt"):
        model.prepare_inputs([[]], None)
    with pytest.raises(InputError, match=r"token ids \[5000\] are outside the vocabulary of 320"):
        model.prepare_inputs([[1, 5000]], None)
    with pytest.raises(InputError, match="prompt of 67 tokens .* is longer than the context of 50"):
        generate(model, [[1, -200, 5, 6]], pixel_values, context_len=50)


def _broken_checkpoint(tiny_llava_dir, tmp_path, edit):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_llava_dir, folder)
    weights = load_file(str(folder / "model.safetensors"))
    edit(weights)
    save_file(weights, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("edit, message", [
    (lambda w: w.pop("language_model.model.layers.1.mlp.up_proj.weight"),
     "missing weights: language_model.layers.1.mlp.up_proj.weight"),
    (lambda w: w.__setitem__("language_model.model.layers.7.mlp.up_proj.weight", torch.zeros(2)),
     "unexpected weights: language_model.layers.7.mlp.up_proj.weight"),
    (lambda w: w.__setitem__("multi_modal_projector.linear_2.weight", torch.zeros(64, 32)),
     "mis-shaped weights: mm_projector.2.weight (64, 32) (model expects (64, 64))"),
])
def test_checkpoint_weight_problems_are_named(tiny_llava_dir, tmp_path, edit, message):
    folder = _broken_checkpoint(tiny_llava_dir, tmp_path, edit)
    with pytest.raises(CheckpointError) as error:
        load_pretrained_model(str(folder))
    assert message in str(error.value)


def test_checkpoint_folder_problems(tiny_llava_dir, tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained_model(str(tmp_path))
    folder = tmp_path / "noweights"
    shutil.copytree(tiny_llava_dir, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        load_pretrained_model(str(folder))
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read weights"):
        load_pretrained_model(str(folder))


def test_original_layout_without_its_clip_folder(tiny_llava_dir, tmp_path):
    helpers.to_original_layout(tiny_llava_dir, tmp_path / "ckpt", tmp_path / "clip")
    shutil.rmtree(tmp_path / "clip")
    with pytest.raises(CheckpointError, match="has no config.json; pass --vision-tower PATH"):
        load_pretrained_model(str(tmp_path / "ckpt"))


# ---- the CLI prints these as one line and exits with 2 ---------------------------------------------


def test_cli_errors(capsys, tiny_llava_dir, image_file, tmp_path):
    run = ["run", "--model-path", str(tiny_llava_dir), "--prompt", "what is in this image ?"]
    assert "image not found" in cli_error(capsys, *run, "--image", str(tmp_path / "missing.png"))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    assert "not an image or corrupt" in cli_error(capsys, *run, "--image", str(tmp_path / "bad.jpg"))
    assert "did you mean 'fastv'" in cli_error(capsys, *run, "--image", str(image_file), "--method", "fastvv:keep=3")
    assert "larger than the 64 visual tokens" in cli_error(
        capsys, *run, "--image", str(image_file), "--method", "fastervlm:keep=600")
    assert "outside 1..2" in cli_error(capsys, *run, "--image", str(image_file), "--method", "fastv:k=5,keep=8")
    assert "without '<image>'" in cli_error(
        capsys, "run", "--model-path", str(tiny_llava_dir), "--image", str(image_file), "--prompt", "<image> hi")
    assert "prompt is empty" in cli_error(
        capsys, "run", "--model-path", str(tiny_llava_dir), "--image", str(image_file), "--prompt", " ")
    assert "no config.json" in cli_error(
        capsys, "run", "--model-path", str(tmp_path), "--image", str(image_file), "--prompt", "hi")


def test_cli_checks_its_options_before_loading_a_model(capsys, tmp_path):
    """Each of these is wrong whatever the model: the error names it, not the missing checkpoint."""
    run = ["run", "--model-path", str(tmp_path / "missing"), "--prompt", "hi"]
    assert "unknown device 'foo' (use cpu, cuda, cuda:N or mps)" in cli_error(capsys, *run, "--device", "foo")
    assert "unknown conversation mode 'chatml'" in cli_error(capsys, *run, "--conv-mode", "chatml")
    assert "method parameter 'keep' is given twice" in cli_error(capsys, *run, "--method", "fastv:keep=3,keep=4")
    assert "max_new_tokens must be an integer >= 0, got -1" in cli_error(capsys, *run, "--max-new-tokens", "-1")
    assert "temperature must be a finite number >= 0" in cli_error(capsys, *run, "--temperature", "nan")
    assert f"checkpoint folder not found: {tmp_path / 'missing'}" in cli_error(capsys, *run)


def test_cli_empty_image_is_an_error_not_a_text_only_prompt(capsys, tiny_llava_dir):
    err = cli_error(capsys, "run", "--model-path", str(tiny_llava_dir), "--prompt", "what is in this image ?", "--image", "")
    assert "image" in err


def test_cli_vision_tower_for_a_llava_hf_checkpoint(capsys, tiny_llava_dir, tmp_path):
    err = cli_error(capsys, "run", "--model-path", str(tiny_llava_dir), "--prompt", "hi", "--vision-tower", str(tmp_path))
    assert "--vision-tower is for original-LLaVA checkpoints; a llava-hf folder holds its own vision tower" in err


def test_cli_file_system_errors_print_one_line(capsys, tiny_llava_dir, monkeypatch):
    from llava import pipeline

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "ckpt/model.safetensors")

    monkeypatch.setattr(pipeline.LlavaPipeline, "load", unreadable)
    err = cli_error(capsys, "run", "--model-path", str(tiny_llava_dir), "--prompt", "hi")
    assert err == "error: Permission denied: ckpt/model.safetensors"


def test_cli_error_is_one_line_without_traceback(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "fastv.cli", "run", "--model-path", str(tmp_path / "checkpoints" / "llava-v1.5-7b"),
         "--prompt", "hi"], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: checkpoint folder not found: {tmp_path / 'checkpoints' / 'llava-v1.5-7b'}"
