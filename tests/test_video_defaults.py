"""What a Video-LLaVA checkpoint sets by itself: the conversation template of `fastv run`, the pipeline (the demo)
and `fastv serve` (Video-LLaVA's llava_v1, as its evaluation scripts, unless one is named; vicuna_v1 on an image
model) and the number of frames read
from a video, in `fastv run` and the eval runner (the checkpoint's config.video.num_frames, not a fixed 8: here a
4-frame original-layout folder, the frame indices worked by hand)."""
import json

import pytest

from fastv.cli import main
from llava.conversation import build_prompt
from tests.helpers import write_random_gif
from tests.test_languagebind import write_original_video_llava

PROMPT = "what happens ?"


def run_json(capsys, *args) -> dict:
    assert main(["run", "--prompt", PROMPT, "--max-new-tokens", "1", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_random_gif(tmp_path_factory.mktemp("clip") / "clip.gif", 12)


@pytest.fixture(scope="module")
def four_frames(tiny_video_dir, loaded_video, tmp_path_factory):
    """The tiny Video-LLaVA in the original layout, its video tower taking 4 frames (no temporal attention)."""
    folder = write_original_video_llava(tiny_video_dir, loaded_video[1], tmp_path_factory.mktemp("orig") / "VL-4",
                                        add_time_attn=False)
    tower = folder.parent / "LanguageBind_Video/config.json"
    config = json.loads(tower.read_text())
    config["vision_config"]["num_frames"] = 4
    tower.write_text(json.dumps(config))
    return folder


def test_a_video_llava_checkpoint_defaults_to_llava_v1_unless_told(capsys, tiny_video_dir, clip):
    result = run_json(capsys, "--model-path", str(tiny_video_dir), "--video", str(clip))
    assert result["conv_mode"] == "llava_v1"
    assert result["prompt"] == build_prompt(PROMPT, "llava_v1", with_image=False, with_video=True)
    told = run_json(capsys, "--model-path", str(tiny_video_dir), "--video", str(clip), "--conv-mode", "vicuna_v1")
    assert told["conv_mode"] == "vicuna_v1"
    assert told["prompt"] == build_prompt(PROMPT, "vicuna_v1", with_image=False, with_video=True)
    assert told["prompt"] != result["prompt"]


def test_the_pipeline_and_fastv_serve_take_the_checkpoints_template(tiny_video_dir):
    """The demo and `fastv serve` load through LlavaPipeline.load (serve through load_backend): with no template
    named, a Video-LLaVA checkpoint gets llava_v1 and an image model vicuna_v1, as `fastv run`."""
    from fastv.serve import load_backend
    from fastv.shipped import SHIPPED_MODEL
    from llava.pipeline import LlavaPipeline

    assert LlavaPipeline.load(str(tiny_video_dir)).conv_mode == "llava_v1"
    assert LlavaPipeline.load(str(tiny_video_dir), conv_mode="vicuna_v1").conv_mode == "vicuna_v1"
    assert LlavaPipeline.load(str(SHIPPED_MODEL)).conv_mode == "vicuna_v1"
    backend = load_backend("torch", str(tiny_video_dir), "none", conv_mode=None, device=None, dtype=None,
                           tensor_parallel_size=1, max_model_len=None)
    assert backend.pipeline.conv_mode == "llava_v1"


def test_an_image_model_keeps_vicuna_v1():
    from fastv.run import main as run

    result = run(None, None, PROMPT, max_new_tokens=1)  # the shipped LLaVA-1.5, a text-only prompt
    assert result["conv_mode"] == "vicuna_v1"
    assert result["prompt"] == build_prompt(PROMPT, "vicuna_v1", with_image=False)


def test_fastv_run_reads_the_checkpoints_number_of_frames(capsys, four_frames, clip):
    result = run_json(capsys, "--model-path", str(four_frames), "--video", str(clip), "--method", "fastervlm:keep=16")
    assert result["frames"] == [0, 3, 7, 11]  # linspace(0, 11, 4) = 0, 3.67, 7.33, 11, truncated
    assert result["visual_tokens"] == [4 * (16 + 1)] and len(result["kept_frames"]) == 4


def test_the_eval_runner_reads_the_checkpoints_number_of_frames(four_frames, tmp_path):
    from llava.eval.run import run_benchmark
    from llava.pipeline import LlavaPipeline
    from tests.test_video_qa import make_msvd

    scores = run_benchmark("msvd_1k", lambda: LlavaPipeline.load(str(four_frames), conv_mode="llava_v1"),
                           make_msvd(tmp_path / "data"), tmp_path / "out", model_path=str(four_frames),
                           conv_mode="llava_v1", max_new_tokens=1, limit=1, progress=False)
    assert (scores["run"]["answered"], scores["run"]["errors"]) == (1, 0)
    first = json.loads((tmp_path / "out/answers.jsonl").read_text().splitlines()[0])["metadata"]
    assert first["frames"] == [0, 3, 6, 9]  # the 10-frame GIF: linspace(0, 9, 4) = 0, 3, 6, 9
