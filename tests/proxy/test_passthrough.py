"""Pass-through of calls the Ollama test server does not have: ``/api/pull`` progress, blobs.

A small threaded server stands in for Ollama's model management here
(``POST /api/pull`` streams NDJSON progress, ``POST /api/blobs/<digest>``
takes an upload, ``GET /blob`` sends a large body); what is tested is the
proxy: streaming both ways, unchanged bytes, and a stream cut mid-way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from .conftest import ProxyFactory

pytestmark = pytest.mark.slow

BLOB = bytes(range(256)) * (3 * 4096)  # 3 MiB


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path == "/etag":  # a 304 that states the length of what it does not send (RFC 9110 allows it)
            fresh = self.headers.get("If-None-Match") == '"v1"'
            self.send_response(304 if fresh else 200)
            self.send_header("ETag", '"v1"')
            self.send_header("Content-Length", "12")
            self.end_headers()
            if not fresh:
                self.wfile.write(b"hello world!")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(BLOB)))
        self.end_headers()
        self.wfile.write(BLOB)

    def do_POST(self) -> None:
        if self.path.startswith("/api/blobs/"):
            digest = hashlib.sha256()
            size = 0
            if self.headers.get("Transfer-Encoding") == "chunked":
                while (length := int(self.rfile.readline().strip(), 16)) > 0:
                    data = self.rfile.read(length)
                    self.rfile.readline()
                    digest.update(data)
                    size += len(data)
                self.rfile.readline()
            else:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                digest.update(data)
                size = len(data)
            body = json.dumps({"size": size, "sha256": digest.hexdigest()}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, status in enumerate(("pulling manifest", "downloading", "verifying digest", "success")):
            if i == 2 and self.headers.get("X-Cut"):
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self._chunk(json.dumps({"status": status}).encode() + b"\n")
            time.sleep(0.3)
        self._chunk(b"")


@contextlib.contextmanager
def _model_store() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_streams_and_large_bodies_pass_through(start_proxy: ProxyFactory) -> None:
    with _model_store() as upstream:
        proxy = start_proxy(upstream, upstream_api="ollama")
        with httpx.Client(timeout=30) as client:
            t0 = time.monotonic()
            with client.stream("POST", f"{proxy.url}/api/pull", json={"model": "llama3.2"}) as response:
                arrivals = [
                    (time.monotonic() - t0, json.loads(line)) for line in response.iter_lines() if line
                ]
            assert [line["status"] for _, line in arrivals] == [
                "pulling manifest",
                "downloading",
                "verifying digest",
                "success",
            ]
            # each line as it was sent, 0.3 s apart (a buffered answer comes at once); slack for load
            assert arrivals[-1][0] - arrivals[0][0] > 0.3

            upload = client.post(f"{proxy.url}/api/blobs/sha256:x", content=BLOB)  # above 1 MiB: streamed
            chunked = client.post(
                f"{proxy.url}/api/blobs/sha256:y",
                content=(BLOB[i : i + 65536] for i in range(0, len(BLOB), 65536)),
            )
            download = client.get(f"{proxy.url}/blob")
    expected = {"size": len(BLOB), "sha256": hashlib.sha256(BLOB).hexdigest()}
    assert upload.status_code == chunked.status_code == 201
    assert upload.json() == chunked.json() == expected
    assert download.content == BLOB and download.headers["content-length"] == str(len(BLOB))
    assert proxy.stats().completed == 0
    assert proxy.metrics()["sjfsched_passthrough_requests_total"] == 4


def test_a_not_modified_answer_with_a_length_keeps_the_connection(start_proxy: ProxyFactory) -> None:
    with _model_store() as upstream:
        proxy = start_proxy(upstream, upstream_api="ollama")
        with httpx.Client(timeout=30) as client:
            first = client.get(f"{proxy.url}/etag")
            answers = [client.get(f"{proxy.url}/etag", headers={"If-None-Match": '"v1"'}) for _ in range(3)]
            after = client.get(f"{proxy.url}/etag")
    assert first.status_code == 200 and first.content == b"hello world!"
    assert [a.status_code for a in answers] == [304, 304, 304]
    assert all(a.content == b"" and "content-length" not in a.headers for a in answers)
    assert after.status_code == 200 and after.content == b"hello world!"


def test_a_passed_through_stream_cut_by_the_upstream_ends_with_an_error_line(
    start_proxy: ProxyFactory,
) -> None:
    with _model_store() as upstream:
        proxy = start_proxy(upstream, upstream_api="ollama")
        with httpx.Client(timeout=30) as client:
            response = client.post(f"{proxy.url}/api/pull", json={"model": "x"}, headers={"X-Cut": "1"})
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line.get("status") for line in lines[:-1]] == ["pulling manifest", "downloading"]
    assert "broke off its answer" in lines[-1]["error"]
    assert proxy.metrics()['sjfsched_upstream_errors_total{kind="midstream"}'] == 1
