"""Video input for Video-LLaVA: decode a file, sample its frames, preprocess them for the video tower.

Reproduces Video-LLaVA's video input (VIDEO.md, R0.1) without torchvision or decord:
- Decoding: PyAV (`av`, FFmpeg bundled; transformers' `load_video` default). Any container and codec
  that FFmpeg reads (mp4, avi, webm, mkv, mov, an animated GIF, ...).
- Sampling: 8 frame indices out of the n frames that decode. "linspace" is Video-LLaVA's
  `np.linspace(0, n-1, 8).astype(int)` (first and last frame included); "arange" is the rule of
  transformers' Video-LLaVA documentation, `np.arange(0, n, n/8).astype(int)`. A video with fewer
  than 8 frames is refused: Video-LLaVA samples 8 distinct frames, and repeating frames would
  feed the model a video it never saw in training.
- Preprocessing, per frame: shortest edge to S (bicubic), centre crop S x S, x 1/255, CLIP mean/std
  -- what transformers' CLIPImageProcessor does to each frame, and what its VideoLlavaVideoProcessor
  does to the 8 frames it is handed. No random flip (Video-LLaVA's evaluation flips with p = 0.5; the
  HF port does not). No pad to a square (that is LLaVA-1.5's image rule, not the video tower's).
  Video-LLaVA's own code (LanguageBind's processing_video.py) resizes differently: pytorchvideo's
  ShortSideScale, bilinear without antialiasing, on the normalised frames; so on the original checkpoint
  the pixel values are the HF port's, not the release's (close, not equal).
Every bad input (missing, unreadable, not a video, no frames, fewer than 8) is one-line InputError.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from llava.errors import InputError
from llava.mm_utils import MAX_IMAGE_PIXELS, local_file

NUM_FRAMES = 8  # Video-LLaVA's frames per video (transformers: "should have exactly 8 frames")
SAMPLINGS = ("linspace", "arange")


@dataclass(frozen=True)
class Video:
    """The sampled frames of one video, in time order."""

    frames: list[Image.Image]  # RGB, as decoded (full size: preprocessing happens later)
    indices: list[int]  # which decoded frame each one is, ascending
    total_frames: int  # frames that decoded
    source: str | None  # the file it came from; None for bytes or already-decoded frames


def sample_frame_indices(total: int, num_frames: int = NUM_FRAMES, sampling: str = "linspace") -> list[int]:
    """`num_frames` distinct ascending indices out of `total` frames.

    "linspace": np.linspace(0, total-1, num_frames).astype(int)  (Video-LLaVA, decord's frame ids)
    "arange":   np.arange(0, total, total/num_frames).astype(int)  (transformers' Video-LLaVA example)
    Fewer frames than `num_frames` is an InputError: both rules would repeat frames.
    """
    _check_sampling(num_frames, sampling)
    if total < num_frames:
        raise InputError(_too_few(total, num_frames))
    if sampling == "linspace":
        indices = np.linspace(0, total - 1, num_frames).astype(int)
    else:  # the float step can give one extra element when num_frames is not a power of two: drop it
        indices = np.arange(0, total, total / num_frames).astype(int)[:num_frames]
    return [int(i) for i in indices]


def _check_sampling(num_frames: int, sampling: str) -> None:
    if sampling not in SAMPLINGS:
        raise InputError(f"unknown frame sampling '{sampling}'; choose one of {', '.join(SAMPLINGS)}")
    if num_frames < 1:
        raise InputError(f"the number of frames to sample must be at least 1, got {num_frames}")


def _too_few(total: int, num_frames: int) -> str:
    if total == 0:
        return "it has no frames"
    return (f"it has {total} frame{'s' if total != 1 else ''}, fewer than {num_frames}: Video-LLaVA samples "
            f"{num_frames} distinct frames from a video, so a shorter one is refused")


def video_from_frames(frames: list[Image.Image], num_frames: int = NUM_FRAMES, sampling: str = "linspace") -> Video:
    """A Video sampled from already-decoded frames (all the frames of a clip, in order)."""
    indices = sample_frame_indices(len(frames), num_frames, sampling)
    return Video([frames[i].convert("RGB") for i in indices], indices, len(frames), None)


def read_video(source, num_frames: int = NUM_FRAMES, sampling: str = "linspace") -> Video:
    """Decode the video at `source` (a path, or the file's bytes) and keep `num_frames` sampled frames.

    The frame count is the number of frames that decode (one pass over the whole stream; only the
    sampled frames are converted to RGB). A missing file, a file FFmpeg cannot read, a still image,
    a file with no video stream, no frames or fewer than `num_frames` is an InputError naming it.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, opener, path = "<bytes>", lambda: io.BytesIO(bytes(source)), None
    else:
        path = local_file(source, "video")
        name, opener = str(path), lambda: str(path)
    _check_sampling(num_frames, sampling)

    def sample(total: int) -> list[int]:
        try:
            return sample_frame_indices(total, num_frames, sampling)
        except InputError as error:
            raise InputError(f"video {name}: {error}") from None

    total = _count_frames(opener, name)
    indices = sample(total)
    frames, decoded = _decode(opener, name, set(indices))
    if decoded != total:  # the container's packet count was off: sample again over the frames that decode
        indices = sample(decoded)
        frames, decoded = _decode(opener, name, set(indices))
    return Video([frames[i] for i in indices], indices, decoded, None if path is None else name)


def _open(opener, name: str):
    import av

    try:
        container = av.open(opener(), mode="r")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read video {name}: not a video or corrupt ({_reason(error)})") from None
    fmt = container.format.name
    if fmt == "image2" or fmt.endswith("_pipe"):  # FFmpeg reads a PNG or JPEG as a one-frame "video"
        container.close()
        raise InputError(f"video {name} is a still image ({fmt.removesuffix('_pipe')}), not a video")
    if not container.streams.video:
        kinds = ", ".join(stream.type for stream in container.streams)
        container.close()
        if not kinds:  # e.g. an mp4 cut short before its index
            raise InputError(f"cannot read video {name}: not a video or corrupt (no streams found)")
        raise InputError(f"video {name} has no video stream, only {kinds}")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > MAX_IMAGE_PIXELS:
        container.close()
        raise InputError(f"video {name} has frames too large to decode: {width} x {height} pixels, "
                         f"the limit is {MAX_IMAGE_PIXELS:,} (see llava.mm_utils.MAX_IMAGE_PIXELS)")
    return container, stream


def _count_frames(opener, name: str) -> int:
    """Frames in the first video stream, by its packets (demuxing only, no decoding)."""
    import av

    container, stream = _open(opener, name)
    try:
        with container:
            return sum(1 for packet in container.demux(stream) if packet.size)
    except av.FFmpegError as error:
        raise InputError(f"cannot read video {name}: corrupt ({_reason(error)})") from None


def _decode(opener, name: str, wanted: set[int]) -> tuple[dict[int, Image.Image], int]:
    """Decode every frame of the first video stream -> ({index: RGB image} for the wanted ones, frames decoded)."""
    import av

    container, stream = _open(opener, name)
    stream.thread_type = "AUTO"
    frames: dict[int, Image.Image] = {}
    count = 0
    try:
        with container:
            for frame in container.decode(stream):
                if count in wanted:
                    frames[count] = frame.to_image()  # RGB24 via FFmpeg's swscale
                count += 1
    except av.FFmpegError as error:
        raise InputError(f"cannot decode video {name} at frame {count}: corrupt ({_reason(error)})") from None
    return frames, count


def _reason(error: Exception) -> str:
    return " ".join(str(getattr(error, "strerror", None) or error).split())


def preprocess_frames(frames: list[Image.Image], processor) -> torch.Tensor:
    """Frames -> pixel values (T, 3, S, S) float32, each frame as CLIPImageProcessor does it: shortest
    edge to S = processor.image_size (bicubic), centre crop S x S, x rescale_factor, (x - mean) / std.

    `processor` is llava.mm_utils.ImageProcessor (the video tower's preprocessor_config.json); its
    LLaVA-1.5 pad-to-square and LLaVA-NeXT anyres are image rules and are not applied to frames.
    """
    if not frames:
        raise InputError("no frames to preprocess")
    per_frame = dataclasses.replace(processor, pad_to_square=False, image_grid_pinpoints=None)
    return torch.stack([per_frame.preprocess(frame) for frame in frames])  # (T, 3, S, S)
