"""Scheduler behaviour, in virtual time on asyncio and trio."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
import pytest
import trio
import trio.lowlevel

from sjfsched import (
    BackendError,
    Chunk,
    Completion,
    Job,
    Prediction,
    QueueFull,
    Request,
    Scheduler,
    SchedulerClosed,
    VirtualEventLoop,
)
from sjfsched.backends import CallableBackend, SimulatedBackend
from sjfsched.predictors import ConstantPredictor, HeuristicPredictor

from ._util import TablePredictor, backend, job, scheduler

pytestmark = pytest.mark.anyio


async def run_all(sched: Scheduler, requests: Sequence[Request], gap: float = 0.0) -> list[Completion]:
    """Submit requests in order (``gap`` seconds apart); completions in finishing order.

    trio runs newly started tasks in a random order, so even "at once" means a
    millisecond apart here.
    """
    done: list[Completion] = []

    async def one(r: Request) -> None:
        done.append(await sched.complete(r))

    async with anyio.create_task_group() as tg:
        for r in requests:
            tg.start_soon(one, r)
            await anyio.sleep(gap or 0.001)
    return done


def started_order(done: Sequence[Completion]) -> list[float]:
    return [c.request.metadata["predicted"] for c in sorted(done, key=lambda c: c.started)]


async def test_shortest_predicted_first() -> None:
    async with scheduler() as sched:
        done = await run_all(sched, [job(50), job(30), job(10), job(40), job(20)])
    # The first request found the slot free; the rest ran shortest first.
    assert started_order(done) == [50, 10, 20, 30, 40]
    assert [c.output_tokens for c in done] == [50, 10, 20, 30, 40]


async def test_constant_predictor_is_first_come_first_served() -> None:
    async with scheduler(predictor=ConstantPredictor()) as sched:
        done = await run_all(sched, [job(50), job(30), job(10), job(40), job(20)])
    assert started_order(done) == [50, 30, 10, 40, 20]


async def test_lower_priority_class_always_first() -> None:
    async with scheduler() as sched:
        done = await run_all(
            sched, [job(5), job(1, priority=1), job(500, priority=-1), job(2), job(100, priority=-1)]
        )
    assert started_order(done) == [5, 100, 500, 2, 1]


async def test_the_cap_keeps_requests_predicted_long_in_arrival_order() -> None:
    # 10 tokens take 1 s.  Each estimate is capped at the (upper) median of the estimates
    # so far, its own included: 10 -> 1, 20 -> 1 (median of 0.1, 1, 2), 30 -> 2, 900 -> 2,
    # 800 -> 3, 700 -> 3, 5 -> 0.5.  Equal keys keep arrival order, so the three long
    # requests run in the order they came.  Without the cap: plain shortest first.
    requests = [1, 10, 20, 30, 900, 800, 700, 5]
    for cap, expected in [
        (1.0, [1, 5, 10, 20, 30, 900, 800, 700]),
        (None, [1, 5, 10, 20, 30, 700, 800, 900]),
    ]:
        async with scheduler(cap=cap, aging=0.0) as sched:
            done = await run_all(sched, [job(n) for n in requests])
            stats = sched.statistics()
        assert started_order(done) == expected, cap
        assert stats.median_estimate == 3.0  # the upper median of the 8 estimates
        assert stats.estimate_cap == (None if cap is None else 3.0)
        assert sched.cap == cap


async def test_the_cap_is_taken_at_arrival_so_a_fallen_median_lets_a_later_long_request_pass() -> None:
    """What the documentation promises, exactly: requests capped at the same value keep their
    arrival order, but the cap is fixed at arrival, so once the median falls a long request
    arriving later counts as less than earlier long ones and runs first.  Nothing passes a
    request that arrives more than cap * median / aging seconds (median at its arrival) after it."""
    done: list[Completion] = []

    async def one(r: Request) -> None:
        done.append(await sched.complete(r))

    async with scheduler(cap=1.0) as sched, anyio.create_task_group() as tg:  # aging 0.05; 10 tokens: 1 s
        tg.start_soon(one, job(20000))  # runs at once, for 2000 s
        await anyio.sleep(0.1)
        for n in [600] * 6 + [1] * 20:  # A and 5 more count 60 s; then the median falls to 0.1 s
            tg.start_soon(one, job(n))
            await anyio.sleep(0.1)
        tg.start_soon(one, job(6000))  # B: 600 s, capped at 0.1 s, 2.6 s after A
        assert sched.estimate_cap == pytest.approx(0.1)
        await anyio.sleep(1300.0)  # more than 60 s / 0.05 after A
        tg.start_soon(one, job(2))  # C: 0.2 s, yet it does not pass A
    assert started_order(done) == [20000, *[1] * 20, 6000, *[600] * 6, 2]


async def test_the_cap_follows_the_median_of_the_latest_200_estimates() -> None:
    async with scheduler(cap=2.0) as sched:
        assert (sched.median_estimate, sched.estimate_cap) == (None, None)
        for n in [100] * 150 + [10] * 201:
            await sched.complete(job(n))
        # The 100-token requests have left the window: 10 tokens = 1 s.
        assert sched.median_estimate == 1.0
        assert sched.estimate_cap == 2.0


async def test_aging_lets_a_long_wait_overtake_a_newcomer() -> None:
    # aging=1: every second waited forgives one second of estimate.
    # t=0: a 1 s job holds the slot.  t=0: "long" (20 s) waits.  t=0.9: "short" (2 s) arrives.
    # When the slot frees at t=1, long's effective estimate is 20 - 1 = 19 > 2 - 0.1, so short
    # goes first.  With aging=30 long's is 20 - 30 < short's 2 - 3, so long goes first.
    for aging, expected in [(1.0, [10, 20, 200]), (30.0, [10, 200, 20])]:
        async with scheduler(aging=aging) as sched:
            done: list[Completion] = []

            async def one(r: Request, done: list[Completion] = done, sched: Scheduler = sched) -> None:
                done.append(await sched.complete(r))

            async with anyio.create_task_group() as tg:
                tg.start_soon(one, job(10))
                await anyio.sleep(0.001)
                tg.start_soon(one, job(200))
                await anyio.sleep(0.9)
                tg.start_soon(one, job(20))
        assert started_order(done) == expected


async def test_max_wait_promotes_a_starving_request() -> None:
    # A long job arrives behind a busy slot, then short jobs keep arriving faster than they are
    # served; pure SJF (aging=0) would starve the long one until the shorts stop.
    max_wait = 30.0
    async with scheduler(aging=0.0, max_wait=max_wait) as sched:
        done: list[Completion] = []

        async def one(r: Request) -> None:
            done.append(await sched.complete(r))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, job(20))
            await anyio.sleep(0.01)
            tg.start_soon(one, job(100, metadata={"name": "long"}))
            for _ in range(60):
                await anyio.sleep(0.9)
                tg.start_soon(one, job(10))
        stats = sched.statistics()
    long = next(c for c in done if c.request.metadata.get("name") == "long")
    assert long.promoted
    assert stats.promoted >= 1
    one_service = 2.0  # the longest job that can hold the slot when it becomes overdue
    assert long.wait <= max_wait + one_service
    assert long.wait >= max_wait


async def test_without_max_wait_pure_sjf_starves() -> None:
    # The counterpart of the test above: no bound, no aging, and the long job waits for every short.
    async with scheduler(aging=0.0, max_wait=None) as sched:
        done: list[Completion] = []

        async def one(r: Request) -> None:
            done.append(await sched.complete(r))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, job(20))
            await anyio.sleep(0.01)
            tg.start_soon(one, job(100, metadata={"name": "long"}))
            for _ in range(60):
                await anyio.sleep(0.9)
                tg.start_soon(one, job(10))
    long = next(c for c in done if c.request.metadata.get("name") == "long")
    assert not long.promoted
    assert long.wait > 50


async def test_concurrency_slots_are_work_conserving() -> None:
    running = 0
    peak = 0

    async def fn(request: Request) -> AsyncIterator[Chunk]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await anyio.sleep(float(request.metadata["predicted"]))
            yield Chunk("x")
        finally:
            running -= 1

    async with scheduler(backend=CallableBackend(fn, slots=3)) as sched:
        assert sched.concurrency == 3
        done = await run_all(sched, [job(float(n)) for n in (5, 1, 4, 2, 3, 6, 1)])
    assert peak == 3
    finish_times = sorted(c.finished for c in done)
    # Every start after the first three coincides with some finish: no slot idled.
    for c in sorted(done, key=lambda c: c.started)[3:]:
        assert any(abs(c.started - t) < 1e-9 for t in finish_times)


async def test_cancelled_while_waiting_leaves_nothing_behind() -> None:
    async with scheduler() as sched:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sched.complete, job(10))
            await anyio.sleep(0.001)
            scopes = []
            for n in range(200):
                scope = anyio.CancelScope()
                scopes.append(scope)

                async def waiter(scope: anyio.CancelScope = scope, n: int = n) -> None:
                    with scope:
                        await sched.complete(job(100 + n))

                tg.start_soon(waiter)
            await anyio.sleep(0.5)
            assert sched.statistics().waiting == 200
            assert sched.position(job(1)) is None
            for scope in scopes:
                scope.cancel()
        stats = sched.statistics()
        assert (stats.waiting, stats.running, stats.cancelled, stats.completed) == (0, 0, 200, 1)
        assert sched._queue.storage_size() == 0
        assert sched._by_request == {}


async def test_cancelled_while_running_closes_the_backend_stream() -> None:
    closed: list[str] = []

    async def fn(request: Request) -> AsyncIterator[Chunk]:
        try:
            for i in range(1000):
                await anyio.sleep(0.1)
                yield Chunk(f"{i} ")
        finally:
            closed.append(request.text)

    async with scheduler(backend=CallableBackend(fn)) as sched:
        async with anyio.create_task_group() as tg:
            with anyio.move_on_after(1.05):
                await sched.complete(job(1))
            after = await sched.complete(job(2))
            tg.cancel_scope.cancel()
        stats = sched.statistics()
    assert closed[0] == "job 1"
    assert after.output_tokens == 1000
    assert (stats.cancelled, stats.completed, stats.running) == (1, 1, 0)


async def test_slot_granted_to_a_cancelled_waiter_passes_on() -> None:
    scope_b = anyio.CancelScope()
    outcomes: dict[str, str] = {}

    def cancel_b_when_a_completes(completion: Completion) -> None:
        if completion.request.metadata.get("name") == "a":
            # At this moment the slot has just been granted to B, which has not resumed yet.
            assert sched.statistics().running == 1
            scope_b.cancel()

    sched = scheduler(on_complete=cancel_b_when_a_completes)
    async with sched:

        async def run(name: str, r: Request, scope: anyio.CancelScope | None = None) -> None:
            with scope or anyio.CancelScope():
                outcomes[name] = "started"
                await sched.complete(r)
                outcomes[name] = "completed"
                return
            outcomes[name] = "cancelled"

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "a", job(10, metadata={"name": "a"}))
            await anyio.sleep(0.01)
            tg.start_soon(run, "b", job(1), scope_b)  # shortest: gets the slot first
            await anyio.sleep(0.01)
            tg.start_soon(run, "c", job(50))
        stats = sched.statistics()
    assert outcomes == {"a": "completed", "b": "cancelled", "c": "completed"}
    assert (stats.completed, stats.cancelled, stats.running, stats.waiting) == (2, 1, 0, 0)


async def test_backend_failure_reaches_only_its_caller() -> None:
    async def fn(request: Request) -> AsyncIterator[Chunk]:
        await anyio.sleep(1)
        if request.text == "job 2":
            yield Chunk("partial")
            raise ConnectionResetError("server went away")
        yield Chunk(request.text)

    async with scheduler(backend=CallableBackend(fn)) as sched:
        results: dict[str, object] = {}

        async def one(r: Request) -> None:
            try:
                results[r.text] = (await sched.complete(r)).text
            except BackendError as exc:
                results[r.text] = exc

        async with anyio.create_task_group() as tg:
            for n in (1, 2, 3):
                tg.start_soon(one, job(n))
                await anyio.sleep(0.001)
        stats = sched.statistics()
    error = results.pop("job 2")
    assert isinstance(error, BackendError)
    assert isinstance(error.__cause__, ConnectionResetError)
    assert "server went away" in str(error)
    assert results == {"job 1": "job 1", "job 3": "job 3"}
    assert (stats.completed, stats.failed, stats.running) == (2, 1, 0)


class GarbageBackend:
    async def stream(self, request: Request, /) -> AsyncIterator[Any]:
        yield {"text": "a dict, not a chunk"}

    async def aclose(self) -> None:
        pass


async def test_backend_yielding_garbage_is_a_backend_error() -> None:
    async with Scheduler(GarbageBackend(), predictor=ConstantPredictor()) as sched:
        stream_cm = sched.stream("x")
        async with stream_cm as chunks:
            with pytest.raises(BackendError, match="not a Chunk"):
                async for _ in chunks:
                    pass
        assert sched.statistics().failed == 1


class FlakyPredictor:
    def __init__(self) -> None:
        self.calls = 0

    def predict(self, request: Request, /) -> Prediction:
        self.calls += 1
        if request.text == "explode":
            raise RuntimeError("model file vanished")
        if request.text == "wrong type":
            return 42  # type: ignore[return-value]
        return Prediction(10.0)

    def predict_many(self, requests: Sequence[Request], /) -> list[Prediction]:
        return [self.predict(r) for r in requests]


async def test_predictor_failure_falls_back_and_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    async with Scheduler(backend(), predictor=FlakyPredictor()) as sched:
        a = await sched.complete("explode", metadata={"output_tokens": 3})
        b = await sched.complete("wrong type", metadata={"output_tokens": 3})
        c = await sched.complete("fine", metadata={"output_tokens": 3})
        stats = sched.statistics()
    assert a.output_tokens == b.output_tokens == c.output_tokens == 3
    assert a.prediction.tokens > 0
    assert c.prediction == Prediction(10.0)
    assert (stats.predictor_errors, stats.predictor_calls, stats.completed) == (2, 3, 3)
    assert "FlakyPredictor failed" in caplog.text


class RecordingPredictor(TablePredictor):
    def __init__(self) -> None:
        self.observed: list[tuple[str, float, int]] = []

    def observe(self, request: Request, prediction: Prediction, output_tokens: int, /) -> None:
        self.observed.append((request.text, prediction.tokens, output_tokens))


async def test_observe_gets_the_real_output_length() -> None:
    predictor = RecordingPredictor()
    async with scheduler(predictor=predictor) as sched:
        await sched.complete(job(10, actual=37))
        await sched.complete(job(5, actual=2))
    # The lengths come from the backend's chunks, not from the prediction.
    assert predictor.observed == [("job 10", 10.0, 37), ("job 5", 5.0, 2)]


async def test_a_request_predicted_past_its_max_tokens_is_not_observed() -> None:
    """Whether it was cut or ended below its cap: the choice is made on the prediction alone.

    A cut answer was observed at its cut length (requests capped short made
    the predictor predict short for every prompt); then at the prediction
    (its mean ran the correction away); then a cut answer was skipped where
    predicted longer, but the capped answers that ended short were observed
    (the predictor heard only "shorter" from capped traffic).
    """
    predictor = RecordingPredictor()
    async with scheduler(predictor=predictor) as sched:
        cut = await sched.complete(job(100, actual=2000, max_tokens=20))  # predicted past its cap
        ended = await sched.complete(job(100, actual=7, max_tokens=20))  # the same, ended below the cap
        within = await sched.complete(
            job(5, actual=2000, max_tokens=20)
        )  # predicted within: cut, a lower bound
        short = await sched.complete(job(10, actual=7, max_tokens=20))  # predicted within, ended by itself
        free = await sched.complete(job(100, actual=2000))  # no cap
        stats = sched.statistics()
    answers = (cut, ended, within, short, free)
    assert [c.output_tokens for c in answers] == [20, 7, 20, 7, 2000]
    assert [c.finish_reason for c in answers] == ["length", "stop", "length", "stop", "stop"]
    assert [(text, n) for text, _, n in predictor.observed] == [
        ("job 5", 20),
        ("job 10", 7),
        ("job 100", 2000),
    ]
    assert (stats.completed, stats.predictor_errors) == (5, 0)


@pytest.mark.parametrize("lengths", [(3000,), (5, 3000)], ids=["all-cut", "half-cut"])
async def test_capped_traffic_moves_the_default_predictor_little(lengths: tuple[int, ...]) -> None:
    """Every request capped below its prediction: the predictor neither runs away nor sinks to the cap."""
    from sjfsched.predictors import LexicalPredictor

    predictor = LexicalPredictor()
    prompts = [f"Write a long essay about topic number {i}, in detail." for i in range(300)]
    probe = Request("Write a long essay about the history of topic 9999, in detail.")
    before = predictor.predict(probe).tokens
    assert before > 64
    async with scheduler(predictor=predictor) as sched:
        for i, prompt in enumerate(prompts):
            metadata = {"output_tokens": lengths[i % len(lengths)], "prompt_tokens": 0}
            await sched.complete(Request(prompt, max_tokens=64, metadata=metadata))
    after = predictor.predict(probe).tokens
    assert 0.8 * before <= after <= 1.25 * before, (before, after)


async def test_queue_full_is_immediate() -> None:
    async with scheduler(max_queue=2) as sched:
        async with anyio.create_task_group() as tg:
            for n in (10, 20, 30):
                tg.start_soon(sched.complete, job(n))
                await anyio.sleep(0.001)
            assert sched.statistics().waiting == 2
            before = anyio.current_time()
            with pytest.raises(QueueFull, match="max_queue=2"):
                await sched.complete(job(1))
            assert anyio.current_time() == before
        stats = sched.statistics()
    assert (stats.rejected, stats.completed) == (1, 3)


async def test_closing_ends_waiting_requests_and_lets_running_finish() -> None:
    sched = scheduler()
    outcomes: dict[float, object] = {}

    async def one(r: Request) -> None:
        try:
            outcomes[r.metadata["predicted"]] = (await sched.complete(r)).output_tokens
        except SchedulerClosed as exc:
            outcomes[r.metadata["predicted"]] = exc

    async with anyio.create_task_group() as tg:
        async with sched:
            for n in (30, 10, 20):
                tg.start_soon(one, job(n))
                await anyio.sleep(0.001)
            await anyio.sleep(1)
        # Leaving the block waited for the running request (3 s of work).
        assert anyio.current_time() >= 3.0
    assert outcomes[30] == 30
    assert isinstance(outcomes[10], SchedulerClosed)
    assert isinstance(outcomes[20], SchedulerClosed)
    stats = sched.statistics()
    assert (stats.completed, stats.closed, stats.waiting, stats.running) == (1, 2, 0, 0)
    with pytest.raises(SchedulerClosed):
        await sched.complete(job(1))
    with pytest.raises(RuntimeError, match="cannot be reopened"):
        await sched.__aenter__()
    assert sched.statistics().rejected == 1


class ClosingBackend:
    """A backend whose ``aclose()`` takes a while (an HTTP client closing its connections)."""

    slots = 2

    def __init__(self) -> None:
        self.closed = 0

    async def stream(self, request: Request) -> AsyncIterator[Chunk]:
        for _ in range(10):
            await anyio.sleep(0.1)
            yield Chunk("x")

    async def aclose(self) -> None:
        await anyio.sleep(1)
        self.closed += 1


async def test_a_cancelled_exit_with_nothing_running_still_closes_the_backend() -> None:
    # backend.aclose() was cancelled with the exit, and never tried again.
    sim = ClosingBackend()
    with anyio.move_on_after(2):
        async with Scheduler(sim, predictor=TablePredictor()) as sched:
            await sched.complete(job(1))
            await anyio.sleep(10)  # the timeout (an app's shutdown timeout) fires here
    assert sim.closed == 1
    await sched.aclose()
    assert sim.closed == 1


async def test_a_second_aclose_waits_for_the_backend_to_close(caplog: pytest.LogCaptureFixture) -> None:
    sim = ClosingBackend()
    sched = Scheduler(sim, predictor=TablePredictor())
    async with anyio.create_task_group() as tg:
        await sched.__aenter__()
        tg.start_soon(sched.aclose)
        await anyio.sleep(0.1)  # the first is closing the backend (1 s)
        await sched.aclose()
        assert sim.closed == 1
    # A backend whose aclose() never returns is given up after 10 s, with a warning.
    sim.aclose = anyio.sleep_forever  # type: ignore[method-assign]
    async with Scheduler(sim, predictor=TablePredictor()):
        start = anyio.current_time()
    assert 10 <= anyio.current_time() - start < 11
    assert "closing the ClosingBackend took more than 10 s" in caplog.text


@pytest.mark.parametrize("last", ["stream", "admit"])
async def test_a_cancelled_exit_closes_the_backend_when_the_last_running_request_ends(last: str) -> None:
    # The wait for the running requests was cancelled, and the backend never closed.
    sim = ClosingBackend()
    done: list[str] = []

    async def streamed() -> None:
        await sched.complete(job(1))  # 1 s
        done.append("stream")

    async def admitted() -> None:
        async with sched.admit(job(1)) as ticket:
            await anyio.sleep(0.5 if last == "stream" else 2)
            ticket.report(1)
        done.append("admit")

    async with anyio.create_task_group() as tg:
        with anyio.move_on_after(0.3):
            async with Scheduler(sim, predictor=TablePredictor()) as sched:
                tg.start_soon(streamed)
                tg.start_soon(admitted)
                await anyio.sleep(10)
        assert sim.closed == 0  # the requests still run
    assert done[-1] == last
    assert sim.closed == 1
    stats = sched.statistics()
    assert (stats.completed, stats.running) == (2, 0)
    await sched.aclose()
    assert sim.closed == 1


async def test_a_cancelled_exit_as_the_last_slot_is_handed_to_a_cancelled_request_closes_the_backend() -> (
    None
):
    """Whichever ends first, the closing (cancelled) or the request (cancelled), the backend is closed."""
    sim = ClosingBackend()
    sched = Scheduler(sim, predictor=TablePredictor(), concurrency=1)
    scope_b = anyio.CancelScope()

    async def b() -> None:
        with scope_b:
            await sched.complete(job(2))

    async with anyio.create_task_group() as tg:
        await sched.__aenter__()
        async with sched.admit(job(1)):
            tg.start_soon(b)
            await anyio.sleep(0.1)  # b waits for the slot
        # Leaving the block handed the slot to b, which has not resumed yet.
        assert sched.statistics().running == 1
        scope_b.cancel()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await sched.aclose()  # cancelled at once: b holds the slot
    assert scope_b.cancelled_caught
    assert sim.closed == 1
    stats = sched.statistics()
    assert (stats.completed, stats.cancelled, stats.running) == (1, 1, 0)


@pytest.mark.parametrize("where", ["admit", "stream", "complete's backend", "stream's backend"])
async def test_aclose_from_inside_a_block_that_holds_a_slot_raises_at_once_and_changes_nothing(
    where: str,
) -> None:
    # It waited for the running request, which waited for it: for ever.
    refused: list[BaseException] = []

    async def answer(request: Request) -> AsyncIterator[Chunk]:
        if request.metadata.get("close"):  # the backend's code for this request closes
            with pytest.raises(RuntimeError) as caught:
                await sched.aclose()
            refused.append(caught.value)
        yield Chunk("ok")

    sched = Scheduler(CallableBackend(answer), predictor=TablePredictor())
    async with sched:
        with anyio.fail_after(60):
            if where == "admit":
                async with sched.admit(job(1)):
                    with pytest.raises(RuntimeError) as caught:
                        await sched.aclose()
                    refused.append(caught.value)
            elif where == "stream":
                async with sched.stream(job(1)) as chunks:
                    with pytest.raises(RuntimeError) as caught:
                        await sched.aclose()
                    refused.append(caught.value)
                    assert [c.text async for c in chunks] == ["ok"]
            elif where == "complete's backend":
                assert (await sched.complete(job(1, metadata={"close": True}))).text == "ok"
            else:
                async with sched.stream(job(1, metadata={"close": True})) as chunks:
                    assert [c.text async for c in chunks] == ["ok"]
        (error,) = refused
        assert "aclose() from inside a block that holds a running request" in str(error)
        assert not sched.closed  # nothing changed: it takes requests as before
        assert (await sched.complete(job(1))).text == "ok"
        stats = sched.statistics()
        assert (stats.completed, stats.failed, stats.closed, stats.running) == (2, 0, 0, 0)
    assert sched.closed


@pytest.mark.parametrize("where", ["admit", "stream", "complete's backend", "nested admits"])
async def test_a_request_from_code_that_holds_every_slot_is_refused_not_left_waiting(where: str) -> None:
    # An agent's tool call made through the scheduler from inside the agent's own turn: with
    # every slot held by the code making it, it could only wait for itself (it hung for ever).
    refused: list[BaseException] = []

    async def answer(request: Request) -> AsyncIterator[Chunk]:
        if request.metadata.get("nested"):  # the backend's code for this request asks again
            with pytest.raises(RuntimeError) as caught:
                await sched.complete(job(1))
            refused.append(caught.value)
        yield Chunk("ok")

    slots = 2 if where == "nested admits" else 1
    sched = Scheduler(CallableBackend(answer, slots=slots), predictor=TablePredictor())
    async with sched:
        with anyio.fail_after(60):
            if where == "admit":
                async with sched.admit(job(1)) as ticket:
                    with pytest.raises(RuntimeError) as caught:
                        await sched.complete(job(1))
                    refused.append(caught.value)
                    ticket.report(1)
            elif where == "stream":
                async with sched.stream(job(1)) as chunks:
                    with pytest.raises(RuntimeError) as caught:
                        async with sched.stream(job(1)):
                            pass
                    refused.append(caught.value)
                    assert [c.text async for c in chunks] == ["ok"]
            elif where == "complete's backend":
                assert (await sched.complete(job(1, metadata={"nested": True}))).text == "ok"
            else:  # two slots: the first nested call runs on the second; a third is refused
                async with sched.admit(job(1)) as outer:
                    async with sched.admit(job(1)) as inner:
                        with pytest.raises(RuntimeError) as caught:
                            await sched.complete(job(1))
                        refused.append(caught.value)
                        inner.report(1)
                    assert (await sched.complete(job(1))).text == "ok"  # a slot is free again
                    outer.report(1)
        (error,) = refused
        held = "all 2 slots" if slots == 2 else "the only slot"
        assert f"holds {held} of this scheduler would wait for that block" in str(error)
        stats = sched.statistics()
        assert (stats.rejected, stats.waiting, stats.running, stats.failed) == (0, 0, 0, 0)
        assert stats.completed == stats.predictor_calls  # the refused call was never accepted
        assert (await sched.complete(job(1))).text == "ok"


async def test_a_task_the_backends_code_starts_and_leaves_running_waits_for_the_slot() -> None:
    """It inherits the code's note (a copied context) but does not hold the slot: it was refused."""
    answers: list[str] = []
    answered = anyio.Event()
    async with anyio.create_task_group() as app:

        async def follow_up() -> None:
            answers.append((await sched.complete(job(1, metadata={"name": "follow-up"}))).text)
            answered.set()

        async def answer(request: Request) -> AsyncIterator[Chunk]:
            if request.metadata.get("name") == "first":
                app.start_soon(follow_up)  # fire and forget
                await anyio.sleep(0.05)
            yield Chunk(str(request.metadata["name"]))

        sched = Scheduler(CallableBackend(answer), predictor=TablePredictor())
        async with sched:
            assert (await sched.complete(job(1, metadata={"name": "first"}))).text == "first"
            with anyio.fail_after(60):
                await answered.wait()
    assert answers == ["follow-up"]


async def test_the_backends_code_run_by_another_task_reading_the_stream_is_refused_too() -> None:
    """The note named the task that made the request, not the one reading: it hung."""
    refused: list[BaseException] = []

    async def answer(request: Request) -> AsyncIterator[Chunk]:
        if request.metadata.get("nested"):
            with pytest.raises(RuntimeError) as caught:
                await sched.complete(job(1))
            refused.append(caught.value)
        yield Chunk("ok")

    sched = Scheduler(CallableBackend(answer), predictor=TablePredictor())
    async with sched:
        read: list[str] = []

        async def reader(chunks: Any) -> None:
            read.extend([c.text async for c in chunks])

        with anyio.fail_after(60):
            async with sched.stream(job(1, metadata={"nested": True})) as chunks:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(reader, chunks)
    assert read == ["ok"] and len(refused) == 1


async def test_a_task_started_inside_a_block_waits_for_the_slot_as_documented() -> None:
    sched = scheduler()
    async with sched, anyio.create_task_group() as tg:
        async with sched.admit(job(1)) as ticket:
            tg.start_soon(sched.complete, job(1))  # its own task: it waits for the block to end
            await anyio.sleep(1)
            assert sched.statistics().waiting == 1
            ticket.report(1)
    assert sched.statistics().completed == 2


async def test_aclose_from_a_task_that_holds_no_slot_still_waits_for_the_running_ones() -> None:
    sched = scheduler()
    async with anyio.create_task_group() as tg:
        await sched.__aenter__()
        async with sched.admit(job(1)):
            tg.start_soon(sched.aclose)  # started outside the block: waits for it
            await anyio.sleep(1)
            assert sched.closed
            assert sched.statistics().running == 1
    assert sched.statistics().completed == 1


async def test_rates_are_learned_from_completions() -> None:
    sim = backend(decode_rate=50.0)
    async with Scheduler(sim, predictor=TablePredictor(), decode_rate=5.0) as sched:
        for n in (40, 80, 120, 200, 100, 60, 90, 150, 50, 70, 110, 130):
            await sched.complete(Request("x" * 400, metadata={"predicted": n, "output_tokens": n}))
        stats = sched.statistics()
    assert stats.decode_rate == pytest.approx(50.0, rel=0.15)


async def test_position_reports_the_queue_order() -> None:
    async with scheduler() as sched:
        requests = [job(n) for n in (50, 30, 10, 40, 20)]
        async with anyio.create_task_group() as tg:
            for r in requests:
                tg.start_soon(sched.complete, r)
                await anyio.sleep(0.001)
            await anyio.sleep(0.01)
            assert sched.position(requests[0]) is None  # running
            assert [sched.position(r) for r in requests[1:]] == [2, 0, 3, 1]
    assert all(sched.position(r) is None for r in requests)


async def test_admit_without_backend() -> None:
    predictor = RecordingPredictor()
    async with Scheduler(predictor=predictor, learn_rates=True) as sched:
        order: list[float] = []

        async def call(r: Request) -> None:
            async with sched.admit(r) as ticket:
                order.append(ticket.request.metadata["predicted"])
                await anyio.sleep(ticket.job.prediction.tokens / 10)
                ticket.first_token()
                await anyio.sleep(1)
                ticket.report(output_tokens=11, prompt_tokens=3)

        async with anyio.create_task_group() as tg:
            for n in (30, 20, 10):
                tg.start_soon(call, job(n))
                await anyio.sleep(0.001)
        with pytest.raises(ZeroDivisionError):
            async with sched.admit(job(1)):
                _ = 1 / 0
        stats = sched.statistics()
        with pytest.raises(TypeError, match="no backend"):
            async with sched.stream("x"):
                pass
    assert order == [30, 10, 20]
    assert (stats.completed, stats.failed) == (3, 1)
    assert [o[2] for o in predictor.observed] == [11, 11, 11]
    # Reported: 10 tokens decoded in 1 s after the first token, three times; the starting
    # 30 tok/s counts as one second of work and decays by 0.9 per observation.
    expected = (30 * 0.9**3 + 10 * (0.9**2 + 0.9 + 1)) / (0.9**3 + 0.9**2 + 0.9 + 1)
    assert stats.decode_rate == pytest.approx(expected, rel=1e-6)


async def test_ticket_report_validates() -> None:
    async with Scheduler(predictor=ConstantPredictor()) as sched:
        async with sched.admit("x") as ticket:
            with pytest.raises(ValueError, match="output_tokens"):
                ticket.report(-1)
            ticket.report(np.int64(4), prompt_tokens=np.int32(2))  # numpy's integers are counts too
            assert (ticket._output_tokens, ticket._prompt_tokens) == (4, 2)


async def test_a_ticket_without_a_first_token_has_none_and_counts_as_decoding() -> None:
    done: list[Completion] = []
    async with Scheduler(predictor=ConstantPredictor(), learn_rates=True, on_complete=done.append) as sched:
        for _ in range(3):
            async with sched.admit("x") as ticket:
                await anyio.sleep(1)
                ticket.report(output_tokens=11)
        stats = sched.statistics()
    assert [(c.first_token, c.time_to_first_token) for c in done] == [(None, None)] * 3
    # the whole second counts as decoding 10 tokens, three times, as before
    expected = (30 * 0.9**3 + 10 * (0.9**2 + 0.9 + 1)) / (0.9**3 + 0.9**2 + 0.9 + 1)
    assert stats.decode_rate == pytest.approx(expected, rel=1e-6)


async def test_stream_left_early_counts_as_cancelled() -> None:
    async with scheduler() as sched:
        async with sched.stream(job(3)) as chunks:
            with pytest.raises(RuntimeError, match="not been read to the end"):
                _ = chunks.completion
            async for _chunk in chunks:
                break
        stats = sched.statistics()
    assert (stats.cancelled, stats.completed, stats.running) == (1, 0, 0)


async def test_a_stream_read_to_its_end_counts_as_completed_whatever_the_rest_of_its_block_does() -> None:
    # Counted failed (or cancelled) before, not given to on_complete nor learnt from.
    seen: list[Completion] = []
    async with scheduler(
        backend=backend(decode_rate=20.0), on_complete=seen.append, learn_rates=True
    ) as sched:

        async def read_then_fail() -> None:
            async with sched.stream(job(20)) as chunks:
                async for _chunk in chunks:
                    pass
                raise ValueError("my own post-processing failed")

        with pytest.raises(ValueError, match="post-processing"):
            await read_then_fail()
        with anyio.move_on_after(5) as scope:
            async with sched.stream(job(30)) as chunks:
                async for _chunk in chunks:
                    pass
                await anyio.sleep(10)  # past the caller's timeout
        assert scope.cancelled_caught
        stats = sched.statistics()
    assert (stats.completed, stats.failed, stats.cancelled, stats.running) == (2, 0, 0, 0)
    assert [c.output_tokens for c in seen] == [20, 30]
    assert stats.decode_rate > 15  # learnt from: the backend decodes at 20/s, the scheduler starts at 10/s


async def test_bad_input_is_rejected_before_queueing() -> None:
    async with scheduler() as sched:
        with pytest.raises(ValueError, match="max_tokens"):
            await sched.complete("hi", max_tokens=-5)
        with pytest.raises(TypeError, match="expected a Request"):
            await sched.complete(123)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="exactly one"):
            await sched.complete(Request("hi"), messages=[{"role": "user", "content": "x"}])
        assert sched.statistics().waiting == 0


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"aging": -1}, "aging"),
        ({"aging": float("inf")}, "aging"),
        ({"max_wait": -3}, "max_wait"),
        ({"cap": 0}, "cap"),
        ({"cap": -1.0}, "cap"),
        ({"cap": float("nan")}, "cap"),
        ({"cap": True}, "cap"),
        ({"max_queue": -1}, "max_queue"),
        ({"prefill_rate": 0}, "prefill_rate"),
        ({"decode_rate": float("nan")}, "decode_rate"),
    ],
)
async def test_bad_scheduler_options(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        Scheduler(backend(), **kwargs)


async def test_numpy_numbers_are_taken_for_the_knobs_as_ints_and_floats() -> None:
    # Request and Chunk took numpy's numbers; the scheduler refused them ("must be an int >= 1").
    sched = Scheduler(
        backend(),
        predictor=TablePredictor(),
        concurrency=np.int64(2),
        max_queue=np.int32(10),
        aging=np.float32(0.5),
        cap=np.float64(2.0),
        max_wait=np.float32(5.0),
        prefill_rate=np.int64(100),
        decode_rate=np.float32(20.0),
    )
    knobs = (sched.concurrency, sched.max_queue, sched.aging, sched.cap, sched.max_wait)
    rates = (sched.rates.prefill_rate, sched.rates.decode_rate)
    assert (knobs, rates) == ((2, 10, 0.5, 2.0, 5.0), (100.0, 20.0))
    assert [type(k) for k in (*knobs, *rates)] == [int, int, float, float, float, float, float]
    sched.max_wait = np.int64(3)
    assert type(sched.max_wait) is float
    slotted = CallableBackend(lambda r: "ok")
    slotted.slots = np.int64(3)  # a backend of one's own may say so
    assert Scheduler(slotted, predictor=TablePredictor()).concurrency == 3
    async with sched:
        assert (await sched.complete(job(1))).output_tokens == 1
    for bad in ({"concurrency": np.True_}, {"aging": np.float64("nan")}, {"max_queue": np.int8(-1)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Scheduler(backend(), predictor=TablePredictor(), **bad)


async def test_bad_backend_or_predictor_type() -> None:
    with pytest.raises(TypeError, match="stream"):
        Scheduler(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="predict"):
        Scheduler(backend(), predictor=object())  # type: ignore[arg-type]
    with pytest.raises(BackendError, match="str, Chunk"):
        async with Scheduler(CallableBackend(lambda r: 42, in_thread=False)) as sched:  # type: ignore[arg-type,return-value]
            await sched.complete("x")


async def test_a_predictor_or_backend_class_passed_for_an_instance_is_refused() -> None:
    # Accepted before, the class failed on every request: a neutral prediction each time
    # (no shortest-first, only a logged warning), or a BackendError each time.
    with pytest.raises(TypeError, match=r"pass an instance: HeuristicPredictor\(\)"):
        Scheduler(backend(), predictor=HeuristicPredictor)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"pass an instance: SimulatedBackend\(\)"):
        Scheduler(SimulatedBackend, predictor=TablePredictor())  # type: ignore[arg-type]


class DeadlineScheduler(Scheduler):
    """Least slack first: deadline minus estimate (the example policy)."""

    def sort_key(self, job: Job) -> Any:
        deadline = job.submitted + float(job.request.metadata["deadline"])
        return (job.request.priority, deadline - job.estimate)


async def test_subclass_policy_through_sort_key() -> None:
    async with DeadlineScheduler(backend(), predictor=TablePredictor(), decode_rate=10.0) as sched:
        requests = [
            job(10, metadata={"deadline": 100}),
            job(50, metadata={"deadline": 1000}),  # slack 995
            job(20, metadata={"deadline": 30}),  # slack 28
            job(5, metadata={"deadline": 600}),  # slack 599.5
        ]
        done = await run_all(sched, requests)
    assert started_order(done) == [10, 20, 5, 50]


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # trio's advice on such generators
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_leaving_after_breaking_out_of_a_generator_over_a_stream_closes_as_before() -> None:
    """A generator wrapping a stream block, left by `break`: the event loop's finaliser closes
    its block later, in another context.  A note of the block kept in the caller's context made
    leaving `async with Scheduler` raise RuntimeError and left scheduler and backend open."""
    closes: list[int] = []

    class Counted:
        slots = 1

        def __init__(self) -> None:
            self._inner = SimulatedBackend(decode_rate=1000.0)

        def stream(self, request: Request, /) -> AsyncIterator[Chunk]:
            return self._inner.stream(request)

        async def aclose(self) -> None:
            closes.append(1)

    sched = Scheduler(Counted(), predictor=TablePredictor())

    async def texts() -> AsyncIterator[str]:
        async with sched.stream(job(50)) as chunks:
            async for chunk in chunks:
                yield chunk.text

    with anyio.fail_after(30):
        async with sched:
            async for _ in texts():
                break
    assert sched.closed and closes == [1]
    assert sched.statistics().running == 0


class _StaticPredictor:
    @staticmethod
    def predict(request: Request) -> Prediction:
        return Prediction(tokens=10.0)


class _StaticBackend:
    slots = 1

    @staticmethod
    async def stream(request: Request, /) -> AsyncIterator[Chunk]:
        yield Chunk("ok")

    @staticmethod
    async def aclose() -> None:
        pass


async def test_a_class_of_static_methods_serves_as_predictor_and_backend() -> None:
    """The class-for-instance check refused these, which need no instance."""
    async with Scheduler(_StaticBackend, predictor=_StaticPredictor) as sched:
        assert (await sched.complete("hi")).text == "ok"
    assert sched.statistics().predictor_errors == 0


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_block_whose_context_manager_is_dropped_gives_its_slot_back() -> None:
    """The note of a block kept its opener's frame, whose locals kept the context manager, so
    its generator was never finalised and the slot never came back."""
    import gc

    sched = Scheduler(CallableBackend(lambda request: "ok", in_thread=False), concurrency=1)

    async def take_slot() -> None:
        turn = sched.admit(job(1))
        await turn.__aenter__()  # never exited; dropped on return

    with anyio.fail_after(10):  # the old code waited for ever for the slot, and on leaving
        async with sched:
            await take_slot()
            for _ in range(3):
                gc.collect()
                await anyio.sleep(0.05)
            assert (await sched.complete(job(1))).text == "ok"


async def test_a_tickets_first_token_from_a_worker_thread() -> None:
    """A sync client run in a worker thread calling ticket.first_token() failed the request with
    anyio's NoEventLoopError; then a thread anyio had not started (asyncio.to_thread's, which
    asyncio frameworks use, or a plain one) got a RuntimeError. The loop's own clock is read."""
    import threading

    done: list[Completion] = []
    async with Scheduler(predictor=HeuristicPredictor(), on_complete=done.append) as sched:
        async with sched.admit("x") as ticket:
            before = anyio.current_time()
            await anyio.to_thread.run_sync(ticket.first_token)
            ticket.report(3)
        async with sched.admit("y") as ticket:
            errors: list[BaseException] = []

            def foreign() -> None:
                try:
                    ticket.first_token()
                except BaseException as exc:  # pragma: no cover - the failure this test is for
                    errors.append(exc)

            thread = threading.Thread(target=foreign)
            started = anyio.current_time()
            thread.start()
            await anyio.to_thread.run_sync(thread.join)
            ticket.report(3)
    assert done[0].first_token is not None and before <= done[0].first_token <= done[0].finished
    assert errors == []
    assert done[1].first_token is not None and started <= done[1].first_token <= done[1].finished


async def test_first_token_on_every_chunk_after_the_report_is_a_no_op() -> None:
    # The README calls first_token() on every chunk; a stream that says its length before its
    # last event (a report there) then calls it again: the first call counted already.
    done: list[Completion] = []
    async with Scheduler(predictor=HeuristicPredictor(), on_complete=done.append) as sched:
        async with sched.admit("x") as ticket:
            ticket.first_token()
            first = anyio.current_time()
            await anyio.sleep(1)
            ticket.report(7)
            ticket.first_token()  # the last event's
    assert done[0].first_token == first and done[0].output_tokens == 7


def test_a_first_token_under_trio_run_as_a_guest_of_asyncio_reads_trios_clock() -> None:
    # anyio runs on trio there, but asyncio's running loop is the host's: its clock was read, a
    # different one (trio's has a random offset), and the learnt rates were garbage.
    done: list[Completion] = []

    async def trio_main() -> None:
        async with Scheduler(predictor=HeuristicPredictor(), on_complete=done.append) as sched:
            async with sched.admit("x") as ticket:
                await trio.sleep(0.05)
                ticket.first_token()
                await trio.sleep(0.05)
                ticket.report(10)

    async def host() -> None:
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[Any] = loop.create_future()
        trio.lowlevel.start_guest_run(
            trio_main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=loop.call_soon,
            done_callback=ended.set_result,
            host_uses_signal_set_wakeup_fd=True,
        )
        (await ended).unwrap()

    asyncio.run(host())
    (completion,) = done
    assert completion.first_token is not None
    assert completion.started < completion.first_token < completion.finished


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"loop_factory": VirtualEventLoop})])
async def test_a_tickets_first_token_from_asyncios_own_worker_thread() -> None:
    done: list[Completion] = []
    async with Scheduler(predictor=HeuristicPredictor(), on_complete=done.append) as sched:
        async with sched.admit("x") as ticket:
            before = anyio.current_time()
            await asyncio.to_thread(ticket.first_token)
            ticket.report(3)
    assert done[0].first_token is not None and before <= done[0].first_token <= done[0].finished


def test_a_scheduler_refuses_a_second_event_loops_thread() -> None:
    """One Scheduler shared by two threads that each ran their own event loop: the second
    caller's request waited for ever on the first loop's event (found by a reviewer)."""
    import asyncio
    import threading

    running = threading.Event()  # the first request has the slot
    release = threading.Event()  # the test has seen the second caller refused

    async def slow(request: Request) -> AsyncIterator[Chunk]:
        running.set()
        while not release.is_set():  # noqa: ASYNC110 - a thread's event, set from the test's thread
            await anyio.sleep(0.01)
        yield Chunk("x", tokens=1)

    sched = Scheduler(CallableBackend(slow), predictor=HeuristicPredictor())
    results: dict[str, str] = {}

    def worker(name: str) -> None:
        async def go() -> None:
            try:
                results[name] = (await sched.complete(name)).text
            except RuntimeError as exc:
                results[name] = str(exc)

        asyncio.run(go())

    first = threading.Thread(target=worker, args=("first",), daemon=True)
    first.start()
    assert running.wait(10)  # the first request runs
    second = threading.Thread(target=worker, args=("second",), daemon=True)
    second.start()
    second.join(10)
    release.set()
    first.join(10)
    assert not first.is_alive() and not second.is_alive()
    assert results["first"] == "x"
    assert "from other threads use sjfsched.SyncScheduler" in results["second"]
    # Idle again: a loop of yet another thread takes it over (as before the check).
    third = threading.Thread(target=worker, args=("third",), daemon=True)
    third.start()
    third.join(10)
    assert results["third"] == "x"


async def test_a_ticket_used_after_its_block_raises_instead_of_being_lost() -> None:
    done: list[Completion] = []
    async with Scheduler(predictor=ConstantPredictor(), on_complete=done.append) as sched:
        async with sched.admit("x") as ticket:
            ticket.report(3)
        with pytest.raises(RuntimeError, match=r"Ticket.report\(\) after its admit\(\) block ended"):
            ticket.report(57)
        with pytest.raises(RuntimeError, match=r"Ticket.first_token\(\) after its admit\(\) block ended"):
            ticket.first_token()
        with pytest.raises(KeyError):
            async with sched.admit("y") as failed:
                raise KeyError("the caller's own")
        with pytest.raises(RuntimeError, match=r"after its admit\(\) block ended \(the request failed\)"):
            failed.report(1)
    assert [c.output_tokens for c in done] == [3]  # the late report changed nothing


async def test_a_ticket_reported_twice_or_given_a_first_token_after_its_report_raises() -> None:
    # Both passed silently: the last report won (teaching the predictor a wrong length), and a
    # first token after the end skewed the learnt rates.
    done: list[Completion] = []
    async with Scheduler(predictor=ConstantPredictor(), on_complete=done.append) as sched:
        async with sched.admit("x") as ticket:
            ticket.report(40)  # no first token before it
            with pytest.raises(
                RuntimeError, match=r"Ticket.report\(\) a second time \(the first reported 40"
            ):
                ticket.report(3)
            with pytest.raises(RuntimeError, match=r"Ticket.first_token\(\) after report\(\)"):
                ticket.first_token()
        with anyio.CancelScope() as scope:
            async with sched.admit("y") as cancelled:
                scope.cancel()
                await anyio.sleep(1)
        with pytest.raises(RuntimeError, match=r"block ended \(the request was cancelled\)"):
            cancelled.report(1)
    assert [c.output_tokens for c in done] == [40]


async def test_a_ticket_count_of_the_wrong_type_is_a_type_error() -> None:
    async with Scheduler(predictor=ConstantPredictor()) as sched:
        async with sched.admit("x") as ticket:
            with pytest.raises(TypeError, match=r"output_tokens must be an int >= 0, got str '12'"):
                ticket.report("12")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="prompt_tokens"):
                ticket.report(1, prompt_tokens=2.0)  # type: ignore[arg-type]
            ticket.report(1)


async def test_a_count_past_any_answer_is_refused_before_it_skews_the_rates() -> None:
    done: list[Completion] = []
    async with Scheduler(predictor=ConstantPredictor(), on_complete=done.append) as sched:
        async with sched.admit("x") as ticket:
            for count in (10**9 + 1, 10**40, 10**400, 10**5000):  # past what int() prints too
                with pytest.raises(ValueError, match=r"output_tokens must be at most 1,000,000,000"):
                    ticket.report(count)
            with pytest.raises(ValueError, match=r"output_tokens must be an int >= 0, got a number of"):
                ticket.report(-(10**5000))
            with pytest.raises(ValueError, match="prompt_tokens must be at most"):
                ticket.report(1, prompt_tokens=10**10)
            ticket.report(10**9)  # the bound itself is a count
        assert sched.statistics().completed == 1
    assert [c.output_tokens for c in done] == [10**9]
    with pytest.raises(ValueError, match=r"Chunk.tokens must be at most 1,000,000,000"):
        Chunk("x", tokens=10**309)
    with pytest.raises(ValueError, match=r"must be at most 1,000,000,000, got a number of 16,610 bits"):
        Chunk("x", tokens=10**5000)
    with pytest.raises(ValueError, match=r"must be an int >= 0, got a number of 16,610 bits"):
        Chunk("x", tokens=-(10**5000))


async def test_in_your_own_loop_a_callbacks_system_exit_propagates() -> None:
    def on_complete(completion: Completion) -> None:
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        async with Scheduler(SimulatedBackend(), on_complete=on_complete) as sched:
            await sched.complete("hello")


async def test_in_your_own_loop_a_system_exit_from_resumable_propagates_and_frees_the_slot() -> None:
    # resumable() is asked as the stream opens, after the slot was granted: the slot stayed held.
    simulated = SimulatedBackend()

    class Exiting:
        stream, resume, aclose = simulated.stream, simulated.resume, simulated.aclose

        def resumable(self, request: Request, /) -> bool:
            if "exit" in request.text:
                raise SystemExit(3)
            return simulated.resumable(request)

    with anyio.fail_after(60):  # the slot held, closing would wait for ever
        async with Scheduler(Exiting(), preempt=True) as sched:
            with pytest.raises(SystemExit):
                await sched.complete("exit now")
            assert (sched.statistics().running, sched.statistics().failed) == (0, 1)
            await sched.complete("hello")
            assert sched.statistics().completed == 1


@pytest.mark.parametrize("call", ["admit", "complete", "stream"])
def test_a_timeout_through_a_trio_nursery_counts_as_cancelled(call: str) -> None:
    # trio's nurseries wrap Cancelled in a BaseExceptionGroup: such requests counted as failed.
    import trio
    import trio.testing

    async def in_a_nursery() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 10)
            await trio.sleep(10)

    async def answer(request: Request) -> AsyncIterator[Chunk]:
        await in_a_nursery()
        yield Chunk("never")

    async def main() -> tuple[int, int]:
        async with Scheduler(CallableBackend(answer), predictor=ConstantPredictor()) as sched:
            with trio.move_on_after(1) as scope:
                if call == "admit":
                    async with sched.admit("a"):
                        await in_a_nursery()
                elif call == "complete":
                    await sched.complete("c")
                else:
                    async with sched.stream("s") as chunks:
                        async for _ in chunks:
                            pass
            assert scope.cancelled_caught
            stats = sched.statistics()
        return stats.cancelled, stats.failed

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == (1, 0)


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_every_request_closing_ends_is_counted_when_aclose_returns(loop: str) -> None:
    """A closed-out waiter was counted only as its caller woke, and trio may run aclose() first:
    read right after aclose() returned, the counts fell short of the requests accepted (a quarter
    of the trials on trio). Read at any moment, they always account for every request."""
    waiters = 12

    async def trial() -> list[int]:
        sched = Scheduler(concurrency=1, predictor=ConstantPredictor())
        go, held = anyio.Event(), anyio.Event()
        sums: list[int] = []

        def accounted() -> int:
            s = sched.statistics()
            return s.completed + s.failed + s.cancelled + s.closed + s.waiting + s.running

        async def holder() -> None:
            async with sched.admit("hold", max_tokens=1):
                held.set()
                await go.wait()

        async def waiter() -> None:
            with contextlib.suppress(SchedulerClosed):
                async with sched.admit("wait", max_tokens=1):
                    pass

        async def watch() -> None:
            while True:
                sums.append(accounted())
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            await sched.__aenter__()
            tg.start_soon(holder)
            await held.wait()
            for _ in range(waiters):
                tg.start_soon(waiter)
            while sched.statistics().waiting < waiters:
                await anyio.lowlevel.checkpoint()
            tg.start_soon(watch)
            go.set()
            await anyio.lowlevel.checkpoint()  # the holder and this task woken in one step
            await sched.aclose()
            sums.append(accounted())
            stats = sched.statistics()
            assert (stats.waiting, stats.running, stats.completed + stats.closed) == (0, 0, waiters + 1)
            tg.cancel_scope.cancel()
        return sums

    for _ in range(40):
        sums = anyio.run(trial, backend=loop)
        assert set(sums) == {waiters + 1}, sums
