"""The training run: options, the loop, validation, checkpoints and export (`python -m llava.train`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import torch

from llava.data import synthetic
from llava.data.tokenizer import build_tokenizer
from llava.eval import shapes
from llava.generate import generate
from llava.mm_utils import ImageProcessor, tokenizer_image_token
from llava.model.language_model.llava_llama import LlamaConfig
from llava.model.llava_arch import LlavaConfig
from llava.model.multimodal_encoder.clip_encoder import VisionConfig
from llava.train.data import Encoder, TrainSamples, collate, parse_weights, sample_prompt
from llava.train.export import export_hf
from llava.train.losses import aux_losses, frame_loss, lm_loss
from llava.train.model import AuxHeads, TrainableLlava, capture_attention_input, capture_decoder_hidden, initialize

AUX_LOSSES = ("cls", "patch", "where", "ocr", "text", "align", "ground", "copy", "object_copy")
TRAIN_LOOKS = synthetic.LOOKS + (synthetic.VIDEO_LOOK,)
HR_PINPOINTS = tuple((height, width) for width, height in synthetic.HR_CANVASES)  # (height, width), as the config


# ---- configuration -------------------------------------------------------------------------------


def model_config(args, vocab_size: int) -> LlavaConfig:
    vision = VisionConfig(
        hidden_size=args.vision_width, intermediate_size=4 * args.vision_width, num_layers=args.vision_layers,
        num_heads=args.vision_heads, image_size=synthetic.IMAGE_SIZE, patch_size=args.patch_size,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=vocab_size, hidden_size=args.text_width, intermediate_size=args.text_intermediate,
        num_layers=args.text_layers, num_heads=args.text_heads, num_kv_heads=args.text_heads,
        head_dim=args.text_width // args.text_heads, rms_norm_eps=1e-5, max_position_embeddings=1024,
    )
    return LlavaConfig(vision=vision, text=text, projector_type="mlp2x_gelu", select_layer=-2,
                       image_grid_pinpoints=HR_PINPOINTS if args.next else None)


def processor_of(config: LlavaConfig) -> ImageProcessor:
    return ImageProcessor(image_size=config.vision.image_size, image_grid_pinpoints=config.image_grid_pinpoints)


def schedule_progress(step: int, wall_s: float, args) -> float:
    """Fraction of the whole-model phase done: by steps, or by wall time when --max-minutes is given (whichever is
    further); the vision phase's minutes come off the budget first."""
    progress = step / args.steps
    if args.max_minutes:
        progress = max(progress, wall_s / (60 * (args.max_minutes - args.vision_minutes)))
    return min(1.0, progress)


def lr_at(step: int, progress: float, args) -> float:
    """Linear warmup over --warmup steps, then cosine from --lr to --lr * --min-lr-ratio over the progress."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _weights_arg(known: tuple[str, ...], what: str):
    def parse(text: str) -> dict[str, float]:
        try:
            return parse_weights(text, known, what)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m llava.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, default=Path("runs/shapes-tiny"), help="log and checkpoint folder")
    g.add_argument("--export", type=Path, help="write the final model here in the llava-hf layout")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    g.add_argument("--seed", type=int, default=0, help="weight init and anything random in training")
    g.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in the training process")
    g.add_argument("--workers", type=int, default=1, help="DataLoader workers generating samples")
    g.add_argument("--bf16", action="store_true",
                   help="bf16 autocast (about 25x slower than fp32 on a CPU without AVX512-BF16/AMX)")
    g.add_argument("--max-minutes", type=float, default=None,
                   help="wall-time budget of the run (resumed runs included): the cosine schedule runs over "
                        "whichever of --steps or this budget ends first, then training stops, saves and exports")
    g.add_argument("--init-from", type=Path,
                   help="start from these weights with a fresh optimiser and schedule: a last.pt (its heads too; "
                        "data from the train samples after the ones it saw) or an exported model folder (fresh "
                        "heads, data from train sample 0); with --next, a LLaVA-1.5 model's tower, projector and "
                        "decoder, and a fresh image_newline")
    g.add_argument("--export-only", action="store_true", help="load OUT/last.pt and only --export it")
    g = p.add_argument_group("data")
    g.add_argument("--looks", type=_weights_arg(TRAIN_LOOKS, "looks"), default={"lattice": 1.0},
                   metavar="LOOK=W,...",
                   help=f"the mix of the generator's looks ({', '.join(TRAIN_LOOKS)}) among the training "
                        "samples, e.g. lattice=1,varied=1 (drawn is the held-out style: never train on it; video: "
                        "shapes_video clips, with --video)")
    g.add_argument("--eval-looks", nargs="+", choices=TRAIN_LOOKS,
                   help="validation splits evaluated during the run (default: the training looks)")
    g.add_argument("--extra-turns", type=int, default=3,
                   help="more questions about each training image, as further vicuna_v1 turns with the loss on "
                        "every answer (more answer tokens per image; evaluation stays single-turn)")
    g.add_argument("--bare-rate", type=float, default=0.25,
                   help="share of questions asked without LLaVA's short-answer instruction, so that a bare "
                        "question (as `fastv run --prompt` sends it) also gets a one-word answer")
    g.add_argument("--token-drop", type=float, default=0.0,
                   help="probability that a training view keeps only its object and text tokens and a random "
                        "share of the rest, so the decoder cannot key on the sequence length")
    g.add_argument("--turn-weights", type=_weights_arg(synthetic.QUESTION_TYPES, "question types"), default=None,
                   metavar="TYPE=W,...",
                   help="relative odds of each question type in the extra turns, e.g. ocr=3,position=2 "
                        "(types not named weigh 1; default: uniform)")
    g.add_argument("--text-rate", type=float, default=synthetic.TEXT_PROBABILITY,
                   help="probability of printed text on a training image whose question is not ocr "
                        "(more text: more ocr turns; the benchmark's splits keep the generator's default)")
    g = p.add_argument_group("vision phase (llava/train/vision.py)")
    g.add_argument("--vision-minutes", type=float, default=0.0,
                   help="first train the vision tower alone on its heads for this long (part of --max-minutes): "
                        "three to four times the images per minute of a whole-model step")
    g.add_argument("--vision-batch-size", type=int, default=64, help="images per vision-phase step")
    g.add_argument("--vision-lr", type=float, default=1e-3, help="peak learning rate of the vision phase")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=3000, help="optimiser steps (the cosine schedule's length)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    g.add_argument("--min-lr-ratio", type=float, default=0.05, help="final lr / peak lr of the cosine")
    g.add_argument("--warmup", type=int, default=100, help="linear warmup steps")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--grad-clip", type=float, default=1.0, help="max global gradient norm")
    g.add_argument("--cls-aux-weight", type=float, default=0.5, help="weight of the CLS head's loss")
    g.add_argument("--patch-aux-weight", type=float, default=0.5, help="weight of the patch head's loss (0: off)")
    g.add_argument("--ocr-aux-weight", type=float, default=0.5, help="weight of the OCR head's loss (0: off)")
    g.add_argument("--where-aux-weight", type=float, default=0.5,
                   help="weight of the position head's loss (each patch names its row and column; 0: off)")
    g.add_argument("--text-aux-weight", type=float, default=0.5,
                   help="weight of the text head's loss (each text-box patch names the word or digits; 0: off)")
    g.add_argument("--align-aux-weight", type=float, default=0.0,
                   help="weight of the alignment loss: the LM head reads each text-box image token "
                        "(after the projector) as the word's token, or a number's digit (0: off)")
    g.add_argument("--ground-aux-weight", type=float, default=0.0,
                   help="weight of the grounding loss: one decoder head's attention from the first answer's "
                        "position should land on the question's target tokens (0: off)")
    g.add_argument("--ground-layer", type=int, default=-1,
                   help="decoder layer of the grounded head (default: the last, which FastV never ranks by)")
    g.add_argument("--ground-head", type=int, default=0, help="the grounded head")
    g.add_argument("--copy-aux-weight", type=float, default=0.0,
                   help="weight of the copy loss: the grounded head's value/output projections carry each "
                        "text-box token to the LM head as its word (or digit) (0: off)")
    g.add_argument("--object-copy-aux-weight", type=float, default=0.0,
                   help="the same for object tokens: carried to the LM head, they read as their colour, "
                        "shape and side words (0: off)")
    g = p.add_argument_group("logging")
    g.add_argument("--log-every", type=int, default=20, help="steps between loss lines")
    g.add_argument("--eval-every", type=int, default=250, help="steps between validation runs")
    g.add_argument("--eval-samples", type=int, default=198, help="validation samples per look per run (33 per type)")
    g.add_argument("--save-every", type=int, default=100, help="steps between checkpoints")
    g = p.add_argument_group("model (from scratch; --init-from's model keeps its own)")
    g.add_argument("--next", action="store_true",
                   help="LLaVA-NeXT: anyres over the hr look's canvases as image_grid_pinpoints, the stock "
                        "spatial_unpad merge with image_newline")
    g.add_argument("--video", action="store_true",
                   help="Video-LLaVA (llava/train/video.py): from --init-from's LLaVA-1.5 model, a video tower "
                        "beside the image tower and a <video> token; trains the projector and decoder on the "
                        "looks' mix, where video is shapes_video clips (the vision heads are off; --frame-aux-weight adds "
                        "the frame loss)")
    g.add_argument("--video-token-drop", type=float, default=0.0,
                   help="with --video: probability that a training frame keeps only its CLS, object and text "
                        "tokens and a random share of the rest (as --token-drop for image views)")
    g.add_argument("--frame-aux-weight", type=float, default=0.0,
                   help="with --video: weight of the frame loss (after decoder layer --frame-aux-layer, every video "
                        "token names its frame; llava/train/losses.py; 0: off)")
    g.add_argument("--frame-aux-layer", type=int, default=1, help="decoder layer whose output the frame head reads")
    g.add_argument("--patch-size", type=int, default=28, help="ViT patch (336 / 28 = 12x12 = 144 tokens)")
    g.add_argument("--vision-width", type=int, default=128)
    g.add_argument("--vision-layers", type=int, default=6)
    g.add_argument("--vision-heads", type=int, default=4)
    g.add_argument("--text-width", type=int, default=192)
    g.add_argument("--text-intermediate", type=int, default=512)
    g.add_argument("--text-layers", type=int, default=4)
    g.add_argument("--text-heads", type=int, default=4)
    return p.parse_args(argv)


# ---- validation ----------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, encoder: Encoder, look: str, n: int, first: int = 0, batch_size: int = 66,
             split: str = "validation") -> dict:
    """Greedy-decode n samples of a split in `look`; accuracy per question type and overall (the benchmark's rule)."""
    was_training = model.training
    model.eval()
    graded = []
    tok = encoder.tokenizer
    for start in range(first, first + n, batch_size):
        samples = [synthetic.make_sample(split, i, look=look) for i in range(start, min(first + n, start + batch_size))]
        prompts = [tokenizer_image_token(sample_prompt(s), tok) for s in samples]
        images = encoder.processor([s.image for s in samples])
        out = generate(model, prompts, images, max_new_tokens=8, eos_token_id=tok.eos_token_id)
        for s, tokens in zip(samples, out.tokens):
            graded.append((s.question_type, shapes.is_correct(tok.decode(tokens, skip_special_tokens=True), s.answer)))
    model.train(was_training)
    return shapes.fractions_by_type(graded)


# ---- the run -------------------------------------------------------------------------------------


class Logger:
    def __init__(self, path: Path):
        self.file = open(path, "a", buffering=1)

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, flush=True)
        self.file.write(line + "\n")


def save_checkpoint(path: Path, model, heads, optimizer, step: int, samples: int, first_sample: int, wall: float,
                    args) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "heads": heads.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "samples": samples, "first_sample": first_sample, "wall_s": wall,
                "args": {k: str(v) for k, v in vars(args).items()}, "config": asdict(model.config)}, tmp)
    os.replace(tmp, path)


def build_model(args, tokenizer, log) -> tuple[TrainableLlava, int, dict | None]:
    """The model to train, the train sample its data starts at, and the heads' state to start from (or None)."""
    init = args.init_from
    if args.video:
        from llava.train.video import freeze_towers, video_model

        if init is None or not init.is_dir():
            raise SystemExit("--video needs --init-from an exported LLaVA-1.5 model folder")
        model = video_model(init, tokenizer)
        freeze_towers(model)
        log(f"initialised a Video-LLaVA from the exported model {init}: both towers from its vision tower "
            f"(frozen), a <video> token, {model.config.text.max_position_embeddings} positions")
        return model, 0, None
    if init is not None and init.is_dir():  # an exported model: its weights, fresh heads
        from llava.model.builder import load_pretrained_model

        _, loaded, _, _ = load_pretrained_model(str(init))
        config = loaded.config
        if args.next and not config.anyres:
            config = dataclasses.replace(config, image_grid_pinpoints=HR_PINPOINTS, patch_merge="spatial_unpad")
        model = TrainableLlava(config)
        missing = model.load_state_dict(loaded.state_dict(), strict=False).missing_keys
        if set(missing) - {"image_newline"}:
            raise SystemExit(f"--init-from {init}: weights missing for {sorted(missing)}")
        log(f"initialised from the exported model {init}" + ("; fresh image_newline" if missing else ""))
        return model, 0, None
    model = TrainableLlava(model_config(args, len(tokenizer)))
    initialize(model)
    if init is None:
        return model, 0, None
    state = torch.load(init, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    first_sample = state.get("first_sample", 0) + state["samples"]
    log(f"initialised from {init} (step {state['step']}, {state['samples']} samples); fresh optimiser and "
        f"schedule, data from train sample {first_sample}")
    return model, first_sample, state["heads"]


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # tiny gradients squared in Adam go denormal: 10x slower kernels on CPU
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    log = Logger(args.out / "train.log")
    if args.video:
        from llava.train import video as video_recipe

        tokenizer = video_recipe.video_tokenizer()
    else:
        if synthetic.VIDEO_LOOK in args.looks or synthetic.VIDEO_LOOK in (args.eval_looks or ()):
            raise SystemExit("the video look is for --video runs")
        if args.frame_aux_weight > 0:
            raise SystemExit("--frame-aux-weight is for --video runs (the frame loss names a video token's frame)")
        tokenizer = build_tokenizer()
    model, first_sample, heads_state = build_model(args, tokenizer, log)
    config = model.config
    model.token_drop = args.token_drop
    model.video_token_drop = args.video_token_drop
    weights = {name: 0.0 if args.video else getattr(args, f"{name}_aux_weight") for name in AUX_LOSSES}
    if weights["ground"] > 0 or weights["copy"] > 0 or weights["object_copy"] > 0:
        capture_attention_input(model, args.ground_layer)
    frame_head = args.frame_aux_weight > 0  # a --video run: checked with the looks
    if frame_head and not 0 <= args.frame_aux_layer < config.text.num_layers:
        raise SystemExit(f"--frame-aux-layer {args.frame_aux_layer}: the decoder has layers 0 to {config.text.num_layers - 1}")
    if frame_head:
        capture_decoder_hidden(model, args.frame_aux_layer)
    heads = AuxHeads(config.vision.hidden_size, config.vision.grid_size, config.text.hidden_size,
                     config.video.num_frames if frame_head else 0)
    if heads_state is not None:
        missing = heads.load_state_dict(heads_state, strict=False).missing_keys
        if missing:
            log(f"new heads: {sorted({k.split('.')[0] for k in missing})}")
    params = [p for p in list(model.parameters()) + list(heads.parameters()) if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), foreach=True)
    step, samples_seen, wall_before = 0, 0, 0.0
    ckpt = args.out / "last.pt"
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        step, samples_seen, wall_before = state["step"], state["samples"], state.get("wall_s", 0.0)
        first_sample = state.get("first_sample", 0)
        log(f"resumed from {ckpt} at step {step} ({samples_seen} samples)")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"args {json.dumps({k: str(v) for k, v in vars(args).items()})}")
    log(f"model: {n_params / 1e6:.2f}M parameters, {config.tokens_per_image} visual tokens per view, "
        f"config {json.dumps(asdict(config))}")

    if args.export_only:
        if not args.export:
            raise SystemExit("--export-only needs --export DIR")
        model.eval()
        export_hf(model, tokenizer, args.export)
        log(f"exported {ckpt} (step {step}) to {args.export}")
        return {"step": step, "samples": samples_seen, "wall_s": wall_before}

    processor = processor_of(config)
    make_encoder = lambda: Encoder(processor, config.vision.patch_size, args.extra_turns, args.bare_rate, args.turn_weights)
    first, count = first_sample + step * args.batch_size, (args.steps - step) * args.batch_size
    if args.video:
        data = video_recipe.VideoSamples(first, count, processor, config.vision.patch_size, args.looks,
                                         args.extra_turns, args.bare_rate, args.text_rate, args.turn_weights)
    else:
        data = TrainSamples(first, count, make_encoder, args.looks, args.text_rate)
    loader = torch.utils.data.DataLoader(
        data, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
        collate_fn=video_recipe.video_collate if args.video else collate,
        worker_init_fn=_worker_init if args.workers else None, prefetch_factor=4 if args.workers else None,
        persistent_workers=False,
    )
    encoder = Encoder(processor, config.vision.patch_size)
    encoder.tokenizer = tokenizer
    eval_looks = args.eval_looks or list(args.looks)

    def validate() -> dict:
        return {look: video_recipe.evaluate_video(model, tokenizer, processor, args.eval_samples)
                if look == synthetic.VIDEO_LOOK else evaluate(model, encoder, look, args.eval_samples)
                for look in eval_looks}

    vision = None
    if args.vision_minutes and step == 0:
        from llava.train.vision import train_vision

        vision = train_vision(model, heads, make_encoder, args, log)
        log(f"eval after the vision phase validation {_rounded(validate())}")
    model.train()
    start = time.time()
    window_start, window_samples = time.time(), 0
    sums = defaultdict(float)
    last_eval = None
    stopped_early = False
    history = []  # LM loss per step of this process
    for batch in loader:
        progress = schedule_progress(step, wall_before + time.time() - start, args)
        if step >= args.steps or progress >= 1.0:
            stopped_early = step < args.steps
            break
        lr = lr_at(step, progress, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.foreground = batch["foreground"]
        model.frame_foreground = batch.get("frame_foreground")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss_lm = lm_loss(model, batch["ids"], batch["label_index"], batch["images"], batch.get("videos"))
            if args.video:  # the towers are frozen: only the frame head (on the decoder) has anything to train
                frame = frame_loss(heads, model) if frame_head else None
                aux, parts = (0.0, {}) if frame is None else (args.frame_aux_weight * frame, {"frame": frame.item()})
            else:
                aux, parts = aux_losses(heads, model, batch, weights, args.ground_layer, args.ground_head, tokenizer)
            loss = loss_lm + aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        optimizer.step()
        step += 1
        samples_seen += len(batch["prompt"])
        window_samples += len(batch["prompt"])
        sums["lm"] += loss_lm.item()
        history.append(round(loss_lm.item(), 5))
        for name, value in parts.items():
            sums[name] += value
        sums["grad"] += grad_norm.item()
        sums["n"] += 1
        if step % args.log_every == 0 or step == args.steps:
            n = sums.pop("n")
            rate = window_samples / (time.time() - window_start)
            parts = " ".join(f"{k} {v / n:.4f}" for k, v in sorted(sums.items()))
            log(f"step {step}/{args.steps} lr {lr:.2e} {parts} samples/s {rate:.1f} samples {samples_seen}")
            sums.clear()
            window_start, window_samples = time.time(), 0
        if step % args.save_every == 0:
            save_checkpoint(ckpt, model, heads, optimizer, step, samples_seen, first_sample,
                            wall_before + time.time() - start, args)
        if step % args.eval_every == 0:
            t0 = time.time()
            last_eval = validate()
            log(f"eval step {step} validation {_rounded(last_eval)} ({time.time() - t0:.0f}s)")
            window_start += time.time() - t0  # samples/s counts training time only
    if stopped_early:
        log(f"stopping at step {step}: the --max-minutes {args.max_minutes} budget is spent")
    wall = wall_before + time.time() - start
    save_checkpoint(ckpt, model, heads, optimizer, step, samples_seen, first_sample, wall, args)
    if step % args.eval_every != 0 or last_eval is None:
        last_eval = validate()
        log(f"eval step {step} validation {_rounded(last_eval)}")
    log(f"done: step {step}, {samples_seen} samples, {wall / 60:.1f} min of training (this run and resumed ones)")
    summary = {"step": step, "samples": samples_seen, "wall_s": wall, "stopped_early": stopped_early,
               "vision_phase": vision, "validation": last_eval, "lm_loss": history}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.export:
        model.eval()
        export_hf(model, tokenizer, args.export)
        log(f"exported the model to {args.export}")
    return summary


def _rounded(result: dict) -> str:
    return json.dumps({look: {k: round(v, 3) for k, v in scores.items()} for look, scores in result.items()})


def _worker_init(_):
    torch.set_num_threads(1)
