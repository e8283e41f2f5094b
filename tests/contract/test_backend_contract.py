"""Every Backend in the package keeps the same promises, driven by a real Scheduler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from sjfsched import Chunk, Request, Scheduler
from sjfsched.backends import Backend
from sjfsched.predictors import ConstantPredictor

from .cases import BACKEND_CASES, BackendCase

pytestmark = pytest.mark.anyio


@pytest.fixture(params=BACKEND_CASES, ids=lambda c: c.id)
def case(request: pytest.FixtureRequest) -> BackendCase:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def backend(case: BackendCase, tmp_path: Path) -> AsyncIterator[Backend]:
    async with case.make(tmp_path) as backend:
        yield backend


async def test_is_a_backend(backend: Backend) -> None:
    assert isinstance(backend, Backend)


async def test_stream_yields_chunks_within_max_tokens(case: BackendCase, backend: Backend) -> None:
    chunks: list[Chunk] = []
    with anyio.fail_after(60):
        async for chunk in backend.stream(Request("Once upon a time", max_tokens=6)):
            assert isinstance(chunk, Chunk)
            chunks.append(chunk)
    total = sum(c.tokens for c in chunks)
    assert 1 <= total <= 6
    reasons = [c.finish_reason for c in chunks if c.finish_reason is not None]
    if case.exact_max_tokens and reasons and reasons[-1] == "length":
        assert total == 6


async def test_complete_through_scheduler(backend: Backend) -> None:
    async with Scheduler(backend, predictor=ConstantPredictor()) as sched:
        with anyio.fail_after(60):
            async with sched.stream("Once upon a time", max_tokens=5) as chunks:
                seen = [chunk async for chunk in chunks]
        completion = chunks.completion
        assert completion.text == "".join(c.text for c in seen)
        assert completion.output_tokens == sum(c.tokens for c in seen)
        assert completion.submitted <= completion.started <= completion.finished
        if completion.first_token is not None:
            assert completion.started <= completion.first_token <= completion.finished
        stats = sched.statistics()
        assert (stats.completed, stats.failed, stats.running, stats.waiting) == (1, 0, 0, 0)


async def test_chat_request(case: BackendCase, backend: Backend) -> None:
    if not case.chat:
        pytest.skip(f"{case.id} has no chat endpoint")
    async with Scheduler(backend, predictor=ConstantPredictor()) as sched:
        with anyio.fail_after(60):
            completion = await sched.complete(
                messages=[{"role": "user", "content": "Say hello."}], max_tokens=4
            )
    assert 1 <= completion.output_tokens <= 4


async def test_leaving_early_frees_the_backend(backend: Backend) -> None:
    async with Scheduler(backend, predictor=ConstantPredictor()) as sched:
        with anyio.fail_after(60):
            async with sched.stream("Once upon a time", max_tokens=20) as chunks:
                async for _ in chunks:
                    break
            completion = await sched.complete("Once upon a time", max_tokens=3)
        assert 1 <= completion.output_tokens <= 3
        stats = sched.statistics()
        assert (stats.cancelled, stats.completed, stats.running) == (1, 1, 0)


async def test_cancelling_the_caller_mid_stream(backend: Backend) -> None:
    async with Scheduler(backend, predictor=ConstantPredictor()) as sched:
        with anyio.CancelScope() as scope:
            async with sched.stream("Once upon a time", max_tokens=20) as chunks:
                async for _ in chunks:
                    scope.cancel()
                    await anyio.lowlevel.checkpoint()
        assert scope.cancelled_caught
        with anyio.fail_after(60):
            completion = await sched.complete("Once upon a time", max_tokens=3)
        assert completion.output_tokens >= 1
        stats = sched.statistics()
        assert (stats.cancelled, stats.completed, stats.running, stats.waiting) == (1, 1, 0, 0)


async def test_many_callers_all_answered(backend: Backend) -> None:
    results: dict[int, int] = {}
    async with Scheduler(backend, predictor=ConstantPredictor()) as sched:

        async def one(i: int) -> None:
            completion = await sched.complete(f"Story number {i}:", max_tokens=3 + i % 3)
            results[i] = completion.output_tokens

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(one, i)
        stats = sched.statistics()
    assert sorted(results) == list(range(6))
    assert all(1 <= n <= 3 + i % 3 for i, n in results.items())
    assert (stats.completed, stats.failed, stats.cancelled) == (6, 0, 0)
