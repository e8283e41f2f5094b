"""Found by a mutation audit.

Clairvoyant's policy orders by priority first, then P(Long) or its three length classes."""

from __future__ import annotations

import pytest

from sjfsched import Prediction, Request
from sjfsched._bench._policies import ClairvoyantScheduler, policy_named
from sjfsched._scheduler import Job
from sjfsched.predictors import ConstantPredictor


def _job(tokens: float, p_long: float | None = None, priority: int = 0) -> Job:
    return Job(Request("x", priority=priority), Prediction(tokens, p_long=p_long), 1.0, 0.0)


def test_clairvoyant_key_reads_tokens_as_three_classes_and_priority_first() -> None:
    scheduler = ClairvoyantScheduler(predictor=ConstantPredictor(), short_latency=1.0)
    key = scheduler.sort_key
    assert [key(_job(t))[-1] for t in (199.0, 200.0, 799.0, 800.0)] == [0.0, 0.5, 0.5, 1.0]
    assert key(_job(5.0, p_long=0.9, priority=-1)) < key(_job(5.0, p_long=0.1, priority=0))


def test_clairvoyant_takes_no_options() -> None:
    with pytest.raises(ValueError, match="takes no @options"):
        policy_named("clairvoyant@aging=0.1")
