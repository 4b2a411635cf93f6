"""Load test of `fastv serve`: N concurrent clients on 127.0.0.1, bounded in requests and time; throughput, latency
percentiles, and a check of every answer against the one the same server gives to that request alone.

    python scripts/serve_load.py --clients 8 --requests 64 --out results/serve-load.json           # starts fastv serve
    python scripts/serve_load.py --backend vllm --methods none,fastervlm:keep=36 --out load.json  # on vLLM
    python scripts/serve_load.py --url http://127.0.0.1:8000/v1 --clients 32 --requests 512        # a running server

The workload: every (image, question, method) case of the options, asked in turn. First each case is asked alone,
one request at a time (the expected answers: tests/test_serve.py shows a lone request answers as `fastv run`);
then the clients ask `--requests` requests together, each client one at a time, until the count is reached or
`--time-limit` seconds have passed. An answer is right when its text and `pruning` (method, visual tokens) equal
the case's expected ones: a lost answer (an error, a timeout) or a mixed-up one (another request's answer) counts
against the run, and the script exits 1 when any occurred. The JSON holds the options, the counts, throughput
(answers per second of wall time), latency percentiles (nearest rank), and the mean batch size the server reports.
Standard library only: it runs in any environment that has the project.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = [REPO / "docs/examples/shapes.png", REPO / "docs/examples/looks.jpg"]
QUESTIONS = ["What color is the star?", "What shape is red?", "Is there a circle?", "How many shapes are there?"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server's base URL (…/v1); default: start `fastv serve` on a free port")
    parser.add_argument("--model-path", help="the model `fastv serve` loads (default: the shipped LLaVA-1.5)")
    parser.add_argument("--backend", choices=["torch", "vllm"], default="torch", help="the backend it serves with")
    parser.add_argument("--max-batch-size", type=int, default=8, help="its --max-batch-size")
    parser.add_argument("--methods", default="none,fastervlm:keep=36,prumerge",
                        help="comma-separated specs the requests name in turn; ';' between specs that hold commas")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=64, help="requests of the load phase, in all")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds after which no client starts another")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens of every request")
    parser.add_argument("--out", help="write the results here (JSON)")
    args = parser.parse_args()
    if args.clients < 1 or args.requests < 1 or args.time_limit <= 0:
        parser.error("--clients, --requests and --time-limit must be positive")
    methods = split_methods(args.methods)

    server = None if args.url else start_server(args)
    url = args.url or server[1]
    try:
        cases = [(image, question, method) for method in methods for image in IMAGES for question in QUESTIONS]
        bodies = [request_body(image, question, method, args.max_tokens) for image, question, method in cases]
        expected = [check_ok(url, body) for body in bodies]  # alone, one at a time
        before = health(url)
        result = load(url, bodies, expected, args.clients, args.requests, args.time_limit)
        after = health(url)
    finally:
        if server is not None:
            server[0].terminate()
            server[0].wait(timeout=60)
    calls = after["backend_calls"] - before["backend_calls"] if "backend_calls" in after else None
    report = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "server": url if args.url else f"fastv serve --backend {args.backend} --max-batch-size {args.max_batch_size}"
                                       + (f" --model-path {args.model_path}" if args.model_path else ""),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_1min_after": round(os.getloadavg()[0], 2)},  # other work on the machine skews timings
        "cases": len(cases), "methods": methods, "clients": args.clients, "max_tokens": args.max_tokens,
        "time_limit_s": args.time_limit, **result,
        "backend_calls": calls, "mean_batch": None if not calls else round(result["answered"] / calls, 2),
    }
    print(summary(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if report["lost"] == 0 and report["mixed_up"] == 0 else 1


def split_methods(text: str) -> list[str]:
    """'none,fastervlm:keep=36' -> two specs; a comma followed by key=value stays inside a spec (random:keep=50,seed=0)."""
    if ";" in text:
        return [m.strip() for m in text.split(";") if m.strip()]
    methods: list[str] = []
    for piece in text.split(","):
        if methods and "=" in piece and ":" not in piece:
            methods[-1] += "," + piece
        else:
            methods.append(piece.strip())
    return methods


def start_server(args) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "fastv.cli", "serve", "--port", "0", "--quiet", "--backend", args.backend,
               "--max-batch-size", str(args.max_batch_size), "--max-new-tokens", str(args.max_tokens)]
    if args.model_path:
        command += ["--model-path", args.model_path]
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # its output: vLLM logs on stdout too
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    while process.poll() is None:
        lines = [x for x in Path(log.name).read_text().splitlines() if x.startswith("fastv serve:") and " on http" in x]
        if lines:
            print(f"{lines[0]} (its log: {log.name})", file=sys.stderr)
            return process, lines[0].split(" on ")[-1].strip()
        time.sleep(0.2)
    sys.exit(f"fastv serve did not start: {Path(log.name).read_text()[-3000:]}")


def request_body(image: Path, question: str, method: str, max_tokens: int) -> bytes:
    media = "image/png" if image.suffix == ".png" else "image/jpeg"
    url = f"data:{media};base64,{base64.b64encode(image.read_bytes()).decode()}"
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    return json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                       "temperature": 0, "pruning": method}).encode()


class Client:
    """One keep-alive connection to the server."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port, self.base = parts.hostname, parts.port, parts.path.rstrip("/")
        self.connection = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        for attempt in (0, 1):  # a keep-alive connection the server closed is opened again once
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=600)
            try:
                self.connection.request(method, self.base + path, body,
                                        {"Content-Type": "application/json"} if body else {})
                response = self.connection.getresponse()
                return response.status, json.loads(response.read())
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.connection.close()
                self.connection = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def answer_of(response: dict) -> tuple[str, dict]:
    return response["choices"][0]["message"]["content"], response["pruning"]


def check_ok(url: str, body: bytes) -> tuple[str, dict]:
    status, response = Client(url).request("POST", "/chat/completions", body)
    if status != 200:
        sys.exit(f"the server refused a request of the workload ({status}): {response}")
    return answer_of(response)


def health(url: str) -> dict:
    status, response = Client(url.removesuffix("/v1")).request("GET", "/health")
    return response if status == 200 else {}


def load(url: str, bodies: list[bytes], expected: list, clients: int, requests: int, time_limit: float) -> dict:
    """The load phase: `clients` threads ask request i (case i mod len(cases)) until `requests` were started or
    `time_limit` passed; every answer checked against its case's expected one."""
    counter, lock = itertools.count(), threading.Lock()
    latencies, wrong, errors = [], [], []
    start = time.perf_counter()

    def client_loop() -> None:
        client = Client(url)
        while time.perf_counter() - start < time_limit:
            with lock:
                i = next(counter)
            if i >= requests:
                return
            case = i % len(bodies)
            sent = time.perf_counter()
            try:
                status, response = client.request("POST", "/chat/completions", bodies[case])
            except OSError as error:
                errors.append(f"request {i}: {type(error).__name__}: {error}")
                continue
            took = time.perf_counter() - sent
            if status != 200:
                errors.append(f"request {i}: HTTP {status}: {response.get('error', {}).get('message')}")
                continue
            latencies.append(took)
            if answer_of(response) != expected[case]:
                wrong.append({"request": i, "case": case, "got": answer_of(response), "expected": expected[case]})

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    sent = min(next(counter), requests)
    latencies.sort()
    return {
        "sent": sent, "answered": len(latencies), "right": len(latencies) - len(wrong), "mixed_up": len(wrong),
        "lost": sent - len(latencies), "wall_s": round(wall, 3),
        "answers_per_s": round(len(latencies) / wall, 3),
        "latency_s": {name: round(percentile(latencies, q), 4) for name, q in
                      (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))} if latencies else None,
        "latency_mean_s": round(sum(latencies) / len(latencies), 4) if latencies else None,
        "errors": errors[:10], "mixed_up_examples": wrong[:10],
    }


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q% of the values at or below it."""
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def summary(report: dict) -> str:
    latency = report["latency_s"] or {}
    return (f"{report['answered']}/{report['sent']} answered ({report['right']} right, {report['mixed_up']} mixed up, "
            f"{report['lost']} lost) by {report['clients']} clients in {report['wall_s']} s: "
            f"{report['answers_per_s']} answers/s; latency p50 {latency.get('p50')} s, p99 {latency.get('p99')} s; "
            f"mean batch {report['mean_batch']}")


if __name__ == "__main__":
    sys.exit(main())
