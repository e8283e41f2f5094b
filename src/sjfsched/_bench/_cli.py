"""``sjfsched bench``: the command line of the benchmarks."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .._cli import TRAIN_MODULES, OptionError, at_least_one, missing_module, needs_extra, same_file
from .._demo import MIN_LOAD
from .._scheduler import DEFAULT_AGING, DEFAULT_MAX_WAIT
from .._version import __version__
from ..predictors._corpus import DATA_PATTERNS
from ._policies import (
    ALIASES,
    STANDARD_POLICIES,
    all_sweep_names,
    clairvoyant_predictor,
    policy_named,
    predictor_factory,
    sweep_names,
)
from ._profiles import PROFILES
from ._ranking import DEFAULT_RANKING_PREDICTORS
from ._report import bound_table, policy_table, sweep_table, target_table
from ._run import Result, Unit, cached_trace, load_results, run_units, save_results
from ._sim import Scenario
from ._traces import (
    LONG_TOKENS,
    SHORT_TOKENS,
    TRACES,
    UNSEEN_BUILT_IN_ONLY,
    base_name,
    corpora_dir,
    is_file_trace,
    is_trace_name,
    load_trace,
    split_file_trace,
    trace_file,
    unknown_trace,
)

__all__ = ["check_results_path", "configure", "input_files", "run"]

DEFAULT_SCENARIOS = ("burst100", "poisson0.5", "poisson0.74", "poisson0.9")
#: The policies `bench all` runs on the CPU profile too.
CPU_POLICIES = ("fcfs", "sjfsched", "unseen", "plain-unseen")
#: Where `bench all` writes its raw results.
DEFAULT_RESULTS = Path("benchmarks") / "results" / "sim.json"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCH")

    sim = sub.add_parser("sim", help="scheduling benchmarks on real traces in virtual time")
    _sim_options(sim)

    all_ = sub.add_parser(
        "all",
        help="every simulated benchmark of docs/benchmarks.md: tables, sweeps and figures",
    )
    _sim_options(all_, matrix=False, files=False)
    all_.add_argument("--out", type=Path, default=Path("docs"), help="docs directory: figures go to OUT/img/")

    plots = sub.add_parser("plots", help="draw the figures from saved results")
    plots.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON written by sim or all")
    plots.add_argument(
        "--out", type=Path, default=Path("docs"), help="docs directory: figures go to OUT/img/"
    )

    tables = sub.add_parser("tables", help="print the tables again from saved results")
    tables.add_argument(
        "--results",
        type=Path,
        action="append",
        default=None,
        help="JSON written by sim or all (default benchmarks/results/sim.json); given more than once, "
        "the runs of every file in one set of tables (a run in two files: the first file's)",
    )

    traces = sub.add_parser("traces", help="list the traces and their length classes")
    traces.add_argument("--data", type=Path, default=None, help="the corpora directory (../shared/data)")
    traces.add_argument(
        "--traces",
        default=",".join(TRACES),
        help="comma-separated traces or trace files (default: every built-in trace)",
    )

    ranking = sub.add_parser("ranking", help="how well each benchmark predictor ranks each trace")
    ranking.add_argument("--data", type=Path, default=None, help="the corpora directory (../shared/data)")
    ranking.add_argument(
        "--predictors",
        default=",".join(DEFAULT_RANKING_PREDICTORS),
        help="comma-separated predictor names (default: %(default)s)",
    )
    _word_vectors_option(ranking)

    from ._real import configure as configure_real

    configure_real(sub.add_parser("real", help="FCFS against sjfsched on a real llama.cpp model, wall clock"))


def _word_vectors_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--word-vectors",
        type=Path,
        default=None,
        metavar="FILE",
        help="train the unseen predictor with these word vectors (`sjfsched train --word-vectors`), as "
        "the bundled model was trained (scripts/fetch_word_vectors.sh fetches them); without, it has none",
    )


_NO_UNSEEN_VECTORS = (
    "sjfsched bench {}: --word-vectors is for training the unseen predictor, and no unseen policy or "
    "predictor runs here: it would do nothing"
)


def _unseen_vectors(args: argparse.Namespace, command: str) -> Path | None:
    """The --word-vectors file, checked before anything runs; a note where the bundled model has them."""
    path: Path | None = args.word_vectors
    if path is None:
        from ..predictors._lexical import bundled_model_has_vectors

        if bundled_model_has_vectors():
            print(
                f"sjfsched bench {command}: the unseen predictor is trained without word vectors, the "
                "bundled model with them: pass --word-vectors FILE to train it as the bundled model was",
                file=sys.stderr,
            )
        return None
    if not path.is_file():
        raise SystemExit(f"sjfsched bench {command}: --word-vectors {path}: no such file")
    return path.resolve()


def _sim_options(p: argparse.ArgumentParser, *, matrix: bool = True, files: bool = True) -> None:
    p.add_argument("--data", type=Path, default=None, help="the corpora directory (default: ../shared/data)")
    p.add_argument(
        "--traces",
        default=",".join(TRACES),
        help=(
            "comma-separated trace names (see `bench traces`) or your own files, FILE.jsonl[.gz] "
            "in the shared-data schema (what RequestLog writes), FILE.jsonl#MODEL for one answering "
            "model's records; NAME/fresh runs on half of NAME's prompts, the other half being the "
            "history a warm=N policy learns from"
        )
        if files
        else "comma-separated built-in trace names (see `bench traces`; `bench sim` takes your own files)",
    )
    p.add_argument(
        "--profiles", default=",".join(PROFILES), help="backend speed profiles: " + ", ".join(PROFILES)
    )
    if matrix:
        p.add_argument(
            "--scenarios",
            default=",".join(DEFAULT_SCENARIOS),
            help="burstN and/or poissonRHO, comma-separated (default: %(default)s)",
        )
        p.add_argument(
            "--policies",
            default="standard",
            help="comma-separated policy names, 'standard' (" + ", ".join(STANDARD_POLICIES) + "), "
            "'sweep' (every sweep) or 'sweep:KIND' (aging, plain-aging, max_wait, noise); a name is "
            "fcfs, clairvoyant, " + ", ".join(ALIASES) + " or PREDICTOR[@aging=A,max_wait=W,cap=C,adapt=0|1,"
            "preempt=0|1,warm=N] with PREDICTOR sjfsched, unseen, oracle, heuristic, lexical, "
            "lexical:PATH or noisySIGMA",
        )
        p.add_argument("--results", type=Path, default=None, help="also save the results as JSON here")
    else:
        p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="save the results as JSON here")
    p.add_argument(
        "--repetitions", type=at_least_one, default=250, help="bursts per burst scenario (default 250)"
    )
    p.add_argument(
        "--poisson-requests", type=at_least_one, default=2000, help="requests per Poisson run (default 2000)"
    )
    p.add_argument("--seeds", type=at_least_one, default=5, help="Poisson runs per scenario (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    _word_vectors_option(p)
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (there is none either where stderr is not a terminal)",
    )


def _scenario(name: str, args: argparse.Namespace) -> Scenario:
    bad = f"sjfsched bench: bad scenario {name!r} in --scenarios"
    m = re.fullmatch(r"burst(\d+)", name)
    if m:
        if int(m.group(1)) < 1:
            raise OptionError(f"{bad}: a burst needs 1 request or more (burstN with N >= 1)")
        return Scenario("burst", int(m.group(1)), args.repetitions)
    m = re.fullmatch(r"poisson(0?\.\d+)", name)
    if m:
        if float(m.group(1)) < MIN_LOAD:
            raise OptionError(f"{bad}: the load RHO of poissonRHO must be from {MIN_LOAD:g} to below 1")
        return Scenario("poisson", args.poisson_requests, args.seeds, rho=float(m.group(1)), warmup=0.1)
    if re.fullmatch(r"poisson[0-9.]*", name):  # poisson1, poisson1.2: a load of 1 or more
        raise OptionError(
            f"{bad}: the load RHO of poissonRHO must be from {MIN_LOAD:g} to below 1 (e.g. poisson0.74)"
        )
    raise OptionError(f"{bad}: use burstN or poissonRHO (e.g. poisson0.74)")


def _policy_parts(text: str) -> list[str]:
    """The names of a ``--policies`` list as written (``standard`` and sweeps not expanded)."""
    parts: list[str] = []
    for piece in filter(None, (x.strip() for x in text.split(","))):
        # "sjfsched@cap=250,aging=0.05": a key=value piece continues the name before it.
        if parts and "=" in piece and "@" not in piece and "@" in parts[-1]:
            parts[-1] += "," + piece
        else:
            parts.append(piece)
    return parts


def _policies(text: str) -> list[str]:
    names: list[str] = []
    for name in _policy_parts(text):
        if name == "standard":
            names += STANDARD_POLICIES
        elif name == "sweep" or name.startswith("sweep:"):
            # a sweep is read against first-come-first-served and the defaults
            names += ["fcfs", "sjfsched"]
            names += all_sweep_names() if name == "sweep" else sweep_names(name.partition(":")[2])
        else:
            names.append(name)
    return list(dict.fromkeys(names))


def _split(text: str) -> list[str]:
    """The names of a comma-separated list, each once."""
    return list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))


def _data_dir(args: argparse.Namespace, traces: Sequence[str] = ()) -> Path:
    """The corpora directory; only trace files (``traces``) need none."""
    data = corpora_dir(args.data)
    if data is None or not data.is_dir():
        if args.data is not None:
            raise SystemExit(f"sjfsched bench: --data {args.data} is not a directory")
        if traces and all(is_file_trace(t) for t in traces):
            return Path.cwd()
        own = (
            ", or --traces FILE.jsonl with a log of your own traffic"
            if getattr(args, "bench_command", None) in ("sim", "traces")
            else ""
        )
        raise SystemExit(
            "sjfsched bench: no corpora directory: pass --data DIR, the project's corpora (they sit "
            f"beside its repository as ../shared/data, not in it){own} (see docs/benchmarks.md)"
        )
    return data


def _check_traces(traces: Sequence[str]) -> None:
    for t in traces:
        if not is_trace_name(t):
            raise OptionError(f"sjfsched bench: {unknown_trace(t)}")


def _check_trace_files(traces: Iterable[str], data: Path) -> None:
    """Each built-in trace's corpus file is in ``data``: said before anything is trained."""
    for t in traces:
        spec = TRACES.get(base_name(t))
        if spec is not None:
            try:
                trace_file(spec, data)
            except FileNotFoundError as exc:
                raise SystemExit(f"sjfsched bench: {exc}") from None


def _check_training(command: str, hint: str = "") -> None:
    """Fail at once, in one line, where the unseen predictor could not be trained (no scikit-learn...)."""
    missing = missing_module(TRAIN_MODULES["lexical"])
    if missing is not None:
        why = "cannot train the unseen predictor"
        raise OptionError(needs_extra(f"bench {command}", missing, "bench", why) + hint)


def _meta(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    _, clairvoyant_real = clairvoyant_predictor()
    from ..predictors import default_predictor

    return {
        "command": " ".join(["sjfsched", *getattr(args, "argv", sys.argv[1:])]),
        "sjfsched": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "seed": args.seed,
        "data": str(data),
        "default_aging": DEFAULT_AGING,
        "default_max_wait": DEFAULT_MAX_WAIT,
        "default_predictor": type(default_predictor()).__name__,
        "clairvoyant_predictor": "ClairvoyantPredictor" if clairvoyant_real else "PromptLengthClassPredictor",
        "profiles": {n: [p.prefill_rate, p.decode_rate] for n, p in PROFILES.items()},
    }


def _print_tables(
    results: Sequence[Result], policies: Sequence[str], out: Any = None, *, named: Sequence[str] = ()
) -> None:
    """The tables of a run; ``named``: policies named on their own, shown in full even where a
    sweep has one of their names (the rest of a sweep's are shown as a sweep)."""
    out = sys.stdout if out is None else out
    cells: dict[tuple[str, str], list[str]] = {}
    for r in results:
        cells.setdefault((r.unit.profile, r.unit.scenario.name), [])
        if r.unit.trace not in cells[(r.unit.profile, r.unit.scenario.name)]:
            cells[(r.unit.profile, r.unit.scenario.name)].append(r.unit.trace)
    swept = set(all_sweep_names()) - set(named)
    standard = [p for p in policies if p not in swept]
    for (profile, scenario), traces in cells.items():
        for trace in traces:
            print(f"\n### {trace}, {profile} backend, {scenario} (latency in seconds)\n", file=out)
            print(policy_table(results, profile, scenario, trace, standard), file=out)
    for profile, scenario in cells:
        print(
            f"\n### Summary, {profile} backend, {scenario}: short P50 and long P95 against FCFS\n", file=out
        )
        print(sweep_table(results, profile, scenario, standard), file=out)
    # The project's own targets (docs/benchmarks.md), for its traces: nothing to a log of yours.
    ours = [r for r in results if not is_file_trace(r.unit.trace)]
    for policy in (
        "sjfsched",
        "unseen",
        "oracle",
        "plain",
        "plain-unseen",
        "plain-oracle",
        "clairvoyant",
    ):
        table = target_table(ours, policy) if any(r.unit.policy == policy for r in ours) else ""
        if table.count("\n") > 1:  # a row beyond the head: the run has a target's scenarios
            print(f"\n### Targets: {policy} against FCFS\n", file=out)
            print(table, file=out)
    sweeps = [p for p in policies if p in swept]
    if sweeps:
        for profile, scenario in cells:
            print(
                f"\n### Sweep, {profile} backend, {scenario}: short P50 and long P95 against FCFS\n", file=out
            )
            print(sweep_table(results, profile, scenario, ["sjfsched", *sweeps]), file=out)
        bounded = [p for p in sweeps if "max_wait=" in p and "max_wait=none" not in p]
        if bounded:
            print("\n### Sweep: longest wait within max_wait plus the run's longest service time\n", file=out)
            print(bound_table(results, bounded), file=out)
    if any(not r.faithful for r in results):
        print("\n\\* a stand-in replaced Clairvoyant's predictor (see docs/benchmarks.md)", file=out)


def _check_run_options(
    args: argparse.Namespace,
    traces: Sequence[str],
    profiles: Sequence[str],
    scenarios: Sequence[str] | None = None,
) -> None:
    """The checks ``bench sim`` and ``bench all`` share, made before anything is trained or run.

    ``scenarios`` is ``bench sim``'s ``--scenarios`` (``bench all`` runs its own).
    """
    named = {"--traces": traces, "--profiles": profiles}
    if scenarios is not None:
        named["--scenarios"] = scenarios
    for flag, names in named.items():
        if not names:
            raise OptionError(f"sjfsched bench: {flag} names nothing to run")
    if args.jobs < 1:
        raise OptionError(f"sjfsched bench: --jobs must be 1 or more, got {args.jobs}")
    for name in profiles:
        if name not in PROFILES:
            raise OptionError(
                f"sjfsched bench: unknown backend profile {name!r} in --profiles; "
                f"choose from {', '.join(PROFILES)}"
            )


def input_files(
    traces: Iterable[str], policies: Iterable[str] = (), data: Path | None = None, *, trains: bool = False
) -> list[Path]:
    """The files a run reads: its trace files, the corpus file in ``data`` of each built-in
    trace, and the models its ``lexical:PATH`` policies load.

    Where the run trains the unseen predictor (``trains``, or an ``unseen`` policy), every
    corpus file in ``data`` is read too.
    """
    policies = list(policies)
    files: list[Path] = []
    for t in traces:
        if is_file_trace(t):
            files.append(Path(split_file_trace(base_name(t))[0]))
        elif data is not None and base_name(t) in TRACES:
            files.append(data / TRACES[base_name(t)].file)
    for policy in policies:
        predictor = ALIASES.get(policy, policy).split("@", 1)[0]
        if predictor.startswith("lexical:"):
            files.append(Path(predictor.removeprefix("lexical:")))
        trains = trains or predictor == "unseen"
    if trains and data is not None and data.is_dir():
        files += sorted(found for pattern in DATA_PATTERNS for found in data.glob(pattern))
    return files


def check_results_path(path: Path, command: str = "bench", inputs: Iterable[Path] = ()) -> None:
    """Fail at once, naming ``--results``, where the results of a run could not be saved at ``path``.

    Made before the run: a directory, a path under a file or in a folder
    that cannot be written would otherwise lose the whole run at its end,
    and one of the run's ``inputs`` (its trace, a request log) would be
    overwritten by it.
    """
    where = f"sjfsched {command}: --results {path}"
    for source in inputs:
        if source.exists() and same_file(path, source):
            shown = "" if str(source) == str(path) else f" ({source})"
            raise SystemExit(f"{where} is an input of this run{shown}: it would be overwritten")
    if path.is_dir():
        raise SystemExit(f"{where} is a directory; name a file in it, e.g. {path / 'results.json'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise SystemExit(f"{where} cannot be written (permission denied)")
    folder = path.parent
    while not folder.exists():  # the folders saving makes; the first that exists must take them
        folder = folder.parent
    if not folder.is_dir():
        raise SystemExit(f"{where}: {folder} is a file, not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SystemExit(f"{where}: cannot write in {folder} (permission denied)")


def _check_out(out: Path, command: str) -> None:
    """Fail at once, naming ``--out``, where the figures could not be drawn into ``out``/img."""
    where = f"sjfsched {command}: --out {out}"
    for folder in (out, out / "img"):
        if folder.exists() and not folder.is_dir():
            raise SystemExit(f"{where}: {folder} is a file, not a directory")
    folder = out
    while not folder.exists() and folder != folder.parent:  # the folders drawing makes
        folder = folder.parent
    if not folder.is_dir():
        raise SystemExit(f"{where}: {folder} is a file, not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SystemExit(f"{where}: cannot write in {folder} (permission denied)")


def _save(results: Sequence[Result], path: Path, meta: dict[str, Any], **options: Any) -> None:
    """:func:`save_results`, failing in one line that names ``--results``."""
    try:
        save_results(results, path, meta, **options)
    except OSError as exc:
        raise SystemExit(
            f"sjfsched bench: could not save the results to --results {path}: {exc.strerror or exc}"
        ) from None


def _run_sim(args: argparse.Namespace) -> int:
    traces, profiles, scenario_names = _split(args.traces), _split(args.profiles), _split(args.scenarios)
    _check_run_options(args, traces, profiles, scenario_names)
    if args.results is not None:
        inputs = input_files(traces, _policies(args.policies), corpora_dir(args.data))
        check_results_path(args.results, inputs=inputs)
    _check_traces(traces)
    data = _data_dir(args, traces)
    scenarios = list(dict.fromkeys(_scenario(s, args) for s in scenario_names))  # poisson0.74 = poisson0.740
    policies = _policies(args.policies)
    if not policies:
        raise OptionError("sjfsched bench: --policies names nothing to run")
    files = [t for t in traces if is_file_trace(t)]
    try:
        families = {p: policy_named(p).family for p in policies}
    except ValueError as exc:
        raise OptionError(f"sjfsched bench: --policies: {exc}") from None
    unseen = {p for p, family in families.items() if family == "unseen"}
    try:
        for t in files:  # a bad file fails before anything runs (and is read once here)
            cached_trace(str(data), t)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"sjfsched bench: {exc}") from None
    units = [
        Unit(t, p, s, pol)
        for t in traces
        for p in profiles
        for s in scenarios
        for pol in policies
        if not (pol in unseen and t in files)
    ]
    _check_policies(units)
    vectors = None
    if any(u.policy in unseen for u in units):
        _check_training("sim", f", or leave {', '.join(sorted(unseen))} out of --policies")
        vectors = _unseen_vectors(args, "sim")
    elif args.word_vectors is not None:
        raise OptionError(_NO_UNSEEN_VECTORS.format("sim"))
    if files and unseen:
        if not units:
            raise OptionError(
                f"sjfsched bench: nothing to run ({', '.join(sorted(unseen))}): {UNSEEN_BUILT_IN_ONLY}"
            )
        print(
            f"sjfsched bench: {', '.join(sorted(unseen))} left out on {', '.join(files)}: "
            f"{UNSEEN_BUILT_IN_ONLY}",
            file=sys.stderr,
        )
    bursts = [s for s in scenarios if s.kind == "burst"]
    for t in traces:  # a burst drawn from fewer requests would run smaller than its name says
        if t not in files and not bursts:
            continue
        try:
            n = len(cached_trace(str(data), t))
        except (ValueError, FileNotFoundError) as exc:
            raise SystemExit(f"sjfsched bench: {exc}") from None
        if n < 2:
            raise SystemExit(f"sjfsched bench: {t} has {n} request: a trace needs at least 2")
        if t in files:  # a log of yours may hold no long answers, say: its columns stay empty
            lengths = [item.output_tokens for item in cached_trace(str(data), t).items]
            for kind, count in (
                (f"short (< {SHORT_TOKENS} tokens)", sum(x < SHORT_TOKENS for x in lengths)),
                (f"long (>= {LONG_TOKENS} tokens)", sum(x >= LONG_TOKENS for x in lengths)),
            ):
                if not count:
                    which = kind.split()[0]
                    print(
                        f"sjfsched bench: {t} has no {kind} answers: its {which} columns stay -",
                        file=sys.stderr,
                    )
        for s in bursts:
            if s.size > n:
                fitting = (
                    f"burst{n}" if re.fullmatch(r"burst\d+", x) and int(x[5:]) > n else x
                    for x in scenario_names
                )
                raise OptionError(
                    f"sjfsched bench: {t} has {n} requests, fewer than a {s.name} draws: pass --scenarios "
                    f"burstN with N <= {n}, e.g. --scenarios {','.join(dict.fromkeys(fitting))}"
                )
    meta = _meta(args, data)
    try:
        results = run_units(
            units,
            data,
            seed=args.seed,
            jobs=args.jobs,
            progress=not args.no_progress,
            info=meta,
            word_vectors=vectors,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"sjfsched bench: {exc}") from None
    _print_tables(
        results, policies, named=_policy_parts(args.policies)
    )  # first: a late failure to save loses nothing
    if args.results is not None:
        _save(results, args.results, meta)
    return 0


def _check_policies(units: Sequence[Unit]) -> None:
    """Build each policy of ``units`` once, in front of a simulated backend, so that one that
    cannot be built (``aging=-1``, a missing ``lexical:PATH``, ``warm=N`` on a trace without
    ``/fresh``...) fails at once in one line naming it, not after the others ran.

    The unseen policies are built with the bundled model standing in for the one trained later.
    A ``warm=N`` policy on a ``/fresh`` trace learns from a one-prompt history here.
    """
    from .._errors import PredictorError
    from ..backends import SimulatedBackend
    from ..predictors._lexical import bundled_model_path
    from ._policies import PolicyContext
    from ._traces import FRESH, TraceItem

    history = (TraceItem("a prompt", 1, 1),)
    checked: set[tuple[str, bool]] = set()
    for unit in units:
        fresh = unit.trace.endswith(FRESH)
        if (unit.policy, fresh) in checked:
            continue
        checked.add((unit.policy, fresh))
        context = PolicyContext(
            short_latency=1.0,
            unseen_model=str(bundled_model_path()),
            history=history if fresh else (),
        )
        try:
            policy_named(unit.policy).make(SimulatedBackend(), context)
        except (ValueError, OSError, PredictorError) as exc:
            on = f" on {unit.trace}" if re.search(r"[@,]warm=", unit.policy) and not fresh else ""
            why = str(exc) or type(exc).__name__
            # A bad value of the policy's (aging=-1) is a bad option value; a model file it
            # cannot read, a missing or malformed input.
            bad = OptionError if type(exc) is ValueError else SystemExit
            raise bad(f"sjfsched bench: cannot run --policies {unit.policy}{on}: {why}") from None


def all_units(args: argparse.Namespace) -> list[Unit]:
    """The matrix of docs/benchmarks.md.

    - the standard policies on every trace and scenario on the GPU profile,
      and FCFS, the defaults and the unseen predictor (both keys) on the CPU profile (every
      policy but max_wait is scale-free, so the CPU's results differ from
      the GPU's only through the different ratio of prefill to decode);
    - the aging sweeps (the default key and the plain one) and the
      predictor-noise sweep on the GPU profile at rho = 0.74 and 0.9 (aging
      is scale-free, so the CPU profile would give the same curves; in a
      burst every request arrives at once and aging changes nothing);
    - the max_wait sweep on both profiles, in the burst and at rho = 0.9
      (max_wait is in seconds, so the backend's speed matters to it).
    """
    traces, profiles = _split(args.traces), _split(args.profiles)
    scenarios = [_scenario(s, args) for s in DEFAULT_SCENARIOS]
    units = [
        Unit(t, p, s, pol)
        for t in traces
        for p in profiles
        for s in scenarios
        for pol in (STANDARD_POLICIES if p == "gpu" else CPU_POLICIES)
    ]
    loaded = [_scenario("poisson0.74", args), _scenario("poisson0.9", args)]
    aging = sweep_names("aging") + sweep_names("plain-aging") + sweep_names("noise")
    if "gpu" in profiles:
        units += [Unit(t, "gpu", s, pol) for t in traces for s in loaded for pol in aging]
    waits = [_scenario("burst100", args), _scenario("poisson0.9", args)]
    units += [
        Unit(t, p, s, pol) for t in traces for p in profiles for s in waits for pol in sweep_names("max_wait")
    ]
    return units


def _run_all(args: argparse.Namespace) -> int:
    import tempfile

    from ._ranking import ranking_table
    from ._run import prepare_models

    traces = _split(args.traces)
    _check_run_options(args, traces, _split(args.profiles))
    check_results_path(args.results, inputs=input_files(traces, data=corpora_dir(args.data), trains=True))
    _check_out(args.out, "bench all")
    _check_traces(traces)  # a typo is an unknown trace, not a file
    files = [t for t in traces if is_file_trace(t)]
    if files:
        raise OptionError(
            f"sjfsched bench all: built-in traces only ({', '.join(TRACES)}), because its tables "
            f"include the unseen predictor ({UNSEEN_BUILT_IN_ONLY}); run `sjfsched bench sim` on your "
            "own files"
        )
    _check_training("all")
    vectors = _unseen_vectors(args, "all")
    data = _data_dir(args)
    _check_trace_files(traces, data)
    units = all_units(args)
    meta = _meta(args, data)
    with tempfile.TemporaryDirectory(prefix="sjfsched-bench-") as tmp:
        models = prepare_models(traces, data, tmp, progress=not args.no_progress, word_vectors=vectors)
        meta["ranking"] = ranking_table(models, data, traces=traces)
        results = run_units(
            units,
            data,
            seed=args.seed,
            jobs=args.jobs,
            progress=not args.no_progress,
            info=meta,
            models=models,
        )
    # The tables first: a late failure to save or draw loses nothing.
    policies = list(dict.fromkeys(u.policy for u in units))
    _print_ranking(meta)
    _print_tables(results, policies)
    _save(results, args.results, meta, quantiles_for=lambda policy: policy in STANDARD_POLICIES)
    print(f"\nwrote {args.results}")
    from ._plots import draw_all

    for path in draw_all(results, args.out / "img"):
        print(f"wrote {path}")
    return 0


def _print_ranking(meta: dict[str, Any]) -> None:
    from ._ranking import format_ranking

    if meta.get("ranking"):
        print("\n### Ranking accuracy of the predictors on each trace\n")
        print(_RANKING_NOTE)
        print(format_ranking(meta["ranking"]))


def _run_plots(args: argparse.Namespace) -> int:
    from ._plots import draw_all

    results, _ = _load(args.results, "plots")
    _check_out(args.out, "bench plots")
    written = draw_all(results, args.out / "img")
    if not written:
        raise SystemExit(
            f"sjfsched bench plots: --results {args.results} has none of the runs the figures draw "
            "(fcfs in burst100 or poisson0.74, an aging sweep at poisson0.74 or poisson0.9, a max_wait "
            "sweep in burst100 or poisson0.9); nothing drawn"
        )
    for path in written:
        print(f"wrote {path}")
    return 0


def _load(path: Path, command: str) -> tuple[list[Result], dict[str, Any]]:
    """The results saved at ``path`` and their meta; a file that holds none fails in one line."""
    where = f"sjfsched bench {command}: --results {path}"
    if not path.exists():
        default = " (the default, read from the repository root: pass --results)"
        raise SystemExit(f"{where}: no such file{default if path == DEFAULT_RESULTS else ''}")
    if not path.is_file():
        raise SystemExit(f"{where}: not a file")
    try:
        results, meta = load_results(path)
    except ValueError:
        if _real_report(path):
            raise SystemExit(
                f"{where}: the report of `bench real` (its table is in it); {command} reads what "
                "`bench sim` or `bench all` saved"
            ) from None
        raise
    if not results:
        raise SystemExit(f"sjfsched bench {command}: --results {path} holds no results")
    return results, meta


def _run_tables(paths: Sequence[Path]) -> int:
    """Print the tables of the results saved in ``paths``, merged (the first file's run of a unit)."""
    merged: dict[tuple[str, str, str, str], Result] = {}
    #: (trace, profile, scenario) -> how the first file to hold it ran it, and that file
    runs: dict[tuple[str, str, str], tuple[object, Path]] = {}
    loaded = [(path, *_load(path, "tables")) for path in paths]  # every file read before a line
    for path, results, meta in loaded:
        for r in results:
            u = r.unit
            how = (u.scenario, meta.get("seed"), (meta.get("profiles") or {}).get(u.profile))
            seen = runs.setdefault((u.trace, u.profile, u.scenario.name), (how, path))
            if seen[0] != how:
                raise SystemExit(
                    f"sjfsched bench tables: {path} and {seen[1]} ran {u.trace}, {u.profile}, "
                    f"{u.scenario.name} differently (repetitions, requests, seed or the profile's "
                    "rates): their rows would not compare"
                )
            merged.setdefault((u.trace, u.profile, u.scenario.name, u.policy), r)
    for path, _, meta in loaded:
        print(f"<!-- from {path}: {meta.get('command')} on {meta.get('date')} -->")
    _print_ranking(loaded[0][2])  # the ranking of the first file's predictors
    every = list(merged.values())
    _print_tables(every, list(dict.fromkeys(r.unit.policy for r in every)))
    return 0


def _run_traces(args: argparse.Namespace) -> int:
    names = _split(args.traces)
    if not names:
        raise OptionError("sjfsched bench: --traces names nothing to run")
    _check_traces(names)
    data = _data_dir(args, names)
    try:
        traces = [load_trace(name, data) for name in names]
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"sjfsched bench: {exc}") from None
    print(
        "| trace | prompts | short | medium | long | mean output tokens | mean prompt tokens "
        "| gpu mean s | cpu mean s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for trace in traces:
        shares = trace.class_shares()
        out = sum(i.output_tokens for i in trace.items) / len(trace)
        prompt = sum(i.prompt_tokens for i in trace.items) / len(trace)
        print(
            f"| {trace.name} | {len(trace)} | {shares['short']:.0%} | {shares['medium']:.0%} "
            f"| {shares['long']:.0%} "
            f"| {out:.0f} | {prompt:.0f} | {PROFILES['gpu'].mean_service_time(trace):.2f} "
            f"| {PROFILES['cpu'].mean_service_time(trace):.1f} |"
        )
    return 0


def _run_ranking(args: argparse.Namespace) -> int:
    import tempfile

    from ._ranking import format_ranking, ranking_table
    from ._run import prepare_models

    data = _data_dir(args)
    names = _split(args.predictors)
    if not names:
        raise OptionError("sjfsched bench: --predictors names nothing to run")
    for name in names:  # before any training: a typo after the five traces' took minutes
        if name != "clairvoyant":
            try:
                predictor_factory(name)
            except ValueError as exc:
                raise OptionError(f"sjfsched bench: --predictors: {exc}") from None
    vectors = None
    if "unseen" in names:
        _check_training("ranking", ", or leave unseen out of --predictors")
        vectors = _unseen_vectors(args, "ranking")
    elif args.word_vectors is not None:
        raise OptionError(_NO_UNSEEN_VECTORS.format("ranking"))
    _check_trace_files(TRACES, data)  # the ranking reads every trace
    with tempfile.TemporaryDirectory(prefix="sjfsched-bench-") as tmp:
        models = prepare_models(TRACES if "unseen" in names else (), data, tmp, word_vectors=vectors)
        table = ranking_table(models, data, names)
    print(_RANKING_NOTE)
    print(format_ranking(table))
    return 0


_RANKING_NOTE = (
    "Ranking accuracy: the share of the trace's (short < 200, long >= 800 tokens) answer pairs\n"
    "whose long answer the predictor ranks above the short one (ties count half).\n"
)


def run(args: argparse.Namespace) -> int:
    command = getattr(args, "bench_command", None)
    if command == "sim":
        return _run_sim(args)
    if command == "all":
        return _run_all(args)
    if command == "plots":
        return _run_plots(args)
    if command == "tables":
        return _run_tables(args.results or [DEFAULT_RESULTS])
    if command == "traces":
        return _run_traces(args)
    if command == "ranking":
        return _run_ranking(args)
    if command == "real":
        from ._real import run as run_real

        return run_real(args)
    print(
        "usage: sjfsched bench {sim,all,plots,tables,traces,ranking,real} ... (see sjfsched bench -h)",
        file=sys.stderr,
    )
    return 2


def _real_report(path: Path) -> bool:
    """Whether ``path`` holds what ``bench real --results`` writes."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "agree" in report and "table" in report
