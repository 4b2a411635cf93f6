"""`fastv`: one command, one module (or package) per subcommand; this file parses the arguments and dispatches.

    fastv run --model-path P --image IMG --prompt TEXT [--method SPEC] [--json]   (fastv/run.py)
    fastv methods                       list the registered pruning methods and their parameters (fastv/methods.py)
    fastv bench [...]                   TTFT, decode, memory, KV cache: every method beside transformers (fastv/bench/)
    fastv bench-vllm [...]              answers per second of the vLLM backend against ours, batch 1/8/32 (fastv/bench_vllm.py)
    fastv sweep --out DIR [...]         accuracy of every method at several budgets on one benchmark (fastv/sweep.py)
    fastv report RUN_DIRS... [--out T]  the paper-style table of evaluation runs (fastv/report.py)
    fastv flops [--preset NAME] [...]   analytic FLOPs of every method from real sequence lengths (fastv/flops_table.py)
    fastv attn --image I --prompt T --out DIR   where the LLM's attention goes, per layer (fastv/attention.py)
    fastv analyze shift|dispersion --out DIR    FasterVLM's analyses of text vs [CLS] attention (fastv/analyze.py)
    fastv demo [--model-path P] [--port N]      the web demo (Gradio; fastv/demo.py)
    fastv serve [--model-path P] [--method SPEC] [--backend torch|vllm] [--port N]   OpenAI-compatible server (fastv/serve.py)

What the subcommands share lives below them (fastv/shipped.py, fastv/paths.py, fastv/output.py, fastv/prompt.py,
fastv/attention_maps.py); none imports this file. Errors the user can fix print one line, `error: ...`, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from fastv import analyze, attention, bench, bench_vllm, demo, flops_table, methods, report, run, serve, sweep
from llava.errors import CheckpointError, InputError, print_error

COMMANDS = {  # subcommand -> what runs it, given the parsed options
    "run": run.main,
    "methods": methods.main,
    "bench": bench.main,
    "bench-prefill": bench.main,
    "bench-vllm": bench_vllm.main,
    "sweep": sweep.main,
    "report": lambda **options: print(report.report(**options)),
    "flops": flops_table.main,
    "attn": attention.main,
    "analyze": analyze.main,
    "demo": demo.main,
    "serve": serve.main,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastv", description="Training-free visual-token pruning for LLaVA.")
    sub = parser.add_subparsers(dest="command", required=True)
    run.add_arguments(sub.add_parser("run", help="answer a question about an image, with a pruning method"))
    sub.add_parser("methods", help="list the pruning methods and their parameters")
    bench.add_arguments(sub.add_parser("bench", aliases=["bench-prefill"], help=bench.__doc__.splitlines()[0],
                                       description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    bench_vllm.add_arguments(sub.add_parser("bench-vllm", help=bench_vllm.__doc__.splitlines()[0], description=bench_vllm.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    sweep.add_arguments(sub.add_parser("sweep", help=sweep.__doc__.splitlines()[0]))
    report.add_arguments(sub.add_parser("report", help="the paper-style table of evaluation runs (Markdown and CSV)"))
    flops_table.add_arguments(sub.add_parser("flops", help=flops_table.__doc__.splitlines()[0]))
    attention.add_arguments(sub.add_parser("attn", help=attention.__doc__.splitlines()[0]))
    analyze.add_arguments(sub.add_parser("analyze", help=analyze.__doc__.splitlines()[0]))
    demo.add_arguments(sub.add_parser("demo", help=demo.__doc__.splitlines()[0]))
    serve.add_arguments(sub.add_parser("serve", help="an OpenAI-compatible chat server, a pruning method per request",
                                       description=serve.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def main(argv: list[str] | None = None) -> int:
    options = vars(_parser().parse_args(argv))
    command = options.pop("command")
    try:
        COMMANDS[command](**options)
    except (InputError, CheckpointError, OSError) as error:  # OSError: a file that cannot be read or written
        return print_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
