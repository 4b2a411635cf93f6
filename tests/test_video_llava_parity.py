"""Video-LLaVA parity with transformers: with pruning off, our model is `VideoLlavaForConditionalGeneration` (fp32,
1e-4) on a video prompt, an image prompt, a text-only prompt and a batch mixing them, through the real loader; greedy
generations are identical; video_cls="drop" is transformers' video features with the CLS rows taken out."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from llava.constants import VIDEO_TOKEN_INDEX
from llava.conversation import build_prompt
from llava.errors import CheckpointError, InputError
from llava.generate import generate
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.video import preprocess_frames, video_from_frames
from tests import helpers

PATCHES = 64  # 112-px frames, patch 14
VIDEO_TOKENS = 8 * (PATCHES + 1)  # 520: each frame [CLS, 64 patches]


def video_pixels(processor, seed: int) -> torch.Tensor:
    return preprocess_frames(video_from_frames(helpers.random_video_frames(seed=seed)).frames, processor)  # (8, 3, S, S)


def prompt(tokenizer, question: str, image: bool = False, video: bool = False) -> list[int]:
    return tokenizer_image_token(build_prompt(question, "vicuna_v1", with_image=image, with_video=video), tokenizer)


def hf_forward(hf, prompts, images=None, videos=None, **kwargs):
    ids, mask = helpers.hf_video_input_ids(prompts, hf.config.image_token_index, hf.config.video_token_index,
                                           PATCHES, VIDEO_TOKENS)
    return ids, mask, dict(input_ids=ids, attention_mask=mask, pixel_values_images=images,
                           pixel_values_videos=None if videos is None else torch.stack(list(videos)), **kwargs)


def hf_logits(hf, prompts, images=None, videos=None):
    _, mask, inputs = hf_forward(hf, prompts, images, videos)
    with torch.no_grad():
        return hf(**inputs).logits, mask.bool()


def test_config_is_read_as_video_llava(loaded_video):
    _, model, _, _ = loaded_video
    assert model.config.video.num_frames == 8 and model.config.video.cls == "keep"
    assert model.config.unpruned_video_tokens == VIDEO_TOKENS
    assert model.config.select_layer == -2


def test_video_prompt_logits_match_transformers(loaded_video, hf_video_reference):
    tokenizer, model, processor, _ = loaded_video
    ids = prompt(tokenizer, "what is in this image ?", video=True)
    assert ids.count(VIDEO_TOKEN_INDEX) == 1
    video = video_pixels(processor, seed=1)
    out = model([ids], None, all_logits=True, videos=[video])
    reference, _ = hf_logits(hf_video_reference, [ids], videos=[video])
    assert out.logits.shape[1] == len(ids) - 1 + VIDEO_TOKENS
    assert_close(out.logits, reference, atol=1e-4, rtol=1e-4)
    other = model([ids], None, all_logits=True, videos=[video_pixels(processor, seed=2)])
    assert (other.logits - out.logits).abs().max() > 1e-2  # the video reaches the logits


def test_image_and_text_prompt_logits_match_transformers(loaded_video, hf_video_reference):
    tokenizer, model, processor, _ = loaded_video
    ids = prompt(tokenizer, "describe it", image=True)
    pixels = processor(helpers.random_images(1, seed=3))
    out = model([ids], pixels, all_logits=True)
    reference, _ = hf_logits(hf_video_reference, [ids], images=pixels)
    assert out.logits.shape[1] == len(ids) - 1 + PATCHES  # images: patches without CLS
    assert_close(out.logits, reference, atol=1e-4, rtol=1e-4)
    text = prompt(tokenizer, "how many are there ?")
    assert_close(model([text], None, all_logits=True).logits, hf_logits(hf_video_reference, [text])[0],
                 atol=1e-4, rtol=1e-4)


def mixed_batch(tokenizer, processor):
    prompts = [prompt(tokenizer, "what is in this image ?", video=True), prompt(tokenizer, "describe it", image=True),
               prompt(tokenizer, "how many red left ? answer yes or no"),
               prompt(tokenizer, "read the word", image=True, video=True)]
    images = processor(helpers.random_images(2, seed=4))
    videos = [video_pixels(processor, seed=5), video_pixels(processor, seed=6)]
    return prompts, images, videos


def one_by_one(prompts, images, videos):
    """The batch's samples alone, each with its own images and videos: (prompt, images, videos) per sample."""
    image_iter, video_iter = iter(images), iter(videos)
    for ids in prompts:
        mine = [next(image_iter) for _ in range(ids.count(-200))]
        theirs = [next(video_iter) for _ in range(ids.count(VIDEO_TOKEN_INDEX))]
        yield [ids], torch.stack(mine) if mine else None, theirs or None


def test_batch_mixing_videos_images_and_text_matches_transformers(loaded_video, hf_video_reference):
    """Against transformers run on each sample alone: its own left-padded batch drifts from its single runs by up
    to 3e-4 on this tiny model (a thousand padding rows before the short prompts), while ours stays within 2e-5."""
    tokenizer, model, processor, _ = loaded_video
    prompts, images, videos = mixed_batch(tokenizer, processor)
    out = model(prompts, images, all_logits=True, videos=videos)
    _, mask, _ = hf_forward(hf_video_reference, prompts, images, videos)
    assert torch.equal(out.key_mask, mask.bool())
    for b, (ids, mine, theirs) in enumerate(one_by_one(prompts, images, videos)):
        reference, _ = hf_logits(hf_video_reference, ids, mine, theirs)
        assert_close(out.logits[b][mask[b].bool()], reference[0], atol=1e-4, rtol=1e-4)
    assert out.stats.visual_tokens == [[VIDEO_TOKENS], [PATCHES], [], [PATCHES, VIDEO_TOKENS]]
    assert out.stats.frames == [[8], [0], [], [0, 8]]


def test_greedy_generation_matches_transformers_single_and_batched(loaded_video, hf_video_reference):
    tokenizer, model, processor, _ = loaded_video
    prompts, images, videos = mixed_batch(tokenizer, processor)
    ours = generate(model, prompts, images, max_new_tokens=6, videos=videos).tokens
    for b, (ids, mine, theirs) in enumerate(one_by_one(prompts, images, videos)):
        input_ids, _, inputs = hf_forward(hf_video_reference, ids, mine, theirs)
        with torch.no_grad():
            # both stop at EOS (transformers' min_new_tokens would forbid the EOS that ours may pick)
            reference = hf_video_reference.generate(**inputs, do_sample=False, max_new_tokens=6,
                                                    pad_token_id=3)[0, input_ids.shape[1]:].tolist()
        assert ours[b] == reference
        assert generate(model, ids, mine, max_new_tokens=6, videos=theirs).tokens[0] == reference
    assert len(set(map(tuple, ours))) > 1  # the random model does not answer every prompt alike


def test_video_tower_is_transformers_video_tower_frame_by_frame(loaded_video, hf_video_reference):
    _, model, processor, _ = loaded_video
    frames = video_pixels(processor, seed=7)
    with torch.no_grad():
        hidden = hf_video_reference.model.video_tower(frames, output_hidden_states=True).hidden_states[-2]
    ours = model.video_tower(frames, select_layer=-2)
    assert_close(ours.features, hidden[:, 1:], atol=1e-5, rtol=1e-5)
    assert_close(ours.cls_features, hidden[:, 0], atol=1e-5, rtol=1e-5)
    image_tower = model.vision_tower(frames, select_layer=-2).features
    assert (image_tower - ours.features).abs().max() > 1e-2  # two towers, not one read twice


def test_video_cls_drop_is_transformers_features_without_cls_rows(tiny_video_dir, hf_video_reference):
    tokenizer, model, processor, _ = load_pretrained_model(str(tiny_video_dir), video_cls="drop")
    assert model.config.video.cls == "drop" and model.config.unpruned_video_tokens == 8 * PATCHES
    ids = prompt(tokenizer, "what is in this image ?", video=True)
    video = video_pixels(processor, seed=8)
    out = model([ids], None, all_logits=True, videos=[video])
    # By hand: transformers' video tower, layer -2, CLS rows removed, its projector, spliced at the placeholder.
    hf = hf_video_reference.model
    with torch.no_grad():
        hidden = hf.video_tower(video, output_hidden_states=True).hidden_states[-2][:, 1:]  # (8, 64, Dv)
        features = hf.multi_modal_projector(hidden).flatten(0, 1)  # (512, D)
        at = ids.index(VIDEO_TOKEN_INDEX)
        text = hf.language_model.embed_tokens(torch.tensor([t for t in ids if t != VIDEO_TOKEN_INDEX]))
        embeds = torch.cat([text[:at], features, text[at:]])[None]
        reference = hf_video_reference(inputs_embeds=embeds).logits
    assert out.stats.visual_tokens == [[8 * PATCHES]]
    assert out.stats.kept_cls == [[[]]]
    assert_close(out.logits, reference, atol=1e-4, rtol=1e-4)


def _copy(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    return copy


def test_every_key_is_checked_by_name(tiny_video_dir, tmp_path):
    folder = _copy(tiny_video_dir, tmp_path)
    weights = load_file(str(folder / "model.safetensors"))
    gone = weights.pop("video_tower.encoder.layers.1.mlp.fc1.weight")
    weights["video_tower.encoder.layers.0.temporal_attn.k_proj.weight"] = gone
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as error:
        load_pretrained_model(str(folder))
    message = str(error.value)
    assert "missing weights: video_tower.encoder.layers.1.mlp.fc1.weight" in message
    assert "unexpected weights: video_tower.encoder.layers.0.temporal_attn.k_proj.weight" in message


def test_a_video_layout_other_than_video_llavas_is_refused(tiny_video_dir, tmp_path):
    folder = _copy(tiny_video_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, video_seq_length=8 * PATCHES)))
    with pytest.raises(CheckpointError, match="video_seq_length 512 is not Video-LLaVA's layout"):
        load_pretrained_model(str(folder))


def test_an_unknown_video_cls_is_refused_before_any_weight_is_read(tiny_video_dir, monkeypatch):
    import llava.model.builder as builder

    def no_weights(files):
        raise AssertionError("the weights were read before video_cls was checked")

    monkeypatch.setattr(builder, "read_weights", no_weights)
    with pytest.raises(InputError, match="unknown video_cls 'first' \\(known: keep, drop\\)"):
        load_pretrained_model(str(tiny_video_dir), video_cls="first")


def test_video_options_and_inputs_are_refused_in_one_line(tiny_llava_dir, loaded_video, loaded):
    with pytest.raises(InputError, match="--video-cls is for Video-LLaVA"):
        load_pretrained_model(str(tiny_llava_dir), video_cls="drop")
    tokenizer, model, processor, _ = loaded_video
    ids = prompt(tokenizer, "describe it", video=True)
    video = video_pixels(processor, seed=9)
    with pytest.raises(InputError, match="video 0 has 7 frames; this model takes 8"):
        model([ids], None, videos=[video[:7]])
    with pytest.raises(InputError, match=r"1 <video> placeholder\(s\) but 0 video\(s\)"):
        model([ids], None)
    _, image_model, _, _ = loaded
    with pytest.raises(InputError, match="no video tower"):
        image_model([[1, 5, VIDEO_TOKEN_INDEX, 6]], None, videos=[video])
