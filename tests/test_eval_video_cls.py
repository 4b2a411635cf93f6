"""The eval runner's --video-cls keep|drop (Video-LLaVA: each frame's [CLS] token in the LLM's input or not).

Contract tests: passed to the loader only when given (a --pipeline without it keeps working), recorded in
run.json as the model uses it (omitted: the checkpoint's, keep), in the run directory's name for drop, a
resume across the two refused; VIDEO_CLS in the eval scripts. Through the real pipeline on a tiny
Video-LLaVA, the video tokens are counted by hand: 8 frames x 16 kept patches (+ 8 [CLS] under keep).
"""
import json
import os
from pathlib import Path

import pytest

from llava.errors import InputError
from llava.eval.options import check_backend_options, default_output_dir, DEFAULT_PIPELINE
from llava.eval.run import main, run_benchmark
from tests.eval_fakes import FakePipeline
from tests.test_video_qa import bash, make_msvd, script_env

RECORD = "VIDEO_CLS_TEST_RECORD"  # where `recording_load` writes the options the runner gave the loader


def recording_load(model_path, **options):
    """A --pipeline loader: FakePipeline, after writing the options it was given to $VIDEO_CLS_TEST_RECORD."""
    Path(os.environ[RECORD]).write_text(json.dumps(sorted(options)))
    return FakePipeline.load(model_path, **options)


def run_main(tmp_path, monkeypatch, *options) -> tuple[int, list[str]]:
    monkeypatch.setenv(RECORD, str(tmp_path / "options.json"))
    code = main(["--benchmark", "msvd_1k", "--model-path", str(tmp_path / "Video-LLaVA-7B-hf"),
                 "--data-root", str(make_msvd(tmp_path / "data")), "--method", "fastervlm:keep=16",
                 "--pipeline", "tests.test_eval_video_cls:recording_load", "--device", "cpu", "--no-progress",
                 *options])
    return code, json.loads((tmp_path / "options.json").read_text())


def test_the_loader_gets_video_cls_only_when_given_and_run_json_records_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default run directory is outputs/eval/... under the working directory
    code, given = run_main(tmp_path, monkeypatch)
    assert code == 0 and "video_cls" not in given
    default = tmp_path / "outputs/eval/Video-LLaVA-7B-hf/fastervlm_keep16/msvd_1k"
    assert json.loads((default / "run.json").read_text()).get("video_cls") is None  # no checkpoint to read

    code, given = run_main(tmp_path, monkeypatch, "--video-cls", "drop")
    assert code == 0 and "video_cls" in given
    dropped = tmp_path / "outputs/eval/Video-LLaVA-7B-hf/fastervlm_keep16_video_cls_drop/msvd_1k"
    assert json.loads((dropped / "run.json").read_text())["video_cls"] == "drop"


def test_the_run_directory_names_drop_and_keep_shares_the_default():
    assert default_output_dir("ckpt/Video-LLaVA-7B-hf", "none", "msvd_1k", "drop") == \
        Path("outputs/eval/Video-LLaVA-7B-hf/none_video_cls_drop/msvd_1k")
    assert default_output_dir("ckpt/Video-LLaVA-7B-hf", "none", "msvd_1k", "keep") == \
        default_output_dir("ckpt/Video-LLaVA-7B-hf", "none", "msvd_1k")


def test_vllm_refuses_video_cls():
    with pytest.raises(InputError, match="--video-cls is for --backend torch"):
        check_backend_options("vllm", 1, pipeline=DEFAULT_PIPELINE, vision_tower=None, quantization="none",
                              video_cls="drop")


def test_an_image_checkpoint_with_video_cls_is_one_line(tmp_path):
    from llava.eval.runfolder import answer_layout

    with pytest.raises(InputError, match="--video-cls is for Video-LLaVA checkpoints"):
        answer_layout(None, "models/llava-shapes-tiny", None, None, None, "drop")
    assert answer_layout(None, "models/llava-shapes-tiny", None, None, None)["video_cls"] is None


def test_drop_and_keep_through_the_real_pipeline_and_no_resume_across_them(tmp_path, tiny_video_dir):
    from llava.pipeline import LlavaPipeline

    data, out = make_msvd(tmp_path / "data"), tmp_path / "out"
    common = dict(model_path=str(tiny_video_dir), method="fastervlm:keep=16", conv_mode="llava_v1",
                  max_new_tokens=2, progress=False)

    def load(**options):
        return lambda: LlavaPipeline.load(str(tiny_video_dir), method="fastervlm:keep=16", conv_mode="llava_v1",
                                          **options)

    scores = run_benchmark("msvd_1k", load(video_cls="drop"), data, out, video_cls="drop", limit=1, **common)
    assert scores["run"]["video_cls"] == "drop"
    first = json.loads((out / "answers.jsonl").read_text().splitlines()[0])["metadata"]
    assert first["visual_tokens"] == [8 * 16]  # FasterVLM's video rows: 8·L, no [CLS]
    with pytest.raises(InputError, match="video_cls='drop', not 'keep'.*the checkpoint's, keep"):
        run_benchmark("msvd_1k", load(), data, out, **common)  # omitted: the checkpoint's keep

    kept = run_benchmark("msvd_1k", load(), data, tmp_path / "keep", limit=1, **common)
    assert kept["run"]["video_cls"] == "keep"
    first = json.loads((tmp_path / "keep/answers.jsonl").read_text().splitlines()[0])["metadata"]
    assert first["visual_tokens"] == [8 * (16 + 1)]  # the stock layout: each frame's [CLS] with its 16 patches


def test_the_video_scripts_pass_video_cls_and_name_the_run_directory(tmp_path):
    make_msvd(tmp_path / "data")
    env = script_env(tmp_path, VIDEO_CLS="drop")
    result = bash("scripts/video/eval/msvd.sh", "16", env=env)
    assert result.returncode == 0, result.stderr
    run = json.loads((tmp_path / "out/Video-LLaVA-7B-hf/fastervlm_16_video_cls_drop/msvd_1k/run.json").read_text())
    assert run["video_cls"] == "drop"
    result = bash("scripts/video/eval/msvd.sh", "16", env=script_env(tmp_path, VIDEO_CLS="keep"))
    assert result.returncode == 0, result.stderr
    run = json.loads((tmp_path / "out/Video-LLaVA-7B-hf/fastervlm_16/msvd_1k/run.json").read_text())
    assert run["video_cls"] == "keep"
