"""Predictors: what a request's answer will cost, before it runs.

- :class:`Predictor` (``predict``), with the optional :class:`SupportsObserve`
  (``observe``) and :class:`SupportsPredictMany` (``predict_many``): the
  protocols; :func:`predict_all` predicts a batch with any predictor.
- :class:`LexicalPredictor`: the learned default (lexical features, ONNX
  model bundled with the package, online calibration).
- :class:`ClairvoyantPredictor`: Clairvoyant's 19 features and 3-class model,
  as a baseline (needs a model file from ``sjfsched train --features clairvoyant``).
- :class:`ConstantPredictor`: one length for all (first-come-first-served).
- :class:`HeuristicPredictor`: prompt length.
- :class:`LengthCalibration`: the online calibration on its own.
"""

from ._base import Predictor as Predictor
from ._base import SupportsObserve as SupportsObserve
from ._base import SupportsPredictMany as SupportsPredictMany
from ._base import predict_all as predict_all
from ._calibration import LengthCalibration as LengthCalibration
from ._clairvoyant import ClairvoyantPredictor as ClairvoyantPredictor
from ._default import default_predictor as default_predictor
from ._default import default_predictor_fallbacks as default_predictor_fallbacks
from ._lexical import LexicalPredictor as LexicalPredictor
from ._simple import ConstantPredictor as ConstantPredictor
from ._simple import HeuristicPredictor as HeuristicPredictor

__all__ = [
    "ClairvoyantPredictor",
    "ConstantPredictor",
    "HeuristicPredictor",
    "LengthCalibration",
    "LexicalPredictor",
    "Predictor",
    "SupportsObserve",
    "SupportsPredictMany",
    "default_predictor",
    "default_predictor_fallbacks",
    "predict_all",
]
