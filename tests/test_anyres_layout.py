"""The anyres layout (llava/model/anyres.py): the order of transformers' LlavaNextModel.pack_image_features
for spatial_unpad, the stitched raster for spatial, and kept patches filtered into it."""

from types import SimpleNamespace

import pytest
import torch

from llava.mm_utils import select_best_resolution
from llava.model.anyres import NEWLINE, anyres_layout, keep_in_layout, unpadded_window

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
SIDE = 24  # 336 px / patch 14


def transformers_order(image_size, grid):
    """transformers' packing of features that name themselves: feature (p, i) = [p, i], newline = [-1, -1]."""
    modeling = pytest.importorskip("transformers.models.llava_next.modeling_llava_next")
    partitions = 1 + grid[0] * grid[1]
    ids = torch.stack(torch.meshgrid(torch.arange(partitions), torch.arange(SIDE * SIDE), indexing="ij"), dim=-1)
    config = SimpleNamespace(vision_config=SimpleNamespace(image_size=336, patch_size=14), image_grid_pinpoints=PINPOINTS)
    packed, _ = modeling.LlavaNextModel.pack_image_features(
        SimpleNamespace(config=config), [ids.float()], torch.tensor([image_size]), "default",
        torch.tensor([float(NEWLINE), float(NEWLINE)]),
    )
    return packed[0].long()


@pytest.mark.parametrize("image_size", [(400, 400), (400, 800), (800, 400), (300, 900), (13, 20), (2200, 3000), (500, 333)])
def test_spatial_unpad_is_transformers_order(image_size):
    resolution = select_best_resolution(image_size, PINPOINTS)
    grid = (resolution[0] // 336, resolution[1] // 336)
    layout = anyres_layout(grid, SIDE, image_size, "spatial_unpad")
    assert torch.equal(layout, transformers_order(image_size, grid))


def test_layout_by_hand():
    # a 2 x 1 grid of 2 x 2 crops for an image twice as wide as high: rows 0 and 3 of 4 are padding
    layout = anyres_layout((2, 1), 2, (10, 20), "spatial_unpad").tolist()
    n = [NEWLINE, NEWLINE]
    assert layout == [[0, 0], [0, 1], [0, 2], [0, 3],  # the base view first
                      [1, 2], [1, 3], n,  # stitched row 1: crop (0, 0)'s patch row 1
                      [2, 0], [2, 1], n]  # stitched row 2: crop (1, 0)'s patch row 0
    # spatial: the whole stitched raster, no newline; crop (0, 1) sits right of crop (0, 0)
    assert anyres_layout((1, 2), 2, (10, 20), "spatial").tolist()[4:] == [
        [1, 0], [1, 1], [2, 0], [2, 1], [1, 2], [1, 3], [2, 2], [2, 3]]


def test_unpadded_window():
    assert unpadded_window(48, 48, (400, 400)) == (slice(0, 48), slice(0, 48))
    # 300 x 900 in a 24 x 72 grid: exact, nothing to cut; 500 x 333 in 48 x 48: 48 * 333 / 500 = 31.968 -> 31 columns
    assert unpadded_window(24, 72, (300, 900)) == (slice(0, 24), slice(0, 72))
    assert unpadded_window(48, 48, (500, 333)) == (slice(0, 48), slice(8, 40))


def test_kept_patches_filtered_into_the_layout():
    layout = anyres_layout((2, 1), 2, (10, 20), "spatial_unpad")
    kept = [torch.tensor([3]), torch.tensor([0, 3]), torch.tensor([1])]  # crop 1's patch 0 is in the padding
    keep = keep_in_layout(layout, kept, partitions=3)
    assert layout[keep].tolist() == [[0, 3], [1, 3], [NEWLINE, NEWLINE], [2, 1], [NEWLINE, NEWLINE]]


def test_unknown_merge():
    with pytest.raises(ValueError, match="unknown patch merge 'flat'"):
        anyres_layout((1, 1), 2, (4, 4), "flat")
