"""The metrics against cases computed by hand."""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest

from sjfsched._bench._metrics import gain, summarize
from sjfsched._bench._sim import Outcome


def outcome(max_wait: float | None) -> Outcome:
    # Four requests submitted at 0; short (100, 50 tokens), medium (300), long (900).
    return Outcome(
        output_tokens=np.array([100, 300, 900, 50]),
        prompt_tokens=np.array([0, 0, 0, 0]),
        service=np.array([1.0, 3.0, 6.0, 0.5]),
        submitted=np.zeros(4),
        started=np.array([0.0, 1.0, 4.0, 10.0]),
        first_token=np.array([0.5, 1.5, 4.5, 10.2]),
        finished=np.array([1.0, 4.0, 10.0, 10.5]),
        promoted=np.array([False, False, False, True]),
        run=np.zeros(4, dtype=np.int64),
        measured=np.ones(4, dtype=bool),
        max_wait=(max_wait,),
    )


def test_percentiles_by_length_class() -> None:
    s = summarize(outcome(None))
    short = s.classes["short"]
    assert short.n == 2
    assert short.p50 == pytest.approx((1.0 + 10.5) / 2)  # linear between the two
    assert short.p95 == pytest.approx(1.0 + 0.95 * 9.5)
    assert short.ttft_p50 == pytest.approx((0.5 + 10.2) / 2)
    assert s.classes["medium"].p50 == 4.0
    assert s.classes["long"].n == 1
    assert s.classes["long"].p99 == 10.0
    assert s.classes["all"].n == 4
    assert s.mean_latency == pytest.approx((1 + 4 + 10 + 10.5) / 4)


def test_wait_throughput_and_promotions() -> None:
    s = summarize(outcome(None))
    assert s.longest_wait == 10.0
    assert s.promoted == 1
    assert s.throughput == pytest.approx(4 / 10.5)
    assert s.token_throughput == pytest.approx(1350 / 10.5)
    assert math.isinf(s.wait_bound)
    assert s.within_bound


def test_wait_bound_is_max_wait_plus_the_longest_service() -> None:
    ok = summarize(outcome(5.0))  # bound 5 + 6 = 11 >= 10
    assert ok.wait_bound == 11.0
    assert ok.within_bound
    broken = summarize(outcome(2.0))  # bound 8 < 10
    assert broken.wait_bound == 8.0
    assert broken.bound_violations == 1
    assert not broken.within_bound


def test_warmup_requests_are_left_out_of_percentiles_but_not_of_waits() -> None:
    s = summarize(attrs.evolve(outcome(None), measured=np.array([False, True, True, True])))
    assert s.classes["short"].n == 1
    assert s.classes["short"].p50 == 10.5
    assert s.longest_wait == 10.0


def test_gain() -> None:
    assert gain(10.0, 2.0) == pytest.approx(0.8)
    assert gain(10.0, 12.0) == pytest.approx(-0.2)
    assert math.isnan(gain(0.0, 1.0))
