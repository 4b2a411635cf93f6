"""load_pretrained_model(): LLaVA-1.5, LLaVA-NeXT and Video-LLaVA checkpoints, every weight accounted for.

Two LLaVA layouts are read, and Video-LLaVA's llava-hf port:

- **llava-hf** (`LlavaForConditionalGeneration`, e.g. `llava-hf/llava-1.5-7b-hf`, and
  `LlavaNextForConditionalGeneration`, e.g. `llava-hf/llava-v1.6-vicuna-7b-hf`): one
  folder, `config.json` with `text_config` / `vision_config` (NeXT: `image_grid_pinpoints`
  as [height, width] pairs; its merge is always `spatial_unpad`), keys
  `language_model.model.*`, `multi_modal_projector.linear_{1,2}`, `vision_tower(.vision_model).*`,
  `image_newline` (or transformers 5's `model.language_model.*` / `model.vision_tower.*` names);
- **original LLaVA** (`liuhaotian/llava-v1.5-7b`, `liuhaotian/llava-v1.6-vicuna-7b`): `config.json`
  of a `llava_llama` (or `llava_mistral`) model with `mm_*` fields (NeXT: `image_aspect_ratio: anyres`,
  `mm_patch_merge_type`, `image_grid_pinpoints` as [width, height] pairs, LLaVA's order), keys
  `model.layers.*`, `model.mm_projector.{0,2}`, `model.image_newline`, and the
  CLIP folder named by `mm_vision_tower` (override with `vision_tower=`), whose config,
  preprocessing and weights are read; vision weights stored in the checkpoint itself (a
  tower trained unfrozen) take precedence over the CLIP folder's;
- **llava-hf Video-LLaVA** (`VideoLlavaForConditionalGeneration`, e.g. `LanguageBind/Video-LLaVA-7B-hf`):
  `model_type` `video_llava`, two CLIP towers of one `vision_config` (`image_tower.*`, `video_tower.*`, with
  or without `vision_model.`), the projector and decoder named as LLaVA's; 8 frames a video, each frame's
  [CLS] kept (`video_cls` may drop it);
- **original Video-LLaVA** (`LanguageBind/Video-LLaVA-7B`, llava/model/video_checkpoint.py): an original-LLaVA
  config naming `mm_image_tower` and `mm_video_tower` folders (LanguageBindImage / LanguageBindVideo configs),
  the towers' weights saved in the checkpoint as `model.{image,video}_tower.{image,video}_tower.*`; its video
  tower runs LanguageBind's temporal attention (multimodal_encoder/languagebind.py), which the `-hf` port lacks.

The decoder is Llama or Mistral (Llama's code path; see `text_config_from`).

Weights come from safetensors, or `.bin` files read with `weights_only=True`; no
code from a checkpoint ever runs. A missing, unexpected or mis-shaped weight is a
`CheckpointError` naming it. The model is built on the meta device and the
checkpoint's tensors are assigned to it, so a 7B model is held in memory once.

Where this file sits among the others, and one request's path through them: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from llava.device import default_dtype, resolve_device
from llava.errors import CheckpointError, InputError
from llava.jsonfile import json_type, read_json
from llava.mm_utils import ImageProcessor, check_pinpoints, parse_image_grid
from llava.model.anyres import MERGES, image_token_count
from llava.model.language_model.llava_llama import LlamaConfig, rope_inverse_frequencies
from llava.model.llava_arch import LlavaConfig, LlavaForCausalLM, VideoConfig
from llava.model.multimodal_encoder.clip_encoder import VisionConfig
from llava.model.video_checkpoint import TOWER_KEY_RULES, image_tower_config, video_tower_config

# Checkpoint keys that are buffers, not weights: safe to drop.
IGNORED_KEYS = re.compile(r"(rotary_emb\.inv_freq|embeddings\.position_ids)$")

# (pattern, replacement) applied in order; the first match wins. Targets are our parameter names.
KEY_RULES = [
    *TOWER_KEY_RULES,  # the original Video-LLaVA's model.{image,video}_tower.{image,video}_tower.*
    (r"^(?:model\.)?language_model\.lm_head\.", "lm_head."),
    (r"^(?:language_model\.model|model\.language_model)\.", "language_model."),
    (r"^(?:model\.)?multi_modal_projector\.linear_1\.", "mm_projector.0."),
    (r"^(?:model\.)?multi_modal_projector\.linear_2\.", "mm_projector.2."),
    (r"^(?:model\.)?vision_tower\.(?:vision_tower\.)?(?:vision_model\.)?", "vision_tower."),
    (r"^(?:model\.)?image_tower\.(?:vision_model\.)?", "vision_tower."),  # Video-LLaVA's image tower
    (r"^(?:model\.)?video_tower\.(?:vision_model\.)?", "video_tower."),
    (r"^model\.mm_projector\.", "mm_projector."),
    (r"^(?:model\.)?image_newline$", "image_newline"),
    (r"^model\.(embed_tokens|layers|norm)\.", r"language_model.\1."),
    (r"^lm_head\.", "lm_head."),
]
# Keys of a standalone CLIP folder (CLIPModel or CLIPVisionModel): only the vision model is ours.
CLIP_RULES = [(r"^(?:vision_model\.)?", "vision_tower.")]
CLIP_SKIPPED = re.compile(r"^(text_model\.|text_projection\.|visual_projection\.|logit_scale$)")


def load_pretrained_model(
    model_path: str,
    model_base: str | None = None,
    model_name: str | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    pruning=None,
    vision_tower: str | None = None,
    patch_merge: str | None = None,
    image_grid: str | None = None,
    video_cls: str | None = None,
):
    """Returns (tokenizer, model, image_processor, context_len), as LLaVA's builder does.

    `model_base`: a folder whose weights are loaded first (e.g. the base LLM of a
    projector-only checkpoint); `model_path`'s weights override them. `model_name`
    is accepted for LLaVA compatibility and not used: behaviour follows config.json.
    `vision_tower`: the CLIP folder of an original-layout checkpoint (instead of
    `mm_vision_tower`). `pruning`: a method spec string or object, attached with `model.set_pruning`.
    LLaVA-NeXT only: `patch_merge` ('spatial' or 'spatial_unpad') instead of the checkpoint's, and
    `image_grid` ('WIDTHxHEIGHT' in pixels, e.g. '672x672'): cut every image into that one canvas
    instead of choosing among the checkpoint's pinpoints. Video-LLaVA only: `video_cls` ('keep' or 'drop'
    each frame's [CLS] token; default 'keep', the stock layout).
    """
    del model_name  # behaviour is chosen by config fields, never by the folder's name
    device = resolve_device(device)
    if load_8bit and load_4bit:
        raise InputError("choose one of 8-bit and 4-bit loading, not both")
    dtype = dtype or default_dtype(device)
    checkpoint = read_checkpoint(model_path, vision_tower)
    pinpoints = anyres_options(checkpoint, patch_merge, image_grid)  # checked before any weight is read
    if video_cls is not None and checkpoint.config.video is None:
        raise InputError(f"--video-cls is for Video-LLaVA checkpoints; {checkpoint.folder} has no video tower")
    if video_cls is not None:  # an unknown value is refused by VideoConfig here, before any weight is read
        dataclasses.replace(checkpoint.config.video, cls=video_cls)
    base_files = weight_files(checkpoint_folder(model_base)) if model_base is not None else []
    files, clip_files = checkpoint.resolve_weight_files()
    tokenizer = load_tokenizer(checkpoint.folder)  # before the weights: a bad tokenizer fails in seconds, not minutes

    weights = _normalise(read_weights(base_files), KEY_RULES)
    weights.update(_normalise(read_weights(files), KEY_RULES))
    # LLaVA loads the tower from the CLIP folder; a checkpoint trained with the tower unfrozen holds its own, which wins.
    clip = {k: v for k, v in read_weights(clip_files).items() if not CLIP_SKIPPED.match(k)}
    for key, value in _normalise(clip, CLIP_RULES).items():
        weights.setdefault(key, value)

    config = checkpoint.config
    with torch.device("meta"):
        model = LlavaForCausalLM(config)
    if config.text.tie_word_embeddings and "lm_head.weight" not in weights:
        weights["lm_head.weight"] = weights.get("language_model.embed_tokens.weight")
    if config.anyres and "image_newline" not in weights:
        if checkpoint.vision_folder is None or config.patch_merge != "spatial":
            raise CheckpointError(
                f"{model_path}: this LLaVA-NeXT checkpoint has no image_newline weight (the token after each row"
                " of the spatial_unpad merge)"
            )
        model.image_newline = None  # original LLaVA makes the token only for an 'unpad' merge
    check_weights(model, weights, model_path)
    check_checkpoint_canvases(checkpoint, pinpoints, patch_merge)
    quantize = load_8bit or load_4bit
    target = torch.device("cpu") if quantize else device
    # Convert tensor by tensor, dropping each source as it goes, so the checkpoint is not held twice.
    state = {key: weights.pop(key).to(device=target, dtype=dtype) for key in list(weights)}
    model.load_state_dict(state, assign=True)
    model.language_model.inv_freq = rope_inverse_frequencies(config.text).to(target)
    if quantize:
        from llava.model.quantization import quantize_language_model

        quantize_language_model(model, bits=8 if load_8bit else 4, device=device, compute_dtype=dtype)
    model.eval().requires_grad_(False)
    model.set_patch_merge(patch_merge)
    model.set_video_cls(video_cls)
    if pruning is not None:
        model.set_pruning(pruning)

    processor = ImageProcessor.from_folder(checkpoint.folder, checkpoint.vision_folder, image_size=config.vision.image_size)
    image_processor = dataclasses.replace(processor, pad_to_square=checkpoint.pad_to_square, image_grid_pinpoints=pinpoints)
    return tokenizer, model, image_processor, config.text.max_position_embeddings


def anyres_options(checkpoint: Checkpoint, patch_merge: str | None, image_grid: str | None):
    """Check the LLaVA-NeXT options against the checkpoint; the pinpoints its images are cut by (None: LLaVA-1.5)."""
    config = checkpoint.config
    if not config.anyres:
        for name, value in (("--patch-merge", patch_merge), ("--image-grid", image_grid)):
            if value is not None:
                raise InputError(f"{name} is for LLaVA-NeXT (anyres) checkpoints; {checkpoint.folder} is LLaVA-1.5")
        return None
    if patch_merge is not None and patch_merge not in MERGES:
        raise InputError(f"unknown patch merge '{patch_merge}' (known: {', '.join(MERGES)})")
    if image_grid is None:
        return config.image_grid_pinpoints
    canvas = parse_image_grid(image_grid, config.vision.image_size)
    problem = canvas_beyond_context(canvas, config, patch_merge or config.patch_merge)
    if problem:
        raise InputError(f"--image-grid: the canvas {problem}")
    return (canvas,)


def check_checkpoint_canvases(checkpoint: Checkpoint, pinpoints, patch_merge: str | None) -> None:
    """The checkpoint's own canvases (when --image-grid does not replace them), bounded as --image-grid is; after
    its weights are checked, so that a folder broken in both ways names its weights first, and before any image."""
    config = checkpoint.config
    if not config.anyres or pinpoints is not config.image_grid_pinpoints:
        return
    for canvas in pinpoints:
        problem = canvas_beyond_context(canvas, config, patch_merge or config.patch_merge)
        if problem:
            raise CheckpointError(f"{checkpoint.folder}: the image_grid_pinpoints canvas {problem}")


def canvas_beyond_context(canvas: tuple[int, int], config: LlavaConfig, merge: str) -> str | None:
    """Why a LLaVA-NeXT canvas (height, width) cannot be used, or None: an image of the canvas's own shape (no
    padding to trim) would bring more visual tokens than the context, unpruned. That bounds the grid before any
    image is resized into it: the vision tower encodes every crop whatever the method keeps, and a canvas the
    unpruned model cannot take has no baseline to compare a pruned run with."""
    height, width = canvas
    crop, context = config.vision.image_size, config.text.max_position_embeddings
    grid = (height // crop, width // crop)
    tokens = image_token_count(grid, config.vision.grid_size, canvas, merge)
    if tokens <= context:
        return None
    return (f"{width}x{height} cuts an image into {grid[0]}x{grid[1]} crops: {tokens:,} visual tokens ({merge}) for an"
            f" image of its shape, more than the context of {context:,}")


def checkpoint_weight_files(model_path: str, vision_tower: str | None = None) -> list[Path]:
    """Every weight file `load_pretrained_model(model_path, vision_tower=...)` reads, found as it finds
    them (the checkpoint's, then the separate CLIP folder's), without reading any tensor."""
    files, clip_files = read_checkpoint(model_path, vision_tower).resolve_weight_files()
    return files + clip_files


def load_tokenizer(path: Path):
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, ImportError) as error:
        raise CheckpointError(f"{path}: cannot load the tokenizer ({_first_line(error)})") from error


# ---- config ------------------------------------------------------------------------------------

# Fields a transformers LlamaConfig always writes at the top of its config.json: an original-layout
# config without one is not one that transformers saved, and its default (Llama-7B's) would be a guess.
ORIGINAL_TEXT_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "max_position_embeddings", "rms_norm_eps",
)
# Decoders with Llama's code path, by their config's model_type; original LLaVA names them llava_<family>.
TEXT_FAMILIES = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig}
ORIGINAL_MODEL_TYPES = {"llava": "llama", "llava_llama": "llama", "llava_mistral": "mistral"}
# The llava-hf model types (transformers' LlavaConfig and LlavaNextConfig); any other (qwen2_vl, idefics2, ...) is
# another architecture, refused by name rather than read as LLaVA.
HF_MODEL_TYPES = ("llava", "llava_next", "video_llava")
# The one vision tower: CLIP's, by its config's model_type (a CLIPModel folder is 'clip', its vision part, and a
# llava-hf vision_config, 'clip_vision_model'); SigLIP and the rest have other layers and are refused by name.
VISION_MODEL_TYPES = ("clip", "clip_vision_model")
# Original-LLaVA switches that change the prompt or the tokenizer, which we do not reproduce.
ORIGINAL_PROMPT_FLAGS = {
    "mm_use_im_start_end": "the image would sit between <im_start> and <im_end> tokens",
    "mm_use_im_patch_token": "LLaVA would add an <im_patch> token to the tokenizer",
}


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder as its config.json describes it."""

    folder: Path
    config: LlavaConfig
    vision_folder: Path | None  # the original layout's separate CLIP folder
    pad_to_square: bool  # LLaVA's image_aspect_ratio 'pad': pad the image to a square before CLIP's resize and crop

    def resolve_weight_files(self) -> tuple[list[Path], list[Path]]:
        """(the checkpoint's weight files, the separate CLIP folder's): what the loader reads."""
        files = weight_files(self.folder)
        return files, weight_files(self.vision_folder) if self.vision_folder is not None else []


def checkpoint_folder(model_path: str, what: str = "checkpoint") -> Path:
    """The folder `model_path` names, checked to be one."""
    if not str(model_path).strip():
        raise CheckpointError(f"the {what} path is empty")
    path = Path(model_path)
    if path.is_file():
        raise CheckpointError(f"{path} is a file, not a {what} folder")
    if not path.is_dir():
        raise CheckpointError(f"{what} folder not found: {path}")
    return path


def read_checkpoint(model_path: str, vision_tower: str | None = None) -> Checkpoint:
    """config.json (either layout) -> our LlavaConfig, its separate CLIP folder if the layout has one,
    and its preprocessing. Every field that would change the model, the prompt or the preprocessing
    is either honoured or refused by name; training-only fields (tune_mm_mlp_adapter, mm_projector_lr,
    tokenizer_padding_side, ...) and mm_hidden_size (the weights' shapes are checked) are not read."""
    path = checkpoint_folder(model_path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json (is this a LLaVA checkpoint folder?)")
    if (path / "adapter_config.json").is_file():
        raise CheckpointError(f"{path}: LoRA checkpoints are not supported; merge the adapter first")
    raw = read_json(path / "config.json", error=CheckpointError)
    architectures = raw.get("architectures") or []
    llava_next = raw.get("model_type") == "llava_next" or "LlavaNextForConditionalGeneration" in architectures
    video_llava = raw.get("model_type") == "video_llava" or "VideoLlavaForConditionalGeneration" in architectures
    llava_hf = llava_next or video_llava or "LlavaForConditionalGeneration" in architectures
    if llava_hf or "text_config" in raw or "vision_config" in raw:
        model_type = raw.get("model_type", "llava")
        if model_type not in HF_MODEL_TYPES:  # e.g. qwen2_vl: its sections would otherwise be read as LLaVA's
            raise CheckpointError(f"{path}: model_type '{model_type}' is not supported (llava-hf: {', '.join(HF_MODEL_TYPES)})")
        if vision_tower is not None:
            raise CheckpointError(
                f"{path}: --vision-tower is for original-LLaVA checkpoints; a llava-hf folder holds its own vision tower"
            )
        config = _llava_hf_config(path, raw, llava_next)
        if video_llava:
            config = dataclasses.replace(config, video=_video_config(path, raw, config))
        # An image is padded to a square as LLaVA's evaluation does (image_aspect_ratio 'pad'), except on
        # Video-LLaVA: transformers' VideoLlavaImageProcessor resizes and centre-crops without padding.
        return Checkpoint(path, config, vision_folder=None, pad_to_square=not video_llava)
    if "mm_video_tower" in raw or "mm_image_tower" in raw:
        return _original_video_llava(path, raw, vision_tower)
    if "mm_vision_tower" in raw or vision_tower is not None:
        return _original_checkpoint(path, raw, vision_tower)
    raise CheckpointError(f"{path}: config.json is neither a llava-hf nor an original LLaVA config")


# transformers' LlavaNextConfig default, used when a llava-hf NeXT config.json leaves the field out
HF_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _llava_hf_config(path: Path, raw: dict, llava_next: bool) -> LlavaConfig:
    text_raw, vision_raw = (dict(_section(raw, name, path / "config.json")) for name in ("text_config", "vision_config"))
    family = text_raw.get("model_type", "llama")
    if family not in TEXT_FAMILIES:
        raise CheckpointError(
            f"{path}: language model '{family}' is not supported (supported: {', '.join(TEXT_FAMILIES)})"
        )
    _only(path, raw, "vision_feature_select_strategy", "default")
    _only(path, raw, "projector_hidden_act", "gelu")
    text_raw.setdefault("tie_word_embeddings", raw.get("tie_word_embeddings", False))
    if not llava_next and "image_grid_pinpoints" in raw:
        raise CheckpointError(f"{path}: image_grid_pinpoints in a LlavaForConditionalGeneration config (LLaVA-NeXT is llava_next)")
    # Inside the sections, a missing field is transformers' default, as transformers reads it: its
    # save_pretrained leaves out default values (llava-hf/llava-1.5-7b-hf's text_config has no hidden_size).
    vision = vision_config_from(vision_raw, path)
    layer = _select_layer(path, raw.get("vision_feature_layer", -2), vision)
    pinpoints = _pinpoints(path, raw.get("image_grid_pinpoints", HF_NEXT_PINPOINTS), vision) if llava_next else None
    return LlavaConfig(
        vision=vision,
        text=text_config_from(text_raw, path, family),
        projector_type="mlp2x_gelu",
        select_layer=layer,
        image_grid_pinpoints=pinpoints,
    )


def _video_config(path: Path, raw: dict, config: LlavaConfig) -> VideoConfig:
    """Video-LLaVA (llava-hf): 8 frames of [CLS, patches]; the config's token counts must say the same layout."""
    video = VideoConfig()
    expected = {"image_seq_length": config.vision.num_patches,
                "video_seq_length": dataclasses.replace(config, video=video).unpruned_video_tokens}
    for name, tokens in expected.items():
        value = raw.get(name, tokens)
        if value != tokens:
            raise CheckpointError(f"{path}: {name} {json.dumps(value)} is not Video-LLaVA's layout ({tokens}: "
                                  f"{video.num_frames} frames of CLS + {config.vision.num_patches} patches, images without CLS)")
    return video


def _original_video_llava(path: Path, raw: dict, vision_tower: str | None) -> Checkpoint:
    """The original Video-LLaVA layout (LanguageBind/Video-LLaVA-7B; video_checkpoint.py): LLaVA's config fields,
    read as _original_checkpoint reads them, with the image tower named by mm_image_tower and LanguageBind's video
    tower (temporal attention) by mm_video_tower. The towers' folders give their configs; their weights are the
    copies saved in the checkpoint."""
    if vision_tower is not None:
        raise CheckpointError(f"{path}: --vision-tower is for original-LLaVA checkpoints; Video-LLaVA names its towers"
                              " in mm_image_tower and mm_video_tower")
    folders = {}
    for key in ("mm_image_tower", "mm_video_tower"):
        folder = Path(str(raw.get(key) or ""))
        if not raw.get(key) or not (folder / "config.json").is_file():  # e.g. the hub name, not a local folder
            raise CheckpointError(f"{path}: the tower folder '{raw.get(key)}' ({key}) has no config.json; download the"
                                  f" tower (e.g. LanguageBind/LanguageBind_Video_merge) and write its path in {key}")
        folders[key] = folder
    image_folder, video_folder = folders["mm_image_tower"], folders["mm_video_tower"]
    image = image_tower_config(read_json(image_folder / "config.json", error=CheckpointError), image_folder)
    video_raw, frames, temporal = video_tower_config(read_json(video_folder / "config.json", error=CheckpointError), video_folder)
    base = _original_checkpoint(path, raw, None, tower=(image_folder, image))
    if base.config.anyres:
        raise CheckpointError(f"{path}: image_aspect_ratio 'anyres' with a video tower is not supported")
    if vision_config_from(video_raw, video_folder) != base.config.vision:
        raise CheckpointError(f"{path}: the video tower ({video_folder}) and the image tower ({image_folder}) differ in"
                              " their sizes; one projector serves both")
    config = dataclasses.replace(base.config, video=VideoConfig(num_frames=frames, temporal_attention=temporal))
    return dataclasses.replace(base, config=config, vision_folder=None)  # no tower weights from the folders


def _pinpoints(path: Path, pinpoints, vision: VisionConfig, width_first: bool = False):
    """image_grid_pinpoints as (height, width) pairs; original LLaVA writes them [width, height],
    sometimes as a string of a Python list."""
    if isinstance(pinpoints, str):
        try:
            pinpoints = ast.literal_eval(pinpoints)
        except (ValueError, SyntaxError) as error:
            raise CheckpointError(f"{path}: image_grid_pinpoints '{pinpoints}' is not a list of [width, height] pairs") from error
    if width_first and isinstance(pinpoints, (list, tuple)):
        pinpoints = [p[::-1] if isinstance(p, (list, tuple)) else p for p in pinpoints]
    try:
        return check_pinpoints(pinpoints, vision.image_size)
    except InputError as error:
        raise CheckpointError(f"{path}: {error}") from error


def _original_checkpoint(path: Path, raw: dict, vision_tower: str | None, tower: tuple[Path, dict] | None = None) -> Checkpoint:
    """`tower`: the vision tower's folder and vision config, already read (Video-LLaVA's image tower); by default
    the CLIP folder named by `vision_tower` or mm_vision_tower."""
    family = ORIGINAL_MODEL_TYPES.get(raw.get("model_type", "llava_llama"))
    if family is None:
        supported = ", ".join(sorted(ORIGINAL_MODEL_TYPES))
        raise CheckpointError(f"{path}: model_type '{raw['model_type']}' is not supported (original LLaVA: {supported})")
    missing = [name for name in ORIGINAL_TEXT_FIELDS if name not in raw]
    if missing:
        raise CheckpointError(f"{path / 'config.json'} lacks {', '.join(missing)} (the language model's sizes)")
    for flag, effect in ORIGINAL_PROMPT_FLAGS.items():
        if raw.get(flag):
            raise CheckpointError(f"{path}: {flag}={json.dumps(raw[flag])} is not supported ({effect}); only false is")
    # LLaVA's process_images pads to a square for 'pad', cuts the image into crops for 'anyres'
    # (LLaVA-NeXT) and otherwise uses CLIP's resize and crop alone.
    aspect_ratio = raw.get("image_aspect_ratio")
    if aspect_ratio not in (None, "pad", "square", "anyres"):
        raise CheckpointError(f"{path}: image_aspect_ratio '{aspect_ratio}' is not supported (supported: pad, square, anyres)")
    merge = raw.get("mm_patch_merge_type", "flat")
    if aspect_ratio == "anyres":
        if merge not in MERGES:
            raise CheckpointError(f"{path}: mm_patch_merge_type '{merge}' is not supported with anyres (supported: {', '.join(MERGES)})")
        if "image_grid_pinpoints" not in raw:
            raise CheckpointError(f"{path}: image_aspect_ratio 'anyres' needs image_grid_pinpoints (the canvases of the crops)")
    else:
        _only(path, raw, "mm_patch_merge_type", "flat")
    _only(path, raw, "mm_vision_select_feature", "patch")
    projector = raw.get("mm_projector_type", "linear")  # LLaVA's default
    if not isinstance(projector, str) or not re.fullmatch(r"linear|mlp\d+x_gelu", projector):
        raise CheckpointError(f"{path}: mm_projector_type '{projector}' is not supported (supported: linear, mlp<N>x_gelu)")
    folder, vision_raw = tower or _clip_folder(path, raw, vision_tower)
    text_raw = {k: v for k, v in raw.items() if not k.startswith("mm_") and k != "image_grid_pinpoints"}
    vision = vision_config_from(vision_raw, folder)
    layer = _select_layer(path, raw.get("mm_vision_select_layer", -2), vision)
    anyres = aspect_ratio == "anyres"
    config = LlavaConfig(
        vision=vision,
        text=text_config_from(text_raw, path, family),
        projector_type=projector,
        select_layer=layer,
        image_grid_pinpoints=_pinpoints(path, raw["image_grid_pinpoints"], vision, width_first=True) if anyres else None,
        patch_merge=merge if anyres else LlavaConfig.patch_merge,
    )
    return Checkpoint(path, config, vision_folder=folder, pad_to_square=aspect_ratio == "pad")


def _clip_folder(path: Path, raw: dict, vision_tower: str | None) -> tuple[Path, dict]:
    """The CLIP folder of an original-LLaVA checkpoint (--vision-tower, else mm_vision_tower) and its vision config."""
    if vision_tower is not None:
        folder, named_by = checkpoint_folder(vision_tower, "vision tower"), "--vision-tower"
    else:
        folder, named_by = Path(str(raw["mm_vision_tower"])), "mm_vision_tower"
    if not (folder / "config.json").is_file():  # e.g. the hub name in mm_vision_tower, not a local folder
        raise CheckpointError(
            f"{path}: the vision tower folder '{folder}' ({named_by}) has no config.json;"
            " pass --vision-tower PATH to a local CLIP folder"
        )
    clip_raw = read_json(folder / "config.json", error=CheckpointError)
    _check_vision_type(folder, clip_raw)
    vision_raw = _section(clip_raw, "vision_config", folder / "config.json") if "vision_config" in clip_raw else clip_raw
    return folder, vision_raw


def _only(path: Path, raw: dict, field: str, supported: str) -> None:
    """A config field whose one supported value is also its default: anything else is refused by name."""
    value = raw.get(field, supported)
    if value != supported:
        raise CheckpointError(f"{path}: {field} '{value}' is not supported (only '{supported}')")


def _select_layer(path: Path, layer, vision: VisionConfig) -> int:
    """The vision feature layer (transformers' hidden_states index), checked to be one of the tower's layers."""
    if isinstance(layer, list):
        raise CheckpointError(f"{path}: several vision feature layers ({layer}) are not supported")
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise CheckpointError(f"{path}: the vision feature layer must be an integer, got {json.dumps(layer)}")
    try:
        vision.layer_index(layer)
    except ValueError as error:
        n = vision.num_layers
        raise CheckpointError(f"{path}: {error} (valid: -{n}..-1 or 1..{n})") from error
    return layer


def _check_vision_type(source: Path, raw: dict) -> None:
    """A vision config that names its model (transformers always writes model_type) must name CLIP's."""
    kind = raw.get("model_type")
    if kind is not None and kind not in VISION_MODEL_TYPES:
        raise CheckpointError(f"{source}: vision tower '{kind}' is not supported (supported: CLIP, {', '.join(VISION_MODEL_TYPES)})")


def text_config_from(raw: dict, source: Path, family: str = "llama") -> LlamaConfig:
    """Fill transformers' defaults for the decoder `family` (it also normalises legacy rope fields),
    then copy ours.

    Mistral is Llama's decoder (grouped-query attention, no biases) with a sliding attention window:
    the context is capped at the window, inside which sliding and full attention are the same."""
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{source}: hidden_act '{act}' of the language model is not supported (only 'silu')")
    hf = _transformers_config(TEXT_FAMILIES[family], raw, source, "language model")
    context = hf.max_position_embeddings
    if getattr(hf, "sliding_window", None):
        context = min(context, hf.sliding_window)
    rope = dict(hf.rope_parameters or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type not in ("default", "linear", "llama3"):
        raise CheckpointError(f"{source}: rope scaling '{rope_type}' is not supported (supported: default, linear, llama3)")
    return LlamaConfig(
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=hf.num_key_value_heads or hf.num_attention_heads,
        head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
        rms_norm_eps=hf.rms_norm_eps,
        max_position_embeddings=context,
        rope_theta=rope.get("rope_theta", 10000.0),
        rope_type=rope_type,
        rope_factor=rope.get("factor", 1.0),
        rope_low_freq_factor=rope.get("low_freq_factor", 1.0),
        rope_high_freq_factor=rope.get("high_freq_factor", 4.0),
        rope_original_max_position_embeddings=rope.get("original_max_position_embeddings", 8192),
        attention_bias=getattr(hf, "attention_bias", False),  # Mistral has no bias fields
        mlp_bias=getattr(hf, "mlp_bias", False),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
    )


def vision_config_from(raw: dict, source: Path) -> VisionConfig:
    _check_vision_type(source, raw)
    hf = _transformers_config(transformers.CLIPVisionConfig, raw, source, "vision tower")
    if hf.hidden_act not in ("gelu", "quick_gelu"):
        supported = "supported: gelu, quick_gelu"
        raise CheckpointError(f"{source}: vision hidden_act '{hf.hidden_act}' is not supported ({supported})")
    return VisionConfig(
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        image_size=hf.image_size,
        patch_size=hf.patch_size,
        num_channels=hf.num_channels,
        layer_norm_eps=hf.layer_norm_eps,
        hidden_act=hf.hidden_act,
    )


def _transformers_config(cls, raw: dict, source: Path, part: str):
    """transformers' config of one part, less the keys that name a class rather than set a field."""
    fields = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "_name_or_path")}
    try:
        return cls(**fields)
    except (TypeError, ValueError) as error:  # a field of the wrong type or value
        raise CheckpointError(f"{source}: the {part}'s config is not valid ({_first_line(error)})") from error


def _section(raw: dict, name: str, file: Path) -> dict:
    if name not in raw:  # transformers would silently assume Llama-7B / CLIP ViT-L sizes
        raise CheckpointError(f"{file} has no {name}: the sizes of the model are not given")
    if not isinstance(raw[name], dict):
        raise CheckpointError(f"{file}: {name} must be a JSON object, got {json_type(raw[name])}")
    return raw[name]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---- weights -----------------------------------------------------------------------------------


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder as the loader reads them: safetensors (single or sharded), else
    pytorch_model*.bin, else a projector-only mm_projector*.bin."""
    files = (
        _named_weight_files(folder, "model.safetensors")
        or _named_weight_files(folder, "pytorch_model.bin")
        or sorted(folder.glob("mm_projector*.bin"))
    )
    if not files:
        raise CheckpointError(f"{folder}: no weights found (looked for *.safetensors and pytorch_model*.bin)")
    return files


def _named_weight_files(folder: Path, name: str) -> list[Path]:
    if (folder / name).is_file():
        return [folder / name]
    index = folder / f"{name}.index.json"
    if index.is_file():
        weight_map = read_json(index, error=CheckpointError).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map (tensor name -> shard file)")
        shards = sorted(set(map(str, weight_map.values())))
        for shard in shards:
            if not (folder / shard).is_file():
                raise CheckpointError(f"{index} lists {shard}, which is not in the folder")
        return [folder / shard for shard in shards]
    stem, suffix = name.rsplit(".", 1)
    return sorted(folder.glob(f"{stem}*.{suffix}"))


def read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """All tensors of `files` (see weight_files), less the buffers that are not weights."""
    weights = {}
    for file in files:
        weights.update(_read_weight_file(file))
    return {k: v for k, v in weights.items() if not IGNORED_KEYS.search(k)}


def _read_weight_file(file: Path) -> dict[str, torch.Tensor]:
    """One safetensors file, or a .bin read with weights_only=True: no code from it ever runs."""
    from safetensors.torch import load_file

    try:
        if file.suffix == ".safetensors":
            tensors = load_file(str(file))
        else:
            tensors = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's refusal; its advice (weights_only=False) would run the file's code
        needed = re.search(r"GLOBAL (\S+)", str(error))
        holds = f"it needs the Python object {needed.group(1)}" if needed else "it is corrupt or holds pickled Python objects"
        raise CheckpointError(f"{file}: not a plain tensor file ({holds}); it will not be unpickled") from error
    except Exception as error:  # corrupt or truncated file
        raise CheckpointError(f"{file}: cannot read weights ({type(error).__name__}: {_first_line(error)})") from error
    if not isinstance(tensors, dict):
        raise CheckpointError(f"{file} holds a {type(tensors).__name__}, not a dict of named tensors")
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{file}: '{key}' holds a {type(value).__name__}, not a tensor")
    return tensors


def _normalise(weights: dict[str, torch.Tensor], rules) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in weights.items():
        new = key
        for pattern, replacement in rules:
            new, n = re.subn(pattern, replacement, key, count=1)
            if n:
                break
        if new in out:  # e.g. a LLaVA checkpoint holding both vision_tower.* and image_tower.* weights
            raise CheckpointError(f"two checkpoint weights are the model's {new} (one of them is {key})")
        out[new] = value
    return out


def check_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor | None], source: str) -> None:
    """Every parameter of the model gets a tensor of its shape, and every tensor has a home."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(k for k in expected if weights.get(k) is None)
    unexpected = sorted(k for k in weights if k not in expected)
    wrong = sorted(
        f"{k} {tuple(weights[k].shape)} (model expects {expected[k]})"
        for k in expected
        if weights.get(k) is not None and tuple(weights[k].shape) != expected[k]
    )
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label} weights: {shown}")
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
