"""The proxy's predictor: the chosen one, timed for the latency histogram."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import final

from .._records import Prediction, Request
from ..predictors import ConstantPredictor, HeuristicPredictor, Predictor, default_predictor, predict_all
from ._metrics import Histogram

__all__ = ["TimedPredictor", "make_predictor"]


#: With a state file, the default predictor saves it after every this many completed requests.
SAVE_EVERY = 100


def make_predictor(name: str, state: str | None = None) -> Predictor:
    """``default`` (the library's default), ``heuristic`` (prompt length) or ``fcfs`` (a constant).

    ``state``: for ``default``, a JSON file the :class:`~sjfsched.predictors.LexicalPredictor`
    loads its calibration and learnt correction from (if it exists) and saves
    to every :data:`SAVE_EVERY` completed requests; a file that cannot be read
    raises :class:`~sjfsched.PredictorError` naming it.
    """
    if name == "heuristic":
        return HeuristicPredictor()
    if name == "fcfs":
        # 0, not the default 256: an estimate is capped at the request's own
        # output limit, so with 256 a request limited to fewer tokens went first
        return ConstantPredictor(0.0)
    if name == "default":
        if state is not None:
            from ..predictors import LexicalPredictor

            return LexicalPredictor(calibration_path=Path(state).expanduser(), save_every=SAVE_EVERY)
        return default_predictor()
    raise ValueError(f"predictor must be default, heuristic or fcfs, got {name!r}")


@final
class TimedPredictor:
    """Wraps a predictor; each ``predict`` call's duration goes into a histogram.

    ``observe`` is the wrapped predictor's own (``None`` when it has none, which
    the scheduler reads as "does not learn").
    """

    def __init__(self, inner: Predictor, histogram: Histogram) -> None:
        self.inner = inner
        self._histogram = histogram
        self.observe: Callable[[Request, Prediction, int], object] | None = getattr(inner, "observe", None)

    def predict(self, request: Request, /) -> Prediction:
        t0 = time.perf_counter()
        try:
            return self.inner.predict(request)
        finally:
            self._histogram.observe(time.perf_counter() - t0)

    def predict_many(self, requests: Sequence[Request], /) -> list[Prediction]:
        return predict_all(self.inner, requests)
