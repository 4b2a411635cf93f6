"""`fastv serve` on the torch backend, driven by the real `openai` client on 127.0.0.1: the model list; a plain
request and a streamed one, each answering what `fastv run` answers (LlavaPipeline, one question at a time);
per-request methods in concurrent requests (each answer equal to the CLI's for its method, some answered in one
backend call, the server's default restored after them); every bad request
answered with its 4xx in OpenAI's error shape, the CLI's one-line message where the CLI has one, and the next
request served. One server, launched as a user launches it, for the module. Without the shipped model these
skip; without the openai client they skip, and fail in CI (CI=true), where the test extra installs it.

The batcher and the request parser are tested in-process, without a model: a group per method, a refused
group asked again one request at a time, a failing backend's error reaching every request of its call.
"""

import base64
import concurrent.futures
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fastv.shipped import SHIPPED_MODEL
from llava.errors import InputError
from llava.eval.backend import Backend, BackendInfo, Prompt, Reply
from llava.serve.server import Batcher, ChatRequest, ChatServer, Limits, RequestError, parse_chat_request
from tests.test_demo import _need

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs/examples/shapes.png"
MAX_IMAGE_MB = 0.25  # the launched server's --max-image-mb: above the example (0.15 MB), below a noise image
MAX_IMAGE_PIXELS = 400 * 400  # its --max-image-pixels: above the example (336 x 336)
needs_model = pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="the shipped model is not here")
QUESTIONS = ["What color is the star?", "What shape is red?"]
METHODS = ["none", "fastervlm:keep=36", "prumerge", "fastv:k=2,keep=36"]  # the default, two pre-LLM, one in-LLM


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def png(size: tuple[int, int], noise: bool = False) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) if noise else \
        np.full((size[1], size[0], 3), 128, dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def user(text: str, *images: str) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


EXAMPLE_URL = data_url(EXAMPLE.read_bytes())


# ----------------------------------------------------------------------------- the server, launched


def launch(*options: str):
    """Run `fastv serve` on a free port of 127.0.0.1 with these options; yield its base URL, then stop it."""
    command = [sys.executable, "-m", "fastv.cli", "serve", "--port", "0", "--quiet", "--max-batch-size", "8",
               "--batch-wait-ms", "50", "--max-image-mb", str(MAX_IMAGE_MB), "--max-image-pixels",
               str(MAX_IMAGE_PIXELS), "--max-tokens-limit", "64", "--max-new-tokens", "16", *options]
    log = tempfile.NamedTemporaryFile("w+", suffix=".log")  # its output: vLLM logs on stdout too
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    line = wait_for_url(process, Path(log.name))
    if line is None:
        process.kill()
        pytest.fail(f"fastv serve did not start: {Path(log.name).read_text()[-3000:]}")
    yield line.split(" on ")[-1].strip()
    process.terminate()
    process.wait(timeout=60)
    log.close()


def wait_for_url(process: subprocess.Popen, log: Path, timeout: float = 600) -> str | None:
    """The line `fastv serve` prints once the model is loaded and the port bound; None if it exits first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("fastv serve:") and " on http://" in line:
                return line
        time.sleep(0.2)
    return None


@pytest.fixture(scope="module")
def server():
    """`fastv serve` (torch backend) -> its base URL; stopped after the module."""
    yield from launch()


def openai_client(url: str):
    try:
        import openai
    except ImportError:
        openai = None
    _need(openai is not None, "the openai client is not installed (pip install -e '.[test]')")
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


def pipeline_answers(methods: list[str]) -> dict:
    """(method, question) -> what `fastv run` answers on the example, one question at a time through LlavaPipeline
    loaded with the method: (answer, visual tokens, prompt tokens, canonical spec)."""
    from llava.pipeline import LlavaPipeline, Request
    from llava.mm_utils import load_image

    image, answers = load_image(EXAMPLE), {}
    for method in methods:
        pipe = LlavaPipeline.load(str(SHIPPED_MODEL), method=method)
        for question in QUESTIONS:
            (answer,) = pipe.answer([Request(image, question)], max_new_tokens=16)
            prompt_tokens = len(answer.prompt_ids) - 1 + sum(answer.visual_tokens)
            answers[method, question] = (answer.text, answer.visual_tokens, prompt_tokens, pipe.method_spec)
    return answers


@pytest.fixture(scope="module")
def cli_answers():
    return pipeline_answers(METHODS)


def health(server: str) -> dict:
    with urllib.request.urlopen(server.removesuffix("/v1") + "/health", timeout=30) as response:
        return json.loads(response.read())


def ask(client, question: str, method: str | None = None, **options):
    extra = {} if method is None else {"extra_body": {"pruning": method}}
    return client.chat.completions.create(model="llava-shapes-tiny", messages=user(question, EXAMPLE_URL),
                                          max_tokens=16, **extra, **options)


@needs_model
def test_the_model_list_names_the_served_model(client):
    assert [model.id for model in client.models.list().data] == ["llava-shapes-tiny"]


@needs_model
def test_a_plain_request_answers_what_the_cli_answers(client, cli_answers):
    response = ask(client, QUESTIONS[0])
    text, visual, prompt_tokens, _ = cli_answers["none", QUESTIONS[0]]
    assert response.choices[0].message.content == text
    assert response.choices[0].finish_reason == "stop"
    assert response.model_extra["pruning"] == {"method": "none", "visual_tokens": visual}
    assert response.usage.prompt_tokens == prompt_tokens
    assert response.usage.completion_tokens >= 1
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


@needs_model
def test_a_streamed_request_sends_the_cli_answer_and_the_pruning_in_its_last_chunk(client, cli_answers):
    method = "fastervlm:keep=36"
    chunks = list(ask(client, QUESTIONS[1], method, stream=True, stream_options={"include_usage": True}))
    text, visual, prompt_tokens, _ = cli_answers[method, QUESTIONS[1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    (final,) = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert final.choices[0].finish_reason == "stop"
    assert final.model_extra["pruning"] == {"method": method, "visual_tokens": visual}
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == prompt_tokens


@needs_model
def test_concurrent_requests_with_their_own_methods_each_answer_as_the_cli(client, server, cli_answers):
    asked = list(cli_answers) * 2  # every (method, question) twice
    before = health(server)
    with concurrent.futures.ThreadPoolExecutor(len(asked)) as pool:
        responses = list(pool.map(lambda pair: ask(client, pair[1], pair[0]), asked))
    after = health(server)
    assert after["requests_answered"] - before["requests_answered"] == len(asked)
    assert after["backend_calls"] - before["backend_calls"] < len(asked)  # some were answered together
    for (method, question), response in zip(asked, responses):
        text, visual, _, spec = cli_answers[method, question]
        assert (response.choices[0].message.content, response.model_extra["pruning"]) == \
            (text, {"method": spec, "visual_tokens": visual}), (method, question)
    default = ask(client, QUESTIONS[0])  # the model's own method is back
    assert default.model_extra["pruning"]["visual_tokens"] == cli_answers["none", QUESTIONS[0]][1]


@needs_model
def test_a_text_only_request_and_a_spec_written_another_way(client):
    response = client.chat.completions.create(model="llava-shapes-tiny", max_tokens=4,
                                              messages=[{"role": "user", "content": "Name a shape."}])
    assert response.model_extra["pruning"] == {"method": "none", "visual_tokens": []}
    written = ask(client, QUESTIONS[0], "fastervlm:keep=036")
    assert written.model_extra["pruning"]["method"] == "fastervlm:keep=36"


def cli_error(*arguments: str) -> str:
    """The one-line message `fastv run` prints for these arguments (without its 'error: ')."""
    from fastv.cli import main

    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["run", *arguments]) == 2
    assert err.getvalue().count("\n") == 1, err.getvalue()
    return err.getvalue().strip().removeprefix("error: ")


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/chat/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


BAD_REQUESTS = {  # name -> (messages, pruning or None, other fields, status, the message or what it starts with)
    "not an image": (user("What is it?", data_url(b"not an image")), None, {}, 400, "cli:not an image"),
    "a web URL": (user("What is it?", "https://example.com/a.png"), None, {}, 400,
                  "image_url must be a base64 data URL (data:image/png;base64,...), got https://example.com/a.png; "
                  "the server fetches no URL"),
    "bad base64": (user("What is it?", "data:image/png;base64,@@@"), None, {}, 400, "image_url's data is not valid base64"),
    "too many bytes": (user("What is it?", data_url(png((300, 300), noise=True))), None, {}, 413,
                       "the image is 0.3 MB; the limit is 0.25 MB (the server's --max-image-mb)"),
    "too many pixels": (user("What is it?", data_url(png((401, 400)))), None, {}, 413,
                        "image image_url is too large: 401 x 400 = 160,400 pixels, the limit is 160,000 "
                        "(the server's --max-image-pixels)"),
    "unknown method": (user("What is it?", EXAMPLE_URL), "fastvv", {}, 400, "cli:unknown method"),
    "a budget the model lacks": (user("What is it?", EXAMPLE_URL), "fastervlm:keep=500", {}, 400, "cli:budget"),
    "two images": (user("What is it?", EXAMPLE_URL, EXAMPLE_URL), None, {}, 400, "one image per request, got 2"),
    "an empty prompt": (user(" ", EXAMPLE_URL), None, {}, 400, "cli:empty prompt"),
    "two turns": ([{"role": "system", "content": "Be brief."}, *user("What is it?")], None, {}, 400,
                  "send exactly one user message"),
    "max_tokens over the limit": (user("What is it?"), None, {"max_tokens": 65}, 400,
                                  "max_tokens must be at most 64 (the server's --max-tokens-limit), got 65"),
    "a negative temperature": (user("What is it?"), None, {"temperature": -1}, 400,
                               "temperature must be a finite number >= 0 (0 = greedy), got -1"),
    "n = 2": (user("What is it?"), None, {"n": 2}, 400, "'n' is not supported by this server (leave it out)"),
}


@pytest.fixture(scope="module")
def cli_messages(tmp_path_factory):
    bad = tmp_path_factory.mktemp("serve") / "bad.png"
    bad.write_bytes(b"not an image")
    return {
        "cli:not an image": cli_error("--image", str(bad), "--prompt", "What is it?").replace(str(bad), "image_url"),
        "cli:unknown method": cli_error("--prompt", "What is it?", "--method", "fastvv"),
        "cli:budget": cli_error("--image", str(EXAMPLE), "--prompt", "What is it?", "--method", "fastervlm:keep=500"),
        "cli:empty prompt": cli_error("--image", str(EXAMPLE), "--prompt", " "),
    }


@needs_model
@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_a_bad_request_gets_its_4xx_and_message_and_the_next_request_is_served(name, client, cli_messages):
    import openai

    messages, method, fields, status, message = BAD_REQUESTS[name]
    extra = {"extra_body": {"pruning": method}} if method else {}
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="llava-shapes-tiny", messages=messages, **extra, **fields)
    error = caught.value.body  # OpenAI's error object, without its "error" wrapper
    assert caught.value.status_code == status
    assert error["type"] == "invalid_request_error" and "\n" not in error["message"]
    assert error["message"] == cli_messages[message] if message.startswith("cli:") else error["message"].startswith(message)
    assert "Traceback" not in error["message"]
    served = client.chat.completions.create(model="llava-shapes-tiny", max_tokens=2,
                                            messages=[{"role": "user", "content": "Name a shape."}])
    assert served.choices[0].message.content is not None


@needs_model
@pytest.mark.parametrize("body, message", [
    (b'{"messages": [', "the request body is not JSON"),
    (b'[1, 2]', "the request body must be a JSON object, got list"),
    (b'{"model": "llava-shapes-tiny"}', "'messages' is missing: send one user message"),
])
def test_a_malformed_body_gets_a_400_and_the_next_request_is_served(server, body, message):
    status, answer = post(server, body)
    assert status == 400 and answer["error"]["message"].startswith(message)
    status, answer = post(server, json.dumps({"messages": user("Name a shape."), "max_tokens": 2}).encode())
    assert status == 200 and answer["choices"][0]["message"]["content"] is not None


@needs_model
def test_another_model_name_or_path_is_a_404(client, server):
    import openai

    with pytest.raises(openai.NotFoundError, match="model 'gpt-4o' is not served here"):
        client.chat.completions.create(model="gpt-4o", messages=user("Name a shape."))
    request = urllib.request.Request(server + "/completions", data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 404 and "no such path" in json.loads(caught.value.read())["error"]["message"]


@pytest.mark.parametrize("arguments, message", [
    (["--port", "70000"], "--port must be in 0..65535, got 70000"),
    (["--max-batch-size", "0"], "--max-batch-size must be at least 1, got 0"),
    (["--method", "fastvv"], "unknown method 'fastvv'"),
    (["--tensor-parallel-size", "2"], "--tensor-parallel-size and --max-model-len are options of --backend vllm"),
])
def test_bad_serve_options_are_one_line_errors_before_loading(arguments, message, capsys):
    from fastv.cli import main

    assert main(["serve", *arguments]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


# ----------------------------------------------------------------------------- in-process: batcher and parser


class RecordingBackend(Backend):
    """Answers each prompt with its text and the method it ran under; refuses a prompt saying 'refuse', fails on
    one saying 'crash'; the first call says it has begun (`entered`) and waits for `release`, so that requests
    can queue behind it."""

    def __init__(self):
        self.calls: list[tuple[str | None, list[str]]] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def answer(self, prompts, *, max_new_tokens, temperature, seed, method=None):
        if not self.calls:
            self.entered.set()
            self.release.wait(timeout=30)
        self.calls.append((method, [p.text for p in prompts]))
        if any(p.text == "refuse" for p in prompts):
            raise InputError("refused")
        if any(p.text == "crash" for p in prompts):
            raise RuntimeError("out of memory")
        return [Reply(f"{p.text}/{method}", {"visual_tokens": []}) for p in prompts]

    def describe(self):
        return BackendInfo("fake", "none", None, None)


def chat(text: str, method: str = "none", max_tokens: int = 8) -> ChatRequest:
    return ChatRequest(Prompt(text, None), method, max_tokens, 0.0, 0, False, False)


def test_the_batcher_groups_waiting_requests_by_method_and_options_in_arrival_order():
    backend = RecordingBackend()
    batcher = Batcher(backend, "none", max_batch_size=3, batch_wait_s=0.0)
    first = batcher.submit(chat("a"))
    backend.entered.wait(timeout=30)  # the batcher has taken the first request and waits in the backend
    waiting = [chat("b", "fastervlm:keep=36"), chat("c"), chat("d", "fastervlm:keep=36"), chat("e", max_tokens=4),
               chat("f", "fastervlm:keep=36"), chat("g")]
    futures = [batcher.submit(request) for request in waiting]
    backend.release.set()
    assert [f.result(timeout=30).text for f in [first, *futures]] == \
        ["a/None", "b/fastervlm:keep=36", "c/None", "d/fastervlm:keep=36", "e/None", "f/fastervlm:keep=36", "g/None"]
    batcher.stop()
    # a batch of at most 3: (b, c, d) -> b+d, c; then (e, f, g) -> e, f, g (e asks for fewer tokens than g)
    assert backend.calls == [(None, ["a"]), ("fastervlm:keep=36", ["b", "d"]), (None, ["c"]), (None, ["e"]),
                             ("fastervlm:keep=36", ["f"]), (None, ["g"])]


def test_a_refused_group_is_asked_again_one_by_one_and_a_crash_reaches_its_requests():
    backend = RecordingBackend()
    batcher = Batcher(backend, "none", max_batch_size=8, batch_wait_s=0.0)
    first = batcher.submit(chat("a"))
    backend.entered.wait(timeout=30)
    futures = [batcher.submit(chat(text)) for text in ["b", "refuse", "c"]]
    backend.release.set()
    assert first.result(timeout=30).text == "a/None"
    assert futures[0].result(timeout=30).text == "b/None" and futures[2].result(timeout=30).text == "c/None"
    with pytest.raises(InputError, match="refused"):
        futures[1].result(timeout=30)
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.submit(chat("crash")).result(timeout=30)
    assert batcher.submit(chat("d")).result(timeout=30).text == "d/None"  # still serving
    batcher.stop()
    assert backend.calls[1:4] == [(None, ["b", "refuse", "c"]), (None, ["b"]), (None, ["refuse"])]


def test_a_full_queue_is_answered_503_and_the_waiting_requests_are_served():
    backend = RecordingBackend()
    server = ChatServer(("127.0.0.1", 0), backend, limits=Limits(max_waiting=1, batch_wait_s=0.0), log=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    body = lambda text: json.dumps({"messages": user(text), "max_tokens": 8}).encode()  # noqa: E731
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, server.url, body("a"))
            backend.entered.wait(timeout=30)  # "a" is in the backend
            second = pool.submit(post, server.url, body("b"))
            while server.batcher.waiting.qsize() < 1:  # "b" waits
                time.sleep(0.01)
            status, answer = post(server.url, body("c"))
            assert status == 503 and answer["error"]["code"] == "overloaded"
            assert answer["error"]["message"] == "the server's queue is full (1 waiting, its --max-waiting); try again later"
            backend.release.set()
            assert [f.result(timeout=30)[1]["choices"][0]["message"]["content"] for f in (first, second)] == \
                ["a/None", "b/None"]
    finally:
        server.shutdown()
        server.server_close()


@needs_model
def test_the_torch_backend_runs_a_call_with_its_method_and_restores_its_own():
    from llava.eval.backend import TorchBackend
    from llava.mm_utils import load_image
    from llava.pipeline import LlavaPipeline

    backend = TorchBackend(LlavaPipeline.load(str(SHIPPED_MODEL), method="uniform:keep=64"))
    prompts = [Prompt(QUESTIONS[0], load_image(EXAMPLE))]
    generation = dict(max_new_tokens=4, temperature=0.0, seed=0)
    assert backend.answer(prompts, **generation, method="fastervlm:keep=36")[0].metadata["visual_tokens"] == [36]
    assert backend.pipeline.method_spec == "uniform:keep=64"
    with pytest.raises(InputError, match="keep=500"):
        backend.answer(prompts, **generation, method="fastervlm:keep=500")
    assert backend.answer(prompts, **generation)[0].metadata["visual_tokens"] == [64]


def parse(body: dict, limits: Limits = Limits()) -> ChatRequest:
    return parse_chat_request(json.dumps(body).encode(), model_id="m", default_method="none", limits=limits)


def test_the_parser_reads_the_openai_fields_and_the_pruning_spec():
    request = parse({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is"}, {"type": "image_url", "image_url": {"url": EXAMPLE_URL}},
        {"type": "text", "text": "it?"}]}], "pruning": "fastervlm:keep=036", "max_completion_tokens": 5,
        "temperature": 0.5, "seed": 7, "stream": True, "stream_options": {"include_usage": True}})
    assert (request.prompt.text, request.prompt.image.size) == ("What is\nit?", (336, 336))
    assert (request.method, request.max_tokens, request.temperature, request.seed, request.stream,
            request.include_usage) == ("fastervlm:keep=36", 5, 0.5, 7, True, True)
    plain = parse({"messages": [{"role": "user", "content": "Hi"}], "temperature": None, "top_p": 1})
    assert (plain.method, plain.max_tokens, plain.temperature, plain.seed, plain.stream, plain.prompt.image) == \
        ("none", 128, 0.0, 0, False, None)


def test_the_parser_refuses_a_huge_upload_before_decoding_it():
    with pytest.raises(RequestError) as caught:
        parse({"messages": user("What?", "data:image/png;base64," + "A" * 4_000_000)}, Limits(max_image_bytes=1 << 20))
    assert caught.value.status == 413 and str(caught.value) == \
        "the image is 2.9 MB; the limit is 1 MB (the server's --max-image-mb)"
