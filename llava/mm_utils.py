"""Image preprocessing and prompt tokenization, as LLaVA-1.5 does them.

- Images: pad to a square with the processor's mean colour (LLaVA-1.5's
  `image_aspect_ratio: pad`), then CLIP preprocessing: bicubic resize of the short
  edge, centre crop, rescale to [0, 1], normalise. Matches transformers'
  CLIPImageProcessor (PIL backend) to float precision (tested).
- Prompts: the text is split at each `<image>`; every chunk is tokenized on its own
  and -200 marks where each image's tokens go. Chunks after the first lose their
  BOS, as LLaVA's `tokenizer_image_token` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.errors import InputError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB; a missing or unreadable file is an InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here and not later
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise InputError(f"cannot read image {path}: not an image or corrupt ({error})") from error


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad the short side (centred) with `background` so the image is square."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


@dataclass(frozen=True)
class ImageProcessor:
    """CLIP preprocessing with LLaVA-1.5's pad-to-square in front."""

    image_size: int = 336  # short edge after resize, and the crop
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    rescale_factor: float = 1 / 255
    pad_to_square: bool = True

    @classmethod
    def from_folder(cls, *folders: Path | None, image_size: int | None = None) -> "ImageProcessor":
        """Read preprocessor_config.json from the first folder that has one; CLIP's defaults otherwise."""
        for folder in folders:
            if folder is not None and (Path(folder) / "preprocessor_config.json").is_file():
                raw = json.loads((Path(folder) / "preprocessor_config.json").read_text())
                crop = raw.get("crop_size", image_size)
                crop = crop.get("height", crop.get("shortest_edge")) if isinstance(crop, dict) else crop
                return cls(
                    image_size=int(crop or image_size or 336),
                    image_mean=tuple(raw.get("image_mean", CLIP_MEAN)),
                    image_std=tuple(raw.get("image_std", CLIP_STD)),
                    rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
                )
        return cls(image_size=image_size or 336)

    @property
    def background(self) -> tuple[int, int, int]:
        return tuple(int(x * 255) for x in self.image_mean)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> pixel values (I, 3, S, S) float32."""
        return torch.stack([self.preprocess(image) for image in images])

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if self.pad_to_square:
            image = expand_to_square(image, self.background)
        size = self.image_size
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(size * long / short)
        new_size = (size, new_long) if width <= height else (new_long, size)
        image = image.resize(new_size, resample=Image.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
        pixels = np.asarray(image, dtype=np.float32) * np.float32(self.rescale_factor)  # (S, S, 3)
        pixels = (pixels - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy())  # (3, S, S)


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX) -> list[int]:
    """Token ids of `prompt` with `image_token_index` where each `<image>` stands."""
    ids: list[int] = []
    for number, chunk in enumerate(prompt.split(DEFAULT_IMAGE_TOKEN)):
        # verbose=False: no transformers warning against the tokenizer's model_max_length, a number that
        # need not be the model's context; generate() checks the whole prompt, visual tokens included.
        chunk_ids = tokenizer(chunk, verbose=False).input_ids
        if number > 0:
            if chunk_ids and chunk_ids[0] == tokenizer.bos_token_id:
                chunk_ids = chunk_ids[1:]
            ids.append(image_token_index)
        ids.extend(chunk_ids)
    return ids
