"""The latency ``sjfsched serve`` adds to a request, on loopback.

Each scenario sends the same request straight to an upstream and through the
proxy in front of it, alternating the two (so drift and noise hit both
alike), one request at a time over a kept-alive connection, and reports the
median and 95th percentile of each and of the difference.  The upstreams:

- a stub that answers at once (an Ollama- and OpenAI-shaped server written on
  bare asyncio, so that nearly all the time measured is the proxy's):
  ``/api/generate`` whole and streamed (10 NDJSON lines),
  ``/v1/chat/completions`` streamed (10 server-sent events), ``/api/tags``
  passed through;
- ``llama_cpp.server`` generating 8 tokens with the tiny random-weight model
  (real llama.cpp), whole and streamed (skipped with ``--no-model``).

Every process (stub, model server, proxy, this client) is separate, so they do
not share an interpreter lock.  The last column is the proxy process's CPU
time per proxied request (from /proc, Linux only).  The proxy runs as users run it:
``python -m sjfsched serve --upstream URL``.

    python benchmarks/proxy_overhead.py [--requests 2000] [--model-requests 300] [--no-model]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sjfsched._cli import at_least_one

# ------------------------------------------------------------------ the stub


def _stub_answer(method: str, path: str, body: bytes) -> tuple[bytes, bytes, bool]:
    """(content type, body, chunked) for one request to the stub."""
    json_type = b"application/json; charset=utf-8"
    if path == "/api/tags":
        return json_type, json.dumps({"models": [{"name": "stub:latest"}]}).encode(), False
    if path == "/v1/models":
        return json_type, json.dumps({"object": "list", "data": [{"id": "stub"}]}).encode(), False
    request = json.loads(body or b"{}")
    if path == "/api/generate":
        if request.get("stream", True) is False:
            answer = {"model": "stub", "response": "0123456789", "done": True, "eval_count": 10}
            return json_type, json.dumps(answer).encode(), False
        lines = [json.dumps({"model": "stub", "response": str(i), "done": False}) for i in range(9)]
        lines.append(json.dumps({"model": "stub", "response": "9", "done": True, "eval_count": 10}))
        return b"application/x-ndjson", "".join(line + "\n" for line in lines).encode(), True
    if path == "/v1/chat/completions":
        events = [
            json.dumps({"choices": [{"index": 0, "delta": {"content": str(i)}, "finish_reason": None}]})
            for i in range(10)
        ]
        text = "".join(f"data: {e}\n\n" for e in events) + "data: [DONE]\n\n"
        return b"text/event-stream", text.encode(), True
    return b"application/json", b'{"error": "not found"}', False


class _StubProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and Content-Length bodies: just enough for this benchmark."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, path, _ = head[0].split(" ", 2)
            content_type, answer, chunked = _stub_answer(method, path.split("?")[0], body)
            status = b"404 Not Found" if answer.startswith(b'{"error"') else b"200 OK"
            headers = b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type + b"\r\n"
            if chunked:  # one chunk per line or event, as a generating server sends them
                parts = [p + b"\n" for p in answer.split(b"\n") if p]
                if content_type == b"text/event-stream":
                    parts = [p + b"\n\n" for p in answer.split(b"\n\n") if p]
                out = headers + b"transfer-encoding: chunked\r\n\r\n"
                out += b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
            else:
                out = headers + b"content-length: %d\r\n\r\n" % len(answer) + answer
            self.transport.write(out)


async def _serve_stub(port_file: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_StubProtocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with open(port_file, "w") as f:  # noqa: ASYNC230 - once, before serving
        f.write(str(port))
    async with server:
        await server.serve_forever()


# ------------------------------------------------------------- processes


def _wait_for_file(path: Path, process: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"{process.args} did not start")


@contextlib.contextmanager
def _process(command: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextlib.contextmanager
def stub_server() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        with _process([sys.executable, __file__, "--stub", str(port_file)]) as process:
            yield f"http://127.0.0.1:{_wait_for_file(port_file, process)}"


class Proxied:
    """A running proxy: its URL and the CPU seconds its process has used so far."""

    def __init__(self, url: str, pid: int) -> None:
        self.url = url
        self.pid = pid

    def cpu_seconds(self) -> float:
        """User and system CPU time of the proxy process (Linux /proc; NaN elsewhere)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def proxy(upstream: str, api: str) -> Iterator[Proxied]:
    """``python -m sjfsched serve`` on a free port."""
    with tempfile.TemporaryFile() as out:
        command = [sys.executable, "-m", "sjfsched", "serve", "--upstream", upstream]
        command += ["--listen", "127.0.0.1:0", "--upstream-api", api, "--log-level", "warning"]
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                out.seek(0)
                text = out.read().decode()
                if "listening on " in text:
                    url = text.split("listening on ", 1)[1].split()[0]
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the proxy did not start:\n{text}")
                time.sleep(0.05)
            _get(url, "/healthz")
            yield Proxied(url, process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)


@contextlib.contextmanager
def llama_server() -> Iterator[str]:
    """``llama_cpp.server`` with the tiny random-weight model, one thread."""
    import httpx

    from sjfsched.testing import write_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_llama(Path(tmp) / "tiny.gguf", n_ctx=512)
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "tiny"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1"]
        command += ["--n_threads_batch", "1", "--verbose", "False"]
        with _process(command, env={**os.environ, "OMP_NUM_THREADS": "1"}) as process:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("llama_cpp.server did not start")
                time.sleep(0.1)
            yield url


# ---------------------------------------------------------------- client


def _get(url: str, path: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", path)
    connection.getresponse().read()
    connection.close()


class _Client:
    """One kept-alive connection; times a request from sending it to the last byte of the answer."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)

    def time(self, method: str, path: str, body: bytes | None) -> float:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        t0 = time.perf_counter()
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - t0
        if response.status != 200 or not data:
            raise RuntimeError(f"{method} {path} answered {response.status}: {data[:200]!r}")
        return elapsed


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(
    name: str, direct: str, through: Proxied, method: str, path: str, body: bytes | None, n: int
) -> None:
    a, b = _Client(direct), _Client(through.url)
    for _ in range(min(50, n)):  # warm up both paths (connections, caches, rates)
        a.time(method, path, body)
        b.time(method, path, body)
    d: list[float] = []
    p: list[float] = []
    c0 = through.cpu_seconds()  # the proxy works only on the proxied half
    for i in range(n):
        if i % 2:
            d.append(a.time(method, path, body))
            p.append(b.time(method, path, body))
        else:
            p.append(b.time(method, path, body))
            d.append(a.time(method, path, body))
    cpu = through.cpu_seconds() - c0
    diff = [y - x for x, y in zip(d, p, strict=True)]
    ms = 1000.0
    print(
        f"{name:<44} {statistics.median(d) * ms:>8.3f} {_percentile(d, 0.95) * ms:>8.3f}"
        f" {statistics.median(p) * ms:>8.3f} {_percentile(p, 0.95) * ms:>8.3f}"
        f" {(statistics.median(p) - statistics.median(d)) * ms:>9.3f} {statistics.median(diff) * ms:>9.3f}"
        f" {_percentile(diff, 0.95) * ms:>9.3f} {cpu / n * ms:>9.3f}",
        flush=True,
    )


def compare_clients(stub: str, n: int) -> None:
    """One upstream request, in this process: httpx's AsyncClient against the proxy's own client."""
    from sjfsched.proxy._client import UpstreamClient

    body = json.dumps({"model": "stub", "prompt": "Why is the sky blue?", "stream": False}).encode()

    async def own() -> list[float]:
        client = UpstreamClient(stub)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            response = await client.request(
                "POST", "/api/generate", [(b"content-type", b"application/json")], body
            )
            await response.read()
            response.close()
            times.append(time.perf_counter() - t0)
        await client.aclose()
        return times

    async def with_httpx() -> list[float]:
        import httpx

        times = []
        async with httpx.AsyncClient() as client:
            for _ in range(n):
                t0 = time.perf_counter()
                response = await client.post(f"{stub}/api/generate", content=body)
                await response.aread()
                times.append(time.perf_counter() - t0)
        return times

    for name, run in (("httpx.AsyncClient", with_httpx), ("the proxy's UpstreamClient", own)):
        try:
            times = asyncio.run(run())[n // 10 :]  # after a warm-up
        except ImportError:
            print(f"{name}: not installed")
            continue
        print(f"  {name:<28} {statistics.median(times) * 1000:.3f} ms median per request to the stub")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=at_least_one, default=2000, help="timed requests per stub scenario"
    )
    parser.add_argument(
        "--model-requests", type=at_least_one, default=300, help="timed requests with the real model"
    )
    parser.add_argument("--no-model", action="store_true", help="skip the llama_cpp.server scenario")
    parser.add_argument("--stub", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stub:
        asyncio.run(_serve_stub(args.stub))
        return

    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; milliseconds per request, one at a time;"
        " proxy CPU: the proxy process's CPU time per proxied request (mean)"
    )
    print(
        f"{'scenario':<44} {'direct':>8} {'p95':>8} {'proxied':>8} {'p95':>8}"
        f" {'added':>9} {'paired':>9} {'p95':>9} {'proxy':>9}"
    )
    print(
        f"{'':<44} {'median':>8} {'':>8} {'median':>8} {'':>8} {'(medians)':>9} {'median':>9} {'':>9}"
        f" {'CPU':>9}"
    )
    generate = json.dumps({"model": "stub", "prompt": "Why is the sky blue?", "stream": False}).encode()
    stream = json.dumps({"model": "stub", "prompt": "Why is the sky blue?"}).encode()
    chat = json.dumps(
        {"model": "stub", "messages": [{"role": "user", "content": "Why is the sky blue?"}], "stream": True}
    ).encode()
    scenarios = (
        ("stub  POST /api/generate (whole answer)", "POST", "/api/generate", generate),
        ("stub  POST /api/generate (10 NDJSON lines)", "POST", "/api/generate", stream),
        ("stub  POST /v1/chat/completions (10 SSE)", "POST", "/v1/chat/completions", chat),
        ("stub  GET /api/tags (passed through)", "GET", "/api/tags", None),
    )
    with stub_server() as stub, proxy(stub, "ollama") as through:
        for name, method, path, body in scenarios:
            measure(name, stub, through, method, path, body, args.requests)
        print("Upstream HTTP clients, one request at a time from this process (asyncio):")
        compare_clients(stub, args.requests)
    if not args.no_model:
        messages = [{"role": "user", "content": "Why is the sky blue?"}]
        with llama_server() as upstream, proxy(upstream, "openai") as through:
            for name, tokens, stream in (
                ("llama_cpp.server tiny, 8 tokens, whole answer", 8, False),
                ("llama_cpp.server tiny, 8 tokens, streamed", 8, True),
                ("llama_cpp.server tiny, 64 tokens, streamed", 64, True),
            ):
                body = {
                    "model": "tiny",
                    "messages": messages,
                    "max_tokens": tokens,
                    "min_tokens": tokens,
                    "stream": stream,
                }
                path = "/v1/chat/completions"
                measure(name, upstream, through, "POST", path, json.dumps(body).encode(), args.model_requests)


if __name__ == "__main__":
    main()
