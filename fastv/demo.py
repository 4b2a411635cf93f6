"""`fastv demo`: a web page to try the pruning methods on an image (Gradio, the `demo` extra).

    fastv demo                                   # the shipped model, http://127.0.0.1:7860
    fastv demo --model-path checkpoints/llava-v1.5-7b --port 8000
    fastv demo --max-upload-mb 5                 # refuse images over 5 MB

Upload an image or pick the shipped example, ask a question, choose the method, its budget and FastV's
layer: the page shows the pruned answer beside the unpruned one, each with its time to first token and
visual tokens, the kept-token overlay (fastv/overlay.py) and the per-layer attention maps of the
unpruned model (fastv/attention_maps.py). It binds to 127.0.0.1 unless `--host` says otherwise. A file that is
not an image or is larger than `--max-upload-mb`, an empty question or budget, or a value the page does not
offer (sent to its HTTP API) gets a one-line message on the page, never a stack trace: the page's values
reach the handler as sent (Gradio decodes and checks none of them), and the handler checks each itself.

With a Video-LLaVA checkpoint (`--model-path` a folder with a video tower) the page also takes a video: upload a
clip (any container PyAV decodes: mp4, webm, avi, mkv, gif, ...), ask, and see the pruned and unpruned answers
with the strip of the 8 sampled frames, each frame's kept patches outlined and its count in its title. The budget
is patches kept per frame, except FastV's, which counts tokens over the whole video (VIDEO.md R2).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import threading
from pathlib import Path

from fastv.shipped import EXAMPLE_IMAGE, model_or_shipped
from llava.errors import CheckpointError, InputError

MAX_UPLOAD_MB = 20
METHODS = ("fastv", "fastervlm", "hired", "prumerge", "prumerge+", "random", "uniform", "none")
VIDEO_METHODS = ("fastv", "fastervlm", "random", "uniform", "none")  # per frame, or (FastV) over the whole video


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", help="checkpoint folder (default: the shipped model)")
    parser.add_argument("--port", type=int, default=7860, help="port [default: 7860]")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind [default: 127.0.0.1, this machine only]")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB,
                        help=f"largest image or video file accepted, in MB of 2**20 bytes [default: {MAX_UPLOAD_MB}]")


def method_spec(method: str, budget, layer: int, offered: tuple[str, ...] = METHODS) -> str:
    """The page's choices -> a spec: `budget` is tokens kept per image (per partition on NeXT; per frame of a
    video, FastV's over the whole video), HiRED's rate as a fraction; PruMerge and none take none (their budget
    field may be empty). `offered`: the methods the page offers for this input."""
    if method not in offered:
        raise InputError(f"unknown method {method!r}; the page offers {', '.join(offered)}")
    if method in ("none", "prumerge", "prumerge+"):
        return method
    budget = _number(budget, "budget")
    if method == "hired":
        return f"hired:rate={budget:g}"
    keep = int(budget)
    if keep != budget:
        raise InputError(f"{method} keeps a whole number of tokens; the budget {budget:g} is not one (HiRED takes a rate)")
    return f"fastv:k={layer},keep={keep}" if method == "fastv" else f"{method}:keep={keep}"


class Demo:
    """The page's one handler, on one loaded model (requests take turns: the model is shared)."""

    def __init__(self, model_path: str | None = None, max_upload_mb: float = MAX_UPLOAD_MB):
        from llava.pipeline import LlavaPipeline

        self.pipe = LlavaPipeline.load(model_or_shipped(model_path))
        self.video = self.pipe.model.config.video is not None  # Video-LLaVA: the page takes videos too
        self.max_upload_mb = max_upload_mb
        self.lock = threading.Lock()
        self.folder = Path(tempfile.mkdtemp(prefix="fastv-demo-"))

    def ask(self, image, question, method, budget, layer):
        """-> (message, pruned answer, unpruned answer, overlay image, attention maps path); the message is
        empty unless something was wrong with the input. The values come as the page (or a client of its
        HTTP API) sent them: `image` is Gradio's file record {"path": ...} or a path, the rest unchecked."""
        try:
            return ("", *self._ask(image, question, method, budget, layer))
        except (InputError, CheckpointError, OSError) as error:
            return f"**Error:** {error}", "", "", None, None

    def _ask(self, image, question, method, budget, layer):
        from fastv.attention_maps import analyse, draw
        from llava.pipeline import Request

        picture = self._read_upload(image)
        text, layer = self._question_and_layer(question, layer)
        spec = method_spec(method, budget, layer)
        request = Request(image=picture, text=text)

        def heatmaps():  # FastV's view of the unpruned answer, drawn while the model is still ours
            out = Path(tempfile.mkdtemp(dir=self.folder))
            draw(self.pipe, analyse(self.pipe, picture, request.text, max_new_tokens=8,
                                    overlay_layer=max(layer - 1, 0)), out)
            return str(out / "heatmaps.png")

        return self._pruned_and_unpruned(request, spec, layer, then=heatmaps)

    def ask_video(self, video, question, method, budget, layer):
        """-> (message, pruned answer, unpruned answer, the frames' strip); as `ask`, for a video (Video-LLaVA)."""
        try:
            return ("", *self._ask_video(video, question, method, budget, layer))
        except (InputError, CheckpointError, OSError) as error:
            return f"**Error:** {error}", "", "", None

    def _ask_video(self, video, question, method, budget, layer):
        from llava.pipeline import Request
        from llava.video import read_video

        if not self.video:
            raise InputError(f"{self.pipe.model_id} is an image model: start the demo with a Video-LLaVA checkpoint"
                             " (--model-path) for videos")
        path = self._uploaded_path(video, "video")
        text, layer = self._question_and_layer(question, layer)
        spec = method_spec(method, budget, layer, VIDEO_METHODS)
        clip = read_video(path, self.pipe.model.config.video.num_frames)  # InputError: not a video, too few frames
        request = Request(image=None, text=text, video=clip)
        return self._pruned_and_unpruned(request, spec, layer)[:3]

    def _question_and_layer(self, question, layer) -> tuple[str, int]:
        """The typed question, stripped, and the FastV layer K as a checked whole number."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("type a question")
        last = max(self.pipe.model.config.text.num_layers - 1, 1)
        return question.strip(), _whole_number(layer, "FastV layer K", 1, last)

    def _pruned_and_unpruned(self, request, spec, layer, then=None):
        """-> (the pruned answer described, the unpruned one, the kept-token overlay, what `then()` returned): both
        answers on the shared model under the lock, which is left unpruned whatever happens."""
        from fastv.overlay import render

        model = self.pipe.model
        with self.lock:
            try:
                model.set_pruning(spec)
                shown = self.pipe.method_spec
                (pruned,) = self.pipe.answer([request], max_new_tokens=32)
                overlay = render(self.pipe, request, pruned)
                model.set_pruning("none")
                (full,) = self.pipe.answer([request], max_new_tokens=32)
                extra = then() if then is not None else None
            finally:
                model.set_pruning("none")
        return _describe(pruned, shown, layer), _describe(full, "unpruned", layer), overlay, extra

    def _uploaded_path(self, upload, what: str) -> str:
        """The uploaded file's path (Gradio's file record {"path": ...}, or a path), its size checked on disk."""
        path = upload.get("path") if isinstance(upload, dict) else upload
        if not path:
            raise InputError(f"upload an {what} or pick the example first" if what == "image" else f"upload a {what} first")
        if not isinstance(path, str):
            raise InputError(f"the {what} must be an uploaded file, got {path!r}")
        size_mb = Path(path).stat().st_size / 2**20
        if size_mb > self.max_upload_mb:
            raise InputError(f"the {what} is {size_mb:.1f} MB; the limit is {self.max_upload_mb:g} MB")
        return path

    def _read_upload(self, image):
        """The uploaded picture, its size checked on disk before a byte of it is decoded."""
        from llava.mm_utils import load_image

        return load_image(self._uploaded_path(image, "image"))  # InputError for a file that is not an image


def _number(value, name: str) -> float:
    """A field's value as a finite number: the page sends None for an empty field, an API client anything."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"type a {name}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise InputError(f"the {name} must be a number, got {value!r}")
    return number


def _whole_number(value, name: str, low: int, high: int) -> int:
    """A field's value as a whole number in low..high, the range the page's slider offers."""
    number = _number(value, name)
    if number != int(number) or not low <= number <= high:
        raise InputError(f"the {name} must be a whole number in {low}..{high}, got {value!r}")
    return int(number)


def _describe(answer, name: str, layer: int) -> str:
    """The answer, then what went in: '(fastv:keep=20: 144 visual tokens, 20 kept after layer 2, time to first token 38 ms)';
    a video adds the patches kept per frame: '...; patches per frame: 16, 16, ...)'."""
    visual, kept = sum(answer.visual_tokens), sum(len(k) for k in answer.kept)
    after = f", {kept} kept after layer {layer}" if name.startswith("fastv") and kept != visual else ""
    frames = ""
    if answer.kept_frames is not None:
        frames = f"; patches per frame: {', '.join(str(len(k)) for k in answer.kept_frames)}"
    return (f"{answer.text}\n\n({name}: {visual} visual tokens{after}, time to first token "
            f"{answer.prefill_s * 1000:.0f} ms{frames})")


def build(demo: Demo):
    import gradio as gr

    layers = demo.pipe.model.config.text.num_layers
    with gr.Blocks(title="llava-fastv demo") as page:
        gr.Markdown("# Visual-token pruning for LLaVA\nAsk a question about an image; compare a pruned answer with "
                    "the unpruned one, and see which patches the method kept.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="image", elem_id="image", sources=["upload"])
                gr.Examples([[str(EXAMPLE_IMAGE)]], inputs=[image], label="shipped example")
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
        # preprocess=False: Gradio would decode the upload and check the fields before the handler, and a
        # failure there shows only "Error" on the page and a traceback in the log; the handler checks them.
        ask.click(demo.ask, inputs=[image, question, method, budget, layer],
                  outputs=[message, pruned, full, overlay, maps], preprocess=False, api_name="ask")
        if demo.video:
            video_section(demo, layers)
    return page


def video_section(demo: Demo, layers: int) -> None:
    """Video-LLaVA: a video upload, its question and method, the answers and the strip of the sampled frames."""
    import gradio as gr

    from llava.video import NUM_FRAMES

    gr.Markdown(f"## A video\nUpload a clip (mp4, webm, avi, mkv, gif, ...): {NUM_FRAMES} frames are sampled as "
                "Video-LLaVA samples them.")
    with gr.Row():
        with gr.Column():
            video = gr.File(label="video", elem_id="video", file_types=[".mp4", ".webm", ".avi", ".mkv", ".mov", ".gif"])
            question = gr.Textbox(label="question", value="What happens in the video?", elem_id="video-question")
            method = gr.Dropdown(list(VIDEO_METHODS), value="fastervlm", label="method", elem_id="video-method")
            budget = gr.Number(value=64, label="budget: patches kept per frame; FastV: tokens kept over the whole video",
                               elem_id="video-budget")
            layer = gr.Slider(1, max(layers - 1, 1), value=min(2, max(layers - 1, 1)), step=1, label="FastV layer K",
                              elem_id="video-layer")
            ask = gr.Button("Ask about the video", variant="primary", elem_id="ask-video")
        with gr.Column():
            message = gr.Markdown(elem_id="video-message")
            pruned = gr.Textbox(label="pruned answer", elem_id="video-pruned-answer", lines=3)
            full = gr.Textbox(label="unpruned answer", elem_id="video-full-answer", lines=3)
            frames = gr.Image(label="the sampled frames: kept patches outlined, dropped ones dimmed", elem_id="video-frames")
    ask.click(demo.ask_video, inputs=[video, question, method, budget, layer], outputs=[message, pruned, full, frames],
              preprocess=False, api_name="ask_video")


def main(model_path: str | None = None, port: int = 7860, host: str = "127.0.0.1",
         max_upload_mb: float = MAX_UPLOAD_MB) -> None:
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise InputError('the demo needs Gradio: pip install -e ".[demo]"') from error
    if not 0 < port < 65536:
        raise InputError(f"--port must be in 1..65535, got {port}")
    if not (math.isfinite(max_upload_mb) and max_upload_mb > 0):
        raise InputError(f"--max-upload-mb must be a positive number of MB, got {max_upload_mb:g}")
    page = build(Demo(model_path, max_upload_mb))
    print(f"fastv demo on http://{host}:{port} (Ctrl-C stops it)", flush=True)
    page.launch(server_name=host, server_port=port, show_error=False)
