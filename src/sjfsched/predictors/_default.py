"""Which predictor a Scheduler uses when it is given none."""

from __future__ import annotations

import logging

from .._errors import PredictorError
from ._base import Predictor
from ._simple import HeuristicPredictor

__all__ = ["default_predictor", "default_predictor_fallbacks"]

logger = logging.getLogger("sjfsched")

_fallbacks = 0


def default_predictor() -> Predictor:
    """The predictor a :class:`~sjfsched.Scheduler` uses when given none.

    The bundled learned :class:`~sjfsched.predictors.LexicalPredictor` (each
    call returns a new one, with its own calibration and adaptation; the model itself is
    loaded once and shared).  Should the bundled model not load (a broken
    install, onnxruntime missing), it falls back to the prompt-length
    :class:`~sjfsched.predictors.HeuristicPredictor`, logs a warning on the
    ``sjfsched`` logger saying why, and counts the fallback
    (:func:`default_predictor_fallbacks`).
    """
    global _fallbacks
    try:
        from ._lexical import LexicalPredictor

        return LexicalPredictor()
    except (PredictorError, ImportError) as exc:
        _fallbacks += 1
        logger.warning(
            "the bundled LexicalPredictor could not be loaded (%s); falling back to "
            "HeuristicPredictor (prompt length), which ranks answers far worse",
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,  # some say nothing
        )
        return HeuristicPredictor()


def default_predictor_fallbacks() -> int:
    """How many times :func:`default_predictor` fell back to the heuristic in this process."""
    return _fallbacks
