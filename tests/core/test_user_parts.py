"""A user's own predictors and backends that break the protocols: named errors, nothing lost."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import attrs
import pytest

from sjfsched import BackendError, Chunk, Prediction, QueueFull, Request, Scheduler, SchedulerClosed
from sjfsched.backends import CallableBackend
from sjfsched.predictors import ConstantPredictor, predict_all

from ._util import backend, job, scheduler

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("error", [QueueFull("inner queue full"), SchedulerClosed("inner closed")])
async def test_our_own_errors_raised_by_a_backend_are_backend_errors(error: Exception) -> None:
    """A backend that hands on to another scheduler may raise its QueueFull: this request failed."""

    async def fn(request: Request) -> AsyncIterator[Chunk]:
        yield Chunk("partial")
        raise error

    async with Scheduler(CallableBackend(fn), predictor=ConstantPredictor()) as sched:
        with pytest.raises(BackendError, match="inner") as info:
            await sched.complete("x")
        stats = sched.statistics()
    assert info.value.__cause__ is error
    assert (stats.failed, stats.rejected, stats.completed) == (1, 0, 0)


async def test_a_request_submitted_with_fields_is_found_by_the_request_passed() -> None:
    """``complete(request, max_tokens=...)`` queues a copy: position() finds it by the original."""
    async with scheduler() as sched:
        first, plain, with_fields = job(50), job(10), job(5)
        positions: dict[str, int | None] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(sched.complete, first)
            await anyio.sleep(0.01)
            tg.start_soon(sched.complete, plain)
            tg.start_soon(lambda: sched.complete(with_fields, max_tokens=10))
            await anyio.sleep(0.01)
            positions = {"plain": sched.position(plain), "with fields": sched.position(with_fields)}
            assert sched.position(job(5)) is None  # an equal request is another one
        assert sched.position(with_fields) is None  # ended
        assert not sched._by_request  # nothing left in the index
    assert positions == {"plain": 1, "with fields": 0}


@attrs.frozen  # eq=True, attrs' default: compares by value, and hashing it raises
class _ValueRequest(Request):
    tag: str = attrs.field(default="", kw_only=True)


async def test_a_request_subclass_that_compares_by_value_waits_and_ends_like_any_other() -> None:
    # Its hash reads the frozen mappings: it was pushed into the queue, then the index raised,
    # leaving a ghost entry that broke the next dispatch and aclose().
    with pytest.raises(TypeError):
        hash(_ValueRequest("x"))
    async with scheduler() as sched:
        first, second, third = (
            _ValueRequest(f"job {n}", metadata={"predicted": n, "output_tokens": n}, tag=str(n))
            for n in (50, 10, 5)
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(sched.complete, first)
            await anyio.sleep(0.01)
            tg.start_soon(sched.complete, second)
            await anyio.sleep(0.01)
            assert (sched.position(second), sched.statistics().waiting) == (0, 1)
        closed: list[str] = []

        async def refused(request: Request) -> None:
            with pytest.raises(SchedulerClosed):
                await sched.complete(request)
            closed.append(request.prompt or "")

        with anyio.fail_after(10):  # one left waiting: closing ends it
            async with anyio.create_task_group() as tg:
                tg.start_soon(sched.complete, first)
                await anyio.sleep(0.01)
                tg.start_soon(refused, third)
                await anyio.sleep(0.01)
                await sched.aclose()
        stats = sched.statistics()
    assert closed == ["job 5"]
    assert (stats.completed, stats.closed, stats.waiting, stats.running) == (3, 1, 0, 0)
    assert not sched._by_request


class _AsyncObserve:
    def predict(self, request: Request, /) -> Prediction:
        return Prediction(10.0)

    async def observe(self, request: Request, prediction: Prediction, output_tokens: int, /) -> None:
        pass


class _AsyncPredict:
    async def predict(self, request: Request, /) -> Prediction:
        return Prediction(10.0)


@pytest.mark.parametrize(
    ("predictor", "method"), [(_AsyncObserve(), "observe"), (_AsyncPredict(), "predict")]
)
def test_an_async_predictor_method_is_refused_as_it_would_never_run(predictor: Any, method: str) -> None:
    with pytest.raises(TypeError, match=rf"{type(predictor).__name__}\.{method}\(\) must be a plain method"):
        Scheduler(predictor=predictor)


async def test_a_coroutine_returned_by_observe_is_dropped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[int] = []

    async def later(output_tokens: int) -> None:
        seen.append(output_tokens)  # never runs

    class Returns:
        def predict(self, request: Request, /) -> Prediction:
            return Prediction(float(request.metadata["predicted"]))

        def observe(self, request: Request, prediction: Prediction, output_tokens: int, /) -> Any:
            return later(output_tokens)

    async with scheduler(predictor=Returns()) as sched:
        completion = await sched.complete(job(3))
        stats = sched.statistics()
    assert (completion.output_tokens, stats.completed, stats.predictor_errors, seen) == (3, 1, 1, [])
    assert "observe() returned a coroutine" in caplog.text


class _SyncClose:
    """A simulated backend whose aclose() is a plain def."""

    def __init__(self) -> None:
        self._inner = backend()

    def stream(self, request: Request, /) -> AsyncIterator[Chunk]:
        return self._inner.stream(request)

    def aclose(self) -> None:
        pass


async def test_a_backend_whose_aclose_is_not_async_is_named_on_closing() -> None:
    sched = scheduler(backend=_SyncClose())
    async with sched:
        assert (await sched.complete(job(2))).output_tokens == 2
        with pytest.raises(TypeError, match=r"_SyncClose\.aclose\(\) returned NoneType, not an awaitable"):
            await sched.aclose()
    with pytest.raises(SchedulerClosed):  # closed all the same
        await sched.complete(job(1))


class _ReturnsList:
    def stream(self, request: Request, /) -> Any:
        return [Chunk("a")]

    async def aclose(self) -> None:
        pass


class _AsyncDefReturns:
    async def stream(self, request: Request, /) -> Any:
        return [Chunk("a")]

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize(("made", "kind"), [(_ReturnsList(), "list"), (_AsyncDefReturns(), "coroutine")])
async def test_a_stream_that_is_no_async_iterator_is_named(made: Any, kind: str) -> None:
    async with Scheduler(made, predictor=ConstantPredictor()) as sched:
        with pytest.raises(BackendError, match=rf"stream\(\) returned {kind}, not an async iterator"):
            await sched.complete("x")
        assert sched.statistics().failed == 1


async def test_the_backend_of_a_pool_with_a_plain_aclose_is_named() -> None:
    from sjfsched.backends import BackendPool

    pool = BackendPool([backend(), _SyncClose()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"_SyncClose\.aclose\(\) returned NoneType"):
        await pool.aclose()


class _AsyncClient:
    """The usual shape of a client wrapper: an object with an async ``__call__``."""

    async def __call__(self, request: Request) -> str:
        await anyio.sleep(1.0)
        return "hi"


async def test_an_async_callable_object_is_awaited_in_the_loop_not_called_in_a_thread() -> None:
    # Taken for a plain function, it was called in a worker thread: in virtual time the call
    # then lasted until the program's next timer (here 500 s), not the 1 s it sleeps.
    async with Scheduler(CallableBackend(_AsyncClient()), predictor=ConstantPredictor(1)) as sched:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 500.0)  # some other timer of the program's
            completion = await sched.complete("x")
            tg.cancel_scope.cancel()
    assert completion.text == "hi"
    assert completion.latency == pytest.approx(1.0)


class _Recording:
    """A predictor that fails for prompts holding "fail" and records what it is taught."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float, int]] = []

    def predict(self, request: Request, /) -> Prediction:
        if "fail" in request.text:
            raise RuntimeError("no prediction for this one")
        return Prediction(7.0)

    def predict_many(self, requests: Any, /) -> list[Prediction]:
        return [self.predict(r) for r in requests]

    def observe(self, request: Request, prediction: Prediction, output_tokens: int, /) -> None:
        self.seen.append((request.text, prediction.tokens, output_tokens))


async def test_observe_gets_known_lengths_zero_included_and_only_predictions_made() -> None:
    async def answer(request: Request) -> AsyncIterator[Chunk]:
        n = int(request.text.split()[-1])
        if n == 0:  # an empty answer, known to be one
            yield Chunk("", tokens=0, finish_reason="stop")
        for _ in range(n):
            yield Chunk("t")

    predictor = _Recording()
    async with Scheduler(CallableBackend(answer), predictor=predictor) as sched:
        for text in ("a 3", "b 0", "fail 2", "c 2"):
            await sched.complete(text)
        async with sched.admit("reported 0") as ticket:
            ticket.report(0)
        async with sched.admit("never reported"):
            pass
        stats = sched.statistics()
    # "fail 2" was ranked by the scheduler's stand-in, a prediction the predictor never made
    assert predictor.seen == [("a 3", 7.0, 3), ("b 0", 7.0, 0), ("c 2", 7.0, 2), ("reported 0", 7.0, 0)]
    assert (stats.completed, stats.predictor_errors) == (6, 1)


def test_predict_all_batches_where_a_predictor_can_and_loops_where_not() -> None:
    class ByLength:
        def predict(self, request: Request, /) -> Prediction:
            return Prediction(float(len(request.text)))

    class Batching(ByLength):
        batches = 0

        def predict_many(self, requests: Any, /) -> list[Prediction]:
            self.batches += 1
            return [self.predict(r) for r in requests]

    requests = [Request("a"), Request("abc")]
    assert [p.tokens for p in predict_all(ByLength(), requests)] == [1.0, 3.0]
    batching = Batching()
    assert [p.tokens for p in predict_all(batching, requests)] == [1.0, 3.0] and batching.batches == 1


async def test_a_policys_on_complete_method_is_called_with_every_completion() -> None:
    """A subclass's on_complete method (a natural guess, and what a learning policy needs) was
    never called: only the constructor's callback was (a typed-API reviewer's)."""
    seen: list[str] = []

    class Learning(Scheduler):
        def on_complete(self, completion: Any, /) -> None:
            seen.append("method " + completion.text)
            super().on_complete(completion)

    async with Learning(
        CallableBackend(lambda r: str(r.prompt).upper()),
        predictor=ConstantPredictor(),
        on_complete=lambda c: seen.append("callback " + c.text),
    ) as sched:
        await sched.complete("a")
        await sched.complete("b")
    assert seen == ["method A", "callback A", "method B", "callback B"]

    class Failing(Scheduler):
        def on_complete(self, completion: Any, /) -> None:
            raise RuntimeError("policy bug")

    async with Failing(CallableBackend(lambda r: "ok"), predictor=ConstantPredictor()) as failing:
        assert (await failing.complete("x")).text == "ok"  # logged, not the caller's


def test_an_async_on_complete_method_is_refused_as_it_would_never_run() -> None:
    class Async(Scheduler):
        async def on_complete(self, completion: Any, /) -> None:  # type: ignore[override]
            pass

    with pytest.raises(TypeError, match=r"Async\.on_complete\(\) must be a plain method.*never run"):
        Async(CallableBackend(lambda r: "ok"), predictor=ConstantPredictor())
