"""Markdown tables of benchmark results."""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs

from ._metrics import gain
from ._run import Result

__all__ = ["TARGETS", "Target", "policy_table", "sweep_table", "target_table"]


@attrs.frozen
class Target:
    """sjfsched's defaults against FCFS in one scenario: how much better short, how much worse long."""

    scenario: str
    short_p50_gain: float
    long_p95_increase: float


#: The targets of issue 5 (docs/benchmarks.md).
TARGETS: tuple[Target, ...] = (Target("burst100", 0.80, 0.10), Target("poisson0.74", 0.45, 0.25))


def _s(x: float) -> str:
    """Seconds, to three significant figures or so."""
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "∞"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _pct(x: float, signed: bool = False) -> str:
    if math.isnan(x):
        return "-"
    if round(x * 100) == 0:
        x = 0.0  # no "-0%"
    return f"{x:+.0%}" if signed else f"{x:.0%}"


def _lower(g: float) -> str:
    """A gain as "80% lower" (or "5% higher" when negative; "-" when there is none to measure)."""
    if math.isnan(g):
        return "-"
    if round(g * 100) == 0:
        return "0% lower"
    return f"{g:.0%} lower" if g > 0 else f"{-g:.0%} higher"


def _find(results: Sequence[Result], trace: str, profile: str, scenario: str, policy: str) -> Result | None:
    for r in results:
        u = r.unit
        if (u.trace, u.profile, u.scenario.name, u.policy) == (trace, profile, scenario, policy):
            return r
    return None


def _cells(results: Sequence[Result]) -> list[tuple[str, str, str]]:
    seen: dict[tuple[str, str, str], None] = {}
    for r in results:
        seen[(r.unit.profile, r.unit.scenario.name, r.unit.trace)] = None
    return list(seen)


def policy_table(
    results: Sequence[Result], profile: str, scenario: str, trace: str, policies: Sequence[str]
) -> str:
    """One markdown table: every policy of one (profile, scenario, trace), FCFS as the baseline."""
    base = _find(results, trace, profile, scenario, "fcfs")
    head = (
        "| policy | short P50 | vs FCFS | short P95 | short P99 | short TTFT P50 | medium P50 "
        "| long P50 | long P95 | vs FCFS | long P99 | mean | longest wait | bound | req/s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in policies:
        r = _find(results, trace, profile, scenario, name)
        if r is None:
            continue
        s = r.summary
        short, medium, long = s.classes["short"], s.classes["medium"], s.classes["long"]
        g = gain(base.summary.classes["short"].p50, short.p50) if base else math.nan
        d = -gain(base.summary.classes["long"].p95, long.p95) if base else math.nan
        label = name if r.faithful else f"{name}*"
        lines.append(
            f"| {label} | {_s(short.p50)} | {_pct(-g, True) if name != 'fcfs' else ''} | {_s(short.p95)} "
            f"| {_s(short.p99)} | {_s(short.ttft_p50)} | {_s(medium.p50)} | {_s(long.p50)} | {_s(long.p95)} "
            f"| {_pct(d, True) if name != 'fcfs' else ''} | {_s(long.p99)} | {_s(s.mean_latency)} "
            f"| {_s(s.longest_wait)} | {_s(s.wait_bound)}{'' if s.within_bound else ' ✗'} "
            f"| {s.throughput:.3f} |"
        )
    return "\n".join(lines)


def target_table(
    results: Sequence[Result], policy: str = "sjfsched", targets: Sequence[Target] = TARGETS
) -> str:
    """Each trace and profile against the targets, for ``policy`` against FCFS."""
    head = ["trace", "backend"]
    for t in targets:
        head += [
            f"{t.scenario} short P50 (≥{t.short_p50_gain:.0%} lower)",
            f"{t.scenario} long P95 (≤{t.long_p95_increase:.0%} higher)",
        ]
    head += ["longest wait ≤ max_wait + one service, all runs", "longest wait / FCFS's"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pairs: dict[tuple[str, str], None] = {(c[2], c[0]): None for c in _cells(results)}
    for trace, profile in pairs:
        row = [trace, profile]
        found = False
        for t in targets:
            base = _find(results, trace, profile, t.scenario, "fcfs")
            r = _find(results, trace, profile, t.scenario, policy)
            if base is None or r is None:
                row += ["-", "-"]
                continue
            found = True
            g = gain(base.summary.classes["short"].p50, r.summary.classes["short"].p50)
            d = -gain(base.summary.classes["long"].p95, r.summary.classes["long"].p95)
            # "-": the trace has no short (or no long) requests to measure.
            row.append("-" if math.isnan(g) else f"{_lower(g)} {'✓' if g >= t.short_p50_gain else '✗'}")
            within = "✓" if d <= t.long_p95_increase else "✗"
            row.append("-" if math.isnan(d) else f"{_pct(d, True)} {within}")
        if not found:
            continue
        mine = [
            r for r in results if (r.unit.trace, r.unit.profile, r.unit.policy) == (trace, profile, policy)
        ]
        worst = max(mine, key=lambda r: r.summary.longest_wait)
        violations = sum(r.summary.bound_violations for r in mine)
        row.append(
            f"{_s(worst.summary.longest_wait)} s vs {_s(worst.summary.wait_bound)} s "
            f"({worst.unit.scenario.name}) {'✓' if violations == 0 else f'✗ {violations} runs'}"
        )
        ratios = []
        for r in mine:
            base = _find(results, trace, profile, r.unit.scenario.name, "fcfs")
            if base is not None and base.summary.longest_wait > 0:
                ratios.append((r.summary.longest_wait / base.summary.longest_wait, r.unit.scenario.name))
        if ratios:
            ratio, where = max(ratios)
            row.append(f"{ratio:.2f} ({where})")
        else:
            row.append("-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def sweep_table(results: Sequence[Result], profile: str, scenario: str, policies: Sequence[str]) -> str:
    """Short-request P50 gain and long-request P95 change of each policy, one column pair per trace."""
    traces = list(dict.fromkeys(c[2] for c in _cells(results) if c[:2] == (profile, scenario)))
    head = ["policy"]
    for t in traces:
        head += [f"{t} short P50", f"{t} long P95"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in policies:
        row = [name]
        any_found = False
        for trace in traces:
            base = _find(results, trace, profile, scenario, "fcfs")
            r = _find(results, trace, profile, scenario, name)
            if base is None or r is None:
                row += ["-", "-"]
                continue
            any_found = True
            g = gain(base.summary.classes["short"].p50, r.summary.classes["short"].p50)
            d = -gain(base.summary.classes["long"].p95, r.summary.classes["long"].p95)
            row += [_pct(-g, True), _pct(d, True)]
        if any_found:
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def bound_table(results: Sequence[Result], policies: Sequence[str]) -> str:
    """Whether each run kept its longest wait within ``max_wait`` plus its longest service time.

    One row per policy with a ``max_wait`` and (backend, scenario); per trace:
    ✓, or ✗ with how many of its runs broke the bound and its worst run's
    longest wait against the bound.
    """
    traces = list(dict.fromkeys(c[2] for c in _cells(results)))
    head = ["policy", "backend", "scenario", *traces]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in policies:
        for profile, scenario in dict.fromkeys(c[:2] for c in _cells(results)):
            row = [name, profile, scenario]
            any_found = False
            for trace in traces:
                r = _find(results, trace, profile, scenario, name)
                if r is None or math.isinf(r.summary.wait_bound):
                    row.append("-")
                    continue
                any_found = True
                s = r.summary
                row.append(
                    "✓"
                    if s.bound_violations == 0
                    else f"✗ {s.bound_violations} runs ({_s(s.longest_wait)} s vs {_s(s.wait_bound)} s)"
                )
            if any_found:
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
