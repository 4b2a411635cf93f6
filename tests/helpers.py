"""Builders for the tests: tiny random LLaVA checkpoints made with transformers, in both layouts."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_TOKEN_INDEX = -200
WORDS = (
    "a chat between curious human and an artificial intelligence assistant the gives helpful detailed "
    "polite answers to human's questions user assistant what is in this image describe it colour shape "
    "how many are there red green blue yes no left right top bottom word read"
).split()


def make_tokenizer(vocab_size: int):
    """A word-level tokenizer with <unk>=0 <s>=1 </s>=2 <pad>=3 and BOS added, as Llama's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    symbols = list(":.,?'!\n") + [str(d) for d in range(10)]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(specials + symbols + WORDS + [w.upper() for w in WORDS]))}
    assert len(vocab) < vocab_size - 1, "vocab_size too small for the test words"
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def tiny_configs(image_size=112, vision_layers=3, text_layers=3, num_kv_heads=2, vocab_size=320, text_model="llama",
                 **text):
    """A tiny CLIP + decoder; `text_model="mistral"` makes the decoder a MistralConfig (extra `text` fields
    such as sliding_window go to the decoder's config)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, MistralConfig

    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers, num_attention_heads=4,
        image_size=image_size, patch_size=14, projection_dim=16,
    )
    text_config = {"llama": LlamaConfig, "mistral": MistralConfig}[text_model](
        hidden_size=64, intermediate_size=128, num_hidden_layers=text_layers, num_attention_heads=4,
        num_key_value_heads=num_kv_heads, vocab_size=vocab_size, max_position_embeddings=1024,
        rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=3, **text,
    )
    return LlavaConfig(vision_config=vision, text_config=text_config, image_token_index=vocab_size - 1)


def make_tiny_llava(folder: Path, seed: int = 0, **config_overrides):
    """Save a random LlavaForConditionalGeneration + tokenizer + processor config; return the HF model."""
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    config = tiny_configs(**config_overrides)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # N(0, 4 / fan_in): peaked attention and varied greedy generations
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 2.0 / p.shape[-1] ** 0.5)
    model.save_pretrained(folder)
    make_tokenizer(config.text_config.vocab_size).save_pretrained(folder)
    size = config.vision_config.image_size
    (Path(folder) / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": size, "width": size}, "size": {"shortest_edge": size},
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_center_crop": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "resample": 3, "rescale_factor": 1 / 255, "image_processor_type": "CLIPImageProcessor",
    }))
    return model


TINY_PINPOINTS = [[112, 224], [224, 112], [224, 224], [336, 112], [112, 336]]  # [height, width], 112-px crops


def make_tiny_llava_next(folder: Path, seed: int = 0, pinpoints=TINY_PINPOINTS, **config_overrides):
    """Save a random LlavaNextForConditionalGeneration (the tiny CLIP + Llama of `tiny_configs`, anyres
    over `pinpoints`) + tokenizer + LlavaNextImageProcessor config; return the HF model."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    torch.manual_seed(seed)
    parts = tiny_configs(**config_overrides)
    config = LlavaNextConfig(vision_config=parts.vision_config, text_config=parts.text_config,
                             image_token_index=parts.image_token_index, image_grid_pinpoints=pinpoints)
    model = LlavaNextForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 2.0 / p.shape[-1] ** 0.5)
        model.model.image_newline.normal_(0, 1.0)
    model.save_pretrained(folder)
    make_tokenizer(config.text_config.vocab_size).save_pretrained(folder)
    size = config.vision_config.image_size
    (Path(folder) / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": size, "width": size}, "size": {"shortest_edge": size},
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_center_crop": True, "do_normalize": True, "do_rescale": True, "do_resize": True, "do_pad": True,
        "resample": 3, "rescale_factor": 1 / 255, "image_grid_pinpoints": pinpoints,
        "image_processor_type": "LlavaNextImageProcessor",
    }))
    return model


def to_original_layout(hf_folder: Path, out: Path, clip_out: Path, embed_vision: bool = False, full_clip: bool = False) -> None:
    """Rewrite a llava-hf folder into liuhaotian/llava-v1.5 keys plus a separate CLIP folder (.bin); a
    LlavaNext folder becomes liuhaotian/llava-v1.6's layout (anyres, spatial_unpad, [width, height] pinpoints).

    embed_vision: also store the CLIP weights in the LLaVA checkpoint, as
    `model.vision_tower.vision_tower.vision_model.*` (checkpoints trained with the tower unfrozen).
    full_clip: write the CLIP folder as a whole CLIPModel (openai/clip-vit-large-patch14-336's layout):
    nested vision_config, plus text tower weights, projections and logit_scale that must be ignored.
    """
    from safetensors.torch import load_file, save_file

    cfg = json.loads((hf_folder / "config.json").read_text())
    weights = load_file(str(hf_folder / "model.safetensors"))
    llm, clip = {}, {}
    for key, value in weights.items():
        if key.startswith("language_model.lm_head."):
            llm[key.replace("language_model.", "", 1)] = value
        elif key.startswith("language_model.model."):
            llm[key.replace("language_model.model.", "model.", 1)] = value
        elif key.startswith("multi_modal_projector.linear_1."):
            llm[key.replace("multi_modal_projector.linear_1.", "model.mm_projector.0.")] = value
        elif key.startswith("multi_modal_projector.linear_2."):
            llm[key.replace("multi_modal_projector.linear_2.", "model.mm_projector.2.")] = value
        elif key.startswith("vision_tower."):
            clip[key.replace("vision_tower.", "vision_model.", 1)] = value
        elif key == "image_newline":
            llm["model.image_newline"] = value
        else:
            raise AssertionError(key)
    out.mkdir(parents=True, exist_ok=True)
    clip_out.mkdir(parents=True, exist_ok=True)
    if embed_vision:
        llm.update({f"model.vision_tower.vision_tower.{k}": v for k, v in clip.items()})
    save_file(llm, str(out / "model.safetensors"))
    vision = dict(cfg["vision_config"], model_type="clip_vision_model")
    if full_clip:
        clip.update({
            "text_model.embeddings.token_embedding.weight": torch.zeros(10, 8),
            "text_projection.weight": torch.zeros(4, 8), "visual_projection.weight": torch.zeros(4, 32),
            "logit_scale": torch.tensor(2.0), "vision_model.embeddings.position_ids": torch.arange(65)[None],
        })
        (clip_out / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": vision,
                                                          "text_config": {"hidden_size": 8}}))
    else:
        (clip_out / "config.json").write_text(json.dumps(vision))
    torch.save(clip, clip_out / "pytorch_model.bin")
    shutil.copy(hf_folder / "preprocessor_config.json", clip_out / "preprocessor_config.json")
    text = cfg["text_config"]
    if text.get("model_type") == "mistral":
        original = dict(text, model_type="llava_mistral", architectures=["LlavaMistralForCausalLM"])
    else:
        original = dict(text, model_type="llava_llama", architectures=["LlavaLlamaForCausalLM"])
    original.update(
        mm_vision_tower=str(clip_out), mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", mm_hidden_size=vision["hidden_size"], image_aspect_ratio="pad",
        mm_use_im_start_end=False, mm_use_im_patch_token=False,
    )
    if cfg.get("model_type") == "llava_next":
        original.update(image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad",
                        image_grid_pinpoints=[[w, h] for h, w in cfg["image_grid_pinpoints"]])
    (out / "config.json").write_text(json.dumps(original))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (hf_folder / name).exists():
            shutil.copy(hf_folder / name, out / name)


def random_images(n: int, seed: int = 0, sizes=((160, 120), (90, 140), (112, 112), (200, 80))) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (sizes[i % len(sizes)][1], sizes[i % len(sizes)][0], 3), dtype=np.uint8))
            for i in range(n)]


def hf_input_ids(prompts: list[list[int]], num_patches, image_token_id: int, pad_id: int = 3):
    """Our -200 prompts -> transformers' input_ids (image token repeated) with left padding + mask.
    `num_patches`: tokens per image, or a list of them for the images in order (LLaVA-NeXT)."""
    counts = iter(num_patches) if isinstance(num_patches, (list, tuple)) else None
    expanded = [sum(([image_token_id] * (next(counts) if counts else num_patches) if t == IMAGE_TOKEN_INDEX else [t]
                     for t in ids), []) for ids in prompts]
    width = max(len(e) for e in expanded)
    input_ids = torch.full((len(expanded), width), pad_id)
    mask = torch.zeros(len(expanded), width, dtype=torch.long)
    for b, e in enumerate(expanded):
        input_ids[b, width - len(e):] = torch.tensor(e)
        mask[b, width - len(e):] = 1
    return input_ids, mask


def hf_next_inputs(prompts: list[list[int]], images, image_token_id: int, side: int):
    """transformers' LlavaNext inputs for our prompts and anyres images: input ids with one image token per
    visual token (spatial_unpad), views padded to the longest image, image sizes; and the attention mask."""
    from llava.model.anyres import anyres_layout

    counts = [len(anyres_layout(i.grid, side, i.image_size, "spatial_unpad")) for i in images]
    ids, mask = hf_input_ids(prompts, counts, image_token_id)
    views = max(i.pixel_values.shape[0] for i in images)
    pixel_values = torch.zeros(len(images), views, *images[0].pixel_values.shape[1:])
    for n, image in enumerate(images):
        pixel_values[n, : image.pixel_values.shape[0]] = image.pixel_values
    sizes = torch.tensor([i.image_size for i in images])
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, image_sizes=sizes), mask.bool()


def load_script(name: str):
    """scripts/<name>.py imported as a module (the scripts folder is not a package)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height grey pixels, with one tiny IDAT: bytes, not gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def batch_equals_single(model, prompts, images, new_tokens: int = 6):
    """With the method attached to `model`: a forward of the batch, whose logits and kept ids equal each sample's
    alone, and whose cached greedy tokens equal the cache-free path's and each sample's alone. Returns the forward."""
    from torch.testing import assert_close

    from llava.generate import generate

    together = model(prompts, images)
    cached = generate(model, prompts, images, max_new_tokens=new_tokens).tokens
    assert generate(model, prompts, images, max_new_tokens=new_tokens, use_cache=False).tokens == cached
    for b in range(len(prompts)):
        alone = model(prompts[b : b + 1], images[b : b + 1])
        assert_close(together.logits[b], alone.logits[0], atol=1e-4, rtol=1e-4)
        assert together.stats.kept[b] == alone.stats.kept[0]
        assert generate(model, prompts[b : b + 1], images[b : b + 1], max_new_tokens=new_tokens).tokens[0] == cached[b]
    return together


def make_tiny_video_llava(folder: Path, seed: int = 0, **config_overrides):
    """Save a random VideoLlavaForConditionalGeneration (two towers of `tiny_configs`' CLIP at 112 px: 64 patches
    + CLS per frame, 8 x 65 = 520 video tokens; its Llama) + a tokenizer with <image> and <video> + the
    preprocessor config; return the HF model (its config holds the two token ids)."""
    from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

    torch.manual_seed(seed)
    parts = tiny_configs(**config_overrides)
    tokenizer = make_tokenizer(parts.text_config.vocab_size)
    tokenizer.add_tokens(["<image>", "<video>"], special_tokens=True)  # as llava-hf's conversion adds them
    image_id, video_id = tokenizer.convert_tokens_to_ids(["<image>", "<video>"])
    patches = (parts.vision_config.image_size // parts.vision_config.patch_size) ** 2
    config = VideoLlavaConfig(vision_config=parts.vision_config, text_config=parts.text_config,
                              image_token_index=image_id, video_token_index=video_id,
                              image_seq_length=patches, video_seq_length=8 * (patches + 1))
    model = VideoLlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # N(0, 4 / fan_in), as make_tiny_llava; the towers differ (own random weights)
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 2.0 / p.shape[-1] ** 0.5)
        model.model.video_tower.embeddings.class_embedding.normal_(0, 1.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = parts.vision_config.image_size
    (Path(folder) / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": size, "width": size}, "size": {"shortest_edge": size},
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_center_crop": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "resample": 3, "rescale_factor": 1 / 255, "image_processor_type": "CLIPImageProcessor",
    }))
    return model


def random_video_frames(n: int = 12, seed: int = 0, size=(130, 90)) -> list[Image.Image]:
    """`n` random RGB frames of one (width, height), a clip to sample 8 frames from."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def write_random_gif(path: Path, frames: int = 12, seed: int = 0, size=(130, 90), frame_ms: int = 100) -> Path:
    """An animated GIF of `random_video_frames(frames, seed, size)`, written by Pillow (its folder made)."""
    images = random_video_frames(frames, seed, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return path


def hf_video_input_ids(prompts: list[list[int]], image_id: int, video_id: int, image_tokens: int, video_tokens: int,
                       pad_id: int = 3):
    """Our prompts (-200 per image, -201 per video) -> transformers' Video-LLaVA input_ids (each placeholder repeated
    as its processor expands it) with left padding + mask."""
    expand = {IMAGE_TOKEN_INDEX: [image_id] * image_tokens, -201: [video_id] * video_tokens}
    expanded = [sum((expand.get(t, [t]) for t in ids), []) for ids in prompts]
    width = max(len(e) for e in expanded)
    input_ids = torch.full((len(expanded), width), pad_id)
    mask = torch.zeros(len(expanded), width, dtype=torch.long)
    for b, e in enumerate(expanded):
        input_ids[b, width - len(e):] = torch.tensor(e)
        mask[b, width - len(e):] = 1
    return input_ids, mask


def panel_state(panel: np.ndarray, view: np.ndarray, grid: int) -> list[str]:
    """An overlay panel read back (fastv/overlay.py draws it), per patch: 'kept' if its inside equals the view, 'dimmed' if it equals the dimmed view."""
    from fastv.overlay import DIM

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
