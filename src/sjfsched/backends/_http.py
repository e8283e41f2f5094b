"""What the HTTP backends share: the client, timeouts, and error conversion.

httpx is imported only when an HTTP backend is made, so ``sjfsched.backends``
imports without it (it comes with the ``ollama`` and ``openai`` extras); making
one without it raises :class:`ImportError` naming the extra.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime
import email.utils
import ipaddress
import json
import math
import re
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

import anyio

from .._errors import BackendError, BackendUnavailable

T = TypeVar("T")

if TYPE_CHECKING:
    import httpx

__all__ = [
    "BackendUnavailable",
    "HttpSettings",
    "error_message",
    "is_unavailable",
    "map_http_errors",
]

#: Seconds to wait for a TCP connection by default.
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Seconds to wait for the next bytes of a response by default: long, because
#: a server says nothing while it loads a model or evaluates a long prompt.
DEFAULT_READ_TIMEOUT = 300.0
#: httpx's own pool sizes, kept for a backend with fewer slots: open connections
#: (streams and model lookups at once), and idle ones kept alive for reuse.
_MIN_CONNECTIONS = 100
_MIN_KEEPALIVE = 20
_KEEPALIVE_EXPIRY = 4.0  # seconds
#: Seconds after sending within which a kept-alive connection closed under a request is the
#: connection's fault (the proxy's client takes the same).
_RETRY_WINDOW = 0.5
#: After a stream's last message (and its last chunk given to the caller), what
#: is left of the body is read (the chunked encoding's end, a blank line) so
#: that its connection goes back to the pool: at most this many lines, for at
#: most this many seconds (the servers send it with the last message, within a
#: millisecond; the request keeps its slot meanwhile); past either the
#: connection is closed instead, as on an early exit.
_TAIL_LINES = 16
_TAIL_SECONDS = 0.02


def import_httpx(backend: str, extra: str) -> Any:
    """The httpx module, or :class:`ImportError` saying which extra brings it."""
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(f"{backend} needs httpx: pip install 'sjfsched[{extra}]'", name="httpx") from exc
    return httpx


def check_timeout(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0) or math.isnan(value):
        raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")
    return float(value)


def shown_url(url: str) -> str:
    """``url`` as messages and ``repr()`` show it: what may be credentials in it (``user:password@``,
    which httpx sends as basic auth) replaced by ``***``: all from the scheme (or the start) to its
    last ``@``, which also hides a password with an unencoded ``/``, ``?`` or ``#`` in it."""
    at = url.rfind("@")
    scheme, sep, _ = url.partition("://")
    start = len(scheme) + len(sep) if sep else 0
    return url if at < start else url[:start] + "***" + url[at:]


_LOOPBACK_NAMES: Final = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


def is_loopback_host(host: str) -> bool:
    """Whether a URL's host is this machine: ``localhost``, a loopback address (``127.1`` and the
    other forms the system reads as one, ``::ffff:127.0.0.1``), or the unspecified address
    (``0.0.0.0``, ``::``), which a connection takes for this machine."""
    host = host.lower().rstrip(".").strip("[]")
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:  # the shorter and numeric forms the system takes: 127.1, 2130706433, 0x7f000001
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def check_base_url(base_url: object) -> None:
    """:class:`ValueError` quoting ``base_url`` as given (credentials hidden), unless it is an
    http(s) URL with a host (and a port that is a number, if it names one)."""
    problem = not isinstance(base_url, str) or not base_url.startswith(("http://", "https://"))
    if not problem:
        parts = urlsplit(str(base_url))
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
        except ValueError:
            problem = True
        problem = problem or not parts.hostname
    if problem:
        shown = shown_url(base_url) if isinstance(base_url, str) else base_url
        raise ValueError(f"base_url must be an http:// or https:// URL with a host, got {shown!r}")


class HttpSettings:
    """Base URL, timeouts, headers; makes an ``httpx.AsyncClient`` on first use in each event loop.

    The client it makes holds a connection open for each of the backend's
    ``slots`` (at least httpx's default of 100) and keeps as many alive
    between requests (at least httpx's 20), so a scheduler running ``slots``
    streams never waits for a connection of its own client.  A caller's
    ``client`` is used as it is: its limits are the caller's.
    """

    def __init__(
        self,
        *,
        service: str,
        extra: str,
        base_url: str,
        slots: int,
        connect_timeout: float | None,
        read_timeout: float | None,
        headers: Mapping[str, str] | None,
        client: httpx.AsyncClient | None,
    ) -> None:
        check_base_url(base_url)
        if headers is not None and not isinstance(headers, Mapping):
            raise TypeError(f"headers must be a mapping of names to values, got {type(headers).__name__}")
        if client is not None and not isinstance(client, import_httpx(service, extra).AsyncClient):
            raise TypeError(f"client must be an httpx.AsyncClient, got {type(client).__name__}")
        self.service = service
        self.extra = extra
        self.base_url = base_url.rstrip("/")
        self.shown_url = shown_url(self.base_url)  # for messages and repr()
        self.slots = slots
        self.connect_timeout = check_timeout("connect_timeout", connect_timeout)
        self.read_timeout = check_timeout("read_timeout", read_timeout)
        self.headers = dict(headers or {})
        # the caller's own client: used as it is, in any loop, never closed here
        self._given: httpx.AsyncClient | None = client
        self._owns_client = client is None
        # Our own clients, one per event loop: a client's kept-alive connections belong to the
        # loop that opened them, and fail in any other ("Event loop is closed", "bound to a
        # different event loop").
        self._clients: dict[object, httpx.AsyncClient] = {}
        self._clients_lock = threading.Lock()  # SyncSchedulers' loops run in threads of their own

    def client(self) -> httpx.AsyncClient:
        if self._given is not None:
            return self._given
        loop = _loop_or_none()
        with self._clients_lock:
            client = self._clients.get(loop)
            if client is None:
                # Clients of loops since ended (a second anyio.run(), asyncio after trio) cannot
                # be closed from this one: dropped.
                for ended in [other for other in self._clients if not _loop_running(other)]:
                    del self._clients[ended]
                client = self._clients[loop] = self._new_client()
        return client

    def _new_client(self) -> httpx.AsyncClient:
        hx = import_httpx(self.service, self.extra)
        timeout = hx.Timeout(
            connect=self.connect_timeout,
            read=self.read_timeout,
            write=self.read_timeout,
            pool=self.connect_timeout,
        )
        limits = hx.Limits(
            max_connections=max(self.slots, _MIN_CONNECTIONS),
            max_keepalive_connections=max(self.slots, _MIN_KEEPALIVE),
            # Shorter than the servers' own idle close (uvicorn's and llama.cpp's 5 s), so that
            # a connection is seldom reused just as the server closes it.
            keepalive_expiry=_KEEPALIVE_EXPIRY,
        )
        if self.loopback:
            # A server on this machine is reached directly: a proxy named by HTTP_PROXY or
            # ALL_PROXY cannot reach this machine's loopback (and a SOCKS one needs a package
            # httpx lacks by default, which failed every request even where NO_PROXY said
            # so).  A transport of our own takes no proxy from the environment, and still
            # reads its certificates (SSL_CERT_FILE), which trust_env=False would not.
            transport = hx.AsyncHTTPTransport(limits=limits)
            client: httpx.AsyncClient = hx.AsyncClient(
                timeout=timeout, headers=self.headers, transport=transport
            )
        else:
            client = hx.AsyncClient(timeout=timeout, limits=limits, headers=self.headers)
        return client

    @property
    def loopback(self) -> bool:
        """Whether the server is on this machine (localhost, 127.0.0.0/8, ::1)."""
        return is_loopback_host(urlsplit(self.base_url).hostname or "")

    def env_proxy(self) -> str | None:
        """The proxy the environment names for the server's scheme, where our own client may take it."""
        if not self._owns_client or self.loopback:
            return None
        proxies = urllib.request.getproxies_environment()
        return proxies.get(urlsplit(self.base_url).scheme) or proxies.get("all") or None

    def timeouts(self) -> tuple[float | None, float | None]:
        """The connect and read timeouts in force: the caller's client's own if one was given."""
        if self._given is None:
            return self.connect_timeout, self.read_timeout
        timeout = self._given.timeout
        return timeout.connect, timeout.read

    async def aclose(self) -> None:
        """Close our own client of this event loop (the caller's own client is theirs to close)."""
        with self._clients_lock:
            client = self._clients.pop(_loop_or_none(), None)
        if client is not None:
            await client.aclose()

    @asynccontextmanager
    async def stream(self, path: str, body: Mapping[str, Any]) -> AsyncIterator[httpx.Response]:
        """POST ``body`` as JSON and yield the streaming response (status checked)."""
        url = f"{self.base_url}{path}"
        headers = dict(self._request_headers() or {})
        client = self.client()
        # As httpx's json= does: a Content-Type of the caller's own (in headers=, or on their
        # client) is kept.
        if "content-type" not in client.headers and not any(
            name.lower() == "content-type" for name in headers
        ):
            headers["Content-Type"] = "application/json"
        try:  # as httpx's json= encodes it, checked before anything is sent
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:  # a NaN, an object JSON has no form for
            raise BackendError(
                f"{self.service}: the request cannot be sent as JSON ({exc}); check Request.options",
                sent=False,
            ) from exc
        async with map_http_errors(self, f"{self.shown_url}{path}"), contextlib.AsyncExitStack() as stack:
            response = await self._post(client, stack, url, content, headers)
            if response.status_code >= 300:
                await response.aread()
                self._raise_for_status(response, path)
            yield response

    async def _post(
        self,
        client: httpx.AsyncClient,
        stack: contextlib.AsyncExitStack,
        url: str,
        content: bytes,
        headers: dict[str, str],
    ) -> httpx.Response:
        """The streaming response to a POST, entered on ``stack``; sent once more, on a new
        connection, where a kept-alive one was closed under it (see below)."""
        httpx = import_httpx(self.service, self.extra)
        opened = False
        sent_at = time.monotonic()

        async def trace(event: str, info: Mapping[str, Any]) -> None:
            nonlocal opened
            if event.startswith("connection.connect_"):  # connect_tcp, connect_unix_socket
                opened = True

        try:
            return await stack.enter_async_context(
                client.stream("POST", url, content=content, headers=headers, extensions={"trace": trace})
            )
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            # A kept-alive connection the server closed as the request went out (llama_cpp.server
            # closes one after a stream it ended at once; servers close idle ones), which the
            # pool could not tell was closed: disconnected or reset before any answer, within
            # half a second (as the proxy's own client). Sent once more, on a new connection. Not
            # where the connection was new (the server got the request, or refused the
            # connection outright), nor later (the server has it), nor for a malformed answer.
            late = time.monotonic() - sent_at > _RETRY_WINDOW  # the server had it, working on it
            malformed = isinstance(exc, httpx.RemoteProtocolError) and "without sending" not in str(exc)
            if opened or late or malformed:
                raise
            return await stack.enter_async_context(
                client.stream("POST", url, content=content, headers=headers)
            )

    def _request_headers(self) -> dict[str, str] | None:
        """The headers to send with each request: none where our own client carries them already."""
        return None if self._owns_client else self.headers

    def _raise_for_status(self, response: httpx.Response, path: str) -> None:
        """An error answer as :class:`BackendError` (3xx, 4xx) or :class:`BackendUnavailable` (5xx, 429).

        A redirect is an error too: the answer is not the stream, and
        following it silently would hide a wrong ``base_url``.
        """
        if response.status_code < 300:
            return
        if response.status_code < 400:
            location = response.headers.get("location")
            where = f"redirected to {location}" if location else "a redirect without a Location"
            raise BackendError(
                f"{self.service} answered {response.status_code} for {path}: {where}; "
                "give the URL it redirects to as base_url",
                status_code=response.status_code,
            )
        message = error_message(response.content) or response.reason_phrase
        if response.status_code == 404 and not _error_body(response.content):
            # No error of the API's own (a model it does not have): the path is not there.
            message += f" (is base_url {self.shown_url!r} the API's root?)"
        error_class = BackendUnavailable if server_busy(response.status_code) else BackendError
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        if retry_after is not None:
            message += f" (retry after {retry_after:g} s)"
        raise error_class(
            f"{self.service} answered {response.status_code} for {self.shown_url}{path}: {message}",
            status_code=response.status_code,
            retry_after=retry_after,
        )

    @asynccontextmanager
    async def stream_lines(
        self, path: str, body: Mapping[str, Any], *, not_streams: Collection[str] = ()
    ) -> AsyncIterator[AsyncIterator[str]]:
        """POST ``body`` and yield the response's lines; closes everything on exit.

        An answer of a media type in ``not_streams`` (a whole JSON answer, an
        HTML page) is refused with :class:`BackendError` saying so.

        Leaving early (the caller was cancelled, or stopped reading) closes
        the response, which closes the connection, so the server sees the
        client go.  httpx reads lines through nested async generators; they
        are run to their end here (they end at once on a closed stream)
        rather than left to the garbage collector, which trio warns about.
        """
        async with self.stream(path, body) as response:
            media = response.headers.get("content-type", "").partition(";")[0].strip().lower()
            if media in not_streams:
                raise BackendError(
                    f"{self.service} at {self.shown_url}{path} answered with {media}, not a stream: "
                    + (
                        "an HTML page, so base_url is not the API's"
                        if media == "text/html"
                        else "a whole answer, so the server ignores stream=true"
                    ),
                    status_code=response.status_code,
                )
            lines = _lines(response.aiter_bytes())
            try:
                yield lines
            finally:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
                    with contextlib.suppress(Exception):
                        async for _ in lines:
                            pass

    async def read_tail(self, lines: AsyncIterator[str]) -> None:
        """Read what is left of a stream whose last message has come (see :data:`_TAIL_LINES`).

        httpx puts a connection back in its pool only once its response was
        read to the end; closing it before that closes the connection, so a
        new one would be opened (and a TLS handshake made) for every request.
        A failure here is not the answer's: it is complete already.
        """
        with anyio.move_on_after(_TAIL_SECONDS), contextlib.suppress(Exception):
            left = _TAIL_LINES
            async for _ in lines:
                left -= 1
                if left <= 0:
                    return

    async def get_json(self, path: str) -> Any:
        url = f"{self.base_url}{path}"
        async with map_http_errors(self, f"{self.shown_url}{path}"):
            response = await self.client().get(url, headers=self._request_headers())
            self._raise_for_status(response, path)
            try:
                return response.json()
            except ValueError as exc:
                raise BackendUnavailable(f"{self.service} sent invalid JSON for {path}") from exc


@asynccontextmanager
async def map_http_errors(settings: HttpSettings, url: str) -> AsyncIterator[None]:
    """Turn httpx's exceptions into :class:`BackendUnavailable` with a plain message."""
    httpx = import_httpx(settings.service, settings.extra)
    service = settings.service
    try:
        yield
    except httpx.ConnectTimeout as exc:
        raise BackendUnavailable(
            f"connecting to {service} at {url} timed out after {settings.timeouts()[0]} s"
        ) from exc
    except httpx.ConnectError as exc:
        proxy = settings.env_proxy()
        via = (
            ""
            if proxy is None
            else f" (the environment names the proxy {shown_url(proxy)}, HTTP(S)_PROXY or ALL_PROXY, "
            "which httpx goes through unless NO_PROXY covers this host: to connect directly, set "
            "NO_PROXY or pass client=httpx.AsyncClient(trust_env=False))"
        )
        raise BackendUnavailable(f"cannot connect to {service} at {url}{via}: {exc}") from exc
    except httpx.ReadTimeout as exc:
        raise BackendUnavailable(
            f"{service} at {url} sent nothing for {settings.timeouts()[1]} s (read timeout)"
        ) from exc
    except httpx.TimeoutException as exc:
        raise BackendUnavailable(f"{service} at {url} timed out: {exc!r}") from exc
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        raise BackendUnavailable(f"the connection to {service} at {url} broke mid-response: {exc}") from exc
    except httpx.HTTPError as exc:
        raise BackendUnavailable(f"talking to {service} at {url} failed: {exc!r}") from exc


def error_message(content: bytes) -> str:
    """The server's error message from an error body, whatever its shape.

    Ollama sends ``{"error": "..."}``, OpenAI-compatible servers
    ``{"error": {"message": "..."}}`` (older vLLM a flat ``{"object": "error",
    "message": "..."}``), FastAPI ``{"detail": ...}``.
    """
    text = content.decode("utf-8", errors="replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, str):
            return error
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
        if body.get("object") == "error" and isinstance(body.get("message"), str):
            return str(body["message"])  # vLLM's and trtllm-serve's flat error
        detail = body.get("detail")
        if detail is not None:
            return detail if isinstance(detail, str) else json.dumps(detail)[:500]
    return text[:500]


#: The longest wait a Retry-After is taken at (a day): a larger one, or a date far ahead, is this.
_MAX_RETRY_AFTER = 86_400.0


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header's wait in seconds (a number of seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value[:12]) if len(value) <= 12 else _MAX_RETRY_AFTER, _MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    wait = (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    return min(max(0.0, round(wait, 3)), _MAX_RETRY_AFTER)


def _error_body(content: bytes) -> bool:
    """Whether an error answer is a JSON error of an API (``{"error": ...}``, ``{"detail": ...}``)."""
    try:
        body = json.loads(content)
    except ValueError:
        return False
    if not isinstance(body, Mapping):
        return False
    error = body.get("error")
    message = error.get("message") if isinstance(error, Mapping) else error
    if message in ("Not Found", "File Not Found") or body.get("detail") == "Not Found":
        return False  # FastAPI's and llama-server's answer to a path they do not have
    # Ollama's {"error": ...}, OpenAI's {"error": {...}}, vLLM's flat {"object": "error", ...}
    return error is not None or "detail" in body or body.get("object") == "error"


def server_busy(status_code: int) -> bool:
    """Whether an HTTP status is the server's fault or its load, not the request's: a 5xx, or a
    429 (too many requests: a rate limit, a full queue such as ``sjfsched serve``'s)."""
    return status_code >= 500 or status_code == 429


def log_probabilities_refused(backend: str, key: str, server: str) -> BackendError:
    """The error for a request option ``key`` asking for log probabilities, which no Chunk carries."""
    return BackendError(
        f"{backend}: {key!r} asks for log probabilities, which its chunks have no place for (they "
        f"would be computed and dropped); for them, call {server} with your own client under "
        "Scheduler.admit()"
    )


def refused_unsent(make: Callable[..., T], *args: Any) -> T:
    """``make(*args)`` (a backend's ``body()``); a :class:`BackendError` it raises is marked
    ``sent=False``: the backend refused the request before anything reached the server."""
    try:
        return make(*args)
    except BackendError as exc:
        exc.sent = False
        raise


def event_loop(caller: str, which: str = "") -> object:
    """The running event loop (asyncio's loop, or trio's run); a :class:`RuntimeError` naming
    ``caller`` (and ``which`` loop it needs) outside any."""
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: anyio's other backend is trio, if it is in use
        trio = sys.modules.get("trio")
        if trio is not None:
            try:
                return trio.lowlevel.current_trio_token()
            except RuntimeError:
                pass
    raise RuntimeError(f"{caller} must be called in an event loop{which}")


def _loop_or_none() -> object:
    try:
        return event_loop("")
    except RuntimeError:
        return None


def _loop_running(loop: object) -> bool:
    """Whether an event loop :func:`event_loop` gave has not ended (``None``: no loop, never)."""
    if loop is None:
        return True
    is_closed = getattr(loop, "is_closed", None)  # asyncio's
    if is_closed is not None:
        return not is_closed()
    try:  # trio's token: a run that has finished refuses work (trio.RunFinishedError)
        loop.run_sync_soon(lambda: None)  # type: ignore[attr-defined]
    except Exception:
        return False
    return True


def is_unavailable(exc: BaseException) -> bool:
    """Whether a failure says the backend (not the request) is at fault."""
    if isinstance(exc, BackendUnavailable):
        return True
    if isinstance(exc, BackendError):
        return exc.status_code is not None and server_busy(exc.status_code)
    return isinstance(exc, (OSError, TimeoutError))


_LINE_END = re.compile("\r\n|\r|\n")


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncGenerator[str, None]:
    """The lines of a UTF-8 stream, ended by LF, CRLF or CR only.

    NDJSON and server-sent events end lines there and nowhere else; JSON may
    carry U+0085, U+2028 and U+2029 unescaped, which ``str.splitlines()``
    (and httpx's ``aiter_lines()``) would take for line ends.  A CR ends a
    line at once; a LF right after it (perhaps in the next read) is then
    part of the same line end.  A character split across reads is decoded
    whole.  Each read is scanned once, so a long line costs linear time.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending: list[str] = []  # the line so far: pieces without a line end
    after_cr = False
    final = False
    while not final:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            text, final = decoder.decode(b"", final=True), True
        else:
            text = decoder.decode(chunk)
        if not text:
            continue
        if after_cr and text.startswith("\n"):
            text = text[1:]
        after_cr = False
        start = 0
        for end in _LINE_END.finditer(text):
            pending.append(text[start : end.start()])
            yield "".join(pending)
            pending = []
            start = end.end()
            after_cr = end.group() == "\r" and start == len(text)
        if start < len(text):
            pending.append(text[start:])
    if pending:
        line = "".join(pending)
        if line:
            yield line
