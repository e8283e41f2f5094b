"""The figures of docs/benchmarks.md (matplotlib, PNG)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._scheduler import DEFAULT_AGING, DEFAULT_MAX_WAIT
from ._metrics import gain
from ._policies import PLAIN_AGING
from ._report import TARGETS
from ._run import QUANTILE_LEVELS, Result

__all__ = ["cdf_figure", "draw_all", "max_wait_figure", "tradeoff_figure"]

_COLORS = {
    "fcfs": "#7f7f7f",
    "sjfsched": "#1f77b4",
    "oracle": "#2ca02c",
    "clairvoyant": "#d62728",
    "plain": "#9467bd",
    "unseen": "#17becf",
    "plain-unseen": "#9467bd",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pick(results: Sequence[Result], **unit: str) -> list[Result]:
    out = []
    for r in results:
        u = r.unit
        fields = {"trace": u.trace, "profile": u.profile, "scenario": u.scenario.name, "policy": u.policy}
        if all(fields[k] == v for k, v in unit.items()):
            out.append(r)
    return out


def _traces(results: Sequence[Result]) -> list[str]:
    return list(dict.fromkeys(r.unit.trace for r in results))


def _log_seconds_axis(axis: Any) -> None:
    """Plain-number labels on a log axis: at powers of ten, and at 2 and 5 times them on short ranges."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    low, high = axis.get_view_interval()
    decades = math.log10(high / low) if low > 0 and high > low else 3.0
    subs = (1.0, 2.0, 5.0) if decades < 2.5 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def cdf_figure(
    results: Sequence[Result], profile: str, scenario: str, policies: Sequence[str], path: Path
) -> Path:
    """Latency CDFs: one row per trace, columns short / long / all requests, one line per policy."""
    plt = _pyplot()
    traces = [t for t in _traces(results) if _pick(results, trace=t, profile=profile, scenario=scenario)]
    classes = ("short", "long", "all")
    fig, axes = plt.subplots(len(traces), 3, figsize=(12, 2.6 * len(traces)), squeeze=False)
    levels = [q / 100 for q in QUANTILE_LEVELS]
    for row, trace in enumerate(traces):
        for col, cls in enumerate(classes):
            ax = axes[row][col]
            for name in policies:
                found = _pick(results, trace=trace, profile=profile, scenario=scenario, policy=name)
                if not found or not found[0].quantiles.get(cls):
                    continue
                label = name if found[0].faithful else f"{name}*"
                style = "--" if "unseen" in name else "-"
                ax.plot(found[0].quantiles[cls], levels, style, label=label, color=_COLORS.get(name), lw=1.5)
            ax.set_xscale("log")
            _log_seconds_axis(ax.xaxis)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"{cls} requests" if cls != "all" else "all requests")
            if col == 0:
                ax.set_ylabel(f"{trace}\nfraction done")
            if row == len(traces) - 1:
                ax.set_xlabel("latency (s, log scale)")
    # The legend from the panel with the most lines (a trace may have no short requests).
    handles, labels = max((ax.get_legend_handles_labels() for ax in fig.axes), key=lambda hl: len(hl[1]))
    if labels:
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(f"Latency CDFs, {scenario}, {profile} backend (unseen: predictor not trained on the trace)")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _aging_of(policy: str, plain: bool = False) -> float | None:
    """The aging of a policy of the default key's aging sweep (or of the plain key's)."""
    pattern = r"unseen@cap=none,aging=([0-9.e+-]+)" if plain else r"unseen@aging=([0-9.e+-]+)"
    m = re.fullmatch(pattern, policy)
    return float(m.group(1)) if m else None


def _point(
    results: Sequence[Result], trace: str, profile: str, scenario: str, policy: str
) -> tuple[float, float]:
    base = _pick(results, trace=trace, profile=profile, scenario=scenario, policy="fcfs")
    mine = _pick(results, trace=trace, profile=profile, scenario=scenario, policy=policy)
    if not base or not mine:
        return math.nan, math.nan
    b, m = base[0].summary.classes, mine[0].summary.classes
    return -gain(b["long"].p95, m["long"].p95) * 100, gain(b["short"].p50, m["short"].p50) * 100


def tradeoff_figure(results: Sequence[Result], profile: str, scenarios: Sequence[str], path: Path) -> Path:
    """Short-request P50 gain against long-request P95 change as aging varies, defaults marked.

    Solid lines: the default key (estimate capped at the median estimate,
    plus ``aging * arrival``); dashed: the plain key (no cap); both with the ``unseen``
    predictor (trained without the trace's corpus).  Numbers on the curves
    are the aging values at their ends.
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, len(scenarios), figsize=(6.4 * len(scenarios), 6.0), squeeze=False)
    targets = {t.scenario: t for t in TARGETS}
    cmap = plt.get_cmap("tab10")
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        traces = [t for t in _traces(results) if _pick(results, trace=t, profile=profile, scenario=scenario)]
        for i, trace in enumerate(traces):
            color = cmap(i)
            for plain, style in ((False, "-o"), (True, "--s")):
                sweep = sorted(
                    (a, r.unit.policy)
                    for r in _pick(results, trace=trace, profile=profile, scenario=scenario)
                    if (a := _aging_of(r.unit.policy, plain)) is not None
                )
                if not sweep:
                    continue
                pts = [_point(results, trace, profile, scenario, name) for _, name in sweep]
                label = trace if not plain else None
                ax.plot(
                    [p[0] for p in pts], [p[1] for p in pts], style, ms=3.5, color=color, label=label, lw=1.1
                )
                for (a, _), (x, y) in zip(sweep, pts, strict=True):
                    if a in (sweep[0][0], sweep[-1][0]):
                        ax.annotate(f"{a:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            for policy, marker, size in (
                ("unseen", "*", 15),
                ("plain-unseen", "P", 10),
                ("oracle", "D", 6),
            ):
                x, y = _point(results, trace, profile, scenario, policy)
                ax.plot([x], [y], marker=marker, ms=size, color=color, mec="black", ls="none")
            x, y = _point(results, trace, profile, scenario, "clairvoyant")
            ax.plot([x], [y], marker="X", ms=8, color=color, mec="black", ls="none")
        t = targets.get(scenario)
        if t is not None:
            ax.axvline(t.long_p95_increase * 100, color="black", ls=":", lw=1)
            ax.axhline(t.short_p50_gain * 100, color="black", ls=":", lw=1)
            left = ax.get_xlim()[0]
            ax.fill_between(
                [left, t.long_p95_increase * 100], t.short_p50_gain * 100, 100, color="green", alpha=0.07
            )
        ax.set_xlabel("long-request P95 latency, change against FCFS (%)")
        ax.set_ylabel("short-request P50 latency, reduction against FCFS (%)")
        ax.set_title(f"{scenario}, {profile} backend, predictor not trained on the trace")
        ax.grid(alpha=0.3)
    handles, _ = axes[0][0].get_legend_handles_labels()
    handles += [
        Line2D([], [], ls="-", color="gray", label="default key, aging varies"),
        Line2D([], [], ls="--", color="gray", label="plain key (no cap), aging varies"),
        Line2D([], [], marker="*", ms=12, color="white", mec="black", ls="none", label="defaults"),
        Line2D(
            [],
            [],
            marker="P",
            ms=9,
            color="white",
            mec="black",
            ls="none",
            label=f"plain key, aging {PLAIN_AGING:g}",
        ),
        Line2D([], [], marker="D", ms=6, color="white", mec="black", ls="none", label="oracle predictor"),
        Line2D([], [], marker="X", ms=8, color="white", mec="black", ls="none", label="clairvoyant"),
    ]
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=6, frameon=False)
    fig.suptitle(
        f"Aging trade-off (default aging {DEFAULT_AGING:g}); the shaded box meets the target where one is set"
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _max_wait_of(policy: str) -> float | None:
    m = re.fullmatch(r"sjfsched@max_wait=([0-9.e+-]+|none)", policy)
    if not m:
        return None
    return math.inf if m.group(1) == "none" else float(m.group(1))


def max_wait_figure(results: Sequence[Result], scenario: str, path: Path) -> Path:
    """Short-request gain and longest wait as max_wait varies, per backend profile."""
    plt = _pyplot()
    profiles = list(dict.fromkeys(r.unit.profile for r in results))
    fig, axes = plt.subplots(2, len(profiles), figsize=(6 * len(profiles), 7), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for col, profile in enumerate(profiles):
        for i, trace in enumerate(_traces(results)):
            sweep = sorted(
                (w, r)
                for r in _pick(results, trace=trace, profile=profile, scenario=scenario)
                if (w := _max_wait_of(r.unit.policy)) is not None
            )
            if not sweep:
                continue
            finite = max((w for w, _ in sweep if math.isfinite(w)), default=1.0)
            xs = [w if math.isfinite(w) else finite * 2 for w, _ in sweep]
            gains = [_point(results, trace, profile, scenario, r.unit.policy)[1] for _, r in sweep]
            waits = [r.summary.longest_wait for _, r in sweep]
            axes[0][col].plot(xs, gains, "-o", ms=3.5, color=cmap(i), label=trace)
            axes[1][col].plot(xs, waits, "-o", ms=3.5, color=cmap(i), label=trace)
            if DEFAULT_MAX_WAIT is not None:
                for ax in (axes[0][col], axes[1][col]):
                    ax.axvline(DEFAULT_MAX_WAIT, color="black", ls=":", lw=1)
        for row in (0, 1):
            ax = axes[row][col]
            ax.set_xscale("log")
            _log_seconds_axis(ax.xaxis)  # matplotlib's own minor labels overlap (3x10^2 4x10^2)
            ax.grid(alpha=0.3)
            ax.set_xlabel("max_wait (s; rightmost point: none)")
        axes[0][col].set_ylabel("short P50 reduction vs FCFS (%)")
        axes[1][col].set_ylabel("longest wait (s)")
        axes[0][col].set_title(f"{scenario}, {profile} backend")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_all(results: Sequence[Result], img_dir: Path) -> list[Path]:
    """Every figure of docs/benchmarks.md that ``results`` has data for."""
    written: list[Path] = []
    standard = ["fcfs", "clairvoyant", "sjfsched", "unseen", "oracle", "plain", "plain-unseen"]
    for profile in dict.fromkeys(r.unit.profile for r in results):
        for scenario in ("burst100", "poisson0.74"):
            if _pick(results, profile=profile, scenario=scenario, policy="fcfs"):
                path = img_dir / f"bench-cdf-{profile}-{scenario}.png"
                written.append(cdf_figure(results, profile, scenario, standard, path))
    if any(_aging_of(r.unit.policy) is not None for r in results):
        profile = "gpu" if _pick(results, profile="gpu") else results[0].unit.profile
        scenarios = [s for s in ("poisson0.74", "poisson0.9") if _pick(results, profile=profile, scenario=s)]
        if scenarios:  # the trade-off is drawn at those loads only
            written.append(tradeoff_figure(results, profile, scenarios, img_dir / "bench-tradeoff.png"))
    written += [
        max_wait_figure(results, scenario, img_dir / f"bench-max-wait-{scenario}.png")
        for scenario in ("burst100", "poisson0.9")
        if any(_max_wait_of(r.unit.policy) is not None for r in _pick(results, scenario=scenario))
    ]
    return written
