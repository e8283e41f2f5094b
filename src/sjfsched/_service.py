"""When a backend actually began serving a request, where it made it wait first."""

from __future__ import annotations

from contextvars import ContextVar

import anyio

__all__ = ["mark_service_started", "service_started"]

#: When a backend that makes requests wait inside it (a pool whose usable
#: slots are taken, or a member out of rotation) began serving the current
#: request.  Such a backend calls :func:`mark_service_started`, in the task
#: that reads its stream, when it hands the request on; the scheduler clears
#: it before the stream's first chunk and reads it after, so the wait inside
#: the backend is not learnt as prompt evaluation (the ``prefill_rate``).
service_started: ContextVar[float | None] = ContextVar("sjfsched_service_started", default=None)


def mark_service_started() -> None:
    """Note that the request being streamed in this task starts being served now."""
    service_started.set(anyio.current_time())
