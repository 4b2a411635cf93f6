"""The vision phase: the vision tower alone, trained on its auxiliary heads before the whole model trains.

Real LLaVA starts from a CLIP tower pretrained on far more images than the
language model ever sees; our tower is trained here. A whole-model step costs
three to four times what a tower-only step does per image (the decoder
dominates), so an image seen by the tower alone is cheap: a run can show the
tower many more images (`--vision-minutes`) before the decoder joins. This is
where the tower learns what the lattice look never asked of it: objects of 1 to
4 lattice cells on any background (the varied look). (Objects at any pixel
offset were tried too and not learned in an hour: llava-shapes-tiny's card.)

Losses: the CLS, patch, position, OCR and text heads of `llava.train.losses`
(the decoder's alignment, grounding and copy losses need the decoder).
Data: train samples from `VISION_FIRST_SAMPLE` on, in the run's mix of looks,
so the whole-model phase never sees these images again. Schedule: AdamW with
its own warmup and cosine over the phase's wall-clock budget.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import torch

from llava.data import synthetic
from llava.train.data import Encoder, look_of
from llava.train.losses import aux_losses

VISION_FIRST_SAMPLE = synthetic.SPLIT_SIZE_LIMIT // 2  # train sample indices of the vision phase start here
PER_VIEW = ("cls_labels", "count", "patch_labels", "ocr_labels", "text_labels", "align_labels", "side_labels",
            "foreground")


class VisionSamples(torch.utils.data.Dataset):
    """Item i = train sample (VISION_FIRST_SAMPLE + i) in its look: its views' pixels and per-view labels only."""

    def __init__(self, count: int, make_encoder, looks: dict[str, float], text_rate: float):
        self.count, self.make_encoder, self.looks, self.text_rate = count, make_encoder, looks, text_rate
        self.encoder: Encoder | None = None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict:
        if self.encoder is None:
            self.encoder = self.make_encoder()
        index = VISION_FIRST_SAMPLE + i
        sample = synthetic.make_sample("train", index, self.text_rate, look_of(index, self.looks))
        image = self.encoder.image(sample)
        pixels = image if isinstance(image, torch.Tensor) else image.pixel_values
        return {"pixels": pixels.reshape(-1, *pixels.shape[-3:]), **self.encoder.labels(sample)}


def collate_views(items: list[dict]) -> dict:
    """Every view of every item, stacked: pixels (V, 3, S, S) and the per-view labels."""
    batch = {key: torch.cat([it[key] for it in items]) for key in PER_VIEW}
    batch["pixels"] = torch.cat([it["pixels"] for it in items])
    return batch


def tower_outputs(model, pixels: torch.Tensor):
    """(final CLS after post_layernorm (V, D), select-layer patches (V, P, D)), as TrainableLlava keeps them."""
    tower = model.vision_tower
    select = model.config.vision.layer_index(model.config.select_layer)
    x = tower.pre_layrnorm(tower.embeddings(pixels))
    for index, layer in enumerate(tower.encoder.layers):
        x, _ = layer(x)
        if index == select:
            features = x[:, 1:]
    return tower.post_layernorm(x[:, 0]), features


def train_vision(model, heads, make_encoder, args, log) -> dict:
    """Train the tower and the heads for `args.vision_minutes`; return {"steps", "images", "wall_s"}."""
    weights = {name: getattr(args, f"{name}_aux_weight") for name in ("cls", "patch", "where", "ocr", "text")}
    weights.update(align=0.0, ground=0.0, copy=0.0, object_copy=0.0)
    params = [p for p in list(model.vision_tower.parameters()) + list(heads.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() > 1], "weight_decay": args.weight_decay},
                                   {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}],
                                  lr=args.vision_lr, betas=(0.9, 0.98), foreach=True)
    budget = 60 * args.vision_minutes
    data = VisionSamples(10**8, make_encoder, args.looks, args.text_rate)
    loader = torch.utils.data.DataLoader(data, batch_size=args.vision_batch_size, num_workers=args.workers,
                                         collate_fn=collate_views, prefetch_factor=4 if args.workers else None,
                                         worker_init_fn=(lambda _: torch.set_num_threads(1)) if args.workers else None)
    model.train()
    start, step, images, sums = time.time(), 0, 0, defaultdict(float)
    for batch in loader:
        elapsed = time.time() - start
        if elapsed >= budget:
            break
        progress = elapsed / budget
        lr = args.vision_lr * ((step + 1) / args.warmup if step < args.warmup
                               else args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        cls, features = tower_outputs(model, batch["pixels"])
        model.aux_outputs = (cls, features, None)
        loss, parts = aux_losses(heads, model, batch, weights, args.ground_layer, args.ground_head, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        optimizer.step()
        step += 1
        images += len(batch["count"])
        for name, value in parts.items():
            sums[name] += value
        if step % args.log_every == 0:
            log(f"vision step {step} lr {lr:.2e} " + " ".join(f"{k} {v / args.log_every:.4f}" for k, v in sorted(sums.items()))
                + f" views/s {images / (time.time() - start):.1f} views {images}")
            sums.clear()
    wall = time.time() - start
    log(f"vision phase done: {step} steps, {images} views, {wall / 60:.1f} min")
    return {"steps": step, "images": images, "wall_s": wall}
