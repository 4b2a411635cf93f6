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
from fastv.overlay import GAP, TITLE_HEIGHT, frame_titles, to_rgb
from llava.pipeline import LlavaPipeline, Request
from llava.video import read_video
from tests import helpers

REPO = Path(__file__).resolve().parents[1]
PATCHES = 64  # the tiny towers: 112 px, patch 14 -> an 8x8 grid per frame


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
    return helpers.write_random_gif(tmp_path_factory.mktemp("clips") / "clip.gif", 12)


def run_json(capsys, model, video, method, *extra) -> dict:
    assert main(["run", "--model-path", str(model), "--video", str(video), "--prompt", "what happens ?",
                 "--method", method, "--max-new-tokens", "2", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_fastervlm_keeps_its_budget_in_every_frame_read(capsys, tiny_video_dir, clip):
    result = run_json(capsys, tiny_video_dir, clip, "fastervlm:keep=16")
    # linspace(0, 11, 8) = 0, 1.57, 3.14, 4.71, 6.29, 7.86, 9.43, 11 -> truncated
    assert result["frames"] == [0, 1, 3, 4, 6, 7, 9, 11] and result["total_frames"] == 12
    assert result["prompt_ids"].count(-201) == 1 and result["prompt_ids"].count(-200) == 0
    assert result["visual_tokens"] == [8 * (1 + 16)]  # each frame: its [CLS], then its 16 kept patches
    assert [len(k) for k in result["kept_frames"]] == [16] * 8
    assert all(k == sorted(k) and 0 <= min(k) and max(k) < PATCHES for k in result["kept_frames"])
    assert result["kept_frame_cls"] == list(range(8))
    assert result["kept_partitions"] == [result["kept_frames"]]


def test_arange_sampling_and_cls_dropped(capsys, tiny_video_dir, clip):
    result = run_json(capsys, tiny_video_dir, clip, "fastervlm:keep=16", "--frames-sampling", "arange", "--video-cls", "drop")
    # arange(0, 12, 12/8) = 0, 1.5, 3, 4.5, 6, 7.5, 9, 10.5 -> truncated
    assert result["frames"] == [0, 1, 3, 4, 6, 7, 9, 10] and result["frames_sampling"] == "arange"
    assert result["visual_tokens"] == [8 * 16] and result["kept_frame_cls"] == []


def test_fastv_ranks_the_whole_video_span_and_reports_what_survived_per_frame(capsys, tiny_video_dir, clip):
    result = run_json(capsys, tiny_video_dir, clip, "fastv:k=2,ratio=0.5")
    assert result["visual_tokens"] == [8 * (1 + PATCHES)]  # all 520 enter the LLM; FastV drops inside it
    kept = result["kept"][0]
    assert len(kept) == 520 // 2  # one global budget over the span, [CLS] tokens ranked like any token
    assert sum(len(k) for k in result["kept_frames"]) + len(result["kept_frame_cls"]) == 260
    for t, frame in enumerate(result["kept_frames"]):  # the ids of `kept` (frame * patches + patch), frame by frame
        assert frame == sorted(i - t * PATCHES for i in kept if i >= 0 and i // PATCHES == t)
    assert len(result["kept_frame_cls"]) == kept.count(-2)


def test_unpruned_text_output_names_the_frames_and_per_frame_counts(capsys, tiny_video_dir, clip):
    assert main(["run", "--model-path", str(tiny_video_dir), "--video", str(clip), "--prompt", "what happens ?",
                 "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "visual tokens entering the LLM: 520 (of 520 in the video unpruned)" in out
    assert "video frames read: 0, 1, 3, 4, 6, 7, 9, 11 (of 12, linspace)" in out
    assert "patches kept per frame: 64, 64, 64, 64, 64, 64, 64, 64 (of 64); frames whose [CLS] is kept: 8 of 8" in out


@pytest.mark.parametrize("method", ["fastv:k=2,ratio=0.5", "fastervlm:keep=10"])
def test_the_overlay_strip_marks_exactly_each_frames_kept_patches(capsys, tiny_video_dir, clip, tmp_path, method):
    out = tmp_path / "strip.png"
    result = run_json(capsys, tiny_video_dir, clip, method, "--overlay", str(out))
    assert result["overlay"] == str(out)
    canvas = np.asarray(Image.open(out).convert("RGB"))
    assert canvas.shape == (112 + 2 * TITLE_HEIGHT, 8 * (112 + GAP) - GAP, 3)
    pipe = LlavaPipeline.load(str(tiny_video_dir))
    _, _, _, videos = pipe.encode([Request(None, "x", video=read_video(clip))])
    mean, std = pipe.image_processor.image_mean, pipe.image_processor.image_std
    for t, kept in enumerate(result["kept_frames"]):
        panel = canvas[2 * TITLE_HEIGHT:, t * (112 + GAP): t * (112 + GAP) + 112]
        states = helpers.panel_state(panel, to_rgb(videos[0][t], mean, std), 8)
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
def test_unreadable_empty_and_short_videos_are_one_line_errors(capsys, tiny_video_dir, tmp_path, content, message):
    path = tmp_path / "clip.mp4"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path = encode(tmp_path / f"clip.{content[0]}", *content)
    err = one_line_error(capsys, ["--model-path", str(tiny_video_dir), "--video", str(path)])
    assert message in err and str(path) in err


def test_an_mp4_runs_as_a_gif_does(capsys, tiny_video_dir, tmp_path):
    result = run_json(capsys, tiny_video_dir, encode(tmp_path / "clip.mp4", "mp4", "libx264", 30), "uniform:keep=16")
    assert result["frames"] == [0, 4, 8, 12, 16, 20, 24, 29]  # linspace(0, 29, 8): steps of 4.14, truncated
    assert [len(k) for k in result["kept_frames"]] == [16] * 8


@pytest.mark.parametrize("extra, message", [
    (["--video", "a.gif", "--video", "b.gif"], "--video was given 2 times; Video-LLaVA takes one video per prompt"),
    (["--frames-sampling", "arange"], "--frames-sampling picks the frames of a video: give --video too"),
    (["--video", "a.gif", "--frames-sampling", "random"], "unknown --frames-sampling 'random'; choose one of linspace"),
    (["--video", "a.gif", "--video-cls", "maybe"], "unknown --video-cls 'maybe'; choose one of keep, drop"),
    (["--video", "a.gif", "--backend", "vllm"], "--video runs on --backend torch"),
])
def test_bad_video_options_are_one_line_errors(capsys, tiny_video_dir, extra, message):
    assert message in one_line_error(capsys, ["--model-path", str(tiny_video_dir), *extra])


def test_a_video_placeholder_in_the_prompt_is_refused(capsys, tiny_video_dir, clip):
    assert main(["run", "--model-path", str(tiny_video_dir), "--video", str(clip), "--prompt", "<video> what ?"]) == 2
    assert "write the prompt without '<video>'" in capsys.readouterr().err


def test_the_real_command_prints_one_line_and_exits_2(tiny_llava_dir, clip):
    done = subprocess.run([sys.executable, "-m", "fastv.cli", "run", "--model-path", str(tiny_llava_dir), "--video",
                           str(clip), "--prompt", "what happens ?"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"error: --video needs a Video-LLaVA checkpoint; {tiny_llava_dir} is an image"
                                        " model (no video tower)"]


# `fastv bench` and `fastv flops` on Video-LLaVA


def test_the_transformers_fastv_reference_on_video_keeps_what_ours_keeps(tiny_video_dir):
    """FastV the released HF way (hooks on VideoLlavaForConditionalGeneration's decoder, eager attention) ranks the
    2 x 520 video tokens as ours does: the same next-token logits."""
    import torch
    from transformers import VideoLlavaForConditionalGeneration

    from fastv.bench.contestants import StageClock, _hf_fastv_hooks, make_inputs
    from llava.model.builder import load_pretrained_model

    model = load_pretrained_model(str(tiny_video_dir))[1]
    hf = VideoLlavaForConditionalGeneration.from_pretrained(tiny_video_dir, attn_implementation="eager").eval()
    video_token = hf.config.video_token_index
    prompts, videos, hf_inputs = make_inputs(model, 2, 20, video_token, torch.device("cpu"), torch.float32)
    assert prompts[0].count(-201) == 1 and int((hf_inputs["input_ids"][0] == video_token).sum()) == 520
    assert not (hf_inputs["input_ids"] == hf.config.image_token_index).any()
    k, keep = 2, 130
    hooks = _hf_fastv_hooks(hf, (k, keep), hf_inputs["input_ids"], video_token, StageClock(torch.device("cpu")))
    try:
        with torch.no_grad():
            theirs = hf(**hf_inputs, use_cache=False, output_attentions=True, logits_to_keep=1).logits[:, -1]
    finally:
        for hook in hooks:
            hook.remove()
    model.set_pruning(f"fastv:k={k},keep={keep}")
    with torch.no_grad():
        ours = model(prompts, None, videos=videos).logits[:, -1]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_bench_times_videos_against_transformers_video_llava(tiny_video_dir, tmp_path):
    from fastv import bench
    from fastv.bench.output import REFERENCE

    result = bench.main(model_path=str(tiny_video_dir), methods=["none", "fastv:k=2,ratio=0.5", "fastervlm:keep=16"],
                        new_tokens=2, repeats=1, warmup=0, references="sdpa", json_out=str(tmp_path / "video.json"),
                        progress=False)
    rows = {row["method"]: row for row in result["rows"]}
    prompt = 55  # --text-tokens' default, the <video> placeholder not counted
    assert result["visual"] == "video" and "55 text tokens + the video" in (tmp_path / "video.md").read_text()
    assert rows["ours, none"]["visual_tokens"] == rows[REFERENCE]["visual_tokens"] == 520
    assert rows["ours, none"]["tokens_per_layer_mean"] == prompt + 520
    fastv = rows["ours, fastv:ratio=0.5"]
    assert fastv["kept_after_layer_k"] == 260
    assert fastv["tokens_per_layer_mean"] == pytest.approx((2 * (prompt + 520) + (prompt + 260)) / 3)  # 3 layers, K=2
    assert rows["ours, fastervlm:keep=16"]["visual_tokens"] == 8 * 17  # per frame: [CLS] + 16 patches


def test_a_random_weight_video_preset_is_transformers_video_llava(monkeypatch):
    """A Video-LLaVA preset with random weights: ours and transformers' VideoLlavaForConditionalGeneration share
    the weights and give the same logits on the bench's video inputs."""
    import dataclasses

    import torch

    from fastv.bench import contestants
    from llava.model.llava_arch import LlavaConfig, VideoConfig

    base = contestants.bench_presets()["bench-video-llava"]
    assert base.unpruned_video_tokens == 8 * 257 and base.vision.image_size == 224
    vision = dataclasses.replace(base.vision, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                                 image_size=56)
    text = dataclasses.replace(base.text, vocab_size=400, hidden_size=64, intermediate_size=96, num_layers=2,
                               num_heads=4, num_kv_heads=4, head_dim=16)
    monkeypatch.setattr(contestants, "bench_presets", lambda: {"tiny-video": LlavaConfig(vision, text, video=VideoConfig())})
    ours, hf, video_token = contestants.random_models("tiny-video", torch.device("cpu"), torch.float32)
    assert video_token == 398 and hf.config.image_token_index == 399 and hf.config.video_seq_length == 8 * 17
    assert ours.lm_head.weight.data_ptr() == hf.lm_head.weight.data_ptr()
    prompts, videos, hf_inputs = contestants.make_inputs(ours, 2, 12, video_token, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        theirs = hf(**hf_inputs, logits_to_keep=1).logits[:, -1]
        mine = ours(prompts, None, videos=videos).logits[:, -1]
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_video_default_methods_are_fastvs_claim_and_fastervlms_reductions_per_frame():
    from fastv.flops_table import video_methods
    from llava.model.llava_arch import LLAVA_PRESETS

    assert video_methods(LLAVA_PRESETS["video-llava-7b"]) == [  # round(256 (1 - r)): VIDEO.md R1
        "none", "fastv:k=2,ratio=0.5", "fastervlm:keep=192", "fastervlm:keep=128", "fastervlm:keep=64",
        "fastervlm:keep=26", "fastervlm:keep=13"]


def test_temporal_attention_flops_worked_by_hand():
    from fastv.flops import temporal_flops
    from llava.model.multimodal_encoder.clip_encoder import VisionConfig

    vision = VisionConfig(hidden_size=2, intermediate_size=4, num_layers=1, num_heads=1, image_size=14, patch_size=14)
    # N = 1 patch + CLS = 2 positions, D = 2, T = 3 frames, 1 layer: 8 T N D^2 + 4 N T^2 D = 192 + 144
    assert temporal_flops(vision, frames=3, layers_run=1) == 336


def test_flops_of_a_video_count_each_frame_through_the_tower(capsys, tiny_video_dir, clip, tmp_path):
    from fastv import flops_table

    picture = tmp_path / "still.png"
    helpers.random_images(1, seed=3, sizes=[(112, 112)])[0].save(picture)
    image = flops_table.main(model_path=str(tiny_video_dir), image=str(picture), methods=["none"])["rows"][0]
    video = flops_table.main(model_path=str(tiny_video_dir), video=str(clip),
                             methods=["none", "fastervlm:keep=16", "fastv:k=2,ratio=0.5"])
    capsys.readouterr()
    none, fastervlm, fastv = video["rows"]
    assert video["prompt"] == "55 text tokens + video (8 frames of 130x90)"
    assert none["vision"] == 8 * image["vision"]  # the same tower config, run once per frame
    assert none["projected_tokens"] == 520 and fastervlm["projected_tokens"] == 8 * 17
    assert none["seq_lens"] == [55 + 520] * 3 and fastv["seq_lens"] == [575, 575, 55 + 260]
    assert fastervlm["seq_lens"] == [55 + 136] * 3


@pytest.mark.parametrize("extra, message", [
    (["--video", "a.gif"], "--video needs a Video-LLaVA model"),
    (["--video", "a.gif", "--image", "b.png"], "give --image or --video"),
])
def test_flops_video_refusals_are_one_line(capsys, tiny_llava_dir, extra, message):
    assert main(["flops", "--model-path", str(tiny_llava_dir), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_video_latency_script_on_a_checkpoint(tiny_video_dir, tmp_path):
    """scripts/latency/video_llava.sh on CPU with a tiny Video-LLaVA folder: FasterVLM's reductions of its 64 patches
    per frame, the FastV rows (K within its 3 layers), transformers' row, and the FLOPs beside them."""
    import os

    env = {**os.environ, "DEVICE": "cpu", "REPEATS": "1", "NEW_TOKENS": "2", "OUT": str(tmp_path),
           "FASTV": str(REPO / ".venv/bin/fastv"), "FASTV_METHODS": "fastv:k=2,ratio=0.5 fastv:k=1,ratio=0.5"}
    done = subprocess.run(["bash", "scripts/latency/video_llava.sh", str(tiny_video_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    bench = json.loads((tmp_path / "video-llava-bench.json").read_text())
    assert [row["spec"] for row in bench["rows"]] == [  # round(64 (1 - r)) for r = 25/50/75/90/95%
        "none", "fastv:ratio=0.5", "fastv:k=1,ratio=0.5", "fastervlm:keep=48", "fastervlm:keep=32",
        "fastervlm:keep=16", "fastervlm:keep=6", "fastervlm:keep=3", None]
    assert bench["rows"][-1]["method"] == "transformers (sdpa), unpruned" and bench["visual"] == "video"
    flops = json.loads((tmp_path / "flops-video-llava.json").read_text())
    assert [row["visual_tokens"] for row in flops["rows"]] == [520, 520, 520, 8 * 49, 8 * 33, 8 * 17, 8 * 7, 8 * 4]


def test_an_image_and_a_video_in_one_prompt_and_their_overlay(capsys, tiny_video_dir, clip, tmp_path):
    picture, out = tmp_path / "still.png", tmp_path / "both.png"
    helpers.random_images(1, seed=4, sizes=[(120, 100)])[0].save(picture)
    result = run_json(capsys, tiny_video_dir, clip, "fastervlm:keep=16", "--image", str(picture), "--overlay", str(out))
    assert result["prompt_ids"].index(-200) < result["prompt_ids"].index(-201)  # <image> first, then <video>
    assert result["visual_tokens"] == [16, 8 * 17]  # the image's patches (no [CLS]), then the video's frames
    assert result["kept_partitions"][1] == result["kept_frames"] and len(result["kept_partitions"][0][0]) == 16
    canvas = np.asarray(Image.open(out).convert("RGB"))  # the image's panel above the frames' strip
    assert canvas.shape == ((112 + TITLE_HEIGHT) + GAP + (112 + 2 * TITLE_HEIGHT), 8 * (112 + GAP) - GAP, 3)
