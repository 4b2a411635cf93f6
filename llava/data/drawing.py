"""Drawing the synthetic shapes: backgrounds, shapes and printed text (pixels only, no questions).

`llava.data.synthetic` decides what is in a scene and where; this module turns
that into pixels. Everything takes the numpy generator of the sample it draws,
so a sample stays reproducible from its seed alone.

Backgrounds (``BACKGROUNDS``; every colour has saturation <= 0.25, the objects'
>= 0.7, so an object never blends into its background):

- ``muted``: a two-tone gradient with faint stripes and luminance noise (the
  benchmark's look since generator version 2);
- ``flat``: one colour, a third of the time near white;
- ``gradient``: a ramp between two unrelated muted colours;
- ``noise``: low-frequency blotches and pixel noise on a muted colour;
- ``texture``: a checkerboard, stripes or dots in two close tones;
- ``plain``: a flat near-white or pale colour (the held-out look's).

`video_backgrounds` gives a clip's frames the ``muted`` background with a little fresh noise each.

Shapes: `draw_shape` fills a hard-edged PIL polygon (every training look);
`draw_outlined` is a second routine that training never sees: the shape
anti-aliased by supersampling, in the palette's exact colour, with a dark
outline (the held-out ``drawn`` look).
"""

from __future__ import annotations

import colorsys
import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

OCR_FONT_SIZE = 32
OCR_PADDING = 6
TEXT_BOX_FILL = (236, 234, 228)
TEXT_FILL = (25, 25, 30)
BACKGROUNDS = ("muted", "flat", "gradient", "noise", "texture", "plain")
SUPERSAMPLE = 4  # draw_outlined: sub-pixels per pixel side
OUTLINE_PX = 2  # draw_outlined: width of the dark outline
OUTLINE_SHADE = 0.45  # draw_outlined: the outline's colour is the fill's times this


# ----------------------------------------------------------------------------
# Backgrounds: (H, W, 3) uint8


def background(kind: str, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A background of ``kind`` (one of ``BACKGROUNDS``), (height, width, 3) uint8."""
    if kind not in _BACKGROUND_MAKERS:
        raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")
    return _BACKGROUND_MAKERS[kind](rng, width, height)


def muted_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A two-tone gradient, faint stripes and luminance noise, (H, W, 3) uint8."""
    hue = rng.random()
    tone_a = muted_color(rng, hue)
    tone_b = muted_color(rng, (hue + rng.uniform(-0.08, 0.08)) % 1.0)
    gradient_angle, stripe_angle = rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
    stripe_period, stripe_amplitude = rng.uniform(12, 40), rng.uniform(3, 8)  # px, levels

    along = _ramp(gradient_angle, width, height)  # (H, W), 0 .. 1
    stripes = stripe_amplitude * _sine_wave(stripe_angle, stripe_period, width, height)  # (H, W)
    noise = np.frombuffer(rng.bytes(width * height), np.uint8).reshape(height, width)
    luminance = stripes + noise * np.float32(16 / 255) - 8  # (H, W), the same on all channels; noise -8 .. 8 levels
    return _compose(along, tone_a, tone_b, luminance)


def video_backgrounds(rng: np.random.Generator, width: int, height: int, frames: int,
                      sparkle: int = 64) -> list[np.ndarray]:
    """``frames`` backgrounds of one clip: the muted background (as `muted_background` draws it) with
    fresh luminance noise, in the muted background's range, on ``sparkle`` random pixels of each
    frame, as a camera's sensor noise. So no two frames are equal (a GIF writer merges equal frames
    into one), while a GIF still stores each frame as the few pixels that changed. Each (H, W, 3) uint8."""
    still = muted_background(rng, width, height)
    backgrounds = []
    for _ in range(frames):
        frame = still.copy()
        ys, xs = rng.integers(0, height, sparkle), rng.integers(0, width, sparkle)
        shift = rng.integers(-8, 9, (sparkle, 1))
        frame[ys, xs] = np.clip(frame[ys, xs].astype(np.int16) + shift, 0, 255).astype(np.uint8)
        backgrounds.append(frame)
    return backgrounds


def _flat(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    if rng.random() < 1 / 3:  # paper white, as most drawings are
        tone = _hsv(rng.random(), rng.uniform(0.0, 0.05), rng.uniform(0.92, 1.0))
    else:
        tone = _hsv(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.30, 0.95))
    return _compose(None, tone, tone, None, width, height)


def _gradient(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    tone_a = _hsv(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.30, 0.95))
    tone_b = _hsv(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.30, 0.95))
    return _compose(_ramp(rng.uniform(0, 2 * np.pi), width, height), tone_a, tone_b, None)


def _noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    tone = muted_color(rng, rng.random())
    cell = int(rng.integers(16, 65))  # px between the blotches' control points
    coarse = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(coarse, mode="F").resize(
        (width + 2 * cell, height + 2 * cell), Image.BILINEAR))[cell:cell + height, cell:cell + width]
    grain = np.frombuffer(rng.bytes(width * height), np.uint8).reshape(height, width)
    luminance = rng.uniform(10, 25) * blotches + (grain * np.float32(1 / 255) - 0.5) * rng.uniform(8, 24)
    return _compose(None, tone, tone, luminance.astype(np.float32))


def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    tone = muted_color(rng, rng.random())
    period, contrast = rng.uniform(10, 40), rng.uniform(10, 30)  # px, levels
    pattern = ("checker", "stripes", "dots")[int(rng.integers(3))]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if pattern == "stripes":
        levels = _sine_wave(rng.uniform(0, np.pi), period, width, height)
    elif pattern == "checker":
        levels = np.where((xs // (period / 2) + ys // (period / 2)) % 2 == 0, 1.0, -1.0).astype(np.float32)
    else:  # dots: a disc of a third of the period in every cell
        dx, dy = (xs % period) - period / 2, (ys % period) - period / 2
        levels = np.where(dx * dx + dy * dy < (period / 3) ** 2, 1.0, -1.0).astype(np.float32)
    return _compose(None, tone, tone, (contrast / 2) * levels)


def _plain(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    tone = _hsv(rng.random(), rng.uniform(0.0, 0.12), rng.uniform(0.88, 1.0))
    return _compose(None, tone, tone, None, width, height)


_BACKGROUND_MAKERS = {"muted": muted_background, "flat": _flat, "gradient": _gradient, "noise": _noise,
                      "texture": _texture, "plain": _plain}


def _compose(along, tone_a, tone_b, luminance, width: int | None = None, height: int | None = None) -> np.ndarray:
    """tone_a + along * (tone_b - tone_a) + luminance per channel, clipped to uint8 (H, W, 3).

    ``along`` and ``luminance`` are (H, W) float32 or None (then 0; give the size). One channel at
    a time, in place: (H, W, 3) float temporaries cost ms each.
    """
    shape = (along if along is not None else luminance).shape if width is None else (height, width)
    pixels = np.empty(shape + (3,), dtype=np.uint8)
    value = np.empty(shape, dtype=np.float32)
    for channel in range(3):
        if along is not None:
            np.multiply(along, tone_b[channel] - tone_a[channel], out=value)
        else:
            value.fill(0)
        if luminance is not None:
            value += luminance
        value += tone_a[channel]
        pixels[..., channel] = np.clip(value, 0, 255, out=value)
    return pixels


def muted_color(rng: np.random.Generator, hue: float) -> np.ndarray:
    """An RGB colour (3,) float32 in 0 .. 255, saturation 0.05-0.25, value 0.40-0.70."""
    return _hsv(hue, rng.uniform(0.05, 0.25), rng.uniform(0.40, 0.70))


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32) * 255


def _ramp(angle: float, width: int, height: int) -> np.ndarray:
    """A linear ramp across the image in direction ``angle``, from 0 to 1 corner to corner, (H, W) float32."""
    along_x = np.float32(np.cos(angle)) * np.arange(width, dtype=np.float32)  # (W,)
    along_y = np.float32(np.sin(angle)) * np.arange(height, dtype=np.float32)  # (H,)
    span = np.ptp(along_x) + np.ptp(along_y)
    return ((along_x - along_x.min()) / span)[None, :] + ((along_y - along_y.min()) / span)[:, None]


def _sine_wave(angle: float, period: float, width: int, height: int) -> np.ndarray:
    """sin(2 pi (x cos(angle) + y sin(angle)) / period), x and y in px, (H, W) float32.

    By the angle-sum identity, as two outer products of 1-D sines and cosines:
    a sine per pixel would cost as much as the rest of the background.
    """
    scale = np.float32(2 * np.pi / period)
    phase_x = np.float32(np.cos(angle)) * (np.arange(width, dtype=np.float32) * scale)  # (W,)
    phase_y = np.float32(np.sin(angle)) * (np.arange(height, dtype=np.float32) * scale)  # (H,)
    return np.sin(phase_y)[:, None] * np.cos(phase_x)[None, :] + np.cos(phase_y)[:, None] * np.sin(phase_x)[None, :]


# ----------------------------------------------------------------------------
# Shapes


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, half: int, fill) -> None:
    """Draw ``shape`` filling the box [cx - half, cx + half] x [cy - half, cy + half]."""
    if shape == "circle":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=fill)
    else:
        draw.polygon(polygon(shape, cx, cy, half), fill=fill)


def polygon(shape: str, cx: float, cy: float, half: float) -> list[tuple[int, int]]:
    if shape == "square":
        unit = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif shape == "diamond":
        unit = [(0, -1), (1, 0), (0, 1), (-1, 0)]
    elif shape == "triangle":
        unit = [(0, -1), (1, 1), (-1, 1)]
    elif shape == "cross":
        w = 0.35  # half the width of an arm
        unit = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w),
                (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
    elif shape == "star":
        unit = _star_points()
    else:
        raise ValueError(f"unknown shape {shape!r}")
    # Whole pixels: PIL floors float vertices, so -1 + 1e-16 would spill one pixel out of the box.
    return [(round(cx + half * x), round(cy + half * y)) for x, y in unit]


@functools.lru_cache(maxsize=1)
def _star_points() -> tuple[tuple[float, float], ...]:
    """A five-pointed star, top point up, inner radius 0.45 of the outer, stretched to fill [-1, 1]^2.

    A regular star spans only 0.95 of its radius sideways and 0.81 below its
    centre; the stretch (at most 11%) makes it touch all four sides of its box
    like every other shape, so an object's ``bbox`` is tight.
    """
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    xs, ys = radii * np.cos(angles), radii * np.sin(angles)
    xs = xs / xs.max()
    ys = -1 + 2 * (ys - ys.min()) / (ys.max() - ys.min())
    return tuple((float(x), float(y)) for x, y in zip(xs, ys))


def draw_outlined(pixels: np.ndarray, labels: np.ndarray, shape: str, cx: int, cy: int, half: int,
                  color: tuple[int, int, int], label: int) -> None:
    """The held-out routine: ``shape`` in its box, anti-aliased, with a dark outline, painted into
    ``pixels`` (H, W, 3) uint8 in place; ``labels`` gets ``label`` where the shape covers over half
    a pixel.

    The shape is filled at ``SUPERSAMPLE`` x the resolution and averaged down, so its edge pixels
    mix with the background (draw_shape's hard edges never do), and a band of ``OUTLINE_PX``
    pixels inside its edge takes a darker shade of its colour.
    """
    s, side = SUPERSAMPLE, 2 * half + 1
    big = side * s
    centre, big_half = (big - 1) / 2, (big - 1) / 2

    def coverage(inset: float) -> np.ndarray:  # (side, side) float32 in 0 .. 1
        mask = Image.new("L", (big, big), 0)
        if big_half - inset > 0:
            draw_shape(ImageDraw.Draw(mask), shape, centre, centre, big_half - inset, 255)
        return np.asarray(mask.reduce(s), dtype=np.float32) / 255

    fill = coverage(0.0)
    inner = coverage(OUTLINE_PX * s * 1.5)  # 1.5: the polygons' slanted edges sit closer than their inset
    outline = np.clip(fill - inner, 0, 1)
    x0, y0 = cx - half, cy - half
    window = pixels[y0:y0 + side, x0:x0 + side].astype(np.float32)
    colour = np.asarray(color, dtype=np.float32)
    painted = window * (1 - fill[..., None]) + colour * inner[..., None] + colour * OUTLINE_SHADE * outline[..., None]
    pixels[y0:y0 + side, x0:x0 + side] = np.clip(np.rint(painted), 0, 255).astype(np.uint8)
    labels[y0:y0 + side, x0:x0 + side][fill > 0.5] = label


# ----------------------------------------------------------------------------
# Printed text


@functools.lru_cache(maxsize=1)
def font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``OCR_FONT_SIZE`` (bitmap-sized where Pillow lacks FreeType)."""
    return ImageFont.load_default(size=OCR_FONT_SIZE)


def text_box_size(text: str) -> tuple[int, int]:
    x0, y0, x1, y1 = font().getbbox(text.upper())
    return x1 - x0 + 2 * OCR_PADDING, y1 - y0 + 2 * OCR_PADDING


def draw_text(draw: ImageDraw.ImageDraw, text: str, box: list[int]) -> None:
    """Dark upper-case letters in a light box (the OCR case)."""
    draw.rectangle(inclusive(box), fill=TEXT_BOX_FILL)
    x0, y0, _, _ = font().getbbox(text.upper())
    draw.text((box[0] + OCR_PADDING - x0, box[1] + OCR_PADDING - y0), text.upper(), fill=TEXT_FILL, font=font())


def char_spans(text: str, box: list[int]) -> list[tuple[str, float, float]]:
    """(character, x0, x1) of each printed character of ``text`` drawn in ``box`` (px, x1 exclusive).

    The horizontal extent of each upper-case glyph as `draw_text` places it:
    where the OCR answer's letters are, for a training signal finer than the box.
    """
    upper = text.upper()
    origin = box[0] + OCR_PADDING - font().getbbox(upper)[0]
    edges = [origin + font().getlength(upper[:i]) for i in range(len(upper) + 1)]
    return [(ch, edges[i], edges[i + 1]) for i, ch in enumerate(upper)]


def inclusive(box: list[int]) -> list[int]:
    """PIL draws rectangles with inclusive corners; our boxes exclude x1 and y1."""
    return [box[0], box[1], box[2] - 1, box[3] - 1]
