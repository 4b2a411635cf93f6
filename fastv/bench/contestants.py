"""The contestants of `fastv bench` and what they run on: ours with a pruning method, through the pruned KV cache,
and transformers' LLaVA as a user would otherwise run it (SDPA, unpruned; or FastV the way its released HF code
does it, by the hooks here); the models they share (a checkpoint, or a preset with random weights) and the
inputs they are given. Each contestant's `run()` generates once and returns a Run (fastv/bench/timing.py).

On a Video-LLaVA model (a `video-llava-7b` / `bench-video-llava` preset, or a checkpoint with a video tower) every
sample is a video instead of an image: 8 random frames at the tower's size, one `<video>` placeholder, and
transformers' reference is `VideoLlavaForConditionalGeneration` (its video tower, 8 x 257 video tokens with each
frame's [CLS]); FastV's HF-way reference ranks the video tokens as the image ones."""

from __future__ import annotations

import dataclasses

import torch

from fastv.bench.output import REFERENCE
from fastv.bench.timing import PeakMemory, Run, StageClock, run_times
from fastv.prompt import SYSTEM_TOKENS
from llava.generate import synchronized_time


def bench_presets() -> dict:
    """Small random LLaVAs for timing on a CPU: a CLIP-B-sized tower at 336 px (576 patches) and a 4-layer Llama of
    width 1024; `-v1.6` is the LLaVA-NeXT of the same parts (stock pinpoints, image_newline). `bench-video-llava`:
    Video-LLaVA's token counts (224 px, 256 patches + [CLS] per frame, 8 frames: 2056 video tokens) on a 6-layer
    tower of width 512 and the same 4-layer Llama, so a CPU runs it in minutes."""
    from llava.model.language_model.llava_llama import LlamaConfig
    from llava.model.llava_arch import NEXT_PINPOINTS, LlavaConfig, VideoConfig
    from llava.model.multimodal_encoder.clip_encoder import VisionConfig

    vision = VisionConfig(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12)
    text = LlamaConfig(vocab_size=32064, hidden_size=1024, intermediate_size=2816, num_layers=4, num_heads=16,
                       num_kv_heads=16, head_dim=64)
    frame_tower = VisionConfig(hidden_size=512, intermediate_size=2048, num_layers=6, num_heads=8, image_size=224)
    return {"bench-v1.5": LlavaConfig(vision, text),
            "bench-v1.6": LlavaConfig(vision, text, image_grid_pinpoints=NEXT_PINPOINTS),
            "bench-video-llava": LlavaConfig(frame_tower, text, video=VideoConfig())}


class Ours:
    """Our model with one pruning method, generating through `llava.generate.generate` (the pruned KV cache)."""

    def __init__(self, model, spec: str, prompts, images, new_tokens: int, clock: StageClock):
        from llava.model.pruning.base import llm_parts, vision_part

        self.model, self.prompts, self.images, self.new_tokens, self.clock = model, prompts, images, new_tokens, clock
        self.video = model.config.video is not None  # Video-LLaVA: `images` are the samples' videos
        self.method = model.set_pruning(spec)
        self.name = f"ours, {self.method.spec}"
        self.spec = self.method.spec
        if vision_part(self.method) is not None:  # per view, and (NeXT, DivPrune) over the laid-out image
            clock.wrap(vision_part(self.method), "select_image", "pruning")
            clock.wrap(vision_part(self.method), "select_laid_out", "pruning")
        for stage_method in llm_parts(self.method):  # each stage's choice, the attention rows it reads included
            clock.wrap(stage_method, "cut", "pruning")

    def run(self) -> Run:
        from llava.generate import generate

        model = self.model
        model.set_pruning(self.method)
        caches = []
        hooks = [model.language_model.register_forward_hook(lambda _m, _a, out: caches.append(out.cache))]
        try:
            with PeakMemory(model.device) as memory:
                visuals = {"videos": self.images} if self.video else {"pixel_values": self.images}
                out = generate(model, self.prompts, max_new_tokens=self.new_tokens, eos_token_id=None, **visuals)
        finally:
            for hook in hooks:
                hook.remove()
        stats = out.stats
        return Run(
            times=run_times(self.clock, out.prefill_s, out.total_s, self.new_tokens),
            peak_memory_bytes=memory.bytes,
            kv_cache_bytes=our_cache_bytes(caches[0]),
            visual_tokens=stats.visual_tokens[0][0],
            kept_after_layer_k=len((stats.kept_in_llm or stats.kept)[0][0]),  # after the last in-LLM stage
            layer_tokens=stats.seq_lens[0],
            newline_tokens=stats.newline_tokens[0][0],
        )


def our_cache_bytes(cache) -> int:
    """Keys and values of every layer, counting each sample's real tokens in that layer (pruned layers hold fewer)."""
    total = 0
    for layer in cache.layers:
        per_token = 2 * layer.keys.shape[1] * layer.keys.shape[3] * layer.keys.element_size()  # K and V, all kv heads
        total += int(layer.key_mask.sum()) * per_token
    return total


class Transformers:
    """transformers' LLaVA (SDPA, unpruned) generating greedily with its DynamicCache, one forward per token; or, with
    `fastv`, FastV the released HF way (eager attention, attention outputs, selection at layer K, no cache)."""

    def __init__(self, hf, inputs: dict, new_tokens: int, clock: StageClock, image_token: int,
                 fastv: tuple[int, int] | None = None):
        self.hf, self.inputs, self.new_tokens, self.clock = hf, inputs, new_tokens, clock
        self.image_token, self.fastv = image_token, fastv
        if fastv is None:
            self.name, self.spec = REFERENCE, None
        else:
            self.name, self.spec = f"transformers FastV (eager, attention outputs, no cache), k={fastv[0]}, keep={fastv[1]}", None

    def run(self) -> Run:
        hf, device = self.hf, self.inputs["input_ids"].device
        hf.set_attn_implementation("eager" if self.fastv else "sdpa")
        hooks = _hf_fastv_hooks(hf, self.fastv, self.inputs["input_ids"], self.image_token, self.clock) if self.fastv else []
        ids, mask = self.inputs["input_ids"], self.inputs["attention_mask"]
        pixels = {k: v for k, v in self.inputs.items() if k not in ("input_ids", "attention_mask")}
        try:
            with PeakMemory(device) as memory, torch.inference_mode():
                start = synchronized_time(device)
                if self.fastv:  # no cache: every token re-runs the whole sequence, image included, and re-selects
                    out = hf(input_ids=ids, attention_mask=mask, **pixels, use_cache=False, output_attentions=True,
                             logits_to_keep=1)
                else:
                    out = hf(input_ids=ids, attention_mask=mask, **pixels, use_cache=True, logits_to_keep=1)
                token = out.logits[:, -1].argmax(-1)
                ttft = synchronized_time(device) - start
                cache = out.past_key_values
                kv_bytes = _hf_cache_bytes(cache) if cache is not None else 0  # FastV's HF path keeps none
                for _ in range(self.new_tokens - 1):
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                    if self.fastv:
                        ids = torch.cat([ids, token[:, None]], dim=1)
                        out = hf(input_ids=ids, attention_mask=mask, **pixels, use_cache=False, output_attentions=True,
                                 logits_to_keep=1)
                    else:
                        out = hf(input_ids=token[:, None], attention_mask=mask, past_key_values=cache, use_cache=True,
                                 logits_to_keep=1)
                        cache = out.past_key_values
                    token = out.logits[:, -1].argmax(-1)
                total = synchronized_time(device) - start
        finally:
            for hook in hooks:
                hook.remove()
            hf.set_attn_implementation("sdpa")
        visual = int((self.inputs["input_ids"][0] == self.image_token).sum())
        return Run(times=run_times(self.clock, ttft, total, self.new_tokens), peak_memory_bytes=memory.bytes,
                   kv_cache_bytes=kv_bytes, visual_tokens=visual,
                   kept_after_layer_k=self.fastv[1] if self.fastv else visual)



def _hf_cache_bytes(cache) -> int:
    return sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
               for layer in cache.layers)


def _hf_fastv_hooks(hf, fastv: tuple[int, int], input_ids: torch.Tensor, image_token: int, clock: StageClock) -> list:
    """Hooks that make transformers' decoder do FastV as its released HF code does: layer K-1's attention
    probabilities (eager, returned because attention outputs are on) rank the image tokens by the last query row,
    mean over heads; layers K.. run on the kept tokens, their position embeddings and causal mask gathered to them.
    Each sample is ranked on its own row (the released code uses row 0 for the whole batch). Needs equal prompt
    lengths in the batch (the benchmark's prompts are)."""
    k, keep = fastv
    layers = hf.model.language_model.layers
    state: dict = {}

    def capture(_module, _args, output):
        state["attention"] = output[1]  # (B, H, N, N)

    def prune(index):
        def hook(_module, args, kwargs):
            hidden = args[0]
            if index == k:
                clock.start("pruning")
                row = state.pop("attention")[:, :, -1].float().mean(dim=1)  # (B, N)
                image = (state["ids"] == image_token)[:, : row.shape[1]]
                top = row.masked_fill(~image, float("-inf")).topk(keep, dim=-1).indices  # (B, keep)
                kept = (~image).clone()  # the text, the last token (the query) among it
                kept.scatter_(1, top, True)
                state["index"] = kept.nonzero()[:, 1].view(hidden.shape[0], -1)  # (B, N')
                # The kept tokens' rotary embeddings, positions and causal mask, gathered once for layers K..
                index_kept, B = state["index"], hidden.shape[0]
                gather = lambda t: t.expand(B, -1, -1).gather(1, index_kept[..., None].expand(-1, -1, t.shape[-1]))
                cos, sin = kwargs["position_embeddings"]
                state["kwargs"] = {"position_embeddings": (gather(cos), gather(sin))}
                if kwargs.get("position_ids") is not None:
                    state["kwargs"]["position_ids"] = kwargs["position_ids"].expand(B, -1).gather(1, index_kept)
                mask = kwargs.get("attention_mask")
                if mask is not None:
                    mask = mask.expand(B, -1, -1, -1).gather(2, index_kept[:, None, :, None].expand(-1, mask.shape[1], -1, mask.shape[-1]))
                    state["kwargs"]["attention_mask"] = mask.gather(3, index_kept[:, None, None, :].expand(-1, mask.shape[1], mask.shape[2], -1))
                hidden = hidden.gather(1, index_kept[..., None].expand(-1, -1, hidden.shape[-1]))
                clock.stop("pruning")
            kwargs.update(state["kwargs"])
            return (hidden, *args[1:]), kwargs
        return hook

    def record_ids(_module, _args, kwargs):
        state["ids"] = kwargs["input_ids"]

    hooks = [hf.register_forward_pre_hook(record_ids, with_kwargs=True),
             layers[k - 1].self_attn.register_forward_hook(capture)]
    hooks += [layers[index].register_forward_pre_hook(prune(index), with_kwargs=True) for index in range(k, len(layers))]
    return hooks



def bench_image_side(config) -> int:
    """The side in pixels of the benchmark's square random images: one view, or NeXT's 2x2 crop grid."""
    return 2 * config.vision.image_size if config.anyres else config.vision.image_size


def random_models(preset: str, device: torch.device, dtype: torch.dtype):
    """(ours, transformers' reference) of a preset's size sharing one set of random weights, built on the target device."""
    import transformers

    from llava.model.builder import KEY_RULES, _normalise, check_weights
    from llava.model.hf_layout import hf_config
    from llava.model.language_model.llava_llama import rope_inverse_frequencies
    from llava.model.llava_arch import LLAVA_PRESETS, LlavaForCausalLM

    config = {**LLAVA_PRESETS, **bench_presets()}[preset]
    raw = hf_config(config, image_token_index=config.text.vocab_size - 1)
    raw["text_config"]["pad_token_id"] = 0
    if config.video is not None:  # VideoLlavaConfig: <video> next to <image>, the frames' tokens with their [CLS]
        for key in ("architectures", "model_type", "image_seq_length"):
            raw.pop(key)
        raw.update(video_token_index=config.text.vocab_size - 2, video_seq_length=config.unpruned_video_tokens)
        hf_class, hf_config_object = transformers.VideoLlavaForConditionalGeneration, transformers.VideoLlavaConfig(**raw)
    else:
        hf_class = (transformers.LlavaNextForConditionalGeneration if config.anyres
                    else transformers.LlavaForConditionalGeneration)
        hf_config_object = (transformers.LlavaNextConfig if config.anyres else transformers.LlavaConfig)(**raw)
    torch.manual_seed(0)
    with torch.device(device):
        hf = hf_class._from_config(hf_config_object, torch_dtype=dtype, attn_implementation="sdpa")
    hf.eval().requires_grad_(False)
    with torch.device("meta"):
        ours = LlavaForCausalLM(config)
    weights = _normalise(dict(hf.state_dict()), KEY_RULES)
    weights = {k: v for k, v in weights.items() if k in ours.state_dict()}  # transformers' buffers are not weights
    check_weights(ours, weights, preset)
    ours.load_state_dict(weights, assign=True)  # the same tensors: one copy of the weights
    ours.language_model.inv_freq = rope_inverse_frequencies(config.text).to(device)
    ours.eval().requires_grad_(False)
    return ours, hf, raw["video_token_index"] if config.video is not None else raw["image_token_index"]


def checkpoint_models(model_path: str, device: torch.device, dtype: torch.dtype, quant: str | None, references: bool):
    """(ours, transformers' reference or None, image token id (Video-LLaVA: the video token's)) of a checkpoint folder."""
    import transformers

    from llava.errors import CheckpointError
    from llava.jsonfile import read_json
    from llava.model.builder import load_pretrained_model, read_checkpoint

    _, ours, _, _ = load_pretrained_model(model_path, device=device, dtype=dtype, load_4bit=quant == "4bit",
                                          load_8bit=quant == "8bit")
    raw = read_json(read_checkpoint(model_path).folder / "config.json", error=CheckpointError)
    image_token = raw.get("image_token_index", raw.get("image_token_id"))
    if ours.config.video is not None:
        image_token = raw.get("video_token_index", raw.get("video_token_id"))
    hf = None
    if references and image_token is not None:  # a llava-hf folder; an original-layout one has no transformers class
        if ours.config.video is not None:
            hf_class = transformers.VideoLlavaForConditionalGeneration
        elif ours.config.anyres:
            hf_class = transformers.LlavaNextForConditionalGeneration
        else:
            hf_class = transformers.LlavaForConditionalGeneration
        hf = hf_class.from_pretrained(model_path, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    return ours, hf, image_token


def make_inputs(model, batch: int, text_tokens: int, image_token: int | None, device: torch.device, dtype: torch.dtype):
    """(our prompts and images, transformers' inputs or None): one prompt, a different random image per sample.
    Video-LLaVA: a different random video per sample, and `images` are the videos' pixel values (T, 3, S, S) each."""
    import numpy as np
    from PIL import Image

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import ImageProcessor

    config = model.config
    vocab = config.text.vocab_size
    before = min(SYSTEM_TOKENS, text_tokens - 1)  # at least one token after the image: the query FastV ranks by
    words = [3 + (7 * i) % (vocab - 4) for i in range(text_tokens)]  # fixed ids, clear of BOS/EOS/pad and the image id
    words = [w if w != image_token else w - 1 for w in words]
    if config.video is not None:  # clear of <image> too: Video-LLaVA's two ids are neighbours (32000, 32001)
        near = {image_token - 1, image_token, image_token + 1} if image_token is not None else set()
        words = [image_token - 2 if w in near else w for w in words]
        return _video_inputs(config, batch, [1] + words[1:before], words[before:], image_token, device, dtype)
    prompt = [1] + words[1:before] + [IMAGE_TOKEN_INDEX] + words[before:]
    processor = ImageProcessor(image_size=config.vision.image_size, image_grid_pinpoints=config.image_grid_pinpoints)
    side = bench_image_side(config)
    pictures = [Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))
                for seed in range(batch)]
    images = processor(pictures)
    visual = config.unpruned_image_tokens((side, side))
    if config.anyres:
        images = [dataclasses.replace(im, pixel_values=im.pixel_values.to(device, dtype)) for im in images]
        hf_pixels = {"pixel_values": torch.stack([im.pixel_values for im in images]),
                     "image_sizes": torch.tensor([im.image_size for im in images], device=device)}
    else:
        images = images.to(device, dtype)
        hf_pixels = {"pixel_values": images}
    hf_inputs = None
    if image_token is not None:
        at = prompt.index(IMAGE_TOKEN_INDEX)
        ids = torch.tensor([prompt[:at] + [image_token] * visual + prompt[at + 1:]] * batch, device=device)
        hf_inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **hf_pixels}
    return [prompt] * batch, images, hf_inputs


def _video_inputs(config, batch: int, before: list[int], after: list[int], video_token: int | None,
                  device: torch.device, dtype: torch.dtype):
    """make_inputs for Video-LLaVA: one prompt around `<video>`, `config.video.num_frames` random frames per sample."""
    import numpy as np
    from PIL import Image

    from llava.constants import VIDEO_TOKEN_INDEX
    from llava.mm_utils import ImageProcessor
    from llava.video import preprocess_frames

    side, frames = config.vision.image_size, config.video.num_frames
    processor = ImageProcessor(image_size=side)
    videos = []
    for seed in range(batch):
        rng = np.random.default_rng(seed)
        clip = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(frames)]
        videos.append(preprocess_frames(clip, processor).to(device, dtype))  # (T, 3, S, S)
    hf_inputs = None
    if video_token is not None:
        ids = torch.tensor([before + [video_token] * config.unpruned_video_tokens + after] * batch, device=device)
        hf_inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": torch.stack(videos)}
    return [before + [VIDEO_TOKEN_INDEX] + after] * batch, videos, hf_inputs


def line_up(ours, hf, methods: list[str], prompts, images, hf_inputs, new_tokens: int, image_token: int | None,
            references: str, clock: StageClock) -> list:
    """Ours with each method, then (with `hf`) transformers unpruned and, with `references` "all", FastV the HF way
    beside each of our FastV rows, keeping as many image tokens as ours does; every stage hooked onto `clock`."""
    clock.hook_module(ours.video_tower if ours.config.video is not None else ours.vision_tower, "vision")
    clock.hook_module(ours.language_model, "llm")
    contestants = [Ours(ours, spec, prompts, images, new_tokens, clock) for spec in methods]
    if hf is None:
        return contestants
    clock.hook_module(hf.model.video_tower if ours.config.video is not None else hf.model.vision_tower, "vision")
    clock.hook_module(hf.model.language_model, "llm")
    contestants.append(Transformers(hf, hf_inputs, new_tokens, clock, image_token))
    if references == "all":
        for contestant in [c for c in contestants if isinstance(c, Ours) and c.spec.startswith("fastv:")]:
            kept = contestant.run()  # what ours keeps after layer k, newline tokens included: the same work
            contestants.append(Transformers(hf, hf_inputs, new_tokens, clock, image_token,
                                            fastv=(contestant.method.args.k, kept.kept_after_layer_k + kept.newline_tokens)))
    return contestants
