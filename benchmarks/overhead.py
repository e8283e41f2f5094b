"""Scheduler overhead per request, with an instant backend, at several queue depths.

For each depth D, one request holds the only slot while D requests queue up
(each caller a task: predict, estimate, key, heap push, wait); then the slot
is released and all D are dispatched and served by a backend that answers at
once (heap pop, grant, stream one chunk, completion, statistics).  The time
of the whole cycle divided by D is the cost per request at that depth.  The
same cycle without a scheduler (D tasks wait on one event, then read the
backend directly) is the baseline of the event loop's own task costs; the
difference is the scheduler's overhead.  The predictor is ConstantPredictor
so only the scheduler is measured (the predictor's own cost is in
benchmarks/predictor.py).  Memory is the peak traced allocation per waiting
request, baseline subtracted.

    python benchmarks/overhead.py [--depths 1 100 10000 100000] [--repeat 3] [--memory]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel

from sjfsched import Chunk, Request, Scheduler
from sjfsched.predictors import ConstantPredictor


class InstantBackend:
    """Answers every request at once with one chunk."""

    async def stream(self, request: Request, /) -> AsyncIterator[Chunk]:
        yield Chunk("ok")

    async def aclose(self) -> None:
        pass


async def baseline(depth: int, trace_memory: bool) -> tuple[float, float]:
    """The same tasks and backend calls, with no scheduler in between."""
    backend = InstantBackend()
    requests = [Request(f"request {i}", max_tokens=1 + i % 500) for i in range(depth)]
    release = anyio.Event()
    bytes_per_request = float("nan")
    started = 0

    async def one(r: Request) -> None:
        nonlocal started
        started += 1
        await release.wait()
        async for _ in backend.stream(r):
            pass

    async with anyio.create_task_group() as tg:
        if trace_memory:
            tracemalloc.start()
        t0 = time.perf_counter()
        for r in requests:
            tg.start_soon(one, r)
        while started < depth:
            await anyio.lowlevel.checkpoint()
        if trace_memory:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            bytes_per_request = peak / depth
        release.set()
    elapsed = time.perf_counter() - t0
    return elapsed / depth, bytes_per_request


async def cycle(depth: int, trace_memory: bool) -> tuple[float, float]:
    """Seconds per request and bytes per waiting request for one fill-and-drain cycle."""
    sched = Scheduler(InstantBackend(), predictor=ConstantPredictor())
    requests = [Request(f"request {i}", max_tokens=1 + i % 500) for i in range(depth)]
    release = anyio.Event()
    bytes_per_request = float("nan")
    async with sched:
        async with anyio.create_task_group() as tg:

            async def hold() -> None:
                async with sched.admit("blocker"):
                    await release.wait()

            tg.start_soon(hold)
            await anyio.lowlevel.checkpoint()
            if trace_memory:
                tracemalloc.start()
            t0 = time.perf_counter()
            for r in requests:
                tg.start_soon(sched.complete, r)
            while sched.statistics().waiting < depth:
                await anyio.lowlevel.checkpoint()
            if trace_memory:
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                bytes_per_request = peak / depth
            release.set()
        elapsed = time.perf_counter() - t0
    assert sched.statistics().completed == depth + 1
    return elapsed / depth, bytes_per_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 100, 10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3, help="cycles per depth; the median is shown")
    parser.add_argument("--backends", nargs="+", default=["asyncio", "trio"])
    parser.add_argument("--memory", action="store_true", help="also trace memory (slow at 100,000)")
    args = parser.parse_args()
    print(
        f"{'loop':<8}{'depth':>9}{'total us/req':>14}{'no-scheduler':>14}{'scheduler':>11}"
        + (f"{'KiB/waiting':>13}" if args.memory else "")
    )
    for backend in args.backends:
        for depth in args.depths:
            repeat = max(args.repeat, 1000 // depth)
            totals, bases = [], []
            for _ in range(repeat):
                gc.collect()
                totals.append(anyio.run(cycle, depth, False, backend=backend)[0])
                gc.collect()
                bases.append(anyio.run(baseline, depth, False, backend=backend)[0])
            total, base = statistics.median(totals), statistics.median(bases)
            line = (
                f"{backend:<8}{depth:>9,}{total * 1e6:>14.1f}{base * 1e6:>14.1f}{(total - base) * 1e6:>11.1f}"
            )
            if args.memory:
                memory = anyio.run(cycle, depth, True, backend=backend)[1]
                memory -= anyio.run(baseline, depth, True, backend=backend)[1]
                line += f"{memory / 1024:>13.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
