"""Words about a video say video: an in-LLM method's over-budget refusal on Video-LLaVA (FastV's, DART's) names the
video span (its keep counts over the whole video), at attach time and when a chain's pruned span runs short;
`fastv sweep`'s per-run table says its kept column is per video on a video benchmark (every frame's tokens, [CLS]
included), per image otherwise."""
import pytest

from fastv import sweep
from llava.errors import InputError


@pytest.mark.parametrize("method", ["fastv", "dart"])
def test_an_in_llm_keep_over_a_video_span_is_refused_naming_the_video(method, loaded_video):
    _, model, _, _ = loaded_video  # the tiny Video-LLaVA: 8 frames x (64 patches + [CLS]) = 520 video tokens
    with pytest.raises(InputError) as error:
        model.set_pruning(f"{method}:k=1,keep=600")
    assert str(error.value) == (f"keep=600 is larger than the 520 visual tokens in a video ({method}'s keep counts over"
                                " the whole video, not per frame)")
    assert "image" not in str(error.value)
    model.set_pruning(f"{method}:k=1,keep=300")  # more than an image's 64, within the video's 520
    model.set_pruning("none")


def test_a_chains_short_video_span_is_named_as_the_video(tiny_video_dir):
    from llava.pipeline import LlavaPipeline, Request
    from llava.video import video_from_frames
    from tests.helpers import random_video_frames

    pipe = LlavaPipeline.load(str(tiny_video_dir), method="fastervlm:keep=16+fastv:k=1,keep=200")
    with pytest.raises(InputError) as error:  # FasterVLM leaves 8 x (16 + 1) = 136 tokens for FastV's 200
        pipe.answer([Request(None, "what happens ?", video=video_from_frames(random_video_frames()))],
                    max_new_tokens=1)
    assert str(error.value) == "keep=200 is larger than the 136 visual tokens in the video (visual input 0 of the sample)"


def run(spec, share, kept):
    return {"method": spec.split(":")[0], "spec": spec, "share": share, "kept_tokens": kept, "questions": 3,
            "accuracy": 50.0, "types": {}}


def test_the_per_run_tables_kept_column_says_per_video_on_a_video_benchmark():
    video = {"benchmark": "shapes_video", "tokens_per_image": 64, "video": {"frames": 8, "cls": True, "span": 520},
             "runs": [run("none", 1.0, 520), run("fastervlm:keep=32", 0.5, 264)]}
    table = sweep.to_markdown(video)
    assert "kept: visual tokens per video after the last stage (every frame's, [CLS] included), mean;" in table
    assert "per image after" not in table
    image = {"benchmark": "shapes", "tokens_per_image": 64, "runs": [run("none", 1.0, 64)]}
    assert "kept: visual tokens per image after the last stage, mean, newline tokens not counted;" in \
        sweep.to_markdown(image)
