"""asyncio's own cancellation (task.cancel(), asyncio.wait_for), which anyio's shields do not hold off."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

import anyio
import pytest

from sjfsched import Chunk, Request, Scheduler
from sjfsched.predictors import ConstantPredictor


class _SlowToClose:
    """A backend whose stream and whose own close take a moment to end (telling a server, joining)."""

    def __init__(self) -> None:
        self.closed = False

    async def stream(self, request: Request, /) -> AsyncIterator[Chunk]:
        try:
            for _ in range(100):
                await anyio.sleep(0.01)
                yield Chunk("x")
        finally:
            await anyio.sleep(0.3)

    async def aclose(self) -> None:
        await anyio.sleep(0.3)
        self.closed = True


def test_a_stream_whose_close_an_asyncio_timeout_interrupts_still_ends() -> None:
    async def main() -> tuple[int, int, bool]:
        sched = Scheduler(_SlowToClose(), predictor=ConstantPredictor())

        async def read() -> None:
            async with sched.stream("x") as chunks:
                async for _ in chunks:
                    break  # left early: the timeout fires as the backend's stream closes

        async with sched:
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(read(), 0.1)
            stats = sched.statistics()
        return stats.running, stats.cancelled, sched.closed

    assert asyncio.run(asyncio.wait_for(main(), 10)) == (0, 1, True)


def test_leaving_the_block_by_an_asyncio_timeout_still_closes_the_backend() -> None:
    backend = _SlowToClose()

    async def main() -> tuple[bool, bool]:
        sched = Scheduler(backend, predictor=ConstantPredictor())

        async def use() -> None:
            async with sched:
                await asyncio.sleep(0.05)

        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(use(), 0.1)
        at_once = backend.closed
        await asyncio.sleep(0.5)
        return at_once, backend.closed

    assert asyncio.run(main()) == (False, True)  # the close went on after the timeout


def test_a_close_that_goes_on_after_an_asyncio_timeout_logs_its_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FailsToClose(_SlowToClose):
        async def aclose(self) -> None:
            await anyio.sleep(0.3)
            raise OSError("the disk went away")

    async def main() -> None:
        sched = Scheduler(FailsToClose(), predictor=ConstantPredictor())

        async def use() -> None:
            async with sched:
                await asyncio.sleep(0.05)

        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(use(), 0.1)
        await asyncio.sleep(0.5)

    asyncio.run(main())
    assert "closing the backend failed" in caplog.text and "the disk went away" in caplog.text


def test_a_failing_close_reaches_its_caller_once_and_is_not_logged_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Fails(_SlowToClose):
        async def aclose(self) -> None:
            raise ValueError("close failed")

    async def main() -> None:
        with pytest.raises(ValueError, match="close failed"):
            async with Scheduler(Fails(), predictor=ConstantPredictor()):
                pass

    asyncio.run(main())
    assert "closing the backend failed" not in caplog.text


def test_the_last_request_closes_the_backend_though_asyncio_interrupts_its_streams_close() -> None:
    """aclose() gave the close to the last request; asyncio's timeout interrupts that stream's close."""
    backend = _SlowToClose()

    async def main() -> tuple[int, bool]:
        sched = Scheduler(backend, predictor=ConstantPredictor())
        await sched.__aenter__()
        gate = asyncio.Event()

        async def read() -> None:
            async with sched.stream("x") as chunks:
                async for _ in chunks:
                    await gate.wait()
                    break  # left early: the backend's stream closes (0.3 s), and the timeout fires

        reader = asyncio.ensure_future(asyncio.wait_for(read(), 0.3))
        await asyncio.sleep(0.05)
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(sched.aclose(), 0.05)  # gives up: the last request closes the backend
        gate.set()
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await reader
        await asyncio.sleep(0.5)
        return sched.statistics().running, backend.closed

    assert asyncio.run(main()) == (0, True)


def test_a_close_failing_as_its_caller_is_cancelled_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The close ends (failing) in the loop step that cancels its caller: asyncio.shield drops it."""
    callers: list[asyncio.Task[None]] = []

    class FailsAsCallerGoes(_SlowToClose):
        async def aclose(self) -> None:
            asyncio.get_running_loop().call_soon(callers[0].cancel)  # runs before shield hears
            raise OSError("the disk went away")

    async def use() -> None:
        callers.append(asyncio.current_task())  # type: ignore[arg-type]
        async with Scheduler(FailsAsCallerGoes(), predictor=ConstantPredictor()):
            pass

    async def main() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.ensure_future(use())

    asyncio.run(main())
    assert "closing the backend failed" in caplog.text and "the disk went away" in caplog.text


def test_a_waiter_cancelled_as_the_scheduler_closes_never_takes_a_count_back() -> None:
    """Closed out by aclose() and cancelled by its caller in the same step: it ends cancelled, as
    its caller saw; the closed count it was given first went down again (a Prometheus counter the
    proxy exports, which a scraper takes for a reset)."""
    fields = ("completed", "failed", "cancelled", "closed", "rejected")

    async def main() -> list[tuple[int, ...]]:
        sched = Scheduler(concurrency=1, predictor=ConstantPredictor())
        await sched.__aenter__()
        release, held = asyncio.Event(), asyncio.Event()
        snapshots: list[tuple[int, ...]] = []

        def snap() -> None:
            stats = sched.statistics()
            snapshots.append(tuple(getattr(stats, f) for f in fields))

        async def holder() -> None:
            async with sched.admit("hold", max_tokens=1):
                held.set()
                await release.wait()

        async def waiter() -> None:
            async with sched.admit("wait", max_tokens=1):
                pass

        running = asyncio.create_task(holder())
        await held.wait()
        waiting = asyncio.create_task(waiter())
        for _ in range(100):  # its task runs until it waits in the queue
            if sched.statistics().waiting == 1:
                break
            await asyncio.sleep(0)
        closing = asyncio.create_task(sched.aclose())
        await asyncio.sleep(0)  # aclose() closes the waiter out...
        snap()
        waiting.cancel()  # ...and its caller goes away in the same step
        await asyncio.sleep(0.01)
        snap()
        release.set()
        await running
        await closing
        snap()
        assert waiting.cancelled()
        return snapshots

    snapshots = asyncio.run(main())
    for before, after in itertools.pairwise(snapshots):
        assert all(a <= b for a, b in zip(before, after, strict=True)), (before, after)
    final = dict(zip(fields, snapshots[-1], strict=True))
    assert (final["completed"], final["cancelled"], final["closed"]) == (1, 1, 0)
