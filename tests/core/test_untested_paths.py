"""Paths a mutation audit found no test for: each test fails when its behaviour is broken."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from sjfsched import Completion, Prediction, Request, RequestLog, Scheduler
from sjfsched.predictors import ConstantPredictor

from ._util import backend, job, scheduler

pytestmark = pytest.mark.anyio


async def test_a_waiter_cancelled_as_it_was_handed_the_slot_gives_it_back() -> None:
    async with scheduler(predictor=ConstantPredictor()) as sched, anyio.create_task_group() as tg:
        scope = anyio.CancelScope()

        async def waiter() -> None:
            with scope:
                async with sched.admit("b"):
                    raise AssertionError("a cancelled request ran")

        async with sched.admit("a"):
            tg.start_soon(waiter)
            await anyio.sleep(0.01)
            assert sched.statistics().waiting == 1
            scope.cancel()  # "b" has not resumed yet: leaving this block hands it the slot
        with anyio.fail_after(1):
            async with sched.admit("c"):
                pass
        stats = sched.statistics()
    assert (stats.completed, stats.cancelled, stats.running) == (2, 1, 0)


async def test_a_prompt_the_predictor_does_not_count_costs_a_token_per_four_characters() -> None:
    sched = Scheduler(backend(), prefill_rate=100.0, decode_rate=10.0, learn_rates=False)
    assert sched.estimate(Request("x" * 400), Prediction(10.0)) == pytest.approx(100 / 100 + 10 / 10)


async def test_a_failing_predictor_falls_back_to_the_running_mean_of_answers() -> None:
    class Flaky:
        fail = False

        def predict(self, request: Request, /) -> Prediction:
            if self.fail:
                raise RuntimeError("down")
            return Prediction(10.0, prompt_tokens=0.0)

    predictor = Flaky()
    async with scheduler(predictor=predictor) as sched:
        for _ in range(20):
            await sched.complete(job(10, 1000))  # every answer has 1,000 tokens
        predictor.fail = True
        async with sched.admit(job(1)) as ticket:
            neutral = ticket.job.prediction.tokens
    assert neutral == pytest.approx(256 * 0.95**20 + 1000 * (1 - 0.95**20))  # from 256 toward 1,000


async def test_the_first_token_is_the_first_call() -> None:
    done: list[Completion] = []
    async with scheduler(on_complete=done.append) as sched:
        async with sched.admit(job(1)) as ticket:
            await anyio.sleep(1)
            ticket.first_token()
            await anyio.sleep(1)
            ticket.first_token()  # later calls change nothing
            ticket.report(5)
    assert done[0].first_token is not None
    assert done[0].first_token - done[0].started == pytest.approx(1.0)


async def test_max_wait_promotes_a_request_that_has_waited_exactly_that_long() -> None:
    async with scheduler(aging=0.0, max_wait=2.0) as sched, anyio.create_task_group() as tg:
        results: dict[int, Completion] = {}

        async def one(n: int) -> None:
            results[n] = await sched.complete(job(n))

        async with sched.admit(job(1)):
            tg.start_soon(one, 50)  # waits from t = 0
            await anyio.lowlevel.checkpoint()
            tg.start_soon(one, 5)
            await anyio.sleep(2.0)  # the slot frees at exactly t = 2.0
    assert results[50].promoted and results[50].started < results[5].started


async def test_position_lists_overdue_requests_oldest_first() -> None:
    async with scheduler(aging=0.0, max_wait=1.0) as sched, anyio.create_task_group() as tg:
        waiting: Sequence[Request] = (job(30), job(20), job(10))
        async with sched.admit(job(1)):
            for request in waiting:
                tg.start_soon(sched.complete, request)
                await anyio.sleep(0.1)
            assert [sched.position(r) for r in waiting] == [2, 1, 0]  # shortest first, none overdue
            await anyio.sleep(5)  # all three overdue: oldest first
            assert [sched.position(r) for r in waiting] == [0, 1, 2]


def test_the_documented_defaults() -> None:
    """docs/design.md's knob table."""
    sched = Scheduler(predictor=ConstantPredictor())
    assert (sched.aging, sched.cap, sched.max_wait) == (0.05, 1.0, None)


def test_a_request_log_refuses_an_empty_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"RequestLog\.source must be a non-empty string"):
        RequestLog(tmp_path / "l.jsonl", source="")


def test_a_request_log_refuses_a_model_that_is_not_a_string(tmp_path: Path) -> None:
    # Found by a reviewer: model=3 was written as "model": 3, a line `sjfsched train` refuses.
    with pytest.raises(TypeError, match=r"RequestLog\.model must be a string or None, got int"):
        RequestLog(tmp_path / "l.jsonl", model=3)  # type: ignore[arg-type]


async def test_a_request_logs_line_is_there_before_the_log_closes_with_its_prompt_tokens(
    tmp_path: Path,
) -> None:
    path = tmp_path / "requests.jsonl"
    log = RequestLog(path, model="m")
    async with scheduler(on_complete=log) as sched:
        async with sched.admit(Request("Tell me a story", metadata={"predicted": 1})) as ticket:
            ticket.report(12, prompt_tokens=4)
    line = json.loads(path.read_text())  # flushed after every line
    assert (line["output_tokens"], line["input_tokens"]) == (12, 4)
    log.close()


async def test_a_request_predicted_at_exactly_its_max_tokens_is_learnt_from() -> None:
    """One predicted past its cap is not observed (its answer was cut, or ended below it); one
    predicted at the cap exactly is, as it ended (a mutation audit found the bound untested)."""
    seen: list[tuple[int | None, int]] = []

    class Learning:
        def predict(self, request: Request, /) -> Prediction:
            return Prediction(10.0)

        def observe(self, request: Request, prediction: Prediction, output_tokens: int, /) -> None:
            seen.append((request.max_tokens, output_tokens))

    async with Scheduler(predictor=Learning()) as sched:
        for cap in (10, 9, 11):
            async with sched.admit("hi", max_tokens=cap) as ticket:
                ticket.report(min(cap, 10))
    assert seen == [(10, 10), (11, 10)]
