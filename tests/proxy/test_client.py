"""The proxy's own HTTP/1.1 client against scripted loopback servers: framing, reuse, failures.

The client runs on the proxy's event loop, which is uvicorn's asyncio loop,
so these tests run on asyncio only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sjfsched.proxy._client import (
    _HIGH_WATER,
    STALE_CLOSE_WINDOW,
    AnswerBroken,
    ConnectFailed,
    ReadTimedOut,
    UpstreamClient,
)

from .harness import free_port

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Scripted:
    """A loopback server running ``handler(reader, writer, connection_number)`` per connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await self.handler(reader, writer, self.connections)
        finally:
            writer.close()
            self.tasks.discard(task)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request's head and body (Content-Length or chunked); None at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        body = b""
        lower = head.lower()
        if b"content-length:" in lower:
            length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
        elif b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += data[:-2]
        self.requests.append(head + body)
        return head + body


@contextlib.asynccontextmanager
async def scripted(
    handler: Callable[[Scripted, asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]],
) -> AsyncIterator[tuple[Scripted, str]]:
    script = Scripted(lambda r, w, n: handler(script, r, w, n))
    server = await asyncio.start_server(script._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        try:
            yield script, f"http://127.0.0.1:{port}"
        finally:
            await script.stop()
            await asyncio.sleep(0)


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%b\r\n%b" % (len(body), extra, body)


async def test_content_length_answers_reuse_one_connection() -> None:
    async def handler(
        s: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while (request := await s.read_request(reader)) is not None:
            writer.write(_ok(b"answer to " + request.split(b" ")[1], b"x-custom: Yes\r\n"))

    async with scripted(handler) as (script, url):
        client = UpstreamClient(url)
        for path in ("/one", "/two?x=1", "/three"):
            response = await client.request("GET", path, [(b"accept", b"*/*")])
            assert response.status == 200
            assert response.header(b"x-custom") == b"Yes"  # names lower-cased, values as sent
            assert await response.read() == b"answer to " + path.encode()
            response.close()
        await client.aclose()
    assert script.connections == 1
    assert script.requests[1].startswith(b"GET /two?x=1 HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"\r\naccept: */*\r\n" in script.requests[0]


async def test_chunked_pieces_come_as_they_are_sent() -> None:
    async def handler(
        s: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await s.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await s.read_request(reader)

    async with scripted(handler) as (_, url):
        client = UpstreamClient(url)
        response = await client.request("POST", "/stream", body=b"{}")
        loop = asyncio.get_running_loop()
        assert await response.next_chunk() == b"first"
        t0 = loop.time()
        assert await response.next_chunk() == b"second"
        assert loop.time() - t0 >= 0.15  # not held back until the end
        assert await response.next_chunk() is None
        response.close()
        await client.aclose()


async def test_close_delimited_head_204_and_informational_answers() -> None:
    async def handler(
        s: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        request = await s.read_request(reader)
        assert request is not None
        if request.startswith(b"GET /eof"):
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
            return
        if request.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
        elif request.startswith(b"DELETE"):
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        await s.read_request(reader)

    async with scripted(handler) as (script, url):
        client = UpstreamClient(url)
        for method, path, status, body in (
            ("GET", "/eof", 200, b"until the end"),
            ("HEAD", "/", 200, b""),
            ("DELETE", "/x", 204, b""),
            ("PUT", "/x", 201, b"ok"),
        ):
            response = await client.request(method, path)
            assert response.status == status
            assert await response.read() == body
            response.close()
        await client.aclose()
    assert script.connections == 4  # none of these could be reused, but the last
    assert script.requests[3].endswith(b"content-length: 0\r\n\r\n")


async def test_refused_connection() -> None:
    port = free_port()
    client = UpstreamClient(f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectFailed, match=f"cannot connect to 127.0.0.1:{port}: Connection refused"):
        await client.request("GET", "/")


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A TLS server context with a self-signed certificate for 127.0.0.1 (made by openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a self-signed certificate with")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


@pytest.mark.parametrize("server", ["self-signed TLS", "plain HTTP"])
async def test_a_failed_tls_connection_says_why(server: str, self_signed: ssl.SSLContext) -> None:
    """A certificate that does not verify, or https:// to a plain-HTTP server, read "Operation
    not permitted" (the TLS error's errno taken for the OS's)."""

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    handler, context = (tls, self_signed) if server == "self-signed TLS" else (plain, None)
    listening = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)
    port = listening.sockets[0].getsockname()[1]
    client = UpstreamClient(f"https://127.0.0.1:{port}", connect_timeout=10)
    why = "certificate verify failed: self-signed certificate" if context else "wrong version number"
    try:
        with pytest.raises(ConnectFailed, match=f"cannot connect to 127.0.0.1:{port}: TLS: {why}"):
            await client.request("GET", "/")
    finally:
        await client.aclose()
        listening.close()


async def _read_all(client: UpstreamClient, *, partial: bytes | None) -> bytes:
    response = await client.request("GET", "/")
    try:
        if partial is not None:  # what came before the break is delivered first
            assert await response.next_chunk() == partial
        return await response.read()
    finally:
        response.close()


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"", "the upstream closed the connection before answering"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b", "before the answer was complete"),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
            "before the answer was complete",
        ),
        (b"this is not HTTP\r\n\r\n", "the upstream's answer is not valid HTTP"),
    ],
)
async def test_broken_answers(answer: bytes, error: str) -> None:
    async def handler(
        s: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await s.read_request(reader)
        writer.write(answer)
        await writer.drain()

    async with scripted(handler) as (_, url):
        client = UpstreamClient(url)
        with pytest.raises(AnswerBroken, match=error):
            await _read_all(client, partial=b"only ten b" if b"only ten b" in answer else None)
        await client.aclose()


async def test_read_timeout() -> None:
    async def handler(
        s: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await s.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with scripted(handler) as (_, url):
        client = UpstreamClient(url, read_timeout=0.2)
        response = await client.request("GET", "/")
        assert await response.next_chunk() == b"hi"
        with pytest.raises(AnswerBroken, match=r"the upstream sent nothing for 0\.2 s \(the read timeout\)"):
            await response.next_chunk()
        response.close()
        await client.aclose()


async def test_a_kept_alive_connection_closed_by_the_upstream_is_retried_once() -> None:
    async def handler(
        s: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await s.read_request(reader)
        if n == 1:  # answers once, then drops the connection when the next request comes
            writer.write(_ok(b"first"))
            await writer.drain()
            await s.read_request(reader)
            return
        writer.write(_ok(b"second"))
        await writer.drain()
        await s.read_request(reader)

    async with scripted(handler) as (script, url):
        client = UpstreamClient(url)
        for expected in (b"first", b"second"):
            response = await client.request("POST", "/", body=b"{}")
            assert await response.read() == expected
            response.close()
        await client.aclose()
    assert script.connections == 2


async def test_a_read_timeout_on_a_kept_alive_connection_is_not_sent_again() -> None:
    """Silence past the read timeout is not a stale connection: the upstream may be generating."""

    async def handler(
        s: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while (request := await s.read_request(reader)) is not None:  # read_request records it
            if b"slow" in request:
                await asyncio.sleep(5)
            writer.write(_ok(b"done"))
            await writer.drain()

    async with scripted(handler) as (script, url):
        client = UpstreamClient(url, read_timeout=0.3)
        response = await client.request("POST", "/", body=b"fast")  # leaves a kept-alive connection
        assert await response.read() == b"done"
        response.close()
        started = asyncio.get_running_loop().time()
        with pytest.raises(ReadTimedOut, match=r"sent nothing for 0\.3 s"):
            await client.request("POST", "/", body=b"slow")
        elapsed = asyncio.get_running_loop().time() - started
        await client.aclose()
    assert [r.endswith(b"slow") for r in script.requests] == [False, True]  # sent once, not retried
    assert elapsed >= 0.3  # it waited the read timeout out


async def test_a_request_the_upstream_drops_after_taking_it_is_not_sent_again() -> None:
    """A kept-alive connection closed a while after the request is an upstream that died on it."""

    async def handler(
        s: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while (request := await s.read_request(reader)) is not None:
            if b"crash" in request:
                await asyncio.sleep(STALE_CLOSE_WINDOW + 0.3)  # works on it, then goes away
                writer.close()
                return
            writer.write(_ok(b"done"))
            await writer.drain()

    async with scripted(handler) as (script, url):
        client = UpstreamClient(url)
        response = await client.request("POST", "/", body=b"fast")  # leaves a kept-alive connection
        assert await response.read() == b"done"
        response.close()
        with pytest.raises(AnswerBroken):
            await client.request("POST", "/", body=b"crash")
        await client.aclose()
    assert [r.endswith(b"crash") for r in script.requests] == [False, True]  # sent once


async def test_a_connection_kept_after_an_unread_answer_reads_the_next_one() -> None:
    """Reading pauses while an answer waits unread; the connection kept for reuse must read again."""

    async def handler(
        s: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while (request := await s.read_request(reader)) is not None:
            # One byte past the high-water mark: reading pauses only once the whole body is
            # in (300,000 bytes paused it mid-answer whenever they came in small reads).
            writer.write(_ok(b"x" * (_HIGH_WATER + 1) if b"big" in request else b"done"))
            await writer.drain()

    async with scripted(handler) as (script, url):
        client = UpstreamClient(url, read_timeout=2.0)
        big = await client.request("POST", "/", body=b"big")
        connection = big._connection
        assert connection is not None
        for _ in range(1000):  # the whole answer arrives, past the high-water mark (10 s at most)
            if connection.complete:
                break
            await asyncio.sleep(0.01)
        assert connection.complete and connection._read_paused
        big.close()  # not read (the proxy's client went away): the connection is whole, kept
        small = await client.request("POST", "/", body=b"small")
        assert await small.read() == b"done"
        small.close()
        await client.aclose()
    assert script.connections == 1


async def test_request_bodies_are_streamed() -> None:
    async def handler(
        s: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while (request := await s.read_request(reader)) is not None:
            body = request.split(b"\r\n\r\n", 1)[1]
            writer.write(_ok(b"%d" % len(body)))

    async def parts(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield b"x" * 100_000

    async with scripted(handler) as (script, url):
        client = UpstreamClient(url)
        chunked = await client.request("POST", "/upload", body=parts(30))
        assert await chunked.read() == b"3000000"
        chunked.close()
        sized = await client.request("PUT", "/upload", body=parts(3), content_length=b"300000")
        assert await sized.read() == b"300000"
        sized.close()
        await client.aclose()
    assert b"transfer-encoding: chunked" in script.requests[0]
    assert b"content-length: 300000" in script.requests[1]


async def test_a_large_answer_read_slowly_arrives_whole() -> None:
    size = 8 * 1024 * 1024

    async def handler(
        s: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await s.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        for i in range(size // 65536):
            writer.write(bytes([i % 256]) * 65536)
            await writer.drain()
        await s.read_request(reader)

    async with scripted(handler) as (_, url):
        client = UpstreamClient(url)
        response = await client.request("GET", "/big")
        received = 0
        digest = hashlib.sha1()
        while (chunk := await response.next_chunk()) is not None:
            received += len(chunk)
            digest.update(chunk)
            await asyncio.sleep(0.001)  # a slow client: the upstream is paused, not buffered whole
        assert received == size
        sent = hashlib.sha1()
        for i in range(size // 65536):
            sent.update(bytes([i % 256]) * 65536)
        # (It summed every 4096th byte of each chunk: that depends on where the chunks break.)
        assert digest.digest() == sent.digest()
        response.close()
        await client.aclose()


async def test_path_prefix_and_cancellation_close_the_connection() -> None:
    closed = asyncio.Event()
    received = asyncio.Event()

    async def handler(
        s: Scripted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await s.read_request(reader)
        received.set()
        if await reader.read(1) == b"":  # never answers; waits for the client to go
            closed.set()

    async with scripted(handler) as (script, url):
        client = UpstreamClient(url + "/ollama/")
        task = asyncio.ensure_future(client.request("GET", "/api/tags"))
        await asyncio.wait_for(received.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), 5)
        await client.aclose()
    assert script.requests[0].startswith(b"GET /ollama/api/tags HTTP/1.1\r\n")


async def test_a_cancellation_as_the_connection_is_made_is_not_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio.wait_for (before Python 3.12) returned the connection and dropped a cancellation that
    came as the connection was made: Ctrl-C while ``sjfsched serve`` asked a silent upstream what it
    is went unheard, and the proxy waited out the read timeout (CI saw it: 30 s with no exit)."""
    loop = asyncio.get_running_loop()
    connect = loop.create_connection
    made: list[asyncio.BaseTransport] = []
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)

        async def connect_then_cancel(*args: Any, **kwargs: Any) -> tuple[asyncio.BaseTransport, object]:
            transport, protocol = await connect(*args, **kwargs)
            made.append(transport)
            asking.cancel()  # the connection is made: it was asking as the cancellation came
            return transport, protocol

        monkeypatch.setattr(loop, "create_connection", connect_then_cancel)
        client = UpstreamClient(f"http://127.0.0.1:{silent.getsockname()[1]}", read_timeout=2)
        asking = asyncio.ensure_future(client.request("GET", "/api/tags"))
        await asyncio.wait((asking,), timeout=10)
        assert asking.done()
        assert asking.cancelled(), asking.exception()
        await asyncio.sleep(0)
        assert len(made) == 1 and made[0].is_closing()  # not left open
        await client.aclose()


@pytest.mark.skipif(sys.platform != "linux", reason="fills a listening socket's queue as Linux does")
async def test_a_connection_that_is_never_made_times_out() -> None:
    """An upstream whose accept queue is full (Linux drops the connection requests) times out."""
    with socket.socket() as listening, contextlib.ExitStack() as stack:
        listening.bind(("127.0.0.1", 0))
        listening.listen(0)
        address = listening.getsockname()
        for _ in range(4):  # more than the queue holds
            waiting = stack.enter_context(socket.socket())
            waiting.setblocking(False)
            waiting.connect_ex(address)
        client = UpstreamClient(f"http://127.0.0.1:{address[1]}", connect_timeout=0.5)
        started = asyncio.get_running_loop().time()
        timed_out = rf"connecting to 127\.0\.0\.1:{address[1]} timed out after 0\.5 s"
        with pytest.raises(ConnectFailed, match=timed_out):
            await client.request("GET", "/")
        loop_time = asyncio.get_running_loop().time()
        assert 0.4 < loop_time - started < 5
        await client.aclose()
