"""``sjfsched demo``: first-come-first-served against sjfsched on a real trace.

The bundled trace holds 120 real prompts with the real length of a real
answer (OpenAssistant OASST1 and Arena-Hard v0.1 answered by
llama-3.1-8b-instruct; both Apache-2.0).  The demo replays them through a
simulated serial model server in virtual time, once in arrival order and once
through a default :class:`~sjfsched.Scheduler`, and prints the latencies.
No model is needed; it takes a few seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from importlib import resources
from typing import Final

import anyio
import attrs

from ._records import Request
from ._scheduler import Scheduler
from ._virtual import run_virtual
from .backends import SimulatedBackend
from .predictors import ConstantPredictor, Predictor
from .predictors._base import LONG_TOKENS, SHORT_TOKENS

__all__ = ["configure", "load_demo_trace", "run"]

SHORT, LONG = SHORT_TOKENS, LONG_TOKENS


def load_demo_trace() -> list[Request]:
    """The bundled trace as requests; the true answer length is in ``metadata``."""
    text = resources.files("sjfsched").joinpath("data/demo_trace.jsonl").read_text("utf-8")
    requests = []
    for line in text.splitlines():
        record = json.loads(line)
        requests.append(
            Request(
                record["prompt"],
                metadata={"output_tokens": record["output_tokens"], "source": record["source"]},
            )
        )
    return requests


@attrs.frozen
class _Result:
    latency: float
    wait: float
    output_tokens: int


async def _replay(
    requests: Sequence[Request],
    arrivals: Sequence[float],
    backend: SimulatedBackend,
    predictor: Predictor | None,
) -> list[_Result]:
    results: list[_Result] = []
    async with Scheduler(backend, predictor=predictor) as sched:

        async def one(request: Request) -> None:
            completion = await sched.complete(request)
            results.append(_Result(completion.latency, completion.wait, completion.output_tokens))

        async with anyio.create_task_group() as tg:
            start = anyio.current_time()
            # a chunk at each arrival, so that an answer can be paused for it (preempt=True) as
            # with a server streaming every token
            backend.chunk_after(start + at for at in arrivals)
            for request, at in zip(requests, arrivals, strict=True):
                delay = start + at - anyio.current_time()
                if delay > 0:
                    await anyio.sleep(delay)
                tg.start_soon(one, request)
    return results


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _summary(results: Sequence[_Result]) -> dict[str, float]:
    short = [r.latency for r in results if r.output_tokens < SHORT]
    long = [r.latency for r in results if r.output_tokens >= LONG]
    every = [r.latency for r in results]
    return {
        "short P50": _percentile(short, 0.5),
        "short P95": _percentile(short, 0.95),
        "all mean": sum(every) / len(every),
        "all P50": _percentile(every, 0.5),
        "long P95": _percentile(long, 0.95),
        "max wait": max(r.wait for r in results),
    }


#: The simulated server's rates the demo takes (tokens a second): beyond them its table
#: of seconds would not read (a burst at 0.001 tokens a second takes years).
MIN_RATE: Final = 0.1
#: The lowest Poisson load the demo and the benchmarks take: far lower, arrival times grow past
#: what a float resolves to the second (latencies came out in powers of two; 5e-324 divided by 0).
MIN_LOAD: Final = 0.01
MAX_RATE: Final = 1e6


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="arrival order and Poisson seed (default 0)")
    parser.add_argument(
        "--prefill-rate",
        type=float,
        default=2000.0,
        help="simulated prompt tokens per second (default 2000: an 8B model on a mid-range GPU)",
    )
    parser.add_argument(
        "--decode-rate",
        type=float,
        default=40.0,
        help="simulated output tokens per second (default 40)",
    )
    parser.add_argument(
        "--load",
        type=float,
        default=0.74,
        help="utilisation of the Poisson scenario, from 0.01 to below 1 (default 0.74, as in Clairvoyant)",
    )


def run(args: argparse.Namespace) -> int:
    if not MIN_LOAD <= args.load < 1.0:  # NaN fails this too
        print(f"sjfsched demo: --load must be within [{MIN_LOAD:g}, 1), got {args.load:g}", file=sys.stderr)
        return 2
    for option, value in (("--prefill-rate", args.prefill_rate), ("--decode-rate", args.decode_rate)):
        if not MIN_RATE <= value <= MAX_RATE:  # NaN fails this too
            print(
                f"sjfsched demo: {option} must be within [{MIN_RATE:g}, {MAX_RATE:g}] tokens a second, "
                f"got {value:g}",
                file=sys.stderr,
            )
            return 2
    trace = load_demo_trace()
    rng = random.Random(args.seed)
    backend = SimulatedBackend(prefill_rate=args.prefill_rate, decode_rate=args.decode_rate)
    backend.chunk_tokens = max(1, int(min(2 * backend.decode_rate, 1e9)))  # and at least every 2 s
    mean_service = sum(backend.service_time(r) for r in trace) / len(trace)

    burst = rng.sample(trace, 100)
    burst_arrivals = [0.0] * len(burst)
    steady = [rng.choice(trace) for _ in range(600)]
    rate = args.load / mean_service
    steady_arrivals, t = [], 0.0
    for _ in steady:
        t += rng.expovariate(rate)
        steady_arrivals.append(t)

    default_name = type(Scheduler().predictor).__name__
    print(
        f"sjfsched demo: {len(trace)} real prompts with real answer lengths "
        f"({sum(r.metadata['output_tokens'] < SHORT for r in trace)} short < {SHORT} tokens, "
        f"{sum(r.metadata['output_tokens'] >= LONG for r in trace)} long >= {LONG})"
    )
    print(
        f"simulated serial server: {args.prefill_rate:g} prompt tok/s, {args.decode_rate:g} output tok/s, "
        f"mean service {mean_service:.1f} s; virtual time"
    )
    note = (
        " (its bundled model was trained with these prompts held out)"
        if default_name == "LexicalPredictor"
        else ""
    )
    print(f"sjfsched predictor: {default_name}, the default{note}\n")
    scenarios = [
        (f"burst of {len(burst)} at once", burst, burst_arrivals),
        (f"Poisson arrivals, load {args.load:g} ({len(steady)} requests)", steady, steady_arrivals),
    ]
    for title, requests, arrivals in scenarios:
        fcfs = _summary(run_virtual(_replay, requests, arrivals, backend, ConstantPredictor()))
        sjf = _summary(run_virtual(_replay, requests, arrivals, backend, None))
        print(title)
        print(f"  {'seconds':<12}{'FCFS':>10}{'sjfsched':>10}{'change':>10}")
        for metric in fcfs:
            a, b = fcfs[metric], sjf[metric]
            change = f"{(b - a) / a * 100:+.0f}%" if a > 0 else ""
            print(f"  {metric:<12}{a:>10.1f}{b:>10.1f}{change:>10}")
        print()
    return 0
