"""Predictors: what a request's answer will cost, before it runs.

- :class:`Predictor` / :class:`SupportsObserve`: the protocols.
- :class:`ConstantPredictor`: one length for all (first-come-first-served).
- :class:`HeuristicPredictor`: prompt length.
"""

from ._base import Predictor as Predictor
from ._base import SupportsObserve as SupportsObserve
from ._default import default_predictor as default_predictor
from ._simple import ConstantPredictor as ConstantPredictor
from ._simple import HeuristicPredictor as HeuristicPredictor

__all__ = [
    "ConstantPredictor",
    "HeuristicPredictor",
    "Predictor",
    "SupportsObserve",
    "default_predictor",
]
