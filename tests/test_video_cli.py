"""`fastv run --video` end to end on a tiny random Video-LLaVA saved by transformers: the frame indices read
(worked by hand for both samplings), the per-frame kept patches in `--json` (FasterVLM: L per frame, FastV: one
budget over the whole video span, the same set as `kept`), the overlay strip marking exactly each frame's kept
patches, and every bad input a one-line error with exit status 2, before any weight is read."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastv.cli import main
from fastv.overlay import DIM, GAP, TITLE_HEIGHT, frame_titles, to_rgb
from llava.pipeline import LlavaPipeline, Request
from llava.video import read_video
from tests import helpers

REPO = Path(__file__).resolve().parents[1]
PATCHES = 64  # the tiny towers: 112 px, patch 14 -> an 8x8 grid per frame


@pytest.fixture(scope="module")
def video_llava(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-video-llava-cli")
    helpers.make_tiny_video_llava(folder)
    return folder


def write_gif(path: Path, frames: int, seed: int = 0) -> Path:
    """An animated GIF of `frames` random 130x90 frames (PyAV decodes a GIF to Pillow's pixels)."""
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)) for _ in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    return path


def encode(path: Path, container: str, codec: str, frames: int) -> Path:
    """A clip of `frames` random 64x48 frames written by PyAV (0: the stream with no frame in it)."""
    import av

    rng = np.random.default_rng(1)
    with av.open(str(path), "w", format=container) as output:
        stream = output.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        if frames == 0:
            output.start_encoding()
        for _ in range(frames):
            image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_gif(tmp_path_factory.mktemp("clips") / "clip.gif", 12)


def run_json(capsys, model, video, method, *extra) -> dict:
    assert main(["run", "--model-path", str(model), "--video", str(video), "--prompt", "what happens ?",
                 "--method", method, "--max-new-tokens", "2", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_fastervlm_keeps_its_budget_in_every_frame_read(capsys, video_llava, clip):
    result = run_json(capsys, video_llava, clip, "fastervlm:keep=16")
    # linspace(0, 11, 8) = 0, 1.57, 3.14, 4.71, 6.29, 7.86, 9.43, 11 -> truncated
    assert result["frames"] == [0, 1, 3, 4, 6, 7, 9, 11] and result["total_frames"] == 12
    assert result["prompt_ids"].count(-201) == 1 and result["prompt_ids"].count(-200) == 0
    assert result["visual_tokens"] == [8 * (1 + 16)]  # each frame: its [CLS], then its 16 kept patches
    assert [len(k) for k in result["kept_frames"]] == [16] * 8
    assert all(k == sorted(k) and 0 <= min(k) and max(k) < PATCHES for k in result["kept_frames"])
    assert result["kept_frame_cls"] == list(range(8))
    assert result["kept_partitions"] == [result["kept_frames"]]


def test_arange_sampling_and_cls_dropped(capsys, video_llava, clip):
    result = run_json(capsys, video_llava, clip, "fastervlm:keep=16", "--frames-sampling", "arange", "--video-cls", "drop")
    # arange(0, 12, 12/8) = 0, 1.5, 3, 4.5, 6, 7.5, 9, 10.5 -> truncated
    assert result["frames"] == [0, 1, 3, 4, 6, 7, 9, 10] and result["frames_sampling"] == "arange"
    assert result["visual_tokens"] == [8 * 16] and result["kept_frame_cls"] == []


def test_fastv_ranks_the_whole_video_span_and_reports_what_survived_per_frame(capsys, video_llava, clip):
    result = run_json(capsys, video_llava, clip, "fastv:k=2,ratio=0.5")
    assert result["visual_tokens"] == [8 * (1 + PATCHES)]  # all 520 enter the LLM; FastV drops inside it
    kept = result["kept"][0]
    assert len(kept) == 520 // 2  # one global budget over the span, [CLS] tokens ranked like any token
    assert sum(len(k) for k in result["kept_frames"]) + len(result["kept_frame_cls"]) == 260
    for t, frame in enumerate(result["kept_frames"]):  # the ids of `kept` (frame * patches + patch), frame by frame
        assert frame == sorted(i - t * PATCHES for i in kept if i >= 0 and i // PATCHES == t)
    assert len(result["kept_frame_cls"]) == kept.count(-2)


def test_unpruned_text_output_names_the_frames_and_per_frame_counts(capsys, video_llava, clip):
    assert main(["run", "--model-path", str(video_llava), "--video", str(clip), "--prompt", "what happens ?",
                 "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "visual tokens entering the LLM: 520 (of 64 per image; the video: 520 unpruned)" in out
    assert "video frames read: 0, 1, 3, 4, 6, 7, 9, 11 (of 12, linspace)" in out
    assert "patches kept per frame: 64, 64, 64, 64, 64, 64, 64, 64 (of 64); frames whose [CLS] is kept: 8 of 8" in out


def frame_state(panel: np.ndarray, view: np.ndarray, grid: int) -> list[str]:
    """Per patch: 'kept' if its inside equals the frame, 'dimmed' if it equals the dimmed frame."""
    patch = view.shape[0] // grid
    states = []
    for index in range(grid * grid):
        y, x = divmod(index, grid)
        inside = (slice(y * patch + 1, (y + 1) * patch - 1), slice(x * patch + 1, (x + 1) * patch - 1))
        if np.array_equal(panel[inside], view[inside]):
            states.append("kept")
        elif np.array_equal(panel[inside], (view[inside] * DIM).astype(np.uint8)):
            states.append("dimmed")
        else:
            states.append("?")
    return states


@pytest.mark.parametrize("method", ["fastv:k=2,ratio=0.5", "fastervlm:keep=10"])
def test_the_overlay_strip_marks_exactly_each_frames_kept_patches(capsys, video_llava, clip, tmp_path, method):
    out = tmp_path / "strip.png"
    result = run_json(capsys, video_llava, clip, method, "--overlay", str(out))
    assert result["overlay"] == str(out)
    canvas = np.asarray(Image.open(out).convert("RGB"))
    assert canvas.shape == (112 + 2 * TITLE_HEIGHT, 8 * (112 + GAP) - GAP, 3)
    pipe = LlavaPipeline.load(str(video_llava))
    _, _, _, videos = pipe.encode([Request(None, "x", video=read_video(clip))])
    mean, std = pipe.image_processor.image_mean, pipe.image_processor.image_std
    for t, kept in enumerate(result["kept_frames"]):
        panel = canvas[2 * TITLE_HEIGHT:, t * (112 + GAP): t * (112 + GAP) + 112]
        states = frame_state(panel, to_rgb(videos[0][t], mean, std), 8)
        assert [i for i, s in enumerate(states) if s == "kept"] == kept
        assert states.count("dimmed") == PATCHES - len(kept)


def test_frame_titles_worked_by_hand():
    titles = frame_titles([0, 5, 9], [[1, 2], [], [0, 3, 7]], [0, 2], 64)
    assert titles == [("frame 0", "2/64 +CLS"), ("frame 5", "0/64"), ("frame 9", "3/64 +CLS")]


def one_line_error(capsys, args: list[str]) -> str:
    assert main(["run", "--prompt", "what happens ?", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_a_video_for_an_image_model_is_refused_before_loading(capsys, tiny_llava_dir, clip):
    err = one_line_error(capsys, ["--model-path", str(tiny_llava_dir), "--video", str(clip)])
    assert f"--video needs a Video-LLaVA checkpoint; {tiny_llava_dir} is an image model (no video tower)" in err


@pytest.mark.parametrize("content, message", [
    (None, "video not found"),
    (b"a text file named .mp4\n", "not a video or corrupt"),
    (("avi", "mpeg4", 0), "it has no frames"),  # an AVI keeps its video stream with no frame in it
    (("mp4", "libx264", 5), "it has 5 frames, fewer than 8: Video-LLaVA samples 8 distinct frames"),
])
def test_unreadable_empty_and_short_videos_are_one_line_errors(capsys, video_llava, tmp_path, content, message):
    path = tmp_path / "clip.mp4"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path = encode(tmp_path / f"clip.{content[0]}", *content)
    err = one_line_error(capsys, ["--model-path", str(video_llava), "--video", str(path)])
    assert message in err and str(path) in err


def test_an_mp4_runs_as_a_gif_does(capsys, video_llava, tmp_path):
    result = run_json(capsys, video_llava, encode(tmp_path / "clip.mp4", "mp4", "libx264", 30), "uniform:keep=16")
    assert result["frames"] == [0, 4, 8, 12, 16, 20, 24, 29]  # linspace(0, 29, 8): steps of 4.14, truncated
    assert [len(k) for k in result["kept_frames"]] == [16] * 8


@pytest.mark.parametrize("extra, message", [
    (["--video", "a.gif", "--video", "b.gif"], "--video was given 2 times; Video-LLaVA takes one video per prompt"),
    (["--frames-sampling", "arange"], "--frames-sampling picks the frames of a video: give --video too"),
    (["--video", "a.gif", "--frames-sampling", "random"], "unknown --frames-sampling 'random'; choose one of linspace"),
    (["--video", "a.gif", "--video-cls", "maybe"], "unknown --video-cls 'maybe'; choose one of keep, drop"),
    (["--video", "a.gif", "--backend", "vllm"], "--video runs on --backend torch"),
])
def test_bad_video_options_are_one_line_errors(capsys, video_llava, extra, message):
    assert message in one_line_error(capsys, ["--model-path", str(video_llava), *extra])


def test_a_video_placeholder_in_the_prompt_is_refused(capsys, video_llava, clip):
    assert main(["run", "--model-path", str(video_llava), "--video", str(clip), "--prompt", "<video> what ?"]) == 2
    assert "write the prompt without '<video>'" in capsys.readouterr().err


def test_the_real_command_prints_one_line_and_exits_2(tiny_llava_dir, clip):
    done = subprocess.run([sys.executable, "-m", "fastv.cli", "run", "--model-path", str(tiny_llava_dir), "--video",
                           str(clip), "--prompt", "what happens ?"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"error: --video needs a Video-LLaVA checkpoint; {tiny_llava_dir} is an image"
                                        " model (no video tower)"]
