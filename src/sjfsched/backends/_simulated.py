"""A backend that costs time but computes nothing: for demos and benchmarks."""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from contextlib import aclosing
from typing import Any, cast, final

import anyio

from .._errors import BackendError
from .._records import Chunk, Request

__all__ = ["SimulatedBackend"]


def _metadata_tokens(request: Request, key: str) -> int | None:
    """``request.metadata[key]`` as a number of tokens (a negative one is 0), or None if absent."""
    value = request.metadata.get(key)
    return None if value is None else _tokens(value, f"request.metadata[{key!r}] must be")


def _tokens(value: object, what: str) -> int:
    """``value`` as a whole number of tokens (a negative one is 0); ``what``: how the error begins."""
    try:
        number = math.nan if isinstance(value, bool) else float(cast(Any, value))
    except (TypeError, ValueError, OverflowError):  # not a number; an int past float's range
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{what} a finite number of tokens, got {value!r}")
    return max(0, round(number))


def _metadata_output_tokens(request: Request) -> int:
    tokens = _metadata_tokens(request, "output_tokens")
    if tokens is None:
        return request.max_tokens if request.max_tokens is not None else 256
    return tokens


def _metadata_prompt_tokens(request: Request) -> int:
    tokens = _metadata_tokens(request, "prompt_tokens")
    if tokens is None:
        return math.ceil(request.input_chars / 4)
    return tokens


@final
class SimulatedBackend:
    """A serial model server simulated with sleeps.

    Each request takes ``prompt_tokens / prefill_rate`` seconds before its
    first token and ``output_tokens / decode_rate`` seconds in all to decode;
    the answer's text is empty, only its token counts are real.  The lengths
    come from ``output_tokens(request)`` and ``prompt_tokens(request)``; by
    default from ``request.metadata["output_tokens"]`` (else ``max_tokens``,
    else 256) and ``request.metadata["prompt_tokens"]`` (else characters / 4),
    output capped at ``max_tokens``; a value there that is no finite number
    (``"many"``, ``nan``, a bool) fails the request with
    :class:`~sjfsched.BackendError` naming the key.

    Run it under a virtual clock (trio's ``MockClock`` or
    :func:`sjfsched.run_virtual`) to replay hours of traffic in a second.
    ``slots`` requests are served at once, each at the full rate.

    The answer comes as a chunk with the first token, then (``chunk_tokens``
    ``None``, the default) one chunk with the rest, or chunks of
    ``chunk_tokens`` tokens each (and one at the first token after each time
    given to :meth:`chunk_after`).  It is :class:`~sjfsched.backends.Resumable`:
    a paused answer goes on after reading its prompt and the tokens so far
    again (``(prompt_tokens + tokens) / prefill_rate`` seconds), so a
    scheduler can pause it at a chunk's end (give it ``chunk_tokens`` or
    :meth:`chunk_after` for that to happen midway).
    """

    def __init__(
        self,
        *,
        prefill_rate: float = 2000.0,
        decode_rate: float = 30.0,
        slots: int = 1,
        chunk_tokens: int | None = None,
        output_tokens: Callable[[Request], int] = _metadata_output_tokens,
        prompt_tokens: Callable[[Request], int] = _metadata_prompt_tokens,
    ) -> None:
        rates: tuple[tuple[str, object], ...] = (("prefill_rate", prefill_rate), ("decode_rate", decode_rate))
        for name, rate in rates:
            if (
                isinstance(rate, bool)
                or not isinstance(rate, numbers.Real)
                or not (math.isfinite(rate) and float(rate) > 0)
            ):
                raise ValueError(f"{name} must be a positive number of tokens per second, got {rate!r}")
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be an int >= 1, got {slots!r}")
        if chunk_tokens is not None and (
            isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1
        ):
            raise ValueError(f"chunk_tokens must be an int >= 1 or None, got {chunk_tokens!r}")
        for name, fn in (("output_tokens", output_tokens), ("prompt_tokens", prompt_tokens)):
            if not callable(fn):
                raise TypeError(f"{name} must be a function of the request, got {fn!r}")
        self.prefill_rate = float(prefill_rate)
        self.decode_rate = float(decode_rate)
        self.slots = slots
        self.chunk_tokens = chunk_tokens
        self._arrivals: list[float] = []
        self._output_tokens = output_tokens
        self._prompt_tokens = prompt_tokens

    def service_time(self, request: Request) -> float:
        """Seconds this backend takes to serve ``request``."""
        n, p = self._lengths(request)
        return p / self.prefill_rate + n / self.decode_rate

    def _lengths(self, request: Request) -> tuple[int, int]:
        n = _tokens(self._output_tokens(request), "output_tokens(request) must return")
        if request.max_tokens is not None:
            n = min(n, request.max_tokens)
        return n, _tokens(self._prompt_tokens(request), "prompt_tokens(request) must return")

    def _checked_lengths(self, request: Request) -> tuple[int, int]:
        try:
            return self._lengths(request)
        except ValueError as exc:  # a bad metadata["output_tokens"] or ["prompt_tokens"]
            raise BackendError(f"SimulatedBackend: {exc}") from exc

    async def stream(self, request: Request, /) -> AsyncIterator[Chunk]:
        n, p = self._checked_lengths(request)
        async with aclosing(self._answer(n, p, p, self._reason(request, n))) as chunks:
            async for chunk in chunks:
                yield chunk

    def resumable(self, request: Request, /) -> bool:
        """Every request can be paused and resumed."""
        return True

    async def resume(self, request: Request, answer: str, tokens: int, /) -> AsyncIterator[Chunk]:
        """The rest of the answer, after reading the prompt and the ``tokens`` so far again."""
        n, p = self._checked_lengths(request)
        done = min(max(int(tokens), 0), n)
        async with aclosing(self._answer(n - done, p + done, None, self._reason(request, n))) as chunks:
            async for chunk in chunks:
                yield chunk

    @staticmethod
    def _reason(request: Request, n: int) -> str:
        return "length" if request.max_tokens is not None and n >= request.max_tokens else "stop"

    async def _answer(self, n: int, read: int, p: int | None, reason: str) -> AsyncGenerator[Chunk, None]:
        """``n`` tokens after reading ``read`` tokens; ``p``: the prompt tokens the first chunk reports."""
        if n == 0:
            await anyio.sleep(read / self.prefill_rate)
            yield Chunk("", tokens=0, prompt_tokens=p, finish_reason=reason)
            return
        await anyio.sleep(read / self.prefill_rate + 1 / self.decode_rate)
        if n == 1:
            yield Chunk("", tokens=1, prompt_tokens=p, finish_reason=reason)
            return
        yield Chunk("", tokens=1, prompt_tokens=p)
        left = n - 1
        while left > 0:
            step = self._step(left)
            await anyio.sleep(step / self.decode_rate)
            left -= step
            yield Chunk("", tokens=step, finish_reason=reason if left == 0 else None)

    def chunk_after(self, times: Iterable[float], /) -> None:
        """Stream a chunk at an answer's first token after each of ``times`` (clock times,
        replacing those given before), besides the ``chunk_tokens`` chunks.

        A scheduler that pauses answers (``Scheduler(preempt=True)``) decides
        as it reads a chunk: given the times requests arrive, it sees each
        arrival at the next token, as with a server streaming every token,
        for one chunk an arrival.  The benchmarks run this way.
        """
        arrivals = []
        for t in cast("Iterable[object]", times):  # checked: a caller's list may hold anything
            if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t):
                raise ValueError(f"chunk_after() times must be finite numbers, got {t!r}")
            arrivals.append(float(t))
        self._arrivals = sorted(arrivals)

    def _step(self, left: int) -> int:
        """Tokens in the next chunk, ``left`` tokens from the answer's end (1 to ``left``)."""
        step = left if self.chunk_tokens is None else min(self.chunk_tokens, left)
        if self._arrivals:
            now = anyio.current_time()
            i = bisect.bisect_left(self._arrivals, now)
            if i < len(self._arrivals):  # up to the first token that ends after that arrival
                arrival = self._arrivals[i]
                gap = (arrival - now) * self.decode_rate
                if gap < step:  # (a time far off would overflow the floor)
                    k = math.floor(gap) + 1
                    if now + k / self.decode_rate <= arrival:  # rounding: strictly after, never at it
                        k += 1
                    step = min(step, k)
        return step

    async def aclose(self) -> None:
        """Nothing to release."""
