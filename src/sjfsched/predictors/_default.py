"""Which predictor a Scheduler uses when it is given none."""

from __future__ import annotations

from ._base import Predictor
from ._simple import HeuristicPredictor

__all__ = ["default_predictor"]


def default_predictor() -> Predictor:
    """The predictor a :class:`~sjfsched.Scheduler` uses when given none.

    The prompt-length :class:`HeuristicPredictor` for now.
    """
    return HeuristicPredictor()
