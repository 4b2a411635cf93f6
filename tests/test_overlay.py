"""`fastv run --overlay`: the overlay marks exactly the `kept` patches (kept squares untouched inside
their outline, every other square dimmed), one panel per partition on LLaVA-NeXT; bad options are
one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

from fastv.cli import main
from fastv.overlay import GAP, TITLE_HEIGHT, to_rgb
from fastv.shipped import SHIPPED_MODEL
from llava.pipeline import LlavaPipeline, Request
from tests import helpers


def run_with_overlay(capsys, model_path, image, out, method, *extra):
    assert main(["run", "--model-path", str(model_path), "--image", str(image), "--prompt", "what is in this image ?",
                 "--method", method, "--max-new-tokens", "2", "--overlay", str(out), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="the shipped model is not here")
@pytest.mark.parametrize("method", ["fastervlm:keep=36", "fastv:k=2,keep=20", "prumerge"])
def test_the_overlay_marks_exactly_the_kept_patches(capsys, tmp_path, method):
    out = run_with_overlay(capsys, SHIPPED_MODEL, "docs/examples/shapes.png", tmp_path / "overlay.png", method)
    assert out["overlay"] == str(tmp_path / "overlay.png")
    pipe = LlavaPipeline.load(str(SHIPPED_MODEL))
    _, _, pixels, _ = pipe.encode([Request(Image.open("docs/examples/shapes.png"), "x")])
    view = to_rgb(pixels[0], pipe.image_processor.image_mean, pipe.image_processor.image_std)
    panel = np.asarray(Image.open(tmp_path / "overlay.png").convert("RGB"))[TITLE_HEIGHT:]
    assert panel.shape == view.shape
    states = helpers.panel_state(panel, view, 12)
    kept = out["kept_partitions"][0][0]
    assert [i for i, s in enumerate(states) if s == "kept"] == kept and states.count("dimmed") == 144 - len(kept)


def test_next_gets_a_panel_per_partition_each_marked_by_its_own_kept_set(capsys, tiny_next_dir, tmp_path):
    image = tmp_path / "wide.png"
    helpers.random_images(1, seed=61, sizes=[(300, 100)])[0].save(image)  # a 1x3 crop grid
    out = run_with_overlay(capsys, tiny_next_dir, image, tmp_path / "next.png", "hired:rate=0.25")
    canvas = np.asarray(Image.open(tmp_path / "next.png").convert("RGB"))
    assert canvas.shape == (112 + TITLE_HEIGHT, 4 * (112 + GAP) - GAP, 3)  # base + 3 crops of 112 px
    pipe = LlavaPipeline.load(str(tiny_next_dir))
    _, _, images, _ = pipe.encode([Request(Image.open(image), "x")])
    mean, std = pipe.image_processor.image_mean, pipe.image_processor.image_std
    for n, kept in enumerate(out["kept_partitions"][0]):
        panel = canvas[TITLE_HEIGHT:, n * (112 + GAP): n * (112 + GAP) + 112]
        states = helpers.panel_state(panel, to_rgb(images[0].pixel_values[n], mean, std), 8)
        assert [i for i, s in enumerate(states) if s == "kept"] == kept


@pytest.mark.parametrize("args, message", [
    (["--overlay", "x.png"], "--overlay draws the kept patches on the image: give --image (or --video) too"),
    (["--image", "docs/examples/shapes.png", "--overlay", "docs"], "--overlay docs is a folder: name the PNG file"),
])
def test_bad_overlay_options_are_one_line_errors(capsys, args, message):
    assert main(["run", "--prompt", "hi", *args]) == 2
    assert message in capsys.readouterr().err
