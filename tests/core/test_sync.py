"""SyncScheduler: the blocking facade, called from many threads (real time)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from sjfsched import (
    BackendError,
    Chunk,
    Completion,
    Job,
    Prediction,
    Request,
    Scheduler,
    SchedulerClosed,
    SyncScheduler,
    SyncStream,
)
from sjfsched.backends import CallableBackend

from ._util import TablePredictor, job


async def echo(request: Request) -> AsyncIterator[Chunk]:
    await anyio.sleep(0.002)
    for word in request.text.split():
        yield Chunk(word + " ")


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
def test_many_threads_each_get_their_own_answer(async_backend: str) -> None:
    with SyncScheduler(CallableBackend(echo), async_backend=async_backend) as sched:
        with ThreadPoolExecutor(16) as pool:
            texts = list(pool.map(lambda i: sched.complete(f"thread {i} says hi").text, range(64)))
        stats = sched.statistics()
    assert texts == [f"thread {i} says hi " for i in range(64)]
    assert (stats.completed, stats.running, stats.waiting) == (64, 0, 0)


def test_threads_are_served_shortest_first() -> None:
    order: list[float] = []

    async def record(request: Request) -> AsyncIterator[Chunk]:
        order.append(request.metadata["predicted"])
        yield Chunk("ok")

    with SyncScheduler(CallableBackend(record), predictor=TablePredictor()) as sched:
        release = threading.Event()
        entered = threading.Event()

        def hold() -> None:
            with sched.admit(job(0)):
                entered.set()
                release.wait(10)

        with ThreadPoolExecutor(8) as pool:
            holder = pool.submit(hold)
            assert entered.wait(10)
            requests = [job(n) for n in (50, 20, 40, 10, 30)]
            futures = [pool.submit(sched.complete, r) for r in requests]
            for _ in range(500):
                if sched.statistics().waiting == 5:
                    break
                threading.Event().wait(0.01)
            assert [sched.position(r) for r in requests] == [4, 1, 3, 0, 2]
            release.set()
            holder.result(10)
            for f in futures:
                f.result(10)
    assert order == [10, 20, 30, 40, 50]


def test_custom_scheduler_class() -> None:
    from .test_scheduler import DeadlineScheduler

    with SyncScheduler(
        CallableBackend(echo), scheduler_class=DeadlineScheduler, predictor=TablePredictor()
    ) as sched:
        assert isinstance(sched.scheduler, DeadlineScheduler)
        assert sched.complete(job(3, metadata={"deadline": 5})).text == "job 3 "


def test_only_the_knobs_given_reach_the_scheduler_class() -> None:
    """The typed knobs left out keep the class's own defaults; other keywords go to the class."""
    seen: dict[str, Any] = {}

    class Narrow(Scheduler):
        def __init__(self, backend: Any, *, aging: float = 0.5, tag: str = "") -> None:
            seen.update(aging=aging, tag=tag)
            super().__init__(backend, aging=aging, predictor=TablePredictor())

    with SyncScheduler(CallableBackend(echo), scheduler_class=Narrow, tag="mine") as sched:
        assert sched.scheduler.aging == 0.5
    with SyncScheduler(CallableBackend(echo), scheduler_class=Narrow, aging=0.25):
        pass
    assert seen == {"aging": 0.25, "tag": ""}
    with pytest.raises(TypeError, match="unexpected keyword argument 'prefill_rate'"):
        SyncScheduler(CallableBackend(echo), scheduler_class=Narrow, prefill_rate=100.0)


def test_stream_admit_and_close() -> None:
    sched = SyncScheduler(CallableBackend(echo))
    with sched.stream("one two three") as chunks:
        assert [c.text for c in chunks] == ["one ", "two ", "three "]
    assert chunks.completion.output_tokens == 3
    with sched.admit("my own call") as ticket:
        ticket.report(output_tokens=5)
    assert sched.statistics().completed == 2
    sched.close()
    sched.close()
    with pytest.raises(SchedulerClosed):
        sched.complete("too late")


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
def test_a_ticket_notes_its_first_token_from_the_calling_thread(async_backend: str) -> None:
    with SyncScheduler(CallableBackend(echo), async_backend=async_backend) as sched:
        with sched.admit("my own call") as ticket:
            threading.Event().wait(0.05)
            ticket.first_token()  # reads the scheduler's clock through its event loop
            threading.Event().wait(0.05)
            ticket.report(output_tokens=5)
        stats = sched.statistics()
    assert (stats.completed, stats.failed) == (1, 0)
    assert ticket._first_token is not None
    assert ticket._entry.started < ticket._first_token


@pytest.mark.parametrize(("async_backend", "callers_loop"), [("asyncio", "trio"), ("trio", "asyncio")])
def test_a_first_token_noted_in_a_thread_that_runs_a_loop_of_its_own_reads_the_schedulers_clock(
    async_backend: str, callers_loop: str
) -> None:
    """Not the caller's loop's clock (trio's starts at a random offset): a TTFT of -71680 s, rates ruined."""
    seen: list[Completion] = []
    with SyncScheduler(None, async_backend=async_backend, on_complete=seen.append) as sched:

        async def caller() -> None:  # sync code called from a coroutine (a notebook cell, say)
            with sched.admit("my own call") as ticket:
                threading.Event().wait(0.02)
                ticket.first_token()
                threading.Event().wait(0.02)
                ticket.report(output_tokens=5, prompt_tokens=10)

        anyio.run(caller, backend=callers_loop)
        stats = sched.statistics()
    (done,) = seen
    assert done.first_token is not None
    assert done.started < done.first_token < done.finished
    assert 0.01 < done.first_token - done.started < 5
    assert 1 < stats.prefill_rate < 1e4
    assert 1 < stats.decode_rate < 1e4


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
def test_statistics_position_and_call_work_from_on_complete_in_the_loops_thread(
    async_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """on_complete runs in the loop's thread, where the portal refuses calls: the error was swallowed."""
    seen: list[tuple[int, int | None, int]] = []
    refused: list[str] = []

    async def sleep_a_little() -> None:
        await anyio.lowlevel.checkpoint()  # pragma: no cover - never awaited

    def record(completion: Completion) -> None:
        stats = sched.statistics()
        seen.append((stats.running, sched.position(completion.request), sched.call(len, "abc")))
        with pytest.raises(RuntimeError, match="cannot wait for an async function") as caught:
            sched.call(sleep_a_little)
        refused.append(str(caught.value))

    sched = SyncScheduler(CallableBackend(echo), async_backend=async_backend, on_complete=record)
    with sched:
        assert sched.complete("hi").text == "hi "
        with sched.admit("mine") as ticket:
            ticket.report(output_tokens=2)
    assert seen == [(0, None, 3), (0, None, 3)]
    assert len(refused) == 2
    assert "on_complete callback failed" not in caplog.text


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
def test_a_sync_stream_read_to_its_end_counts_as_completed_though_its_block_raises(
    async_backend: str,
) -> None:
    seen: list[Completion] = []
    with SyncScheduler(CallableBackend(echo), async_backend=async_backend, on_complete=seen.append) as sched:

        def read_then_fail() -> None:
            with sched.stream("one two") as chunks:
                assert [c.text for c in chunks] == ["one ", "two "]
                raise KeyError("my own post-processing failed")

        with pytest.raises(KeyError):
            read_then_fail()
        stats = sched.statistics()
    assert (stats.completed, stats.failed, stats.cancelled) == (1, 0, 0)
    assert [c.text for c in seen] == ["one two "]


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
def test_a_second_close_waits_for_the_first(async_backend: str) -> None:
    """It returned at once, while the first still waited for a running request."""
    started, release = threading.Event(), threading.Event()

    def slow(request: Request) -> str:
        started.set()
        release.wait(10)
        return "done"

    sched = SyncScheduler(CallableBackend(slow), async_backend=async_backend)
    with ThreadPoolExecutor(2) as pool:
        answer = pool.submit(sched.complete, "hi")
        assert started.wait(10)
        first = pool.submit(sched.close)
        for _ in range(1000):
            if sched.closed:
                break
            threading.Event().wait(0.005)
        assert sched.closed
        threading.Timer(0.2, release.set).start()
        sched.close()  # from a signal handler, atexit, another with block
        assert release.is_set()
        assert not sched._thread.is_alive()
        first.result(10)
        assert answer.result(10).text == "done"
    assert sched.statistics().completed == 1


def in_a_thread(fn: Callable[[], object], seconds: float = 20) -> None:
    """Run ``fn`` in a thread of its own, failing (not hanging) if it has not returned in time."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # pragma: no cover - shown by the assert below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "it hung"
    assert not errors, errors


@contextlib.contextmanager
def my_admit(sched: SyncScheduler) -> Iterator[None]:
    """A helper of one's own around admit()."""
    with sched.admit("mine") as ticket:
        yield
        ticket.report(1)


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("where", ["admit", "stream", "my own context manager", "the backend's function"])
def test_close_from_inside_a_block_that_holds_a_slot_raises_at_once_and_changes_nothing(
    async_backend: str, where: str
) -> None:
    """It waited for the request held by its own thread: for ever."""
    refused: list[str] = []

    def answer(request: Request) -> str:
        if request.metadata.get("close"):
            with pytest.raises(RuntimeError) as caught:
                sched.close()
            refused.append(str(caught.value))
        return "ok"

    sched = SyncScheduler(CallableBackend(answer), async_backend=async_backend)

    def body() -> None:
        if where == "admit":
            with sched.admit("mine"), pytest.raises(RuntimeError) as caught:
                sched.close()
            refused.append(str(caught.value))
        elif where == "stream":
            with sched.stream("mine") as chunks:
                with pytest.raises(RuntimeError) as caught:
                    sched.close()
                assert [c.text for c in chunks] == ["ok"]
            refused.append(str(caught.value))
        elif where == "my own context manager":
            with my_admit(sched), pytest.raises(RuntimeError) as caught:
                sched.close()
            refused.append(str(caught.value))
        else:
            assert sched.complete("mine", metadata={"close": True}).text == "ok"
        assert not sched.closed  # nothing changed
        assert sched.complete("next").text == "ok"
        sched.close()

    in_a_thread(body)
    (error,) = refused
    assert error.startswith("close() from inside ")
    assert "would wait for that request" in error
    assert sched.statistics().completed == 2


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
def test_close_from_the_loops_thread_raises_at_once_and_changes_nothing(
    async_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    refused: list[str] = []

    def close_on_complete(completion: Completion) -> None:
        if completion.request.text == "close":
            with pytest.raises(RuntimeError) as caught:
                sched.close()
            refused.append(str(caught.value))

    sched = SyncScheduler(CallableBackend(echo), async_backend=async_backend, on_complete=close_on_complete)
    in_a_thread(lambda: sched.complete("close"))
    assert not sched.closed
    assert sched.complete("still open").text == "still open "
    sched.close()
    assert refused == [
        "close() from the scheduler's own event loop thread (on_complete, or a backend's code run in "
        "the loop) would block the loop that closing needs: close it from another thread"
    ]


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("where", ["admit", "stream", "my own context manager", "the backend's function"])
def test_a_request_from_code_that_holds_the_only_slot_is_refused_not_left_waiting(
    async_backend: str, where: str
) -> None:
    """An agent's tool call through the scheduler from inside its own turn: it blocked for ever."""
    refused: list[str] = []

    def answer(request: Request) -> str:
        if request.metadata.get("nested"):
            with pytest.raises(RuntimeError) as caught:
                sched.complete("tool call")
            refused.append(str(caught.value))
        return "ok"

    sched = SyncScheduler(CallableBackend(answer), async_backend=async_backend)

    def body() -> None:
        if where == "admit":
            with sched.admit("mine") as ticket:
                ticket.report(1)
                with pytest.raises(RuntimeError) as caught:
                    sched.complete("tool call")
            refused.append(str(caught.value))
        elif where == "stream":
            with sched.stream("mine") as chunks:
                with pytest.raises(RuntimeError) as caught, sched.stream("tool call"):
                    pass
                assert [c.text for c in chunks] == ["ok"]
            refused.append(str(caught.value))
        elif where == "my own context manager":
            with my_admit(sched), pytest.raises(RuntimeError) as caught:
                sched.complete("tool call")
            refused.append(str(caught.value))
        else:
            assert sched.complete("mine", metadata={"nested": True}).text == "ok"
        assert sched.complete("next").text == "ok"  # nothing changed

    with sched:
        in_a_thread(body)
    (error,) = refused
    assert "holds the only slot of this scheduler would wait for that block" in error
    stats = sched.statistics()
    assert (stats.completed, stats.rejected, stats.failed) == (2, 0, 0)


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
def test_a_request_from_on_complete_is_refused_with_a_reason(async_backend: str) -> None:
    refused: list[str] = []

    def ask_again(completion: Completion) -> None:
        if completion.request.text == "first":
            with pytest.raises(RuntimeError) as caught:
                sched.complete("again")
            refused.append(str(caught.value))

    with SyncScheduler(CallableBackend(echo), async_backend=async_backend, on_complete=ask_again) as sched:
        in_a_thread(lambda: sched.complete("first"))
    (error,) = refused
    assert error.startswith("a blocking request from the scheduler's own event loop thread (on_complete")


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
def test_a_thread_started_inside_a_block_waits_for_the_slot(async_backend: str) -> None:
    with SyncScheduler(CallableBackend(echo), async_backend=async_backend) as sched:
        answers: list[str] = []
        with sched.admit("mine") as ticket:
            other = threading.Thread(target=lambda: answers.append(sched.complete("other thread").text))
            other.start()
            deadline = time.monotonic() + 10
            while sched.statistics().waiting < 1:  # its call queued, behind this block
                assert time.monotonic() < deadline, "the other thread's call never queued"
                time.sleep(0.005)
            other.join(0.1)
            assert other.is_alive() and sched.statistics().waiting == 1
            ticket.report(1)
        other.join(10)
    assert answers == ["other thread "]


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
def test_close_from_another_thread_than_the_blocks_waits_for_it(async_backend: str) -> None:
    sched = SyncScheduler(CallableBackend(echo), async_backend=async_backend)
    closing: list[threading.Thread] = []

    def body() -> None:
        with sched.admit("mine") as ticket:
            closing.append(threading.Thread(target=sched.close))
            closing[0].start()
            threading.Event().wait(0.2)
            assert closing[0].is_alive()  # waits for this block
            ticket.report(1)

    in_a_thread(body)
    closing[0].join(10)
    assert not closing[0].is_alive()
    assert sched.closed and sched.statistics().completed == 1


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """A helper of the kind programs have (logging, retrying): it calls a function."""
    return fn(*args)


def test_close_through_a_helper_whose_frame_takes_a_gone_openers_address_waits() -> None:
    """A block opened through a helper that returned is waited for, though a new frame of
    the helper's code, on the closing thread, often takes the gone frame's address."""
    outcomes = []
    for _ in range(5):
        sched = SyncScheduler(CallableBackend(echo))
        stack = contextlib.ExitStack()
        _call(stack.enter_context, sched.admit("x"))
        outcome: list[str] = []

        def closer(sched: SyncScheduler = sched, outcome: list[str] = outcome) -> None:
            try:
                _call(sched.close)
                outcome.append("waited")
            except RuntimeError as exc:
                outcome.append(f"refused: {exc}")

        thread = threading.Thread(target=closer)
        thread.start()
        threading.Event().wait(0.1)
        stack.close()
        thread.join(10)
        if not sched.closed:
            sched.close()
        outcomes.append(outcome[0] if outcome else "hung")
    assert outcomes == ["waited"] * 5


def test_a_call_that_races_close_gets_scheduler_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Closed between its check and its call into the event loop: SchedulerClosed, not the portal's error."""
    sched = SyncScheduler(CallableBackend(echo))
    sched.close()
    monkeypatch.setattr(sched, "_check_open", lambda **_: None)  # as if the check ran just before close()
    with pytest.raises(SchedulerClosed):
        sched.complete("too late")
    with pytest.raises(SchedulerClosed), sched.admit("too late"):
        pass  # pragma: no cover
    with pytest.raises(SchedulerClosed), sched.stream("too late"):
        pass  # pragma: no cover
    with pytest.raises(SchedulerClosed):
        sched.call(sched.scheduler.statistics)
    assert sched.position(Request("x")) is None


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("kind", ["complete", "admit", "stream"])
def test_close_waits_for_a_call_being_handed_to_the_loop(async_backend: str, kind: str) -> None:
    """A task handed over as the loop stopped would never run, and its caller would wait for ever."""
    sched = SyncScheduler(CallableBackend(echo), async_backend=async_backend)
    portal = sched._portal
    handing_over = portal.start_task_soon
    closing = threading.Thread(target=sched.close)

    def slow_hand_over(*args: Any) -> Any:
        portal.start_task_soon = handing_over  # type: ignore[method-assign]  # this call only
        closing.start()  # close() begins while this call is half-way into the loop
        closing.join(0.3)
        return handing_over(*args)

    portal.start_task_soon = slow_hand_over  # type: ignore[method-assign, assignment]
    outcome: list[object] = []

    def call() -> None:
        try:
            if kind == "complete":
                outcome.append(sched.complete("hi").text)
            elif kind == "admit":
                with sched.admit("hi"):
                    outcome.append("admitted")
            else:
                with sched.stream("hi") as chunks:
                    outcome.append("".join(c.text for c in chunks))
        except SchedulerClosed as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(10)
    closing.join(10)
    assert not caller.is_alive() and not closing.is_alive(), "a call or close() hung"
    assert len(outcome) == 1
    assert isinstance(outcome[0], SchedulerClosed) or outcome[0] in ("hi ", "admitted")


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
def test_close_while_a_finished_call_has_not_yet_left_the_loop(async_backend: str) -> None:
    """complete() has its answer, but its thread has not run since: close() must not wait for it.

    It did: the call's task waited in the loop for its caller to leave it, so the loop never
    ended and close() hung for ever (seen under load: the OS ran close() in that window).
    """
    sched = SyncScheduler(CallableBackend(echo), async_backend=async_backend)
    portal = sched._portal
    real_call = portal.call
    caller = threading.current_thread()
    closing = threading.Thread(target=sched.close, daemon=True)

    def call(fn: Any, *args: Any) -> Any:
        if getattr(fn, "__name__", None) == "set" and threading.current_thread() is caller:
            closing.start()  # leaving the call: the OS runs close() first
            closing.join(5)
        return real_call(fn, *args)

    portal.call = call  # type: ignore[method-assign, assignment]
    assert sched.complete("hi").text == "hi "
    closing.join(5)
    assert not closing.is_alive(), "close() hung"


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
def test_an_interrupt_as_a_block_is_left_does_not_keep_the_slot(async_backend: str) -> None:
    """Ctrl-C inside the hand-over of the leaving: the request kept its slot, and no call ran again."""
    sched = SyncScheduler(CallableBackend(echo), async_backend=async_backend)
    portal = sched._portal
    real_call = portal.call
    interrupts = [KeyboardInterrupt()]

    def call(fn: Any, *args: Any) -> Any:
        if getattr(fn, "__name__", None) == "set" and interrupts:
            raise interrupts.pop()  # before the leave reached the loop
        return real_call(fn, *args)

    portal.call = call  # type: ignore[method-assign, assignment]
    with pytest.raises(KeyboardInterrupt), sched.admit("hi"):
        pass
    answers: list[str] = []
    after = threading.Thread(target=lambda: answers.append(sched.complete("next").text), daemon=True)
    after.start()
    after.join(10)
    assert answers == ["next "], "the slot was never given back: the next call waits for ever"
    stats = sched.statistics()
    sched.close()
    assert (stats.running, stats.completed) == (0, 2)


def test_requests_refused_after_close_count_as_rejected() -> None:
    """As the async scheduler counts them (they were refused here, unseen by it: 0)."""
    sched = SyncScheduler(CallableBackend(echo))
    sched.complete("one")
    sched.close()
    for refuse in (lambda: sched.complete("x"), lambda: sched.admit("x").__enter__()):
        with pytest.raises(SchedulerClosed):
            refuse()
    with pytest.raises(SchedulerClosed):
        with sched.stream("x"):
            pass
    with pytest.raises(SchedulerClosed):
        sched.call(anyio.sleep, 0)  # not a request: not counted
    stats = sched.statistics()
    assert (stats.completed, stats.rejected) == (1, 3)


def read_in_thread(chunks: SyncStream, timeout: float = 5.0) -> object:
    """``next(chunks)`` in a daemon thread: what it returned or raised, or "hung" after ``timeout``."""
    outcome: list[object] = []

    def read() -> None:
        try:
            outcome.append(next(chunks))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return outcome[0] if outcome else "hung"


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
def test_a_stream_read_after_its_block_was_left_early_raises(async_backend: str) -> None:
    """As the async ChunkStream: RuntimeError at once (it waited for ever for a chunk that never came)."""
    with SyncScheduler(CallableBackend(echo), async_backend=async_backend) as sched:
        with sched.stream("one two three") as chunks:
            assert next(chunks).text == "one "
        assert sched.statistics().cancelled == 1
        outcome = read_in_thread(chunks)
        assert isinstance(outcome, RuntimeError), outcome
        assert "left before its end (its slot is gone)" in str(outcome)

        async def async_outcome() -> str:
            async with sched.scheduler.stream("one two three") as stream:
                await stream.__anext__()
            with pytest.raises(RuntimeError) as caught:
                await stream.__anext__()
            return str(caught.value)

        # the async stream's words, naming the block a SyncScheduler user writes
        assert str(outcome) == sched.call(async_outcome).replace("`async with", "`with")


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
def test_a_reader_waiting_in_another_thread_stops_when_the_block_is_left(async_backend: str) -> None:
    async def slow(request: Request) -> AsyncIterator[Chunk]:
        yield Chunk("first ")
        await anyio.sleep(30)  # the next chunk takes long: the block is left before
        yield Chunk("late")  # pragma: no cover

    with SyncScheduler(CallableBackend(slow), async_backend=async_backend) as sched:
        with ThreadPoolExecutor(1) as pool:
            with sched.stream("x") as chunks:
                assert next(chunks).text == "first "
                waiting = pool.submit(read_in_thread, chunks)
                threading.Event().wait(0.2)  # it waits for the next chunk
            outcome = waiting.result(10)
        assert isinstance(outcome, RuntimeError), outcome
        assert sched.statistics().cancelled == 1


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
def test_a_stream_read_past_its_end_or_its_failure_stops(async_backend: str) -> None:
    """As the async ChunkStream: StopIteration after the end, and after the failure was raised."""

    async def fails(request: Request) -> AsyncIterator[Chunk]:
        yield Chunk("half ")
        raise OSError("the model fell over")

    with SyncScheduler(CallableBackend(echo), async_backend=async_backend) as sched:
        with sched.stream("one two") as chunks:
            assert [c.text for c in chunks] == ["one ", "two "]
            assert isinstance(read_in_thread(chunks), StopIteration)
        assert isinstance(read_in_thread(chunks), StopIteration)  # after the block too
        assert chunks.completion.text == "one two "
    with SyncScheduler(CallableBackend(fails), async_backend=async_backend) as sched:
        with sched.stream("x") as chunks:
            assert next(chunks).text == "half "
            failure = read_in_thread(chunks)
            assert isinstance(read_in_thread(chunks), StopIteration)
        assert isinstance(failure, BackendError), failure
        assert "the model fell over" in str(failure)
        assert isinstance(read_in_thread(chunks), StopIteration)


@pytest.mark.parametrize("async_backend", ["bogus", "", "Trio", None, 1])
def test_an_unknown_event_loop_is_refused_naming_async_backend(async_backend: Any) -> None:
    """anyio's words named neither the parameter nor the choices ("No such backend: bogus"), or,
    for None, nothing that was asked ("Not currently running on any asynchronous event loop")."""
    with pytest.raises(
        ValueError, match=r"^async_backend must be one of 'asyncio', 'trio' .*, got "
    ) as caught:
        SyncScheduler(async_backend=async_backend)
    assert str(caught.value).endswith(repr(async_backend))


@pytest.mark.parametrize("scheduler_class", [int, "Scheduler", None])
def test_a_scheduler_class_that_is_no_scheduler_is_refused(scheduler_class: Any) -> None:
    with pytest.raises(TypeError, match=r"^scheduler_class must be Scheduler or a subclass of it, got "):
        SyncScheduler(scheduler_class=scheduler_class)


def _sim() -> SyncScheduler:
    from sjfsched.backends import SimulatedBackend

    return SyncScheduler(SimulatedBackend(decode_rate=200.0), predictor=TablePredictor())


def _texts(sched: SyncScheduler[Any]) -> Iterator[str]:
    """A stream's texts, read through a generator that holds its block between reads."""
    with sched.stream(job(20)) as chunks:
        for chunk in chunks:
            yield chunk.text


def test_a_second_close_from_a_thread_reading_a_stream_between_reads_returns() -> None:
    """It waited for the first close, which waited for this thread's stream: a hang."""
    sched = _sim()
    started, out = threading.Event(), []

    def reader() -> None:
        texts_ = _texts(sched)
        next(texts_)
        started.set()
        while not sched._closed:  # the first close() waits for this stream now
            threading.Event().wait(0.01)
        sched.close()
        out.append(1 + sum(1 for _ in texts_))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    started.wait(10)
    closer = threading.Thread(target=sched.close, daemon=True)
    closer.start()
    thread.join(20)
    closer.join(20)
    assert len(out) == 1 and not closer.is_alive()  # it read on to the end
    assert sched.statistics().completed == 1


def test_a_first_close_from_a_thread_reading_its_own_stream_between_reads_is_refused() -> None:
    """It waited for that stream, which this thread would read next: a hang (wrap()'s scheduler)."""
    sched = _sim()
    out: list[object] = []

    def reader() -> None:
        texts_ = _texts(sched)
        next(texts_)
        try:
            sched.close()
        except RuntimeError as exc:
            out.append(str(exc))
        out.append(1 + sum(1 for _ in texts_))  # read on to its end
        sched.close()
        out.append(sched.closed)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive()
    message, _, closed = out
    assert "from the thread that reads a stream of this scheduler still open" in str(message)
    assert closed is True and sched.statistics().completed == 1


def test_a_close_from_the_thread_that_opened_a_stream_another_reads_waits_for_it() -> None:
    """Handed over to another thread, which reads it now, the stream is waited for (not refused)."""
    sched = _sim()
    read: list[int] = []
    handed = threading.Event()

    def opener() -> None:
        texts_ = _texts(sched)
        next(texts_)

        def reader() -> None:
            next(texts_)  # the stream's reader now
            handed.set()
            threading.Event().wait(0.3)
            read.append(2 + sum(1 for _ in texts_))

        other = threading.Thread(target=reader, daemon=True)
        other.start()
        handed.wait(10)
        sched.close()  # waits for the other thread's stream
        assert read and not other.is_alive()

    thread = threading.Thread(target=opener, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive() and sched.closed
    assert sched.statistics().completed == 1


def test_a_close_waits_for_an_admit_block_another_thread_runs_in_a_generator() -> None:
    """An admit() block has no reads to say who holds it: it is waited for, not refused."""
    sched = _sim()
    inside = threading.Event()
    out: list[int] = []

    def held() -> Iterator[int]:
        with sched.admit(job(5)) as ticket:
            yield 1
            inside.set()
            threading.Event().wait(0.3)
            ticket.report(5)
            yield 2

    blocks = held()
    next(blocks)  # opened here
    other = threading.Thread(target=lambda: out.extend(blocks), daemon=True)
    other.start()  # and run on by another thread
    assert inside.wait(10)
    sched.close()  # waits for it
    other.join(10)
    assert out == [2] and sched.closed and sched.statistics().completed == 1


def test_a_second_close_inside_a_block_after_the_first_returns() -> None:
    """A worker's close() at the end of its block, the scheduler closed meanwhile: it raised."""
    sched = _sim()
    entered, result = threading.Event(), []

    def worker() -> None:
        try:
            with sched.admit(job(5)) as ticket:
                entered.set()
                while not sched._closed:
                    threading.Event().wait(0.01)
                ticket.report(5)
                sched.close()
            result.append("returned")
        except Exception as exc:
            result.append(repr(exc))

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    entered.wait(10)
    sched.close()
    thread.join(20)
    assert result == ["returned"]
    assert (sched.statistics().completed, sched.statistics().failed) == (1, 0)


def test_close_inside_ones_own_class_wrapper_of_admit_is_refused() -> None:
    """Its __enter__ frame had returned, so the block's opener was not on the stack: a hang."""
    sched = _sim()

    class Turn:
        def __init__(self) -> None:
            self._cm = sched.admit(job(5))

        def __enter__(self) -> Any:
            return self._cm.__enter__()

        def __exit__(self, *exc: Any) -> Any:
            return self._cm.__exit__(*exc)

    outcome: list[str] = []

    def run() -> None:
        with Turn():
            try:
                sched.close()
                outcome.append("closed")
            except RuntimeError as exc:
                outcome.append(str(exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert outcome and "from inside a `with sched.admit(...)` block" in outcome[0]
    sched.close()


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
def test_a_scheduler_dropped_without_close_is_closed_with_a_warning(async_backend: str) -> None:
    """It kept its loop thread (and its backend, and 3 file descriptors) until the process ended."""
    import gc
    import warnings

    closed = threading.Event()

    class Backend:
        async def stream(self, request: Request, /) -> AsyncIterator[Chunk]:
            yield Chunk("ok")

        async def aclose(self) -> None:
            closed.set()

    sched = SyncScheduler(Backend(), async_backend=async_backend)
    assert sched.complete("hi").text == "ok"
    loop = sched._thread
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del sched
        gc.collect()
    assert [str(w.message)[:59] for w in caught] == [
        "a SyncScheduler (yours, or the one of a wrap()) was dropped"
    ]
    assert caught[0].category is ResourceWarning
    assert caught[0].filename.endswith("_sync.py")  # not weakref.py
    loop.join(10)
    assert not loop.is_alive()
    assert closed.is_set()


def test_a_closed_scheduler_dropped_gives_no_warning() -> None:
    import gc

    sched = SyncScheduler(CallableBackend(echo))
    sched.close()
    del sched
    gc.collect()  # a ResourceWarning here would fail the test (warnings are errors)


class _ExitingPredictor:
    """Raises what it is given on one prompt, predicts 10 tokens for the others."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def predict(self, request: Request) -> Prediction:
        if "exit" in request.text:
            raise self.error
        return Prediction(10.0)


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt()])
def test_a_callbacks_system_exit_is_logged_not_the_end_of_the_loop(
    async_backend: str, error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop's thread is the scheduler's own: SystemExit or KeyboardInterrupt from the caller's
    code run there (on_complete, the predictor) would stop the loop, and every other request with it."""
    seen: list[str] = []

    def on_complete(completion: Completion) -> None:
        seen.append(completion.request.text)
        if "exit" in completion.request.text:
            raise error

    sched = SyncScheduler(
        CallableBackend(echo),
        async_backend=async_backend,
        predictor=_ExitingPredictor(error),
        on_complete=on_complete,
    )
    with ThreadPoolExecutor(5) as pool:
        texts = list(pool.map(lambda i: sched.complete(f"{'exit' if i == 2 else 'stay'} {i}").text, range(5)))
    stats = sched.statistics()
    sched.close()
    assert sorted(texts) == sorted(f"{'exit' if i == 2 else 'stay'} {i} " for i in range(5))
    assert sorted(seen) == sorted(t.strip() for t in texts)
    assert (stats.completed, stats.running, stats.waiting, stats.predictor_errors) == (5, 0, 0, 1)
    assert "on_complete callback failed" in caplog.text
    assert sched.closed


class _ExitingPolicy(Scheduler):
    """Its sort_key (or estimate) raises what it is given on a prompt with ``exit`` in it."""

    def __init__(self, *args: Any, error: BaseException, where: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error, self.where = error, where

    def sort_key(self, job: Job) -> Any:
        if self.where == "sort_key" and "exit" in job.request.text:
            raise self.error
        return super().sort_key(job)

    def estimate(self, request: Request, prediction: Prediction) -> float:
        if self.where == "estimate" and "exit" in request.text:
            raise self.error
        return super().estimate(request, prediction)


@pytest.mark.parametrize("where", ["sort_key", "estimate"])
@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt()])
def test_a_policys_system_exit_refuses_its_request_not_the_loop(where: str, error: BaseException) -> None:
    sched = SyncScheduler(CallableBackend(echo), scheduler_class=_ExitingPolicy, error=error, where=where)
    assert sched.complete("stay 1").text == "stay 1 "
    with pytest.raises(RuntimeError, match=rf"_ExitingPolicy.{where} raised {type(error).__name__}"):
        sched.complete("exit now")
    assert sched.complete("stay 2").text == "stay 2 "  # the loop goes on
    stats = sched.statistics()
    sched.close()
    assert (stats.completed, stats.waiting, stats.running) == (2, 0, 0)


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt()])
@pytest.mark.parametrize("kind", ["sync-function", "async-generator"])
def test_a_backends_system_exit_fails_its_request_not_the_loop(
    async_backend: str, error: BaseException, kind: str
) -> None:
    """sys.exit() in a tool, a stopping criterion's KeyboardInterrupt: in the loop's own thread they
    ended the loop, and every waiting caller got CancelledError, every later call a RuntimeError."""

    def answer(request: Request) -> str:
        if "exit" in request.text:
            raise error
        return "ok " + request.text

    async def chunks(request: Request) -> AsyncIterator[str]:
        yield "first "
        yield answer(request)

    fn: Any = answer if kind == "sync-function" else chunks
    sched = SyncScheduler(CallableBackend(fn), async_backend=async_backend)
    with ThreadPoolExecutor(4) as pool:
        bad = pool.submit(sched.complete, "exit now")
        others = [pool.submit(sched.complete, f"stay {i}") for i in range(3)]
        with pytest.raises(
            BackendError, match=rf"raised {type(error).__name__}.*event loop thread"
        ) as caught:
            bad.result(timeout=30)
        assert sorted(f.result(timeout=30).text for f in others) == [
            f"{'first ' if kind != 'sync-function' else ''}ok stay {i}" for i in range(3)
        ]
    assert caught.value.__cause__ is error
    assert sched.complete("stay later").text.endswith("ok stay later")
    stats = sched.statistics()
    sched.close()
    assert (stats.completed, stats.failed, stats.running, stats.waiting) == (4, 1, 0, 0)


class _ExitingResumableBackend:
    """A resumable backend whose resumable(), or whose stream as it is closed, raises ``error``
    on a prompt with ``exit`` in it."""

    def __init__(self, error: BaseException, where: str) -> None:
        self.error, self.where = error, where

    async def stream(self, request: Request) -> AsyncIterator[Chunk]:
        try:
            yield Chunk("a ", tokens=1)
            yield Chunk("b ", tokens=1)
        finally:
            if self.where == "close" and "exit" in request.text:
                raise self.error

    def resumable(self, request: Request) -> bool:
        if self.where == "resumable" and "exit" in request.text:
            raise self.error
        return False

    async def resume(self, request: Request, answer: str, tokens: int) -> AsyncIterator[Chunk]:
        yield Chunk("")

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("async_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt()])
@pytest.mark.parametrize("where", ["resumable", "close"])
def test_a_backends_system_exit_outside_its_reads_is_logged_not_the_end_of_the_loop(
    async_backend: str, error: BaseException, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """resumable() is asked as the stream opens, a stream left early is closed: SystemExit or
    KeyboardInterrupt there ended the loop's thread (close), or left the slot held (resumable)."""
    backend = _ExitingResumableBackend(error, where)
    sched = SyncScheduler(backend, async_backend=async_backend, preempt=True)
    if where == "resumable":  # not resumable, then: it runs to its end unpaused
        assert sched.complete("exit now").text == "a b "
        assert "resumable() failed: not paused" in caplog.text
    else:
        with sched.stream("exit now") as chunks:
            assert next(iter(chunks)).text == "a "
        assert "closing the _ExitingResumableBackend stream failed" in caplog.text
    assert sched.complete("stay").text == "a b "  # the loop goes on, the slot was given back
    stats = sched.statistics()
    sched.close()
    assert (stats.running, stats.waiting, stats.completed + stats.cancelled) == (0, 0, 2)


class _TimedOut(BaseException):
    """What a thread-level timeout raises in the thread it gives up on (func_timeout's is a BaseException)."""


@pytest.mark.parametrize("call", ["complete", "stream", "admit"])
def test_an_exception_raised_in_a_waiting_thread_from_another_cancels_its_request(call: str) -> None:
    """Thread-level timeouts (func_timeout, stopit) raise in the waiting thread from another one,
    which Python delivers only between bytecodes: a wait for the turn that never woke took it only
    once the request had run, for a caller that had gone."""
    import ctypes

    release = threading.Event()
    ran: list[str] = []

    def answer(request: Request) -> str:
        ran.append(request.text)
        if request.text == "long":
            release.wait(30)
        return "ok"

    sched = SyncScheduler(CallableBackend(answer))
    blocker = threading.Thread(target=sched.complete, args=("long",))
    blocker.start()
    while sched.statistics().running == 0:
        time.sleep(0.01)
    outcome: list[tuple[str, float]] = []

    def waiter() -> None:
        t0 = time.monotonic()
        try:
            if call == "complete":
                sched.complete("short")
            else:
                with getattr(sched, call)("short"):
                    pass
        except BaseException as exc:  # the injected one
            outcome.append((type(exc).__name__, time.monotonic() - t0))

    thread = threading.Thread(target=waiter)
    thread.start()
    while sched.statistics().waiting == 0:
        time.sleep(0.01)
    # Not TimeoutError: an OSError raised in the thread as it wakes the loop (asyncio's write to
    # its self-pipe, under call_soon_threadsafe) is swallowed there, and the thread waits on.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident or 0), ctypes.py_object(_TimedOut))
    thread.join(10)
    stats = sched.statistics()
    release.set()
    blocker.join(30)
    sched.close()
    assert outcome and outcome[0][0] == "_TimedOut" and outcome[0][1] < 5.0, outcome
    assert (stats.waiting, stats.cancelled) == (0, 1)
    assert ran == ["long"]  # the gone caller's request never ran
