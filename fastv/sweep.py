"""Accuracy vs budget: every method at several shares of the visual tokens, on one benchmark.

    fastv sweep --limit 300 --batch-size 32 --out results/X/shapes-sweep
    fastv sweep --benchmark shapes_hr --limit 300 --out results/X/shapes-hr-sweep     (the shipped LLaVA-NeXT)
    fastv sweep --benchmark shapes_video --limit 300 --out results/X/shapes-video-sweep  (the shipped Video-LLaVA)

Loads the model once and switches methods with `set_pruning`; every (method,
budget) gets its own run directory under `--out` (answers, scores, run.json), so
an interrupted sweep resumes where it stopped. Writes `sweep.json`, `sweep.md`
(overall accuracy per method and budget, then per question type, with the tokens
each run really kept) and `sweep.png` (accuracy against the visual tokens kept);
a model inside the repository is named by its path relative to it (`models/llava-shapes-tiny`),
so that a reader reruns the sweep from their own clone.

Budgets are shares of the visual tokens of an image, in (0, 1], matched across
methods as the tokens that really reach the decoder's layers: a pre-LLM method
keeps `round(share * N)` per image (LLaVA-1.5) or per partition (LLaVA-NeXT),
HiRED's rate is the share itself (floor(P x N x share) per image), and an in-LLM
method gets the budget whose visual tokens per layer, averaged over the layers,
come nearest `share * N` (`in_llm_spec`: its stage layers at the release's depth
scaled to the model's, its `keep` or `lambda` solved); a share it cannot reach
(its first layers see every token) is left out and shown as "n/a". So every
column compares methods at the same mean tokens per layer, hence nearly the same
prefill FLOPs; the per-run table prints both, measured: the visual tokens per
layer from each answer's `layer_tokens`, and the LLM prefill's multiply-adds by
the FastV paper's formula over those lengths, relative to the unpruned run.
`pool` needs a square grid, so it keeps the nearest square number. Adaptive
methods (PruMerge, PruMerge+) and methods with fixed budgets (SparseVLM) take no
share: they run once per budget and are plotted at the tokens they reached. A method name
may carry fixed parameters (`hired:split=paper`). `--baseline-model` adds a
second model's unpruned row (by default on shapes_hr: the shipped LLaVA-1.5, its
single 336-px view of the same images), so the value of high resolution shows.
Every option is checked before a model is loaded.

Videos (a Video-LLaVA checkpoint on a video benchmark: shapes_video, the video QA sets): a share is of a frame's
P patches, and methods are matched on the video tokens the LLM runs on once pruned, as FasterVLM's video table
matches FastV to FasterVLM (its 1024 tokens: FastV over the span, FasterVLM 8 x 128). A per-frame (pre-LLM)
method keeps L = round(share * P) patches in each of the F frames: F * (L + 1) tokens with each frame's [CLS]
(video_cls keep, the stock layout; F * L under drop). An in-LLM method, which chooses once over the whole span
of F * (P + 1) tokens, gets the budget whose tokens after its last stage come nearest that count (`video_spec`:
FastV keep = F * (L + 1), DART's keep and PyramidDrop's lambda solved), at its stage layers scaled as above: a
global budget may give the frames holding the answer more than L each, a per-frame one cannot. Its layers
before the first stage still see every token; the per-run table's per-layer and FLOPs columns say what that
costs. Defaults: `VIDEO_METHODS` (HiRED refuses videos) at `VIDEO_SHARES`; the sweep writes the split of
shapes_video (videos/) as it writes the image looks'. scripts/kept_recall.py --look video measures, at the
same budgets, how much of the answer's patches on the frames holding it each method kept.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from fastv.shipped import SHIPPED_NEXT_MODEL, SHIPPED_VIDEO_MODEL, model_or_shipped
from llava.paths import recorded_path

DEFAULT_SHARES = (1.0, 0.5, 0.25, 0.1, 0.05)
NEXT_SHARES = (0.5, 0.2, 0.1, 0.05)
# The methods that run on LLaVA-NeXT, HiRED in both of its crop-budget splits (METHODS.md)
NEXT_METHODS = ("none", "fastervlm", "hired", "hired:split=paper", "prumerge", "prumerge+", "vispruner", "visionzip",
                "divprune", "fastv", "dart", "pdrop", "random", "uniform")  # SparseVLM v1.5 has no NeXT code
# Methods whose budget on LLaVA-NeXT is one count for the whole image (newline tokens included), not per partition:
# DART (the release's retain count); the sweep counts their share on the unpruned run's mean image tokens.
WHOLE_IMAGE_ON_NEXT = ("dart",)
NOMINAL_TOKENS = 576  # the patches a method name is checked against before the model is loaded
# Video-LLaVA on a video benchmark: the methods that apply to a video (HiRED refuses one), per-frame ones first
VIDEO_METHODS = ("none", "fastervlm", "random", "uniform", "visionzip", "vispruner", "divprune", "prumerge",
                 "prumerge+", "fastv", "dart", "pdrop", "sparsevlm")
VIDEO_SHARES = (0.5, 0.25, 0.1, 0.05)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", help="checkpoint folder (default: the shipped model of the benchmark: "
                                             "LLaVA-NeXT for shapes_hr, Video-LLaVA for a video benchmark, else "
                                             "LLaVA-1.5)")
    parser.add_argument("--benchmark", default="shapes", help="benchmark name (see llava/eval/registry.py)")
    parser.add_argument("--data-root", default="playground/data/eval", help="benchmark data root")
    parser.add_argument("--out", required=True, help="folder for the run directories, sweep.{json,md,png}")
    parser.add_argument("--methods", nargs="+",
                        help="method names, optionally with fixed parameters (hired:split=paper) [default: every "
                             f"registered method; on LLaVA-NeXT: {' '.join(NEXT_METHODS)}; on a video benchmark: "
                             f"{' '.join(VIDEO_METHODS)}]")
    parser.add_argument("--shares", nargs="+", type=float,
                        help=f"fractions of the visual tokens KEPT per image [default: {' '.join(map(str, DEFAULT_SHARES))}; "
                             f"on LLaVA-NeXT: {' '.join(map(str, NEXT_SHARES))}; on a video benchmark, of each "
                             f"frame's patches, matched as the module docstring says: {' '.join(map(str, VIDEO_SHARES))}]")
    parser.add_argument("--baseline-model",
                        help="also run this model unpruned as a row ('none': no such row) [default on shapes_hr: the "
                             "shipped LLaVA-1.5]")
    parser.add_argument("--limit", type=int, help="answer only the first N questions")
    parser.add_argument("--n-questions", type=int, default=600,
                        help="shapes benchmarks only: test questions to generate when the data root has none")
    parser.add_argument("--max-new-tokens", type=int, help="tokens generated at most (default: the benchmark's)")
    parser.add_argument("--batch-size", type=int, default=16, help="questions answered together")
    parser.add_argument("--device", default="cpu")


def method_spec(name: str, share: float, tokens: int, llm_layers: int = 32) -> str | None:
    """The spec that keeps `share` of the visual tokens with method `name` (fixed parameters after a colon stay):
    `keep = round(share * tokens)` (`tokens`: patches per image, or per partition on LLaVA-NeXT), HiRED's rate =
    `share`; VisionZip's `keep` tokens split as its paper's budgets split them (dominant : contextual = 54 : 10,
    the dominant count including [CLS]); an in-LLM method's from `in_llm_spec` (None: the share is out of its
    reach on this `llm_layers`-layer LLM, or the method has fixed budgets, `fixed_budget_specs`); an adaptive
    method's spec is its name."""
    from llava.errors import InputError
    from llava.model.pruning.registry import parse_method

    base, _, fixed = name.partition(":")
    try:
        if base == "none" or is_adaptive(parse_method(name), tokens):
            return name
    except InputError:  # the name alone lacks its budget: a method with one
        pass
    if base in FIXED_BUDGETS:  # no share: fixed_budget_specs
        return None
    if base in IN_LLM_BUDGETS:
        return in_llm_spec(base, fixed, share * tokens, tokens, llm_layers)
    if base == "hired":
        budget = f"rate={share:g}"
    else:
        keep = round(share * tokens)
        if base == "pool":
            keep = max(1, round(math.sqrt(keep))) ** 2
        if base == "visionzip":
            dominant = max(1, round(keep * 54 / 64))
            budget = f"dominant={dominant},contextual={keep - dominant}"
        else:
            budget = f"k=2,keep={keep}" if base == "fastv" else f"keep={keep}"
    return f"{base}:{budget}" + (f",{fixed}" if fixed else "")


# An in-LLM method's stage layers in its release (a 32-layer LLM), and the parameter the sweep solves for.
IN_LLM_BUDGETS = {"fastv": ("k", (2,), "keep"), "dart": ("k", (2,), "keep"), "pdrop": ("layers", (8, 16, 24), "lambda")}
NOMINAL_BUDGET = {"keep": 128, "lambda": 0.5}  # what the option check parses a name with


# Methods with a fixed set of budgets: they run once per budget (no share), at their stage layers scaled as above.
FIXED_BUDGETS = {"sparsevlm": (64, 128, 192)}


def fixed_budget_specs(name: str, llm_layers: int) -> list[str]:
    """SparseVLM's specs on an `llm_layers`-layer LLM: each budget of its release, its scoring layers 2, 6, 15 (it
    prunes their outputs: stages before 3, 7, 16) at the same depth (the 4-layer shipped models: 0, 1, 2)."""
    base, _, fixed = name.partition(":")
    layers = ",".join(str(layer - 1) for layer in scaled_layers((3, 7, 16), llm_layers))
    return [f"{base}:keep={keep},layers={layers}" + (f",{fixed}" if fixed else "") for keep in FIXED_BUDGETS[base]]


def scaled_layers(layers: tuple[int, ...], llm_layers: int) -> tuple[int, ...]:
    """A release's stage layers (of 32) at the same depth of an `llm_layers`-layer LLM: round(l * L / 32), at least
    1, strictly increasing, at most L - 1 (the 4-layer shipped models: FastV's 2 -> 1, PyramidDrop's 8,16,24 -> 1,2,3)."""
    scaled = []
    for layer in layers:
        value = max(round(layer * llm_layers / 32), 1, scaled[-1] + 1 if scaled else 1)
        scaled.append(min(value, llm_layers - 1))
    return tuple(dict.fromkeys(scaled))


def visual_per_layer(method, tokens: int, llm_layers: int) -> float | None:
    """An in-LLM method's visual tokens per decoder layer, averaged over the layers, on an image of `tokens`: every
    token before its first stage, each stage's count from its layer on (`stage_budget`); None if not stated."""
    counts = method.stage_budget(tokens)
    if counts is None:
        return None
    layers = list(method.layers) + [llm_layers]
    total = layers[0] * tokens + sum((layers[s + 1] - layers[s]) * counts[s] for s in range(len(counts)))
    return total / llm_layers


def in_llm_spec(base: str, fixed: str, target: float, tokens: int, llm_layers: int,
                after_last_stage: bool = False) -> str | None:
    """The spec of in-LLM method `base` whose visual tokens per layer come nearest `target`: its stage layers scaled
    from the release's (`scaled_layers`) unless `fixed` names them (`fastv:k=3`), its `keep` (every value) or
    `lambda` (0.01 .. 1 by 0.01) solved. None when even the nearest is more than 5% (and one token) off: its layers
    before the first stage see every token. `after_last_stage` (videos, `video_spec`): match the tokens it keeps
    after its last stage instead (`budget`), always the nearest (DART keeps 4 + 8 x quota tokens)."""
    from llava.errors import InputError
    from llava.model.pruning.registry import parse_method

    where, release, knob = IN_LLM_BUDGETS[base]
    given = _fixed_keys(fixed)
    if knob in given:
        raise InputError(f"'{base}:{fixed}' sets {knob}, which the sweep solves for each share; leave it out")
    layers = "" if where in given else f"{where}={','.join(map(str, scaled_layers(release, llm_layers)))},"
    values = [f"{v / 100:g}" for v in range(1, 101)] if knob == "lambda" else [str(v) for v in range(1, tokens + 1)]
    best = None
    for value in values:
        spec = f"{base}:{layers}{knob}={value}" + (f",{fixed}" if fixed else "")
        try:
            method = parse_method(spec)
            method.check_model(24, llm_layers, tokens)
        except InputError:
            continue
        reached = method.budget(tokens) if after_last_stage else visual_per_layer(method, tokens, llm_layers)
        if reached is not None and (best is None or abs(reached - target) < best[0]):
            best = (abs(reached - target), method.spec)
    if best is None or (not after_last_stage and best[0] > max(1.0, 0.05 * target)):
        return None
    return best[1]


def video_tokens(share: float, patches: int, frames: int, cls: bool) -> int:
    """The video tokens the LLM runs on once a per-frame method kept `share` of each frame's `patches`: each of the
    `frames` frames' round(share x patches) patches, and its [CLS] when the model keeps it (`cls`)."""
    return frames * (round(share * patches) + cls)


def video_spec(name: str, share: float, patches: int, frames: int, cls: bool, llm_layers: int) -> str | None:
    """The spec of method `name` at `share` of a video's patches (module docstring, "Videos"): a per-frame method's
    as on an image of `patches` (`method_spec`: keep = round(share x patches) per frame; VisionZip's D + C, which
    count the frame's [CLS], one more under video_cls keep); an in-LLM method's
    (one choice over the span of frames x (patches + cls) tokens) whose tokens after its last stage come nearest
    `video_tokens(share, ...)`; None for a method with fixed budgets (`fixed_budget_specs`)."""
    base, _, fixed = name.partition(":")
    if base == "visionzip":  # a frame brings its D + C tokens, its own [CLS] among them: L + cls, as the others
        keep = round(share * patches) + cls
        dominant = max(1, round(keep * 54 / 64))
        return f"visionzip:dominant={dominant},contextual={keep - dominant}" + (f",{fixed}" if fixed else "")
    if base not in IN_LLM_BUDGETS:
        return method_spec(name, share, patches, llm_layers)
    span = frames * (patches + cls)
    return in_llm_spec(base, fixed, video_tokens(share, patches, frames, cls), span, llm_layers, after_last_stage=True)


def is_video_benchmark(benchmark: str) -> bool:
    """shapes_video and the video QA sets (msvd, msrvtt, tgif, activitynet, their _1k subsets): a video per question."""
    from llava.data.synthetic import VIDEO_LOOK
    from llava.eval import video_qa
    from llava.eval.shapes import LOOKS as SHAPES_LOOKS

    return SHAPES_LOOKS.get(benchmark) == VIDEO_LOOK or benchmark.removesuffix("_1k") in video_qa.SETS


def _fixed_keys(fixed: str) -> set[str]:
    """The parameter keys a method name's fixed part sets ('layers=2,4,seed=1' -> {layers, seed})."""
    return {item.partition("=")[0].strip() for item in fixed.split(",") if "=" in item}


def is_adaptive(method, tokens: int) -> bool:
    """A method that keeps what its rule finds (PruMerge): no budget to set."""
    from llava.model.pruning.base import VisionPruner

    return isinstance(method, VisionPruner) and method.budget(tokens) is None


def check_options(out, names, shares, limit, max_new_tokens, batch_size, device, n_questions=600) -> None:
    """InputError naming the first bad option; nothing is loaded, computed or written before this passes.
    The method names are checked here against a nominal image (`NOMINAL_TOKENS`); every share against the
    model's own token count in `check_budgets`, once its config is read."""
    from fastv.paths import check_output_dir
    from llava.device import resolve_device
    from llava.errors import InputError, check_at_least
    from llava.eval.options import check_run_options
    from llava.generate import check_generation_options
    from llava.model.pruning.registry import parse_method

    bad = [share for share in shares if not 0 < share <= 1]
    if bad or not shares:
        raise InputError(f"--shares must be fractions of the visual tokens kept, in (0, 1]; got {', '.join(map(str, bad or shares)) or 'none'}")
    for name in names:  # the registry's "unknown method ... did you mean" error, and bad fixed parameters
        base, _, fixed = name.partition(":")
        if base in FIXED_BUDGETS:
            for spec in fixed_budget_specs(name, 32):
                parse_method(spec)
        elif base in IN_LLM_BUDGETS:  # its fixed parameters, with a budget every such method takes
            where, release, knob = IN_LLM_BUDGETS[base]
            if knob in _fixed_keys(fixed):
                raise InputError(f"'{name}' sets {knob}, which the sweep solves for each share; leave it out")
            parse_method(f"{base}:{knob}={NOMINAL_BUDGET[knob]}" + (f",{fixed}" if fixed else ""))
        else:
            parse_method(method_spec(name, shares[0], NOMINAL_TOKENS))
    check_run_options(batch_size, limit)
    check_at_least("--n-questions", n_questions, 1, "the test questions a shapes benchmark generates")
    if max_new_tokens is not None:
        check_generation_options(max_new_tokens, 0.0)
    resolve_device(device)
    check_output_dir("--out", out)


def check_budgets(names, shares, config, video: bool = False) -> None:
    """Every method at every share, as the model will be asked to run it (`set_pruning`'s check against the
    checkpoint's config), before the first run: a share too small to keep one of the model's tokens is said
    now, not after the sweep's earlier runs. `video`: the shares of a video's frames (`video_spec`)."""
    from llava.errors import InputError
    from llava.model.pruning.registry import parse_method

    tokens = config.tokens_per_image
    per = "per partition" if config.anyres else "per frame" if video else "per image"
    layers = config.text.num_layers
    span = config.unpruned_video_tokens if video else 0
    for name in names:
        if name.partition(":")[0] in FIXED_BUDGETS:  # its own budgets, whatever the shares
            runs = [(None, spec) for spec in fixed_budget_specs(name, layers)]
        elif video:
            runs = [(share, video_spec(name, share, tokens, config.video.num_frames, config.video.cls == "keep",
                                       layers)) for share in shares]
        else:
            runs = [(share, method_spec(name, share, tokens, layers)) for share in shares]
        for share, spec in runs:
            if spec is None:  # an in-LLM method that cannot reach the share: its cell says n/a
                continue
            try:
                method = parse_method(spec)
                method.check_model(config.vision.num_layers, layers, tokens, config.anyres, span)
                if video:
                    method.check_video()
            except InputError as error:
                given = name if share is None else f"--shares {share:g} with {name}"
                raise InputError(f"{given} on the model's {tokens} visual tokens {per} is {spec}: {error}") from None


def generate_questions(folder: Path, question_file: str, n_questions: int, look: str, media: str = "images") -> None:
    """Write a shapes test split of `n_questions` in `look` into `folder` unless it holds questions already
    (`media`: the folder of its images, or of its clips: shapes_video's videos/).
    The split is written into a scratch folder beside it and moved in with the question file last, so that
    a run killed while writing leaves no question file and the next sweep writes the split again; a question
    file with no line (left by an earlier version given no questions) is written again too."""
    import tempfile

    from llava.data.synthetic import write_split

    questions = folder / question_file
    if questions.is_file() and questions.read_bytes().strip():
        return
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-writing-") as scratch:
        write_split("test", n_questions, scratch, look=look)
        written = Path(scratch)
        (folder / media).mkdir(exist_ok=True)
        for image in (written / media).iterdir():
            image.replace(folder / media / image.name)
        for file in sorted(p for p in written.iterdir() if p.is_file() and p.name != question_file):
            file.replace(folder / file.name)
        (written / question_file).replace(questions)  # last: the split is complete once this file exists


def default_model(benchmark: str, model_path: str | None) -> str:
    if model_path is None and benchmark == "shapes_hr":
        return model_or_shipped(None, SHIPPED_NEXT_MODEL)
    if model_path is None and is_video_benchmark(benchmark):
        return model_or_shipped(None, SHIPPED_VIDEO_MODEL)
    return model_or_shipped(model_path)


def main(
    out: str,
    model_path: str | None = None,
    benchmark: str = "shapes",
    data_root: str = "playground/data/eval",
    methods: list[str] | None = None,
    shares: list[float] | None = None,
    baseline_model: str | None = None,
    limit: int | None = None,
    n_questions: int = 600,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
) -> dict:
    from llava.errors import InputError
    from llava.eval.registry import get_benchmark
    from llava.eval.shapes import LOOKS as SHAPES_LOOKS
    from llava.eval.shapes import media_folder
    from llava.model.builder import read_checkpoint
    from llava.model.pruning.registry import available_methods
    from llava.pipeline import LlavaPipeline

    bench = get_benchmark(benchmark)
    check_options(out, methods or [], shares or DEFAULT_SHARES, limit, max_new_tokens, batch_size, device, n_questions)
    model_path = default_model(benchmark, model_path)
    config = read_checkpoint(model_path).config
    anyres = config.anyres
    video = is_video_benchmark(benchmark)
    if video and config.video is None:
        raise InputError(f"{benchmark} asks about videos, and {recorded_path(model_path)} has no video tower: "
                         "give a Video-LLaVA checkpoint (--model-path)")
    names = methods or (list(NEXT_METHODS) if anyres else list(VIDEO_METHODS) if video else available_methods())
    shares = list(shares or (NEXT_SHARES if anyres else VIDEO_SHARES if video else DEFAULT_SHARES))
    check_budgets(names, shares, config, video)
    if baseline_model is None and benchmark == "shapes_hr":
        baseline_model = model_or_shipped(None)
    baseline_model = None if baseline_model == "none" else baseline_model
    if baseline_model is not None:
        read_checkpoint(baseline_model)  # a bad folder fails now, not after the sweep
    if benchmark in SHAPES_LOOKS:
        generate_questions(Path(data_root) / bench.folder, bench.question_file, n_questions, SHAPES_LOOKS[benchmark],
                           media_folder(benchmark))

    options = dict(data_root=data_root, max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit)
    pipe = LlavaPipeline.load(model_path, device=device)
    tokens = pipe.model.config.tokens_per_image
    llm_layers = pipe.model.config.text.num_layers
    runs, done, unreachable, left_out = [], set(), [], []
    for name in names:
        if name.partition(":")[0] in FIXED_BUDGETS:
            for spec in fixed_budget_specs(name, llm_layers):
                spec = pipe.model.set_pruning(spec).spec
                runs.append(_run(benchmark, pipe, Path(out), name, spec, None, model_path, **options))
            continue
        image_tokens = tokens
        if anyres and name.partition(":")[0] in WHOLE_IMAGE_ON_NEXT:
            unpruned = next((r for r in runs if r["spec"] == "none" and r["method"] == "none"), None)
            if unpruned is None or not unpruned["visual_tokens"]:
                left_out.append({"method": name, "why": "on LLaVA-NeXT its budget counts a whole image's tokens, which"
                                                        " the sweep reads from the unpruned run ('none' before it)"})
                print(f"{name}: left out; {left_out[-1]['why']}")
                continue
            image_tokens = round(unpruned["visual_tokens"])
        for share in shares:
            spec = (video_spec(name, share, tokens, config.video.num_frames, config.video.cls == "keep", llm_layers)
                    if video else method_spec(name, share, image_tokens, llm_layers))
            if spec is None:  # an in-LLM method whose first layers alone exceed the share
                unreachable.append({"method": name, "share": share})
                continue
            spec = pipe.model.set_pruning(spec).spec
            if spec in done:  # none, and adaptive methods: one run
                continue
            done.add(spec)
            adaptive = spec == "none" or is_adaptive(pipe.model.pruning, tokens)
            runs.append(_run(benchmark, pipe, Path(out), name, spec, None if adaptive else share, model_path, **options))
    if baseline_model is not None:
        baseline = LlavaPipeline.load(baseline_model, device=device)
        runs.append(_run(benchmark, baseline, Path(out) / "baseline", "baseline", "none", None, baseline_model, **options))
    unpruned = next((r for r in runs if r["spec"] == "none"), None)
    for r in runs:  # prefill multiply-adds over the unpruned run's (same questions, same model)
        same_model = unpruned is not None and r["model"] == unpruned["model"]
        r["flops_ratio"] = (r["prefill_flops"] / unpruned["prefill_flops"]
                            if same_model and r["prefill_flops"] and unpruned["prefill_flops"] else None)
    result = {"model": recorded_path(model_path), "benchmark": benchmark, "anyres": anyres, "tokens_per_image": tokens,
              "llm_layers": llm_layers, "baseline_model": recorded_path(baseline_model), "runs": runs,
              "unreachable": unreachable, "left_out": left_out}
    if video:  # a share is of each frame's patches; the tokens a run matched: video_tokens
        result["video"] = {"frames": config.video.num_frames, "patches": tokens, "cls": config.video.cls == "keep",
                           "span": config.unpruned_video_tokens}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    table = to_markdown(result)
    (Path(out) / "sweep.md").write_text(table + "\n")
    plot(result, Path(out) / "sweep.png")
    print(table)
    return result


def _run(benchmark, pipe, out: Path, name: str, spec: str, share: float | None, model_path: str, **options) -> dict:
    """One (method, budget) in its own resumable run directory, as a row of the sweep."""
    from llava.eval.run import run_benchmark

    run_dir = out / spec.replace(":", "_").replace(",", "_").replace("=", "")
    scores = run_benchmark(benchmark, pipe, options["data_root"], run_dir, model_path=model_path, method=spec,
                           max_new_tokens=options["max_new_tokens"], batch_size=options["batch_size"],
                           limit=options["limit"], progress=False)
    metrics = scores["metrics"]
    return {
        "method": name, "spec": spec, "share": share, "model": recorded_path(model_path),
        "kept_tokens": scores["run"].get("kept_tokens_mean"), "visual_tokens": scores["run"].get("visual_tokens_mean"),
        "visual_per_layer": scores["run"].get("visual_tokens_per_layer_mean"),
        "prefill_flops": prefill_flops(run_dir, scores["run"].get("llm")),
        "questions": scores["run"]["questions"],
        "accuracy": metrics.get("accuracy", scores["headline"]["value"]),
        "types": metrics.get("types", {}),
    }


def prefill_flops(run_dir: Path, llm: dict | None) -> float | None:
    """The LLM prefill's multiply-adds (the FastV paper's formula over each layer's real length, fastv.flops), the
    mean over the run's answers with an image; None without per-layer lengths."""
    from fastv.flops import paper_llm_flops
    from llava.eval.runfolder import read_answers

    if not llm:
        return None
    per_answer = [paper_llm_flops(line["metadata"]["layer_tokens"], llm["hidden_size"], llm["intermediate_size"])[0]
                  for line in read_answers(run_dir).values()
                  if (line.get("metadata") or {}).get("layer_tokens") and line["metadata"].get("visual_tokens")]
    return sum(per_answer) / len(per_answer) if per_answer else None


def to_markdown(result: dict) -> str:
    runs = result["runs"]
    shares = sorted({r["share"] for r in runs if r["share"] is not None}, reverse=True)
    tokens = result["tokens_per_image"]
    per = "per partition (base view and crops alike)" if result.get("anyres") else "per image"
    header = " | ".join(f"{s:.0%} ({round(s * tokens)})" for s in shares)
    video = result.get("video")
    if video:  # each share's column: the video tokens the LLM runs on once pruned (video_tokens)
        header = " | ".join(f"{s:.0%} ({video_tokens(s, tokens, video['frames'], video['cls'])})" for s in shares)
    counts = sorted({r.get("questions") for r in runs}, key=str)
    over = (f"over {counts[0]} questions each" if len(counts) == 1
            else f"over different numbers of questions ({', '.join(map(str, counts))}: see the per-type table)")
    adaptive = [r for r in runs if r["share"] is None and r["spec"] != "none"]
    lines = [
        f"Accuracy (%) on {result['benchmark']}, by method and share of the {tokens} visual tokens {per}, matched as the"
        f" visual tokens per decoder layer (mean over the {result.get('llm_layers', '?')} layers; an in-LLM method's"
        f" first layers see them all), {over}; n/a: an in-LLM method cannot get that low",
        "",
        f"| method | {header} |" + (" adaptive or fixed budgets (visual tokens per layer) |" if adaptive else ""),
        "|---|" + "---:|" * (len(shares) + bool(adaptive)),
    ]
    if video:
        cls = " + its [CLS]" if video["cls"] else ""
        lines[0] = (f"Accuracy (%) on {result['benchmark']}, by method and share of each frame's {tokens} patches, matched"
                    f" as the video tokens the LLM runs on once pruned (in brackets): a per-frame method keeps"
                    f" round(share x {tokens}) patches{cls} in each of the {video['frames']} frames, an in-LLM method"
                    f" that many over the whole span of {video['span']} tokens after its last stage (its first layers"
                    f" see them all: the per-layer and FLOPs columns below), {over}")
    blank = " |" * (len(shares) - 1 + bool(adaptive))
    for r in runs:
        if r["spec"] == "none":
            label = "none (unpruned)" if r["method"] != "baseline" else f"baseline: {Path(r['model']).name}, unpruned"
            lines.append(f"| {label} | {_number(r['accuracy'])} |" + blank)
    for name in dict.fromkeys(r["method"] for r in runs if r["spec"] != "none"):
        by_share = {r["share"]: r for r in runs if r["method"] == name}
        out_of_reach = {u["share"] for u in result.get("unreachable", []) if u["method"] == name}
        cells = [_number(by_share[s]["accuracy"]) if s in by_share else ("n/a" if s in out_of_reach else "")
                 for s in shares]
        if adaptive:
            reached = [r for r in runs if r["method"] == name and r["share"] is None]
            cells.append(", ".join(f"{_number(r['accuracy'])} ({_tokens(r)})" for r in reached))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    for item in result.get("left_out", []):
        lines += ["", f"Left out: {item['method']} ({item['why']})."]
    types = sorted({t for r in runs for t in r["types"]})
    kept_unit = ("per video after the last stage (every frame's, [CLS] included), mean" if video else
                 "per image after the last stage, mean, newline tokens not counted")
    lines += ["", f"Per run (kept: visual tokens {kept_unit}; per layer:"
                  " visual tokens each decoder layer ran on, mean over layers and questions; FLOPs: LLM prefill"
                  " multiply-adds by the FastV paper's formula over the measured per-layer lengths, over the unpruned"
                  " run's; \"-\": the run had no question of that type):", "",
              "| method | kept | per layer | FLOPs | questions | " + " | ".join(types) + " |",
              "|---|---:|---:|---:|---:|" + "---:|" * len(types)]
    for r in runs:
        kept = f"{r['kept_tokens']:.0f}" if r["kept_tokens"] is not None else ""
        per_layer = f"{r['visual_per_layer']:.1f}" if r.get("visual_per_layer") is not None else ""
        flops = f"{r['flops_ratio']:.3f}" if r.get("flops_ratio") is not None else ""
        cells = " | ".join(_number(r["types"].get(t)) for t in types)
        spec = r["spec"] if r["method"] != "baseline" else f"baseline ({Path(r['model']).name})"
        lines.append(f"| {spec} | {kept} | {per_layer} | {flops} | {r.get('questions', '')} | {cells} |")
    return "\n".join(lines)


def _tokens(run: dict) -> str:
    """The tokens a run reached: visual tokens per layer where measured, else those kept."""
    value = run.get("visual_per_layer") if run.get("visual_per_layer") is not None else run["kept_tokens"]
    return f"{value:.0f}"


def _number(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def plot(result: dict, path: Path) -> None:
    """Accuracy against the visual tokens each run's decoder layers really ran on (mean per layer and image; the
    tokens kept where not measured), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.4))
    colors = plt.get_cmap("tab10").colors
    for line, name in enumerate(dict.fromkeys(r["method"] for r in result["runs"])):
        runs = [r for r in result["runs"] if r["method"] == name and r["accuracy"] is not None]
        if not runs:
            continue
        if runs[0]["spec"] == "none":
            style = dict(color="black", linestyle="--") if name != "baseline" else dict(color="gray", linestyle=":")
            label = "none (unpruned)" if name != "baseline" else f"{Path(runs[0]['model']).name}, unpruned"
            axis.axhline(runs[0]["accuracy"], linewidth=1, label=label, **style)
            continue
        points = sorted((r["visual_per_layer"] if r.get("visual_per_layer") is not None else r["kept_tokens"],
                         r["accuracy"]) for r in runs)
        second_round = line >= len(colors)  # past ten lines the colours repeat: another marker and dashes tell them apart
        axis.plot([t for t, _ in points], [a for _, a in points], color=colors[line % len(colors)],
                  marker=("s" if second_round else "o") if len(points) > 1 else "*",
                  markersize=5 if len(points) > 1 else 10,
                  linestyle=("--" if second_round else "-") if len(points) > 1 else "", label=name)
    axis.set_xscale("log")
    axis.set_xlabel("visual tokens per decoder layer (mean over layers and images)")
    axis.set_ylabel("accuracy (%)")
    axis.set_title(f"{result['benchmark']}: accuracy vs visual tokens ({Path(result['model']).name})")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
