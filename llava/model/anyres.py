"""Where each visual token of a LLaVA-NeXT image sits in the LLM sequence: the anyres layout.

An anyres image is P = 1 + rows x cols partitions of `side` x `side` patches: the
base view, then the crops in row-major order of the crop grid
(`ImageProcessor.anyres`). The LLM sees the base view's patches first, in
raster order, then the crops stitched into one (rows x side) x (cols x side) grid
read in raster order, so crop (r, c)'s patch (y, x) sits at stitched row
r * side + y, column c * side + x. The two merges of LLaVA-NeXT's
`mm_patch_merge_type`:

- `spatial_unpad` (stock checkpoints): the stitched grid is cut back to the
  image's aspect ratio (the rows or columns that only padding covers go) and an
  `image_newline` token ends every remaining row;
- `spatial` (FasterVLM's protocol): the whole stitched grid, no newline tokens.

`anyres_layout` returns the sequence as (partition, patch) pairs, NEWLINE for a
newline token, so that a method that keeps some patches of each partition gets its
tokens in the model's order by filtering the layout (tokens that fall into the
padding are not in it; newline tokens always stay). Matches the order of
transformers' `LlavaNextModel.pack_image_features` (tested), which stitches rows
and columns the right way round (METHODS.md: HiRED's vendored copy swapped them).

Where this file sits among the others, and one request's path through them: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import torch

from llava.model.pruning.base import NEWLINE  # the (partition, patch) pair of an image_newline token: (NEWLINE, NEWLINE)

MERGES = ("spatial_unpad", "spatial")


def unpadded_window(height: int, width: int, image_size: tuple[int, int]) -> tuple[slice, slice]:
    """The rows and columns of a `height` x `width` stitched grid that the image of `image_size`
    = (original height, original width) covers after anyres resized and centre-padded it.

    The side that limited the resize fills the grid; the other is the original side scaled by the
    same factor (rounded to 7 decimals, then truncated, as LLaVA-NeXT computes it), and the padding
    split evenly with the odd row or column left in.
    """
    original_height, original_width = image_size
    if original_width / original_height > width / height:  # wider than the grid: rows were padded
        kept = int(round(original_height * (width / original_width), 7))
        padding = (height - kept) // 2
        return slice(padding, height - padding), slice(0, width)
    kept = int(round(original_width * (height / original_height), 7))
    padding = (width - kept) // 2
    return slice(0, height), slice(padding, width - padding)


def anyres_layout(grid: tuple[int, int], side: int, image_size: tuple[int, int], merge: str) -> torch.Tensor:
    """(T, 2) long: the (partition, patch) of each visual token of one image, in sequence order.

    Partition 0 is the base view, 1 + r * cols + c the crop at row r, column c; patch is the index
    in that partition's `side` x `side` raster; (NEWLINE, NEWLINE) marks an image_newline token.
    """
    if merge not in MERGES:
        raise ValueError(f"unknown patch merge '{merge}' (known: {', '.join(MERGES)})")
    rows, cols = grid
    y = torch.arange(rows * side)[:, None].expand(-1, cols * side)  # stitched-grid coordinates
    x = torch.arange(cols * side)[None, :].expand(rows * side, -1)
    partition = 1 + (y // side) * cols + x // side
    patch = (y % side) * side + x % side
    stitched = torch.stack([partition, patch], dim=-1)  # (rows * side, cols * side, 2)
    if merge == "spatial_unpad":
        row_window, col_window = unpadded_window(rows * side, cols * side, image_size)
        stitched = stitched[row_window, col_window]
        newline = torch.full((stitched.shape[0], 1, 2), NEWLINE)
        stitched = torch.cat([stitched, newline], dim=1)
    base = torch.stack([torch.zeros(side * side, dtype=torch.long), torch.arange(side * side)], dim=-1)
    return torch.cat([base, stitched.reshape(-1, 2)])


def image_token_count(grid: tuple[int, int], side: int, image_size: tuple[int, int], merge: str) -> int:
    """len(anyres_layout(grid, side, image_size, merge)), by arithmetic: the tokens one unpruned image brings,
    known from its size before it is resized, cut or encoded (a huge canvas is refused without allocating it)."""
    if merge not in MERGES:
        raise ValueError(f"unknown patch merge '{merge}' (known: {', '.join(MERGES)})")
    rows, cols = grid
    height, width = rows * side, cols * side
    if merge == "spatial":
        return side * side + height * width
    row_window, col_window = unpadded_window(height, width, image_size)
    kept_rows, kept_cols = len(range(height)[row_window]), len(range(width)[col_window])
    return side * side + kept_rows * (kept_cols + 1)  # + 1: the image_newline token ending each row


def keep_in_layout(layout: torch.Tensor, kept: list[torch.Tensor], partitions: int) -> torch.Tensor:
    """The rows of `layout` that stay when partition p keeps the patches `kept[p]`: (T',) bool.
    Newline tokens always stay; a kept patch the layout has no row for (in the padding) is dropped."""
    table = torch.zeros(partitions, int(layout[:, 1].max()) + 1, dtype=torch.bool)  # (partition, patch) -> kept
    for p, indices in enumerate(kept):
        table[p, indices] = True
    newline = layout[:, 0] == NEWLINE
    visual = ~newline
    keep = newline.clone()
    keep[visual] = table[layout[visual, 0], layout[visual, 1]]
    return keep
