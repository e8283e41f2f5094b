"""Two simple predictors: a constant (FCFS order) and prompt length."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import final

import attrs

from .._records import Prediction, Request
from ._base import refuse_one_text, text_of

__all__ = ["ConstantPredictor", "HeuristicPredictor"]


@final
@attrs.frozen
class ConstantPredictor:
    """Predicts the same cost for every request.

    The prediction is ``tokens`` output tokens and no prompt at all, so every
    request of a priority class gets the same estimate and the scheduler
    serves them first-come-first-served: the baseline to compare against, and
    a handy test double.  The scheduler caps an estimate at the request's
    ``max_tokens``, so a request limited to fewer than ``tokens`` is known to
    be shorter and goes first; ``ConstantPredictor(0)`` keeps strict arrival
    order whatever the limits.
    """

    tokens: float = 256.0

    def __attrs_post_init__(self) -> None:
        tokens: object = self.tokens
        if isinstance(tokens, bool) or not isinstance(tokens, numbers.Real):  # True read as 1 token
            shown = f"{type(tokens).__name__} {tokens!r}"
            raise TypeError(f"ConstantPredictor.tokens must be a number, got {shown}")
        if not math.isfinite(tokens) or tokens < 0:
            raise ValueError(f"ConstantPredictor.tokens must be finite and >= 0, got {tokens!r}")

    def predict(self, request: Request, /) -> Prediction:
        return Prediction(self.tokens, prompt_tokens=0.0)

    def predict_many(self, requests: Sequence[Request], /) -> list[Prediction]:
        refuse_one_text("predict_many()", requests, "Requests")
        prediction = Prediction(self.tokens, prompt_tokens=0.0)
        return [prediction] * len(requests)


def _finite(name: str, value: object, wanted: str, ok: Callable[[float], bool]) -> None:
    """ValueError naming ``name`` unless ``value`` is a finite real number (not a bool) that is ``ok``."""
    number = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if not (number and ok(float(value))):  # type: ignore[arg-type]  # a numbers.Real
        raise ValueError(f"HeuristicPredictor.{name} must be a finite number {wanted}, got {value!r}")


@final
@attrs.frozen
class HeuristicPredictor:
    """Predicts from the prompt's length: longer prompts, longer answers.

    ``tokens = base + per_prompt_token * prompt_tokens`` with prompt tokens
    taken as characters / 4, capped at ``cap``.  Crude (Clairvoyant measured
    prompt length alone ranking 58-68% of short/long pairs right on natural
    prompts), but it needs nothing and costs a microsecond.
    """

    base: float = 150.0
    per_prompt_token: float = 0.5
    cap: float = 4096.0

    def __attrs_post_init__(self) -> None:
        _finite("base", self.base, ">= 0", lambda x: x >= 0)
        _finite("per_prompt_token", self.per_prompt_token, ">= 0", lambda x: x >= 0)
        _finite("cap", self.cap, "> 0", lambda x: x > 0)

    def predict(self, request: Request, /) -> Prediction:
        prompt_tokens = len(text_of("predict()", request)) / 4.0
        return Prediction(min(self.cap, self.base + self.per_prompt_token * prompt_tokens))

    def predict_many(self, requests: Sequence[Request], /) -> list[Prediction]:
        refuse_one_text("predict_many()", requests, "Requests")
        return [self.predict(r) for r in requests]
