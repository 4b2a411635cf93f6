"""An OpenAI-compatible chat server over any `llava.eval.backend.Backend`, with a pruning method per request.

    GET  /v1/models              the one model served
    POST /v1/chat/completions    OpenAI's chat format, streaming (SSE) or not
    GET  /health                 200 once the model is loaded; requests answered, backend calls made

A request is one user message: text parts and at most one image, sent as a base64 data URL in an `image_url`
part (the server fetches no URL). The image goes in front of the text, as in LLaVA-1.5's prompts. A top-level
`pruning` field (the openai client's `extra_body={"pruning": "fastervlm:keep=58"}`) picks the request's method;
the server's default otherwise. Every answer carries `"pruning": {"method": SPEC, "visual_tokens": [n per image]}`
beside OpenAI's fields (in a stream: in the chunk with the finish reason).

Concurrent requests are batched: one thread (`Batcher`) takes what is waiting, up to `max_batch_size`, groups it
by method and generation options, and asks the backend once per group. A bad request gets a 4xx and OpenAI's
error object, `{"error": {"message", "type", "code", "param"}}`, whose message is the one-line message the CLI
gives for the same input; the server goes on serving. The backend generates whole answers, so a stream sends
the finished answer in pieces (one per word): it keeps the client's streaming code working, not the time to
its first token.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import queue
import re
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from PIL import Image, UnidentifiedImageError

from llava.errors import InputError
from llava.eval.backend import Backend, Prompt, Reply
from llava.generate import check_generation_options
from llava.mm_utils import decode_image
from llava.model.pruning.registry import parse_method


class RequestError(InputError):
    """A request the server refuses: its HTTP status and OpenAI's error code beside the one-line message."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request"):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Limits:
    """What the server accepts: its defaults and the most a request may ask."""

    max_image_bytes: int = 20 << 20  # the decoded image file
    max_image_pixels: int = 4096 * 4096  # width x height, read from the file's header before it is decoded
    max_tokens: int = 1024  # the most new tokens a request may ask for (`max_tokens`)
    default_max_tokens: int = 128  # a request that does not say
    max_batch_size: int = 8  # requests per backend call
    max_waiting: int = 256  # requests waiting for the backend; more are answered 503 (try again later)
    batch_wait_s: float = 0.01  # how long the first waiting request waits for others to join its batch


@dataclass(frozen=True)
class ChatRequest:
    """One parsed chat request: what the backend is asked, and how the answer is sent back."""

    prompt: Prompt
    method: str  # canonical spec
    max_tokens: int
    temperature: float
    seed: int
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage


# ----------------------------------------------------------------------------- parsing a request

# Fields of OpenAI's request this server cannot honour: refused when given with another value than this.
UNSUPPORTED = {"n": 1, "stop": None, "logprobs": False, "top_logprobs": None, "tools": None, "functions": None,
               "tool_choice": None, "response_format": None, "frequency_penalty": 0, "presence_penalty": 0,
               "logit_bias": None, "top_p": 1}
DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*);base64,(?P<data>.*)", re.S)


def parse_chat_request(body: bytes, *, model_id: str, default_method: str, limits: Limits) -> ChatRequest:
    """The request a /v1/chat/completions body asks for; RequestError (or InputError) saying what is wrong."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(f"the request body is not JSON ({error})", code="invalid_json") from error
    if not isinstance(request, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(request).__name__}", code="invalid_json")
    model = request.get("model")
    if model is not None and model != model_id:
        raise RequestError(f"model '{model}' is not served here; this server serves '{model_id}'", 404, "model_not_found")
    for field, default in UNSUPPORTED.items():
        if request.get(field, default) not in (default, None, []):
            raise RequestError(f"'{field}' is not supported by this server (leave it out)", code="unsupported_parameter")

    method = request.get("pruning")
    if method is None:
        method = default_method
    elif not isinstance(method, str):
        raise RequestError(f"'pruning' must be a method spec string such as 'fastervlm:keep=58', got {method!r}",
                           code="invalid_method")
    try:
        method = parse_method(method).spec
    except InputError as error:
        raise RequestError(str(error), code="invalid_method") from error

    max_tokens = request.get("max_completion_tokens")  # OpenAI's newer name of max_tokens
    max_tokens = request.get("max_tokens") if max_tokens is None else max_tokens
    max_tokens = limits.default_max_tokens if max_tokens is None else max_tokens
    temperature = request.get("temperature")
    temperature = 0.0 if temperature is None else temperature
    seed = request.get("seed")
    seed = 0 if seed is None else seed
    check_generation_options(max_tokens, temperature, seed=seed)
    if max_tokens > limits.max_tokens:
        raise RequestError(f"max_tokens must be at most {limits.max_tokens} (the server's --max-tokens-limit), "
                           f"got {max_tokens}")
    stream = request.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError(f"'stream' must be true or false, got {stream!r}")
    stream_options = request.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise RequestError(f"'stream_options' must be an object, got {stream_options!r}")

    text, image = parse_messages(request.get("messages"), limits)
    return ChatRequest(Prompt(text, image), method, max_tokens, float(temperature), seed, stream,
                       bool(stream_options.get("include_usage")))


def parse_messages(messages, limits: Limits) -> tuple[str, Image.Image | None]:
    """The user turn's text and its image (or None) from OpenAI's `messages`: one user message."""
    if messages is None:
        raise RequestError("'messages' is missing: send one user message")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise RequestError("'messages' must be a list of message objects")
    roles = [m.get("role") for m in messages]
    if roles != ["user"]:
        raise RequestError("send exactly one user message (LLaVA answers a single turn; the conversation template "
                           f"gives the system prompt), got roles {roles}")
    content = messages[0].get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
        raise RequestError("a message's 'content' must be a string or a list of content parts")
    texts, images = [], []
    for part in content:
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif part.get("type") == "image_url":
            url = part.get("image_url")
            images.append(url.get("url") if isinstance(url, dict) else url)
        else:
            raise RequestError(f"content part {json.dumps(part)[:80]} is not supported: send 'text' parts with a "
                               "string and 'image_url' parts")
    if len(images) > 1:
        raise RequestError(f"one image per request, got {len(images)}")
    text = "\n".join(texts)
    if not text.strip():  # the CLI's messages (fastv run)
        raise InputError("the prompt is empty")
    if "<image>" in text:
        raise InputError("write the prompt without '<image>': the image goes in front of it, as in LLaVA-1.5")
    return text, (decode_data_url(images[0], limits) if images else None)


class _Upload(io.BytesIO):
    def __repr__(self) -> str:  # how PIL names the file in its errors
        return "'image_url'"


def decode_data_url(url, limits: Limits) -> Image.Image:
    """The image of a base64 data URL, within the limits; RequestError / InputError saying why not."""
    match = DATA_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None:
        shown = url[:40] + ("..." if len(url) > 40 else "") if isinstance(url, str) else repr(url)
        raise RequestError(f"image_url must be a base64 data URL (data:image/png;base64,...), got {shown}; "
                           "the server fetches no URL", code="invalid_image")
    data = match["data"]
    if len(data) * 3 // 4 > limits.max_image_bytes + 2:  # checked before decoding a huge upload
        raise _image_too_large(len(data) * 3 // 4, limits)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"image_url's data is not valid base64 ({error})", code="invalid_image") from error
    if len(raw) > limits.max_image_bytes:
        raise _image_too_large(len(raw), limits)
    try:
        with Image.open(_Upload(raw)) as header:
            width, height = header.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        width = height = 0  # decode_image says why, in the CLI's words
    if width * height > limits.max_image_pixels:
        raise RequestError(f"image image_url is too large: {width} x {height} = {width * height:,} pixels, the limit "
                           f"is {limits.max_image_pixels:,} (the server's --max-image-pixels)", 413, "image_too_large")
    try:
        return decode_image(_Upload(raw), "image_url")
    except InputError as error:
        raise RequestError(str(error), code="invalid_image") from error


def _image_too_large(size: int, limits: Limits) -> RequestError:
    return RequestError(f"the image is {size / 2**20:.1f} MB; the limit is {limits.max_image_bytes / 2**20:g} MB "
                        "(the server's --max-image-mb)", 413, "image_too_large")


# ----------------------------------------------------------------------------- batching


@dataclass
class _Job:
    request: ChatRequest
    future: Future

    @property
    def group(self) -> tuple:  # requests answered by one backend call share these
        r = self.request
        return r.method, r.max_tokens, r.temperature, r.seed


class Batcher:
    """One thread between the HTTP handlers and the backend: it takes the waiting requests (the first waits
    `batch_wait_s` for others), groups them by method and generation options, and answers each group with
    one backend call of at most `max_batch_size`. A group the backend refuses (InputError) is asked again one
    request at a time, so the error reaches the request that caused it."""

    def __init__(self, backend: Backend, default_method: str, max_batch_size: int, batch_wait_s: float):
        self.backend, self.default_method = backend, default_method
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_s
        self.waiting: queue.Queue[_Job | None] = queue.Queue()
        self.batch_sizes: list[int] = []  # of every backend call, for the logs and tests
        self.thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self.thread.start()

    def submit(self, request: ChatRequest) -> Future:
        """A future of the request's Reply (or its InputError)."""
        job = _Job(request, Future())
        self.waiting.put(job)
        return job.future

    def stop(self) -> None:
        self.waiting.put(None)
        self.thread.join()

    def _loop(self) -> None:
        while (first := self.waiting.get()) is not None:
            jobs, deadline = [first], time.monotonic() + self.batch_wait_s
            while len(jobs) < self.max_batch_size:
                try:
                    job = self.waiting.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self.waiting.put(None)  # stop after this batch
                    break
                jobs.append(job)
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.group, []).append(job)
            for group in groups.values():
                self._answer(group)

    def _answer(self, jobs: list[_Job]) -> None:
        request = jobs[0].request
        method = None if request.method == self.default_method else request.method
        try:
            replies = self.backend.answer([job.request.prompt for job in jobs], max_new_tokens=request.max_tokens,
                                          temperature=request.temperature, seed=request.seed, method=method)
            self.batch_sizes.append(len(jobs))
        except InputError as error:
            if len(jobs) > 1:
                for job in jobs:
                    self._answer([job])
                return
            jobs[0].future.set_exception(error)
            return
        except Exception as error:  # a bug or the machine: the handlers log it and answer 500
            for job in jobs:
                job.future.set_exception(error)
            return
        for job, reply in zip(jobs, replies):
            job.future.set_result(reply)


# ----------------------------------------------------------------------------- responses

FINISH_REASONS = {"eos": "stop", "max_new_tokens": "length", "context": "length"}


def completion(request: ChatRequest, reply: Reply, model_id: str, count_tokens: Callable[[str], int]) -> dict:
    """The chat.completion object of one answer, with its `pruning`."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": model_id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                     "finish_reason": _finish_reason(reply), "logprobs": None}],
        "usage": usage(reply, count_tokens), "pruning": pruning(request, reply),
    }


def chunks(request: ChatRequest, reply: Reply, model_id: str, count_tokens: Callable[[str], int]) -> list[dict]:
    """The chat.completion.chunk objects of one streamed answer: the role, the text a word at a time, the finish
    reason with the `pruning`, and the usage when the request asked for it (stream_options.include_usage)."""
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model_id}
    extra = {"usage": None} if request.include_usage else {}

    def chunk(delta: dict, finish_reason: str | None = None, **fields) -> dict:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
                **extra, **fields}

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": piece}) for piece in re.findall(r"\s*\S+|\s+$", reply.text)]
    out.append(chunk({}, _finish_reason(reply), pruning=pruning(request, reply)))
    if request.include_usage:
        out.append({**head, "choices": [], "usage": usage(reply, count_tokens)})
    return out


def pruning(request: ChatRequest, reply: Reply) -> dict:
    return {"method": request.method, "visual_tokens": list(reply.metadata.get("visual_tokens", []))}


def usage(reply: Reply, count_tokens: Callable[[str], int]) -> dict:
    """prompt_tokens: the prefill's tokens, visual tokens included; completion_tokens: the backend's count, or the
    answer's text tokenised again (end-of-sequence not counted)."""
    prompt = reply.metadata.get("prompt_tokens", 0)
    answer = reply.metadata.get("completion_tokens")
    answer = count_tokens(reply.text) if answer is None else answer
    return {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer}


def _finish_reason(reply: Reply) -> str:
    return FINISH_REASONS.get(reply.metadata.get("stop_reason"), "stop")


def error_body(message: str, status: int, code: str) -> dict:
    """OpenAI's error object."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": " ".join(message.split()), "type": kind, "param": None, "code": code}}


# ----------------------------------------------------------------------------- the HTTP server


class ChatServer(ThreadingHTTPServer):
    """The HTTP server: one thread per connection parses and answers; the `Batcher` runs the backend."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], backend: Backend, *, limits: Limits = Limits(),
                 count_tokens: Callable[[str], int] | None = None, log: bool = True):
        info = backend.describe()
        self.backend, self.limits, self.log = backend, limits, log
        self.model_id = info.model_id or "llava"
        self.default_method = parse_method(info.method_spec).spec
        self.count_tokens = count_tokens or (lambda text: len(text.split()))
        self.created = int(time.time())
        self.batcher = Batcher(backend, self.default_method, limits.max_batch_size, limits.batch_wait_s)
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def server_close(self) -> None:
        super().server_close()
        self.batcher.stop()

    def handle_error(self, request, client_address) -> None:
        """A client that went away before its answer was sent is one line in the log, not a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            if self.log:
                print(f"{client_address[0]}:{client_address[1]} went away ({type(error).__name__})", file=sys.stderr)
        else:
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    server: ChatServer
    protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses its connections
    timeout = 60  # seconds a connection may take to send its request

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        model = {"id": self.server.model_id, "object": "model", "created": self.server.created, "owned_by": "llava-fastv"}
        if path == "/health":  # with how many requests the backend answered in how many calls (batching at work)
            sizes = list(self.server.batcher.batch_sizes)
            self._send_json(200, {"status": "ok", "requests_answered": sum(sizes), "backend_calls": len(sizes)})
        elif path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [model]})
        elif path == f"/v1/models/{self.server.model_id}":
            self._send_json(200, model)
        else:
            self._send_error(RequestError(f"no such path: GET {path}", 404, "not_found"))

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        try:
            if path != "/v1/chat/completions":
                raise RequestError(f"no such path: POST {path} (this server answers /v1/chat/completions)", 404, "not_found")
            request = parse_chat_request(self._read_body(), model_id=self.server.model_id,
                                         default_method=self.server.default_method, limits=self.server.limits)
            waiting = self.server.batcher.waiting.qsize()
            if waiting >= self.server.limits.max_waiting:
                raise RequestError(f"the server's queue is full ({waiting} waiting, its --max-waiting); try again later",
                                   503, "overloaded")
            reply = self.server.batcher.submit(request).result()
        except InputError as error:
            self._send_error(error)
            return
        except Exception as error:  # a bug or the machine (out of memory): its traceback in the server's log only
            traceback.print_exception(error, file=sys.stderr)
            self._send_error(RequestError(f"the server failed to answer ({type(error).__name__}: {error})", 500,
                                          "internal_error"))
            return
        args = (request, reply, self.server.model_id, self.server.count_tokens)
        if request.stream:
            self._send_stream(chunks(*args))
        else:
            self._send_json(200, completion(*args))

    def do_PUT(self) -> None:
        self._method_not_allowed()

    do_DELETE = do_PATCH = do_PUT

    def _method_not_allowed(self) -> None:
        self._send_error(RequestError(f"method {self.command} is not allowed (GET /v1/models, POST /v1/chat/completions)",
                                      405, "method_not_allowed"))

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError("the request needs a Content-Length header", 411, "length_required")
        most = self.server.limits.max_image_bytes * 4 // 3 + (1 << 20)  # a base64 image at the limit, and the text
        if int(length) > most:
            self.close_connection = True  # the body is not read
            raise RequestError(f"the request body is {int(length) / 2**20:.1f} MB; the limit is {most / 2**20:.1f} MB "
                               "(an image of the server's --max-image-mb in base64, and the text)", 413, "too_large")
        try:
            return self.rfile.read(int(length))
        except TimeoutError as error:
            self.close_connection = True
            raise RequestError(f"the request body did not arrive within {self.timeout} s", 408, "timeout") from error

    def _send_error(self, error: InputError) -> None:
        status, code = (error.status, error.code) if isinstance(error, RequestError) else (400, "invalid_request")
        self._send_json(status, error_body(str(error), status, code))

    def _send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_stream(self, events: list[dict]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the stream's end is the connection's
        self.end_headers()
        self.close_connection = True
        for event in events:
            self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, format: str, *args) -> None:
        if self.server.log:
            super().log_message(format, *args)
