"""The backend protocol: whatever actually generates the answer."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, Protocol, cast, runtime_checkable

import attrs

from .._records import Chunk, Request

__all__ = ["Backend", "Resumable", "continuation", "resume_by_continuation"]


@runtime_checkable
class Backend(Protocol):
    """Generates the answer to one request, as a stream of chunks.

    ``stream(request)`` returns an async iterator (usually an async generator)
    of :class:`~sjfsched.Chunk`.  The scheduler calls it only when the request
    holds a slot, reads it to the end or closes it early (``aclose()``) when
    the caller goes away, so an implementation must stop generating and free
    its resources when closed.  Report the prompt's token count in
    ``Chunk.prompt_tokens`` when you know it; make the chunks' ``tokens`` add
    up to the answer's length.  Raise :class:`~sjfsched.BackendError` with a
    clear message (any other exception is wrapped in one).

    ``aclose()`` releases the backend itself; the scheduler calls it when it
    closes.

    A backend may have an integer ``slots`` attribute: how many requests it
    serves at once.  A :class:`~sjfsched.Scheduler` given no ``concurrency``
    uses it (else 1).
    """

    def stream(self, request: Request, /) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Resumable(Protocol):
    """A backend that can pause an answer and go on with it later (``Scheduler(preempt=True)``).

    When a request that ranks before a running one arrives, the scheduler
    closes the running request's stream at a chunk's end, serves the other,
    and later calls ``resume(request, answer, tokens)``: a stream of the rest
    of the answer to ``request``, whose first ``tokens`` tokens, ``answer``,
    were generated already (a server reads the prompt and ``answer`` again,
    then goes on).  Its chunks' ``tokens`` count only the new tokens.

    ``resumable(request)`` says whether this backend can do that for a
    request (a chat request cannot be continued through every API); it is
    asked once, as the request starts.  A backend without these methods is
    never paused.
    """

    def resumable(self, request: Request, /) -> bool: ...

    def resume(self, request: Request, answer: str, tokens: int, /) -> AsyncIterator[Chunk]: ...


def goes_on_as_it_was(
    options: Mapping[str, Any], form: Sequence[str], penalties: Sequence[tuple[str, float]]
) -> bool:
    """Whether a new call over the prompt and the answer so far can go on with ``options``.

    Not with a constraint on the answer's form (any of ``form`` set: it would
    start over, and the answer leave it), a ``suffix`` (the text so far would
    come before it), or a repetition penalty other than neutral (``penalties``:
    names and neutral values; the new call would forget the earlier tokens).
    """
    return not (
        any(options.get(name) is not None for name in form)
        or options.get("suffix")
        or any(options.get(name, neutral) != neutral for name, neutral in penalties)
    )


def continuation(request: Request, answer: str, tokens: int) -> Request | None:
    """The request that goes on with ``answer``: a prompt request whose prompt is the
    request's followed by the answer so far, with ``max_tokens`` less the ``tokens``
    written (and a ``min_tokens`` option less them too, as vLLM and llama_cpp.server
    read it); ``None`` where ``max_tokens`` is reached (nothing is left to write).

    A model continuing its own text this way reads the same tokens it wrote, or the
    same text tokenized again (which a sampler may continue differently): as close as
    a completion API comes to resuming.  Chat requests have no such form.
    """
    if request.messages is not None or request.prompt is None:
        raise ValueError("only a prompt request can be continued")
    fields: dict[str, Any] = {"prompt": request.prompt + answer}
    if request.max_tokens is not None:
        left = request.max_tokens - tokens
        if left <= 0:
            return None
        fields["max_tokens"] = left
    least = request.options.get("min_tokens")
    if isinstance(least, int) and not isinstance(least, bool) and least > 0:
        fields["options"] = {**request.options, "min_tokens": max(0, least - tokens)}
    return request._replace(fields)


async def resume_by_continuation(
    stream: Callable[[Request], AsyncIterator[Chunk]],
    request: Request,
    answer: str,
    tokens: int,
    *,
    written: int | None = None,
    exact: bool = False,
) -> AsyncGenerator[Chunk, None]:
    """:meth:`Resumable.resume` for a completion API: ``stream`` the :func:`continuation`.

    ``written``: the tokens the answer so far really holds, where the backend
    can tell and they are more than the ``tokens`` its chunks counted (a
    stream that counts a token one chunk late); the first chunk counts the
    difference.  With ``exact``, ``written`` counts even where it is fewer:
    tokens counted whose text had not gone out (held back, as what may begin
    a stop string) are written again, and the difference comes off the next
    chunks' counts.
    """
    if written is None:
        written = tokens
    elif not exact:
        written = max(written, tokens)
    extra = written - tokens
    rest = continuation(request, answer, written)
    if rest is None:
        yield Chunk("", tokens=max(extra, 0), finish_reason="length")
        return
    async with aclosing(cast("AsyncGenerator[Chunk, None]", stream(rest))) as chunks:
        async for chunk in chunks:
            if extra > 0:
                chunk, extra = attrs.evolve(chunk, tokens=chunk.tokens + extra), 0
            elif extra < 0 and chunk.tokens:  # counted already
                taken = min(-extra, chunk.tokens)
                chunk, extra = attrs.evolve(chunk, tokens=chunk.tokens - taken), extra + taken
            yield chunk


class ToolCallPieces:
    """Tool calls streamed in pieces the OpenAI way, put together.

    Each piece (an item of a delta's ``tool_calls``) names its call by
    ``index``; a call's first piece brings its ``id``, ``type`` and
    function ``name`` (later ones may repeat them), and the pieces'
    ``function.arguments`` strings join into the arguments' JSON text.  A
    server that sends each call whole, in one piece, gives the same calls.
    A piece without an index goes on with the latest call, unless it brings
    an ``id`` of its own (a new call); arguments sent as an object, not as
    JSON text, are that text.
    """

    __slots__ = ("_calls", "_latest")

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}
        self._latest: int | None = None

    def add(self, pieces: object) -> bool:
        """Take a delta's ``tool_calls``; whether they wrote anything (a new call, argument text)."""
        if not isinstance(pieces, list):
            return False
        wrote = False
        for piece in pieces:
            if not isinstance(piece, Mapping):
                continue
            index = _index(piece.get("index"))
            new_id = piece.get("id")
            if index is None:
                latest = self._calls.get(self._latest) if self._latest is not None else None
                if latest is None or (
                    isinstance(new_id, str) and new_id and latest.get("id") not in (None, new_id)
                ):
                    index = max(self._calls, default=-1) + 1  # a new call
                else:
                    index = self._latest
            assert index is not None
            self._latest = index
            if index not in self._calls:
                self._calls[index] = {"function": {"name": "", "arguments": ""}}
                wrote = True
            call = self._calls[index]
            for key in ("id", "type"):
                value = piece.get(key)
                if isinstance(value, str) and value and key not in call:
                    call[key] = value
            function = piece.get("function")
            if isinstance(function, Mapping):
                whole = call["function"]
                name = function.get("name")
                if isinstance(name, str) and name and not whole["name"]:  # (llama-cpp-python repeats it)
                    whole["name"] = name
                    wrote = True
                arguments = function.get("arguments")
                if isinstance(arguments, str) and arguments:
                    whole["arguments"] += arguments
                    wrote = True
                elif isinstance(arguments, Mapping):  # sent whole, as an object: its JSON text
                    whole["arguments"] = json.dumps(arguments)
                    wrote = True
        return wrote

    def __bool__(self) -> bool:
        return bool(self._calls)

    def calls(self) -> tuple[dict[str, Any], ...]:
        """The calls put together, in the order of their index."""
        return tuple({"type": "function", **self._calls[i]} for i in sorted(self._calls))


def _index(value: object) -> int | None:
    """A tool call piece's ``index`` as an int (a numeric string too), or None for none usable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = value.strip() if isinstance(value, str) else ""
    if text.isascii() and text.isdigit() and len(text) <= 9:  # not "²", nor thousands of digits
        return int(text)
    return None
