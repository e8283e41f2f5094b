"""What the scheduler and the backends that hold backends share: the backend check, the service-start mark."""

from __future__ import annotations

from contextvars import ContextVar

import anyio

__all__ = ["check_backend", "mark_service_started", "service_started"]

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


def check_backend(backend: object) -> None:
    """``TypeError`` unless ``backend`` has the Backend protocol's ``stream`` and ``aclose`` methods."""
    for method in ("stream", "aclose"):
        if not callable(getattr(backend, method, None)):
            raise TypeError(
                f"backend must have stream(request) and aclose() methods; "
                f"{type(backend).__name__} has no {method}()"
            )
