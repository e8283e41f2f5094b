"""Edge cases found by review: memory under steady traffic, keys that do not compare,
streams read after their block, reused requests, malformed chunks, bad arguments."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import threading
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import anyio
import anyio.from_thread
import attrs
import numpy as np
import pytest

import sjfsched
from sjfsched import BackendError, Chunk, Completion, Job, Prediction, QueueFull, Request, Scheduler
from sjfsched.backends import BackendPool, BackendUnavailable, CallableBackend, SimulatedBackend

from ._util import TablePredictor, backend, job, scheduler

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("max_wait", [None, 3.0])
async def test_memory_stays_proportional_to_the_waiting_requests_under_steady_traffic(
    max_wait: float | None,
) -> None:
    """One slot, 1 s jobs, one arriving each second after three at once: two always wait.

    The queue never empties, so nothing clears it wholesale. Requests leave
    through the heap or, overdue, through the FIFO, and linger dead in the
    other; each structure is swept once its dead entries outnumber the live.
    """
    async with scheduler(max_wait=max_wait, aging=0.0) as sched:
        largest = 0
        async with anyio.create_task_group() as tg:
            for i in range(2000):
                # predicted 10 or 30 tokens, all really 10 (1 s): the "long" ones wait, then go overdue
                tg.start_soon(sched.complete, job(10 if i % 3 else 30, 10))
                if i >= 2:
                    await anyio.sleep(1.0)
                    largest = max(largest, sched._queue.storage_size())
                    assert sched.statistics().waiting <= 3
        stats = sched.statistics()
        assert stats.completed == 2000
        if max_wait is not None:
            assert stats.promoted > 100  # the FIFO path was taken too
    assert largest <= 2 * (64 + 4)  # not O(requests)


@pytest.mark.parametrize(
    ("deadlines", "priorities"),
    [
        ([5.0, None, 9.0], [1, 1, 1]),  # (1, None) fails against (1, 5.0) when it is pushed
        ([1.0, None, 2.0], [0, 1, 1]),  # (1, None) against (1, 2.0) fails only later, when the heap pops
    ],
)
async def test_keys_that_do_not_compare_fall_back_to_arrival_order_and_lose_nothing(
    deadlines: list[float | None], priorities: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    class Deadlines(Scheduler):
        def sort_key(self, job: Job) -> Any:
            return (job.request.priority, job.request.metadata.get("deadline"))

    sched = Deadlines(backend(), predictor=TablePredictor(), cap=None, decode_rate=10.0, learn_rates=False)
    done: list[float | None] = []

    async def one(deadline: float | None, priority: int) -> None:
        c = await sched.complete(job(10, metadata={"deadline": deadline}, priority=priority))
        done.append(c.request.metadata["deadline"])

    async with sched:
        async with anyio.create_task_group() as tg:
            async with sched.admit(job(10)):
                for deadline, priority in zip(deadlines, priorities, strict=True):
                    tg.start_soon(one, deadline, priority)
                    await anyio.sleep(0.01)
                assert sched.statistics().waiting == 3
        stats = sched.statistics()
    assert (stats.completed, stats.failed, stats.waiting, stats.running) == (4, 0, 0, 0)
    assert done[0] == deadlines[0]  # the first: lowest key, or first in arrival; all three served
    assert sorted(map(str, done)) == sorted(map(str, deadlines))
    assert "sort_key gave keys that do not compare" in caplog.text


async def test_reading_a_stream_after_leaving_its_block_is_an_error_not_a_second_call() -> None:
    calls = 0

    async def fn(request: Request) -> AsyncIterator[Chunk]:
        nonlocal calls
        calls += 1
        for i in range(3):
            yield Chunk(f"t{i}")

    async with Scheduler(CallableBackend(fn), predictor=job_predictor()) as sched:
        async with sched.stream("hi") as chunks:
            async for _ in chunks:
                break
        with pytest.raises(RuntimeError, match="left before its end"):
            await chunks.__anext__()
        stats = sched.statistics()
    assert calls == 1
    assert (stats.cancelled, stats.running) == (1, 0)


async def test_position_of_a_request_submitted_twice() -> None:
    """Equal requests (the same object, or equal values) each keep their place."""
    async with scheduler() as sched:
        request = job(20)
        async with anyio.create_task_group() as tg:
            async with sched.admit(job(10)):
                tg.start_soon(sched.complete, request)
                await anyio.sleep(0.1)
                tg.start_soon(sched.complete, request)
                await anyio.sleep(0.1)
                assert sched.statistics().waiting == 2
                assert sched.position(request) == 0
            await anyio.sleep(0.5)  # the first copy runs (2 s); the second still waits
            assert sched.statistics().waiting == 1
            assert sched.position(request) == 0
        assert sched.position(request) is None
        assert sched._by_request == {}


async def test_a_chunk_whose_text_is_not_a_str_fails_the_request_as_a_backend_error() -> None:
    async def fn(request: Request) -> AsyncIterator[Chunk]:
        yield Chunk(b"bytes")  # type: ignore[arg-type]

    async with Scheduler(CallableBackend(fn), predictor=job_predictor()) as sched:
        with pytest.raises(BackendError, match=r"Chunk\.text must be a str, got bytes"):
            await sched.complete("hi")
        assert sched.statistics().failed == 1


class _StreamOnly:
    slots = 1

    async def stream(self, request: Request) -> AsyncIterator[Chunk]:  # pragma: no cover - never run
        yield Chunk("x")


class _NoSlots(_StreamOnly):
    slots = 0

    async def aclose(self) -> None:  # pragma: no cover - never run
        pass


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Scheduler(_StreamOnly()), TypeError, "_StreamOnly has no aclose"),  # type: ignore[arg-type]
        (lambda: Scheduler(_NoSlots()), ValueError, r"_NoSlots\.slots must be an int >= 1"),
        (lambda: Scheduler(aging=True), ValueError, "aging must be"),
        (lambda: Scheduler(max_wait=True), ValueError, "max_wait must be"),
        (lambda: Scheduler(prefill_rate=True), ValueError, "prefill_rate must be"),
        (lambda: Scheduler(on_complete="log"), TypeError, "on_complete must be a callable"),  # type: ignore[arg-type]
        (lambda: Scheduler(learn_rates="no"), TypeError, "learn_rates must be True or False, got 'no'"),  # type: ignore[arg-type]
        (lambda: Scheduler(learn_rates=None), TypeError, "learn_rates must be True or False"),  # type: ignore[arg-type]
        (lambda: CallableBackend(str, in_thread="no"), TypeError, "in_thread must be True or False"),  # type: ignore[arg-type]
        (lambda: CallableBackend(str, in_thread=0), TypeError, "in_thread must be True or False"),  # type: ignore[arg-type]
        (lambda: Request("x", options=[1]), TypeError, r"Request\.options must be a mapping"),  # type: ignore[arg-type]
        (lambda: Request("x", metadata="m"), TypeError, r"Request\.metadata must be a mapping"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_name_what_is_wrong(make: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SimulatedBackend(output_tokens=5), "output_tokens must be a function of the request, got 5"),  # type: ignore[arg-type]
        (lambda: SimulatedBackend(prompt_tokens="x"), "prompt_tokens must be a function of the request"),  # type: ignore[arg-type]
    ],
)
def test_a_simulated_backend_takes_functions_for_its_lengths(make: Any, message: str) -> None:
    """It took them and failed every request with "'int' object is not callable"."""
    with pytest.raises(TypeError, match=message):
        make()


@pytest.mark.parametrize(
    ("returned", "outcome"),
    [(math.nan, "error"), ("many", "error"), (True, "error"), (-3, 0), (2.6, 3), (4, 4), (np.int64(7), 7)],
)
async def test_a_simulated_backends_length_function_is_read_as_metadata_is(
    returned: Any, outcome: Any
) -> None:
    """A bad value names the function (it failed as 'delay must be a non-negative number', or worse)."""
    sim = SimulatedBackend(output_tokens=lambda request: returned, prompt_tokens=lambda request: 0)
    async with Scheduler(sim, predictor=job_predictor()) as sched:
        if outcome == "error":
            with pytest.raises(BackendError, match=r"output_tokens\(request\) must return a finite number"):
                await sched.complete("x")
            with pytest.raises(ValueError, match="must return a finite number"):
                sim.service_time(Request("x"))
        else:
            assert (await sched.complete("x")).output_tokens == outcome
            assert sim.service_time(Request("x")) == outcome / sim.decode_rate


@pytest.mark.parametrize("far", [1e12, 1e16, 1e30])
def test_a_virtual_sleep_of_years_takes_no_time(far: float) -> None:
    """asyncio waits at most a day per loop pass: a sleep of 1e12 s took 22 s of wall time, 1e30 forever.

    And far on, a short sleep after it rounds to "now", which asyncio never
    counts as due: the loop spun at a timeout of 0.
    """

    from sjfsched import run_virtual

    async def main() -> float:
        await anyio.sleep(far)
        await anyio.sleep(1)
        return anyio.current_time()

    assert _in_a_thread(lambda: run_virtual(main), within=5) > far


def _in_a_thread(fn: Any, within: float) -> Any:
    """``fn()`` in a daemon thread: its result, or a failure if it took longer than ``within`` s (a hang)."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    thread.join(within)
    assert result, f"still running after {within} s"
    return result[0]


def test_a_sleep_without_end_does_not_send_the_virtual_clock_to_infinity() -> None:
    """A thread running and only sleep_forever's timer left: the clock jumped to inf and the loop spun."""
    import time

    from sjfsched import run_virtual

    async def main() -> float:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep_forever)
            await anyio.to_thread.run_sync(time.sleep, 0.05)
            await anyio.sleep(5)
            tg.cancel_scope.cancel()
        return anyio.current_time()

    assert math.isfinite(_in_a_thread(lambda: run_virtual(main), within=10))


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda: 42, r"returned 42, not an awaitable"),
        (lambda: (x async for x in _nothing()), r"returned an async generator, not an awaitable"),
    ],
)
def test_run_virtual_names_a_function_that_is_not_async(fn: Any, message: str) -> None:
    from sjfsched import run_virtual

    with pytest.raises(TypeError, match=f"run_virtual\\(\\) runs an async function: .*{message}"):
        run_virtual(fn)


async def _nothing() -> AsyncIterator[int]:
    return
    yield


def _keyed(key: Any) -> Scheduler:
    """A scheduler ordering by ``key(job)``, over the table predictor and a simulated backend."""

    class Keys(Scheduler):
        def sort_key(self, job: Job) -> Any:
            return key(job)

    return Keys(backend(), predictor=TablePredictor())


@pytest.mark.parametrize("kind", ["list", "dataclass", "attrs"])
async def test_a_sort_key_holding_nan_in_a_list_or_ordered_class_is_refused(kind: str) -> None:
    """The check looked only into tuples: a NaN in a list or an order=True class scrambled the queue."""

    @dataclasses.dataclass(order=True)
    class DataKey:
        first: int
        second: float

    @attrs.define(order=True)
    class AttrsKey:
        first: int
        second: float

    make = {"list": lambda a, b: [a, b], "dataclass": DataKey, "attrs": AttrsKey}[kind]

    async with _keyed(
        lambda job: make(0, math.nan if job.request.metadata.get("nan") else job.estimate)
    ) as sched:
        with pytest.raises(ValueError, match="holding a NaN"):
            await sched.complete(job(5, metadata={"nan": True}))
        assert (await sched.complete(job(5))).output_tokens == 5


@dataclasses.dataclass(order=True)
class _Noted:
    estimate: float
    note: float = dataclasses.field(compare=False, default=math.nan)  # never compared
    parent: Any = dataclasses.field(compare=False, default=None)


@dataclasses.dataclass
class _OwnOrder:
    estimate: float
    junk: float = math.nan

    def __lt__(self, other: _OwnOrder) -> bool:
        return self.estimate < other.estimate


def _holding_itself(estimate: float) -> list[Any]:
    key: list[Any] = [estimate]
    key.append(key)
    return key


def _deep(estimate: float) -> list[Any]:
    key: list[Any] = [estimate]
    for _ in range(3000):
        key = [key]
    return key


def _with_parent(estimate: float) -> _Noted:
    key = _Noted(estimate)
    key.parent = key
    return key


@attrs.define
class _AttrsOwnOrder:
    estimate: float
    junk: float = math.nan

    def __lt__(self, other: _AttrsOwnOrder) -> bool:
        return self.estimate < other.estimate


@pytest.mark.parametrize("make", [_Noted, _OwnOrder, _AttrsOwnOrder, _holding_itself, _deep, _with_parent])
async def test_keys_whose_nan_is_never_compared_or_that_hold_themselves_are_served(make: Any) -> None:
    """The first list/dataclass check refused these (a field not compared; RecursionError on a cycle)."""

    async with _keyed(lambda job: make(job.estimate)) as sched:
        assert [(await sched.complete(job(n))).output_tokens for n in (3, 1)] == [3, 1]


class _ManyElements:
    def __float__(self) -> float:
        raise RuntimeError("a Tensor with 2 elements cannot be converted to Scalar")


@pytest.mark.parametrize(
    ("returned", "logged"),
    [
        (Decimal("1.5"), False),  # taken as 1.5: it failed every request in the default sort_key
        (np.array(2.5), False),  # a 0-d array, as numpy returns: taken
        (10**400, True),  # past float's range: it raised OverflowError to the caller
        ("1.5", True),
        (_ManyElements(), True),  # float() raises as a tensor of many does (RuntimeError)
    ],
)
async def test_an_estimate_float_takes_is_used_and_others_are_logged_and_replaced(
    caplog: pytest.LogCaptureFixture, returned: Any, logged: bool
) -> None:
    class Estimates(Scheduler):
        def estimate(self, request: Request, prediction: Prediction) -> float:
            return returned  # type: ignore[no-any-return]

    async with Estimates(backend(), predictor=TablePredictor()) as sched:
        assert (await sched.complete(job(5))).output_tokens == 5
    assert ("Estimates.estimate returned" in caplog.text) is logged


def job_predictor() -> Any:
    from sjfsched.predictors import ConstantPredictor

    return ConstantPredictor()


async def test_answers_that_arrive_in_one_piece_do_not_teach_a_false_prefill_rate() -> None:
    """A backend that does not stream: its first token comes at the end; that time is not prefill."""

    async def whole(request: Request) -> str:
        await anyio.sleep(5.0)  # 150 tokens at 30 tokens/s, all at once
        return "w " * 150

    async with Scheduler(CallableBackend(whole), predictor=job_predictor()) as sched:
        for _ in range(20):
            answer = await sched.complete("x" * 100)
        stats = sched.statistics()
    assert answer.first_token == answer.finished
    assert stats.prefill_rate == 400.0  # untouched: nothing told it apart
    # the whole call counts as decoding: the rate tends to (tokens - 1) / 5 s from its start of 30
    assert (answer.output_tokens - 1) / 5.0 < stats.decode_rate < 30.0


def test_virtual_time_keeps_going_after_half_a_year() -> None:
    """Past 2**24 s a jump that lands exactly on a timer must still count it as due.

    Stuck, virtual time stops, so no virtual timeout can end the test: it runs
    in a thread, given 30 s of real time.
    """
    from sjfsched import run_virtual

    async def main() -> float:
        await anyio.sleep(3e7)  # noqa: ASYNC116 - a year of virtual time, on purpose
        await anyio.sleep(1)
        return anyio.current_time()

    result: list[float] = []
    thread = threading.Thread(target=lambda: result.append(run_virtual(main)), daemon=True)
    thread.start()
    thread.join(30)
    assert result == [pytest.approx(3e7 + 1)], "virtual time stopped"


class _Scripted:
    """A backend that does what each request's metadata["do"] says: fail, or think that long and answer."""

    slots = 3

    def __init__(self) -> None:
        self.active: list[str] = []

    async def stream(self, request: Request) -> AsyncIterator[Chunk]:
        assert request.prompt is not None
        self.active.append(request.prompt)
        try:
            if request.metadata["do"] == "fail":
                raise BackendUnavailable("down")
            await anyio.sleep(request.metadata["do"])
            yield Chunk("x", finish_reason="stop")
        finally:
            self.active.remove(request.prompt)

    async def aclose(self) -> None:
        pass


async def test_only_the_probe_ending_lets_another_request_probe() -> None:
    """An older request cancelled on a backend out of rotation does not open it to a second probe."""
    backend = _Scripted()
    pool = BackendPool([backend], retry_after=0.2)

    async def go(name: str, do: object) -> None:
        with contextlib.suppress(BackendUnavailable):  # the test reads backend.active
            async for _ in pool.stream(Request(name, metadata={"do": do})):
                pass

    async with anyio.create_task_group() as tg:
        old = anyio.CancelScope()

        async def slow() -> None:
            with old:
                await go("old", 5.0)

        tg.start_soon(slow)
        await anyio.sleep(0.01)
        await go("fails", "fail")  # out of rotation now
        await anyio.sleep(0.3)  # its back-off is over
        tg.start_soon(go, "probe", 1.0)
        await anyio.sleep(0.05)
        assert backend.active == ["old", "probe"]
        old.cancel()  # not the probe
        await anyio.sleep(0.05)
        with anyio.fail_after(0.5):  # out of rotation, its probe on its way: fails at once
            with pytest.raises(BackendUnavailable, match="out of rotation"):
                async for _ in pool.stream(Request("second", metadata={"do": 1.0})):
                    pass
        assert backend.active == ["probe"]  # no second probe
        await anyio.sleep(1.0)
        tg.start_soon(go, "third", 1.0)
        await anyio.sleep(0.05)
        assert backend.active == ["third"]  # the probe answered: back in rotation


async def test_a_wait_inside_a_pool_is_not_learnt_as_prefill_when_the_first_chunk_has_no_token() -> None:
    """The pool marks when it hands a request on; a first chunk that only counts the prompt
    (which Chunk allows on any chunk) must not erase that mark before the first token."""

    async def member(request: Request) -> AsyncIterator[Chunk]:
        yield Chunk("", tokens=0, prompt_tokens=100)  # the prompt count, up front
        await anyio.sleep(0.5)  # prefill: 100 tokens in 0.5 s, 200 tokens/s
        for _ in range(10):
            yield Chunk("t")
            await anyio.sleep(0.1)

    pool = BackendPool([CallableBackend(member)])  # one slot: three of four wait inside it
    sched = Scheduler(pool, concurrency=4, predictor=job_predictor(), prefill_rate=200.0, decode_rate=10.0)
    async with sched, anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(sched.complete, f"r{i}")
    stats = sched.statistics()
    assert stats.completed == 4
    assert stats.prefill_rate == pytest.approx(200.0)  # was 44: the waits counted as prefill


class _NanEstimates(Scheduler):
    """A policy whose estimate() is NaN (0/0 on a missing field, say) for some requests."""

    def estimate(self, request: Request, prediction: Prediction) -> float:
        if request.metadata.get("nan"):
            return math.nan
        return super().estimate(request, prediction)


async def test_a_nan_estimate_is_logged_and_leaves_the_others_shortest_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A NaN in the heap scrambled the order of every request (here 10 20 50 40 30 NaN 60)."""
    sched = _NanEstimates(
        backend(), predictor=TablePredictor(), decode_rate=10.0, learn_rates=False, cap=None, aging=0.0
    )
    requests = {n: job(n) for n in (20, 30, 40, 50, 60)}
    requests[0] = job(5, metadata={"nan": True})  # the neutral estimate: 256 tokens, 25.6 s
    started: list[float] = []

    async def one(request: Request) -> None:
        started.append((await sched.complete(request)).request.metadata["predicted"])

    async with sched, anyio.create_task_group() as tg:
        async with sched.admit(job(1)):
            for n in (20, 0, 30, 40, 50, 60):
                tg.start_soon(one, requests[n])
                await anyio.sleep(0.01)
            positions = {n: sched.position(r) for n, r in requests.items()}
    assert started == [20, 30, 40, 50, 60, 5]
    # position() says what dispatch does (each one's place, not a sort that keeps the order given)
    assert positions == {20: 0, 30: 1, 40: 2, 50: 3, 60: 4, 0: 5}
    assert caplog.text.count("_NanEstimates.estimate returned nan, not a finite number") == 1


async def test_a_sort_key_holding_nan_refuses_the_request_and_leaves_the_queue_in_order() -> None:
    class NanKeys(Scheduler):
        def sort_key(self, job: Job) -> Any:
            return (0, math.nan) if job.request.metadata.get("nan") else super().sort_key(job)

    sched = NanKeys(backend(), predictor=TablePredictor(), decode_rate=10.0, learn_rates=False, cap=None)
    started: list[float] = []

    async def one(request: Request) -> None:
        started.append((await sched.complete(request)).request.metadata["predicted"])

    async with sched, anyio.create_task_group() as tg:
        with pytest.raises(ValueError, match=r"NanKeys\.sort_key returned \(0, nan\)"):
            await sched.complete(job(5, metadata={"nan": True}))  # even with a slot free
        async with sched.admit(job(1)):
            for n in (30, 20):
                tg.start_soon(one, job(n))
                await anyio.sleep(0.01)
            refused: list[ValueError] = []

            async def refuse() -> None:  # a task of its own: this block's code may not wait for a slot
                with pytest.raises(ValueError, match="holding a NaN") as caught:
                    await sched.complete(job(5, metadata={"nan": True}))
                refused.append(caught.value)

            tg.start_soon(refuse)
            await anyio.sleep(0.01)
            assert len(refused) == 1
            tg.start_soon(one, job(10))
            await anyio.sleep(0.01)
            assert sched.statistics().waiting == 3
    assert started == [10, 20, 30]
    assert sched._queue.storage_size() == 0


class _Picky(Scheduler):
    def sort_key(self, job: Job) -> Any:
        if job.request.metadata.get("refuse"):
            raise LookupError("no such tenant")
        return super().sort_key(job)


async def test_only_accepted_requests_count_towards_the_estimate_cap() -> None:
    """Requests refused with QueueFull, or by a sort_key that raises, moved the median."""
    sched = _Picky(backend(), predictor=TablePredictor(), decode_rate=10.0, learn_rates=False, max_queue=2)
    async with sched, anyio.create_task_group() as tg:
        for i in range(3):  # one runs, two wait: the queue is full
            tg.start_soon(sched.complete, job(10 + i))
            await anyio.sleep(0.01)
        window = list(sched._recent)
        for _ in range(300):
            with pytest.raises(QueueFull):
                await sched.complete(job(5000))
        assert (sched.median_estimate, sched.estimate_cap) == (1.1, 1.1)  # was 500
        assert list(sched._recent) == window
        assert sched.statistics().predictor_calls == 3  # refused before it was predicted

    # A full window (200 estimates): a refusal gives back the estimate it pushed out.
    sched = _Picky(None, predictor=TablePredictor(), decode_rate=10.0, learn_rates=False)
    async with sched:
        for n in range(250):
            async with sched.admit(job(n % 7)):
                pass
        window = list(sched._recent)
        assert len(window) == 200
        for _ in range(300):
            with pytest.raises(LookupError):
                async with sched.admit(job(5000, metadata={"refuse": True})):
                    pass  # pragma: no cover - refused
        assert list(sched._recent) == window
        assert sched._recent_sorted == sorted(window)
        async with sched.admit(job(3)):
            assert list(sched._recent) == [*window[1:], 0.3]


async def _record_later(completion: Completion) -> None:  # pragma: no cover - never run
    pass


class _AsyncCallback:
    async def __call__(self, completion: Completion) -> None:  # pragma: no cover - never run
        pass


@pytest.mark.parametrize("callback", [_record_later, _AsyncCallback()])
def test_an_async_on_complete_is_refused_as_it_would_never_run(callback: Any) -> None:
    with pytest.raises(TypeError, match="on_complete must be a plain function"):
        Scheduler(on_complete=callback)


async def test_an_awaitable_returned_by_on_complete_is_dropped_with_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with scheduler(on_complete=lambda c: _record_later(c)) as sched:
        await sched.complete(job(1))
        assert sched.statistics().completed == 1
    assert "which is not awaited: on_complete must be a plain function" in caplog.text


def test_a_task_returned_by_on_complete_is_left_to_run(caplog: pytest.LogCaptureFixture) -> None:
    """Handing the completion to a task of one's own returns the task: not an error."""
    import asyncio

    seen: list[str] = []
    tasks: list[Any] = []

    async def record(completion: Completion) -> None:
        seen.append(completion.text)

    def on_complete(completion: Completion) -> Any:
        tasks.append(asyncio.get_running_loop().create_task(record(completion)))
        return tasks[-1]

    async def main() -> None:
        async with Scheduler(CallableBackend(lambda r: "hi"), on_complete=on_complete) as sched:
            await sched.complete(Request("x"))
        await asyncio.gather(*tasks)

    anyio.run(main, backend="asyncio")
    assert seen == ["hi"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_an_answer_in_one_piece_teaches_only_the_decode_rate_on_a_real_clock(loop: str) -> None:
    """Its first token arrives with its last: the call's time is not prompt evaluation."""
    import time

    def whole(request: Request) -> str:
        time.sleep(0.05)
        return "y" * 400  # 100 tokens in one piece

    async def main() -> tuple[float, float]:
        async with Scheduler(CallableBackend(whole), prefill_rate=1000.0, decode_rate=50.0) as sched:
            completion = await sched.complete(Request("x" * 4000))
            assert completion.first_token is not None  # when it came, for time to first token
            stats = sched.statistics()
            return stats.prefill_rate, stats.decode_rate

    prefill, decode = anyio.run(main, backend=loop)
    assert prefill == 1000.0 and decode != 50.0


# Worker threads run in real time, which virtual time cannot wait for: these run on real clocks.
@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_a_sync_function_in_its_thread_is_waited_for_when_its_request_is_cancelled(loop: str) -> None:
    """A worker thread cannot be stopped: the caller's timeout takes effect when the function
    returns (the request counts as cancelled), and no other call starts meanwhile."""
    entered, go = threading.Event(), threading.Event()
    calls: list[str] = []
    results: list[str] = []

    def fn(request: Request) -> str:
        calls.append(request.text)
        entered.set()
        assert go.wait(30), "never released"
        return "answer"

    async def main() -> Any:
        async with Scheduler(CallableBackend(fn), predictor=job_predictor()) as sched:

            async def first() -> None:
                with anyio.move_on_after(0.2):
                    results.append((await sched.complete("first")).text)

            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                assert await anyio.to_thread.run_sync(entered.wait, 30)
                tg.start_soon(sched.complete, "second")
                await anyio.sleep(0.5)  # past the first's timeout: it still runs in its thread
                stats = sched.statistics()
                assert (stats.running, stats.waiting, calls) == (1, 1, ["first"])
                go.set()
            return sched.statistics()

    stats = anyio.run(main, backend=loop)
    assert results == []  # timed out: it took effect once the function returned
    assert calls == ["first", "second"]
    assert (stats.completed, stats.cancelled) == (1, 1)


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_a_sync_function_closing_its_scheduler_from_its_thread_is_refused_at_once(loop: str) -> None:
    """aclose() waited for the request whose function called it: for ever."""

    def fn(request: Request) -> str:
        anyio.from_thread.run(sched.aclose)
        return "never"  # pragma: no cover

    async def main() -> tuple[bool, str]:
        async with sched:
            with anyio.fail_after(10), pytest.raises(BackendError) as caught:
                await sched.complete("hi")
            return sched.closed, str(caught.value.__cause__)

    sched = Scheduler(CallableBackend(fn), predictor=job_predictor())
    closed, error = anyio.run(main, backend=loop)
    assert not closed
    assert "aclose() from inside a block that holds a running request" in error
    assert sched.closed and sched.statistics().failed == 1


def test_asyncios_own_timeout_also_waits_for_a_sync_function_in_its_thread() -> None:
    """asyncio.wait_for cancels natively, past anyio's shield: the wait holds all the same."""
    import asyncio

    entered, go = threading.Event(), threading.Event()
    running, most = [0], [0]

    def fn(request: Request) -> str:
        running[0] += 1
        most[0] = max(most[0], running[0])
        entered.set()
        assert go.wait(30), "never released"
        running[0] -= 1
        return "answer to " + request.text

    async def main() -> tuple[float, str]:
        async with Scheduler(CallableBackend(fn), predictor=job_predictor()) as sched:
            loop = asyncio.get_running_loop()

            async def first() -> float:
                started = loop.time()
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):  # not the builtin before 3.11
                    await asyncio.wait_for(sched.complete("first"), 0.1)
                return loop.time() - started

            task = loop.create_task(first())
            assert await anyio.to_thread.run_sync(entered.wait, 30)
            second = loop.create_task(sched.complete("second"))
            await asyncio.sleep(0.4)
            go.set()
            return await task, (await second).text

    waited, second = anyio.run(main, backend="asyncio")
    assert waited > 0.35 and second == "answer to second" and most[0] == 1


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_a_sync_iterator_in_its_thread_stops_at_the_next_piece_when_cancelled(loop: str) -> None:
    entered, go, closed = threading.Event(), threading.Event(), threading.Event()
    pieces: list[str] = []

    def fn(request: Request) -> Iterator[str]:
        try:
            for piece in ("a", "b", "c"):
                entered.set()
                assert go.wait(30), "never released"
                pieces.append(piece)
                yield piece
        finally:
            closed.set()

    async def main() -> Any:
        async with Scheduler(CallableBackend(fn), predictor=job_predictor()) as sched:
            scope = anyio.CancelScope()

            async def first() -> None:
                with scope:
                    await sched.complete("first")

            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                assert await anyio.to_thread.run_sync(entered.wait, 30)
                scope.cancel()  # while its thread waits inside next()
                await anyio.sleep(0.2)
                assert (sched.statistics().running, closed.is_set()) == (1, False)
                go.set()
            return sched.statistics()

    stats = anyio.run(main, backend=loop)
    assert pieces == ["a"]  # the piece being made when it was cancelled, and no more
    assert closed.is_set()
    assert (stats.cancelled, stats.running) == (1, 0)


def test_the_task_a_block_is_told_by_is_trios_in_guest_mode_too() -> None:
    """trio run as a guest on an asyncio loop: the task id was None in every trio task (the host
    loop runs, with no asyncio task), so a task started by the backend's code was refused."""
    import asyncio

    import trio

    from sjfsched._scheduler import _current_task_id

    async def trio_main() -> list[tuple[int | None, int]]:
        seen: list[tuple[int | None, int]] = []

        async def child() -> None:
            seen.append((_current_task_id(), anyio.get_current_task().id))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
        seen.append((_current_task_id(), anyio.get_current_task().id))
        return seen

    async def host() -> list[tuple[int | None, int]]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        trio.lowlevel.start_guest_run(
            trio_main, run_sync_soon_threadsafe=loop.call_soon_threadsafe, done_callback=done.set_result
        )
        outcome = await done
        result: list[tuple[int | None, int]] = outcome.unwrap()
        return result

    seen = asyncio.run(host())
    assert len(seen) == 2 and all(mine == anyio_id for mine, anyio_id in seen)


class _TierDeadline(Scheduler):
    """The docs' own example of keys that do not always compare: a deadline some requests lack."""

    def sort_key(self, job: Job) -> Any:
        metadata = job.request.metadata
        return (metadata["tier"], metadata.get("deadline"))


def test_keys_that_first_fail_to_compare_in_a_sweep_of_the_queue_lose_nothing() -> None:
    """A sweep of dead entries rebuilt the heap without the fallback to arrival order: a
    TypeError escaped a dispatch, one caller got it after its answer, and the rest waited for
    ever with a slot free (found by a reviewer; seed 76 reaches it)."""
    rng = random.Random(76)
    requests = []
    for i in range(100):
        metadata: dict[str, Any] = {"tokens": rng.randint(5, 50), "tier": rng.randint(0, 3)}
        if rng.random() > 0.05:
            metadata["deadline"] = rng.random() * 100
        requests.append(Request(f"q{i}", metadata=metadata))
    done: list[Completion] = []
    failures: list[BaseException] = []

    async def main() -> None:
        sched = _TierDeadline(
            SimulatedBackend(prefill_rate=2000, decode_rate=40, output_tokens=lambda r: r.metadata["tokens"]),
            predictor=TablePredictor(),
            max_wait=1.0,
            on_complete=done.append,
        )
        async with sched:

            async def one(request: Request) -> None:
                try:
                    await sched.complete(request)
                except Exception as exc:  # pragma: no cover - the failure this test is for
                    failures.append(exc)

            with anyio.fail_after(10_000):  # virtual seconds: the load needs about a minute
                async with anyio.create_task_group() as tg:
                    for request in requests:
                        tg.start_soon(one, request)
            stats = sched.statistics()
        assert (stats.completed, stats.waiting, stats.running) == (100, 0, 0)

    sjfsched.run_virtual(main)
    assert failures == []
    assert len(done) == 100


@pytest.mark.parametrize("method", ["sort_key", "estimate"])
def test_an_async_policy_method_is_refused_when_the_scheduler_is_made(method: str) -> None:
    async def coroutine(self: Scheduler, *args: Any) -> Any:  # pragma: no cover - never called
        return 0

    policy = type("AsyncPolicy", (Scheduler,), {method: coroutine})
    with pytest.raises(TypeError, match=rf"AsyncPolicy.{method}\(\) must be a plain method"):
        policy(predictor=TablePredictor())


def test_a_queue_turning_lenient_in_a_sweep_holds_each_waiting_entry_once() -> None:
    """The sweep's fallback rebuilt the heap from the FIFO while pop() took an entry: the FIFO
    still held it, waiting, so once paused and put back it was in the heap twice (counted twice by
    ordered(), drained twice on close). Found by a reviewer; seed 1029 reaches it."""
    from sjfsched._queue import EntryState, WaitQueue, _Entry

    rng = random.Random(1029)
    queue = WaitQueue(None)
    waiting: list[_Entry] = []
    taken = None
    for seq in range(1, 601):
        op = rng.random()
        if op < 0.5 or not waiting:
            key = (rng.randint(0, 3), None if rng.random() < 0.02 else rng.random())
            entry = _Entry(Request(f"q{seq}"), Prediction(1.0), 1.0, key, 0.0, seq)
            queue.push(entry)
            waiting.append(entry)
        elif op < 0.9:
            entry = waiting.pop(rng.randrange(len(waiting)))
            entry.state = EntryState.CANCELLED
            queue.discard(entry)
        else:
            was_lenient = queue._lenient
            taken = queue.pop(0.0)
            assert taken is not None
            taken.state = EntryState.RUNNING
            waiting.remove(taken)
            if queue._lenient and not was_lenient:  # the keys' first failure came in this pop
                break
    else:
        raise AssertionError("the seed no longer reaches the case")  # pragma: no cover
    assert taken is not None
    taken.state = EntryState.WAITING  # paused, and put back, as preemption does
    queue.requeue(taken)
    waiting.append(taken)
    ordered = queue.ordered(0.0)
    assert len({id(e) for e in ordered}) == len(ordered) == len(queue) == len(waiting)
    drained = queue.drain()
    assert len({id(e) for e in drained}) == len(drained) == len(waiting)
