"""The proxy as an ASGI application: schedule generation calls, pass everything else through.

One request's life: its JSON body is read (bounded by ``max_body_bytes``)
and turned into a :class:`~sjfsched.Request` for the predictor; it waits in
``async with scheduler.admit(request)`` for its turn, shortest predicted
first; then the client's own bytes go to the upstream and the upstream's
answer comes back chunk by chunk as it is produced, read on the way for the
token counts the scheduler learns from.  A watcher task listens for the
client going away the whole time: gone while waiting, the request leaves the
queue; gone while running, the upstream request is closed, which stops the
generation.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any, final

import anyio
import anyio.abc

from .._errors import PredictorError, QueueFull, SchedulerClosed
from .._scheduler import Scheduler, Ticket
from ..predictors import Predictor
from ._apis import (
    BadRequest,
    Endpoint,
    Parsed,
    Style,
    Tally,
    error_body,
    error_event,
    framing_of,
    parse_scheduled,
    scheduled_endpoints,
    separator,
    style_of,
)
from ._client import ConnectFailed, UpstreamClient, UpstreamError, UpstreamResponse
from ._metrics import CONTENT_TYPE, Metrics, capped_tokens, predicted_class
from ._predictor import TimedPredictor, make_predictor
from ._settings import ProxySettings
from ._upstream import Api, detect_api, make_client, request_headers, response_headers

__all__ = ["ProxyApp"]

logger = logging.getLogger("sjfsched.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Pass-through bodies up to this size are read before forwarding; larger ones stream.
_SMALL_BODY = 1 << 20
_JSON = (b"content-type", b"application/json; charset=utf-8")
#: The ASGI scope's extension through which the app can abort its connection (a client that
#: reads nothing would keep a closed transport waiting for ever to write what it holds); the
#: proxy's own HTTP protocol (``_server.bounded_protocol``) puts it there.
ABORT_EXTENSION = "sjfsched.abort"
#: The ASGI scope's extension telling how many bytes written to the connection are not sent yet
#: (None where the system does not say): how the app sees a slow client still read.
UNSENT_EXTENSION = "sjfsched.unsent"
#: Bodies larger than this are parsed in a worker thread (a 9 MiB chat: 0.8 s of parsing).
_PARSE_IN_THREAD_BYTES = 256 * 1024
#: Seconds an upstream may take to end its response after the answer's last event.
_AFTER_DONE_SECONDS = 5.0


class _ClientGone(Exception):
    pass


class _SlowClient(_ClientGone):
    """The client sent nothing of its body for ``--client-timeout`` seconds."""


class _TooLarge(Exception):
    pass


class _Failed(Exception):
    """The upstream's answer was an error (already passed on to the client)."""


@final
class _Exchange:
    """One request's connection state, shared with its disconnect watcher."""

    __slots__ = ("complete",)

    def __init__(self) -> None:
        self.complete = False  # the response is finished: a disconnect now cancels nothing


@final
class ProxyApp:
    """An ASGI application that puts a :class:`~sjfsched.Scheduler` in front of an upstream server.

    Run it on uvicorn with lifespan events on (``sjfsched serve`` does), or
    call :meth:`startup` and :meth:`shutdown` around serving.  Start-up asks
    the upstream what it is unless ``settings.upstream_api`` names it, builds
    the HTTP client and the scheduler.

    ``POST /api/generate``, ``/api/chat`` (Ollama) and ``/v1/chat/completions``,
    ``/v1/completions`` (OpenAI) are scheduled; every other path is forwarded
    unchanged.  The proxy answers ``/healthz`` and ``/metrics`` itself.
    """

    def __init__(self, settings: ProxySettings, *, predictor: Predictor | None = None) -> None:
        """``predictor``: one made already from ``settings`` (``sjfsched serve`` makes it before it
        listens, so a bad state file fails at once); by default it is made at start-up."""
        self.settings = settings
        #: Listening on this machine only: requests naming another host are refused (see _http).
        self._allowed_hosts = frozenset((*settings.allowed_hosts, socket.gethostname().lower()))
        self._loopback_only = listens_on_loopback(settings.host) and "*" not in self._allowed_hosts
        self.metrics = Metrics()
        self._base = settings.upstream
        self._api: Api | None = None if settings.upstream_api == "auto" else settings.upstream_api
        self._scheduled: dict[str, Endpoint] = {}
        self._client: UpstreamClient | None = None
        self._scheduler: Scheduler | None = None
        self._learner: Predictor | None = predictor
        self._draining = False
        self._inflight = 0
        #: of those, scheduled calls still reading their body: a drain does not wait for them
        #: (once read, they are refused), or a client trickling its body would hold the exit;
        #: it refuses them at once, with 503, through their scopes
        self._readers: set[anyio.CancelScope] = set()
        #: of those, pass-through calls (a drain waits for them: an upload, a model's pull)
        self._passing = 0
        self._idle: anyio.Event | None = None
        self._service_seconds: float | None = None

    # ------------------------------------------------------------ state

    @property
    def api(self) -> Api | None:
        """``"ollama"`` or ``"openai"`` once known (after start-up when detected)."""
        return self._api

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            raise RuntimeError("the proxy has not started")
        return self._scheduler

    @property
    def scheduled_paths(self) -> tuple[str, ...]:
        return tuple(self._scheduled)

    @property
    def draining(self) -> bool:
        return self._draining

    # -------------------------------------------------------- lifecycle

    async def startup(self) -> None:
        """Make the client, learn the upstream's API if need be, open the scheduler."""
        settings = self.settings
        # First what can fail on our side (a bad predictor state file), then the upstream.
        if self._learner is None:
            self._learner = make_predictor(settings.predictor, settings.predictor_state)
        if self._client is None:
            self._client = make_client(self._base, settings.connect_timeout, settings.read_timeout)
        if self._api is None:
            self._api = await detect_api(self._base, settings.connect_timeout, settings.read_timeout)
            logger.info("the upstream %s speaks the %s API", self._base, self._api)
        self._scheduled = scheduled_endpoints(self._api)
        predictor = TimedPredictor(self._learner, self.metrics.predictor)
        scheduler = Scheduler(
            predictor=predictor,
            concurrency=settings.concurrency,
            aging=settings.aging,
            cap=settings.cap,
            max_wait=settings.max_wait,
            max_queue=settings.max_queue,
        )
        await scheduler.__aenter__()
        self._scheduler = scheduler

    @property
    def passing(self) -> int:
        """Pass-through calls in flight (a drain waits for them, as for running requests)."""
        return self._passing

    @property
    def reading(self) -> int:
        """Scheduled calls still reading their request body (a drain does not wait for them)."""
        return len(self._readers)

    async def drain(self, grace: float) -> bool:
        """Shut down gently: new requests get 503, waiting ones get 503, running ones finish.

        Returns ``True`` if every request in flight ended within ``grace``
        seconds, ``False`` if some were still running.  Scheduled calls still
        reading their body are not waited for: once read, they would be
        refused.
        """
        self._draining = True
        refused = list(self._readers)
        for reader in refused:  # refused now (503), not cut at the exit
            reader.cancel()
        with anyio.move_on_after(grace):
            if self._scheduler is not None:
                await self._scheduler.aclose()
            # Until those have left their read (then they answer 503 and end as any request).
            while self._inflight > len(self._readers) or not self._readers.isdisjoint(refused):
                self._idle = anyio.Event()
                await self._idle.wait()
            return True
        return False

    async def shutdown(self) -> None:
        """Close the scheduler (waiting for running requests) and the HTTP client."""
        self._draining = True
        if self._scheduler is not None:
            await self._scheduler.aclose()
        if self._client is not None:
            await self._client.aclose()
        self.save_predictor_state()

    def save_predictor_state(self) -> None:
        """Save what the predictor learnt to ``predictor_state``, if one is set (a failure is logged)."""
        save = getattr(self._learner, "save_calibration", None)
        if self.settings.predictor_state is None or save is None:
            return
        try:
            save()
        except (OSError, PredictorError) as exc:  # PredictorError: LexicalPredictor's, naming the file
            logger.error("could not save the predictor's state to %s: %s", self.settings.predictor_state, exc)

    # ------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            self._inflight += 1
            try:
                await self._http(scope, receive, send)
            finally:
                self._inflight -= 1
                if self._inflight <= len(self._readers) and self._idle is not None:
                    self._idle.set()
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # Nothing else (websockets) is served.

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            await self.startup()
        except Exception as exc:
            logger.error("the proxy could not start: %s", exc)
            if self._client is not None:
                await self._client.aclose()
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await self.shutdown()
        await send({"type": "lifespan.shutdown.complete"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if self._loopback_only and not host_allowed(_header(scope, b"host"), self._allowed_hosts):
            # A page in a browser whose name now points at 127.0.0.1 (DNS rebinding) reaches a
            # proxy listening there, and the proxy sends the upstream its own Host: so the check
            # the upstream would make (Ollama's) is made here, as Ollama makes it.
            await _error(send, 403, style_of(path), "the Host of this request is not this machine's")
            return
        if path == "/healthz" and method in ("GET", "HEAD"):
            await self._health(send)
            return
        if path == "/metrics" and method in ("GET", "HEAD"):
            await self._metrics(send)
            return
        if self._scheduler is None or self._client is None:
            await _error(send, 503, style_of(path), "the proxy has not started yet", kind="server_error")
            return
        endpoint = self._scheduled.get(path) if method == "POST" else None
        if self._draining:
            if endpoint is not None:  # a scheduled request refused (a pass-through call is not one)
                self.metrics.rejected["shutting_down"] += 1
            await _error(send, 503, style_of(path), "the proxy is shutting down", kind="server_error")
            return
        if endpoint is None:
            await self._passthrough(scope, receive, send)
        else:
            await self._schedule(endpoint, scope, receive, send)

    # ----------------------------------------------------- own endpoints

    async def _health(self, send: Send) -> None:
        stats = self._scheduler.statistics() if self._scheduler is not None else None
        status = "draining" if self._draining else "ok" if stats is not None else "starting"
        body = json.dumps(
            {
                "status": status,
                "upstream": self._base,
                "api": self._api,
                "waiting": stats.waiting if stats else 0,
                "running": stats.running if stats else 0,
            }
        ).encode()
        await _respond(send, 200 if status == "ok" else 503, body, [_JSON])

    async def _metrics(self, send: Send) -> None:
        if self._scheduler is None:
            await _respond(send, 503, b"the proxy has not started yet\n", [(b"content-type", CONTENT_TYPE)])
            return
        body = self.metrics.render(self._scheduler.statistics(), draining=self._draining)
        await _respond(send, 200, body, [(b"content-type", CONTENT_TYPE)])

    # -------------------------------------------------------- scheduled

    async def _schedule(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        arrival = anyio.current_time()
        style = endpoint.style
        headers, priority, tenant, length = request_headers(scope["headers"], scheduled=True)
        limit = self.settings.max_body_bytes
        try:
            if length is not None and _int(length) > limit:
                raise _TooLarge
            reader = anyio.CancelScope()
            self._readers.add(reader)
            try:
                with reader:
                    raw = await _read_body(receive, limit, self.settings.client_timeout)
            finally:
                self._readers.discard(reader)
                if reader.cancel_called and self._idle is not None:  # a drain waits for it to leave
                    self._idle.set()
            if reader.cancelled_caught:  # the proxy began to shut down while the client sent it
                self.metrics.rejected["shutting_down"] += 1
                await _error(send, 503, style, "the proxy is shutting down", kind="server_error", close=True)
                return
        except _TooLarge:
            self.metrics.rejected["body_too_large"] += 1
            message = f"the request body is larger than {limit} bytes (the proxy's --max-body-bytes)"
            if _header(scope, b"expect") != b"100-continue":  # a client waiting to send sends nothing
                await _discard_body(receive, max(limit, _DISCARD_BYTES), _DISCARD_SECONDS)
            await _error(send, 413, style, message, close=True)
            return
        except _SlowClient:
            await self._too_slow(send, style)
            return
        except _ClientGone:
            return
        parse = functools.partial(
            parse_scheduled,
            endpoint,
            raw,
            priority_header=priority,
            tenant_header=tenant,
            upstream="ollama" if self._api == "ollama" else "openai",
        )
        try:
            # A large body (a chat of thousands of messages) takes the better part of a second
            # to parse: in a worker thread, so the other requests' streams do not stall.
            parsed = parse() if len(raw) <= _PARSE_IN_THREAD_BYTES else await anyio.to_thread.run_sync(parse)
        except BadRequest as exc:
            self.metrics.rejected["bad_request"] += 1
            await _error(send, 400, style, exc.message, param=exc.param)
            return

        exchange = _Exchange()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch, receive, tg.cancel_scope, exchange)
            bounded = _bounded_send(send, self.settings.client_timeout, tg.cancel_scope, scope)
            await self._admit(style, scope, bounded, headers, parsed, arrival, exchange)
            tg.cancel_scope.cancel()

    async def _too_slow(self, send: Send, style: Style, *, scheduled: bool = True) -> None:
        if scheduled:
            self.metrics.rejected["client_timeout"] += 1
        timeout = self.settings.client_timeout
        message = (
            f"the client sent nothing of its request body for {timeout:g} s (the proxy's --client-timeout)"
        )
        await _error(send, 408, style, message, close=True)

    async def _admit(
        self,
        style: Style,
        scope: Scope,
        send: Send,
        headers: list[tuple[bytes, bytes]],
        parsed: Parsed,
        arrival: float,
        exchange: _Exchange,
    ) -> None:
        scheduler = self.scheduler
        try:
            async with scheduler.admit(parsed.request) as ticket:
                await self._relay(ticket, style, scope, send, headers, parsed.body, arrival, exchange)
        except QueueFull as exc:
            self.metrics.rejected["queue_full"] += 1
            exchange.complete = True
            if style == "ollama":
                await _error(send, 503, style, f"server busy: {exc}", kind="server_error")
            else:
                await _error(
                    send,
                    429,
                    style,
                    f"too many requests are waiting: {exc}",
                    kind="rate_limit_error",
                    code="queue_full",
                    extra=[(b"retry-after", str(self._retry_after()).encode())],
                )
        except SchedulerClosed as exc:
            if not exc.waited:  # one that waited is counted closed, with the requests
                self.metrics.rejected["shutting_down"] += 1
            exchange.complete = True
            await _error(send, 503, style, "the proxy is shutting down", kind="server_error")
        except _Failed:
            pass

    async def _relay(
        self,
        ticket: Ticket,
        style: Style,
        scope: Scope,
        send: Send,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        arrival: float,
        exchange: _Exchange,
    ) -> None:
        metrics = self.metrics
        job = ticket.job
        predicted = capped_tokens(job.request, job.prediction.tokens)
        klass = predicted_class(predicted)
        wait = ticket.wait
        metrics.queue_wait[klass].observe(wait)
        ours = [
            (b"x-queue-wait-ms", f"{wait * 1000.0:.3f}".encode()),
            (b"x-predicted-tokens", f"{predicted:.1f}".encode()),
            (b"x-predicted-class", klass.encode()),
        ]
        client = self._client
        assert client is not None
        started = anyio.current_time()
        try:
            response = await client.request("POST", _target(scope), headers, body)
        except UpstreamError as exc:
            await self._unreachable(send, style, exc, ours, exchange, answered=False)
            raise _Failed from exc
        try:
            status = response.status
            if status >= 500:
                metrics.upstream_errors["status"] += 1
            framing = framing_of((response.header(b"content-type") or b"").decode("latin-1"))
            tally = Tally(framing)
            out = response_headers(response.headers, keep_length=False)
            out.extend(ours)
            if framing == "json":
                # One JSON object, sent by the upstream when the answer is done.
                try:
                    answer = await response.read()
                except UpstreamError as exc:
                    await self._unreachable(send, style, exc, ours, exchange, answered=True)
                    raise _Failed from exc
                metrics.first_byte[klass].observe(anyio.current_time() - arrival)
                tally.feed_whole(answer)
                # A whole answer is one JSON object with Ollama's "done": true or an OpenAI
                # finish_reason; anything else (cut short, empty, a middlebox's page) broke off.
                unfinished = status < 400 and not (tally.done or tally.finished)
                if unfinished:
                    metrics.upstream_errors["midstream"] += 1
                    logger.warning(
                        "the upstream %s answered %d with no whole answer (%d bytes: cut short, or "
                        "not the API's JSON); passed on as it came, counted as failed",
                        self._base,
                        status,
                        len(answer),
                    )
                failed = status >= 400 or tally.error is not None or unfinished
                if not failed:
                    self._report(ticket, tally, klass, arrival, started)
                out.append((b"content-length", str(len(answer)).encode()))
                exchange.complete = True
                await send({"type": "http.response.start", "status": status, "headers": out})
                await send({"type": "http.response.body", "body": answer})
            else:
                await send({"type": "http.response.start", "status": status, "headers": out})
                first = True
                last = b""
                try:
                    while (chunk := await response.next_chunk()) is not None:
                        if first:
                            first = False
                            ticket.first_token()
                            metrics.first_byte[klass].observe(anyio.current_time() - arrival)
                        tally.feed(chunk)
                        if response.finished:  # the upstream's end came with it: one write for both
                            last = chunk
                            break
                        if tally.error is not None:
                            # The upstream failed this answer (an error line or event): its client
                            # may hang up on reading it (ollama's does), which cancels nothing now.
                            exchange.complete = True
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        if tally.done or tally.error is not None:
                            break
                except UpstreamError as exc:
                    metrics.upstream_errors["midstream"] += 1
                    message = f"the upstream {self._base} broke off its answer: {exc}"
                    logger.warning("%s", message)
                    exchange.complete = True
                    event = tally.separator() + error_event(framing, message)
                    await send({"type": "http.response.body", "body": event})
                    raise _Failed from exc
                if (tally.done or tally.error is not None) and not response.finished:
                    # The answer is whole (Ollama's "done": true, OpenAI's [DONE]), or failed; clients
                    # may hang up now (openai's does), and that costs nothing.  Pass on what follows.
                    exchange.complete = True
                    await self._rest_after_done(response, send)
                # An Ollama stream ends with its "done": true line; one without it broke off.
                # An OpenAI stream ends with a finish_reason; one without it broke off (Ollama's
                # /v1 after an error) or was cut short ([DONE] with no finish_reason).
                unfinished = not tally.done if framing == "ndjson" else not tally.finished
                if unfinished and status < 400:  # cut short, as a whole answer can be
                    metrics.upstream_errors["midstream"] += 1
                    if framing == "sse" and tally.done:
                        logger.warning(
                            "the upstream %s ended an answer with [DONE] and no finish_reason: it was "
                            "cut short (llama_cpp.server does that for another request unless started "
                            "with --interrupt_requests False); counted as failed, not learnt from",
                            self._base,
                        )
                    else:
                        logger.warning(
                            "the upstream %s ended a streamed answer without its end (%s): cut short; "
                            "passed on as it came, counted as failed",
                            self._base,
                            '"done": true' if framing == "ndjson" else "a finish_reason",
                        )
                failed = status >= 400 or tally.error is not None or unfinished
                if not failed:
                    self._report(ticket, tally, klass, arrival, started)
                exchange.complete = True
                await send({"type": "http.response.body", "body": last})
            if failed:
                raise _Failed
        finally:
            response.close()

    async def _rest_after_done(self, response: UpstreamResponse, send: Send) -> None:
        with anyio.move_on_after(_AFTER_DONE_SECONDS):
            try:
                while (chunk := await response.next_chunk()) is not None:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except UpstreamError as exc:
                logger.info("the upstream %s closed its answer untidily after its end: %s", self._base, exc)

    async def _unreachable(
        self,
        send: Send,
        style: Style,
        exc: UpstreamError,
        extra: Sequence[tuple[bytes, bytes]],
        exchange: _Exchange,
        *,
        answered: bool,
    ) -> None:
        """A 502 for an upstream that could not be reached, or broke off before its answer
        (``answered``: after the answer's head, in its body)."""
        # The metric's kinds: connect, before an answer (its head); midstream, an answer cut.
        self.metrics.upstream_errors["midstream" if answered else "connect"] += 1
        if isinstance(exc, ConnectFailed):
            message = f"the upstream {self._base} could not be reached: {exc}"
        else:
            message = f"the upstream {self._base} broke off its answer: {exc}"
        logger.warning("%s", message)
        exchange.complete = True
        await _error(send, 502, style, message, kind="upstream_error", extra=extra)

    def _report(self, ticket: Ticket, tally: Tally, klass: str, arrival: float, started: float) -> None:
        metrics = self.metrics
        output = tally.output_tokens
        ticket.report(output, tally.prompt_tokens)
        metrics.output_tokens += output
        metrics.prompt_tokens += tally.prompt_tokens or 0
        now = anyio.current_time()
        metrics.latency[klass].observe(now - arrival)
        service = now - started
        previous = self._service_seconds
        self._service_seconds = service if previous is None else 0.9 * previous + 0.1 * service

    def _retry_after(self) -> int:
        """Seconds until the queue has probably moved on.

        (waiting + running) x the recent service time (an exponential moving
        average, weight 0.1 per completed request) / slots, 1 to 3600.
        """
        stats = self.scheduler.statistics()
        service = self._service_seconds if self._service_seconds is not None else 1.0
        return max(1, min(3600, math.ceil(service * (stats.waiting + stats.running) / stats.concurrency)))

    # ----------------------------------------------------- pass-through

    async def _passthrough(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.metrics.passthrough += 1
        self._passing += 1
        try:
            await self._pass(scope, receive, send)
        finally:
            self._passing -= 1

    async def _pass(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers, _, _, length = request_headers(scope["headers"], scheduled=False)
        chunked = any(name == b"transfer-encoding" for name, _ in scope["headers"])
        exchange = _Exchange()
        timeout = self.settings.client_timeout
        async with anyio.create_task_group() as tg:
            content: bytes | AsyncIterator[bytes] | None
            if length is None and not chunked:
                content = None
                tg.start_soon(_watch, receive, tg.cancel_scope, exchange)
            elif length is not None and _int(length) <= _SMALL_BODY:
                try:
                    content = await _read_body(receive, None, timeout)
                except _SlowClient:
                    await self._too_slow(send, style_of(scope["path"]), scheduled=False)
                    return
                except _ClientGone:
                    return
                tg.start_soon(_watch, receive, tg.cancel_scope, exchange)
            else:
                content = _stream_body(receive, tg, exchange, timeout)
            bounded = _bounded_send(send, timeout, tg.cancel_scope, scope)
            await self._forward(scope, bounded, headers, content, length, exchange)
            tg.cancel_scope.cancel()

    async def _forward(
        self,
        scope: Scope,
        send: Send,
        headers: list[tuple[bytes, bytes]],
        content: bytes | AsyncIterator[bytes] | None,
        length: bytes | None,
        exchange: _Exchange,
    ) -> None:
        client = self._client
        assert client is not None
        style = style_of(scope["path"])
        try:
            response = await client.request(
                scope["method"], _target(scope), headers, content, content_length=length
            )
        except _SlowClient:  # its body, streamed upstream as it came, stopped coming
            await self._too_slow(send, style, scheduled=False)
            return
        except _ClientGone:
            return
        except UpstreamError as exc:
            await self._unreachable(send, style, exc, (), exchange, answered=False)
            return
        try:
            await self._pass_answer(response, send, exchange)
        finally:
            response.close()

    async def _pass_answer(self, response: UpstreamResponse, send: Send, exchange: _Exchange) -> None:
        if response.status >= 500:
            self.metrics.upstream_errors["status"] += 1
        # A 304 or 204 has no body whatever its Content-Length says (RFC 9110 §8.6), and
        # uvicorn would wait for one: leave the header out.
        no_body = response.status in (204, 304) or 100 <= response.status < 200
        out = response_headers(response.headers, keep_length=not no_body)
        await send({"type": "http.response.start", "status": response.status, "headers": out})
        tail = b"\n\n"
        last = b""
        try:
            while (chunk := await response.next_chunk()) is not None:
                if response.finished:  # the upstream's end came with it: one write for both
                    last = chunk
                    break
                tail = (tail + chunk[-2:])[-2:]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as exc:
            self.metrics.upstream_errors["midstream"] += 1
            message = f"the upstream {self._base} broke off its answer: {exc}"
            framing = framing_of((response.header(b"content-type") or b"").decode("latin-1"))
            if framing == "json" or response.header(b"content-length") is not None:
                # No way to say so inside this body: cut the connection, as the upstream did.
                logger.warning("%s; closing the client's connection", message)
                return
            logger.warning("%s", message)
            exchange.complete = True
            event = separator(framing, tail) + error_event(framing, message)
            await send({"type": "http.response.body", "body": event})
            return
        exchange.complete = True
        await send({"type": "http.response.body", "body": last})


# ------------------------------------------------------------------ helpers


async def _watch(receive: Receive, scope: anyio.CancelScope, exchange: _Exchange) -> None:
    """Cancel the request's work when its client disconnects before the answer is complete."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not exchange.complete:
                scope.cancel()
            return


async def _receive(receive: Receive, patience: float | None) -> Message:
    """The next message from the client, which may take at most ``patience`` seconds to send it.

    Timed with a timer of the event loop (asyncio's: the proxy runs on
    uvicorn's loop), not a cancel scope of its own: a message is nearly
    always there at once, and a scope costs several times what a timer does.
    """
    if patience is None:
        return await receive()
    with anyio.CancelScope() as waited:
        timer = asyncio.get_running_loop().call_later(patience, waited.cancel)
        try:
            return await receive()
        finally:
            timer.cancel()
    raise _SlowClient


def _bounded_send(send: Send, timeout: float | None, scope: anyio.CancelScope, asgi: Scope) -> Send:
    """``send``, but a client that reads nothing of its answer for ``timeout`` seconds has its
    request cancelled (``scope``), as if it had hung up: its slot does not stay taken for ever.

    A ``send()`` waits while the connection's buffers are full; a client that
    reads, however slowly, drains them, and that is what is timed: each
    ``timeout`` seconds a waiting send looks at what is left unsent (the
    transport's buffer and, where the system tells it, the socket's), and
    the client has stopped reading only if that has not shrunk.  (A send
    timed whole would cut a steady but slow reader: the system's socket
    buffer, megabytes on a fast link, wakes a writer only once much of it
    has drained.)  Its connection is then reset, not closed: a close waits
    for the client to take what was written, which it never does.
    """
    if timeout is None:
        return send
    loop = asyncio.get_running_loop()
    extensions = asgi.get("extensions", {})
    abort = extensions.get(ABORT_EXTENSION)
    unsent = extensions.get(UNSENT_EXTENSION)

    async def bounded(message: Message) -> None:
        left: list[int | None] = [unsent() if callable(unsent) else None]
        timer: asyncio.TimerHandle | None = None

        def check() -> None:
            nonlocal timer
            now = unsent() if callable(unsent) else None
            if now is not None and left[0] is not None and now < left[0]:
                left[0] = now  # the client read some: wait on
                timer = loop.call_later(timeout, check)
                return
            logger.warning(
                "a client read nothing of its answer the proxy could see for %g s (--client-timeout): "
                "its request is cancelled and its connection closed",
                timeout,
            )
            scope.cancel()
            if callable(abort):
                abort()

        timer = loop.call_later(timeout, check)
        try:
            await send(message)
        finally:
            timer.cancel()

    return bounded


async def _read_body(receive: Receive, limit: int | None, patience: float | None) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await _receive(receive, patience)
        if message["type"] == "http.disconnect":
            raise _ClientGone
        part: bytes = message.get("body", b"")
        if part:
            size += len(part)
            if limit is not None and size > limit:
                raise _TooLarge
            parts.append(part)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


#: What is left of a body too large is read and dropped before the 413 goes out, up to this many
#: bytes and seconds: closed with data unread, the connection is reset, and a client still
#: sending (an async one, mostly) lost the 413 in the reset, seeing a connection error.
_DISCARD_BYTES = 64 << 20
_DISCARD_SECONDS = 5.0


async def _discard_body(receive: Receive, most: int, seconds: float) -> None:
    """Read and drop the rest of a refused request's body (at most ``most`` bytes, ``seconds``)."""
    size = 0
    with anyio.move_on_after(seconds):
        while size <= most:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


async def _stream_body(
    receive: Receive, tg: anyio.abc.TaskGroup, exchange: _Exchange, patience: float | None
) -> AsyncIterator[bytes]:
    """The request body as it arrives; the disconnect watcher starts once it is all read."""
    while True:
        message = await _receive(receive, patience)
        if message["type"] == "http.disconnect":
            raise _ClientGone
        part: bytes = message.get("body", b"")
        if part:
            yield part
        if not message.get("more_body", False):
            break
    tg.start_soon(_watch, receive, tg.cancel_scope, exchange)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def listens_on_loopback(host: str) -> bool:
    """Whether the proxy listens only on this machine (a loopback address, or ``localhost``)."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def host_allowed(value: bytes | None, allowed: frozenset[str] = frozenset()) -> bool:
    """Whether a request's Host names this machine, as Ollama decides it for a server listening
    on a loopback address (``allowedHostsMiddleware`` in its server/routes.go): an IP address
    that is loopback, private or unspecified; ``localhost``, this machine's name, or a name
    under ``.localhost``, ``.local`` or ``.internal``; or no Host at all.  ``allowed``: more
    names, lowercase, without port: the machine's name (looked up once, by the caller), and
    ``--allowed-hosts``, a name a reverse proxy in front passes on."""
    if not value:
        return True
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):  # [::1]:8080
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:  # name:port (a bare IPv6 address has more than one colon)
        host = host.partition(":")[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return address.is_loopback or address.is_private or address.is_unspecified
    if host in ("", "localhost") or host in allowed:
        return True
    return host.endswith((".localhost", ".local", ".internal"))


def _target(scope: Scope) -> str:
    """The request target to send upstream: the client's path (as sent) and query."""
    raw_path: bytes | None = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    query: bytes = scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


def _int(value: bytes) -> int:
    """A Content-Length; an unreadable one counts as huge (uvicorn rejects those anyway)."""
    try:
        return int(value)
    except ValueError:
        return 1 << 62


async def _respond(send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _error(
    send: Send,
    status: int,
    style: Style,
    message: str,
    *,
    kind: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    extra: Sequence[tuple[bytes, bytes]] = (),
    close: bool = False,
) -> None:
    """An error response in the API's own shape."""
    body = error_body(style, message, kind=kind, code=code, param=param)
    headers = [_JSON, *extra]
    if close:
        headers.append((b"connection", b"close"))
    await _respond(send, status, body, headers)
