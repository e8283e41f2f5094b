"""Running the proxy on uvicorn, with a graceful shutdown on SIGTERM and SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import struct
from types import FrameType
from typing import Any, Final

import uvicorn

try:  # TIOCOUTQ: how much a socket has not sent (POSIX; Windows has neither)
    import fcntl
    import termios
except ImportError:  # pragma: no cover - Windows
    fcntl = termios = None  # type: ignore[assignment]
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ._app import ABORT_EXTENSION, UNSENT_EXTENSION, ProxyApp

__all__ = ["ProxyServer", "bind", "make_server"]

logger = logging.getLogger("sjfsched.proxy")

#: After the drain, seconds uvicorn gives connections still open before cancelling them.
_FINAL_GRACE_SECONDS = 1
#: The largest request head (request line and headers) taken; a larger one is answered 431.
MAX_HEAD_BYTES: Final = 64 * 1024


def _reset(transport: asyncio.Transport) -> None:
    """Close a connection at once, dropping what it has not sent (a TCP reset), not after it."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _unsent(transport: asyncio.Transport) -> int | None:
    """Bytes written to a connection and not sent yet: the transport's buffer and the socket's
    (``TIOCOUTQ``, Linux); None where the system does not say how many the socket holds."""
    sock = transport.get_extra_info("socket")
    if sock is None or fcntl is None or not hasattr(termios, "TIOCOUTQ") or transport.is_closing():
        return None
    try:
        fd = sock.fileno()  # -1 once the connection is closed (the client went)
        if fd < 0:
            return None
        queued = struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        return int(queued) + transport.get_write_buffer_size()
    except (OSError, ValueError):
        return None


def bounded_protocol(head_timeout: float | None) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol with a bound on a request head's size and on the time it takes.

    uvicorn's httptools protocol takes a head of any size (httptools gathers
    a header whole before handing it on), and a connection that sends
    nothing, a head a byte at a time, or bytes after an answer, is kept for
    ever (its keep-alive timer runs only after an answer, and stops at the
    next byte): one client could fill the memory or the file descriptors.
    Here a head's size is checked when it is whole, and the bytes of one
    still coming are counted read by read (a read in which a head or a
    request ended is not: it may hold a body, or other requests), so past
    :data:`MAX_HEAD_BYTES` the request is answered 431; and a connection on
    which no answer is being written and no head has become whole for
    ``head_timeout`` seconds since it opened, since a head began or since
    its last bytes came in, is answered 408.  Both close the connection.
    """

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _pending = 0  # bytes of reads in which a head was, and stayed, incomplete
        _in_body = False  # between a head's end and its request's end
        _ends = 0  # heads or requests that ended in the read being parsed
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            in_head, self._ends = not self._in_body, 0
            super().data_received(data)
            if self.transport.is_closing():
                return
            if in_head and not self._ends and not self._in_body:
                self._pending += len(data)
                if self._pending > MAX_HEAD_BYTES:
                    self._refuse(431, b"Request Header Fields Too Large")
                    return
            if self._head_timer is None and self._idle():
                self._arm()  # bytes and no answer under way (a stray CRLF, an unread body)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._ends += 1
            self._in_body, self._pending = True, 0
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > MAX_HEAD_BYTES:
                self._refuse(431, b"Request Header Fields Too Large")
                raise ValueError("request head too large")  # stops the parser (answered already)
            self._disarm()
            super().on_headers_complete()
            scope: dict[str, Any] = self.scope  # type: ignore[assignment]
            extensions = scope.setdefault("extensions", {})  # for the app's bounds on the client
            extensions[ABORT_EXTENSION] = functools.partial(_reset, self.transport)
            extensions[UNSENT_EXTENSION] = functools.partial(_unsent, self.transport)

        def on_message_complete(self) -> None:
            self._ends += 1
            self._in_body = False
            super().on_message_complete()

        def send_400_response(self, msg: str) -> None:
            if not self.transport.is_closing():  # not after a refusal of ours
                super().send_400_response(msg)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _idle(self) -> bool:
            """No answer is being written, none waits to be."""
            return (self.cycle is None or self.cycle.response_complete) and not self.pipeline

        def _arm(self) -> None:
            self._disarm()
            if head_timeout is not None:
                self._head_timer = self.loop.call_later(head_timeout, self._head_too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if not self._idle():
                self._arm()  # an answer is being written: a 408 would land in its middle
                return
            self._refuse(408, b"Request Timeout")

        def _refuse(self, status: int, reason: bytes) -> None:
            if not self._idle():
                self.transport.close()  # an answer is being written: no room for another
                return
            body = reason + b"\n"
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, reason, len(body), body)
            )
            self.transport.close()

    return BoundedHttpToolsProtocol


class ProxyServer(uvicorn.Server):
    """uvicorn's server, with a drain on the first SIGTERM or SIGINT.

    The first signal starts :meth:`ProxyApp.drain`: from then on new requests
    get 503 and waiting ones end with 503, while running ones may finish for
    up to ``shutdown_timeout`` seconds; then the server stops (cutting
    whatever still runs).  A second signal stops it at once, as uvicorn does.
    """

    def __init__(self, config: uvicorn.Config, app: ProxyApp, shutdown_timeout: float) -> None:
        super().__init__(config)
        self.app = app
        self.shutdown_timeout = shutdown_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None
        self._drain_requested = False
        self._cut = False  # requests were cut: _quiet_cut is on uvicorn's logger

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await super().serve(sockets)
            if self._cut:  # the requests uvicorn cut end (and are logged) after it returns
                pending = [task for task in self.server_state.tasks if not task.done()]
                if pending:
                    await asyncio.wait(pending, timeout=_FINAL_GRACE_SECONDS)
        finally:  # the process's uvicorn logger is not this server's: leave it as it was
            logging.getLogger("uvicorn.error").removeFilter(_quiet_cut)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self._loop
        if self._drain_requested and self.should_exit:
            # The drain has ended and the server is stopping (a second or so, then the app's own
            # shutdown, which saves the predictor's state): forcing it would skip that.
            logger.info("%s: already stopping", signal.Signals(sig).name)
            return
        if self._drain_requested or loop is None or not self.started or self.should_exit:
            if self._drain_requested:  # a second signal: what still runs is cut, said once
                logger.warning(
                    "%s again: stopping at once, cutting what still runs", signal.Signals(sig).name
                )
                self._quiet_the_cut()
            super().handle_exit(sig, frame)
            return
        self._drain_requested = True
        loop.call_soon_threadsafe(self._start_drain, sig)

    def _start_drain(self, sig: int) -> None:
        assert self._loop is not None
        self._drain = self._loop.create_task(self._drain_then_exit(sig))

    async def _drain_then_exit(self, sig: int) -> None:
        name = signal.Signals(sig).name
        stats = self.app.scheduler.statistics()
        passing = self.app.passing
        logger.info(
            "%s: shutting down; %d running request(s)%s may take up to %g s to finish, %d waiting get 503",
            name,
            stats.running,
            f" and {passing} passed-through call(s)" if passing else "",
            self.shutdown_timeout,
            stats.waiting,
        )
        finished = await self.app.drain(self.shutdown_timeout)
        if not finished:
            logger.warning(
                "requests still running after --shutdown-timeout %g s are cut", self.shutdown_timeout
            )
            self._quiet_the_cut()
        elif self.app.reading:
            logger.info(
                "%d request(s) still sending their body are cut (they would be refused)", self.app.reading
            )
            self._quiet_the_cut()
        self.should_exit = True

    def _quiet_the_cut(self) -> None:
        """uvicorn cancels what still runs and logs each as an application error: said once already."""
        logging.getLogger("uvicorn.error").addFilter(_quiet_cut)
        self._cut = True


_CUT: Final = "timeout graceful shutdown exceeded"  # in uvicorn's log line and cancel message


def _quiet_cut(record: logging.LogRecord) -> bool:
    """Keep uvicorn's log of a shutdown except its lines about cutting what still ran."""
    if _CUT in str(record.msg):  # "Cancel N running task(s), timeout graceful shutdown exceeded"
        return False
    error = record.exc_info[1] if record.exc_info else None
    return not (isinstance(error, asyncio.CancelledError) and _CUT in str(error))


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections from a
    # socket that says it is TCP; without it a response's headers and body
    # meet Nagle's algorithm and the client's delayed ACK (40 ms a request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def make_server(app: ProxyApp, **config: Any) -> ProxyServer:
    """A :class:`ProxyServer` for ``app``, listening on its settings' host and port.

    ``config`` goes to :class:`uvicorn.Config` and wins over the settings.
    """
    settings = app.settings
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "lifespan": "on",
        "interface": "asgi3",
        "ws": "none",
        "log_level": settings.log_level,
        "access_log": settings.access_log,
        "server_header": False,  # the upstream's own Server and Date headers pass through
        "date_header": False,
        "proxy_headers": False,
        "timeout_graceful_shutdown": _FINAL_GRACE_SECONDS,
        "http": bounded_protocol(settings.client_timeout),
    }
    options.update(config)
    return ProxyServer(uvicorn.Config(app, **options), app, settings.shutdown_timeout)
