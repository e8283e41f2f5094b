"""Metrics of a run: latency and time to first token by answer length, and more.

Percentiles are numpy's default (linear interpolation between the closest
ranks), taken over every measured request of every repetition pooled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs
import numpy as np

from ._sim import Outcome
from ._traces import LONG_TOKENS, SHORT_TOKENS

__all__ = ["CLASSES", "ClassStats", "Summary", "gain", "summarize"]

CLASSES = ("short", "medium", "long", "all")


@attrs.frozen
class ClassStats:
    """Latency and time-to-first-token percentiles (seconds) of one length class."""

    n: int
    p50: float
    p95: float
    p99: float
    ttft_p50: float
    ttft_p95: float
    ttft_p99: float
    mean: float


@attrs.frozen
class Summary:
    """Everything the tables report for one policy in one scenario."""

    classes: Mapping[str, ClassStats]
    mean_latency: float
    #: The longest time any request (measured or not) waited for its turn.
    longest_wait: float
    #: max_wait + the longest service time, in the run of the longest wait (inf: no max_wait).
    wait_bound: float
    #: Runs in which some request waited longer than max_wait + the run's longest service time.
    bound_violations: int
    promoted: int
    #: Completed requests per second and output tokens per second, over the busy span of the runs.
    throughput: float
    token_throughput: float
    requests: int

    @property
    def within_bound(self) -> bool:
        return self.bound_violations == 0


def _class_stats(latency: np.ndarray, ttft: np.ndarray) -> ClassStats:
    if latency.size == 0:
        nan = math.nan
        return ClassStats(0, nan, nan, nan, nan, nan, nan, nan)
    p = np.percentile(latency, [50, 95, 99])
    t = np.percentile(ttft, [50, 95, 99])
    return ClassStats(
        n=int(latency.size),
        p50=float(p[0]),
        p95=float(p[1]),
        p99=float(p[2]),
        ttft_p50=float(t[0]),
        ttft_p95=float(t[1]),
        ttft_p99=float(t[2]),
        mean=float(latency.mean()),
    )


def summarize(outcome: Outcome) -> Summary:
    """Summarise the pooled requests of one policy's runs."""
    m = outcome.measured
    latency = outcome.latency
    ttft = outcome.ttft
    tokens = outcome.output_tokens
    masks = {
        "short": m & (tokens < SHORT_TOKENS),
        "medium": m & (tokens >= SHORT_TOKENS) & (tokens < LONG_TOKENS),
        "long": m & (tokens >= LONG_TOKENS),
        "all": m,
    }
    classes = {name: _class_stats(latency[mask], ttft[mask]) for name, mask in masks.items()}

    wait = outcome.wait
    span = 0.0
    longest = -math.inf
    bound = math.inf
    violations = 0
    for i, run in enumerate(np.unique(outcome.run)):
        in_run = outcome.run == run
        span += float(outcome.finished[in_run].max() - outcome.submitted[in_run].min())
        run_wait = float(wait[in_run].max())
        max_wait = outcome.max_wait[i] if i < len(outcome.max_wait) else None
        run_bound = math.inf if max_wait is None else max_wait + float(outcome.service[in_run].max())
        if run_wait > run_bound + 1e-9:
            violations += 1
        if run_wait > longest:
            longest, bound = run_wait, run_bound
    return Summary(
        classes=classes,
        mean_latency=float(latency[m].mean()) if m.any() else math.nan,
        longest_wait=max(longest, 0.0),
        wait_bound=bound,
        bound_violations=violations,
        promoted=int(outcome.promoted.sum()),
        throughput=len(outcome) / span if span > 0 else math.nan,
        token_throughput=float(tokens.sum()) / span if span > 0 else math.nan,
        requests=len(outcome),
    )


def gain(baseline: float, value: float) -> float:
    """How much lower ``value`` is than ``baseline``, as a fraction (0.8 = 80% lower)."""
    if baseline == 0 or math.isnan(baseline) or math.isnan(value):
        return math.nan
    return 1.0 - value / baseline
