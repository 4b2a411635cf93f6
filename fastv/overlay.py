"""Kept-token overlays: each view the vision tower saw, the patches a method kept outlined, the dropped
ones dimmed (`fastv run --overlay FILE.png`).

A LLaVA-1.5 image is one panel; a LLaVA-NeXT image is one panel per partition (base view, then the crops
in row-major order of the crop grid) with the partition's count in its title, as HiRED shows where its
budget went. The panels are the model's own input, un-normalised from the pixel values it ran on, so
patch (y, x) is the square the vision tower read. "Kept" is what `kept_partitions` says: the patches
that entered the LLM, or survived layer k for FastV; a token that is no patch (PruMerge's extra token)
has no square and is counted in the title.

A Video-LLaVA video is a strip of its 8 frames in time order, each as the video tower saw it, titled with
the frame's index in the file and its kept patches ("frame 42" / "16/256 +CLS": 16 of 256 patches kept, and
the frame's [CLS] token too). FastV ranks the whole video at once, so its frames keep unequal counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

DIM = 0.3  # brightness left to a dropped patch
OUTLINE = (255, 40, 40)
TITLE_HEIGHT = 16
GAP = 6


def to_rgb(pixel_values: torch.Tensor, mean, std) -> np.ndarray:
    """(3, S, S) normalised pixel values -> (S, S, 3) uint8, as the vision tower saw them."""
    pixels = pixel_values.detach().float().cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def mark(view: np.ndarray, kept: list[int], grid: int) -> Image.Image:
    """One panel: `view` with the patches not in `kept` dimmed and a one-pixel outline around each kept one."""
    size = view.shape[0]
    patch = size // grid
    keep = np.zeros((grid, grid), dtype=bool)
    keep.flat[kept] = True
    mask = np.zeros((size, size), dtype=bool)
    mask[: grid * patch, : grid * patch] = np.kron(keep, np.ones((patch, patch), dtype=bool))
    panel = np.where(mask[..., None], view, (view * DIM).astype(np.uint8))
    image = Image.fromarray(panel)
    draw = ImageDraw.Draw(image)
    for index in kept:
        y, x = divmod(index, grid)
        draw.rectangle([x * patch, y * patch, (x + 1) * patch - 1, (y + 1) * patch - 1], outline=OUTLINE)
    return image


def panel_titles(kept_partitions: list[list[int]], partition_grid: tuple[int, int], patches: int,
                 other_tokens: int = 0) -> list[str]:
    """'base: 29/576', 'crop 1,2: 40/576', ...; LLaVA-1.5: 'kept 64/576'; '+N merged' for tokens that are no patch."""
    rows, cols = partition_grid
    if rows == 0:
        titles = [f"kept {len(kept_partitions[0])}/{patches}"]
    else:
        titles = [f"base: {len(kept_partitions[0])}/{patches}"]
        titles += [f"crop {r},{c}: {len(kept_partitions[1 + r * cols + c])}/{patches}" for r in range(rows) for c in range(cols)]
    if other_tokens:
        titles[0] += f" (+{other_tokens} not patches)"
    return titles


def overlay(views: torch.Tensor, kept_partitions: list[list[int]], partition_grid: tuple[int, int], grid: int,
            mean, std, other_tokens: int = 0) -> Image.Image:
    """views (P, 3, S, S): one image's views in partition order -> the panels side by side under their titles."""
    panels = [mark(to_rgb(v, mean, std), kept, grid) for v, kept in zip(views, kept_partitions)]
    titles = panel_titles(kept_partitions, partition_grid, grid * grid, other_tokens)
    size = panels[0].width
    canvas = Image.new("RGB", (len(panels) * (size + GAP) - GAP, size + TITLE_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    for n, (panel, title) in enumerate(zip(panels, titles)):
        left = n * (size + GAP)
        canvas.paste(panel, (left, TITLE_HEIGHT))
        draw.text((left + 2, 2), title, fill="black")
    return canvas


def frame_titles(frames: list[int], kept_frames: list[list[int]], kept_cls: list[int], patches: int) -> list[tuple[str, str]]:
    """Per frame of a video: ('frame 42', '16/256 +CLS'); '+CLS' when that frame's [CLS] token entered the LLM."""
    return [(f"frame {index}", f"{len(kept)}/{patches}" + (" +CLS" if t in kept_cls else ""))
            for t, (index, kept) in enumerate(zip(frames, kept_frames))]


def strip(frames: torch.Tensor, kept_frames: list[list[int]], titles: list[tuple[str, str]], grid: int, mean,
          std) -> Image.Image:
    """frames (T, 3, S, S): one video's frames in time order -> the marked frames side by side, two title lines each."""
    panels = [mark(to_rgb(f, mean, std), kept, grid) for f, kept in zip(frames, kept_frames)]
    size = panels[0].width
    canvas = Image.new("RGB", (len(panels) * (size + GAP) - GAP, size + 2 * TITLE_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    for n, (panel, lines) in enumerate(zip(panels, titles)):
        left = n * (size + GAP)
        canvas.paste(panel, (left, 2 * TITLE_HEIGHT))
        for row, line in enumerate(lines):
            draw.text((left + 2, 2 + row * TITLE_HEIGHT), line, fill="black")
    return canvas


def stack(top: Image.Image, bottom: Image.Image) -> Image.Image:
    """Two overlays one above the other (a prompt with an image and a video)."""
    canvas = Image.new("RGB", (max(top.width, bottom.width), top.height + GAP + bottom.height), "white")
    canvas.paste(top, (0, 0))
    canvas.paste(bottom, (0, top.height + GAP))
    return canvas


def render(pipe, request, answer) -> Image.Image:
    """The overlay of `answer` (an Answer of `pipe` to `request`, which has an image, a video or both: the image's
    panels above the video's strip). The image, when there is one, is the prompt's first visual."""
    _, _, images, videos = pipe.encode([request])
    config, processor = pipe.model.config, pipe.image_processor
    mean, std, grid = processor.image_mean, processor.image_std, config.vision.grid_size
    drawn = []
    if request.image is not None:
        views = images[0].pixel_values if config.anyres else images[:1]
        other = sum(1 for i in answer.kept[0] if i < 0)
        drawn.append(overlay(views, answer.kept_partitions[0], tuple(answer.partition_grid[0]), grid, mean, std, other))
    if request.video is not None:
        titles = frame_titles(answer.frames, answer.kept_frames, answer.kept_frame_cls, grid * grid)
        drawn.append(strip(videos[0], answer.kept_frames, titles, grid, mean, std))
    return drawn[0] if len(drawn) == 1 else stack(*drawn)


def write_overlay(path: str | Path, pipe, request, answer) -> Path:
    """`render`'s overlay written to `path` (PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render(pipe, request, answer).save(path)
    return path
