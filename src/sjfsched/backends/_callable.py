"""A backend made from any function: for tests, demos and quick glue."""

from __future__ import annotations

import inspect
import math
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, final

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._records import Chunk, Request
from .._service import is_async

__all__ = ["CallableBackend"]

#: What the wrapped function may return (or an awaitable of it).
CallableResult = str | Chunk | Iterable[str | Chunk] | AsyncIterable[str | Chunk]

_DONE = object()


@final
class CallableBackend:
    """Makes a :class:`Backend` of a function ``fn(request)``.

    The function may be sync or async (an object with an ``async def __call__`` is
    async too) and may return:

    - a ``str``: the whole answer, counted as ``ceil(len / 4)`` tokens
      (at least 1) when not empty;
    - a :class:`~sjfsched.Chunk`, or an iterable or async iterable of chunks
      and strings (each string piece counts as one token), streamed as they
      come.

    Sync functions (and the iteration of their sync iterators) run in a
    worker thread when ``in_thread`` is true (the default), so a blocking call
    does not stall the event loop; pass ``in_thread=False`` for functions that
    return at once.  ``slots`` is how many requests the function may serve
    at once (default 1).

    A thread cannot be stopped, so cancelling a request (a timeout, Ctrl-C)
    does not interrupt a sync function that is running: the caller waits
    for the function to return, or, for an iterator, for the ``next()``
    under way to return, and the request keeps its slot until then, so no
    other call overlaps it (asyncio's own timeouts too: ``asyncio.wait_for``,
    ``asyncio.timeout``).  Then the cancellation takes effect: an iterator is
    closed, and the request counts as cancelled.  Async functions and
    iterators stop at once.

    Like httpx's ``MockTransport``, this is the test double to build your
    own tests with::

        backend = CallableBackend(lambda request: request.text.upper())

    In virtual time (:func:`~sjfsched.run_virtual`, trio's ``MockClock``)
    pass ``in_thread=False`` for a sync function, or use an async one: a
    worker thread runs in real time while the virtual clock jumps ahead, so
    requests would seem to take as long as the next timer is away.
    """

    def __init__(
        self,
        fn: Callable[[Request], CallableResult | Awaitable[CallableResult]],
        *,
        slots: int = 1,
        in_thread: bool = True,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"CallableBackend needs a callable, got {type(fn).__name__}")
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be an int >= 1, got {slots!r}")
        if not isinstance(in_thread, bool):
            raise TypeError(f"in_thread must be True or False, got {in_thread!r}")
        self._fn = fn
        self.slots = slots
        self._is_async = is_async(fn)  # an object with an async __call__ too
        self._in_thread = in_thread and not self._is_async

    def __repr__(self) -> str:
        return f"CallableBackend({getattr(self._fn, '__name__', self._fn)!r})"

    async def stream(self, request: Request, /) -> AsyncIterator[Chunk]:
        if self._in_thread:
            result: Any = await _in_thread(self._fn, request)
        else:
            result = self._fn(request)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, str):
            if result:
                yield Chunk(result, tokens=max(1, math.ceil(len(result) / 4)))
            return
        if isinstance(result, Chunk):
            yield result
            return
        if isinstance(result, (Mapping, bytes, bytearray, memoryview)):
            # Iterable, but not pieces of text: a dict (say, llama-cpp-python's
            # answer) would stream its keys, bytes their integers.
            raise TypeError(
                f"the function returned {type(result).__name__}; expected str, Chunk or an iterable of them"
            )
        if isinstance(result, AsyncIterable):
            iterator = aiter(result)
            try:
                async for piece in iterator:
                    yield _as_chunk(piece)
            finally:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
            return
        if isinstance(result, Iterable):
            sync_iterator = iter(result)
            try:
                if self._in_thread:
                    while (piece := await _in_thread(_next, sync_iterator)) is not _DONE:
                        yield _as_chunk(piece)
                else:
                    for piece in sync_iterator:
                        yield _as_chunk(piece)
            finally:
                close = getattr(sync_iterator, "close", None)
                if close is not None:
                    close()
            return
        raise TypeError(
            f"the function returned {type(result).__name__}; expected str, Chunk or an iterable of them"
        )

    async def aclose(self) -> None:
        """Nothing to release."""


def _next(iterator: Iterator[Any]) -> Any:
    return next(iterator, _DONE)


def _as_chunk(piece: object) -> Chunk:
    if isinstance(piece, Chunk):
        return piece
    if isinstance(piece, str):
        return Chunk(piece)
    raise TypeError(f"the function yielded {type(piece).__name__}; expected str or Chunk")


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a worker thread, waited for even if the caller is cancelled.

    A running thread cannot be stopped: a cancellation takes effect once it
    returns, so the request keeps its slot meanwhile and no second call
    overlaps it.  ``anyio.to_thread.run_sync`` shields its wait from anyio's
    cancellation but not from asyncio's own (``asyncio.wait_for``,
    ``asyncio.timeout``, ``Task.cancel``); a task group waits for its task
    either way.
    """
    outcome: list[Any] = []
    failure: list[BaseException] = []

    async def call() -> None:
        try:
            outcome.append(await anyio.to_thread.run_sync(fn, *args))
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # raised here, not in an exception group
            failure.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
    # A cancellation that came while the thread ran takes effect now, on every event loop
    # (trio's task group may exit without a checkpoint once its task is done).
    await anyio.lowlevel.checkpoint()
    if failure:
        raise failure[0]
    return outcome[0]
