"""`fastv`: one command, one plain function per subcommand.

    fastv run --model-path P --image IMG --prompt TEXT [--method SPEC] [--json]
    fastv methods                       list the registered pruning methods and their parameters
    fastv bench [...]                   TTFT, decode, memory, KV cache: every method beside transformers (fastv/latency.py)
    fastv sweep --out DIR [...]         accuracy of every method at several budgets on one benchmark (fastv/sweep.py)
    fastv report RUN_DIRS... [--out T]  the paper-style table of evaluation runs (fastv/report.py)
    fastv flops [--preset NAME] [...]   analytic FLOPs of every method from real sequence lengths (fastv/flops_table.py)
    fastv attn --image I --prompt T --out DIR   where the LLM's attention goes, per layer (fastv/attention.py)
    fastv analyze shift|dispersion --out DIR    FasterVLM's analyses of text vs [CLS] attention (fastv/analyze.py)
    fastv demo [--model-path P] [--port N]      the web demo (Gradio; fastv/demo.py)

Errors the user can fix print one line, `error: ...`, and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from llava.conversation import conv_templates
from llava.errors import CheckpointError, InputError, print_error

# The small LLaVAs the project trains and ships (MODEL_CARD.md in each folder).
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "llava-shapes-tiny"
SHIPPED_NEXT_MODEL = Path(__file__).resolve().parents[1] / "models" / "llava-next-shapes-tiny"


def model_or_shipped(model_path: str | None, shipped: Path = SHIPPED_MODEL) -> str:
    """`model_path`, or a shipped model's folder (LLaVA-1.5's by default) when none is given (InputError if this
    checkout lacks it)."""
    if model_path is not None:
        return model_path
    if not (shipped / "config.json").is_file():
        raise InputError(f"no --model-path given and the shipped model is not in this checkout ({shipped})")
    return str(shipped)

METHOD_HELP = (
    "pruning method spec, name:key=value,... e.g. 'fastervlm:keep=58' (keep = visual tokens kept per image), "
    "'fastv:k=2,keep=144' or 'fastv:k=2,ratio=0.75' (ratio = fraction of image tokens DROPPED), "
    "'random:keep=64,seed=0', 'none'. See `fastv methods`."
)


def run(
    model_path: str | None,
    image: str | None,
    prompt: str,
    method: str = "none",
    conv_mode: str = "vicuna_v1",
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    device: str = "cpu",
    vision_tower: str | None = None,
    as_json: bool = False,
    patch_merge: str | None = None,
    image_grid: str | None = None,
    overlay: str | None = None,
) -> dict:
    """Answer one question about one image (None: a text-only prompt) and report what pruning kept
    and how long it took. Every option is checked before a model is loaded (the LLaVA-NeXT ones,
    `patch_merge` and `image_grid`, against the checkpoint's config, before its weights). `overlay`: also
    write the kept-token overlay there (fastv/overlay.py)."""
    from fastv.paths import check_output_file
    from llava.conversation import conversation_template
    from llava.generate import check_generation_options
    from llava.mm_utils import load_image
    from llava.device import resolve_device
    from llava.model.pruning.registry import parse_method
    from llava.pipeline import LlavaPipeline, Request

    parse_method(method)
    conversation_template(conv_mode)
    resolve_device(device)
    check_generation_options(max_new_tokens, temperature)
    if not prompt.strip():
        raise InputError("the prompt is empty")
    if "<image>" in prompt:
        raise InputError("write the prompt without '<image>': the image goes in front of it, as in LLaVA-1.5")
    if overlay is not None and image is None:
        raise InputError("--overlay draws the kept patches on the image: give --image too")
    if overlay is not None:
        check_output_file("--overlay", overlay, what="the PNG file")
    model_path = model_or_shipped(model_path)
    picture = load_image(image) if image is not None else None  # --image "" is a missing image, not no image
    pipe = LlavaPipeline.load(model_path, method=method, conv_mode=conv_mode, device=device, vision_tower=vision_tower,
                              patch_merge=patch_merge, image_grid=image_grid)
    (answer,) = pipe.answer([Request(image=picture, text=prompt)], max_new_tokens=max_new_tokens, temperature=temperature)
    result = {"method": pipe.method_spec, **dataclasses.asdict(answer)}
    result["answer"] = result.pop("text")
    if overlay is not None:
        from fastv.overlay import write_overlay

        result["overlay"] = str(write_overlay(overlay, pipe, Request(image=picture, text=prompt), answer))
    if as_json:
        print(json.dumps(result))
    else:
        config = pipe.model.config
        visual = ", ".join(str(n) for n in answer.visual_tokens) or "0 (no image)"
        print(f"answer: {answer.text}")
        print(f"method: {pipe.method_spec}")
        if config.anyres:
            grids = ", ".join(f"{rows}x{cols} crops" for rows, cols in answer.partition_grid)
            per = f"{config.tokens_per_image} per partition; {grids}; {config.patch_merge} merge"
        else:
            per = f"{config.tokens_per_image} per image"
        print(f"visual tokens entering the LLM: {visual} (of {per})")
        if answer.kept and len(answer.kept[0]) != (answer.visual_tokens or [0])[0]:
            print(f"visual tokens kept after in-LLM pruning: {', '.join(str(len(k)) for k in answer.kept)}")
        print(f"prefill (time to first token): {answer.prefill_s:.3f} s, total: {answer.total_s:.3f} s")
        if overlay is not None:
            print(f"kept-token overlay: {result['overlay']}")
    return result


def methods() -> None:
    """Print every registered method with its parameters and defaults."""
    from llava.model.pruning.registry import available_methods, method_class

    for name in available_methods():
        cls = method_class(name)
        params = []
        for f in dataclasses.fields(cls.Args):
            default = "" if f.default is dataclasses.MISSING else f"={f.default}"
            params.append(f"{f.name}{default}")
        print(f"{name:10s} {cls.summary}")
        print(f"{'':10s} parameters: {', '.join(params) or '(none)'}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastv", description="Training-free visual-token pruning for LLaVA.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="answer a question about an image, with a pruning method")
    p.add_argument("--model-path", help="llava-hf or original LLaVA checkpoint folder (default: the shipped model)")
    p.add_argument("--image", help="image file (leave the option out for a text-only prompt)")
    p.add_argument("--prompt", required=True, help="the question, without <image>")
    p.add_argument("--method", default="none", help=METHOD_HELP)
    p.add_argument("--conv-mode", default="vicuna_v1", help=f"conversation template ({', '.join(conv_templates)})")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated at most")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature, >= 0 (0 = greedy)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (checked against this machine)")
    p.add_argument("--vision-tower",
                   help="CLIP folder of an original-LLaVA checkpoint (instead of mm_vision_tower); not for llava-hf folders")
    p.add_argument("--patch-merge", metavar="spatial|spatial_unpad",
                   help="LLaVA-NeXT: how the crops become tokens (default: the checkpoint's; FasterVLM's protocol: spatial)")
    p.add_argument("--image-grid", metavar="WxH",
                   help="LLaVA-NeXT: cut every image into this canvas in pixels, e.g. 672x672 (default: the best of the"
                        " checkpoint's image_grid_pinpoints)")
    p.add_argument("--overlay", metavar="FILE.png",
                   help="also write the image with the kept patches outlined and the dropped ones dimmed (NeXT: a"
                        " panel per partition)")
    p.add_argument("--json", dest="as_json", action="store_true",
                   help="print one JSON object (kept_partitions and partition_grid per image: see docs/PIPELINE_API.md)")

    sub.add_parser("methods", help="list the pruning methods and their parameters")

    from fastv import analyze, attention, demo, flops_table, latency, report, sweep

    latency.add_arguments(sub.add_parser("bench", aliases=["bench-prefill"], help=latency.__doc__.splitlines()[0],
                                         description=latency.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    sweep.add_arguments(sub.add_parser("sweep", help=sweep.__doc__.splitlines()[0]))
    report.add_arguments(sub.add_parser("report", help="the paper-style table of evaluation runs (Markdown and CSV)"))
    flops_table.add_arguments(sub.add_parser("flops", help=flops_table.__doc__.splitlines()[0]))
    attention.add_arguments(sub.add_parser("attn", help=attention.__doc__.splitlines()[0]))
    analyze.add_arguments(sub.add_parser("analyze", help=analyze.__doc__.splitlines()[0]))
    demo.add_arguments(sub.add_parser("demo", help=demo.__doc__.splitlines()[0]))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    command = args.pop("command")
    try:
        if command == "run":
            run(**args)
        elif command == "methods":
            methods()
        elif command in ("bench", "bench-prefill"):
            from fastv import latency

            latency.main(**args)
        elif command == "sweep":
            from fastv import sweep

            sweep.main(**args)
        elif command == "report":
            from fastv import report

            print(report.report(**args))
        elif command == "flops":
            from fastv import flops_table

            flops_table.main(**args)
        elif command == "attn":
            from fastv import attention

            attention.main(**args)
        elif command == "analyze":
            from fastv import analyze

            analyze.main(**args)
        elif command == "demo":
            from fastv import demo

            demo.main(**args)
    except (InputError, CheckpointError, OSError) as error:  # OSError: a file that cannot be read or written
        return print_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
