"""`fastv demo`: a web page to try the pruning methods on an image (Gradio, the `demo` extra).

    fastv demo                                   # the shipped model, http://127.0.0.1:7860
    fastv demo --model-path checkpoints/llava-v1.5-7b --port 8000

Upload an image or pick the shipped example, ask a question, choose the method, its budget and FastV's
layer: the page shows the pruned answer beside the unpruned one, each with its time to first token and
visual tokens, the kept-token overlay (fastv/overlay.py) and the per-layer attention maps of the
unpruned model (fastv/attention.py). It binds to 127.0.0.1 unless `--host` says otherwise. A file that is
not an image, or is larger than MAX_UPLOAD_MB, gets a message on the page, never a stack trace.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from pathlib import Path

from llava.errors import CheckpointError, InputError

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "shapes.png"
MAX_UPLOAD_MB = 20
METHODS = ("fastv", "fastervlm", "hired", "prumerge", "prumerge+", "random", "uniform", "none")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--port", type=int, default=7860, help="port [default: 7860]")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind [default: 127.0.0.1, this machine only]")


def method_spec(method: str, budget: float, layer: int) -> str:
    """The page's choices -> a spec: `budget` is tokens kept per image (per partition on NeXT), HiRED's rate
    as a fraction; PruMerge and none take none."""
    if method in ("none", "prumerge", "prumerge+"):
        return method
    if method == "hired":
        return f"hired:rate={budget:g}"
    keep = int(budget)
    if keep != budget:
        raise InputError(f"{method} keeps a whole number of tokens; the budget {budget:g} is not one (HiRED takes a rate)")
    return f"fastv:k={layer},keep={keep}" if method == "fastv" else f"{method}:keep={keep}"


class Demo:
    """The page's one handler, on one loaded model (requests take turns: the model is shared)."""

    def __init__(self, model_path: str | None = None):
        from llava.pipeline import LlavaPipeline

        from fastv.cli import model_or_shipped

        self.pipe = LlavaPipeline.load(model_or_shipped(model_path))
        self.lock = threading.Lock()
        self.folder = Path(tempfile.mkdtemp(prefix="fastv-demo-"))

    def ask(self, image_path, question: str, method: str, budget: float, layer: int):
        """-> (message, pruned answer, unpruned answer, overlay image, attention maps path); the message is
        empty unless something was wrong with the input."""
        try:
            return ("", *self._ask(image_path, question, method, budget, layer))
        except (InputError, CheckpointError, OSError) as error:
            return f"**Error:** {error}", "", "", None, None

    def _ask(self, image_path, question, method, budget, layer):
        from fastv.attention import analyse, draw
        from fastv.overlay import render
        from llava.mm_utils import load_image
        from llava.pipeline import Request

        if not image_path:
            raise InputError("upload an image or pick the example first")
        size_mb = Path(image_path).stat().st_size / 2**20
        if size_mb > MAX_UPLOAD_MB:
            raise InputError(f"the image is {size_mb:.1f} MB; the limit is {MAX_UPLOAD_MB} MB")
        picture = load_image(str(image_path))  # InputError for a file that is not an image
        if not (question or "").strip():
            raise InputError("type a question")
        spec = method_spec(method, float(budget), int(layer))
        request = Request(image=picture, text=question.strip())
        model = self.pipe.model
        with self.lock:
            try:
                model.set_pruning(spec)
                shown = self.pipe.method_spec
                (pruned,) = self.pipe.answer([request], max_new_tokens=32)
                picture_kept = render(self.pipe, request, pruned)
                model.set_pruning("none")
                (full,) = self.pipe.answer([request], max_new_tokens=32)
                result = analyse(self.pipe, picture, request.text, max_new_tokens=8, overlay_layer=max(int(layer) - 1, 0))
                out = Path(tempfile.mkdtemp(dir=self.folder))
                draw(self.pipe, result, out)
            finally:
                model.set_pruning("none")
        answers = _describe(pruned, shown, int(layer)), _describe(full, "unpruned", int(layer))
        return (*answers, picture_kept, str(out / "heatmaps.png"))


def _describe(answer, name: str, layer: int) -> str:
    """The answer, then what went in: '(fastv:keep=20: 144 visual tokens, 20 kept after layer 2, time to first token 38 ms)'."""
    visual, kept = sum(answer.visual_tokens), sum(len(k) for k in answer.kept)
    after = f", {kept} kept after layer {layer}" if name.startswith("fastv") and kept != visual else ""
    return f"{answer.text}\n\n({name}: {visual} visual tokens{after}, time to first token {answer.prefill_s * 1000:.0f} ms)"


def build(demo: Demo):
    import gradio as gr

    layers = demo.pipe.model.config.text.num_layers
    with gr.Blocks(title="llava-fastv demo") as page:
        gr.Markdown("# Visual-token pruning for LLaVA\nAsk a question about an image; compare a pruned answer with "
                    "the unpruned one, and see which patches the method kept.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="image", elem_id="image", sources=["upload"])
                gr.Examples([[str(EXAMPLE)]], inputs=[image], label="shipped example")
                question = gr.Textbox(label="question", value="What color is the star?", elem_id="question")
                method = gr.Dropdown(list(METHODS), value="fastervlm", label="method", elem_id="method")
                budget = gr.Number(value=36, label="budget: tokens kept per image (per partition on NeXT); HiRED: rate",
                                   elem_id="budget")
                layer = gr.Slider(1, max(layers - 1, 1), value=min(2, max(layers - 1, 1)), step=1,
                                  label="FastV layer K", elem_id="layer")
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column():
                message = gr.Markdown(elem_id="message")
                pruned = gr.Textbox(label="pruned answer", elem_id="pruned-answer", lines=3)
                full = gr.Textbox(label="unpruned answer", elem_id="full-answer", lines=3)
                overlay = gr.Image(label="kept patches (outlined) and dropped ones (dimmed)", elem_id="overlay")
                maps = gr.Image(label="attention per decoder layer (unpruned)", elem_id="maps")
        ask.click(demo.ask, inputs=[image, question, method, budget, layer],
                  outputs=[message, pruned, full, overlay, maps])
    return page


def main(model_path: str | None = None, port: int = 7860, host: str = "127.0.0.1") -> None:
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise InputError('the demo needs Gradio: pip install -e ".[demo]"') from error
    if not 0 < port < 65536:
        raise InputError(f"--port must be in 1..65535, got {port}")
    page = build(Demo(model_path))
    print(f"fastv demo on http://{host}:{port} (Ctrl-C stops it)", flush=True)
    page.launch(server_name=host, server_port=port, show_error=False)
