"""One image reader for `fastv run` and the evaluation: modes by their real range, EXIF orientation,
transparency over the processor's mean colour, a pixel limit, and messages that say what is wrong.
Expected pixels are worked out by hand in the comments."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from llava.errors import CheckpointError, InputError
from llava.eval.common import Question, open_image
from llava.mm_utils import MAX_IMAGE_PIXELS, ImageProcessor, load_image
from tests.helpers import huge_png

MEAN_COLOUR = ImageProcessor().background  # CLIP's mean * 255, truncated as LLaVA does: (122, 116, 104)


def saved(tmp_path, image: Image.Image, name: str, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def test_16_bit_png_by_its_full_range(tmp_path):
    values = np.array([[0, 257], [32896, 65535]], dtype=np.uint16)  # / 257 -> 0, 1, 128, 255
    image = load_image(saved(tmp_path, Image.fromarray(values), "deep.png"))
    assert image.mode == "RGB"
    assert pixels(image)[..., 0].tolist() == [[0, 1], [128, 255]]  # was all 255: convert("RGB") clips


def test_32_bit_integer_image(tmp_path):
    fits = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I")  # fits 16 bits: read as 16-bit
    assert pixels(load_image(saved(tmp_path, fits, "i16.tiff")))[..., 0].tolist() == [[0, 255]]
    wide = Image.fromarray(np.array([[-100, 100, 300]], dtype=np.int32), mode="I")  # stretched min..max
    assert pixels(load_image(saved(tmp_path, wide, "i32.tiff")))[..., 0].tolist() == [[0, 128, 255]]


def test_float_tiff_by_its_real_range(tmp_path):
    unit = np.array([[0.0, 0.5], [1.0, np.nan]], dtype=np.float32)  # x 255: 0, 128 (127.5 rounds to even), 255; NaN 0
    image = load_image(saved(tmp_path, Image.fromarray(unit, mode="F"), "unit.tiff"))
    assert pixels(image)[..., 0].tolist() == [[0, 128], [255, 0]]  # was all 0
    wide = np.array([[-1.0, 1.0, 3.0]], dtype=np.float32)  # stretched: 0, 127.5 -> 128, 255
    assert pixels(load_image(saved(tmp_path, Image.fromarray(wide, mode="F"), "wide.tiff")))[..., 0].tolist() == [[0, 128, 255]]
    flat = np.full((1, 2), 7.0, dtype=np.float32)  # constant outside 0..1: its value, clipped
    assert pixels(load_image(saved(tmp_path, Image.fromarray(flat, mode="F"), "flat.tiff")))[..., 0].tolist() == [[7, 7]]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (4, 2), (255, 0, 0))
    image.putpixel((0, 0), (0, 0, 255))  # top left blue
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the viewer turns it 90 degrees clockwise
    loaded = load_image(saved(tmp_path, image, "phone.png", exif=exif))
    assert loaded.size == (2, 4)  # portrait, as the photo was taken
    assert tuple(pixels(loaded)[0, 1]) == (0, 0, 255)  # the blue corner moved to the top right


def test_transparency_shows_the_processors_mean_colour(tmp_path):
    clear = Image.new("RGBA", (2, 1), (0, 0, 0, 0))  # fully transparent black
    clear.putpixel((1, 0), (255, 255, 255, 255))  # one opaque white pixel
    loaded = load_image(saved(tmp_path, clear, "clear.png"))
    assert loaded.mode == "RGBA"  # kept for the processor, which knows its mean colour
    from llava.mm_utils import composite_on

    shown = pixels(composite_on(loaded, MEAN_COLOUR))
    assert tuple(shown[0, 0]) == MEAN_COLOUR and tuple(shown[0, 1]) == (255, 255, 255)  # not black
    half = Image.new("LA", (1, 1), (200, 128))  # grey 200 at alpha 128/255 over the mean colour
    expected = [round((200 * 128 + c * 127) / 255) for c in MEAN_COLOUR]
    got = pixels(composite_on(load_image(saved(tmp_path, half, "half.png")), MEAN_COLOUR))[0, 0]
    assert np.abs(got.astype(int) - expected).max() <= 1
    palette = Image.new("P", (1, 1), 0)
    palette.info["transparency"] = 0
    shown = pixels(composite_on(load_image(saved(tmp_path, palette, "palette.png", transparency=0)), MEAN_COLOUR))
    assert tuple(shown[0, 0]) == MEAN_COLOUR
    palette_alpha = Image.new("PA", (2, 1), (1, 0))  # PNG cannot store "PA": the mode as PIL makes it
    palette_alpha.putpalette([0, 0, 0, 10, 20, 30])
    palette_alpha.putpixel((1, 0), (1, 255))  # colour 1 = (10, 20, 30): clear, then opaque
    assert pixels(composite_on(palette_alpha, MEAN_COLOUR)).tolist() == [[list(MEAN_COLOUR), [10, 20, 30]]]
    # the processor sees the mean colour, the same as it pads with: all-transparent = an all-mean image
    processor = ImageProcessor(image_size=4)
    assert processor([load_image(saved(tmp_path, Image.new("RGBA", (4, 4)), "empty.png"))]).abs().max() < 0.02


@pytest.mark.parametrize("mode, colour, rgb", [
    ("1", 1, (255, 255, 255)), ("L", 77, (77, 77, 77)), ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ("RGB", (1, 2, 3), (1, 2, 3)),
])
def test_other_modes_become_rgb(tmp_path, mode, colour, rgb):
    suffix = "tiff" if mode == "CMYK" else "png"
    image = load_image(saved(tmp_path, Image.new(mode, (1, 1), colour), f"x.{suffix}"))
    assert image.mode == "RGB" and tuple(pixels(image)[0, 0]) == rgb


@pytest.mark.parametrize("pil_guard", [True, False])  # ours holds also where PIL's was switched off
def test_a_decompression_bomb_is_an_input_error_naming_the_file(tmp_path, monkeypatch, pil_guard):
    side = 20_000
    if not pil_guard:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / "bomb.png"
    path.write_bytes(huge_png(side, side))
    with pytest.raises(InputError, match=rf"image {path} is too large.*{MAX_IMAGE_PIXELS:,}"):
        load_image(path)
    with pytest.raises(InputError, match="bomb.png is too large"):
        open_image(Question("q", "x", image=path))
    embedded = Question("m", "x", image_base64=base64.b64encode(huge_png(side, side)).decode())
    with pytest.raises(InputError, match="of question m .*too large"):
        open_image(embedded)


def test_a_bomb_is_one_question_error_in_an_evaluation_and_reruns_go_on(tmp_path):
    from llava.eval.run import run_benchmark
    from tests.eval_fakes import FakePipeline, make_textvqa

    make_textvqa(tmp_path / "data")
    bomb = tmp_path / "data/textvqa/train_images/t1.jpg"  # the file name says nothing: the header does
    bomb.write_bytes(huge_png(20_000, 20_000))
    for retry in (False, True):  # a rerun with --retry-errors meets the same image and goes on too
        scores = run_benchmark("textvqa", FakePipeline("tiny", "none"), tmp_path / "data", tmp_path / "out",
                               method="none", progress=False, retry_errors=retry)
        assert scores["run"]["errors"] == 1 and scores["run"]["answered"] == 2


@pytest.mark.parametrize("given, message", [
    ("", "the image path is empty"),
    ("https://example.com/cat.jpg", "image https://example.com/cat.jpg: URLs are not fetched"),
    ("{tmp}", "image {tmp} is a folder, not an image file"),
    ("{tmp}/nothing.png", "image not found: {tmp}/nothing.png"),
])
def test_paths_that_are_no_image_file_say_why(tmp_path, given, message):
    with pytest.raises(InputError) as caught:
        load_image(given.format(tmp=tmp_path))
    assert str(caught.value).startswith(message.format(tmp=tmp_path))


def test_corrupt_bytes_name_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match=rf"cannot read image {path}: not an image or corrupt"):
        load_image(path)
    with pytest.raises(InputError, match="cannot read the image of question q: not base64"):
        open_image(Question("q", "x", image_base64="abc"))
    data = io.BytesIO()
    Image.new("RGB", (2, 2), (9, 8, 7)).save(data, format="PNG")
    embedded = Question("q", "x", image_base64=base64.b64encode(data.getvalue()).decode())
    assert tuple(pixels(open_image(embedded))[0, 0]) == (9, 8, 7)


@pytest.mark.parametrize("text, problem", [
    ('{"crop_size": 336,', "is not valid JSON (line 1, column 19: Expecting property name enclosed in double quotes)"),
    ("[336]", "must hold a JSON object, got a list"),
    ("", "is empty"),
])
def test_a_broken_preprocessor_config_is_one_checkpoint_error_line(tmp_path, text, problem):
    """A checkpoint's preprocessor_config.json goes through the one JSON reader: one line naming the file."""
    path = tmp_path / "preprocessor_config.json"
    path.write_text(text)
    with pytest.raises(CheckpointError) as caught:
        ImageProcessor.from_folder(None, tmp_path, image_size=336)
    assert str(caught.value) == f"image preprocessor config {path} {problem}"


def test_a_broken_preprocessor_config_stops_a_command_with_one_line(tiny_llava_dir, tmp_path, capsys):
    import shutil

    from fastv.cli import main

    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_llava_dir, folder)
    (folder / "preprocessor_config.json").write_text('{"crop_size": ')
    assert main(["flops", "--model-path", str(folder), "--method", "none", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: image preprocessor config {folder / 'preprocessor_config.json'} is not valid JSON")
    assert err.count("\n") == 1

