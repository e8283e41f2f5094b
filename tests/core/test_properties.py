"""Property-based tests of the scheduler's invariants, in virtual time on asyncio and trio."""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sjfsched import BackendError, Chunk, Completion, QueueFull, Request, Scheduler
from sjfsched.backends import CallableBackend

from ._util import TablePredictor, job, run_virtual

BACKENDS = ["asyncio", "trio"]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


async def sleeping_backend_fn(request: Request) -> AsyncIterator[Chunk]:
    """Serves a request in ``metadata["seconds"]`` seconds; fails if ``metadata["fail"]``."""
    seconds = float(request.metadata["seconds"])
    await anyio.sleep(seconds / 2)
    if request.metadata.get("fail"):
        raise ConnectionError("backend fell over")
    await anyio.sleep(seconds / 2)
    yield Chunk("done", tokens=int(request.metadata["predicted"]))


def make_scheduler(**options: Any) -> Scheduler:
    """The plain key (no cap) unless ``cap`` is given."""
    options.setdefault("cap", None)
    return Scheduler(
        CallableBackend(sleeping_backend_fn, slots=options.pop("concurrency", 1)),
        predictor=TablePredictor(),
        decode_rate=10.0,
        learn_rates=False,
        **options,
    )


@pytest.mark.parametrize("async_backend", BACKENDS)
@SETTINGS
@given(
    concurrency=st.integers(1, 3),
    aging=st.floats(0, 2),
    jobs=st.lists(
        st.tuples(
            st.integers(1, 500),  # predicted tokens
            st.integers(-1, 1),  # priority
            st.floats(0, 5),  # arrival offset while the slots are held
        ),
        min_size=1,
        max_size=25,
    ),
)
def test_with_all_requests_present_dispatch_follows_the_key(
    async_backend: str, concurrency: int, aging: float, jobs: list[tuple[int, int, float]]
) -> None:
    """Hold every slot until all requests wait; then they start in ascending key order."""

    async def main() -> list[Completion]:
        sched = make_scheduler(concurrency=concurrency, aging=aging, max_wait=None)
        done: list[Completion] = []
        release = anyio.Event()

        async def hold() -> None:
            async with sched.admit("blocker", metadata={"predicted": 0}):
                await release.wait()

        async def one(r: Request) -> None:
            done.append(await sched.complete(r))

        async with sched, anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(hold)
            await anyio.sleep(0.001)
            start = anyio.current_time()
            for predicted, priority, offset in sorted(jobs, key=lambda j: j[2]):
                await anyio.sleep(max(0.0, start + offset - anyio.current_time()))
                tg.start_soon(one, job(predicted, priority=priority, metadata={"seconds": 1}))
            await anyio.sleep(6)
            release.set()
        return done

    done = run_virtual(main, async_backend)
    assert len(done) == len(jobs)

    def key(c: Completion) -> tuple[float, float]:
        return (c.request.priority, c.estimate + aging * c.submitted)

    for a in done:
        for b in done:
            if key(a) < key(b):
                assert a.started <= b.started, (key(a), key(b))


@attrs.frozen
class Arrival:
    at: float
    predicted: int
    seconds: float


arrivals = st.lists(
    st.builds(
        Arrival,
        at=st.floats(0, 60),
        predicted=st.integers(1, 1000),
        seconds=st.floats(0.1, 8),
    ),
    min_size=1,
    max_size=40,
)


@pytest.mark.parametrize("async_backend", BACKENDS)
@SETTINGS
@given(workload=arrivals, aging=st.floats(0, 1), max_wait=st.floats(0, 40))
def test_overdue_requests_go_first_oldest_first(
    async_backend: str, workload: list[Arrival], aging: float, max_wait: float
) -> None:
    """At every dispatch: if anyone has waited max_wait, the oldest such request runs next;
    otherwise the lowest key runs next.  Together these bound every wait by max_wait plus the
    service of whatever runs or is overdue ahead of it (checked literally below)."""

    async def main() -> list[Completion]:
        sched = make_scheduler(aging=aging, max_wait=max_wait)
        done: list[Completion] = []

        async def one(r: Request) -> None:
            done.append(await sched.complete(r))

        async with sched, anyio.create_task_group() as tg:
            start = anyio.current_time()
            for a in sorted(workload, key=lambda a: a.at):
                await anyio.sleep(max(0.0, start + a.at - anyio.current_time()))
                tg.start_soon(one, job(a.predicted, metadata={"seconds": a.seconds}))
        return done

    done = run_virtual(main, async_backend)
    assert len(done) == len(workload)
    eps = 1e-9
    for r in done:
        t = r.started
        waiting = [w for w in done if w is not r and w.submitted < t - eps and w.started > t + eps]
        overdue = [w for w in waiting if t - w.submitted >= max_wait + eps]
        if overdue:
            assert r.promoted
            assert r.submitted <= min(w.submitted for w in overdue) + eps
        elif not r.promoted:
            for w in waiting:
                assert r.estimate + aging * r.submitted <= w.estimate + aging * w.submitted + eps
        if r.promoted:
            assert t - r.submitted >= max_wait - eps


@pytest.mark.parametrize("async_backend", BACKENDS)
@SETTINGS
@given(
    long_seconds=st.floats(5, 60),
    short_seconds=st.floats(0.5, 3),
    spacing=st.floats(0.3, 1.0),
    max_wait=st.floats(1, 60),
)
def test_no_request_waits_longer_than_max_wait_plus_one_service(
    async_backend: str, long_seconds: float, short_seconds: float, spacing: float, max_wait: float
) -> None:
    """The starvation scenario: shorter jobs keep arriving faster than they are served, which
    would starve a long job under pure SJF forever.  With max_wait it waits at most max_wait
    plus the one service time in progress when it became overdue."""
    n_short = int((max_wait + long_seconds) * 3 / spacing) + 5

    async def main() -> list[Completion]:
        sched = make_scheduler(aging=0.0, max_wait=max_wait)
        done: list[Completion] = []

        async def one(r: Request) -> None:
            done.append(await sched.complete(r))

        async with sched, anyio.create_task_group() as tg:
            tg.start_soon(one, job(10, metadata={"seconds": short_seconds}))
            await anyio.sleep(0.01)
            tg.start_soon(one, job(10_000, metadata={"seconds": long_seconds, "name": "long"}))
            for _ in range(n_short):
                await anyio.sleep(spacing)
                tg.start_soon(one, job(10, metadata={"seconds": short_seconds}))
        return done

    done = run_virtual(main, async_backend)
    long = next(c for c in done if c.request.metadata.get("name") == "long")
    assert long.wait <= max_wait + short_seconds + 1e-6
    assert long.promoted == (long.wait >= max_wait)


@attrs.frozen
class Plan:
    at: float
    seconds: float
    fail: bool
    cancel_after: float | None
    priority: int


plans = st.lists(
    st.builds(
        Plan,
        at=st.floats(0, 20),
        seconds=st.floats(0.01, 5),
        fail=st.booleans(),
        cancel_after=st.none() | st.floats(0, 10),
        priority=st.integers(-1, 1),
    ),
    min_size=1,
    max_size=40,
)


@pytest.mark.parametrize("async_backend", BACKENDS)
@SETTINGS
@given(
    workload=plans,
    concurrency=st.integers(1, 3),
    max_queue=st.none() | st.integers(0, 10),
    max_wait=st.none() | st.floats(0, 10),
    close_at=st.none() | st.floats(0, 30),
)
# Found by hypothesis: the scheduler closes, and the waiting request's caller
# is cancelled, at the same instant; it ends cancelled, and is counted so.
@example(
    workload=[Plan(0.0, 1.0, False, None, 0), Plan(0.0, 1.0, False, 1.0, 0)],
    concurrency=1,
    max_queue=None,
    max_wait=None,
    close_at=1.0,
)
def test_every_accepted_request_ends_exactly_once(
    async_backend: str,
    workload: list[Plan],
    concurrency: int,
    max_queue: int | None,
    max_wait: float | None,
    close_at: float | None,
) -> None:
    outcomes: dict[int, list[str]] = {i: [] for i in range(len(workload))}

    async def main() -> Scheduler:
        sched = make_scheduler(concurrency=concurrency, max_queue=max_queue, max_wait=max_wait)

        async def one(i: int, plan: Plan) -> None:
            request = job(
                10 + i,
                priority=plan.priority,
                metadata={"seconds": plan.seconds, "fail": plan.fail},
            )
            with anyio.CancelScope() as scope:
                if plan.cancel_after is not None:
                    scope.deadline = anyio.current_time() + plan.cancel_after
                    if scope.deadline <= anyio.current_time():
                        # Cancelled before the scheduler even saw it: never accepted.
                        outcomes[i].append("cancelled before submission")
                        return
                try:
                    await sched.complete(request)
                except BackendError:
                    outcomes[i].append("failed")
                except QueueFull:
                    outcomes[i].append("rejected")
                except Exception as exc:  # SchedulerClosed
                    outcomes[i].append(type(exc).__name__)
                else:
                    outcomes[i].append("completed")
                return
            outcomes[i].append("cancelled")

        async def closer() -> None:
            assert close_at is not None
            await anyio.sleep(close_at)
            await sched.aclose()

        async with anyio.create_task_group() as tg:
            if close_at is not None:
                tg.start_soon(closer)
            start = anyio.current_time()
            for i, plan in sorted(enumerate(workload), key=lambda p: p[1].at):
                await anyio.sleep(max(0.0, start + plan.at - anyio.current_time()))
                tg.start_soon(one, i, plan)
        await sched.aclose()
        return sched

    sched = run_virtual(main, async_backend)
    assert all(len(o) == 1 for o in outcomes.values()), outcomes
    counts = {k: sum(o == [k] for o in outcomes.values()) for k in ("completed", "failed", "cancelled")}
    rejected = sum(o[0] in ("rejected",) for o in outcomes.values())
    closed_any = sum(o[0] == "SchedulerClosed" for o in outcomes.values())
    stats = sched.statistics()
    assert (stats.completed, stats.failed, stats.cancelled) == (
        counts["completed"],
        counts["failed"],
        counts["cancelled"],
    )
    assert stats.rejected + stats.closed == rejected + closed_any
    assert (stats.waiting, stats.running) == (0, 0)
    assert sched._free == concurrency
    assert sched._queue.storage_size() == 0
    assert sched._by_request == {}
    assert all(p.fail is False for i, p in enumerate(workload) if outcomes[i] == ["completed"])


class KeyRecorder(Scheduler):
    """The default policy, recording each request's key and estimate in arrival order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[Request, float, Any]] = []

    def sort_key(self, job: Any) -> Any:
        key = super().sort_key(job)
        self.seen.append((job.request, job.estimate, key))
        return key


@pytest.mark.parametrize("async_backend", BACKENDS)
@SETTINGS
@given(
    cap=st.sampled_from([0.5, 1.0, 3.0]),
    aging=st.floats(0, 1),
    jobs=st.lists(
        st.tuples(st.integers(1, 900), st.floats(0, 2)),  # predicted tokens, arrival offset
        min_size=1,
        max_size=30,
    ),
)
def test_the_capped_key_is_the_estimate_capped_at_the_running_median(
    async_backend: str, cap: float, aging: float, jobs: list[tuple[int, float]]
) -> None:
    """Each key is (priority, min(estimate, cap x median of the estimates so far) + aging x
    submitted), and with every request present dispatch follows the keys."""

    async def main() -> tuple[KeyRecorder, list[Completion]]:
        sched = KeyRecorder(
            CallableBackend(sleeping_backend_fn),
            predictor=TablePredictor(),
            decode_rate=10.0,
            learn_rates=False,
            cap=cap,
            aging=aging,
        )
        done: list[Completion] = []
        release = anyio.Event()

        async def hold() -> None:
            async with sched.admit("blocker", metadata={"predicted": 0, "prompt_tokens": 0}):
                await release.wait()

        async def one(r: Request) -> None:
            done.append(await sched.complete(r))

        async with sched, anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await anyio.sleep(0.001)
            start = anyio.current_time()
            for predicted, offset in sorted(jobs, key=lambda j: j[1]):
                await anyio.sleep(max(0.0, start + offset - anyio.current_time()))
                tg.start_soon(one, job(predicted, metadata={"seconds": 1}))
            await anyio.sleep(3)
            release.set()
        return sched, done

    sched, done = run_virtual(main, async_backend)
    assert len(done) == len(jobs)
    estimates: list[float] = []
    keys: dict[int, Any] = {}
    for request, estimate, key in sched.seen:
        estimates.append(estimate)
        median = statistics.median_high(estimates[-200:])  # as the docs say
        submitted = next((c.submitted for c in done if c.request is request), None)
        if submitted is None:  # the blocker
            continue
        assert key == (0, min(estimate, cap * median) + aging * submitted)
        keys[id(request)] = key
    for a in done:
        for b in done:
            if keys[id(a.request)] < keys[id(b.request)]:
                assert a.started <= b.started
