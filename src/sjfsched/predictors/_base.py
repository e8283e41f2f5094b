"""The predictor protocol: how the scheduler learns what a request will cost."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .._records import Prediction, Request

__all__ = ["LONG_TOKENS", "SHORT_TOKENS", "Predictor", "SupportsObserve", "text_of", "texts_of"]

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


def _not_a_request(method: str, value: object) -> TypeError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return TypeError(
        f"{method} takes Request objects, got {type(value).__name__} {shown}: make a prompt "
        f"one with Request(prompt)"
    )


@runtime_checkable
class Predictor(Protocol):
    """Predicts the output length of requests.

    ``predict`` gets one frozen :class:`~sjfsched.Request` and returns one
    frozen :class:`~sjfsched.Prediction`; ``predict_many`` does the same for a
    batch (implement it when batching is cheaper, else loop).  Both run on the
    event loop, so keep them fast (microseconds) and non-blocking.

    A predictor may also implement :class:`SupportsObserve` to learn from
    completed requests.
    """

    def predict(self, request: Request, /) -> Prediction: ...

    def predict_many(self, requests: Sequence[Request], /) -> list[Prediction]: ...


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
