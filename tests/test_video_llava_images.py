"""Images on Video-LLaVA: a llava-hf folder's images are preprocessed as transformers' VideoLlavaImageProcessor
does them (shortest edge resized, centre crop, CLIP mean/std: no padding to a square), the original
LanguageBind layout as its config's image_aspect_ratio says ('pad': padded, as LLaVA's evaluation).
Parity tests against transformers on a non-square image, and the layout's switch read from its config."""
import dataclasses
import json

import numpy as np
import torch
from PIL import Image


def non_square_image(size=(150, 90), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_llava_hf_video_llava_images_are_transformers_video_llava_image_processors(loaded_video, tiny_video_dir):
    from transformers import VideoLlavaImageProcessor

    _, _, processor, _ = loaded_video
    assert not processor.pad_to_square
    theirs = VideoLlavaImageProcessor.from_pretrained(str(tiny_video_dir))
    for size in ((150, 90), (90, 150)):  # wider and taller than square
        image = non_square_image(size)
        expected = theirs(images=[image], return_tensors="pt")["pixel_values_images"]
        torch.testing.assert_close(processor([image]), expected, atol=1e-6, rtol=0)


def test_the_default_video_llava_image_processor_is_224_shortest_edge_and_centre_crop(tmp_path):
    """The 7B checkpoint's numbers (224 px, CLIP's mean/std), here on transformers' defaults."""
    from transformers import VideoLlavaImageProcessor

    from llava.mm_utils import ImageProcessor

    theirs = VideoLlavaImageProcessor()
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(theirs.to_dict()))
    ours = dataclasses.replace(ImageProcessor.from_folder(tmp_path), pad_to_square=False)  # as the loader makes it
    image = non_square_image((300, 170), seed=1)
    expected = theirs(images=[image], return_tensors="pt")["pixel_values_images"]
    assert expected.shape == (1, 3, 224, 224)
    torch.testing.assert_close(ours([image]), expected, atol=1e-6, rtol=0)


def test_the_original_layout_pads_as_its_image_aspect_ratio_says(loaded_video, tiny_video_dir, tmp_path):
    from llava.model.builder import read_checkpoint
    from tests.test_languagebind import write_original_video_llava

    assert read_checkpoint(str(tiny_video_dir)).pad_to_square is False  # llava-hf: transformers' processor
    folder = write_original_video_llava(tiny_video_dir, loaded_video[1], tmp_path / "Video-LLaVA-7B")
    assert read_checkpoint(str(folder)).pad_to_square is True  # image_aspect_ratio "pad", as released
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "image_aspect_ratio": "square"}))
    assert read_checkpoint(str(folder)).pad_to_square is False
