"""Every pruning method on video (Video-LLaVA, VIDEO.md R1/R2), on a tiny random llava-hf Video-LLaVA saved by
transformers: 56-px frames, 16 patches + [CLS] a frame, 8 frames = 136 video tokens (128 under video_cls=drop).

- Known answers: FasterVLM keeps, in every frame, the top `keep` patches of transformers' own *eager* CLIP
  attention (the video tower's select-layer [CLS] row, heads averaged), and the LLM then sees exactly those tokens
  ([CLS] in front of each frame's under video_cls=keep, none under drop: 8 x keep); FastV keeps the global top-k of
  transformers' eager LLM attention at layer k-1 (last prompt token's row, heads averaged) over the whole span,
  the frames' [CLS] tokens ranked like any token, no per-frame quota.
- Contracts on video prompts, for every method that applies (pre-LLM ones per frame, in-LLM ones and chains over
  the span): batch == single on a batch mixing videos, images and text; cached decoding == recompute; keeping
  everything == unpruned; FastV's mask mode == inplace; the kept counts are the budgets.
- HiRED (NeXT-only) refuses a video by name; Answer.kept_frames / kept_frame_cls say what entered, per frame.
"""

import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from llava.constants import VIDEO_TOKEN_INDEX
from llava.conversation import build_prompt
from llava.errors import InputError
from llava.generate import generate
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.model.pruning.base import FRAME_CLS, LayerPruner, llm_parts, vision_part
from llava.model.pruning.registry import available_methods, parse_method
from llava.pipeline import LlavaPipeline, Request
from llava.video import preprocess_frames, video_from_frames
from tests import helpers

PATCHES = 16  # 56-px frames, patch 14
FRAMES = 8
SPAN = FRAMES * (PATCHES + 1)  # 136: each frame [CLS, 16 patches]

# Every registered method on a video, budgets sized for 16-patch frames and 16-patch images alike (a mixed batch).
PER_FRAME = ["fastervlm:keep=4", "random:keep=4,seed=3", "uniform:keep=4", "pool:keep=4", "prumerge", "prumerge+",
             "vispruner:keep=4,important_ratio=0.5", "divprune:keep=4", "divprune:ratio=0.75",
             "visionzip:dominant=3,contextual=2"]
OVER_THE_SPAN = ["fastv:k=2,keep=12", "fastv:k=2,ratio=0.5", "fastv:k=1,keep=12,mode=mask", "dart:k=1,keep=16",
                 "pdrop:layers=1,2,lambda=0.5", "sparsevlm:keep=64,layers=0,1"]
CHAINS = ["fastervlm:keep=12+fastv:k=2,keep=8", "vispruner:keep=12+pdrop:layers=1,2,lambda=0.5",
          "random:keep=14,seed=1+dart:k=1,keep=16+fastv:k=2,keep=4"]
REFUSED = {"hired": "hired:rate=0.25"}
SPECS = PER_FRAME + OVER_THE_SPAN + CHAINS


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-video-llava-56")
    helpers.make_tiny_video_llava(folder, image_size=56)
    return folder


@pytest.fixture(scope="module")
def loaded(video_dir):
    return load_pretrained_model(str(video_dir))


@pytest.fixture(scope="module")
def hf_eager(video_dir):
    """transformers' VideoLlavaForConditionalGeneration from the same folder, eager attention (probabilities out)."""
    from transformers import VideoLlavaForConditionalGeneration

    return VideoLlavaForConditionalGeneration.from_pretrained(video_dir, dtype=torch.float32,
                                                              attn_implementation="eager").eval()


@pytest.fixture
def model(loaded):
    """The shared model with video_cls=keep and no method, put back after each test."""
    model = loaded[1]
    yield model
    model.set_pruning("none")
    model.set_video_cls("keep")


def frames(seed: int, n: int = 12) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(seed)
    return [Image.fromarray(torch.randint(0, 256, (70, 90, 3), generator=generator, dtype=torch.uint8).numpy())
            for _ in range(n)]


def video_pixels(processor, seed: int) -> torch.Tensor:
    return preprocess_frames(video_from_frames(frames(seed)).frames, processor)  # (8, 3, 56, 56)


def prompt(tokenizer, question: str, image: bool = False, video: bool = False) -> list[int]:
    return tokenizer_image_token(build_prompt(question, "vicuna_v1", with_image=image, with_video=video), tokenizer)


def mixed_batch(loaded):
    """A video prompt, an image prompt, a text prompt and an image + video prompt (three lengths)."""
    tokenizer, _, processor, _ = loaded
    prompts = [prompt(tokenizer, "what is in this image ?", video=True), prompt(tokenizer, "describe it", image=True),
               prompt(tokenizer, "how many red left ? answer yes or no"),
               prompt(tokenizer, "read the word", image=True, video=True)]
    images = processor(helpers.random_images(2, seed=4))
    return prompts, images, [video_pixels(processor, seed=5), video_pixels(processor, seed=6)]


def visuals_of(prompts, images, videos):
    """Per sample, its images and videos in the order the batch gives them (for running one sample alone)."""
    image_iter, video_iter = iter(images), iter(videos)
    out = []
    for ids in prompts:
        own_images = [next(image_iter) for _ in range(ids.count(helpers.IMAGE_TOKEN_INDEX))]
        own_videos = [next(video_iter) for _ in range(ids.count(VIDEO_TOKEN_INDEX))]
        out.append((torch.stack(own_images) if own_images else None, own_videos or None))
    return out


def test_every_registered_method_is_run_on_video_or_refused_by_name():
    named = {spec.partition(":")[0] for spec in PER_FRAME + OVER_THE_SPAN} | set(REFUSED) | {"none"}
    assert named == set(available_methods())
    for spec in PER_FRAME:
        assert parse_method(spec).video == "per frame"
    for spec in OVER_THE_SPAN:
        assert parse_method(spec).video == "over the span"


# ---- known answers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("video_cls", ["keep", "drop"])
def test_fastervlm_keeps_per_frame_the_top_of_transformers_eager_cls_attention(loaded, model, hf_eager, video_cls):
    tokenizer, _, processor, _ = loaded
    keep = 5
    ids = prompt(tokenizer, "what is in this image ?", video=True)
    video = video_pixels(processor, seed=11)
    hf = hf_eager.model
    with torch.no_grad():
        tower = hf.video_tower(video, output_attentions=True, output_hidden_states=True)
    cls_row = tower.attentions[-2][:, :, 0, 1:].mean(dim=1)  # (8, 16): layer -2's [CLS] row, heads averaged
    ranked = cls_row.sort(dim=-1, descending=True).values
    assert (ranked[:, keep - 1] - ranked[:, keep]).min() > 1e-6  # no near-tie at the cut: one right answer
    expected = [sorted(row.topk(keep).indices.tolist()) for row in cls_row]
    assert len({tuple(e) for e in expected}) > 1  # the frames choose differently

    model.set_video_cls(video_cls)
    model.set_pruning(f"fastervlm:keep={keep}")
    out = model([ids], None, all_logits=True, videos=[video])
    assert out.stats.kept_partitions == [[expected]]
    per_frame = keep + (video_cls == "keep")
    assert out.stats.visual_tokens == [[FRAMES * per_frame]]  # 8 x 6 with [CLS], 8 x 5 = FasterVLM's 8L without
    assert out.stats.kept_cls == [[list(range(FRAMES)) if video_cls == "keep" else []]]

    # By hand: transformers' select-layer features of those patches ([CLS] first under keep), frame after frame,
    # its projector, spliced at the placeholder, its LLM: the same logits.
    hidden = tower.hidden_states[-2]  # (8, 17, Dv)
    rows = [([0] if video_cls == "keep" else []) + [1 + p for p in kept] for kept in expected]
    with torch.no_grad():
        features = hf.multi_modal_projector(torch.cat([hidden[f, r] for f, r in enumerate(rows)]))  # (8 x per_frame, D)
        at = ids.index(VIDEO_TOKEN_INDEX)
        text = hf.language_model.embed_tokens(torch.tensor([t for t in ids if t != VIDEO_TOKEN_INDEX]))
        reference = hf_eager(inputs_embeds=torch.cat([text[:at], features, text[at:]])[None]).logits
    assert_close(out.logits, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("video_cls", "spec", "kept"), [
    ("keep", "fastv:k=2,ratio=0.5", 68),  # K=2, R=50%: round(136 x 0.5), the frames' [CLS] among the candidates
    ("keep", "fastv:k=1,keep=40", 40),  # keep counts over the span (40 of 136), not per frame
    ("drop", "fastv:k=2,ratio=0.75", 32),  # round(128 x 0.25)
])
def test_fastv_keeps_the_global_top_of_transformers_eager_llm_attention_over_the_span(
        loaded, model, hf_eager, video_cls, spec, kept):
    tokenizer, _, processor, _ = loaded
    ids = prompt(tokenizer, "what is in this image ?", video=True)
    video = video_pixels(processor, seed=12)
    k = int(spec.split("k=")[1].split(",")[0])
    model.set_video_cls(video_cls)
    span = FRAMES * (PATCHES + (video_cls == "keep"))
    start = ids.index(VIDEO_TOKEN_INDEX)
    # transformers' eager attention at layer k-1 over the same sequence (drop: embeddings spliced by hand)
    hf = hf_eager.model
    with torch.no_grad():
        if video_cls == "keep":
            input_ids, _ = helpers_hf_ids(ids, hf_eager.config, span)
            attention = hf_eager(input_ids=input_ids, pixel_values_videos=video[None], output_attentions=True).attentions
        else:
            hidden = hf.video_tower(video, output_hidden_states=True).hidden_states[-2][:, 1:]  # (8, 16, Dv)
            features = hf.multi_modal_projector(hidden).flatten(0, 1)  # (128, D)
            text = hf.language_model.embed_tokens(torch.tensor([t for t in ids if t != VIDEO_TOKEN_INDEX]))
            embeds = torch.cat([text[:start], features, text[start:]])[None]
            attention = hf_eager(inputs_embeds=embeds, output_attentions=True).attentions
    scores = attention[k - 1][0, :, -1, start : start + span].mean(dim=0)  # (span,) last token's row, heads averaged
    ranked = scores.sort(descending=True).values
    assert ranked[kept - 1] - ranked[kept] > 1e-7  # no near-tie at the cut
    expected = sorted(scores.topk(kept).indices.tolist())

    model.set_pruning(spec)
    out = model([ids], None, videos=[video])
    assert out.keep_mask[0, start : start + span].nonzero()[:, 0].tolist() == expected
    # Per frame, what the global choice left (frame = local // tokens a frame; [CLS] first under keep):
    per_frame = PATCHES + (video_cls == "keep")
    cls = video_cls == "keep"
    by_hand = [[i % per_frame - cls for i in expected if i // per_frame == f and i % per_frame >= cls]
               for f in range(FRAMES)]
    assert out.stats.kept_partitions_in_llm == [[by_hand]]
    assert out.stats.kept_cls_in_llm == [[sorted({i // per_frame for i in expected if cls and i % per_frame == 0})]]
    assert len({len(f) for f in by_hand}) > 1  # no per-frame quota: the frames keep different counts


def helpers_hf_ids(ids, config, span):
    """Our prompt -> transformers' input_ids (the <video> placeholder repeated `span` times) and its mask."""
    expanded = sum(([config.video_token_index] * span if t == VIDEO_TOKEN_INDEX else [t] for t in ids), [])
    return torch.tensor([expanded]), torch.ones(1, len(expanded), dtype=torch.long)


# ---- contracts -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_batch_of_videos_images_and_text_equals_single_runs_and_cached_equals_recompute(loaded, model, spec):
    prompts, images, videos = mixed_batch(loaded)
    model.set_pruning(spec)
    together = model(prompts, images, videos=videos)
    cached = generate(model, prompts, images, max_new_tokens=3, videos=videos).tokens
    assert generate(model, prompts, images, max_new_tokens=3, use_cache=False, videos=videos).tokens == cached
    kept = together.stats.kept_in_llm or together.stats.kept
    for b, (own_images, own_videos) in enumerate(visuals_of(prompts, images, videos)):
        alone = model(prompts[b : b + 1], own_images, videos=own_videos)
        assert_close(together.logits[b], alone.logits[0], atol=1e-4, rtol=1e-4)
        assert kept[b] == (alone.stats.kept_in_llm or alone.stats.kept)[0]


def _span_budget(method, tokens: int) -> int:
    """Tokens an in-LLM method (a chain's last, after the earlier in-LLM parts) keeps of a span of `tokens`."""
    for part in llm_parts(method):
        tokens = part.stage_budget(tokens)[-1]
    return tokens


@pytest.mark.parametrize("video_cls", ["keep", "drop"])
@pytest.mark.parametrize("spec", SPECS)
def test_kept_tokens_equal_the_budget_per_frame_or_over_the_span(loaded, model, spec, video_cls):
    prompts, images, videos = mixed_batch(loaded)
    model.set_video_cls(video_cls)
    method = model.set_pruning(spec)
    stats = model(prompts, images, videos=videos).stats
    cls = video_cls == "keep"
    pre_llm = vision_part(method)
    entered = [visual for sample, frames in zip(stats.visual_tokens, stats.frames)
               for visual, f in zip(sample, frames) if f]  # the two videos' tokens entering the LLM
    assert len(entered) == 2
    for sample, frames in zip(stats.kept_partitions, stats.frames):
        for partitions, f in zip(sample, frames):
            if not f:
                continue
            counts = [len(p) for p in partitions]
            if pre_llm is None:
                assert counts == [PATCHES] * FRAMES
            elif pre_llm.budget(PATCHES) is None:  # PruMerge: adaptive, some patches of every frame
                assert all(1 <= n <= PATCHES for n in counts)
            elif pre_llm.name == "visionzip":  # D - 1 dominant patches + C contextual targets; [CLS] is no patch
                dominant, contextual = pre_llm.args.counts
                assert counts == [dominant - 1 + contextual] * FRAMES
            else:
                assert counts == [pre_llm.budget(PATCHES)] * FRAMES
    kept_cls = [c for sample, frames in zip(stats.kept_cls, stats.frames) for c, f in zip(sample, frames) if f]
    if pre_llm is not None and pre_llm.name == "visionzip":  # its [CLS] is the frame's, under keep and drop
        assert kept_cls == [list(range(FRAMES))] * 2
    else:
        assert kept_cls == [list(range(FRAMES)) if cls else []] * 2
    if not llm_parts(method):
        return
    after = [len(ids) for sample, frames in zip(stats.kept_in_llm, stats.frames) for ids, f in zip(sample, frames) if f]
    assert after == [_span_budget(method, n) for n in entered]  # chosen over the span, [CLS] tokens included


KEEP_ALL = ["fastervlm:keep=16", "random:keep=16", "uniform:keep=16", "vispruner:keep=16", "divprune:ratio=0",
            "fastv:k=2,ratio=0", "fastv:k=1,ratio=0,mode=mask", "pdrop:layers=1,2,lambda=1",
            "fastervlm:keep=16+fastv:k=2,ratio=0"]


@pytest.mark.parametrize("spec", KEEP_ALL)
def test_keeping_everything_equals_no_pruning_exactly_on_videos(loaded, model, spec):
    prompts, images, videos = mixed_batch(loaded)
    expected = model(prompts, images, all_logits=True, videos=videos).logits
    model.set_pruning(spec)
    assert torch.equal(model(prompts, images, all_logits=True, videos=videos).logits, expected)


@pytest.mark.parametrize("budget", ["keep=30", "ratio=0.5"])
def test_fastv_mask_mode_equals_inplace_on_videos(loaded, model, budget):
    tokenizer, _, processor, _ = loaded
    prompts = [prompt(tokenizer, "what is in this image ?", video=True), prompt(tokenizer, "read the word", video=True)]
    videos, images = [video_pixels(processor, seed=5), video_pixels(processor, seed=6)], None
    results, tokens = {}, {}
    for mode in ("inplace", "mask"):
        model.set_pruning(f"fastv:k=1,{budget},mode={mode}")
        results[mode] = model(prompts, images, videos=videos)
        tokens[mode] = generate(model, prompts, images, max_new_tokens=6, videos=videos).tokens
    assert results["inplace"].keep_mask.equal(results["mask"].keep_mask)
    assert_close(results["inplace"].logits, results["mask"].logits, atol=1e-5, rtol=1e-5)
    assert tokens["inplace"] == tokens["mask"]
    assert results["inplace"].stats.kept_in_llm == results["mask"].stats.kept_in_llm


# ---- budgets, refusals, answers ------------------------------------------------------------------------------


def test_fastv_keep_counts_over_the_span_so_a_video_model_takes_more_than_a_frame(loaded, model):
    tokenizer, _, processor, _ = loaded
    model.set_pruning("fastv:k=2,keep=100")  # more than a frame's 16 patches, fewer than the video's 136 tokens
    video = video_pixels(processor, seed=13)
    out = model([prompt(tokenizer, "describe it", video=True)], None, videos=[video])
    assert [len(ids) for ids in out.stats.kept_in_llm[0]] == [100]
    with pytest.raises(InputError, match="larger than the 16 visual tokens"):  # an image's span is checked when run
        model([prompt(tokenizer, "describe it", image=True)], processor(helpers.random_images(1)))
    with pytest.raises(InputError) as error:
        model.set_pruning(f"fastv:k=2,keep={SPAN + 1}")  # more than any span of this model
    assert "\n" not in str(error.value) and str(SPAN) in str(error.value)


def test_hired_refuses_a_video_by_name_and_still_prunes_an_image(loaded, model):
    tokenizer, _, processor, _ = loaded
    model.set_pruning(REFUSED["hired"])
    with pytest.raises(InputError) as error:
        model([prompt(tokenizer, "describe it", video=True)], None, videos=[video_pixels(processor, seed=14)])
    message = str(error.value)
    assert "\n" not in message and message.startswith("method 'hired' does not apply to videos")
    out = model([prompt(tokenizer, "describe it", image=True)], processor(helpers.random_images(1)))
    assert out.stats.visual_tokens == [[4]]  # floor(16 x 0.25) on an image
    model.set_pruning("hired:rate=0.25+fastv:k=2,keep=2")  # in a chain too
    with pytest.raises(InputError, match="'hired' does not apply to videos"):
        model([prompt(tokenizer, "describe it", video=True)], None, videos=[video_pixels(processor, seed=14)])


@pytest.mark.parametrize("spec", ["fastervlm:keep=3", "fastv:k=2,keep=20"])
def test_answer_kept_frames_says_what_entered_per_frame(loaded, model, spec):
    tokenizer, _, processor, context = loaded
    pipeline = LlavaPipeline(tokenizer, model, processor, context, "tiny", "vicuna_v1")
    model.set_pruning(spec)
    clip = video_from_frames(frames(seed=15))
    (answer,) = pipeline.answer([Request(None, "what is in this image ?", video=clip)], max_new_tokens=2)
    assert answer.frames == [0, 1, 3, 4, 6, 7, 9, 11]  # linspace(0, 11, 8) as int
    out = model([answer.prompt_ids], None, videos=[preprocess_frames(clip.frames, processor)])
    if spec.startswith("fastv"):
        # By hand from the keep mask: span row r is frame r // 17, its [CLS] when r % 17 == 0, else patch r % 17 - 1.
        start = answer.prompt_ids.index(VIDEO_TOKEN_INDEX)
        rows = out.keep_mask[0, start : start + SPAN].nonzero()[:, 0].tolist()
        assert len(rows) == 20 and answer.visual_tokens == [SPAN]  # every token entered; 20 stay after layer 2
        expected = [[r % 17 - 1 for r in rows if r // 17 == f and r % 17] for f in range(FRAMES)]
        expected_cls = sorted({r // 17 for r in rows if r % 17 == 0})
    else:
        # By hand from the kept ids as they enter: frame * 16 + patch, FRAME_CLS (-2) for each frame's [CLS].
        ids = out.stats.kept[0][0]
        assert ids.count(FRAME_CLS) == FRAMES and answer.visual_tokens == [FRAMES * 4]  # 8 x ([CLS] + 3)
        expected = [[i % 16 for i in ids if i >= 0 and i // 16 == f] for f in range(FRAMES)]
        expected_cls = list(range(FRAMES))
        assert [len(f) for f in expected] == [3] * FRAMES
    assert answer.kept_frames == expected and answer.kept_frame_cls == expected_cls
    assert answer.kept == (out.stats.kept_in_llm or out.stats.kept)[0]


def test_fastv_methods_says_how_each_budget_counts_on_a_video():
    from fastv.methods import rows

    video = {row["method"]: row["video"] for row in rows()}
    assert video["fastervlm"] == video["random"] == video["visionzip"] == "per frame"
    assert video["fastv"] == video["dart"] == video["pdrop"] == video["sparsevlm"] == "over the span"
    assert video["hired"] == "refused" and video["none"] == "-"
