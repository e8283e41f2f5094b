"""The backend protocol: whatever actually generates the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from .._records import Chunk, Request

__all__ = ["Backend"]


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
