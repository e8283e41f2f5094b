"""The HTTP backends on wire-level cases, over loopback: line ends, other servers' errors, redirects."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import ThreadingHTTPServer
from typing import Any

import anyio
import httpx
import pytest

from sjfsched import BackendError, Chunk, Request, Scheduler
from sjfsched.backends import BackendUnavailable, OllamaBackend, OpenAIBackend
from sjfsched.predictors import ConstantPredictor
from tests.support.wire_server import ChunkedAnswers, scripted_server

pytestmark = pytest.mark.anyio

SSE = "text/event-stream"


def ndjson(*messages: dict[str, Any]) -> list[bytes]:
    return [json.dumps(m, ensure_ascii=False).encode() + b"\n" for m in messages]


def sse(*events: dict[str, Any] | str) -> list[bytes]:
    return [
        b"data: " + (e if isinstance(e, str) else json.dumps(e, ensure_ascii=False)).encode() + b"\n\n"
        for e in events
    ]


def completion(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}


async def collect(backend: OllamaBackend | OpenAIBackend, request: Request) -> list[Chunk]:
    try:
        with anyio.fail_after(20):
            return [chunk async for chunk in backend.stream(request)]
    finally:
        await backend.aclose()


@pytest.mark.parametrize("separator", ["\u0085", "\u2028", "\u2029"])
async def test_unicode_line_separators_inside_json_are_text(separator: str) -> None:
    """JSON may carry U+0085, U+2028, U+2029 unescaped; only LF, CRLF and CR end a line."""
    token = f"b{separator}c"
    ollama_lines = ndjson(
        {"response": "a", "done": False},
        {"response": token, "done": False},
        {"response": "", "done": True, "done_reason": "stop", "eval_count": 2, "prompt_eval_count": 3},
    )
    with scripted_server(ollama_lines) as url:
        chunks = await collect(OllamaBackend("m", url), Request("x"))
    assert "".join(c.text for c in chunks) == f"a{token}"
    assert sum(c.tokens for c in chunks) == 2
    with scripted_server(
        [*sse(completion("a"), completion(token, "stop")), b"data: [DONE]\n\n"], content_type=SSE
    ) as url:
        chunks = await collect(OpenAIBackend(url, model="m"), Request("x"))
    assert "".join(c.text for c in chunks) == f"a{token}"
    assert chunks[-1].finish_reason == "stop"


async def test_line_ends_split_across_reads() -> None:
    """A CRLF cut between two reads is one line end; a bare CR ends a line too (server-sent events)."""
    pieces = [
        b'data: {"choices": [{"index": 0, "text": "h\xc3',
        b'\xa9", "finish_reason": null}]}\r',
        b"\n\r\n",
        b'data: {"choices": [{"index": 0, "text": "llo", "finish_reason": "stop"}]}\r\r',
        b"data: [DONE]\r\r",
    ]
    with scripted_server(pieces, content_type=SSE) as url:
        chunks = await collect(OpenAIBackend(url, model="m"), Request("x"))
    assert "".join(c.text for c in chunks) == "héllo"
    assert chunks[-1].finish_reason == "stop"


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        # llama.cpp server: an "error:" field after the 200, then [DONE].
        (
            b'error: {"code": 400, "message": "the request exceeds the available context size", '
            b'"type": "exceed_context_size_error"}\n\ndata: [DONE]\n\n',
            "exceeds the available context size",
        ),
        # A bare JSON error line, no [DONE].
        (
            b'{"error": {"message": "llama runner process has terminated", "type": "api_error", '
            b'"param": null, "code": null}}\n',
            "llama runner process has terminated",
        ),
        # An "event: error" event.
        (b"event: error\ndata: out of memory\n\n", "out of memory"),
        # OpenAI's own shape.
        (b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n', "overloaded"),
        # vLLM's (serving_engine.create_streaming_error_response): code 400 unless it says otherwise,
        # then [DONE].
        (
            b'data: {"error": {"object": "error", "message": "\'max_tokens\' is too large", '
            b'"type": "BadRequestError", "param": null, "code": 400}}\n\ndata: [DONE]\n\n',
            "'max_tokens' is too large",
        ),
    ],
    ids=["llama-server", "bare-json", "event-error", "openai", "vllm"],
)
async def test_an_error_mid_stream_fails_with_the_servers_message(tail: bytes, message: str) -> None:
    with scripted_server([*sse(completion("partial")), tail], content_type=SSE) as url:
        with pytest.raises(BackendError, match=message) as caught:
            await collect(OpenAIBackend(url, model="m"), Request("x"))
    # A 4xx code in the error is the request's fault (the server is fine); anything else, the server's.
    request_fault = b'"code": 400' in tail
    assert isinstance(caught.value, BackendUnavailable) is not request_fault
    assert caught.value.status_code == (400 if request_fault else None)


async def test_done_without_a_finish_reason_is_an_answer_cut_short() -> None:
    """llama_cpp.server's interruption: [DONE] after chunks none of which finished (it was "stop")."""
    pieces = [*sse(completion("a"), completion("b")), b"data: [DONE]\n\n"]
    with scripted_server(pieces, content_type=SSE) as url:
        with pytest.raises(BackendError, match="without a finish_reason: the answer was cut short") as caught:
            await collect(OpenAIBackend(url, model="m"), Request("x"))
    assert not isinstance(caught.value, BackendUnavailable)  # the server is fine


async def test_an_empty_finish_reason_is_none_yet() -> None:
    """sglang and Ollama's /v1 (before ollama#4357) send finish_reason "" on every chunk: no
    finish. Read as one, a stream cut short came back whole, ending in "stop"."""
    pieces = sse(completion("Hello", ""), completion(" wor", ""))
    with scripted_server(pieces, content_type=SSE) as url:
        with pytest.raises(BackendUnavailable, match="before the answer was complete"):
            await collect(OpenAIBackend(url, model="m"), Request("x"))
    pieces = [
        *sse(completion("Hello", ""), completion(" world", ""), completion("", "length")),
        b"data: [DONE]\n\n",
    ]
    with scripted_server(pieces, content_type=SSE) as url:
        chunks = await collect(OpenAIBackend(url, model="m"), Request("x", max_tokens=2))
    assert "".join(c.text for c in chunks) == "Hello world"
    assert [c.finish_reason for c in chunks] == [None, None, "length"]


@pytest.mark.parametrize(
    ("lines", "repeat_limit"),
    [
        # 31 pieces alike, trimmed: Ollama's token repeat limit (before ollama#18374).
        ([{"response": " the", "done": False}] * 31, True),
        # Thinking that differs, with no answer text yet: Ollama compares the raw output.
        ([{"response": "", "thinking": f"step {i} ", "done": False} for i in range(40)], False),
        # Tool calls are no piece the model repeated.
        ([{"response": "", "tool_calls": [{"function": {"name": "f"}}], "done": False}] * 35, False),
    ],
    ids=["pieces-alike", "thinking", "tool-calls"],
)
async def test_an_ollama_stream_ended_without_its_final_line(
    lines: list[dict[str, Any]], repeat_limit: bool
) -> None:
    with scripted_server(ndjson(*lines)) as url:
        with pytest.raises(BackendError, match=r"without its final line|before its final line") as caught:
            await collect(OllamaBackend("m", url), Request("x"))
    assert isinstance(caught.value, BackendUnavailable) is not repeat_limit


async def test_an_event_without_data_is_skipped() -> None:
    pieces = [b"data:\n\n", *sse(completion("Hello", "stop")), b"data: [DONE]\n\n"]
    with scripted_server(pieces, content_type=SSE) as url:
        chunks = await collect(OpenAIBackend(url, model="m"), Request("x"))
    assert "".join(c.text for c in chunks) == "Hello"


@pytest.mark.parametrize("service", ["ollama", "openai"])
async def test_a_redirect_is_an_error_naming_where_it_points(service: str) -> None:
    moved = [("Location", "https://example.invalid/v1")]
    with scripted_server([b"<html>Moved</html>"], status=308, content_type="text/html", headers=moved) as url:
        backend = OllamaBackend("m", url) if service == "ollama" else OpenAIBackend(url, model="m")
        with pytest.raises(BackendError, match=r"308 .*redirected to https://example\.invalid/v1") as caught:
            await collect(backend, Request("x"))
        assert not isinstance(caught.value, BackendUnavailable)
        assert caught.value.status_code == 308
        # The model lookup (GET /api/tags, GET /models) too.
        if service == "ollama":
            lookup = OllamaBackend("m", url)
            with pytest.raises(BackendError, match="redirected to"):
                await lookup.models()
            await lookup.aclose()
        else:
            with pytest.raises(BackendError, match="redirected to"):
                await collect(OpenAIBackend(url), Request("x"))  # no model: it asks the server


@contextlib.contextmanager
def holding_server(
    first: Sequence[bytes], last: Sequence[bytes], *, content_type: str, together: int, hold: float = 3.0
) -> Iterator[tuple[str, list[int]]]:
    """Answers every POST with ``first``, holds the answer open, then sends ``last``.

    Each answer is held until ``together`` answers are open at once, or for
    ``hold`` seconds at most.  Yields the base URL and a list whose one item
    is the most answers that were open at once.
    """
    lock = threading.Lock()
    everyone = threading.Barrier(together)
    open_now, most = [0], [0]

    class Handler(ChunkedAnswers):
        def do_POST(self) -> None:
            self.begin(content_type)
            with lock:
                open_now[0] += 1
                most[0] = max(most[0], open_now[0])
            try:
                with contextlib.suppress(OSError):
                    for piece in first:
                        self.chunk(piece)
                    self.wfile.flush()
                    with contextlib.suppress(threading.BrokenBarrierError):
                        everyone.wait(hold)
                    for piece in last:
                        self.chunk(piece)
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
            finally:
                with lock:
                    open_now[0] -= 1

    class Server(ThreadingHTTPServer):
        request_queue_size = 4 * together  # every client connects at once

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", most
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("service", ["ollama", "openai"])
async def test_every_slot_streams_at_once_beyond_httpxs_default_pool(service: str) -> None:
    """More slots than httpx's default 100 connections: the backend's client opens one for each.

    The server holds every answer open until all of them are open at once (3 s
    at most); with a pool of 100 the others waited for a connection and failed
    after the pool timeout (the connect timeout, 1 s here).
    """
    slots = 110
    if service == "ollama":
        first = ndjson({"response": "a", "done": False})
        last = ndjson({"response": "", "done": True, "done_reason": "stop", "eval_count": 1})
        content_type = "application/x-ndjson"
    else:
        first, last, content_type = sse(completion("a")), sse(completion("", "stop"), "[DONE]"), SSE
    with holding_server(first, last, content_type=content_type, together=slots) as (url, most):
        backend: OllamaBackend | OpenAIBackend
        if service == "ollama":
            backend = OllamaBackend("m", url, slots=slots, connect_timeout=1.0)
        else:
            backend = OpenAIBackend(url, model="m", slots=slots, connect_timeout=1.0)
        texts: list[str] = []
        async with Scheduler(backend, predictor=ConstantPredictor()) as sched:
            assert sched.concurrency == slots

            async def one(i: int) -> None:
                texts.append((await sched.complete(f"prompt {i}")).text)

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for i in range(slots):
                        tg.start_soon(one, i)
        assert texts == ["a"] * slots
        assert most == [slots]


async def test_a_callers_client_timeout_is_the_one_quoted() -> None:
    with scripted_server([b'{"response": "a", "done": false}\n'], pause=2.0) as url:
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=0.3)) as client:
            backend = OllamaBackend("m", url, client=client)
            with pytest.raises(BackendUnavailable, match=r"sent nothing for 0\.3 s"):
                await collect(backend, Request("x"))


async def test_the_line_splitter_on_awkward_reads() -> None:
    from sjfsched.backends._http import _lines

    async def reads(*pieces: bytes) -> Any:
        for piece in pieces:
            yield piece

    async def lines(*pieces: bytes) -> list[str]:
        return [line async for line in _lines(reads(*pieces))]

    assert await lines(b"a\r", b"\nb\r", b"c\n", b"\xe2\x80", b"\xa8d\re") == ["a", "b", "c", "\u2028d", "e"]
    assert await lines(b"x\r\r\ny\n\n") == ["x", "", "y", ""]
    long = b"z" * 1_000_000
    assert await lines(*(long[i : i + 4096] for i in range(0, len(long), 4096)), b"\n") == [long.decode()]


@pytest.mark.parametrize("service", ["ollama", "openai"])
async def test_one_connection_serves_requests_one_after_another(service: str) -> None:
    """Keep-alive: the body is read to its end after the last message, so httpx pools the connection.

    It stopped at the last message and closed the response half-read: a new
    TCP connection (and TLS handshake) for every request.
    """
    if service == "ollama":
        pieces = ndjson(
            {"response": "a", "done": False},
            {"response": "", "done": True, "done_reason": "stop", "eval_count": 1, "prompt_eval_count": 1},
        )
        content_type = "application/x-ndjson"
    else:
        pieces = [*sse(completion("a", "stop")), b"data: [DONE]\n\n"]
        content_type = SSE
    connections: list[object] = []
    with scripted_server(pieces, content_type=content_type, connections=connections, pause=0.0) as url:
        backend = OllamaBackend("m", url) if service == "ollama" else OpenAIBackend(url, model="m")
        async with Scheduler(backend, predictor=ConstantPredictor()) as sched:
            with anyio.fail_after(20):
                answers = [await sched.complete(f"question {i}") for i in range(5)]
    assert [a.text for a in answers] == ["a"] * 5
    assert len(connections) == 1


@pytest.mark.parametrize("service", ["ollama", "openai"])
async def test_a_server_slow_to_end_the_body_does_not_hold_the_answer(service: str) -> None:
    """The rest of the body is read after the last chunk is given, and only briefly (0.02 s).

    Read for up to a second before the last chunk, it held every answer of
    a server that keeps the body open after its last message that long.
    """
    if service == "ollama":
        pieces = ndjson({"response": "a", "done": True, "done_reason": "stop", "eval_count": 1})
        content_type = "application/x-ndjson"
    else:
        pieces = [sse(completion("a", "stop"))[0] + b"data: [DONE]\n\n"]
        content_type = SSE
    with scripted_server(pieces, content_type=content_type, pause=3.0) as url:  # the end 3 s later
        backend = OllamaBackend("m", url) if service == "ollama" else OpenAIBackend(url, model="m")
        async with Scheduler(backend, predictor=ConstantPredictor()) as sched:
            with anyio.fail_after(0.9):
                answer = await sched.complete("question")
    assert (answer.text, answer.finish_reason) == ("a", "stop")


@pytest.mark.parametrize("service", ["ollama", "openai"])
async def test_a_429_is_the_servers_load_and_a_pool_fails_over(service: str) -> None:
    """A 429 (a rate limit; another sjfsched proxy's full queue, on its OpenAI API) was taken for
    the request's fault: a pool neither failed over nor took the member out of rotation."""
    from sjfsched.backends import BackendPool

    busy_body = json.dumps({"error": {"message": "too many requests are waiting", "code": "queue_full"}})
    answer = (
        ndjson({"response": "ok", "done": True, "done_reason": "stop", "eval_count": 1})
        if service == "ollama"
        else sse(completion("ok", "stop"), "[DONE]")
    )
    kind = "application/x-ndjson" if service == "ollama" else SSE
    with (
        scripted_server([busy_body.encode()], status=429, content_type="application/json") as busy,
        scripted_server(answer, content_type=kind) as free,
    ):

        def backend(url: str) -> OllamaBackend | OpenAIBackend:
            return OllamaBackend("m", url) if service == "ollama" else OpenAIBackend(url, model="m")

        with pytest.raises(BackendUnavailable, match=r"429 .*too many requests are waiting") as caught:
            await collect(backend(busy), Request("x"))
        assert caught.value.status_code == 429
        pool = BackendPool([backend(busy), backend(free)], retry_after=30)
        with anyio.fail_after(20):
            chunks = [chunk async for chunk in pool.stream(Request("x"))]
        assert "".join(c.text for c in chunks) == "ok"
        stats = pool.statistics()
        assert stats.failovers == 1 and not stats.members[0].healthy
        await pool.aclose()


async def test_a_429_in_an_openai_streams_error_event_is_the_servers_load_too() -> None:
    """An error event carrying code 429 was the request's fault (a BackendError), though a 429
    status is the server's load."""
    busy = b'data: {"error": {"message": "rate limited", "type": "rate_limit_error", "code": 429}}\n\n'
    events = [*sse(completion("a")), busy]
    with scripted_server(events, content_type=SSE) as url:
        with pytest.raises(BackendUnavailable, match="rate limited") as caught:
            await collect(OpenAIBackend(url, model="m"), Request("x"))
    assert caught.value.status_code == 429


async def test_counts_no_answer_could_have_are_ignored_and_counted_here() -> None:
    """A server's count past any answer's (or a float's range) is treated as missing, not trusted."""
    ollama_lines = ndjson(
        {"response": "a", "done": False},
        {
            "response": "b",
            "done": True,
            "done_reason": "stop",
            "eval_count": 10**12,
            "prompt_eval_count": 10**400,
        },
    )
    with scripted_server(ollama_lines) as url:
        chunks = await collect(OllamaBackend("m", url), Request("x"))
    assert [(c.text, c.tokens, c.prompt_tokens) for c in chunks] == [("a", 1, None), ("b", 1, None)]
    usage = {"choices": [], "usage": {"prompt_tokens": 10**400, "completion_tokens": 10**12}}
    with scripted_server(
        [*sse(completion("a"), completion("b", "stop"), usage), b"data: [DONE]\n\n"], content_type=SSE
    ) as url:
        chunks = await collect(OpenAIBackend(url, model="m"), Request("x"))
    assert sum(c.tokens for c in chunks) == 2
    assert all(c.prompt_tokens is None for c in chunks)


async def test_a_max_tokens_past_any_answer_is_no_count_of_a_cut_answer() -> None:
    """A server without usage that stops for "length" is counted max_tokens (with at least half
    that many pieces: test_fidelity.py); a max_tokens past
    MAX_TOKEN_COUNT made that count a Chunk refused, and a whole answer failed (a reviewer's)."""
    events = [*sse(completion("hello "), completion("world", "length")), b"data: [DONE]\n\n"]
    for max_tokens, total in ((4, 4), (10**12, 2)):
        with scripted_server(events, content_type=SSE) as url:
            chunks = await collect(
                OpenAIBackend(url, model="m", include_usage=False), Request("x", max_tokens=max_tokens)
            )
        assert "".join(c.text for c in chunks) == "hello world"
        assert sum(c.tokens for c in chunks) == total


def _read_request(conn: Any) -> bytes:
    """The body of the next request on a raw socket (``b""`` if the client closed it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            return b""
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    size = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
    while len(body) < size:
        body += conn.recv(65536)
    return body


@contextlib.contextmanager
def _raw_server(handle: Callable[[Any], None]) -> Iterator[str]:
    """A loopback TCP server running ``handle(connection)`` in a thread of its own per
    connection; yields its URL."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def _reset(conn: Any) -> None:
    import socket
    import struct

    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@contextlib.contextmanager
def _unanswering_server(mode: str) -> Iterator[tuple[str, list[bytes]]]:
    """A loopback server that reads each request whole, then closes the connection (``close``),
    resets it (``reset``) or answers a malformed head (``garbage``); yields its URL and the
    request bodies it received."""
    received: list[bytes] = []

    def handle(conn: Any) -> None:
        with conn:
            received.append(_read_request(conn))
            if mode == "reset":
                _reset(conn)
            elif mode == "garbage":
                conn.sendall(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n")

    with _raw_server(handle) as url:
        yield url, received


@pytest.mark.parametrize("mode", ["close", "reset", "garbage"])
async def test_a_request_the_server_got_is_not_sent_again(mode: str) -> None:
    # A request refused on a new connection was sent once more: the server got the generation
    # twice. Only a kept-alive connection closed under the request is tried again.
    with _unanswering_server(mode) as (url, received):
        backend = OllamaBackend("tiny", url)
        with pytest.raises(BackendUnavailable, match="broke mid-response"):
            await collect(backend, Request("Hi", max_tokens=2))
        await backend.aclose()
    assert len(received) == 1


@contextlib.contextmanager
def _resetting_second_requests(delay: float) -> Iterator[tuple[str, list[bytes]]]:
    """A loopback server that answers each connection's first request (keeping it alive) and,
    ``delay`` seconds after reading its second, resets it; yields its URL and the bodies."""
    received: list[bytes] = []
    answer = b'{"response": "ok", "done": true, "eval_count": 1}\n'

    def handle(conn: Any) -> None:
        with conn:
            for n in (1, 2):
                body = _read_request(conn)
                if not body:
                    return
                received.append(body)
                if n == 1:
                    head = (
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n"
                    )
                    conn.sendall(head % len(answer) + answer)
                else:
                    time.sleep(delay)
                    _reset(conn)

    with _raw_server(handle) as url:
        yield url, received


@pytest.mark.parametrize(("delay", "sent"), [(0.0, 3), (1.0, 2)])
async def test_a_kept_alive_connection_reset_under_a_request_is_retried_only_at_once(
    delay: float, sent: int
) -> None:
    # Reset at once: the connection's fault, sent again on a new one. Reset after the server had
    # worked on it a while: it was sent again all the same, a generation run twice.
    with _resetting_second_requests(delay) as (url, received):
        backend = OllamaBackend("tiny", url)

        async def answer(prompt: str) -> str:  # the backend kept open: its connection kept alive
            return "".join([chunk.text async for chunk in backend.stream(Request(prompt))])

        assert await answer("one") == "ok"
        if sent == 3:
            assert await answer("two") == "ok"
        else:
            with pytest.raises(BackendUnavailable, match="broke mid-response"):
                await answer("two")
        await backend.aclose()
    assert len(received) == sent


async def test_a_content_type_of_the_callers_own_is_kept() -> None:
    # Encoding the JSON ourselves, we set Content-Type over one the caller gave (headers=, or
    # their client's own), where httpx's json= kept it.
    from http.server import BaseHTTPRequestHandler

    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers["Content-Type"])
            body = b'{"done": true}\n'
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    mine = "application/json; charset=utf-8"
    own = httpx.AsyncClient(headers={"content-type": mine})
    backends = [
        OllamaBackend("tiny", url),
        OllamaBackend("tiny", url, headers={"Content-Type": mine}),
        OllamaBackend("tiny", url, client=own),
    ]
    try:
        for backend in backends:
            await collect(backend, Request("Hi"))
            await backend.aclose()
    finally:
        await own.aclose()
        server.shutdown()
        server.server_close()
    assert seen == ["application/json", mine, mine]


async def test_a_failed_connection_to_this_machine_does_not_blame_the_environments_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loopback server is reached past HTTP_PROXY, so its refusal must not name the proxy."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        for case in (name, name.lower()):
            monkeypatch.delenv(case, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    import socket

    with socket.socket() as s:  # a free port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OllamaBackend("tiny", f"http://127.0.0.1:{port}")
    with pytest.raises(BackendUnavailable, match="cannot connect to Ollama") as caught:
        await collect(backend, Request("x", max_tokens=4))
    assert "proxy" not in str(caught.value)
