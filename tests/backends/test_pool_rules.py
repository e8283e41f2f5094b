"""BackendPool's rules with in-process backends: back-off arithmetic, queue order, closing."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import pytest

from sjfsched import Chunk, Request, Scheduler
from sjfsched.backends import BackendPool, BackendUnavailable, CallableBackend

pytestmark = pytest.mark.anyio


async def collect(pool: BackendPool, request: Request) -> list[Chunk]:
    with anyio.fail_after(30):
        return [chunk async for chunk in pool.stream(request)]


def down(request: Request) -> str:
    raise BackendUnavailable("connection refused")


async def test_a_long_outage_never_overflows_the_back_off() -> None:
    """Past 1,024 failures 2**n overflowed a float: every request then failed with OverflowError."""
    pool = BackendPool(
        [CallableBackend(down, in_thread=False), CallableBackend(lambda r: "ok", in_thread=False)],
        retry_after=0.0,
    )
    for i in range(1_100):
        assert "".join(c.text for c in await collect(pool, Request(f"q{i}"))) == "ok"
    dead = pool.statistics().members[0]
    assert dead.failures == 1_100 and not dead.healthy
    assert pool.statistics().failovers == 1_100


async def test_one_outage_of_a_busy_backend_is_one_failure() -> None:
    """Four requests running on a 4-slot server that goes away: out for retry_after, not 2**3 times it."""
    gone = anyio.Event()

    async def server(request: Request) -> Any:
        await gone.wait()
        raise BackendUnavailable("connection reset")

    pool = BackendPool([CallableBackend(server, slots=4)], retry_after=5.0, failover=False)
    failures: list[BaseException] = []

    async def one(i: int) -> None:
        try:
            await collect(pool, Request(f"q{i}"))
        except BackendUnavailable as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(one, i)
        await anyio.wait_all_tasks_blocked()
        gone.set()
    assert len(failures) == 4
    (member,) = pool.statistics().members
    assert member.failures == 1
    assert 4.0 < member.retry_in <= 5.0


async def test_waiting_requests_get_slots_in_the_order_they_came() -> None:
    """On trio the event loop wakes waiters in any order; the pool hands slots out first come first served."""
    for _ in range(10):
        await _serve_five_in_order()


async def _serve_five_in_order() -> None:
    release = anyio.Event()
    served: list[str] = []

    async def server(request: Request) -> str:
        served.append(request.text)
        await release.wait()
        return "ok"

    pool = BackendPool([CallableBackend(server)])
    async with anyio.create_task_group() as tg:
        for name in ("hold", "r1", "r2", "r3", "r4"):
            tg.start_soon(collect, pool, Request(name))
            await anyio.wait_all_tasks_blocked()  # each is queued before the next comes
        release.set()
    assert served == ["hold", "r1", "r2", "r3", "r4"]


async def test_aclose_closes_every_backend_even_when_one_fails() -> None:
    closed: list[str] = []

    class Closing:
        slots = 1

        def __init__(self, name: str, fails: bool = False) -> None:
            self.name, self.fails = name, fails

        async def stream(self, request: Request) -> Any:
            yield Chunk("x")

        async def aclose(self) -> None:
            closed.append(self.name)
            if self.fails:
                raise OSError(f"{self.name}: error closing the connection pool")

    pool = BackendPool([Closing("a", fails=True), Closing("b"), Closing("c", fails=True)])
    with pytest.raises(OSError, match="a: error closing"):
        await pool.aclose()
    assert closed == ["a", "b", "c"]


class _StreamOnly:
    """Streams, but cannot be closed."""

    slots = 1

    async def stream(self, request: Request) -> Any:
        yield Chunk("hi")


def test_a_member_without_aclose_is_refused_as_the_scheduler_refuses_it() -> None:
    """It was taken, and closing the pool (the scheduler's close) ended in AttributeError after the work."""
    with pytest.raises(TypeError, match=r"^backend must have .* _StreamOnly has no aclose\(\)$") as scheduler:
        Scheduler(_StreamOnly())  # type: ignore[arg-type]
    with pytest.raises(TypeError) as pool:
        BackendPool([CallableBackend(lambda r: "ok"), (_StreamOnly(), 2)])  # type: ignore[list-item]
    assert str(pool.value) == str(scheduler.value)


@pytest.mark.parametrize(
    ("answer", "name"),
    [
        ({"id": "cmpl-1", "choices": [{"text": "hi"}]}, "dict"),
        (b"hi", "bytes"),
        (bytearray(b"hi"), "bytearray"),
    ],
)
async def test_a_callable_returning_a_mapping_or_bytes_is_refused(answer: object, name: str) -> None:
    """Both are iterable: a dict streamed its keys as text, bytes failed on their first int."""
    backend = CallableBackend(lambda request: answer, in_thread=False)  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match=f"returned {name}; expected str, Chunk"):
        async for _ in backend.stream(Request("x")):
            pass


@pytest.mark.parametrize("rate", [None, "30", True, 0, float("nan")])
def test_simulated_backend_names_a_bad_rate(rate: object) -> None:
    from sjfsched.backends import SimulatedBackend

    for name in ("prefill_rate", "decode_rate"):
        with pytest.raises(ValueError, match=f"{name} must be a positive number"):
            SimulatedBackend(**{name: rate})  # type: ignore[arg-type]


async def test_a_waiter_probes_a_backend_that_went_down_while_it_waited() -> None:
    """W waits (both busy, both in rotation); X's backend then fails: W must wake when it is due."""
    calls = 0
    release = anyio.Event()

    async def flaky(request: Request) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep(0.1)
            raise BackendUnavailable("connection lost")
        return "ok"

    async def slow(request: Request) -> str:
        await release.wait()
        return "slow"

    pool = BackendPool([CallableBackend(flaky), CallableBackend(slow)], retry_after=0.2, failover=False)
    started = anyio.current_time()
    served: dict[str, float] = {}
    w_served = anyio.Event()

    async def one(name: str, delay: float) -> None:
        await anyio.sleep(delay)
        with contextlib.suppress(BackendUnavailable):
            await collect(pool, Request(name))
            served[name] = anyio.current_time() - started
            if name == "W":
                w_served.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "X", 0.0)  # the first backend: fails after 0.1 s, out for 0.2 s
        tg.start_soon(one, "L", 0.01)  # the second: held until released
        tg.start_soon(one, "W", 0.05)  # waits; due to probe the first at about 0.3 s
        with anyio.fail_after(5):
            await w_served.wait()
        release.set()
    assert served["W"] < 1.0


def test_simulated_backend_takes_numpy_rates() -> None:
    import numpy as np

    from sjfsched.backends import SimulatedBackend

    backend = SimulatedBackend(prefill_rate=np.float32(500), decode_rate=np.int64(30))
    assert (backend.prefill_rate, backend.decode_rate) == (500.0, 30.0)


def test_a_wait_inside_the_pool_is_not_learnt_as_prompt_evaluation() -> None:
    """With a backend out of rotation the scheduler starts more requests than the pool can serve."""
    from sjfsched import Scheduler, run_virtual
    from sjfsched.backends import SimulatedBackend

    def down_async(request: Request) -> str:
        raise BackendUnavailable("connection refused")

    async def learnt(pool: BackendPool) -> float:
        async with Scheduler(pool) as sched, anyio.create_task_group() as tg:
            for _ in range(20):
                request = Request("x" * 400, metadata={"output_tokens": 20, "prompt_tokens": 100})
                tg.start_soon(sched.complete, request)
        return sched.rates.prefill_rate

    async def main() -> tuple[float, float]:
        def simulated() -> SimulatedBackend:
            return SimulatedBackend(prefill_rate=1000, decode_rate=50)

        alone = await learnt(BackendPool([simulated()]))
        with_a_dead_one = await learnt(
            BackendPool([simulated(), CallableBackend(down_async, in_thread=False)], retry_after=1000)
        )
        return alone, with_a_dead_one

    alone, with_a_dead_one = run_virtual(main)
    assert with_a_dead_one == pytest.approx(alone, rel=0.01)


@pytest.mark.parametrize("second", ["asyncio", "trio"])
def test_a_back_off_timed_on_an_earlier_event_loop_is_due_on_the_next(second: str) -> None:
    """trio's clock starts at a random offset in each run: a deadline from the last run means nothing."""
    pool = BackendPool([CallableBackend(down, in_thread=False)], retry_after=3600.0)

    async def fail_once() -> None:
        with pytest.raises(BackendUnavailable):
            await collect(pool, Request("x"))

    anyio.run(fail_once, backend="trio")

    async def retry_in() -> float:
        return pool.statistics().members[0].retry_in

    assert anyio.run(retry_in, backend=second) == 0.0


def test_statistics_outside_an_event_loop_says_so() -> None:
    """It raised trio's "must be called from async context", or ModuleNotFoundError without trio."""
    pool = BackendPool([CallableBackend(down, in_thread=False)])
    with pytest.raises(RuntimeError, match=r"BackendPool\.statistics\(\) must be called in an event loop"):
        pool.statistics()


@pytest.mark.parametrize("second", ["asyncio", "trio"])
def test_statistics_under_another_event_loop_change_nothing(second: str) -> None:
    """Reading the statistics from another loop (a metrics thread's) reset every back-off."""
    pool = BackendPool([CallableBackend(down, in_thread=False)], retry_after=3600.0)

    async def fail_once() -> float | None:
        with pytest.raises(BackendUnavailable):
            await collect(pool, Request("x"))
        return pool._members[0].down_until

    down_until = anyio.run(fail_once, backend="trio")
    assert down_until is not None

    async def read() -> float:
        return pool.statistics().members[0].retry_in

    assert anyio.run(read, backend=second) == 0.0  # shown due, as the pool would take it there
    assert pool._members[0].down_until == down_until  # and left as it was


async def test_an_answer_begun_before_an_outage_does_not_bring_its_backend_back() -> None:
    """A server finishing old work while it refuses new (a full queue: 503, Retry-After 30): the old
    answer's first token put it back in rotation at once, the next request got 503 again."""
    release, refused = anyio.Event(), anyio.Event()
    calls: list[str] = []

    async def server(request: Request) -> Any:
        calls.append(request.text)
        if request.text == "old":
            await release.wait()
            return "done"
        refused.set()
        error = BackendUnavailable("503: queue full")
        error.retry_after = 30.0
        raise error

    pool = BackendPool([(CallableBackend(server), 2)], failover=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(collect, pool, Request("old"))
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(BackendUnavailable):
            await collect(pool, Request("new"))
        assert not pool.statistics().members[0].healthy
        release.set()
    member = pool.statistics().members[0]
    assert not member.healthy and member.retry_in > 25 and member.failures == 1
    with pytest.raises(BackendUnavailable, match="out of rotation"):
        await collect(pool, Request("next"))
    assert calls == ["old", "new"]  # the next one never reached the refusing server


async def test_with_every_backend_out_of_rotation_a_request_fails_at_once_while_a_probe_runs() -> None:
    """Others waited for the probe, up to its read timeout (300 s by default), holding their slots."""
    hang = anyio.Event()
    probing = anyio.Event()

    async def slow(request: Request) -> Any:
        if request.text.startswith("fail"):
            raise BackendUnavailable("connection refused")
        probing.set()
        await hang.wait()
        return "back"

    pool = BackendPool([(CallableBackend(slow), 2)], retry_after=0.0)
    with pytest.raises(BackendUnavailable):
        await collect(pool, Request("fail first"))  # out of rotation, due again at once
    async with anyio.create_task_group() as tg:
        tg.start_soon(collect, pool, Request("probe"))
        await probing.wait()
        with anyio.fail_after(5):
            with pytest.raises(BackendUnavailable, match="out of rotation"):
                [chunk async for chunk in pool.stream(Request("waits?"))]
        hang.set()


def test_the_same_backend_listed_twice_is_refused() -> None:
    backend = CallableBackend(lambda r: "ok")
    with pytest.raises(ValueError, match="listed twice: give it more slots"):
        BackendPool([(backend, 1), (backend, 1)])


@pytest.mark.parametrize("failover", ["no", 0, None])
def test_failover_must_be_a_bool(failover: object) -> None:
    # "no" was taken as true: the pool failed over all the same.
    with pytest.raises(TypeError, match=rf"failover must be True or False, got {failover!r}"):
        BackendPool([CallableBackend(lambda r: "ok")], failover=failover)  # type: ignore[arg-type]
