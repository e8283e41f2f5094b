"""BackendPool: slots, first free slot, health, back-off and the fail-over rule, on real servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from llama_cpp import Llama

from sjfsched import BackendError, Chunk, Request, Scheduler
from sjfsched.backends import BackendPool, BackendUnavailable, LlamaCppBackend, OllamaBackend
from sjfsched.predictors import ConstantPredictor
from tests.support.models import free_port
from tests.support.ollama_server import OllamaServer, running_ollama_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def server(tiny_path: Path) -> Iterator[OllamaServer]:
    with running_ollama_server({"tiny": tiny_path}) as server:
        yield server


@pytest.fixture
def server_b(tiny_path: Path) -> Iterator[OllamaServer]:
    with running_ollama_server({"tiny": tiny_path}) as server:
        yield server


def dead_backend() -> OllamaBackend:
    """An Ollama backend whose port nothing listens on."""
    return OllamaBackend("tiny", f"http://127.0.0.1:{free_port()}", connect_timeout=2)


async def collect(pool: BackendPool, request: Request) -> list[Chunk]:
    with anyio.fail_after(60):
        return [chunk async for chunk in pool.stream(request)]


def test_slots_add_up_and_become_the_schedulers_concurrency() -> None:
    pool = BackendPool([(OllamaBackend("a"), 2), OllamaBackend("b", slots=3)])
    assert pool.slots == 5
    assert Scheduler(pool).concurrency == 5
    with pytest.raises(ValueError, match="at least one"):
        BackendPool([])
    with pytest.raises(ValueError, match="slots"):
        BackendPool([(OllamaBackend("a"), 0)])
    with pytest.raises(TypeError, match=r"object has no stream\(\)"):
        BackendPool([object()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="retry_after"):
        BackendPool([OllamaBackend("a")], retry_after=-1)


async def test_requests_fill_the_first_free_slots(tiny_path: Path) -> None:
    with (
        running_ollama_server({"tiny": tiny_path}, num_parallel=2) as a,
        running_ollama_server({"tiny": tiny_path}) as b,
    ):
        slow = {"X-Test-Fault": "stall:1:0.5"}  # each request holds its slot half a second
        pool = BackendPool(
            [(OllamaBackend("tiny", a.url, headers=slow), 2), (OllamaBackend("tiny", b.url, headers=slow), 1)]
        )
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(collect, pool, Request(f"Job {i}", max_tokens=3))
        assert (len(a.records), len(b.records)) == (2, 1)
        assert a.max_running == 2
        # Alone, a request takes the first backend in the list.
        await collect(pool, Request("Alone", max_tokens=3))
        assert (len(a.records), len(b.records)) == (3, 1)
        stats = pool.statistics()
        assert [m.served for m in stats.members] == [3, 1]
        assert stats.busy == 0
        await pool.aclose()


async def test_fails_over_when_nothing_was_streamed(server: OllamaServer) -> None:
    pool = BackendPool([dead_backend(), OllamaBackend("tiny", server.url)], retry_after=30)
    for i in range(4):
        chunks = await collect(pool, Request(f"Hi {i}", max_tokens=4))
        assert sum(c.tokens for c in chunks) == 4
    stats = pool.statistics()
    dead, live = stats.members
    assert (dead.healthy, dead.failures, live.healthy, live.served) == (False, 1, True, 4)
    assert 25 < dead.retry_in <= 30  # out of rotation: the later requests did not try it
    assert stats.failovers == 1
    assert stats.healthy_slots == 1
    assert len(server.records) == 4
    await pool.aclose()


async def test_back_off_doubles_and_a_probe_brings_a_backend_back(
    server: OllamaServer, tiny_path: Path
) -> None:
    port = free_port()
    pool = BackendPool(
        [OllamaBackend("tiny", f"http://127.0.0.1:{port}"), OllamaBackend("tiny", server.url)],
        retry_after=2.0,  # long against the real generation between failure and reading (a busy CI)
    )
    await collect(pool, Request("one", max_tokens=2))
    first = pool.statistics().members[0]
    assert (first.healthy, first.failures) == (False, 1)
    assert 1.0 < first.retry_in <= 2.0
    await anyio.sleep(2.05)
    await collect(pool, Request("two", max_tokens=2))  # probes the dead one, fails, fails over
    second = pool.statistics().members[0]
    assert second.failures == 2
    assert 3.0 < second.retry_in <= 4.0  # the back-off doubled
    # The server comes up on that port; after the back-off a probe finds it.
    with running_ollama_server({"tiny": tiny_path}, port=port) as revived:
        await anyio.sleep(4.05)
        await collect(pool, Request("three", max_tokens=2))
        back = pool.statistics().members[0]
        assert (back.healthy, back.failures) == (True, 0)
        assert len(revived.records) == 1
    await pool.aclose()


async def test_no_replay_after_text_was_streamed(server: OllamaServer, server_b: OllamaServer) -> None:
    faulty = OllamaBackend("tiny", server.url, headers={"X-Test-Fault": "close:3"})
    pool = BackendPool([faulty, OllamaBackend("tiny", server_b.url)], retry_after=30)
    received: list[Chunk] = []

    async def read() -> None:
        async for chunk in pool.stream(Request("Story", max_tokens=20)):
            received.append(chunk)  # noqa: PERF401 - kept when the stream fails

    with pytest.raises(BackendUnavailable, match=r"broke mid-response"):
        await read()
    assert len(received) == 3
    assert server_b.records == []  # nothing was replayed elsewhere
    assert pool.statistics().members[0].healthy is False
    # The next request goes to the healthy one.
    await collect(pool, Request("Next", max_tokens=2))
    assert len(server_b.records) == 1
    await pool.aclose()


async def test_request_errors_neither_fail_over_nor_mark_a_backend_down(
    server: OllamaServer, server_b: OllamaServer
) -> None:
    pool = BackendPool([OllamaBackend("missing", server.url), OllamaBackend("tiny", server_b.url)])
    with pytest.raises(BackendError, match="model 'missing' not found") as info:
        await collect(pool, Request("Hi"))
    assert info.value.status_code == 404
    assert server_b.records == []
    assert all(m.healthy for m in pool.statistics().members)
    await pool.aclose()


async def test_a_request_the_backend_refuses_itself_is_no_probe_answer(server: OllamaServer) -> None:
    # Refused before anything was sent (an option Ollama would answer 500 for), it was taken for
    # the down server's answer: back in rotation, its back-off reset, the next request sent there.
    pool = BackendPool([dead_backend(), OllamaBackend("tiny", server.url)], retry_after=0.3, failover=False)
    with pytest.raises(BackendUnavailable):
        await collect(pool, Request("one", max_tokens=2))
    await anyio.sleep(0.35)  # due for a probe
    with pytest.raises(BackendError, match="option 'temperature' must be of type float32") as info:
        await collect(pool, Request("two", max_tokens=2, options={"temperature": "hot"}))
    assert info.value.sent is False
    dead = pool.statistics().members[0]
    assert (dead.healthy, dead.failures) == (False, 1)
    with pytest.raises(BackendUnavailable):  # still due: the next request is the probe, and fails
        await collect(pool, Request("three", max_tokens=2))
    dead = pool.statistics().members[0]
    assert (dead.healthy, dead.failures) == (False, 2)
    assert server.records == []
    await pool.aclose()


async def test_an_option_json_cannot_carry_is_refused_before_sending(server: OllamaServer) -> None:
    # httpx's own ValueError ("Out of range float values") reached the caller, and a pool took it
    # for the server's answer.
    backend = OllamaBackend("tiny", server.url)
    with pytest.raises(BackendError, match=r"cannot be sent as JSON .*Out of range float") as info:
        await collect(BackendPool([backend]), Request("x", options={"temperature": float("nan")}))
    assert info.value.sent is False
    assert server.records == []
    await backend.aclose()


async def test_when_every_backend_is_down_requests_fail_fast() -> None:
    pool = BackendPool([dead_backend(), dead_backend()], retry_after=60)
    with pytest.raises(BackendUnavailable, match="cannot connect"):
        await collect(pool, Request("first"))  # tried both, got the last error
    with anyio.fail_after(1):
        with pytest.raises(BackendUnavailable, match="out of rotation"):
            await collect(pool, Request("second"))
    assert pool.statistics().healthy_slots == 0
    await pool.aclose()


async def test_a_down_backends_slots_are_not_given_to_the_others(server: OllamaServer) -> None:
    """Scheduler concurrency 2, one slot down: the healthy backend never runs two at once."""
    slow = OllamaBackend("tiny", server.url, headers={"X-Test-Fault": "stall:1:0.2"})
    pool = BackendPool([dead_backend(), slow], retry_after=60)
    async with Scheduler(pool, predictor=ConstantPredictor()) as sched:
        assert sched.concurrency == 2
        results: list[int] = []

        async def one(i: int) -> None:
            completion = await sched.complete(f"Job {i}", max_tokens=3)
            results.append(completion.output_tokens)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(one, i)
    assert results == [3, 3, 3, 3]
    assert server.max_running == 1
    assert pool.statistics().busy == 0


async def test_cancelled_while_waiting_in_the_pool_leaves_nothing_behind(server: OllamaServer) -> None:
    slow = OllamaBackend("tiny", server.url, headers={"X-Test-Fault": "stall:1:0.5"})
    pool = BackendPool([slow])
    async with anyio.create_task_group() as tg:
        tg.start_soon(collect, pool, Request("holder", max_tokens=3))
        await anyio.sleep(0.1)
        with anyio.move_on_after(0.1) as scope:
            await collect(pool, Request("waiter", max_tokens=3))
        assert scope.cancelled_caught
        assert pool.statistics().busy == 1
    assert pool.statistics().busy == 0
    assert len(server.records) == 1  # the waiter never reached the server
    await pool.aclose()  # its connection is kept for the next request until then


async def test_mixed_in_process_and_http_backends(tiny_llm: Llama, server: OllamaServer) -> None:
    pool = BackendPool([LlamaCppBackend(tiny_llm), OllamaBackend("tiny", server.url)])
    async with Scheduler(pool, predictor=ConstantPredictor()) as sched:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(sched.complete, Request(f"Job {i}", max_tokens=5))
        stats = sched.statistics()
    assert (stats.completed, stats.failed) == (6, 0)
    served = [m.served for m in pool.statistics().members]
    assert sum(served) == 6
    assert all(n > 0 for n in served)  # both backends worked
