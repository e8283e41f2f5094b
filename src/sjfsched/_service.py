"""What the scheduler and the backends that hold backends share: backend checks, the service-start mark."""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeGuard

import anyio

__all__ = ["check_backend", "close_backend", "is_async", "mark_service_started", "service_started"]

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


def is_async(fn: Callable[..., object]) -> bool:
    """Whether calling ``fn`` gives a coroutine or an async generator (an async callable object too)."""
    method: object = type(fn).__call__
    return any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f) for f in (fn, method))


def check_backend(backend: object) -> None:
    """``TypeError`` unless ``backend`` has the Backend protocol's ``stream`` and ``aclose`` methods.

    A backend class passed for an instance (``SimulatedBackend`` for
    ``SimulatedBackend()``) has them as plain functions, and every request
    would fail: it is refused too.
    """
    if needs_an_instance(backend, "stream", "aclose"):
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


async def close_backend(backend: Any) -> None:
    """Await ``backend.aclose()``; ``TypeError`` naming it where that gives nothing to await."""
    closing = backend.aclose()
    if not inspect.isawaitable(closing):
        raise TypeError(
            f"{type(backend).__name__}.aclose() returned {type(closing).__name__}, "
            f"not an awaitable: it must be an async method"
        )
    await closing


def needs_an_instance(obj: object, *methods: str) -> TypeGuard[type[Any]]:
    """Whether ``obj`` is a class whose ``methods`` need an instance (one is a plain function).

    A class of static or class methods serves as the object itself.
    """
    if not isinstance(obj, type):
        return False
    return any(isinstance(inspect.getattr_static(obj, name, None), types.FunctionType) for name in methods)
