"""Image preprocessing and prompt tokenization, as LLaVA-1.5 does them.

- Image files: one reader for the CLI and the evaluation (`decode_image`): EXIF
  orientation applied, 16-bit and float images by their real range, a pixel limit.
- Images: transparency laid over the processor's mean colour, then pad to a square
  with the same colour (LLaVA-1.5's `image_aspect_ratio: pad`), then CLIP
  preprocessing: bicubic resize of the short edge, centre crop, rescale to [0, 1],
  normalise. Matches transformers' CLIPImageProcessor (PIL backend) to float
  precision (tested).
- LLaVA-NeXT's anyres (`ImageProcessor.anyres`): the best resolution of
  `image_grid_pinpoints`, the image resized into it and padded with black, cut into
  crops after a squashed base view. Matches transformers' LlavaNextImageProcessor
  (PIL backend) to float precision (tested on six shapes).
- Prompts: the text is split at each `<image>`; every chunk is tokenized on its own
  and -200 marks where each image's tokens go. Chunks after the first lose their
  BOS, as LLaVA's `tokenizer_image_token` does.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from llava.constants import DEFAULT_IMAGE_TOKEN, DEFAULT_VIDEO_TOKEN, IMAGE_TOKEN_INDEX, VIDEO_TOKEN_INDEX
from llava.errors import CheckpointError, InputError
from llava.jsonfile import read_json

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


MAX_IMAGE_PIXELS = 178_956_970
"""Images with more pixels are refused before they are decoded: PIL's own decompression-bomb error
threshold (2 x Image.MAX_IMAGE_PIXELS, about 13,400 x 13,400), a 0.5 GB RGB buffer for a picture
CLIP shrinks to 336 px. A 20,000 x 20,000 file is an InputError (in an evaluation: that question's
error line), never a crash or an hour of decoding."""


def decode_image(source, name: str) -> Image.Image:
    """Decode an image file (a path or a binary file object; `name` says which in messages) for the
    model: RGB, or RGBA when it has transparency (`ImageProcessor` composites it onto its mean colour).

    - EXIF orientation is applied (`ImageOps.exif_transpose`): a phone photo stands as it was taken.
    - Integer modes wider than 8 bits ("I;16*", 16-bit PNG and TIFF) are read by their type's full
      range, 0..65535 -> 0..255; mode "I" (32-bit) as 16-bit when every value fits 0..65535, else
      stretched from its min..max. Float images ("F") are read as 0..1 when every value lies there,
      else stretched from min..max (a constant image outside 0..1 is clipped to 0..255); NaN is 0.
      (`convert("RGB")` clips both: 16-bit images came out all white, float ones all black.)
    - Palette, grey, bilevel, CMYK, ... convert as PIL converts them; a palette or grey image with a
      transparent colour keeps its transparency.
    A missing, unreadable, corrupt or too large (`MAX_IMAGE_PIXELS`) image is an InputError naming it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below is ours
            with Image.open(source) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise InputError(_too_large(name, width, height))
                image.load()  # decode now, so a truncated file fails here and not later
                return _for_the_model(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as error:  # PIL's guard fires inside open, before ours can
        raise InputError(f"image {name} is too large to decode ({error}); the limit is {MAX_IMAGE_PIXELS:,} pixels") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InputError(f"cannot read image {name}: not an image or corrupt ({error})") from error


def local_file(path: str | Path, kind: str) -> Path:
    """`path` as a local file of `kind` ("image", "video"); an empty path, a URL, a folder or a missing file is an
    InputError naming it."""
    text = str(path)
    if not text.strip():
        raise InputError(f"the {kind} path is empty")
    if "://" in text:
        raise InputError(f"{kind} {text}: URLs are not fetched; download the {kind} and pass the local file")
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{kind} {path} is a folder, not an {kind} file" if kind[0] in "aeiou"
                         else f"{kind} {path} is a folder, not a {kind} file")
    if not path.is_file():
        raise InputError(f"{kind} not found: {path}")
    return path


def load_image(path: str | Path) -> Image.Image:
    """The image file at `path`, as `decode_image` reads it; a path that is no image file is an InputError saying why."""
    path = local_file(path, "image")
    return decode_image(path, str(path))


def _too_large(name: str, width: int, height: int) -> str:
    return (f"image {name} is too large: {width} x {height} = {width * height:,} pixels, "
            f"the limit is {MAX_IMAGE_PIXELS:,} (see llava.mm_utils.MAX_IMAGE_PIXELS)")


def _for_the_model(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if mode == "I" and values.size and not (values.min() >= 0 and values.max() <= 65535):
            return _grey(_stretch(values))
        return _grey(values / 257.0)  # 65535 / 255: 0 -> 0, 65535 -> 255
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        in_unit_range = values.size and values.min() >= 0 and values.max() <= 1
        return _grey(values * 255.0 if in_unit_range else _stretch(values))
    return image.convert("RGBA" if _has_transparency(image) else "RGB")


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = values.min(), values.max()
    return (values - low) * 255.0 / (high - low) if high > low else values


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L").convert("RGB")


def composite_on(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """An RGB image: an image with transparency laid over `background`, any other converted."""
    if not _has_transparency(image):
        return image.convert("RGB")
    canvas = Image.new("RGBA", image.size, background + (255,))
    return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad the short side (centred) with `background` so the image is square."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


# ----------------------------------------------------------------------------- anyres (LLaVA-NeXT)


def select_best_resolution(image_size: tuple[int, int], pinpoints) -> tuple[int, int]:
    """The (height, width) of `pinpoints` ([[height, width], ...], as `image_grid_pinpoints`) that
    LLaVA-NeXT picks for an image of `image_size` = (height, width): the one that keeps the most of
    the image's pixels when it is scaled to fit (never more than the image has), then the one that
    wastes the fewest pixels on padding; the first such in the list on a tie."""
    height, width = image_size
    best, best_key = None, None
    for target_height, target_width in pinpoints:
        scale = min(target_width / width, target_height / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        key = (effective, -(target_width * target_height - effective))
        if best_key is None or key > best_key:
            best, best_key = (int(target_height), int(target_width)), key
    return best


def resize_and_pad(image: Image.Image, target: tuple[int, int], resample=Image.BICUBIC) -> Image.Image:
    """`image` scaled (aspect ratio kept) to fit `target` = (height, width), centred on black, as
    LLaVA-NeXT pads: the side that limits the scale fills the target, the other is rounded up."""
    target_height, target_width = target
    scale_width, scale_height = target_width / image.width, target_height / image.height
    if scale_width < scale_height:
        size = (target_width, min(math.ceil(image.height * scale_width), target_height))
    else:
        size = (min(math.ceil(image.width * scale_height), target_width), target_height)
    canvas = Image.new("RGB", (target_width, target_height), (0, 0, 0))
    canvas.paste(image.resize(size, resample=resample), ((target_width - size[0]) // 2, (target_height - size[1]) // 2))
    return canvas


@dataclass(frozen=True)
class AnyresImage:
    """One image cut as LLaVA-NeXT cuts it: the base view first, then the crops row by row."""

    pixel_values: torch.Tensor  # (1 + rows * cols, 3, S, S): base, then crops in row-major order
    grid: tuple[int, int]  # (rows, cols) of crops
    resolution: tuple[int, int]  # (height, width) chosen from the pinpoints
    image_size: tuple[int, int]  # (height, width) of the original image: the model unpads to it


def parse_image_grid(text: str, crop: int) -> tuple[int, int]:
    """'672x672' (width x height in pixels, multiples of the crop size) -> (height, width)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match:
        raise InputError(f"--image-grid must be WIDTHxHEIGHT in pixels, e.g. {2 * crop}x{2 * crop}; got '{text}'")
    width, height = int(match.group(1)), int(match.group(2))
    if width <= 0 or height <= 0 or width % crop or height % crop:
        raise InputError(f"--image-grid {width}x{height} must be made of whole {crop}-pixel crops (e.g. {2 * crop}x{2 * crop})")
    return height, width


def check_pinpoints(pinpoints, crop: int) -> tuple[tuple[int, int], ...]:
    """`image_grid_pinpoints` ([[height, width], ...]) as a tuple of pairs, each a multiple of the crop size."""
    if not isinstance(pinpoints, (list, tuple)) or not pinpoints:
        raise InputError(f"image_grid_pinpoints must be a non-empty list of [height, width] pairs, got {pinpoints!r}")
    pairs = []
    for pinpoint in pinpoints:
        valid = isinstance(pinpoint, (list, tuple)) and len(pinpoint) == 2 and all(
            isinstance(side, int) and not isinstance(side, bool) and side > 0 and side % crop == 0 for side in pinpoint)
        if not valid:
            raise InputError(f"image_grid_pinpoints entry {pinpoint!r} is not a [height, width] in multiples of {crop} (the crop size)")
        pairs.append((pinpoint[0], pinpoint[1]))
    return tuple(pairs)


@dataclass(frozen=True)
class ImageProcessor:
    """CLIP preprocessing with LLaVA-1.5's pad-to-square in front, or LLaVA-NeXT's anyres cut
    (when `image_grid_pinpoints` is set)."""

    image_size: int = 336  # short edge after resize, and the crop
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    rescale_factor: float = 1 / 255
    pad_to_square: bool = True
    image_grid_pinpoints: tuple[tuple[int, int], ...] | None = None  # (height, width) canvases of anyres

    @classmethod
    def from_folder(cls, *folders: Path | None, image_size: int | None = None) -> "ImageProcessor":
        """Read preprocessor_config.json from the first folder that has one (one CheckpointError line if it is
        not a JSON object); CLIP's defaults otherwise."""
        for folder in folders:
            if folder is not None and (Path(folder) / "preprocessor_config.json").is_file():
                raw = read_json(Path(folder) / "preprocessor_config.json", what="image preprocessor config",
                                error=CheckpointError)
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

    def __call__(self, images: list[Image.Image]) -> torch.Tensor | list[AnyresImage]:
        """PIL images -> pixel values (I, 3, S, S) float32, or one AnyresImage each for LLaVA-NeXT."""
        if self.image_grid_pinpoints is not None:
            return [self.anyres(image, self.image_grid_pinpoints) for image in images]
        return torch.stack([self.preprocess(image) for image in images])

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        image = composite_on(image, self.background)  # transparency shows the colour LLaVA pads with
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


    def anyres(self, image: Image.Image, pinpoints) -> AnyresImage:
        """LLaVA-NeXT's anyres preprocessing: the best resolution of `pinpoints` ([[height, width]]),
        the image resized into it and padded, cut into `image_size` crops, after the whole image
        squashed to one crop (the base view); each view then through CLIP preprocessing. Pinpoints
        must be multiples of the crop size."""
        size = self.image_size
        pinpoints = check_pinpoints(pinpoints, size)
        image = composite_on(image, self.background)
        resolution = select_best_resolution((image.height, image.width), pinpoints)
        canvas = resize_and_pad(image, resolution)
        rows, cols = resolution[0] // size, resolution[1] // size
        crops = [canvas.crop((c * size, r * size, (c + 1) * size, (r + 1) * size)) for r in range(rows) for c in range(cols)]
        base = image.resize((size, size), resample=Image.BICUBIC)
        views = [self.preprocess(view) for view in [base, *crops]]  # square already: no padding, no crop
        return AnyresImage(torch.stack(views), (rows, cols), resolution, (image.height, image.width))


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX) -> list[int]:
    """Token ids of `prompt` with `image_token_index` where each `<image>` stands and VIDEO_TOKEN_INDEX where
    each `<video>` stands (Video-LLaVA)."""
    ids: list[int] = []
    pieces = re.split(f"({re.escape(DEFAULT_IMAGE_TOKEN)}|{re.escape(DEFAULT_VIDEO_TOKEN)})", prompt)
    for number, chunk in enumerate(pieces[::2]):
        # verbose=False: no transformers warning against the tokenizer's model_max_length, a number that
        # need not be the model's context; generate() checks the whole prompt, visual tokens included.
        chunk_ids = tokenizer(chunk, verbose=False).input_ids
        if number > 0:
            if chunk_ids and chunk_ids[0] == tokenizer.bos_token_id:
                chunk_ids = chunk_ids[1:]
            ids.append(image_token_index if pieces[2 * number - 1] == DEFAULT_IMAGE_TOKEN else VIDEO_TOKEN_INDEX)
        ids.extend(chunk_ids)
    return ids
