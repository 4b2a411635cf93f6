"""llava/video.py: frame sampling worked by hand, per-frame preprocessing against transformers' CLIPImageProcessor,
decoding of clips encoded here with PyAV (mp4, avi, webm, mkv) and a GIF written with PIL, and every bad input
as one InputError line."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from llava.errors import InputError
from llava.mm_utils import CLIP_MEAN, CLIP_STD, ImageProcessor
from llava.video import Video, preprocess_frames, read_video, sample_frame_indices, video_from_frames

# --- sampling -----------------------------------------------------------------------------------------------

# Worked by hand. linspace: i * (n-1)/7 for i = 0..7, truncated (the last is exactly n-1);
# arange: i * n/8, truncated.
#   n=9:   linspace step 8/7 = 1.143 -> 0 1.14 2.29 3.43 4.57 5.71 6.86 8;  arange step 1.125 -> 0 1.125 ... 7.875
#   n=30:  linspace step 29/7 = 4.143 -> 0 4.14 8.29 12.43 16.57 20.71 24.86 29;  arange step 3.75 -> 0 3.75 7.5
#          11.25 15 18.75 22.5 26.25
#   n=300: linspace step 299/7 = 42.714 -> 0 42.7 85.4 128.1 170.9 213.6 256.3 299;  arange step 37.5 -> 0 37.5
#          75 112.5 150 187.5 225 262.5
BY_HAND = {
    (8, "linspace"): [0, 1, 2, 3, 4, 5, 6, 7],
    (8, "arange"): [0, 1, 2, 3, 4, 5, 6, 7],
    (9, "linspace"): [0, 1, 2, 3, 4, 5, 6, 8],
    (9, "arange"): [0, 1, 2, 3, 4, 5, 6, 7],
    (30, "linspace"): [0, 4, 8, 12, 16, 20, 24, 29],
    (30, "arange"): [0, 3, 7, 11, 15, 18, 22, 26],
    (300, "linspace"): [0, 42, 85, 128, 170, 213, 256, 299],
    (300, "arange"): [0, 37, 75, 112, 150, 187, 225, 262],
}


@pytest.mark.parametrize("total, sampling", list(BY_HAND))
def test_frame_indices_worked_by_hand(total, sampling):
    assert sample_frame_indices(total, 8, sampling) == BY_HAND[total, sampling]


def test_frame_indices_follow_video_llava_and_transformers_rules():
    """Video-LLaVA: np.linspace(0, n-1, 8, dtype=int); transformers' example: np.arange(0, n, n/8).astype(int)."""
    for total in range(8, 400):
        linspace = sample_frame_indices(total, sampling="linspace")
        arange = sample_frame_indices(total, sampling="arange")
        assert linspace == np.linspace(0, total - 1, 8).astype(int).tolist()
        assert arange == np.arange(0, total, total / 8).astype(int).tolist()
        for indices in (linspace, arange):
            assert len(set(indices)) == 8 and indices == sorted(indices) and indices[-1] < total
        assert linspace[0] == 0 and linspace[-1] == total - 1


def test_arange_keeps_the_asked_number_when_the_float_step_adds_one():
    # 7 frames out of 7 * 3 = 21: np.arange(0, 21, 3.0) has 7 elements; out of 29, step 29/7 may give an 8th
    for total in range(7, 200):
        indices = sample_frame_indices(total, 7, "arange")
        assert len(indices) == 7 and indices == np.arange(0, total, total / 7).astype(int)[:7].tolist()


def test_fewer_frames_than_sampled_unknown_sampling_and_zero_frames_are_refused():
    with pytest.raises(InputError, match="it has 7 frames, fewer than 8: Video-LLaVA samples 8 distinct frames"):
        sample_frame_indices(7)
    with pytest.raises(InputError, match="it has no frames"):
        sample_frame_indices(0)
    with pytest.raises(InputError, match="unknown frame sampling 'uniform'; choose one of linspace, arange"):
        sample_frame_indices(30, 8, "uniform")
    with pytest.raises(InputError, match="at least 1, got 0"):
        sample_frame_indices(30, 0)


def test_video_from_frames_keeps_the_sampled_frames_in_order():
    frames = [Image.new("RGB", (4, 3), (i, 0, 0)) for i in range(30)]
    video = video_from_frames(frames)
    assert isinstance(video, Video) and video.indices == BY_HAND[30, "linspace"]
    assert [f.getpixel((0, 0))[0] for f in video.frames] == BY_HAND[30, "linspace"]
    assert video.total_frames == 30 and video.source is None
    with pytest.raises(InputError, match="fewer than 8"):
        video_from_frames(frames[:5])


# --- preprocessing ------------------------------------------------------------------------------------------

def _random_frames(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


# landscape, portrait, odd sizes, already square, smaller than 224 (upscaled)
FRAME_SIZES = [(320, 240), (240, 320), (301, 199), (224, 224), (100, 60), (640, 360), (171, 257), (480, 270)]


def test_preprocessing_equals_clip_image_processor_per_frame():
    """Video-LLaVA-7B-hf's video processor: shortest edge 224, bicubic, centre crop 224, CLIP mean/std, 1/255.
    (transformers' CLIPImageProcessor is its PIL backend here: the default backend needs torchvision.)"""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    reference = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                      resample=Image.BICUBIC, do_center_crop=True, do_rescale=True,
                                      rescale_factor=1 / 255, do_normalize=True, image_mean=list(CLIP_MEAN),
                                      image_std=list(CLIP_STD), do_convert_rgb=True)
    frames = _random_frames(FRAME_SIZES)
    # LLaVA-1.5's pad-to-square is on by default in ImageProcessor: frames must not be padded
    ours = preprocess_frames(frames, ImageProcessor(image_size=224))
    assert ours.shape == (8, 3, 224, 224) and ours.dtype == torch.float32
    for frame, pixels in zip(frames, ours):
        expected = torch.as_tensor(reference(images=[frame], return_tensors="np")["pixel_values"][0])
        assert_close(pixels, expected, atol=1e-6, rtol=0)


def test_preprocessing_equals_video_llava_video_processor_where_torchvision_imports():
    """transformers' VideoLlavaVideoProcessor is a torchvision processor: it runs where torchvision imports (the
    `setup.sh --vllm` environment, CI's, guards vLLM's torchvision; skipped elsewhere). Its resize is torchvision's
    bicubic on tensors, not PIL's, so it is not equal to the per-frame CLIPImageProcessor parity above (1e-6, which
    is what our frames follow): measured on 320x240 frames, 0.4% of the values differ, by at most 0.03 after
    normalisation (resampling rounding at edges). This checks that bound, so a real change (another crop, mean,
    order of channels or frames) still fails."""
    try:
        import torchvision  # noqa: F401
        from transformers import VideoLlavaVideoProcessor
    except (ImportError, RuntimeError) as error:
        pytest.skip(f"torchvision does not import ({type(error).__name__}): VideoLlavaVideoProcessor cannot run")
    reference = VideoLlavaVideoProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                         image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_sample_frames=False)
    frames = _random_frames([(320, 240)] * 8, seed=1)
    expected = reference(videos=[[np.asarray(f) for f in frames]], return_tensors="pt")["pixel_values_videos"][0]
    difference = (preprocess_frames(frames, ImageProcessor(image_size=224)) - expected.float()).abs()
    assert difference.shape == (8, 3, 224, 224)
    assert difference.max() < 0.05 and (difference > 1e-5).float().mean() < 0.01


def test_preprocess_frames_refuses_no_frames():
    with pytest.raises(InputError, match="no frames"):
        preprocess_frames([], ImageProcessor(image_size=224))


# --- decoding -----------------------------------------------------------------------------------------------

WIDTH, HEIGHT, BLOCK = 32, 24, 8  # a 4 x 3 grid of 8-pixel blocks: 12 bits, black or white, survive lossy codecs


def _coded_frame(index: int) -> np.ndarray:
    """A 24 x 32 RGB frame whose blocks spell `index` in binary (block k white when bit k is set)."""
    frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for bit in range(12):
        if index >> bit & 1:
            row, col = divmod(bit, WIDTH // BLOCK)
            frame[row * BLOCK:(row + 1) * BLOCK, col * BLOCK:(col + 1) * BLOCK] = 255
    return frame


def _read_code(image: Image.Image) -> int:
    grey = np.asarray(image.convert("L"), dtype=np.int32)
    code = 0
    for bit in range(12):
        row, col = divmod(bit, WIDTH // BLOCK)
        centre = grey[row * BLOCK + 2:(row + 1) * BLOCK - 2, col * BLOCK + 2:(col + 1) * BLOCK - 2].mean()
        code |= int(centre > 128) << bit
    return code


def _encode(path, container: str, codec: str, frames: int, pix_fmt: str = "yuv420p") -> None:
    with av.open(str(path), "w", format=container) as output:
        stream = output.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, pix_fmt
        if frames == 0:
            output.start_encoding()
        for index in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(_coded_frame(index), format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)


CLIPS = [("mp4", "mp4", "libx264", "yuv420p"), ("mp4", "mp4", "mpeg4", "yuv420p"), ("avi", "avi", "mpeg4", "yuv420p"),
         ("webm", "webm", "libvpx", "yuv420p"), ("webm", "webm", "libvpx-vp9", "yuv420p"),
         ("mkv", "matroska", "ffv1", "yuv444p")]


def test_the_coded_frames_read_back_before_any_codec():
    assert [_read_code(Image.fromarray(_coded_frame(i))) for i in (0, 1, 5, 299, 4095)] == [0, 1, 5, 299, 4095]


@pytest.mark.parametrize("extension, container, codec, pix_fmt", CLIPS, ids=[f"{c[0]}-{c[2]}" for c in CLIPS])
def test_read_video_returns_the_sampled_frames(tmp_path, extension, container, codec, pix_fmt):
    path = tmp_path / f"clip.{extension}"
    _encode(path, container, codec, 30, pix_fmt)
    for sampling in ("linspace", "arange"):
        video = read_video(path, sampling=sampling)
        assert video.total_frames == 30 and video.indices == BY_HAND[30, sampling]
        assert [_read_code(frame) for frame in video.frames] == BY_HAND[30, sampling]
        assert all(frame.mode == "RGB" and frame.size == (WIDTH, HEIGHT) for frame in video.frames)
        assert video.source == str(path)
    from_bytes = read_video(path.read_bytes())
    assert from_bytes.indices == BY_HAND[30, "linspace"] and from_bytes.source is None
    assert [np.asarray(f).tolist() for f in from_bytes.frames] == [np.asarray(f).tolist() for f in read_video(path).frames]


def test_read_video_of_300_and_of_9_frames(tmp_path):
    for total in (300, 9):
        path = tmp_path / f"clip{total}.avi"
        _encode(path, "avi", "mpeg4", total)
        for sampling in ("linspace", "arange"):
            video = read_video(str(path), sampling=sampling)
            assert video.total_frames == total
            assert [_read_code(frame) for frame in video.frames] == video.indices == BY_HAND[total, sampling]


def test_frames_are_sampled_over_the_frames_that_decode_when_the_packet_count_is_off(tmp_path, monkeypatch):
    import llava.video

    path = tmp_path / "clip.avi"
    _encode(path, "avi", "mpeg4", 30)
    for packets in (40, 12):  # a container that claims more, or fewer, frames than decode
        monkeypatch.setattr(llava.video, "_count_frames", lambda opener, name: packets)
        video = read_video(path)
        assert video.total_frames == 30
        assert [_read_code(frame) for frame in video.frames] == video.indices == BY_HAND[30, "linspace"]
    _encode(path, "avi", "mpeg4", 5)
    monkeypatch.setattr(llava.video, "_count_frames", lambda opener, name: 30)
    with pytest.raises(InputError, match="clip.avi: it has 5 frames, fewer than 8"):
        read_video(path)


GIF_COLOURS = [(i * 20, 255 - i * 20, i * 37 % 256) for i in range(12)]


@pytest.fixture()
def gif(tmp_path):
    """12 frames, each one solid colour of GIF_COLOURS, written by PIL."""
    frames = [Image.new("RGB", (WIDTH, HEIGHT), colour) for colour in GIF_COLOURS]
    path = tmp_path / "clip.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def test_pyav_and_pil_decode_a_gif_to_the_same_pixels(gif):
    with Image.open(gif) as image:
        pil = []
        for index in range(image.n_frames):
            image.seek(index)
            pil.append(np.asarray(image.convert("RGB")))
    with av.open(str(gif)) as container:
        pyav = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(pil) == len(pyav) == 12
    for a, b in zip(pil, pyav):
        np.testing.assert_array_equal(a, b)


def test_read_video_of_a_gif_keeps_the_sampled_colours(gif):
    video = read_video(gif)
    # linspace(0, 11, 8): step 11/7 = 1.571 -> 0 1.57 3.14 4.71 6.29 7.86 9.43 11
    assert video.indices == [0, 1, 3, 4, 6, 7, 9, 11] and video.total_frames == 12
    assert [frame.getpixel((5, 5)) for frame in video.frames] == [GIF_COLOURS[i] for i in video.indices]


def test_read_video_then_preprocess_gives_eight_frames(gif):
    pixels = preprocess_frames(read_video(gif).frames, ImageProcessor(image_size=56))
    assert pixels.shape == (8, 3, 56, 56)
    # a solid frame stays solid: every pixel of frame 0 is (colour / 255 - mean) / std
    expected = (torch.tensor(GIF_COLOURS[0]) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert_close(pixels[0], expected[:, None, None].expand(3, 56, 56), atol=1e-5, rtol=0)


# --- bad input ----------------------------------------------------------------------------------------------

def _one_line_error(source, match: str) -> str:
    with pytest.raises(InputError, match=match) as error:
        read_video(source)
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_missing_file_and_folder(tmp_path):
    _one_line_error(tmp_path / "absent.mp4", f"video not found: {tmp_path / 'absent.mp4'}")
    _one_line_error(tmp_path, "is a folder, not a video file")
    _one_line_error("", "the video path is empty")
    _one_line_error("https://example.com/a.mp4", "URLs are not fetched")


def test_not_a_video(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("these are notes, not a video\n" * 20)
    _one_line_error(text, "cannot read video .*notes.mp4: not a video or corrupt")
    _one_line_error(b"\x00\x01garbage" * 50, "cannot read video <bytes>: not a video or corrupt")
    still = tmp_path / "photo.png"
    Image.new("RGB", (WIDTH, HEIGHT)).save(still)
    _one_line_error(still, "is a still image \\(png\\), not a video")
    audio = tmp_path / "sound.wav"
    with av.open(str(audio), "w") as output:
        stream = output.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            output.mux(packet)
    _one_line_error(audio, "has no video stream, only audio")


def test_unreadable_file(tmp_path):
    whole = tmp_path / "whole.mp4"
    _encode(whole, "mp4", "mpeg4", 30)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[whole.stat().st_size // 2:])  # its second half: no header, no index
    _one_line_error(cut, "cannot read video .*cut.mp4: not a video or corrupt")


def test_empty_video(tmp_path):
    path = tmp_path / "empty.avi"  # an AVI keeps its video stream with no frames in it
    _encode(path, "avi", "mpeg4", 0)
    _one_line_error(path, "empty.avi: it has no frames")


def test_fewer_than_eight_frames(tmp_path):
    path = tmp_path / "short.mp4"
    _encode(path, "mp4", "libx264", 5)
    message = _one_line_error(path, "short.mp4: it has 5 frames, fewer than 8")
    assert "Video-LLaVA samples 8 distinct frames" in message
