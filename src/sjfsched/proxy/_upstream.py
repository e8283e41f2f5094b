"""Talking to the upstream: the HTTP client, which headers pass, what kind of server it is."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from typing import Any, Final, Literal

from ._client import UpstreamClient, UpstreamError

__all__ = [
    "UpstreamUnavailable",
    "detect_api",
    "detect_api_sync",
    "make_client",
    "request_headers",
    "response_headers",
]

Api = Literal["ollama", "openai"]

#: Hop-by-hop headers (RFC 9110 §7.6.1) and the ones httpx or uvicorn set themselves.
_REQUEST_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"expect",
    }
)
_SCHEDULED_DROP = _REQUEST_DROP | {b"accept-encoding"}
_RESPONSE_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_IDENTITY = (b"accept-encoding", b"identity")
_PROBES: tuple[tuple[Api, str], ...] = (("ollama", "/api/tags"), ("openai", "/v1/models"))


class UpstreamUnavailable(Exception):
    """The upstream could not be reached or did not look like an Ollama or OpenAI-compatible server."""


def _connection_options(headers: Sequence[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The header names a message's ``Connection`` header lists: hop-by-hop too (RFC 9110 §7.6.1)."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    named.discard(b"")
    return frozenset(named)


def make_client(upstream: str, connect_timeout: float | None, read_timeout: float | None) -> UpstreamClient:
    return UpstreamClient(upstream, connect_timeout=connect_timeout, read_timeout=read_timeout)


def request_headers(
    headers: Iterable[tuple[bytes, bytes]], *, scheduled: bool
) -> tuple[list[tuple[bytes, bytes]], bytes | None, bytes | None, bytes | None]:
    """The client's headers to forward, and its X-Priority, X-Tenant and Content-Length.

    A scheduled call asks the upstream for an uncompressed answer
    (``Accept-Encoding: identity``) so that the proxy can read it as it passes.
    """
    headers = list(headers)
    drop = _SCHEDULED_DROP if scheduled else _REQUEST_DROP
    listed = _connection_options(headers)
    if listed:
        drop = drop | (listed - {b"content-length", b"x-priority", b"x-tenant"})
    out: list[tuple[bytes, bytes]] = []
    priority = tenant = length = None
    for name, value in headers:
        if name in drop:
            if name == b"content-length":
                length = value
            continue
        if name == b"x-priority":
            priority = value
        elif name == b"x-tenant":
            tenant = value
        out.append((name, value))
    if scheduled:
        out.append(_IDENTITY)
    return out, priority, tenant, length


def response_headers(
    headers: Sequence[tuple[bytes, bytes]], *, keep_length: bool
) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers to pass on to the client."""
    drop = _RESPONSE_DROP | (_connection_options(headers) - {b"content-length"})
    return [
        (name, value)
        for name, value in ((n.lower(), v) for n, v in headers)
        if name not in drop and (keep_length or name != b"content-length")
    ]


async def _probe(client: UpstreamClient, api: Api, path: str) -> bool | str:
    """True if the upstream answers ``GET path`` as an ``api`` server would; else what it said."""
    try:
        response = await client.request("GET", path, [(b"accept", b"application/json")])
    except UpstreamError as exc:
        return str(exc)
    try:
        body = await response.read()
    except UpstreamError as exc:
        return str(exc)
    finally:
        response.close()
    if response.status != 200:
        return f"HTTP {response.status}"
    try:
        data: Any = json.loads(body)
    except ValueError:
        return "not JSON"
    key = "models" if api == "ollama" else "data"
    if isinstance(data, dict) and isinstance(data.get(key), list):
        return True
    return f"JSON without a {key!r} list"


#: The longest the upstream may stay silent when asked what API it speaks (or ``read_timeout``,
#: if shorter): a server that takes connections and never answers is not one to start in front of.
DETECT_READ_TIMEOUT: Final = 30.0


async def detect_api(upstream: str, connect_timeout: float | None, read_timeout: float | None) -> Api:
    """Ask the upstream what it is: Ollama answers ``GET /api/tags``, others ``GET /v1/models``.

    Each question waits at most :data:`DETECT_READ_TIMEOUT` seconds for an answer, or
    ``read_timeout`` if shorter.
    """
    silence = DETECT_READ_TIMEOUT if read_timeout is None else min(read_timeout, DETECT_READ_TIMEOUT)
    client = UpstreamClient(upstream, connect_timeout=connect_timeout, read_timeout=silence)
    failures: list[str] = []
    try:
        for api, path in _PROBES:
            result = await _probe(client, api, path)
            if result is True:
                return api
            failures.append(f"{path}: {result}")
    finally:
        await client.aclose()
    raise UpstreamUnavailable(
        f"{client.base_url} answered neither GET /api/tags (Ollama) nor GET /v1/models "
        f"(OpenAI-compatible): {'; '.join(failures)}. Start the upstream first, or name its API "
        "with --upstream-api ollama|openai"
    )


def detect_api_sync(upstream: str, connect_timeout: float | None, read_timeout: float | None) -> Api:
    """:func:`detect_api` for the command line, before the server's event loop starts."""
    return asyncio.run(detect_api(upstream, connect_timeout, read_timeout))
