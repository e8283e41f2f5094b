"""Behaviours a mutation audit found no test for: each test fails when its behaviour is broken."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sjfsched import Completion, Scheduler, run_virtual
from sjfsched._bench._metrics import summarize
from sjfsched._bench._profiles import Profile
from sjfsched._bench._sim import Outcome, outcome_of
from sjfsched._bench._traces import TraceItem, load_trace
from sjfsched._rates import RateEstimator
from sjfsched.backends import SimulatedBackend


def _outcome(tokens: list[int], measured: list[bool]) -> Outcome:
    n = len(tokens)
    return Outcome(
        output_tokens=np.array(tokens),
        prompt_tokens=np.zeros(n, dtype=np.int64),
        service=np.ones(n),
        submitted=np.zeros(n),
        started=np.arange(n, dtype=float),
        first_token=np.arange(n, dtype=float) + 0.5,
        finished=np.arange(n, dtype=float) + 1.0,
        promoted=np.zeros(n, dtype=bool),
        run=np.zeros(n, dtype=np.int64),
        measured=np.array(measured, dtype=bool),
        max_wait=(None,),
    )


def test_an_answer_of_exactly_200_tokens_is_medium_not_short() -> None:
    s = summarize(_outcome([199, 200, 799, 800], [True] * 4))
    assert s.classes["short"].n == 1
    assert s.classes["medium"].n == 2
    assert s.classes["long"].n == 1


def test_throughput_counts_warmup_requests_over_the_whole_busy_span() -> None:
    # The span runs from the first submission to the last finish, warm-up included,
    # so the requests counted are all of them too.
    s = summarize(_outcome([10, 10, 10, 10], [False, False, True, True]))
    assert s.throughput == pytest.approx(4 / 4.0)
    assert s.token_throughput == pytest.approx(40 / 4.0)


def test_a_request_with_no_prompt_tokens_teaches_no_prefill_rate() -> None:
    rates = RateEstimator(prefill_rate=400.0, decode_rate=30.0)
    rates.observe(0, 11, started=0.0, first_token=2.0, finished=3.0)
    assert rates.prefill_rate == 400.0
    assert rates.decode_rate == pytest.approx((0.9 * 30.0 + 10) / (0.9 * 1.0 + 1.0))


PROFILE = Profile("p", prefill_rate=2000.0, decode_rate=30.0)


def _completions(lengths: list[int]) -> list[Completion]:
    async def main() -> list[Completion]:
        backend = SimulatedBackend(prefill_rate=PROFILE.prefill_rate, decode_rate=PROFILE.decode_rate)
        async with Scheduler(backend) as s:
            return [await s.complete(TraceItem("a prompt", n, 8).request()) for n in lengths]

    return run_virtual(main)


def test_without_warmup_every_request_is_measured() -> None:
    out = outcome_of(_completions([3, 4, 5]), PROFILE, run=0, warmup=0.0)
    assert out.measured.tolist() == [True, True, True]


def test_an_answer_without_tokens_has_its_first_token_at_its_end() -> None:
    completions = _completions([0])
    assert completions[0].first_token is None
    out = outcome_of(completions, PROFILE, run=0)
    assert out.first_token[0] == completions[0].finished
    assert out.ttft[0] == pytest.approx(completions[0].finished - completions[0].submitted)
    assert out.ttft[0] > 0


def test_service_time_counts_the_prompt_and_the_answer() -> None:
    profile = Profile("slow-prefill", prefill_rate=10.0, decode_rate=30.0)

    async def main() -> list[Completion]:
        backend = SimulatedBackend(prefill_rate=profile.prefill_rate, decode_rate=profile.decode_rate)
        async with Scheduler(backend) as s:
            return [await s.complete(TraceItem("a prompt", 30, 20).request())]

    [done] = run_virtual(main)
    out = outcome_of([done], profile, run=0)
    assert out.service[0] == pytest.approx(20 / 10.0 + 30 / 30.0)
    assert out.service[0] == pytest.approx(done.finished - done.started)


def test_prompt_tokens_without_input_tokens_are_characters_over_four_rounded_up(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    records = [
        {"prompt": "hello", "output_tokens": 10},  # 5 characters: 2 tokens
        {"prompt": "abcdefgh", "output_tokens": 10},  # 8 characters: 2 tokens
        {"prompt": "abc", "output_tokens": 3, "input_tokens": 0},  # 0 counts as unknown: 1 token
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    trace = load_trace(str(path), tmp_path)
    assert [i.prompt_tokens for i in trace.items] == [2, 2, 1]
