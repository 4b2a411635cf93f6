"""Video-LLaVA's sequence layout and its books: VisualSpan's frames (worked by hand), the pre-LLM seam per frame
(each frame selected as an image on the video tower's probes, its CLS in front of its kept patches), the in-LLM seam
over the whole video span, and the pipeline's video answers and refusals."""

import dataclasses

import pytest
import torch

from llava.constants import VIDEO_TOKEN_INDEX
from llava.conversation import build_prompt
from llava.errors import InputError
from llava.mm_utils import tokenizer_image_token
from llava.model.pruning.base import FRAME_CLS, VisionInputs, VisualSpan, vision_part
from llava.pipeline import LlavaPipeline, Request
from llava.video import preprocess_frames, video_from_frames
from tests import helpers

PATCHES = 64


def test_visual_span_frames_by_hand():
    # Two frames of a 2x2 grid: frame 0 = [CLS, patch 0, patch 3], frame 1 = [CLS, patch 1], frame 1's CLS dropped later
    span = VisualSpan(start=5, length=5, grid=(2, 2), patch_index=torch.tensor([FRAME_CLS, 0, 3, FRAME_CLS, 1]),
                      partition=torch.tensor([0, 0, 0, 1, 1]), frames=2)
    assert span.partitions == 2 and span.end == 10
    assert span.kept_partitions() == [[0, 3], [1]]  # a frame's CLS is no patch
    assert span.kept_cls() == [0, 1]
    assert span.kept_ids() == [FRAME_CLS, 0, 3, FRAME_CLS, 4 + 1]  # frame * patches + patch
    keep = torch.tensor([True, False, True, False, True])
    assert span.kept_partitions(keep) == [[3], [1]]
    assert span.kept_cls(keep) == [0]
    assert not span.newline.any()
    image = VisualSpan(0, 3, (2, 2), torch.tensor([0, 2, 3]))
    assert image.partitions == 1 and image.kept_cls() == []


def video_prompt(tokenizer, question="what is in this image ?"):
    return tokenizer_image_token(build_prompt(question, with_image=False, with_video=True), tokenizer)


def video_pixels(processor, seed=0):
    return preprocess_frames(video_from_frames(helpers.random_video_frames(seed=seed)).frames, processor)


@pytest.fixture
def video_model(loaded_video):
    """The session's tiny Video-LLaVA, its pruning and video_cls restored after the test."""
    tokenizer, model, processor, _ = loaded_video
    config, pruning = model.config, model.pruning
    yield tokenizer, model, processor
    model.config, model.pruning = config, pruning


@pytest.mark.parametrize("video_cls", ["keep", "drop"])
def test_unpruned_video_span_is_frame_major(video_model, video_cls):
    tokenizer, model, processor = video_model
    model.set_video_cls(video_cls)
    ids = video_prompt(tokenizer)
    inputs = model.prepare_inputs([ids], None, [video_pixels(processor)])
    (span,) = inputs.spans[0]
    per_frame = PATCHES + (video_cls == "keep")
    assert span.start == ids.index(VIDEO_TOKEN_INDEX) and span.length == 8 * per_frame and span.frames == 8
    assert span.partition.tolist() == [f for f in range(8) for _ in range(per_frame)]
    frame = ([FRAME_CLS] if video_cls == "keep" else []) + list(range(PATCHES))
    assert span.patch_index.tolist() == frame * 8
    assert inputs.stats.kept_partitions == [[[list(range(PATCHES))] * 8]]
    assert inputs.stats.kept_cls == [[list(range(8)) if video_cls == "keep" else []]]


@pytest.mark.parametrize("video_cls", ["keep", "drop"])
def test_pre_llm_method_selects_each_frame_as_an_image(video_model, video_cls):
    """fastervlm:keep=5 on a video: every frame's kept patches are what the method picks for that frame alone on the
    video tower's probes; the frame's CLS (keep) sits in front of them; the budget counts patches only."""
    tokenizer, model, processor = video_model
    model.set_video_cls(video_cls)
    model.set_pruning("fastervlm:keep=5")
    video = video_pixels(processor, seed=1)
    inputs = model.prepare_inputs([video_prompt(tokenizer)], None, [video])
    (span,) = inputs.spans[0]
    cls = video_cls == "keep"
    assert span.length == 8 * (5 + cls)
    pruner = vision_part(model.pruning)
    vision = model.config.vision
    layers = pruner.attention_layers(vision.num_layers, vision.layer_index(model.config.select_layer))
    expected = []
    for f in range(8):
        alone = model.video_tower(video[f : f + 1], model.config.select_layer, layers)
        view = VisionInputs(alone.features[0], {k: p.cls_attention[0] for k, p in alone.probes.items()},
                            {k: p.keys[0] for k, p in alone.probes.items()}, (vision.grid_size,) * 2, f,
                            video_cls=video_cls)
        expected.append(pruner.select(view).indices.tolist())
    assert inputs.stats.kept_partitions == [[expected]]
    assert span.patch_index.tolist() == sum((([FRAME_CLS] if cls else []) + e for e in expected), [])
    assert inputs.stats.kept_cls == [[list(range(8)) if cls else []]]
    # the frames' tokens are the projected select-layer features of what was kept (CLS first)
    tower = model.video_tower(video, model.config.select_layer)
    tokens = torch.cat([tower.cls_features[:, None], tower.features], dim=1)  # (8, 1 + P, Dv)
    rows = [tokens[f, ([0] if cls else []) + [1 + p for p in expected[f]]] for f in range(8)]
    spliced = inputs.embeds[0, span.start : span.end]
    torch.testing.assert_close(spliced, model.mm_projector(torch.cat(rows)), atol=1e-5, rtol=1e-5)


def test_in_llm_method_ranks_the_whole_video_span(video_model):
    """fastv:k=1,ratio=0.5 on the stock layout: one span of 520 tokens (CLS included) -> 260 kept over it, frames
    unequal; the books say which patches and which frames' CLS survived."""
    tokenizer, model, processor = video_model
    model.set_pruning("fastv:k=1,ratio=0.5")
    out = model([video_prompt(tokenizer)], None, videos=[video_pixels(processor, seed=2)])
    kept_patches = out.stats.kept_partitions_in_llm[0][0]
    kept_cls = out.stats.kept_cls_in_llm[0][0]
    assert sum(map(len, kept_patches)) + len(kept_cls) == 260
    assert len(kept_patches) == 8 and all(p == sorted(p) for p in kept_patches)
    text = len(video_prompt(tokenizer)) - 1
    assert out.stats.seq_lens[0] == [text + 520, text + 260, text + 260]
    ids = out.stats.kept_in_llm[0][0]
    assert ids.count(FRAME_CLS) == len(kept_cls)
    assert sorted(i for i in ids if i >= 0) == sorted(f * PATCHES + p for f, ps in enumerate(kept_patches) for p in ps)


def test_pipeline_answers_a_video_with_its_frames(tiny_video_dir):
    pipe = LlavaPipeline.load(str(tiny_video_dir), method="fastervlm:keep=3")
    frames = helpers.random_video_frames(n=15, seed=3)
    video = video_from_frames(frames)
    answers = pipe.answer([Request(None, "what is in this image ?", video=video), Request(frames[0], "describe it")],
                          max_new_tokens=3)
    first, second = answers
    assert first.frames == [0, 2, 4, 6, 8, 10, 12, 14] == video.indices
    assert first.visual_tokens == [8 * 4] and len(first.kept_frames) == 8
    assert all(len(p) == 3 and p == sorted(p) for p in first.kept_frames)
    assert first.kept_frame_cls == list(range(8))
    assert first.kept == [[i for f, ps in enumerate(first.kept_frames) for i in [FRAME_CLS] + [f * PATCHES + p for p in ps]]]
    assert second.frames is None and second.kept_frames is None and second.visual_tokens == [3]


def test_pipeline_refuses_what_it_cannot_answer(tiny_video_dir, tiny_llava_dir):
    video = video_from_frames(helpers.random_video_frames(seed=4))
    image_pipe = LlavaPipeline.load(str(tiny_llava_dir))
    with pytest.raises(InputError, match="a video was given, but .* is an image model"):
        image_pipe.answer([Request(None, "describe it", video=video)])
    pipe = LlavaPipeline.load(str(tiny_video_dir))
    with pytest.raises(InputError, match="holds 2 <video> placeholders; one video per prompt"):
        pipe.answer([Request(None, "<video> and <video> : which ?", video=video)])
    short = dataclasses.replace(video, frames=video.frames[:6], indices=video.indices[:6])
    with pytest.raises(InputError, match="video 0 has 6 frames; this model takes 8"):
        pipe.answer([Request(None, "describe it", video=short)])
