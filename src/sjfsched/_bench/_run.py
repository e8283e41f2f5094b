"""Run many (trace, backend profile, scenario, policy) units, serially or in processes."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ._metrics import ClassStats, Summary, summarize
from ._policies import policy_named
from ._profiles import PROFILES
from ._sim import PinnedModels, Scenario, run_scenario
from ._traces import LONG_TOKENS, SHORT_TOKENS, Trace, load_trace
from ._unseen import train_unseen_models

__all__ = [
    "QUANTILE_LEVELS",
    "Result",
    "Unit",
    "cached_trace",
    "load_results",
    "model_digest",
    "model_digests",
    "pin_models",
    "prepare_models",
    "run_units",
    "save_results",
]

#: Percentile levels kept of each latency distribution (for the CDF plots).
QUANTILE_LEVELS: tuple[float, ...] = tuple(float(x) for x in np.linspace(0, 100, 201))


@attrs.frozen
class Unit:
    """One cell of the benchmark matrix."""

    trace: str
    profile: str
    scenario: Scenario
    policy: str

    @property
    def requests(self) -> int:
        return self.scenario.size * self.scenario.repetitions


@attrs.frozen
class Result:
    """A unit's summary, its latency percentiles per class, and what it cost to compute."""

    unit: Unit
    summary: Summary
    #: class -> latency (seconds) at each of QUANTILE_LEVELS; empty for an empty class.
    quantiles: dict[str, list[float]]
    cpu_seconds: float
    faithful: bool = True


@functools.lru_cache(maxsize=16)
def cached_trace(data_dir: str, name: str) -> Trace:
    """:func:`load_trace`, read once per process."""
    return load_trace(name, data_dir)


def run_unit(
    data_dir: str,
    unit: Unit,
    seed: int,
    progress: Callable[[int], object] | None = None,
    models: PinnedModels | None = None,
) -> Result:
    """Run one unit and summarise it."""
    trace = cached_trace(data_dir, unit.trace)
    policy = policy_named(unit.policy)
    t0 = time.process_time()
    outcome = run_scenario(
        policy,
        PROFILES[unit.profile],
        trace,
        unit.scenario,
        seed=seed,
        progress=progress,
        models=models,
    )
    cpu = time.process_time() - t0
    latency = outcome.latency
    tokens = outcome.output_tokens
    m = outcome.measured
    masks = {
        "short": m & (tokens < SHORT_TOKENS),
        "medium": m & (tokens >= SHORT_TOKENS) & (tokens < LONG_TOKENS),
        "long": m & (tokens >= LONG_TOKENS),
        "all": m,
    }
    quantiles = {
        name: [float(x) for x in np.percentile(latency[mask], QUANTILE_LEVELS)] if mask.any() else []
        for name, mask in masks.items()
    }
    return Result(unit, summarize(outcome), quantiles, cpu, policy.faithful)


def _run_unit_job(data_dir: str, unit: Unit, seed: int, models: PinnedModels) -> Result:
    return run_unit(data_dir, unit, seed, models=models)


def prepare_models(
    traces: Iterable[str],
    data_dir: str | Path,
    directory: str | Path,
    *,
    progress: bool = False,
    word_vectors: str | Path | None = None,
) -> PinnedModels:
    """Train the ``unseen`` predictors of ``traces`` and pin every model a run uses into ``directory``.

    ``word_vectors``: what the unseen predictors are trained with (``sjfsched train --word-vectors``).
    """
    names = sorted(set(traces))
    unseen: dict[str, str] = {}
    if names:
        if progress:
            print(f"training the unseen predictors for {', '.join(names)} ...", file=sys.stderr)
        unseen = train_unseen_models(names, data_dir, directory, word_vectors)
    return pin_models(directory, unseen)


def model_digests(models: PinnedModels) -> dict[str, str | None]:
    """SHA-1 of every pinned model, by role."""
    return {
        "bundled lexical": model_digest(models.bundled),
        "clairvoyant": model_digest(models.clairvoyant),
        **{f"unseen for {t}": model_digest(p) for t, p in sorted(models.unseen.items())},
    }


def run_units(
    units: Sequence[Unit],
    data_dir: str | Path,
    *,
    seed: int = 0,
    jobs: int = 1,
    progress: bool = True,
    info: dict[str, Any] | None = None,
    models: PinnedModels | None = None,
    word_vectors: str | Path | None = None,
) -> list[Result]:
    """Run every unit (in ``jobs`` processes) with a progress bar over requests.

    The bar (``progress``) shows only where stderr is a terminal: in a log it would be a
    line of carriage returns per update.

    ``models`` are the pinned models to use (see :func:`prepare_models`);
    without them they are prepared (and pinned) here, the unseen predictors
    trained with ``word_vectors`` if given.  Their SHA-1 digests go into
    ``info`` if given.
    """
    data = str(data_dir)
    for unit in units:  # fail early on bad names
        policy_named(unit.policy)
        if unit.profile not in PROFILES:
            raise ValueError(f"unknown backend profile {unit.profile!r}; choose from {', '.join(PROFILES)}")
    if models is None:
        needs_unseen = {u.trace for u in units if policy_named(u.policy).family == "unseen"}
        with tempfile.TemporaryDirectory(prefix="sjfsched-bench-") as tmp:
            pinned = prepare_models(needs_unseen, data, tmp, progress=progress, word_vectors=word_vectors)
            return run_units(units, data, seed=seed, jobs=jobs, progress=progress, info=info, models=pinned)
    if info is not None:
        info["models_sha1"] = model_digests(models)
    from tqdm import tqdm

    total = sum(u.requests for u in units)
    results: list[Result] = []
    bar_shown = progress and _is_terminal(sys.stderr)
    with tqdm(total=total, unit="req", disable=not bar_shown, smoothing=0.05, dynamic_ncols=True) as bar:
        if jobs <= 1:
            for unit in units:
                bar.set_postfix_str(f"{unit.trace} {unit.profile} {unit.scenario.name} {unit.policy}")
                results.append(run_unit(data, unit, seed, bar.update, models))
        else:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = {pool.submit(_run_unit_job, data, unit, seed, models): unit for unit in units}
                try:
                    for future in as_completed(futures):
                        results.append(future.result())
                        bar.update(futures[future].requests)
                except BaseException:
                    # A unit failed (or ^C): the run is lost, so the units not started yet
                    # would only delay the error; the running ones are waited for.
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    order = {unit: i for i, unit in enumerate(units)}
    results.sort(key=lambda r: order[r.unit])
    return results


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (OSError, ValueError):  # closed or detached
        return False


def pin_models(directory: str | Path, unseen: Mapping[str, str]) -> PinnedModels:
    """Copy the bundled and Clairvoyant models into ``directory``, so a run uses one version
    of each even if the files change while it runs (as they do while developing them)."""
    from ..predictors._lexical import bundled_model_path
    from ._policies import clairvoyant_model_path

    copies: dict[str, str | None] = {}
    for name, source in (("bundled", bundled_model_path()), ("clairvoyant", clairvoyant_model_path())):
        if source is not None and Path(source).is_file():
            target = Path(directory) / f"pinned-{name}.onnx"
            shutil.copyfile(source, target)
            copies[name] = str(target)
        else:
            copies[name] = None
    return PinnedModels(bundled=copies["bundled"], clairvoyant=copies["clairvoyant"], unseen=dict(unseen))


def model_digest(path: str | Path | None) -> str | None:
    """SHA-1 of a model file (None if there is none)."""
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------ storage


def _num(x: float) -> float | None:
    return None if math.isinf(x) or math.isnan(x) else x


def _result_to_json(result: Result) -> dict[str, Any]:
    s = result.summary
    u = result.unit
    return {
        "trace": u.trace,
        "profile": u.profile,
        "scenario": attrs.asdict(u.scenario),
        "policy": u.policy,
        "faithful": result.faithful,
        "cpu_seconds": result.cpu_seconds,
        "summary": {
            "classes": {k: {f: _num(v) for f, v in attrs.asdict(c).items()} for k, c in s.classes.items()},
            "mean_latency": _num(s.mean_latency),
            "longest_wait": _num(s.longest_wait),
            "wait_bound": _num(s.wait_bound),
            "bound_violations": s.bound_violations,
            "promoted": s.promoted,
            "throughput": _num(s.throughput),
            "token_throughput": _num(s.token_throughput),
            "requests": s.requests,
        },
        "quantiles": result.quantiles,
    }


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _result_from_json(data: dict[str, Any]) -> Result:
    s = data["summary"]
    classes = {
        k: ClassStats(
            n=int(c["n"]),
            **{f: _nan(v) for f, v in c.items() if f != "n"},
        )
        for k, c in s["classes"].items()
    }
    summary = Summary(
        classes=classes,
        mean_latency=_nan(s["mean_latency"]),
        longest_wait=_nan(s["longest_wait"]),
        wait_bound=math.inf if s["wait_bound"] is None else float(s["wait_bound"]),
        bound_violations=int(s["bound_violations"]),
        promoted=int(s["promoted"]),
        throughput=_nan(s["throughput"]),
        token_throughput=_nan(s["token_throughput"]),
        requests=int(s["requests"]),
    )
    unit = Unit(data["trace"], data["profile"], Scenario(**data["scenario"]), data["policy"])
    return Result(unit, summary, data["quantiles"], float(data["cpu_seconds"]), bool(data["faithful"]))


def _round(value: Any) -> Any:
    """Floats to 7 significant digits, recursively (keeps the file small).

    Only for what the figures draw (the latency percentiles) and the CPU
    time: the summaries the tables print are saved as they are, since a
    value a few microseconds below a rounding boundary (a burst's latency
    often is) would print differently once rounded.
    """
    if isinstance(value, float):
        return float(f"{value:.7g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def save_results(
    results: Iterable[Result],
    path: str | Path,
    meta: dict[str, Any],
    *,
    quantiles_for: Callable[[str], bool] | None = None,
) -> None:
    """Write results (and what produced them) as JSON, one result per line.

    Latency percentiles are kept for the policies ``quantiles_for(name)``
    accepts (default: all); figures need them only for a few.  An empty
    ``results`` is refused (ValueError): it would replace a run's file with nothing.
    """
    results = list(results)
    if not results:
        raise ValueError(f"no results to save to {path}: nothing ran")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in results:
        # The summary at full precision (JSON floats round-trip), so `bench tables` prints from
        # the file exactly what the run printed; files of earlier versions, rounded, read as before.
        row = _result_to_json(r)
        row["cpu_seconds"] = _round(row["cpu_seconds"])
        keep = quantiles_for is None or quantiles_for(r.unit.policy)
        row["quantiles"] = _round(row["quantiles"]) if keep else {}
        rows.append(json.dumps(row, separators=(",", ":")))
    meta_line = json.dumps(meta, indent=1)
    path.write_text(
        '{"meta": ' + meta_line + ',\n"results": [\n' + ",\n".join(rows) + "\n]}\n", encoding="utf-8"
    )


def load_results(path: str | Path) -> tuple[list[Result], dict[str, Any]]:
    """Read results written by :func:`save_results`.

    Raises :class:`ValueError` naming ``path`` where it holds something else
    (a trace's JSON lines, another JSON document, not text at all).
    """
    not_results = f"{path}: not results written by sjfsched bench"
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{not_results} (not UTF-8 text: {exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{not_results} (not one JSON document: {exc})") from exc
    try:
        return [_result_from_json(r) for r in payload["results"]], payload.get("meta", {})
    except KeyError as exc:
        raise ValueError(f"{not_results} (no {exc})") from exc
    except (TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"{not_results} ({exc})") from exc
