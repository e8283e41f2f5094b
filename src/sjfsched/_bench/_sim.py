"""Runs of the real Scheduler in virtual time, in front of a simulated backend.

Every run happens under trio with ``MockClock(autojump_threshold=0)``: when
every task waits on a timer the clock jumps to the next one, so an hour of
traffic takes a fraction of a second of CPU time and the results do not
depend on the machine's load.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

import anyio
import attrs
import numpy as np

from .._records import Completion, Request
from .._scheduler import Scheduler
from ._policies import Policy, PolicyContext
from ._profiles import Profile
from ._traces import Trace, TraceItem

__all__ = [
    "BURST_STAGGER",
    "Outcome",
    "PinnedModels",
    "Scenario",
    "burst_arrivals",
    "outcome_of",
    "poisson_arrivals",
    "run_scenario",
    "scenario_batches",
    "simulate",
]

#: Seconds between the submissions of a burst, so its arrival order is defined.
BURST_STAGGER = 1e-6


@attrs.frozen
class PinnedModels:
    """Model files a run uses, copied or trained when it started (so it sees one version)."""

    #: The bundled LexicalPredictor model (None: the package's file, read when used).
    bundled: str | None = None
    #: Clairvoyant's retrained model (None: benchmarks/models/clairvoyant.onnx, read when used).
    clairvoyant: str | None = None
    #: trace name -> the ``unseen`` predictor's model for it.
    unseen: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Scenario:
    """How requests arrive: a burst of ``size`` at once or Poisson at load ``rho``."""

    kind: str  # "burst" or "poisson"
    size: int
    repetitions: int
    rho: float | None = None
    #: Poisson runs: the fraction of requests (by arrival) left out of the metrics as warm-up.
    warmup: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.kind not in ("burst", "poisson"):
            raise ValueError(f"Scenario.kind must be 'burst' or 'poisson', got {self.kind!r}")
        if self.size < 1 or self.repetitions < 1:
            raise ValueError("Scenario.size and Scenario.repetitions must be >= 1")
        if self.kind == "poisson" and not (self.rho is not None and 0 < self.rho < 1):
            raise ValueError(f"a Poisson scenario needs 0 < rho < 1, got {self.rho!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"Scenario.warmup must be within [0, 1), got {self.warmup!r}")

    @property
    def name(self) -> str:
        if self.kind == "burst":
            return f"burst{self.size}"
        return f"poisson{self.rho:g}"


@attrs.frozen
class Outcome:
    """What happened to every request of one or more runs, as arrays."""

    output_tokens: np.ndarray
    prompt_tokens: np.ndarray
    #: The backend's true service time of each request, seconds.
    service: np.ndarray
    submitted: np.ndarray
    started: np.ndarray
    first_token: np.ndarray
    finished: np.ndarray
    promoted: np.ndarray
    #: Which repetition (burst) or seed (Poisson) each request belongs to.
    run: np.ndarray
    #: Whether the request counts in the metrics (False for Poisson warm-up).
    measured: np.ndarray
    #: The max_wait in force at the end of each run (None: no bound), per run.
    max_wait: tuple[float | None, ...] = ()

    @property
    def latency(self) -> np.ndarray:
        return np.asarray(self.finished - self.submitted)

    @property
    def ttft(self) -> np.ndarray:
        return np.asarray(self.first_token - self.submitted)

    @property
    def wait(self) -> np.ndarray:
        return np.asarray(self.started - self.submitted)

    def __len__(self) -> int:
        return int(self.output_tokens.shape[0])

    @staticmethod
    def concat(parts: Sequence[Outcome]) -> Outcome:
        fields = [f.name for f in attrs.fields(Outcome) if f.name != "max_wait"]
        merged = {name: np.concatenate([getattr(p, name) for p in parts]) for name in fields}
        return Outcome(**merged, max_wait=tuple(w for p in parts for w in p.max_wait))


def burst_arrivals(n: int) -> list[float]:
    """``n`` requests at (almost) the same instant, in a defined order."""
    return [i * BURST_STAGGER for i in range(n)]


def poisson_arrivals(n: int, rate: float, rng: random.Random) -> list[float]:
    """``n`` arrival times of a Poisson process of ``rate`` requests per second."""
    t = 0.0
    times = []
    for _ in range(n):
        t += rng.expovariate(rate)
        times.append(t)
    return times


def _clock_options() -> dict[str, object]:
    import trio.testing  # the bench extra: imported here, so `sjfsched bench --help` needs none

    return {"clock": trio.testing.MockClock(autojump_threshold=0)}


async def _replay(
    scheduler: Scheduler, requests: Sequence[Request], arrivals: Sequence[float], offset: float
) -> list[Completion]:
    """Submit ``requests[i]`` at ``offset + arrivals[i]``; return the completions in that order."""
    done: list[Completion | None] = [None] * len(requests)

    async def one(i: int) -> None:
        await anyio.sleep_until(offset + arrivals[i])
        done[i] = await scheduler.complete(requests[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(requests)):
            tg.start_soon(one, i)
    completions = [c for c in done if c is not None]
    if len(completions) != len(requests):  # pragma: no cover - the scheduler lost a request
        raise RuntimeError(f"{len(requests) - len(completions)} requests never completed")
    return completions


def simulate(
    policy: Policy,
    profile: Profile,
    batches: Sequence[tuple[Sequence[TraceItem], Sequence[float]]],
    context: PolicyContext,
    *,
    progress: Callable[[int], object] | None = None,
) -> list[tuple[list[Completion], float | None]]:
    """Replay batches of requests, one after another, through one scheduler of ``policy``.

    Each batch is ``(items, arrival offsets)``; a batch starts one second
    after the previous one has drained, so the scheduler (and its predictor)
    carry what they learned from batch to batch, as a running deployment
    does.  Returns each batch's completions (in arrival order) and the
    scheduler's ``max_wait`` at the batch's end (policies may change it).
    """
    results: list[tuple[list[Completion], float | None]] = []

    async def main() -> None:
        backend = profile.backend()
        scheduler = policy.make(backend, context)
        if scheduler.preempt:  # streamed in chunks, so that answers can be paused midway
            backend.chunk_tokens = profile.chunk_tokens
        async with scheduler:
            for items, arrivals in batches:
                if len(items) != len(arrivals):
                    raise ValueError("items and arrivals differ in length")
                requests = [item.request() for item in items]
                offset = anyio.current_time() + 1.0
                if scheduler.preempt:  # a chunk at each arrival: paused as soon as at a token's pace
                    backend.chunk_after(offset + a for a in arrivals)
                completions = await _replay(scheduler, requests, arrivals, offset)
                results.append((completions, scheduler.max_wait))
                if progress is not None:
                    progress(len(requests))

    anyio.run(main, backend="trio", backend_options=_clock_options())
    return results


def outcome_of(
    completions: Sequence[Completion],
    profile: Profile,
    *,
    run: int,
    warmup: float = 0.0,
    max_wait: float | None = None,
) -> Outcome:
    """The arrays of one run's completions (in arrival order)."""
    n = len(completions)
    out = np.array([c.output_tokens for c in completions], dtype=np.int64)
    prompt = np.array([int(c.request.metadata["prompt_tokens"]) for c in completions], dtype=np.int64)
    first = [c.first_token if c.first_token is not None else c.finished for c in completions]
    return Outcome(
        output_tokens=out,
        prompt_tokens=prompt,
        service=prompt / profile.prefill_rate + out / profile.decode_rate,
        submitted=np.array([c.submitted for c in completions]),
        started=np.array([c.started for c in completions]),
        first_token=np.array(first),
        finished=np.array([c.finished for c in completions]),
        promoted=np.array([c.promoted for c in completions], dtype=bool),
        run=np.full(n, run, dtype=np.int64),
        measured=np.arange(n) >= int(warmup * n),
        max_wait=(max_wait,),
    )


def scenario_batches(
    trace: Trace, profile: Profile, scenario: Scenario, *, seed: int, repetition: int
) -> tuple[list[TraceItem], list[float]]:
    """The requests and arrival times of one repetition: the same for every policy."""
    rng = random.Random(f"{seed}/{trace.name}/{scenario.name}/{repetition}")
    if scenario.kind == "burst":
        items = trace.sample(min(scenario.size, len(trace)), rng)
        return items, burst_arrivals(len(items))
    assert scenario.rho is not None
    items = trace.sample(scenario.size, rng, replace=True)
    rate = scenario.rho / profile.mean_service_time(trace)
    return items, poisson_arrivals(len(items), rate, rng)


def run_scenario(
    policy: Policy,
    profile: Profile,
    trace: Trace,
    scenario: Scenario,
    *,
    seed: int = 0,
    progress: Callable[[int], object] | None = None,
    models: PinnedModels | None = None,
) -> Outcome:
    """Every repetition of ``scenario`` under ``policy``.

    Bursts run back to back through one scheduler (a warm deployment; the
    first burst meets it cold).  Each Poisson repetition (seed) gets a fresh
    scheduler and leaves its first ``warmup`` fraction of requests out of the
    metrics.
    """
    pinned = models or PinnedModels()
    context = PolicyContext(
        short_latency=profile.mean_short_service_time(trace),
        unseen_model=pinned.unseen.get(trace.name),
        history=trace.history,
        bundled_model=pinned.bundled,
        clairvoyant_model=pinned.clairvoyant,
    )
    batches = [
        scenario_batches(trace, profile, scenario, seed=seed, repetition=r)
        for r in range(scenario.repetitions)
    ]
    if scenario.kind == "burst":
        runs = simulate(policy, profile, batches, context, progress=progress)
    else:
        runs = [simulate(policy, profile, [batch], context, progress=progress)[0] for batch in batches]
    return Outcome.concat(
        [
            outcome_of(completions, profile, run=r, warmup=scenario.warmup, max_wait=max_wait)
            for r, (completions, max_wait) in enumerate(runs)
        ]
    )
