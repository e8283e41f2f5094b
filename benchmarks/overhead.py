"""Scheduler overhead per request, with an instant backend, at several queue depths.

For each depth D, one request holds the only slot while D requests queue up
(each caller a task: predict, estimate, key, heap push, wait); then the slot
is released and all D are dispatched and served by a backend that answers at
once (heap pop, grant, stream one chunk, completion, statistics).  The time
of the whole cycle, less that of releasing the request that held the slot,
divided by D is the cost per request at that depth (cycles are repeated until
at least 2,000 requests were timed).  The
same cycle without a scheduler (D tasks wait on one event, then read the
backend directly) is the baseline of the event loop's own task costs; the
difference is the scheduler's overhead.  The predictor is ConstantPredictor
so only the scheduler is measured (the predictor's own cost is in
benchmarks/predictor.py).  Times are the process's CPU time
(``time.process_time``), which other programs on a busy machine disturb far
less than wall-clock time; the event loop never sleeps here, so the two agree
on a quiet machine.  Memory is the peak traced allocation per waiting
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
from sjfsched._cli import at_least_one, machine_summary
from sjfsched.predictors import ConstantPredictor


class InstantBackend:
    """Answers every request at once with one chunk."""

    async def stream(self, request: Request, /) -> AsyncIterator[Chunk]:
        yield Chunk("ok")

    async def aclose(self) -> None:
        pass


async def baseline(depth: int, rounds: int, trace_memory: bool) -> tuple[float, float]:
    """The same tasks and backend calls, with no scheduler in between."""
    backend = InstantBackend()
    requests = [Request(f"request {i}", max_tokens=1 + i % 500) for i in range(depth)]
    bytes_per_request = float("nan")
    busy = 0.0
    for _ in range(rounds):
        release = anyio.Event()
        started = 0

        async def one(r: Request, release: anyio.Event = release) -> None:
            nonlocal started
            started += 1
            await release.wait()
            async for _ in backend.stream(r):
                pass

        async with anyio.create_task_group() as tg:
            if trace_memory:
                tracemalloc.start()
            t0 = time.process_time()
            for r in requests:
                tg.start_soon(one, r)
            while started < depth:
                await anyio.lowlevel.checkpoint()
            if trace_memory:
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                bytes_per_request = peak / depth
            release.set()
        busy += time.process_time() - t0
    return busy / (depth * rounds), bytes_per_request


async def cycle(depth: int, rounds: int, trace_memory: bool) -> tuple[float, float]:
    """CPU seconds per request and bytes per waiting request, over ``rounds`` fill-and-drain cycles.

    With ``depth=0`` it times only the release of the request holding the slot, which the
    caller subtracts.
    """
    sched = Scheduler(InstantBackend(), predictor=ConstantPredictor())
    requests = [Request(f"request {i}", max_tokens=1 + i % 500) for i in range(depth)]
    bytes_per_request = float("nan")
    busy = 0.0
    async with sched:
        for _ in range(rounds):
            release = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def hold(release: anyio.Event = release) -> None:
                    async with sched.admit("blocker"):
                        await release.wait()

                tg.start_soon(hold)
                while sched.statistics().running < 1:
                    await anyio.lowlevel.checkpoint()
                if trace_memory:
                    tracemalloc.start()
                t0 = time.process_time()
                for r in requests:
                    tg.start_soon(sched.complete, r)
                while sched.statistics().waiting < depth:
                    await anyio.lowlevel.checkpoint()
                if trace_memory:
                    _, peak = tracemalloc.get_traced_memory()
                    tracemalloc.stop()
                    bytes_per_request = peak / depth
                release.set()
            busy += time.process_time() - t0
    assert sched.statistics().completed == (depth + 1) * rounds
    return busy / (max(depth, 1) * rounds), bytes_per_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=at_least_one, nargs="+", default=[1, 100, 10_000, 100_000])
    parser.add_argument(
        "--repeat", type=at_least_one, default=3, help="cycles per depth; the median is shown"
    )
    parser.add_argument("--backends", nargs="+", choices=["asyncio", "trio"], default=["asyncio", "trio"])
    parser.add_argument("--memory", action="store_true", help="also trace memory (slow at 100,000)")
    args = parser.parse_args()
    print(f"machine: {machine_summary()}")
    print(
        f"{'loop':<8}{'depth':>9}{'total us/req':>14}{'no-scheduler':>14}{'scheduler':>11}"
        + (f"{'KiB/waiting':>13}" if args.memory else "")
    )
    for backend in args.backends:
        for depth in args.depths:
            rounds = max(1, 2000 // depth)  # at least 2,000 requests per measurement
            totals, bases = [], []
            for _ in range(args.repeat):
                gc.collect()
                holder = anyio.run(cycle, 0, rounds, False, backend=backend)[0] / depth
                gc.collect()
                totals.append(anyio.run(cycle, depth, rounds, False, backend=backend)[0] - holder)
                gc.collect()
                bases.append(anyio.run(baseline, depth, rounds, False, backend=backend)[0])
            total, base = statistics.median(totals), statistics.median(bases)
            line = (
                f"{backend:<8}{depth:>9,}{total * 1e6:>14.1f}{base * 1e6:>14.1f}{(total - base) * 1e6:>11.1f}"
            )
            if args.memory:
                memory = anyio.run(cycle, depth, 1, True, backend=backend)[1]
                memory -= anyio.run(baseline, depth, 1, True, backend=backend)[1]
                line += f"{memory / 1024:>13.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
