"""LLaVA-NeXT's anyres preprocessing: the resolution rule on hand-worked cases, and the same pixel
tensors as transformers' LlavaNextImageProcessor (PIL backend) on images of six shapes."""

import numpy as np
import pytest
from PIL import Image

from llava.errors import InputError
from llava.mm_utils import ImageProcessor, resize_and_pad, select_best_resolution

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # [height, width], llava-v1.6's first five


@pytest.mark.parametrize("size, best", [
    # 400 x 400: 672x672 keeps all 160,000 pixels; every other target scales to 336 x 336 (112,896)
    ((400, 400), (672, 672)),
    # 400 high, 800 wide: 336x672, 672x672 and 336x1008 all keep 672 x 336 = 225,792; 336x672 wastes nothing
    ((400, 800), (336, 672)),
    ((800, 400), (672, 336)),
    # 300 x 900: only 336x1008 keeps every pixel (scale 1.12)
    ((300, 900), (336, 1008)),
])
def test_best_resolution_by_hand(size, best):
    assert select_best_resolution(size, PINPOINTS) == best


def test_best_resolution_ties_go_to_the_first_pinpoint():
    # a 100 x 100 image fits either target whole, and both waste 225,792 - 10,000 pixels
    assert select_best_resolution((100, 100), [[672, 336], [336, 672]]) == (672, 336)
    assert select_best_resolution((100, 100), [[336, 672], [672, 336]]) == (336, 672)


def test_resize_and_pad_keeps_the_aspect_ratio_and_centres_on_black():
    image = Image.new("RGB", (100, 50), (255, 255, 255))
    padded = resize_and_pad(image, (336, 672))  # scale 6.72 both ways: fills the target exactly
    assert padded.size == (672, 336) and np.asarray(padded).min() == 255
    padded = np.asarray(resize_and_pad(image, (672, 672)))  # 672 x 336 content, 168 black rows above and below
    assert padded[:168].max() == 0 and padded[-168:].max() == 0 and padded[168:504].min() == 255


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    processor_class = getattr(transformers, "LlavaNextImageProcessorPil", None)
    if processor_class is None:
        pytest.skip("this transformers has no LlavaNextImageProcessorPil")
    return processor_class(image_grid_pinpoints=PINPOINTS, size={"shortest_edge": 336},
                           crop_size={"height": 336, "width": 336})


@pytest.mark.parametrize("width, height, grid", [
    (400, 400, (2, 2)),  # square
    (800, 400, (1, 2)),  # 2:1
    (400, 800, (2, 1)),  # 1:2
    (900, 300, (1, 3)),  # 3:1
    (20, 13, (1, 2)),  # very small
    (3000, 2200, (2, 2)),  # very large
])
def test_same_pixels_as_transformers(reference, width, height, grid):
    rng = np.random.default_rng(width * height)
    image = Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))
    ours = ImageProcessor(image_size=336).anyres(image, PINPOINTS)
    theirs = reference(images=[image], return_tensors="pt")
    assert ours.grid == grid and ours.image_size == (height, width)
    assert tuple(theirs["image_sizes"][0].tolist()) == ours.image_size
    expected = theirs["pixel_values"][0]
    assert ours.pixel_values.shape == expected.shape == (1 + grid[0] * grid[1], 3, 336, 336)
    assert (ours.pixel_values - expected).abs().max() < 1e-5


@pytest.mark.parametrize("pinpoints", [[[336, 600]], [[0, 336]], [[336]]])
def test_pinpoints_that_are_no_multiple_of_the_crop_are_refused(pinpoints):
    with pytest.raises(InputError, match="is not a \\[height, width\\] in multiples of 336"):
        ImageProcessor(image_size=336).anyres(Image.new("RGB", (10, 10)), pinpoints)
