"""Clients that misbehave, and pages that are not this machine's: the proxy stays whole.

Real sockets on 127.0.0.1 against the proxy as ``sjfsched serve`` runs it
(uvicorn, the bounded protocol, the app), in front of a stub upstream that
answers as Ollama does, quickly and at length.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from sjfsched.proxy._app import host_allowed, listens_on_loopback
from sjfsched.proxy._server import MAX_HEAD_BYTES
from tests.support.wire_server import ChunkedAnswers, serving

from .conftest import ProxyFactory

#: Lines of the stub's streamed answer: 20 MB, more than a client's socket buffers take.
LINES = 20_000
LINE = json.dumps({"model": "m", "response": "x" * 1000, "done": False}).encode() + b"\n"


@contextlib.contextmanager
def long_answers(lines: int = LINES) -> Iterator[str]:
    """An upstream answering every /api/generate with ``lines`` lines of 1 KB of NDJSON (20 MB),
    then its "done" line."""

    class Handler(ChunkedAnswers):
        def do_POST(self) -> None:
            self.begin("application/x-ndjson")
            done = {"model": "m", "response": "", "done": True, "eval_count": lines}
            with contextlib.suppress(OSError):
                for _ in range(lines // 100):
                    self.chunk(LINE * 100)
                self.chunk(json.dumps(done).encode() + b"\n")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

    with serving(Handler) as url:
        yield url


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def answer_of(sock: socket.socket) -> bytes:
    """Everything the proxy sends until it closes the connection (10 s at most)."""
    sock.settimeout(10)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_a_request_head_past_the_bound_is_431(start_proxy: ProxyFactory) -> None:
    """uvicorn's httptools protocol took a head of any size (a reviewer's 400 MiB of headers)."""
    with long_answers() as upstream:
        proxy = start_proxy(upstream, upstream_api="ollama")
        with connect(proxy.url) as sock:
            sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            with contextlib.suppress(OSError):  # the proxy may close before all of it is sent
                for i in range(MAX_HEAD_BYTES // 1000 + 10):
                    sock.sendall(b"X-Padding-%d: %s\r\n" % (i, b"a" * 1000))
            assert answer_of(sock).startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        assert httpx.get(f"{proxy.url}/healthz", timeout=10).status_code == 200  # and it goes on


def test_one_header_past_the_bound_is_431_before_it_is_whole(start_proxy: ProxyFactory) -> None:
    """httptools gathers a header whole before handing it on: the bytes are counted as they come."""
    with long_answers() as upstream:
        proxy = start_proxy(upstream, upstream_api="ollama")
        with connect(proxy.url) as sock:
            sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: ")
            with contextlib.suppress(OSError):
                for _ in range(2 * MAX_HEAD_BYTES // 4096):
                    sock.sendall(b"a" * 4096)
            assert answer_of(sock).startswith(b"HTTP/1.1 431 ")


def test_a_connection_that_sends_nothing_is_closed(start_proxy: ProxyFactory) -> None:
    with long_answers() as upstream:
        proxy = start_proxy(upstream, upstream_api="ollama", client_timeout=0.5)
        with connect(proxy.url) as sock:
            began = time.monotonic()
            assert answer_of(sock).startswith(b"HTTP/1.1 408 ")
        assert 0.4 < time.monotonic() - began < 5


def test_a_head_sent_too_slowly_is_408(start_proxy: ProxyFactory) -> None:
    """A head begun and never finished kept its connection for ever (slowloris)."""
    with long_answers() as upstream:
        proxy = start_proxy(upstream, upstream_api="ollama", client_timeout=0.5)
        with connect(proxy.url) as sock:
            began = time.monotonic()
            sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            answer = answer_of(sock)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert 0.4 < time.monotonic() - began < 5


def test_a_body_sent_too_slowly_is_408_and_counted(start_proxy: ProxyFactory) -> None:
    with long_answers() as upstream:
        proxy = start_proxy(upstream, upstream_api="ollama", client_timeout=0.5)
        body = json.dumps({"model": "m", "prompt": "hi"}).encode()
        with connect(proxy.url) as sock:
            sock.sendall(
                b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:5])
            )
            answer = answer_of(sock)
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert "--client-timeout" in json.loads(rest)["error"]
        assert proxy.metrics()['sjfsched_rejected_total{reason="client_timeout"}'] == 1


def test_a_client_that_reads_nothing_of_its_answer_gives_up_its_slot(start_proxy: ProxyFactory) -> None:
    """It held the only slot as long as it stayed connected: every other request waited."""
    with long_answers() as upstream:
        proxy = start_proxy(upstream, upstream_api="ollama", client_timeout=1.0, concurrency=1)
        body = json.dumps({"model": "m", "prompt": "a long one"}).encode()
        with connect(proxy.url) as stuck:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.sendall(
                b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            proxy.wait_until(lambda s: s.running == 1)
            began = time.monotonic()
            with httpx.Client(timeout=30) as client:
                other = client.post(f"{proxy.url}/api/generate", json={"model": "m", "prompt": "me too"})
            assert other.status_code == 200 and other.text.endswith('"eval_count": 20000}\n')
            assert time.monotonic() - began < 20
            # Its connection was aborted, not closed: a close waits for the client to take what was
            # written, which it never does (uvicorn kept the connection, its socket and buffers).
            deadline = time.monotonic() + 10
            while proxy.server.server_state.connections and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not proxy.server.server_state.connections  # the stuck socket is still open here
        proxy.wait_until(lambda s: s.running == 0 and s.waiting == 0)
        stats = proxy.stats()
        assert (stats.cancelled, stats.completed) == (1, 1)


def test_a_request_naming_another_host_is_refused(start_proxy: ProxyFactory) -> None:
    """DNS rebinding: a page whose name now points at 127.0.0.1 reaches the proxy, which sends the
    upstream its own Host; Ollama's check of the Host (allowedHostsMiddleware) is made here."""
    with long_answers() as upstream:
        proxy = start_proxy(upstream, upstream_api="ollama")
        port = proxy.url.rsplit(":", 1)[1]
        with httpx.Client(timeout=10) as client:
            for path in ("/api/tags", "/metrics", "/healthz"):
                refused = client.get(f"{proxy.url}{path}", headers={"Host": "evil.example"})
                assert refused.status_code == 403, path
            assert refused.json() == {"error": "the Host of this request is not this machine's"}
            for host in (f"localhost:{port}", f"127.0.0.1:{port}", "my-box.local", "[::1]"):
                assert client.get(f"{proxy.url}/healthz", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        (None, True),
        (b"localhost", True),
        (b"LOCALHOST:8080", True),
        (b"127.0.0.1:8080", True),
        (b"[::1]:8080", True),
        (b"192.168.1.20:8080", True),  # a private address: this machine on its network
        (b"0.0.0.0", True),
        (b"app.localhost", True),
        (b"box.local:8080", True),
        (b"host.docker.internal", True),
        (b"evil.example", False),
        (b"evil.example:8080", False),
        (b"8.8.8.8", False),
        (b"localhost.evil.example", False),
    ],
)
def test_which_hosts_are_this_machines(host: bytes | None, allowed: bool) -> None:
    assert host_allowed(host) is allowed


def test_only_a_proxy_listening_on_loopback_checks_the_host() -> None:
    assert (
        listens_on_loopback("127.0.0.1") and listens_on_loopback("::1") and listens_on_loopback("localhost")
    )
    assert not listens_on_loopback("0.0.0.0") and not listens_on_loopback("192.168.1.5")


def test_a_large_body_is_parsed_off_the_event_loop(
    start_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chat of 280,000 small messages took 0.8 s to parse on the event loop, stalling every other
    stream (a reviewer's); it is parsed in a worker thread, and answered as before."""
    import sjfsched.proxy._app as app_module

    threads: list[str] = []
    real = app_module.parse_scheduled  # type: ignore[attr-defined]

    def spy(*args: object, **kwargs: object) -> object:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(app_module, "parse_scheduled", spy)
    with long_answers() as upstream:
        proxy = start_proxy(upstream, upstream_api="ollama")
        many = [{"role": "user", "content": f"m{i}"} for i in range(40_000)]
        with httpx.Client(timeout=30) as client:
            small = client.post(f"{proxy.url}/api/chat", json={"model": "m", "messages": many[:3]})
            large = client.post(f"{proxy.url}/api/chat", json={"model": "m", "messages": many})
            bad = client.post(
                f"{proxy.url}/api/chat", json={"model": "m", "messages": [*many, {"content": 1}]}
            )
    assert small.status_code == large.status_code == 200
    assert bad.status_code == 400 and bad.json()["error"] == "messages[40000].role must be a string"
    loop_thread, *workers = threads
    assert loop_thread == "sjfsched-proxy" and len(workers) == 2 and "sjfsched-proxy" not in workers


def test_a_streamed_pass_through_body_that_stops_coming_is_408(start_proxy: ProxyFactory) -> None:
    """A chunked body is streamed upstream as it comes; when it stops, 408 (it was uvicorn's 500)."""
    with long_answers() as upstream:
        proxy = start_proxy(upstream, upstream_api="ollama", client_timeout=0.5)
        with connect(proxy.url) as sock:
            head = b"POST /api/create HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            sock.sendall(head + b"5\r\nhello\r\n")
            assert answer_of(sock).startswith(b"HTTP/1.1 408 ")


def test_names_a_reverse_proxy_passes_on_can_be_allowed(start_proxy: ProxyFactory) -> None:
    """Caddy, and nginx with proxy_set_header Host, pass the client's Host on: --allowed-hosts."""
    with long_answers() as upstream:
        named = start_proxy(
            upstream, upstream_api="ollama", allowed_hosts="Models.Example.com, other.example"
        )
        anyone = start_proxy(upstream, upstream_api="ollama", allowed_hosts="*")
        with httpx.Client(timeout=10) as client:
            assert (
                client.get(f"{named.url}/healthz", headers={"Host": "models.example.com:443"}).status_code
                == 200
            )
            assert client.get(f"{named.url}/healthz", headers={"Host": "evil.example"}).status_code == 403
            assert client.get(f"{anyone.url}/healthz", headers={"Host": "evil.example"}).status_code == 200


def test_a_head_and_a_large_body_in_one_read_are_a_request(start_proxy: ProxyFactory) -> None:
    """urllib (http.client) sends the head and the body in one write: a body of 100 KB made the
    read past the head's bound, and the request was cut with no answer (a reviewer's)."""
    with long_answers() as upstream:
        proxy = start_proxy(upstream, upstream_api="ollama")
        body = json.dumps({"model": "m", "prompt": "x" * 100_000}).encode()
        for path in (b"/api/generate", b"/api/create"):  # scheduled, and passed through
            with connect(proxy.url) as sock:
                head = b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" % path
                sock.sendall(head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                assert answer_of(sock).startswith(b"HTTP/1.1 200 "), path


def test_many_pipelined_requests_in_one_read_are_all_answered(start_proxy: ProxyFactory) -> None:
    with long_answers() as upstream:
        proxy = start_proxy(upstream, upstream_api="ollama")
        with connect(proxy.url) as sock:
            one = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            last = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            sock.sendall(one * 1999 + last)  # 2,000 requests, 90 KB, in one write
            assert answer_of(sock).count(b"HTTP/1.1 200 OK\r\n") == 2000


def test_bytes_after_an_answer_do_not_keep_the_connection(start_proxy: ProxyFactory) -> None:
    """A stray CRLF, or a body the proxy answered without reading, stopped uvicorn's keep-alive
    timer and started no other: the connection stayed for ever."""
    with long_answers() as upstream:
        proxy = start_proxy(upstream, upstream_api="ollama", client_timeout=0.5)
        for after in (b"\r\n", b"x"):
            with connect(proxy.url) as sock:
                length = b"Content-Length: 1000000\r\n" if after == b"x" else b""
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n" % length)
                sock.settimeout(10)
                answer = b""
                while b"\r\n\r\n" not in answer:  # answered: the stray bytes come after it
                    part = sock.recv(65536)
                    assert part, answer
                    answer += part
                sock.sendall(after)
                began = time.monotonic()
                answer += answer_of(sock)
                assert answer.startswith(b"HTTP/1.1 200 ") and time.monotonic() - began < 5


def test_one_large_header_in_one_read_is_answered_431(start_proxy: ProxyFactory) -> None:
    with long_answers() as upstream:
        proxy = start_proxy(upstream, upstream_api="ollama")
        with connect(proxy.url) as sock:
            sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: %s\r\n\r\n" % (b"a" * 100_000))
            assert answer_of(sock).startswith(b"HTTP/1.1 431 ")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the proxy runs on uvicorn's asyncio loop
@pytest.mark.parametrize("reads", [True, False])
@pytest.mark.anyio
async def test_a_client_that_reads_slowly_but_steadily_is_waited_for(anyio_backend: str, reads: bool) -> None:
    """A send waits while the socket's buffer (megabytes on loopback) drains enough to wake the
    writer: timed whole, it cut a client reading steadily, if slowly (a reviewer's: 10 KiB/s at the
    default 60 s). What is timed is whether what is left unsent shrinks. Here a send waits 0.6 s
    with a bound of 0.1 s: while the bytes left go down it is waited for; if they do not, the
    request is cancelled and the connection reset."""
    import anyio

    from sjfsched.proxy._app import ABORT_EXTENSION, UNSENT_EXTENSION, _bounded_send

    left, aborted = [100_000], []
    asgi = {"extensions": {UNSENT_EXTENSION: lambda: left[0], ABORT_EXTENSION: lambda: aborted.append(1)}}
    written = anyio.Event()

    async def send(message: object) -> None:
        await written.wait()

    async def client() -> None:
        for _ in range(12):
            await anyio.sleep(0.05)
            if reads:
                left[0] -= 1000
        written.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(client)
        with anyio.CancelScope() as scope:
            await _bounded_send(send, 0.1, scope, asgi)({"type": "http.response.body", "body": b"x"})
    assert scope.cancel_called is (not reads) and bool(aborted) is (not reads)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_what_is_left_unsent_of_a_closed_connection_is_not_known(anyio_backend: str) -> None:
    """A send after the client went (its socket closed, fileno -1) failed the request with a
    ValueError from the ioctl (seen in CI: the client-gone test, now and then)."""
    import asyncio

    from sjfsched.proxy._server import _unsent

    ours, theirs = socket.socketpair()
    with theirs:
        transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, sock=ours)
        assert _unsent(transport) in (0, None)  # None where the system does not say
        transport.abort()
        await asyncio.sleep(0.01)
        assert _unsent(transport) is None
