"""What the model takes in, checked before the work: a LLaVA-NeXT canvas is bounded by the context (`--image-grid`
before any weight is read, the checkpoint's image_grid_pinpoints once its weights are checked; no image is ever
resized into one), and a prompt too long for the context is refused before its image is resized or encoded, from
the image's size alone (issue 24, item 10). The tiny NeXT checkpoint: 112-px crops of 8 x 8 = 64 patches, a
context of 1,024."""

import json
import shutil

import pytest

from llava.conversation import build_prompt
from llava.errors import CheckpointError, InputError
from llava.mm_utils import tokenizer_image_token
from llava.model import builder
from llava.model.anyres import anyres_layout, image_token_count
from llava.pipeline import LlavaPipeline, Request
from tests import helpers
from tests.test_next_parity import QUESTIONS, prompts_for


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if the loader reads a weight: the check must come first."""
    def refuse(files):
        raise AssertionError("weights were read before the check")

    monkeypatch.setattr(builder, "read_weights", refuse)


@pytest.mark.parametrize("merge", ["spatial", "spatial_unpad"])
def test_the_token_count_by_arithmetic_is_the_layouts_length(merge):
    for grid in [(1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (3, 1), (3, 3)]:
        for size in [(100, 300), (300, 100), (120, 160), (140, 90), (224, 224), (1, 1000), (1000, 1), (777, 333)]:
            assert image_token_count(grid, 8, size, merge) == len(anyres_layout(grid, 8, size, merge))


def test_a_huge_image_grid_is_refused_before_any_weight_is_read(tiny_next_dir, no_weights):
    # 33600 / 112 = 300 crops a side; an image of the canvas's shape: 64 (base) + 2400 rows x (2400 + 1 newline).
    with pytest.raises(InputError) as error:
        builder.load_pretrained_model(str(tiny_next_dir), image_grid="33600x33600")
    assert str(error.value) == ("--image-grid: the canvas 33600x33600 cuts an image into 300x300 crops: 5,762,464 visual"
                                " tokens (spatial_unpad) for an image of its shape, more than the context of 1,024")
    with pytest.raises(InputError, match="cuts an image into 60x60 crops: 230,464 visual tokens"):  # 64 + 480 x 480
        builder.load_pretrained_model(str(tiny_next_dir), image_grid="6720x6720", patch_merge="spatial")


def test_a_checkpoint_canvas_beyond_the_context_is_a_checkpoint_error(tiny_next_dir, tmp_path):
    folder = tmp_path / "next"
    shutil.copytree(tiny_next_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["image_grid_pinpoints"] = [[224, 224], [33600, 33600]]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as error:
        builder.load_pretrained_model(str(folder))
    assert str(error.value) == (f"{folder}: the image_grid_pinpoints canvas 33600x33600 cuts an image into 300x300"
                                " crops: 5,762,464 visual tokens (spatial_unpad) for an image of its shape, more than"
                                " the context of 1,024")
    # --image-grid replaces the checkpoint's canvases: only the one in use is checked
    assert builder.load_pretrained_model(str(folder), image_grid="224x224")[2].image_grid_pinpoints == ((224, 224),)


def test_the_bound_is_the_context(tiny_next_dir):
    checkpoint = builder.read_checkpoint(str(tiny_next_dir))
    # 2 x 7 crops: 64 + 16 rows x (56 + 1) = 976 tokens fit 1,024; 3 x 5: 64 + 24 x (40 + 1) = 1,048 do not.
    assert builder.anyres_options(checkpoint, None, "784x224") == ((224, 784),)
    with pytest.raises(InputError, match="560x336 cuts an image into 3x5 crops: 1,048 visual tokens"):
        builder.anyres_options(checkpoint, None, "560x336")
    # spatial, no newline tokens: 64 + 24 x 40 = 1,024 fit exactly
    assert builder.anyres_options(checkpoint, "spatial", "560x336") == ((336, 560),)


@pytest.mark.parametrize("spec", ["none", "fastv:k=2,keep=8"])
def test_the_count_before_encoding_is_the_count_the_llm_gets(loaded_next, spec):
    tokenizer, model, processor, _ = loaded_next
    sizes = [(160, 120), (90, 140), (300, 100), (112, 112), (50, 333)]  # (width, height): every stock canvas
    pictures = helpers.random_images(len(sizes), seed=61, sizes=sizes)
    model.set_pruning(spec)
    try:
        stats = model(prompts_for(tokenizer, [QUESTIONS[0]] * len(sizes)), processor(pictures)).stats
        counted = [model.tokens_before_encoding((p.height, p.width), processor.image_grid_pinpoints) for p in pictures]
    finally:
        model.set_pruning("none")
    assert counted == [sample[0] for sample in stats.visual_tokens]


def test_a_pre_llm_pruner_decides_its_count_after_encoding(loaded_next):
    model = loaded_next[1]
    model.set_pruning("fastervlm:keep=8")
    try:
        assert model.tokens_before_encoding((120, 160), loaded_next[2].image_grid_pinpoints) is None
    finally:
        model.set_pruning("none")


class NoResize:
    """An image processor that fails the test if it is asked to resize or cut an image."""

    def __init__(self, processor):
        self.image_grid_pinpoints = processor.image_grid_pinpoints

    def __call__(self, pictures):
        raise AssertionError("the image was resized before the context check")


def test_a_prompt_too_long_for_the_context_is_refused_before_its_image_is_resized(tiny_next_dir):
    tokenizer, model, processor, context = builder.load_pretrained_model(str(tiny_next_dir), image_grid="784x224")
    pipe = LlavaPipeline(tokenizer, model, NoResize(processor), context, "tiny-next", "vicuna_v1")
    picture = helpers.random_images(1, seed=62, sizes=[(784, 224)])[0]  # the canvas's shape: 976 visual tokens
    request = Request(image=picture, text="describe the colour and the shape of what is in this image " * 4)
    ids = tokenizer_image_token(build_prompt(request.text, "vicuna_v1", with_image=True), tokenizer)
    length = len(ids) - 1 + 976
    assert length > 1024  # the prompt's text does not fit beside the image
    with pytest.raises(InputError) as error:
        pipe.answer([request])
    assert str(error.value) == f"prompt of {length} tokens (visual tokens included) is longer than the context of 1024"
