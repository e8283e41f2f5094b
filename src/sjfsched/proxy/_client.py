"""A small HTTP/1.1 client for the upstream: kept-alive connections, bodies streamed both ways.

Why not httpx: on loopback one httpx request takes about 0.7 ms (median,
``benchmarks/proxy_overhead.py``; request and response models, httpcore's
pool, h11, anyio), which alone is most of the proxy's budget; this client, an
:class:`asyncio.Protocol` around httptools' C parser (llhttp, the parser of
Node.js), takes under 0.1 ms.  It
does only what a reverse proxy needs: send the client's request as it is,
hand back the status, the headers and the body pieces as they arrive, keep
connections alive for the next request, and say plainly when the upstream
cannot be reached or breaks off an answer.

It runs on asyncio (uvicorn's loop; anyio's cancel scopes reach it as
``CancelledError``).  Cancelling a caller while it waits closes the
connection, which is how the upstream learns that the client has gone.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast, final
from urllib.parse import urlsplit

import httptools

__all__ = [
    "AnswerBroken",
    "ConnectFailed",
    "ReadTimedOut",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamResponse",
]

#: Bytes of answer held before reading from the upstream pauses (the client reads slowly).
_HIGH_WATER = 256 * 1024
_TIMED_OUT = object()
#: A kept-alive connection that ends with no answer within this many seconds of
#: the request was closed by the upstream as the request went out: the request
#: is sent once more on a new connection.  A later close is an upstream that
#: dropped a request it had taken (it crashed or restarted): that is an error.
STALE_CLOSE_WINDOW = 0.5


class UpstreamError(Exception):
    """Talking to the upstream failed."""


class ConnectFailed(UpstreamError):
    """No connection to the upstream: refused, unresolvable, or timed out."""


class AnswerBroken(UpstreamError):
    """The upstream's answer broke off: connection lost, invalid HTTP, or silence past the read timeout."""


class ReadTimedOut(AnswerBroken):
    """The upstream sent nothing for the read timeout: it may well be working on the request."""


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


@final
class _Connection(asyncio.Protocol):
    """One kept-alive connection and the answer being read on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reusable = True
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[Any] | None = None
        self._reset(head=False)

    def _reset(self, *, head: bool) -> None:
        self.active = False
        self.got_bytes = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self._informational = False
        self._head = head
        self._until_eof = False
        self._body: list[bytes] = []
        self._buffered = 0
        if getattr(self, "_read_paused", False) and self._transport is not None:
            # an answer left unread paused reading; the next one must be read
            self._transport.resume_reading()
        self._read_paused = False
        self.complete = False
        self.error: UpstreamError | None = None

    # ---------------------------------------------------------- protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete or self.error is not None:
            self.reusable = False  # bytes nobody asked for: do not reuse
            return
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(AnswerBroken("the upstream switched protocols, which the proxy does not relay"))
        except httptools.HttpParserError as exc:
            self._fail(AnswerBroken(f"the upstream's answer is not valid HTTP ({exc})"))

    def eof_received(self) -> bool:
        self.reusable = False
        self._ended()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._ended()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _ended(self) -> None:
        """The upstream closed its side: the end of a close-delimited answer, or a break."""
        if not self.active or self.complete or self.error is not None:
            return
        if self.headers_done and self._until_eof:
            self.complete = True
            self._wake()
        else:
            what = "the answer was complete" if self.headers_done else "answering"
            self._fail(AnswerBroken(f"the upstream closed the connection before {what}"))

    # ---------------------------------------------------- parser callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue, 103 Early Hints: the real answer follows
            self._informational = True
            self.headers = []
            return
        self.status = status
        self.headers_done = True
        if self._head or status in (204, 304):
            self.complete = True
            self.reusable = False  # the parser cannot be told there is no body after HEAD
        else:
            names = {name for name, _ in self.headers}
            if b"content-length" not in names and b"transfer-encoding" not in names:
                self._until_eof = True
                self.reusable = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._head or self.complete:
            return
        self.complete = True
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._wake()

    # ------------------------------------------------------------ helpers

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self.reusable = False
        if self._transport is not None:
            self._transport.close()
        self._wake()

    async def _wait(self, timeout: float | None) -> None:
        waiter = self._loop.create_future()
        self._waiter = waiter
        handle = self._loop.call_later(timeout, _expire, waiter) if timeout is not None else None
        try:
            result = await waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()
        if result is _TIMED_OUT:
            self._fail(ReadTimedOut(f"the upstream sent nothing for {timeout:g} s (the read timeout)"))

    # ------------------------------------------------------------- the API

    @property
    def usable(self) -> bool:
        transport = self._transport
        return self.reusable and not self.closed and transport is not None and not transport.is_closing()

    def begin(self, data: bytes, *, head: bool) -> None:
        """Send a request (or its head); from now on bytes received are its answer."""
        self._reset(head=head)
        self._parser = httptools.HttpResponseParser(self)
        self.active = True
        assert self._transport is not None
        self._transport.write(data)

    async def send_body(self, body: AsyncIterator[bytes], *, chunked: bool) -> None:
        """Stream a request body (chunked, unless the caller gave its length)."""
        transport = self._transport
        assert transport is not None
        async for part in body:
            if self.error is not None or transport.is_closing():
                break
            if not part:
                continue
            transport.write(b"%x\r\n%b\r\n" % (len(part), part) if chunked else part)
            if self._write_paused and not self.closed:
                self._drain = self._loop.create_future()
                await self._drain
        if chunked and not transport.is_closing():
            transport.write(b"0\r\n\r\n")

    async def response_head(self, timeout: float | None) -> None:
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self._wait(timeout)

    async def next_body(self, timeout: float | None) -> bytes | None:
        """The answer's bytes received since the last call (waiting for some); ``None`` at the end."""
        while True:
            body = self._body
            if body:
                data = body[0] if len(body) == 1 else b"".join(body)
                self._body = []
                self._buffered = 0
                if self._read_paused and self._transport is not None:
                    self._read_paused = False
                    self._transport.resume_reading()
                return data
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            await self._wait(timeout)

    @property
    def finished(self) -> bool:
        """The whole answer has been received and handed out."""
        return self.complete and not self._body

    def abort(self) -> None:
        self.reusable = False
        if self._transport is not None and not self.closed:
            self._transport.abort()


@final
class UpstreamResponse:
    """An answer: status and headers at once, the body as it arrives.

    Read it with :meth:`next_chunk` or :meth:`read`, then :meth:`close` it
    (always; closing an answer not read to the end closes its connection).
    """

    def __init__(self, client: UpstreamClient, connection: _Connection) -> None:
        self._client = client
        self._connection: _Connection | None = connection
        self.status: int = connection.status
        #: Header names lower-cased, values as sent, in order.
        self.headers: list[tuple[bytes, bytes]] = connection.headers

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def finished(self) -> bool:
        """Nothing more will come: the last piece has been handed out (``next_chunk`` gives ``None``)."""
        connection = self._connection
        return connection is None or connection.finished

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body as it arrives (all that arrived at once); ``None`` at the end."""
        connection = self._connection
        if connection is None:
            return None
        return await connection.next_body(self._client.read_timeout)

    async def read(self) -> bytes:
        parts = []
        while (part := await self.next_chunk()) is not None:
            parts.append(part)
        return b"".join(parts)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._client._release(connection)


@final
class UpstreamClient:
    """Requests to one upstream server, over kept-alive HTTP/1.1 connections.

    ``base_url`` is ``http://host:port`` or ``https://host:port``, with an
    optional path prefix put before every request's path.  ``connect_timeout``
    bounds connecting, ``read_timeout`` every wait for the next bytes of an
    answer (``None``: no bound).
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float | None = 5.0,
        read_timeout: float | None = None,
        max_idle: int = 32,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the upstream must be an http:// or https:// URL with a host, got {base_url!r}")
        self.base_url = base_url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self._host_header = parts.netloc.rpartition("@")[2].encode("idna")
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._max_idle = max_idle
        self._idle: list[_Connection] = []
        self._closed = False

    async def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes | AsyncIterator[bytes] | None = None,
        *,
        content_length: bytes | None = None,
    ) -> UpstreamResponse:
        """Send a request and wait for the answer's status and headers.

        ``path`` is the request target (path and query, percent-encoded); the
        ``Host`` header and the body's framing are added here and must not
        be in ``headers``.  A bytes ``body`` is sent with its length; an
        iterator is streamed, chunked unless ``content_length`` is given.
        Raises :class:`ConnectFailed` or :class:`AnswerBroken`.
        """
        if self._closed:
            raise RuntimeError("the upstream client is closed")
        streamed = body is not None and not isinstance(body, bytes)
        head = [
            f"{method} {self.prefix}{path} HTTP/1.1\r\nhost: ".encode("latin-1"),
            self._host_header,
            b"\r\n",
        ]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        if isinstance(body, bytes):
            head += (b"content-length: ", str(len(body)).encode(), b"\r\n\r\n", body)
        elif streamed:
            head.append(
                b"content-length: %b\r\n\r\n" % content_length
                if content_length
                else b"transfer-encoding: chunked\r\n\r\n"
            )
        elif method in ("POST", "PUT", "PATCH"):
            head.append(b"content-length: 0\r\n\r\n")
        else:
            head.append(b"\r\n")
        data = b"".join(head)
        retry = not streamed
        loop = asyncio.get_running_loop()
        while True:
            connection = self._idle_connection()
            reused = connection is not None
            if connection is None:
                connection = await self._connect()
            sent = loop.time()
            try:
                connection.begin(data, head=method == "HEAD")
                if streamed:
                    assert body is not None and not isinstance(body, bytes)
                    await connection.send_body(body, chunked=not content_length)
                await connection.response_head(self.read_timeout)
            except AnswerBroken as exc:
                connection.abort()
                if (
                    retry
                    and reused
                    and not connection.got_bytes
                    and not isinstance(exc, ReadTimedOut)
                    and loop.time() - sent < STALE_CLOSE_WINDOW
                ):
                    # A kept-alive connection the upstream had just closed: once more, on a new one.
                    # Never after a read timeout, nor a close that came later: the upstream may
                    # have been generating the answer (a POST is not sent twice).
                    retry = False
                    continue
                raise
            except BaseException:
                connection.abort()
                raise
            return UpstreamResponse(self, connection)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        where = f"{self.host}:{self.port}"
        # Not asyncio.wait_for: before Python 3.12 it returns the connection, and drops a
        # cancellation (Ctrl-C, a client gone), when the cancellation comes as the connection is made.
        attempt = loop.create_task(
            loop.create_connection(
                lambda: _Connection(loop),
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self._ssl is not None else None,
            )
        )
        try:
            done, _ = await asyncio.wait((attempt,), timeout=self.connect_timeout)
        except BaseException:
            _abandon(attempt)
            raise
        if not done:
            _abandon(attempt)
            raise ConnectFailed(f"connecting to {where} timed out after {self.connect_timeout:g} s")
        try:
            _, protocol = attempt.result()
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {where}: {_why(exc)}") from exc
        assert isinstance(protocol, _Connection)
        return protocol

    def _idle_connection(self) -> _Connection | None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.usable:
                return connection
            connection.abort()
        return None

    def _release(self, connection: _Connection) -> None:
        if (
            connection.complete
            and connection.usable
            and not self._closed
            and len(self._idle) < self._max_idle
        ):
            connection.active = False
            self._idle.append(connection)
        else:
            connection.abort()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.abort()
        if idle:
            await asyncio.sleep(0)  # let the transports close their sockets before the loop stops


def _abandon(attempt: asyncio.Task[tuple[asyncio.Transport, Any]]) -> None:
    """Stop a connection attempt no one waits for; close the connection if it was made all the same."""

    def close(task: asyncio.Task[tuple[asyncio.Transport, Any]]) -> None:
        if not task.cancelled() and task.exception() is None:
            task.result()[0].abort()

    attempt.cancel()
    attempt.add_done_callback(close)


def _why(exc: OSError) -> str:
    """Why a connection failed, in words: the OS's for a refusal (asyncio words it "Connect call
    failed"), the resolver's for a host name, TLS's own for a handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {(exc.reason or str(exc)).replace('_', ' ').lower()}"
    if isinstance(exc, socket.gaierror) or not (exc.errno and exc.errno > 0):
        return exc.strerror or str(exc) or type(exc).__name__
    return os.strerror(exc.errno)
