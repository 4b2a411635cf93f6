"""The shipped Video-LLaVA (models/llava-video-shapes-tiny) and its recipe (`python -m llava.train --video`).

The shipped model loads through transformers' `VideoLlavaForConditionalGeneration` and through our loader with
the same logits on a video prompt (fp32, 1e-4), and answers a temporal question about the example clip
(docs/examples/shapes-video.gif) through the pipeline `fastv run --video` uses. The recipe, on a tiny model:
from an exported LLaVA-1.5 folder it builds both towers from the image model's, adds `<video>`, trains the
decoder on clips and images with the towers frozen, and exports a folder both loaders read as the same model.
"""

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from llava.conversation import build_prompt
from llava.data.synthetic import SHORT_ANSWER_PROMPT
from llava.mm_utils import tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.video import preprocess_frames, read_video
from tests.helpers import hf_video_input_ids

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_VIDEO_MODEL = ROOT / "models" / "llava-video-shapes-tiny"
EXAMPLE_CLIP = ROOT / "docs" / "examples" / "shapes-video.gif"
# shapes_video test clip 58 (test_0000058, a during_word clip: the word is on sampled frames 1 and 2, the cross with
# it), as `python -m llava.data.synthetic --look video --split test --n 600` writes it
QUESTION = "What shape is shown while the word is visible?"
ANSWER = "cross"
TINY_15 = ["--patch-size", "56", "--vision-width", "32", "--vision-layers", "2", "--vision-heads", "2",
           "--text-width", "32", "--text-intermediate", "64", "--text-layers", "2", "--text-heads", "2",
           "--batch-size", "4", "--warmup", "1", "--lr", "3e-3", "--workers", "0", "--threads", "1",
           "--extra-turns", "2", "--log-every", "1", "--eval-every", "1000", "--eval-samples", "2", "--seed", "0"]


def video_prompt(tokenizer, question: str) -> list[int]:
    return tokenizer_image_token(build_prompt(f"{question}\n{SHORT_ANSWER_PROMPT}", with_image=False, with_video=True),
                                 tokenizer)


def assert_same_logits_as_transformers(folder: Path, frames) -> None:
    from transformers import VideoLlavaForConditionalGeneration

    tokenizer, model, processor, _ = load_pretrained_model(str(folder))
    pixels = preprocess_frames(frames, processor)  # (8, 3, S, S)
    ids = video_prompt(tokenizer, QUESTION)
    with torch.no_grad():
        ours = model([ids], None, all_logits=True, videos=[pixels]).logits
    reference = VideoLlavaForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32).eval()
    config = model.config
    input_ids, mask = hf_video_input_ids([ids], reference.config.image_token_index, reference.config.video_token_index,
                                         config.vision.num_patches, config.unpruned_video_tokens)
    with torch.no_grad():
        theirs = reference(input_ids=input_ids, attention_mask=mask, pixel_values_videos=pixels[None]).logits
    assert ours.shape == theirs.shape == (1, len(ids) - 1 + config.unpruned_video_tokens, len(tokenizer))
    assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_shipped_video_model_matches_transformers_on_the_example_clip():
    assert_same_logits_as_transformers(SHIPPED_VIDEO_MODEL, read_video(EXAMPLE_CLIP).frames)


def test_shipped_video_model_answers_a_temporal_question_about_the_example_clip():
    from llava.pipeline import LlavaPipeline, Request

    video = read_video(EXAMPLE_CLIP)
    pipe = LlavaPipeline.load(str(SHIPPED_VIDEO_MODEL))
    answer = pipe.answer([Request(None, f"{QUESTION}\n{SHORT_ANSWER_PROMPT}", video=video)], max_new_tokens=8)[0]
    assert answer.text.strip().lower().rstrip(".") == ANSWER
    assert answer.visual_tokens == [8 * 145]  # the whole video entered the LLM: 8 frames of [CLS, 144 patches]


@pytest.mark.parametrize("method, tokens", [("fastervlm:keep=36", 8 * 37), ("fastv:k=2,keep=296", 8 * 145)])
def test_readmes_fastv_run_video_example(method, tokens, capsys, tmp_path):
    """README's example: `fastv run --video docs/examples/shapes-video.gif` (no --model-path: the shipped Video-LLaVA)
    answers the temporal question at a quarter of the video's patches, per frame (FasterVLM) and over the whole
    video (FastV, matched on the tokens after layer K), and draws the strip of kept patches."""
    import json

    from fastv.cli import main
    from PIL import Image

    strip = tmp_path / "strip.png"
    assert main(["run", "--video", str(EXAMPLE_CLIP), "--prompt", f"{QUESTION}\n{SHORT_ANSWER_PROMPT}", "--method",
                 method, "--max-new-tokens", "8", "--json", "--overlay", str(strip)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["answer"].strip().lower().rstrip(".") == ANSWER
    assert result["visual_tokens"] == [tokens] and len(result["kept_frames"]) == 8
    assert Image.open(strip).width > Image.open(strip).height  # the 8 frames side by side


def test_video_recipe_builds_trains_and_exports_a_video_llava(tmp_path):
    """--video --init-from a LLaVA-1.5 folder: both towers are its vision tower (and stay so: frozen), the decoder
    trains (with the frame loss), `<video>` is one more token, and the export is VideoLlavaForConditionalGeneration's
    (the frame head is not in it)."""
    from safetensors.torch import load_file

    from llava.data import video_clips
    from llava.train import loop

    torch.set_num_threads(1)
    image_model, video_model = tmp_path / "llava15", tmp_path / "video"
    loop.main(TINY_15 + ["--steps", "1", "--out", str(tmp_path / "run15"), "--export", str(image_model)])
    with pytest.raises(SystemExit, match="--frame-aux-weight is for --video runs"):
        loop.main(TINY_15 + ["--frame-aux-weight", "1", "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match="--frame-aux-layer 2: the decoder has layers 0 to 1"):
        loop.main(TINY_15 + ["--video", "--init-from", str(image_model), "--frame-aux-weight", "1", "--frame-aux-layer",
                             "2", "--out", str(tmp_path / "bad")])
    summary = loop.main(TINY_15 + ["--video", "--init-from", str(image_model), "--steps", "2", "--looks",
                                   "video=3,lattice=1", "--video-token-drop", "0.5", "--frame-aux-weight", "0.5",
                                   "--eval-looks", "video", "--out", str(tmp_path / "run"), "--export", str(video_model)])
    assert " frame " in (tmp_path / "run" / "train.log").read_text()  # the frame loss trained and was logged
    assert summary["step"] == 2 and set(summary["validation"]["video"]) == {"color", "shape", "overall"}  # clips 0, 1

    before, after = load_file(str(image_model / "model.safetensors")), load_file(str(video_model / "model.safetensors"))
    for name, value in before.items():
        if name.startswith("vision_tower.vision_model."):
            tower = name.removeprefix("vision_tower.vision_model.")
            assert torch.equal(after["image_tower." + tower], value) and torch.equal(after["video_tower." + tower], value)
    embed = "language_model.model.embed_tokens.weight"
    assert after[embed].shape[0] == before[embed].shape[0] + 1
    assert not torch.equal(after["language_model.model.layers.0.mlp.up_proj.weight"],
                           before["language_model.model.layers.0.mlp.up_proj.weight"])  # the decoder trained

    tokenizer, model, _, context = load_pretrained_model(str(video_model))
    assert model.config.video is not None and context == 2048
    assert tokenizer.convert_tokens_to_ids("<video>") == len(tokenizer) - 1 == 754
    assert_same_logits_as_transformers(video_model, video_clips.make_clip("test", 0).video_frames)


def test_frame_foreground_marks_the_patches_each_sampled_frame_shows_an_object_or_the_word_on():
    from types import SimpleNamespace

    from llava.train.video import frame_foreground

    clip = SimpleNamespace(sampled=[0, 3], objects=[{"boxes": [[28, 56, 84, 84], None, None, None]},
                                                    {"boxes": [None, None, None, [308, 308, 336, 336]]}],
                           text="CAT", text_frames=[2, 3], text_bbox=[0, 0, 50, 20])
    mask = frame_foreground(clip, grid=12, patch_size=28)
    assert mask.shape == (2, 144)
    assert mask[0].nonzero().flatten().tolist() == [2 * 12 + 1, 2 * 12 + 2]  # rows 56..83 -> 2, columns 28..83 -> 1, 2
    assert mask[1].nonzero().flatten().tolist() == [0, 1, 143]  # the word (row 0, columns 0-1), the last cell


def test_video_token_drop_keeps_every_frames_cls_and_foreground_in_order():
    import dataclasses

    from llava.model.llava_arch import VideoConfig
    from llava.train import loop
    from llava.train.model import TrainableLlava, initialize

    args = loop.parse_args(TINY_15)
    torch.manual_seed(0)
    model = TrainableLlava(dataclasses.replace(loop.model_config(args, 755), video=VideoConfig()))
    initialize(model)
    model.train()
    frames, patches = 8, model.config.vision.num_patches  # 36 patches a frame
    foreground = torch.zeros(frames, patches, dtype=torch.bool)
    foreground[:, [3, 20]] = True
    model.frame_foreground = foreground
    pixels = torch.randn(frames, 3, 336, 336)
    model.video_token_drop = 1.0
    features, indices = model.encode_frames(pixels)
    for f, index in zip(features, indices):
        kept = index.tolist()
        assert kept[0] == -2 and kept[1:] == sorted(kept[1:]) and {3, 20} <= set(kept) and len(f) == len(kept)
    assert sum(len(i) for i in indices) < frames * (1 + patches)  # u**4 of the rest: some patches went
    model.video_token_drop = 0.0
    assert all(i.tolist() == [-2] + list(range(patches)) for i in model.encode_frames(pixels)[1])
    model.eval()
    model.video_token_drop = 1.0
    assert all(len(i) == 1 + patches for i in model.encode_frames(pixels)[1])  # evaluation keeps every token


def test_frame_loss_reads_each_video_tokens_frame_from_the_captured_layer():
    """The frame loss labels every video token of the last training forward with its frame, from the layer that
    `capture_decoder_hidden` hooks: hidden states that spell each token's frame out give a loss near 0, the same
    states shifted by one frame a large one; a batch without a video gives none."""
    import dataclasses

    from llava.model.llava_arch import VideoConfig
    from llava.train import loop
    from llava.train.losses import frame_loss, lm_loss
    from llava.train.model import AuxHeads, TrainableLlava, capture_decoder_hidden, initialize

    args = loop.parse_args(TINY_15)
    torch.manual_seed(0)
    model = TrainableLlava(dataclasses.replace(loop.model_config(args, 755), video=VideoConfig()))
    initialize(model)
    model.train()
    capture_decoder_hidden(model, 0)
    D, frames, per_frame = model.config.text.hidden_size, 8, 1 + model.config.vision.num_patches  # 37 tokens a frame
    heads = AuxHeads(model.config.vision.hidden_size, model.config.vision.grid_size, D, frames)
    with torch.no_grad():  # LayerNorm, then logit f reads hidden dim f (a spike normalises to sqrt(D - 1))
        heads.frame[1].weight.copy_(4 * torch.eye(frames, D))
        heads.frame[1].bias.zero_()
    short, long = [1, 5, -201, 6], [1, 5, 7, 8, -201, 6]  # the short prompt is left-padded by 2
    lm_loss(model, [short, long], [[3], [5]], None, torch.randn(2, frames, 3, 336, 336))
    assert model.decoder_hidden.shape == (2, 5 + frames * per_frame, D)  # the long prompt's 5 text tokens

    def planted(shift):
        hidden = torch.zeros_like(model.decoder_hidden)
        for b, start in ((0, 2 + 2), (1, 4)):  # short: 2 pads, then BOS and one token; long: its 4 tokens
            for t in range(frames * per_frame):
                hidden[b, start + t, (t // per_frame + shift) % frames] = 30.0
        return hidden

    model.decoder_hidden = planted(0)
    assert frame_loss(heads, model).item() < 1e-3
    model.decoder_hidden = planted(1)
    assert frame_loss(heads, model).item() > 10
    lm_loss(model, [[1, 5, 6]], [[2]], None, None)
    assert frame_loss(heads, model) is None
