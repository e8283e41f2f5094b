"""The proxy's metrics, written in Prometheus' text exposition format (version 0.0.4).

Gauges and counters kept by the scheduler are read from
:meth:`~sjfsched.Scheduler.statistics` at scrape time; the histograms and the
proxy's own counters live here.  No dependency: the format is a few lines of
text per metric.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from typing import final

from .._records import Request
from .._scheduler import SchedulerStatistics

__all__ = ["CLASSES", "Histogram", "Metrics", "predicted_class"]

#: Predicted-length classes, by predicted output tokens (capped at the request's limit).
CLASSES = ("short", "medium", "long")
#: Below this many predicted tokens a request is ``short``.
SHORT_TOKENS = 256.0
#: From this many predicted tokens on a request is ``long`` (Clairvoyant's threshold).
LONG_TOKENS = 800.0

#: Seconds: queue waits and latencies, from a few milliseconds to ten minutes.
TIME_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
#: Seconds: one predictor call, from 10 µs to 100 ms.
PREDICTOR_BUCKETS = (1e-05, 2.5e-05, 5e-05, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def predicted_class(tokens: float) -> str:
    if tokens < SHORT_TOKENS:
        return "short"
    if tokens < LONG_TOKENS:
        return "medium"
    return "long"


def capped_tokens(request: Request, tokens: float) -> float:
    """The predicted output, capped at the request's own limit (as the scheduler caps it)."""
    if request.max_tokens is not None and tokens > request.max_tokens:
        return float(request.max_tokens)
    return tokens


@final
class Histogram:
    """Counts of observations at or below each bucket bound, their sum and number."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> Iterable[str]:
        sep = "," if labels else ""
        cumulative = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == math.inf else _number(bound)
            yield f'{name}_bucket{{{labels}{sep}le="{le}"}} {cumulative}'
        brace = f"{{{labels}}}" if labels else ""
        yield f"{name}_sum{brace} {_number(self.sum)}"
        yield f"{name}_count{brace} {self.count}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value == math.inf:
        return "+Inf"
    return repr(float(value))


@final
class Metrics:
    """What the proxy counts besides the scheduler's own statistics."""

    def __init__(self) -> None:
        self.queue_wait = {c: Histogram(TIME_BUCKETS) for c in CLASSES}
        self.latency = {c: Histogram(TIME_BUCKETS) for c in CLASSES}
        self.first_byte = {c: Histogram(TIME_BUCKETS) for c in CLASSES}
        self.predictor = Histogram(PREDICTOR_BUCKETS)
        self.rejected = dict.fromkeys(
            ("queue_full", "shutting_down", "bad_request", "body_too_large", "client_timeout"), 0
        )
        self.upstream_errors = dict.fromkeys(("connect", "midstream", "status"), 0)
        self.passthrough = 0
        self.output_tokens = 0
        self.prompt_tokens = 0

    def render(self, stats: SchedulerStatistics, *, draining: bool) -> bytes:
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: Iterable[str]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)

        def single(name: str, kind: str, help_text: str, value: float) -> None:
            metric(name, kind, help_text, [f"{name} {_number(value)}"])

        def labelled(name: str, help_text: str, label: str, values: Iterable[tuple[str, int]]) -> None:
            metric(name, "counter", help_text, [f'{name}{{{label}="{k}"}} {n}' for k, n in values])

        single("sjfsched_requests_waiting", "gauge", "Requests waiting in the queue.", stats.waiting)
        single("sjfsched_requests_running", "gauge", "Requests sent upstream, not finished.", stats.running)
        single("sjfsched_concurrency", "gauge", "Requests the upstream is sent at once.", stats.concurrency)
        single("sjfsched_draining", "gauge", "1 while the proxy shuts down.", int(draining))
        labelled(
            "sjfsched_requests_total",
            "Scheduled requests that ended, by outcome (closed: waiting when the proxy shut down).",
            "outcome",
            (
                ("completed", stats.completed),
                ("failed", stats.failed),
                ("cancelled", stats.cancelled),
                ("closed", stats.closed),
            ),
        )
        labelled(
            "sjfsched_rejected_total",
            "Requests refused before they were queued, by reason.",
            "reason",
            self.rejected.items(),
        )
        single(
            "sjfsched_promotions_total",
            "counter",
            "Requests that ran next because they had waited max_wait.",
            stats.promoted,
        )
        labelled(
            "sjfsched_upstream_errors_total",
            "Upstream failures: connect (before an answer), midstream (answer cut), status (5xx answer).",
            "kind",
            self.upstream_errors.items(),
        )
        single(
            "sjfsched_passthrough_requests_total",
            "counter",
            "Requests forwarded without scheduling.",
            self.passthrough,
        )
        single(
            "sjfsched_output_tokens_total",
            "counter",
            "Output tokens of completed requests.",
            self.output_tokens,
        )
        single(
            "sjfsched_prompt_tokens_total",
            "counter",
            "Prompt tokens of completed requests, as the upstream reported them.",
            self.prompt_tokens,
        )
        for name, histograms, help_text in (
            ("sjfsched_queue_wait_seconds", self.queue_wait, "Time from arrival to being sent upstream"),
            (
                "sjfsched_time_to_first_byte_seconds",
                self.first_byte,
                "Time from arrival to the upstream's first answer byte",
            ),
            (
                "sjfsched_request_duration_seconds",
                self.latency,
                "Time from arrival to the end of the answer, completed requests",
            ),
        ):
            samples = [line for c in CLASSES for line in histograms[c].lines(name, f'class="{c}"')]
            metric(name, "histogram", f"{help_text}, by predicted class.", samples)
        metric(
            "sjfsched_predictor_duration_seconds",
            "histogram",
            "Time of one length prediction.",
            self.predictor.lines("sjfsched_predictor_duration_seconds", ""),
        )
        single(
            "sjfsched_predictor_errors_total",
            "counter",
            "Predictions that failed (a neutral one was used) and learning steps that failed.",
            stats.predictor_errors,
        )
        single(
            "sjfsched_prefill_rate_tokens_per_second",
            "gauge",
            "The learned prompt processing rate.",
            stats.prefill_rate,
        )
        single(
            "sjfsched_decode_rate_tokens_per_second",
            "gauge",
            "The learned generation rate.",
            stats.decode_rate,
        )
        out.append("")
        return "\n".join(out).encode()
