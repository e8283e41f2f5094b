"""The predictor protocol: how the scheduler learns what a request will cost."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .._records import Prediction, Request

__all__ = [
    "LONG_TOKENS",
    "SHORT_TOKENS",
    "Predictor",
    "SupportsObserve",
    "SupportsPredictMany",
    "predict_all",
    "text_of",
    "texts_of",
]

#: Clairvoyant's answer-length classes, used by ranking accuracy, the
#: benchmarks and ``p_long``: short below 200 output tokens, long from 800 on.
SHORT_TOKENS = 200
LONG_TOKENS = 800


def text_of(method: str, request: Request) -> str:
    """``request.text``; a :class:`TypeError` naming ``method`` if it is no request."""
    try:
        return request.text
    except AttributeError:
        if isinstance(request, Request):
            raise
        raise _not_a_request(method, request) from None


def texts_of(method: str, requests: Sequence[Request]) -> list[str]:
    """The ``text`` of each request; a :class:`TypeError` naming ``method`` for anything else."""
    try:
        return [r.text for r in requests]
    except AttributeError:
        for r in requests:
            if not isinstance(r, Request):
                raise _not_a_request(method, r) from None
        raise


def refuse_one_text(method: str, given: object, wanted: str) -> None:
    """A :class:`TypeError` for one ``str`` (or ``bytes``) given where a sequence is taken: it
    would be read a character at a time."""
    if isinstance(given, (str, bytes)):
        raise TypeError(
            f"{method} takes a sequence of {wanted}, got one {type(given).__name__}: {given!r:.60}"
        )


def _not_a_request(method: str, value: object) -> TypeError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return TypeError(
        f"{method} takes Request objects, got {type(value).__name__} {shown}: make a prompt "
        f"one with Request(prompt)"
    )


@runtime_checkable
class Predictor(Protocol):
    """Predicts the output length of requests: one verb, ``predict``.

    ``predict`` gets one frozen :class:`~sjfsched.Request` and returns one
    frozen :class:`~sjfsched.Prediction`.  It runs on the event loop, so keep
    it fast (microseconds) and non-blocking.

    A predictor may also implement :class:`SupportsObserve` to learn from
    completed requests, and :class:`SupportsPredictMany` to predict a batch
    at once; :func:`predict_all` uses it where there is one.
    """

    def predict(self, request: Request, /) -> Prediction: ...


@runtime_checkable
class SupportsPredictMany(Protocol):
    """The optional batch half of a predictor: ``predict_many`` does what ``predict`` does for
    each of a batch of requests, in order (implement it where batching is cheaper)."""

    def predict_many(self, requests: Sequence[Request], /) -> Sequence[Prediction]: ...


def predict_all(predictor: Predictor, requests: Sequence[Request]) -> list[Prediction]:
    """The predictions of ``requests``: with ``predictor.predict_many`` where it has one, else
    one by one."""
    if isinstance(predictor, SupportsPredictMany):
        return list(predictor.predict_many(requests))
    return [predictor.predict(r) for r in requests]


@runtime_checkable
class SupportsObserve(Protocol):
    """The optional half of a predictor: learn from a finished request.

    The scheduler calls ``observe`` after every request that completed with a
    known output length (0 included: a stream read to its end, an
    :meth:`~sjfsched.Scheduler.admit` ticket once reported), with the
    prediction it made before running it; a request whose ``predict()``
    failed (ranked by a neutral stand-in) is not observed.
    Exceptions raised here are counted as predictor errors and never fail the
    request.
    """

    def observe(self, request: Request, prediction: Prediction, output_tokens: int, /) -> None: ...
