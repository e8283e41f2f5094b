"""The exceptions sjfsched raises.

Every exception the library raises on purpose derives from
:class:`SchedulerError`, so ``except sjfsched.SchedulerError`` catches them
all.  Errors that come from a foreign library (httpx, llama-cpp-python,
onnxruntime) are converted at the boundary and keep the original exception as
``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "PredictorError",
    "QueueFull",
    "SchedulerClosed",
    "SchedulerError",
]


class SchedulerError(Exception):
    """Base class of every exception sjfsched raises on purpose."""


class QueueFull(SchedulerError):
    """The scheduler already holds ``max_queue`` waiting requests.

    Raised at once by ``complete()``, ``stream()`` and ``admit()``; the request
    was not accepted, so nothing else will happen to it.
    """


class SchedulerClosed(SchedulerError):
    """The scheduler is closed, or closed while this request was waiting.

    ``waited``: the request was accepted and waiting when the scheduler
    closed (its statistics count it ``closed``).  ``False`` for the others:
    refused on arrival (counted ``rejected``), or cut short while it ran by
    a ``SyncScheduler`` or ``wrap()`` closing (counted ``cancelled``).
    """

    def __init__(self, message: str, *, waited: bool = False) -> None:
        super().__init__(message)
        self.waited = waited


class BackendError(SchedulerError):
    """The backend failed to serve a request.

    The backend's own exception, if any, is ``__cause__``.  ``status_code`` is
    set when an HTTP server answered with an error status, ``retry_after``
    (seconds) when it also said when to come back (``Retry-After``).
    ``sent`` is ``False`` when the backend refused the request itself, before
    anything reached the server (an option it cannot send): the error says
    nothing of the server, and a :class:`~sjfsched.backends.BackendPool`
    neither takes it for the server's answer nor for its failure.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        sent: bool = True,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after
        self.sent = sent


class BackendUnavailable(BackendError):
    """The backend could not serve anything: unreachable, gone, timed out, 5xx or 429.

    A :class:`BackendError` for faults of the server or the network rather
    than of the request: connection refused or lost, a timeout, a malformed
    stream, a 5xx answer, a 429 (too many requests: a rate limit, a full
    queue).  :class:`~sjfsched.backends.BackendPool` takes a
    backend that raises it out of rotation for a while.
    """


class PredictorError(SchedulerError):
    """A predictor could not be built or could not predict.

    At construction (missing, corrupt or mismatched model file) it is raised to
    the caller.  During scheduling the scheduler never lets a predictor failure
    fail a request: it falls back to a neutral prediction and counts the error
    in :meth:`Scheduler.statistics`.
    """
