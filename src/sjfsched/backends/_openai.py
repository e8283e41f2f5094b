"""An OpenAI-compatible server as a backend (llama.cpp's server, LM Studio, vLLM, ...)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final, Literal, final
from urllib.parse import urlsplit

import attrs

from .._errors import BackendError
from .._records import Chunk, Request, usable_count
from ._base import ToolCallPieces, goes_on_as_it_was, resume_by_continuation
from ._http import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    BackendUnavailable,
    HttpSettings,
    check_base_url,
    import_httpx,
    log_probabilities_refused,
    refused_unsent,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["OpenAIBackend"]

_RESERVED = frozenset({"model", "prompt", "messages", "stream"})
#: What a 200 answer to a streamed request may not be: a whole JSON answer, a web page.
_NOT_STREAMS = frozenset({"application/json", "text/html"})


#: Options that constrain the form of the answer (llama.cpp's server, vLLM, the OpenAI API): a
#: new request over the text so far would start them over.
_FORM_OPTIONS: Final = (
    "grammar",
    "json_schema",
    "response_format",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structured_outputs",
)
#: Sampling options that weigh the answer's earlier tokens, at their neutral values.
_NEUTRAL_PENALTIES: Final = (
    ("frequency_penalty", 0.0),
    ("presence_penalty", 0.0),
    ("repeat_penalty", 1.0),
    ("repetition_penalty", 1.0),
)


@final
class OpenAIBackend:
    """Sends requests to an OpenAI-compatible server and streams its answers.

    For llama.cpp's ``llama-server``, ``llama_cpp.server``, LM Studio, vLLM,
    LocalAI and the like.  ``Request.messages`` goes to
    ``POST {base_url}/chat/completions``, ``Request.prompt`` to
    ``POST {base_url}/completions``, both with ``"stream": true`` (server-sent
    events).  ``base_url`` is the API root as the ``openai`` client takes it,
    e.g. ``http://127.0.0.1:8080/v1``; a URL without a path gets ``/v1``.

    ``model`` names the served model; ``None`` asks the server
    (``GET /models``) once and takes the first.  ``api_key``, if given, is
    sent as ``Authorization: Bearer <api_key>``.  ``Request.max_tokens``
    becomes ``max_tokens`` (``limit_field="max_completion_tokens"``: that
    field, OpenAI's newer name, in chat requests, for a server that refuses
    ``max_tokens`` there; ``/completions`` has ``max_tokens`` only.  The
    limit belongs there, not in the options, where
    :class:`~sjfsched.Request` refuses it); ``Request.options`` (``temperature``, ``seed``,
    ``stop``, ``top_p``, ``logit_bias``, ...) go into the body unchanged,
    except ``model``, ``prompt``, ``messages`` and ``stream``, which the
    backend sets (a request that sets one fails with ``BackendError``, and so
    does ``n`` or ``best_of`` above 1: one answer is read a request); a
    ``stream_options`` of your own gets ``include_usage`` added.

    Token counts: the body asks for ``stream_options: {"include_usage":
    true}``, and the usage the server sends at the end (``prompt_tokens``,
    ``completion_tokens``) makes the chunks' sum exact.  A server that sends
    no usage (``llama_cpp.server`` does not) is counted one token per
    streamed chunk, and as ``max_tokens`` when it stopped for ``"length"``
    with at least half that many chunks (fewer: the context filled up, and
    the chunks are the count).  Pass ``include_usage=False`` for a server that rejects
    ``stream_options``.

    Errors reach the caller as :class:`~sjfsched.BackendError` with the
    server's message and ``status_code``; failures of the server or the
    network (connection refused or lost, timeouts, 5xx, a malformed or
    truncated stream) are :class:`BackendUnavailable`.  A stream the server
    ends with ``data: [DONE]`` but no finish reason (``llama_cpp.server``
    cutting it short for another request) is a ``BackendError``.  ``connect_timeout``
    and ``read_timeout`` as for :class:`OllamaBackend`.  Cancelling the caller
    closes the HTTP stream.

    ``slots`` is how many requests the server runs at once (llama.cpp's
    ``--parallel``, vLLM's batch): a :class:`~sjfsched.Scheduler` takes its
    concurrency from it, and the backend's own HTTP client allows a connection
    for each (at least 100, httpx's default); it reaches a server on this
    machine directly, past the environment's proxies, as
    :class:`OllamaBackend` does.  ``headers`` are added to every
    request, and ``client`` is your own ``httpx.AsyncClient``, as for
    :class:`OllamaBackend`: its timeouts and connection limits are then the
    ones in force, so let them allow ``slots`` connections.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        *,
        slots: int = 1,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        include_usage: bool = True,
        headers: Mapping[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
        limit_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
    ) -> None:
        if limit_field not in ("max_tokens", "max_completion_tokens"):
            raise ValueError(
                f"limit_field must be 'max_tokens' or 'max_completion_tokens', got {limit_field!r}"
            )
        if model is not None and (not isinstance(model, str) or not model):
            raise ValueError(f"model must be a non-empty str or None, got {model!r}")
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be an int >= 1, got {slots!r}")
        check_base_url(base_url)  # as given: the error quotes it without the /v1 added
        if urlsplit(base_url).path in ("", "/"):
            base_url = base_url.rstrip("/") + "/v1"
        import_httpx("OpenAIBackend", "openai")  # without the openai extra: fail here, not on every request
        if not isinstance(include_usage, bool):
            raise TypeError(f"include_usage must be True or False, got {include_usage!r}")
        if headers is not None and not isinstance(headers, Mapping):
            raise TypeError(f"headers must be a mapping of names to values, got {type(headers).__name__}")
        all_headers = dict(headers or {})
        # A header of the caller's own wins, whatever its case: one Authorization is sent.
        if api_key is not None and not any(name.lower() == "authorization" for name in all_headers):
            all_headers["Authorization"] = f"Bearer {api_key}"
        self.model = model
        self.slots = slots
        self.include_usage = include_usage
        self.limit_field = limit_field
        self._http = HttpSettings(
            service="the OpenAI-compatible server",
            extra="openai",
            base_url=base_url,
            slots=slots,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            headers=all_headers,
            client=client,
        )

    @property
    def base_url(self) -> str:
        return self._http.base_url

    def __repr__(self) -> str:
        return f"OpenAIBackend({self._http.shown_url!r}, model={self.model!r}, slots={self.slots})"

    async def models(self) -> list[str]:
        """The ids of the served models (``GET /models``)."""
        answer = await self._http.get_json("/models")
        data = answer.get("data") if isinstance(answer, Mapping) else None
        if not isinstance(data, list):
            raise BackendUnavailable(f"{self._http.shown_url}/models sent an unexpected answer")
        return [m["id"] for m in data if isinstance(m, Mapping) and isinstance(m.get("id"), str)]

    async def _model(self) -> str:
        if self.model is None:
            models = await self.models()
            if not models:
                raise BackendError(f"{self._http.shown_url}/models lists no model; pass model=...")
            self.model = models[0]
        return self.model

    def body(self, request: Request, model: str) -> tuple[str, dict[str, Any]]:
        """The endpoint and JSON body the server gets for ``request``."""
        body: dict[str, Any] = {"model": model}
        if request.messages is not None:
            path = "/chat/completions"
            body["messages"] = [dict(m) for m in request.messages]
        else:
            path = "/completions"
            body["prompt"] = request.prompt
        body["stream"] = True
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        for key, value in request.options.items():
            if key in _RESERVED:
                raise BackendError(f"OpenAIBackend sets {key!r} itself; remove it from Request.options")
            if key in ("n", "best_of") and value not in (None, 1):
                raise BackendError(
                    f"OpenAIBackend reads one answer a request, and {key}={value!r} asks for more "
                    "(the others' tokens would be counted, their text lost): send the request again instead"
                )
            # logprobs 0 on /completions still asks for the sampled token's (vLLM computes it)
            if (key == "logprobs" and value is not None and value is not False) or (
                key == "top_logprobs" and value
            ):
                raise log_probabilities_refused("OpenAIBackend", key, "the server")
            if key == "stream_options" and isinstance(value, Mapping) and self.include_usage:
                value = {"include_usage": True, **value}  # the caller's own options, and the usage
            body[key] = value
        if request.max_tokens is not None:
            # Only the field the server reads, so a "no limit" of the options' cannot stand beside it.
            body.pop("max_tokens", None)
            body.pop("max_completion_tokens", None)
            body[self._limit_field(path)] = request.max_tokens
        return path, body

    def _limit_field(self, path: str) -> str:
        """Where the limit goes: ``limit_field`` for a chat; ``/completions`` has ``max_tokens`` only."""
        return self.limit_field if path == "/chat/completions" else "max_tokens"

    async def stream(self, request: Request, /) -> AsyncIterator[Chunk]:
        path, body = refused_unsent(self.body, request, await self._model())
        chat = request.messages is not None
        max_tokens = body.get(self._limit_field(path))
        counted = 0
        finish: str | None = None
        usage: Mapping[str, Any] = {}
        done = False
        tools = ToolCallPieces()
        # With stop strings, a server that matches one inside a token sends the text before it,
        # then the finish in an event of its own: in a request that may be paused, each chunk
        # waits for the next piece of the answer or its finish, so the chunk that ends the
        # answer carries its finish and is never taken for one to pause after (the rest would
        # go on past the stop string).  A failure meanwhile passes the held chunk on first.
        hold = bool(body.get("stop")) and self.resumable(request)
        held: Chunk | None = None
        events_read = 0
        async with (
            self._http.stream_lines(path, body, not_streams=_NOT_STREAMS) as lines,
            aclosing(_sse_data(lines)) as events,
        ):
            try:
                async for data in events:
                    events_read += 1
                    if data == "[DONE]":
                        done = True
                        break
                    event = _parse_event(data)
                    if isinstance(event.get("usage"), Mapping):
                        usage = event["usage"]
                    choices = event.get("choices")
                    if not isinstance(choices, list):
                        continue
                    for choice in choices:
                        if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                            continue
                        text, thinking, pieces = _choice_text(choice, chat)
                        reason = choice.get("finish_reason")
                        if isinstance(reason, str) and reason:  # "" (sglang, old Ollama): none yet
                            finish = reason
                        if tools.add(pieces) or text or thinking:
                            counted += 1
                            # With the reason where the server gave it, the scheduler knows the
                            # answer has ended and does not pause it (preempt) for the last chunk.
                            chunk = Chunk(text, finish_reason=finish, thinking=thinking)
                            if not hold:
                                yield chunk
                                continue
                            if held is not None:
                                yield held
                            held = chunk
                        elif held is not None and finish is not None and held.finish_reason is None:
                            held = attrs.evolve(held, finish_reason=finish)
            except Exception:
                if held is not None:  # what the server sent before it failed reaches the caller
                    chunk, held = held, None
                    yield chunk
                raise
            if held is not None:
                yield held
            if not events_read:
                # Ended whole (a broken connection raises before this), having sent nothing: the
                # server refused this request, not failing itself.
                raise BackendError(
                    f"{self._http.shown_url}{path} ended the stream at once, sending nothing: the request "
                    "was refused (llama_cpp.server does this for a prompt longer than its context, n_ctx)"
                )
            yield self._last_chunk(path, done, finish, usage, max_tokens, counted, tools.calls())
            await self._http.read_tail(lines)  # after the answer: so the connection is kept for the next

    def resumable(self, request: Request, /) -> bool:
        """A ``/completions`` request with ``Request.max_tokens`` can be paused and resumed; a chat
        request cannot (the API has no way to go on with an assistant's answer), nor one without
        a limit: the server's own default (16 tokens for ``llama_cpp.server`` and vLLM) would
        apply again to the rest, and the answer could grow past what it would have been.  Nor
        one whose options a new request over the text so far cannot go on with: a constraint on
        the answer's form (``grammar``, ``json_schema``, ``response_format``, vLLM's
        ``guided_*``), which would start over and the answer leave it; a ``suffix``, which the
        text so far would come before; a repetition penalty, which would forget the earlier
        tokens; ``echo``, whose answer so far begins with the prompt, which the new request's
        prompt would hold twice."""
        return (
            request.messages is None
            and request.max_tokens is not None
            and not request.options.get("echo")
            and goes_on_as_it_was(request.options, _FORM_OPTIONS, _NEUTRAL_PENALTIES)
        )

    async def resume(self, request: Request, answer: str, tokens: int, /) -> AsyncIterator[Chunk]:
        """The rest of the answer to a ``/completions`` request: the prompt followed by
        ``answer``, with ``max_tokens`` less the ``tokens`` written (``Scheduler(preempt=True)``).

        The server reads the answer so far again, tokenized anew, so it may go
        on differently from an answer never paused, and a ``stop`` string
        begun before the pause is not seen.
        """
        async with aclosing(resume_by_continuation(self.stream, request, answer, tokens)) as chunks:
            async for chunk in chunks:
                yield chunk

    def _last_chunk(
        self,
        path: str,
        done: bool,
        finish: str | None,
        usage: Mapping[str, Any],
        max_tokens: object,
        counted: int,
        tool_calls: tuple[Mapping[str, Any], ...],
    ) -> Chunk:
        """The stream's last chunk, with the token counts; raises if the answer did not end whole."""
        if finish in ("abort", "error"):  # vLLM's: the engine gave up on this answer
            raise BackendUnavailable(
                f"{self._http.shown_url}{path} ended the answer with finish_reason {finish!r}: "
                "it is not whole"
            )
        if finish is None:
            if not done:
                raise BackendUnavailable(
                    f"{self._http.shown_url}{path} ended the stream before the answer was complete"
                )
            # [DONE] with no finish_reason: the server stopped this answer for another
            # request (llama_cpp.server does unless started with --interrupt_requests False).
            # The server is fine; the answer is not whole.
            raise BackendError(
                f"{self._http.shown_url}{path} ended the stream ([DONE]) without a finish_reason: the answer "
                f"was cut short (llama_cpp.server cuts a running stream short when another request "
                f"arrives, unless started with --interrupt_requests False)"
            )
        completion_tokens = usable_count(usage.get("completion_tokens"))
        if completion_tokens is not None:
            total = completion_tokens
        elif finish == "length" and (limit := usable_count(max_tokens)) is not None and limit <= 2 * counted:
            # Cut at max_tokens: that many, though a piece may have held more than one (a
            # character of several tokens, text held back for a stop string).  A "length" far
            # short of it is the context filling up (or a max_tokens past any answer's length):
            # the pieces are the count.
            total = limit
        else:
            total = counted
        return Chunk(
            "",
            tokens=max(0, total - counted),
            prompt_tokens=usable_count(usage.get("prompt_tokens")),
            finish_reason=finish or "stop",
            tool_calls=tool_calls,
        )

    async def aclose(self) -> None:
        """Close this event loop's HTTP client of the backend's own (one passed in is yours to close)."""
        await self._http.aclose()


async def _sse_data(raw_lines: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """The ``data`` of each server-sent event (multi-line data joined by newlines).

    Events without data are skipped.  An error the server sends in a way of
    its own ends the stream with :class:`BackendUnavailable` and its message:
    an ``event: error`` event, llama.cpp server's ``error:`` field, or a bare
    JSON ``{"error": ...}`` line.
    """
    lines: list[str] = []
    event = ""
    async for line in raw_lines:
        if not line:
            if lines:
                data = "\n".join(lines)
                if event == "error":
                    _raise_server_error(data)
                if data:
                    yield data
            lines, event = [], ""
            continue
        if line.startswith(":"):
            continue  # a comment (keep-alive ping)
        if line.startswith("{"):
            _raise_server_error(line, only_if_error=True)
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            lines.append(value)
        elif field == "event":
            event = value
        elif field == "error":
            _raise_server_error(value)
    if lines:
        data = "\n".join(lines)
        if event == "error":
            _raise_server_error(data)
        if data:
            yield data


def _raise_server_error(data: str, *, only_if_error: bool = False) -> None:
    """Raise the server's error from an error event's text (JSON or plain)."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if only_if_error and not (isinstance(body, Mapping) and body.get("error") is not None):
        return
    code = None
    if isinstance(body, Mapping):
        error = body.get("error", body)  # llama.cpp's error field holds the error object itself
        message = error.get("message") if isinstance(error, Mapping) else error
        if not isinstance(message, str):
            message = json.dumps(error)[:500]
        code = error.get("code") if isinstance(error, Mapping) else None
    else:
        message = data.strip()[:500]
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 500 and code != 429:
        # The request's fault (llama.cpp's server: "exceeds the available
        # context size", code 400), as a 400 status would say: the server is fine.
        raise BackendError(f"the server refused the request: {message or '(no message)'}", status_code=code)
    if code == 429:  # too many requests: the server's load, as a 429 status is
        busy = f"the server refused the request: {message or '(no message)'}"
        raise BackendUnavailable(busy, status_code=429)
    raise BackendUnavailable(f"the server failed while generating: {message or '(no message)'}")


def _parse_event(data: str) -> Mapping[str, Any]:
    try:
        event = json.loads(data)
    except ValueError:
        raise BackendUnavailable(f"the server sent a malformed event: {data[:200]!r}") from None
    if not isinstance(event, Mapping):
        raise BackendUnavailable(f"the server sent a malformed event: {data[:200]!r}")
    if event.get("error") is not None:
        _raise_server_error(data)  # a 4xx code is the request's fault, as in the other framings
    return event


def _choice_text(choice: Mapping[str, Any], chat: bool) -> tuple[str, str, object]:
    """A streamed choice's text, thinking (``reasoning_content`` of llama-server and DeepSeek,
    ``reasoning`` of vLLM and Ollama) and tool call pieces."""
    if not chat:
        text = choice.get("text")
        return (text if isinstance(text, str) else ""), "", None
    delta = choice.get("delta")
    if not isinstance(delta, Mapping):
        return "", "", None
    content = delta.get("content")
    thinking = delta.get("reasoning_content") or delta.get("reasoning")
    return (
        content if isinstance(content, str) else "",
        thinking if isinstance(thinking, str) else "",
        delta.get("tool_calls"),
    )
