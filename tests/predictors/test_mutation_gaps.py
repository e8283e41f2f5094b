"""Edges a mutation audit found no test for: each test fails when its behaviour is broken."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sjfsched import Completion, Prediction, Request, RequestLog
from sjfsched.predictors._base import LONG_TOKENS, SHORT_TOKENS
from sjfsched.predictors._evaluate import kendall_tau, ranking_accuracy
from sjfsched.predictors._features import SIGNALS, _prompt_parts


def _signal_names(text: str) -> list[str]:
    return [SIGNALS[k] for k in _prompt_parts(text)[2]]


def test_every_code_mark_counts_and_the_code_octave_tops_out_at_ten() -> None:
    assert _signal_names("a;b;c;d") == ["newlines0", "code2"]  # three semicolons: 2 bits
    assert _signal_names("(" * 300) == ["newlines0", "code9"]  # 300 marks: 9 bits
    # 700 marks (within the 768 characters read): 10 bits, the top octave
    assert _signal_names("(" * 700) == ["newlines0", "code10"]


def test_ranking_accuracy_counts_ties_half_and_long_from_its_threshold() -> None:
    short, long_ = SHORT_TOKENS - 1, LONG_TOKENS
    # one short, one long (exactly at the threshold), scored alike: half a pair right
    assert ranking_accuracy([1.0, 1.0], [short, long_]) == 0.5
    assert ranking_accuracy([0.0, 1.0], [short, long_]) == 1.0
    assert ranking_accuracy([1.0, 0.0], [short, long_]) == 0.0
    # two shorts, one long: one tie, one right -> 0.75
    assert ranking_accuracy([1.0, 0.0, 1.0], [short, short, long_ + 5]) == pytest.approx(0.75)


def test_kendall_tau_of_two_points_is_defined() -> None:
    assert kendall_tau([0.0, 1.0], [1, 2]) == pytest.approx(1.0)  #
    assert kendall_tau([1.0, 0.0], [1, 2]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1.0], [1]))


def test_the_prediction_is_logged_to_a_tenth_of_a_token(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    completion = Completion(
        request=Request("Write 500 words about cats"),
        text="y",
        output_tokens=5,
        prompt_tokens=3,
        prediction=Prediction(380.46),
        estimate=1.0,
        submitted=0.0,
        started=0.0,
        first_token=None,
        finished=1.0,
    )
    with RequestLog(path) as log:
        log(completion)
    (line,) = [json.loads(x) for x in path.read_text().splitlines()]
    assert line["predicted_tokens"] == 380.5
