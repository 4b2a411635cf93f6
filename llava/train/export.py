"""Writing a trained model in the llava-hf layout, which `llava.model.builder.load_pretrained_model`
and transformers' `LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration` /
`VideoLlavaForConditionalGeneration` (a model with a video tower) both load."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llava.mm_utils import CLIP_MEAN, CLIP_STD
from llava.constants import DEFAULT_VIDEO_TOKEN
from llava.model.hf_layout import hf_config, hf_key
from llava.model.llava_arch import LlavaConfig, LlavaForCausalLM


def preprocessor_config(config: LlavaConfig) -> dict:
    size = config.vision.image_size
    out = {
        "crop_size": {"height": size, "width": size}, "size": {"shortest_edge": size},
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "do_center_crop": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "do_convert_rgb": True, "resample": 3, "rescale_factor": 1 / 255,
        "image_processor_type": "CLIPImageProcessor",
    }
    if config.anyres:
        out.update(image_processor_type="LlavaNextImageProcessor", do_pad=True,
                   image_grid_pinpoints=[list(p) for p in config.image_grid_pinpoints])
    return out


def export_hf(model: LlavaForCausalLM, tokenizer, folder: Path, dtype=torch.float16) -> None:
    """Write the llava-hf layout: config.json, model.safetensors, tokenizer, preprocessor_config.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    key = video_llava_key if model.config.video is not None else hf_key
    state = {key(k): v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = hf_config(model.config, tokenizer.convert_tokens_to_ids("<image>"), tokenizer.bos_token_id,
                       tokenizer.eos_token_id, tokenizer.pad_token_id)
    if model.config.video is not None:
        config = video_llava_config(model.config, config, tokenizer.convert_tokens_to_ids(DEFAULT_VIDEO_TOKEN))
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(model.config), indent=2) + "\n")


def video_llava_key(name: str) -> str:
    """Our parameter name -> `VideoLlavaForConditionalGeneration`'s: the image tower is `image_tower.`, the video
    tower `video_tower.` (CLIP's vision transformer without `vision_model.`), the rest as LLaVA's."""
    for ours, theirs in (("vision_tower.", "image_tower."), ("video_tower.", "video_tower.")):
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return hf_key(name)


def video_llava_config(config: LlavaConfig, llava: dict, video_token_index: int) -> dict:
    """LLaVA's llava-hf config.json (`hf_config`) made `VideoLlavaForConditionalGeneration`'s: its token counts
    (images: patches; videos: 8 frames of CLS + patches) and the `<video>` token."""
    if config.video.temporal_attention or config.video.cls != "keep" or config.video.num_frames != 8:
        raise ValueError("the llava-hf Video-LLaVA layout is 8 frames of [CLS, patches] through a plain CLIP tower")
    return {**llava, "architectures": ["VideoLlavaForConditionalGeneration"], "model_type": "video_llava",
            "video_token_index": video_token_index, "video_seq_length": config.unpruned_video_tokens}
