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
    """``TypeError`` unless ``backend`` has the Backend protocol's ``stream`` and ``aclose`` methods.

    A backend class passed for an instance (``SimulatedBackend`` for
    ``SimulatedBackend()``) has them as plain functions, and every request
    would fail: it is refused too.
    """
    if isinstance(backend, type):
        raise TypeError(
            f"backend must be a backend object, got the class {backend.__name__}: "
            f"pass an instance: {backend.__name__}()"
        )
    for method in ("stream", "aclose"):
        if not callable(getattr(backend, method, None)):
            raise TypeError(
                f"backend must have stream(request) and aclose() methods; "
                f"{type(backend).__name__} has no {method}()"
            )
