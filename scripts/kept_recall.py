#!/usr/bin/env python
"""Do the pruning methods keep the visual tokens a shapes question is about?

For every method and budget, on the first N test samples of the synthetic
shapes task, the share of the question's target tokens (the tokens of the
object(s) the question names, or of the text box for ocr; `Sample.patches`
mapped to the model's patch grid) that survive pruning. Unlike accuracy, this
does not depend on how well the LLM reads what it is given: it tells a method
that keeps the wrong tokens (or a wrong index) from a model that cannot use
the right ones.

    .venv/bin/python scripts/kept_recall.py --n 300 --json results/<machine-date>/kept_recall.json
    .venv/bin/python scripts/kept_recall.py --look hr --n 300 --json results/<machine-date>/kept_recall_hr.json

With `--look hr` (the shipped LLaVA-NeXT on `shapes_hr`'s scenes) the target tokens are the crops'
patches under the object(s) or text (an hr object is 8 to 12 px in the base view: the crops are where
it is read), and two more columns say where each method spent its budget: the share of the kept
tokens in the base view, and the share of the kept crop tokens in the crops that hold the objects
(`Sample.layout["busy_crops"]`; an equal split gives them busy / crops of it, the "even" column).
A last line asks why: the share of the base view's [CLS] attention (summed over heads, as HiRED
sums it) that falls on the busy crops' blocks of the base view, at layer 0 (what HiRED splits the
crops' budget by: over these blocks with `split=paper`; the released rule, `split=code`, counts
layer 0's top patches in bands of the base view's raster rows, which are the crops only on a
one-column canvas) and at the select layer (what FasterVLM and HiRED rank patches by inside a
partition).

With `--look video` (the shipped Video-LLaVA on `shapes_video`'s clips) the question is where a
budget goes in time: of the answer's patches on the frames holding it (the annotations'
`answer_frames` and `answer_patches`, mapped to the model's patch grid), the share that survived
pruning (`Answer.kept_frames`: per frame, the patches that entered the LLM, or that an in-LLM
method's last stage kept), at the sweep's matched budgets (`fastv.sweep.video_spec`: L patches in
every frame for a per-frame method, the same number of tokens over the whole video for an in-LLM
one). Brief answers (in 1 or 2 of the 8 frames: half of each temporal type) and spread ones (4 or
more; the still types: all 8) get their own columns, and a second table says how much of the kept
patches landed on a brief answer's frames, against the frames' share of the video (the "even"
column, all a per-frame budget can give them): does a global budget follow the content, does a
per-frame one starve it?

    .venv/bin/python scripts/kept_recall.py --look video --n 240 --json results/<machine-date>/kept_recall_video.json

Samples whose question has no target tokens (exist questions answered "no")
are skipped. `pool` is left out: it averages every token into its cells, so
its "kept" indices (the cell centres) say nothing about what it keeps; so are
PruMerge and PruMerge+ (no budget to set, and merged tokens), and on video SparseVLM (fixed
budgets, not the shares). VisionZip's contextual tokens count as their target patch (merged).
Prints a markdown table: mean recall (%) per method and share, and the share
of questions whose target tokens were all kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastv.shipped import SHIPPED_MODEL, SHIPPED_NEXT_MODEL, SHIPPED_VIDEO_MODEL  # noqa: E402
from fastv.sweep import (  # noqa: E402
    DEFAULT_SHARES, NEXT_METHODS, NEXT_SHARES, VIDEO_METHODS, VIDEO_SHARES, method_spec, video_spec, video_tokens,
)
from llava.data import synthetic, video_clips  # noqa: E402
from llava.model.pruning.hired import crop_blocks  # noqa: E402
from llava.model.pruning.registry import available_methods  # noqa: E402
from llava.pipeline import LlavaPipeline, Request  # noqa: E402
from llava.video import Video  # noqa: E402


def target_tokens(sample, config) -> set[int]:
    """The visual tokens holding the question's target, numbered as `Answer.kept` numbers them. LLaVA-1.5:
    the one view's patches. LLaVA-NeXT: the crops' patches, `partition * N + patch` (an hr canvas is one of
    the model's pinpoints, so its crops are the canvas cut in squares, with no resize or padding)."""
    vision = config.vision
    if not config.anyres:
        return synthetic.tokens_on_grid(sample.patches, vision.patch_size)
    crop, side = vision.image_size, vision.image_size // vision.patch_size
    width = sample.size[0]
    tokens = set()
    for patch in sample.patches:
        y, x = (synthetic.PATCH_SIZE * i for i in divmod(patch, width // synthetic.PATCH_SIZE))
        partition = 1 + (y // crop) * (width // crop) + x // crop
        tokens.add(partition * side * side + (y % crop) // vision.patch_size * side + (x % crop) // vision.patch_size)
    return tokens


def budget_shares(answer, sample) -> tuple[float, float, float]:
    """LLaVA-NeXT: (kept tokens in the base view / all kept, kept crop tokens in the busy crops / all kept crop
    tokens, busy crops / crops: what an equal split gives them)."""
    partitions = answer.kept_partitions[0]
    crops = [len(kept) for kept in partitions[1:]]
    busy = sum(crops[i] for i in sample.layout["busy_crops"])
    total = len(partitions[0]) + sum(crops)
    return (len(partitions[0]) / total if total else 0.0, busy / sum(crops) if sum(crops) else 0.0,
            len(sample.layout["busy_crops"]) / len(crops))


def base_attention_on_busy(pipe: LlavaPipeline, samples: list) -> dict:
    """LLaVA-NeXT: per vision layer (0 and the select layer), the mean share of the base view's [CLS]
    attention on the busy crops' blocks (the crop grid laid over the base view's patch grid in equal
    blocks, as HiRED's paper split does), and that share for attention spread evenly (the blocks' area)."""
    model, config = pipe.model, pipe.model.config
    side = config.vision.grid_size
    layers = (0, config.vision.layer_index(config.select_layer))
    shares, even = {layer: [] for layer in layers}, []
    for sample in samples:
        _, _, images, _ = pipe.encode([Request(image=sample.image, text=sample.prompt)])
        with torch.inference_mode():
            probes = model.vision_tower(images[0].pixel_values[:1].to(model.device, model.dtype),
                                        config.select_layer, layers).probes
        blocks = crop_blocks(tuple(sample.layout["crop_grid"]), (side, side))
        busy = torch.zeros(side, side, dtype=torch.bool)
        for crop in sample.layout["busy_crops"]:
            busy[blocks[crop]] = True
        for layer in layers:
            attention = probes[layer].cls_attention[0].sum(dim=0).float().cpu()
            shares[layer].append(float(attention[busy.flatten()].sum() / attention.sum()))
        even.append(float(busy.float().mean()))
    return {"layers": {str(layer): 100 * sum(v) / len(v) for layer, v in shares.items()},
            "even": 100 * sum(even) / len(even), "questions": len(samples)}


def recall_table(pipe: LlavaPipeline, samples: list, methods: list[str], shares: list[float],
                 batch_size: int = 32) -> list[dict]:
    config = pipe.model.config
    targets = [target_tokens(s, config) for s in samples]
    rows = []
    for name in methods:
        for share in shares:
            spec = pipe.model.set_pruning(method_spec(name, share, config.tokens_per_image)).spec
            recalls, budgets = [], []
            for start in range(0, len(samples), batch_size):
                batch = samples[start:start + batch_size]
                answers = pipe.answer([Request(s.image, s.prompt) for s in batch], max_new_tokens=1)
                for answer, sample, target in zip(answers, batch, targets[start:start + batch_size]):
                    if config.anyres and answer.partition_grid[0] != sample.layout["crop_grid"]:
                        raise SystemExit(f"{sample.question_id}: the model cut the {sample.size} canvas into a "
                                         f"{answer.partition_grid[0]} grid, not its crops {sample.layout['crop_grid']}: "
                                         "its image_grid_pinpoints do not hold the hr canvases")
                    kept = set(answer.kept[0])
                    recalls.append(len(kept & target) / len(target))
                    if config.anyres:
                        budgets.append(budget_shares(answer, sample))
            rows.append({
                "method": name, "spec": spec, "share": share,
                "recall": 100 * sum(recalls) / len(recalls),
                "all_kept": 100 * sum(r == 1.0 for r in recalls) / len(recalls),
                "questions": len(recalls),
            })
            if budgets:
                base, busy, even = (100 * sum(column) / len(column) for column in zip(*budgets))
                rows[-1].update(base_share=base, busy_share=busy, even_share=even)
            print(f"{spec:28s} recall {rows[-1]['recall']:5.1f}%  all kept {rows[-1]['all_kept']:5.1f}%",
                  file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------
# Video: the answer's patches on the frames holding it


def frame_tokens(patches, image_size: int, patch_size: int) -> set[int]:
    """Patches of a 336-px frame's 14-px grid (`answer_patches`) as the tokens (raster order) of a model whose
    frames are `image_size` px (the square frame resized) in `patch_size`-px patches: every token a patch overlaps."""
    side, frame = image_size // patch_size, synthetic.IMAGE_SIZE
    tokens = set()
    for patch in patches:
        row, col = divmod(patch, synthetic.GRID_SIZE)
        # the patch covers pixels [14 r, 14 (r + 1)) of the frame: [14 r s, 14 (r + 1) s) of the model's, s = S / 336
        scale = frame * patch_size  # model token t covers the frame's pixels [t, t + 1) x scale / image_size
        rows = range(row * 14 * image_size // scale, -(-(row + 1) * 14 * image_size // scale))
        cols = range(col * 14 * image_size // scale, -(-(col + 1) * 14 * image_size // scale))
        tokens.update(r * side + c for r in rows for c in cols)
    return tokens


def clip_recall(kept_frames: list[list[int]], answer_frames: list[int],
                targets: list[set[int]]) -> tuple[float, float] | None:
    """(recall, answer-frame share) of one clip: of the target tokens on the answer frames (`targets[i]` on frame
    `answer_frames[i]`), the share among that frame's kept patches (`kept_frames`, per frame); and of all the kept
    patches, the share on the answer frames. None when the answer has no target token."""
    total = sum(len(target) for target in targets)
    if total == 0:
        return None
    hit = sum(len(set(kept_frames[k]) & target) for k, target in zip(answer_frames, targets))
    kept = sum(len(frame) for frame in kept_frames)
    on_answer = sum(len(kept_frames[k]) for k in answer_frames)
    return hit / total, on_answer / kept if kept else 0.0


def video_recall_table(pipe: LlavaPipeline, clips: list, methods: list[str], shares: list[float],
                       batch_size: int = 8) -> list[dict]:
    """Per method and share (matched as the sweep matches them): the mean recall of the answer's patches on its
    frames, over all clips with a target and over the brief and the spread ones; the share of clips whose answer
    patches were all kept; over the brief clips, the share of the kept patches on the answer frames and the
    answer frames' share of the video ("even")."""
    config = pipe.model.config
    vision, video = config.vision, config.video
    if video is None or video.num_frames != video_clips.SAMPLED_FRAMES:
        raise SystemExit(f"{pipe.model_id} is no Video-LLaVA reading {video_clips.SAMPLED_FRAMES} frames")
    targets = [[frame_tokens(p, vision.image_size, vision.patch_size) for p in clip.answer_patches] for clip in clips]
    brief = [len(clip.answer_frames) <= video_clips.BRIEF_FRAMES for clip in clips]
    patches, cls = config.tokens_per_image, video.cls == "keep"
    rows = []
    for name in methods:
        for share in shares:
            spec = pipe.model.set_pruning(video_spec(name, share, patches, video.num_frames, cls,
                                                     config.text.num_layers)).spec
            results = []  # (recall, answer-frame share, brief, even)
            for start in range(0, len(clips), batch_size):
                batch = clips[start:start + batch_size]
                requests = [Request(None, clip.prompt, Video(clip.video_frames, clip.sampled, len(clip.frames), None))
                            for clip in batch]
                answers = pipe.answer(requests, max_new_tokens=1)
                for k, (answer, clip) in enumerate(zip(answers, batch), start):
                    got = clip_recall(answer.kept_frames, clip.answer_frames, targets[k])
                    if got is not None:
                        results.append((*got, brief[k], len(clip.answer_frames) / video.num_frames))

            def mean(values):
                values = list(values)
                return 100 * sum(values) / len(values) if values else None

            rows.append({
                "method": name, "spec": spec, "share": share,
                "video_tokens": video_tokens(share, patches, video.num_frames, cls),
                "recall": mean(r for r, *_ in results),
                "recall_brief": mean(r for r, _, b, _ in results if b),
                "recall_spread": mean(r for r, _, b, _ in results if not b),
                "all_kept": mean(r == 1.0 for r, *_ in results),
                "answer_share_brief": mean(a for _, a, b, _ in results if b),
                "even_brief": mean(e for *_, b, e in results if b),
                "questions": len(results), "brief": sum(b for _, _, b, _ in results),
            })
            row = rows[-1]
            print(f"{spec:36s} recall {row['recall']:5.1f}%  brief {_cell(row['recall_brief'])}%  "
                  f"spread {_cell(row['recall_spread'])}%", file=sys.stderr, flush=True)
    return rows


def _cell(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def video_markdown(rows: list[dict], patches: int, frames: int) -> str:
    shares = sorted({r["share"] for r in rows}, reverse=True)
    tokens = {r["share"]: r["video_tokens"] for r in rows}
    counts = rows[0]
    lines = [f"Answer-patch recall on the frames holding the answer (%): of the answer's patches on its frames, the share"
             f" kept, by share of each frame's {patches} patches (in brackets: the video tokens every method keeps,"
             f" fastv.sweep.video_spec); cells: all ({counts['questions']} questions) / brief (answer in 1-2 of the"
             f" {frames} frames, {counts['brief']}) / spread (4 or more)", "",
             "| method | " + " | ".join(f"{s:.0%} ({tokens[s]})" for s in shares) + " |",
             "|---|" + "---:|" * len(shares)]
    for name in dict.fromkeys(r["method"] for r in rows):
        by_share = {r["share"]: r for r in rows if r["method"] == name}
        lines.append(f"| {name} | " + " | ".join(
            f"{_cell(r['recall'])} / {_cell(r['recall_brief'])} / {_cell(r['recall_spread'])}"
            if (r := by_share.get(s)) else "" for s in shares) + " |")
    lines += ["", "Where the budget went on brief answers (%): kept patches on the answer's frames / all kept patches"
                  f" (even: the answer frames' share of the {frames} frames, what a per-frame budget gives them)", "",
              "| method | " + " | ".join(f"{s:.0%}" for s in shares) + " | even |",
              "|---|" + "---:|" * (len(shares) + 1)]
    for name in dict.fromkeys(r["method"] for r in rows):
        by_share = {r["share"]: r for r in rows if r["method"] == name}
        lines.append(f"| {name} | " + " | ".join(_cell(by_share[s]["answer_share_brief"]) if s in by_share else ""
                                                 for s in shares) + f" | {_cell(counts['even_brief'])} |")
    return "\n".join(lines)


def to_markdown(rows: list[dict], tokens: int) -> str:
    shares = sorted({r["share"] for r in rows}, reverse=True)
    what = f"the {tokens} visual tokens" if tokens else "each partition's patches"
    lines = [f"Target-token recall (%): share of the question's object tokens kept, by share of {what} "
             "kept (in brackets: % of questions with every target token kept)", "",
             "| method | " + " | ".join(f"{s:.0%}" + (f" ({round(s * tokens)})" if tokens else "") for s in shares) + " |",
             "|---|" + "---:|" * len(shares)]
    for name in dict.fromkeys(r["method"] for r in rows):
        by_share = {r["share"]: r for r in rows if r["method"] == name}
        lines.append(f"| {name} | " + " | ".join(
            f"{by_share[s]['recall']:.1f} ({by_share[s]['all_kept']:.0f})" if s in by_share else ""
            for s in shares) + " |")
    if any("busy_share" in r for r in rows):
        lines += ["", "Where the budget went (%): kept tokens in the base view / all kept; kept crop tokens in the "
                      "crops holding the objects / all kept crop tokens (an equal split: the even column)", "",
                  "| method | share | base view | busy crops | even |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['method']} | {r['share']:.0%} | {r['base_share']:.1f} | {r['busy_share']:.1f} "
                  f"| {r['even_share']:.1f} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--look", choices=["lattice", "hr", "video"], default="lattice",
                   help="the test split's look: lattice (shapes, LLaVA-1.5), hr (shapes_hr, LLaVA-NeXT) or video "
                        "(shapes_video's clips, Video-LLaVA)")
    p.add_argument("--model-path", help="default: the shipped model of the look")
    p.add_argument("--n", type=int, default=300, help="first N test samples")
    p.add_argument("--methods", nargs="+", help="default: the sweep's methods but none, pool, prumerge and prumerge+")
    p.add_argument("--shares", nargs="+", type=float, help="default: the sweep's, below 100%%")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    shipped = {"hr": SHIPPED_NEXT_MODEL, "video": SHIPPED_VIDEO_MODEL}.get(args.look, SHIPPED_MODEL)
    model_path = args.model_path or str(shipped)
    pipe = LlavaPipeline.load(model_path)
    if args.look == "video":
        return video_main(args, model_path, pipe)
    anyres = pipe.model.config.anyres
    samples = [s for s in synthetic.generate_split("test", args.n, look=args.look) if s.patches]
    methods = args.methods or [m for m in (NEXT_METHODS if anyres else available_methods())
                               if m not in ("none", "pool", "prumerge", "prumerge+")]
    shares = args.shares or [s for s in (NEXT_SHARES if anyres else DEFAULT_SHARES) if s < 1]
    rows = recall_table(pipe, samples, methods, shares, args.batch_size)
    table = to_markdown(rows, 0 if anyres else pipe.model.config.vision.num_patches)
    attention = base_attention_on_busy(pipe, samples) if anyres else None
    if attention:
        (early, early_share), (select, select_share) = attention["layers"].items()
        table += ("\n\nThe base view's [CLS] attention on the busy crops' blocks (%, summed over heads, mean over "
                  f"{attention['questions']} questions): layer {early} {early_share:.1f}, layer {select} (select) "
                  f"{select_share:.1f}; the blocks' share of the base view: {attention['even']:.1f}")
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {"model": model_path, "look": args.look, "rows": rows, "base_attention_on_busy": attention}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        args.json.with_suffix(".md").write_text(table + "\n")
    return rows


def video_main(args, model_path: str, pipe: LlavaPipeline) -> list[dict]:
    config = pipe.model.config
    clips = list(video_clips.generate_clips("test", args.n))
    methods = args.methods or [m for m in VIDEO_METHODS if m not in ("none", "prumerge", "prumerge+", "sparsevlm")]
    rows = video_recall_table(pipe, clips, methods, args.shares or list(VIDEO_SHARES), min(args.batch_size, 8))
    table = video_markdown(rows, config.tokens_per_image, config.video.num_frames)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model": model_path, "look": "video", "rows": rows}, indent=2) + "\n")
        args.json.with_suffix(".md").write_text(table + "\n")
    return rows


if __name__ == "__main__":
    main()
