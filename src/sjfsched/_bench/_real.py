"""``sjfsched bench real``: FCFS against sjfsched on a real llama.cpp model, in wall-clock time.

A burst of requests (real prompts from a trace, answer lengths scaled from
the trace) runs through a real ``llama_cpp.Llama`` twice, first come first
served and with sjfsched's defaults.  Each generation runs to exactly its
trace length: the backend sets ``max_tokens`` to it, and the model (a
random-weight Llama from :func:`sjfsched.testing.write_tiny_llama`) never
samples end-of-text.  The scheduler itself is not told the length (the
request it ranks has no ``max_tokens``).  Then the same requests replay in
virtual time through :class:`~sjfsched.backends.SimulatedBackend` at the
prefill and decode rates measured on the real runs, and the two short-request
gains are compared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any, cast

import anyio
import attrs

from .._cli import OptionError
from .._errors import PredictorError
from .._records import Chunk, Completion, Request
from .._scheduler import Scheduler, _resumable
from ..backends import Backend, Resumable, SimulatedBackend
from ._metrics import gain
from ._policies import Policy, PolicyContext, policy_named
from ._profiles import Profile
from ._run import model_digests, pin_models
from ._sim import BURST_STAGGER, PinnedModels, burst_arrivals, simulate
from ._traces import (
    LONG_TOKENS,
    SHORT_TOKENS,
    TRACES,
    TraceItem,
    corpora_dir,
    is_file_trace,
    is_trace_name,
    load_trace,
    unknown_trace,
)

__all__ = ["TraceLengthBackend", "configure", "run"]

DEFAULT_RESULTS = Path("benchmarks") / "results" / "real.json"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Exit status 1 when a policy's short-request gain, real and simulated, is more than 10 "
        "points apart (the results are written all the same), or on an error (said on stderr); "
        "0 when they agree."
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="the corpora directory (default: ../shared/data)"
    )
    parser.add_argument(
        "--trace",
        default="sharegpt",
        type=_trace_name,
        help=f"trace: one of {', '.join(TRACES)} or a FILE.jsonl[.gz][#MODEL] (default: %(default)s)",
    )
    parser.add_argument("--requests", type=int, default=36, help="requests in the burst (default 36)")
    parser.add_argument(
        "--scale", type=float, default=0.5, help="answer lengths are the trace's times this (default 0.5)"
    )
    parser.add_argument(
        "--prompt-chars", type=int, default=200, help="the model reads this much of each prompt"
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="a GGUF model (default: write the 'medium' tiny Llama)"
    )
    parser.add_argument(
        "--preset", default=None, help="write_tiny_llama preset when no --model (default medium)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="llama.cpp threads (default 1: the cores are shared)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    parser.add_argument(
        "--policies",
        default="fcfs,sjfsched",
        help="policies to compare, named as in bench sim (default %(default)s); not unseen, "
        "plain-unseen or PREDICTOR@warm=N: bench real trains no unseen predictor and has no "
        "history for warm=N to learn from (bench sim runs them)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=(
            f"save the results as JSON here (default: {DEFAULT_RESULTS} under the current directory "
            "for a named trace; a FILE trace's results are saved only where --results says)"
        ),
    )


@attrs.define
class TraceLengthBackend:
    """Wraps a backend so each request generates exactly its trace length.

    The inner backend gets the request with ``max_tokens`` set to
    ``metadata["output_tokens"]`` and its prompt cut to ``prompt_chars``
    characters (prefill on a small CPU model is slow); the scheduler ranks
    the original request, which has neither.
    """

    inner: Backend
    prompt_chars: int = 200
    slots: int = 1

    def _sent(self, request: Request) -> Request:
        n = int(request.metadata["output_tokens"])
        prompt = (request.prompt or request.text)[: self.prompt_chars]
        return attrs.evolve(request, prompt=prompt, messages=None, max_tokens=max(1, n))

    async def stream(self, request: Request, /) -> AsyncIterator[Chunk]:
        sent = cast("AsyncGenerator[Chunk, None]", self.inner.stream(self._sent(request)))
        async with aclosing(sent) as chunks:
            async for chunk in chunks:
                yield chunk

    def resumable(self, request: Request, /) -> bool:
        """As the inner backend says for the request it gets (``Scheduler(preempt=True)``)."""
        return _resumable(self.inner, self._sent(request))

    async def resume(self, request: Request, answer: str, tokens: int, /) -> AsyncIterator[Chunk]:
        inner = cast("Resumable", self.inner)
        rest = cast("AsyncGenerator[Chunk, None]", inner.resume(self._sent(request), answer, tokens))
        async with aclosing(rest) as chunks:
            async for chunk in chunks:
                yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


def _trace_name(name: str) -> str:
    if not is_trace_name(name):
        raise argparse.ArgumentTypeError(unknown_trace(name))
    return name


def _sample(args: argparse.Namespace) -> list[TraceItem]:
    data = corpora_dir(args.data)
    if data is None and not is_file_trace(args.trace):
        raise SystemExit(
            "sjfsched bench real: no corpora directory: pass --data DIR, the project's corpora "
            "(they sit beside its repository as ../shared/data, not in it), or --trace FILE.jsonl "
            "with a log of your own traffic (see docs/benchmarks.md)"
        )
    try:
        trace = load_trace(args.trace, data if data is not None else Path.cwd())
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"sjfsched bench real: {exc}") from None
    if args.requests > len(trace):
        raise OptionError(
            f"sjfsched bench real: --requests {args.requests} is more than trace {trace.name!r} has "
            f"({len(trace)} prompts): take --requests {len(trace)} or fewer"
        )
    rng = random.Random(f"real/{args.seed}/{trace.name}")
    items = trace.sample(args.requests, rng)
    return [
        attrs.evolve(item, output_tokens=max(1, round(item.output_tokens * args.scale))) for item in items
    ]


def _class(tokens: float, scale: float) -> str:
    if tokens < SHORT_TOKENS * scale:
        return "short"
    return "long" if tokens >= LONG_TOKENS * scale else "medium"


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    import numpy as np

    return float(np.percentile(values, q))


def _stats(completions: Sequence[Completion], scale: float) -> dict[str, Any]:
    by: dict[str, list[float]] = {"short": [], "medium": [], "long": []}
    for c in completions:
        by[_class(c.output_tokens, scale)].append(c.latency)
    every = [c.latency for c in completions]
    return {
        "short_p50": _percentile(by["short"], 50),
        "medium_p50": _percentile(by["medium"], 50),
        "long_p50": _percentile(by["long"], 50),
        "long_p95": _percentile(by["long"], 95),
        "mean": sum(every) / len(every),
        "makespan": max(c.finished for c in completions) - min(c.submitted for c in completions),
        "pauses": sum(c.preemptions for c in completions),
        "n": {k: len(v) for k, v in by.items()},
    }


def _measured_rates(completions: Sequence[Completion]) -> tuple[float, float]:
    """Prompt and output tokens per second over the real completions that ran in one piece
    (a paused answer's time from its first token to its end holds the answers run meanwhile)."""
    timed = [c for c in completions if c.first_token is not None]
    whole = [c for c in timed if not c.preemptions]
    if any(c.output_tokens > 1 for c in whole):
        timed = whole  # else (every answer paused) the rates of them all, too low, for want of better
    p_tok = p_sec = d_tok = d_sec = 0.0
    for c in timed:
        assert c.first_token is not None
        p_tok += c.prompt_tokens or 0
        p_sec += c.first_token - c.started
        d_tok += max(0, c.output_tokens - 1)
        d_sec += c.finished - c.first_token
    if not (p_sec > 0 and d_sec > 0 and p_tok > 0 and d_tok > 0):
        raise ValueError("sjfsched bench real: no answer of more than one token to measure the rates on")
    return p_tok / p_sec, d_tok / d_sec


async def _real_burst(scheduler: Scheduler, requests: Sequence[Request]) -> list[Completion]:
    done: list[Completion | None] = [None] * len(requests)
    start = anyio.current_time() + 0.05

    async def one(i: int) -> None:
        await anyio.sleep_until(start + i * max(BURST_STAGGER, 1e-3))
        done[i] = await scheduler.complete(requests[i])

    async with scheduler, anyio.create_task_group() as tg:
        for i in range(len(requests)):
            tg.start_soon(one, i)
    return [c for c in done if c is not None]


def _context_size(args: argparse.Namespace, items: Sequence[TraceItem]) -> int:
    """A context that holds every request's cut prompt and its whole trace length.

    llama-cpp-python lowers ``max_tokens`` quietly to what the context holds,
    which would make a long request shorter in the real run than in the
    simulated one.  A prompt of ``prompt_chars`` characters is at most 4
    tokens per character (one per UTF-8 byte); 2,048 when that is enough.
    """
    need = 4 * int(args.prompt_chars) + max(item.output_tokens for item in items) + 16
    return max(2048, -(-need // 256) * 256)


def _model_path(args: argparse.Namespace, tmp: str, n_ctx: int) -> Path:
    if args.model is not None:
        return Path(args.model)
    from ..testing import write_tiny_llama
    from ..testing._tiny_llama import PRESETS

    options = dict(PRESETS[args.preset])
    options["n_ctx"] = n_ctx
    return write_tiny_llama(Path(tmp) / f"bench-{args.preset}.gguf", **options)


def _check_arguments(args: argparse.Namespace) -> None:
    from ..testing._tiny_llama import PRESETS

    if args.model is not None and args.preset is not None:
        raise OptionError(
            f"sjfsched bench real: --preset {args.preset} does nothing with --model (it names the tiny "
            "model written when no --model is given)"
        )
    if args.preset is None:
        args.preset = "medium"
    if args.model is None and args.preset not in PRESETS:
        raise OptionError(
            f"sjfsched bench real: unknown --preset {args.preset!r}; choose from {', '.join(PRESETS)}"
        )
    for name, value, least in (("requests", args.requests, 1), ("threads", args.threads, 1)):
        if value < least:
            raise OptionError(f"sjfsched bench real: --{name} must be at least {least}, got {value}")
    if args.prompt_chars < 1:
        raise OptionError(f"sjfsched bench real: --prompt-chars must be at least 1, got {args.prompt_chars}")
    if args.model is not None:
        _check_model_file(Path(args.model))
    if not (args.scale > 0 and math.isfinite(args.scale)):
        raise OptionError(f"sjfsched bench real: --scale must be a positive number, got {args.scale}")


def _check_model_file(path: Path) -> None:
    """A --model that is not a GGUF file fails in one line naming it, before anything runs."""
    where = f"sjfsched bench real: --model {path}"
    if not path.exists():
        raise SystemExit(f"{where}: no such file")
    if not path.is_file():
        raise SystemExit(f"{where}: not a file")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise SystemExit(f"{where}: cannot be read ({exc.strerror or exc})") from None
    if magic != b"GGUF":
        raise SystemExit(f"{where}: not a GGUF model (it does not begin with GGUF's magic bytes)")


def run(args: argparse.Namespace) -> int:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("sjfsched bench real needs llama-cpp-python: pip install 'sjfsched[llama]'", file=sys.stderr)
        return 2
    from ._cli import _policies, check_results_path, input_files  # as bench sim reads --policies

    _check_arguments(args)
    if args.results is None and not is_file_trace(args.trace):
        args.results = DEFAULT_RESULTS  # the published run's file, for the shared data's traces
    data = corpora_dir(args.data)
    inputs = input_files([args.trace], _policies(args.policies), data) + ([args.model] if args.model else [])
    if args.results is not None:
        check_results_path(args.results, "bench real", inputs)
    items = _sample(args)
    if all(item.output_tokens <= 1 for item in items):
        raise OptionError(
            f"sjfsched bench real: --scale {args.scale:g} makes every answer one token long, so no "
            "decoding would be timed; take a larger --scale"
        )
    try:
        policies = [policy_named(name) for name in _policies(args.policies)]
    except ValueError as exc:
        raise OptionError(f"sjfsched bench real: --policies: {exc}") from None
    if not policies:
        raise OptionError("sjfsched bench real: --policies names nothing to run")
    load_before = os.getloadavg()
    wall0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        pinned = pin_models(tmp, {})  # one version of each predictor model for the whole run
        _check_policies(policies, _real_context(pinned))  # all of them, before the model loads
        real = _run_real(args, items, policies, pinned, tmp)
        load_after = os.getloadavg()
        every = [c for cs in real.values() for c in cs]
        prefill, decode = _measured_rates(every)

        # The same requests (real prompt lengths in the model's tokens) in virtual time.
        first = real[policies[0].name]
        sim_items = [
            attrs.evolve(item, prompt_tokens=c.prompt_tokens or item.prompt_tokens)
            for item, c in zip(items, first, strict=True)
        ]
        profile = Profile("measured", prefill, decode)
        context = _real_context(pinned)  # the policies as the real runs built them
        sim: dict[str, list[Completion]] = {}
        for policy in policies:
            batch = [(sim_items, burst_arrivals(len(sim_items)))]
            sim[policy.name] = simulate(policy, profile, batch, context)[0][0]
        digests = model_digests(pinned)

    report = _report(args, real, sim, prefill, decode, load_before, load_after, time.monotonic() - wall0)
    report["models_sha1"] = digests
    print(report["table"])  # first: a late failure to save loses nothing
    if args.results is None:
        return 0 if report["agree"] else 1
    try:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(_no_nan(report), indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise SystemExit(
            f"sjfsched bench real: could not save the results to --results {args.results}: "
            f"{exc.strerror or exc}"
        ) from None
    print(f"\nwrote {args.results}")
    return 0 if report["agree"] else 1


def _real_context(pinned: PinnedModels) -> PolicyContext:
    """What the policies of the real runs, and of their replay in virtual time, are built with.

    Clairvoyant's tau starts at 3 x 1 s here and then follows the short answers' service time
    (the rates, and so the sample's short service time, are known only once the real runs
    are over; the replay starts it where the real runs did, so that both run one policy).
    No unseen model and no history: bench real trains none and draws from no ``/fresh`` half.
    """
    return PolicyContext(
        short_latency=1.0, bundled_model=pinned.bundled, clairvoyant_model=pinned.clairvoyant
    )


def _why_not(policy: Policy, context: PolicyContext) -> str | None:
    """Why bench real cannot build ``policy`` with ``context`` (None: it can)."""
    try:
        policy.make(SimulatedBackend(), context)
    except (ValueError, OSError, PredictorError) as exc:
        if policy.family == "unseen":
            return "bench real trains no unseen predictor (a model trained without the trace); bench sim does"
        if re.search(r"[@,]warm=", policy.name):
            return (
                "bench real has no history for warm=N to learn from; bench sim runs it on a NAME/fresh trace"
            )
        return str(exc) or type(exc).__name__
    return None


def _check_policies(policies: Sequence[Policy], context: PolicyContext) -> None:
    """Build every policy (in front of a simulated backend) with ``context``, so that one
    bench real cannot run fails in one line before the model loads, not after the others ran."""
    for policy in policies:
        why = _why_not(policy, context)
        if why is not None:
            raise OptionError(f"sjfsched bench real: cannot run --policies {policy.name}: {why}")


def _run_real(
    args: argparse.Namespace,
    items: Sequence[TraceItem],
    policies: Sequence[Policy],
    pinned: PinnedModels,
    tmp: str,
) -> dict[str, list[Completion]]:
    """Each policy in turn on the real model: the completions of every request, in submission order."""
    from llama_cpp import Llama

    from ..backends import LlamaCppBackend

    n_ctx = _context_size(args, items)
    path = _model_path(args, tmp, n_ctx)
    try:
        llm = Llama(
            str(path),
            n_ctx=n_ctx,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            seed=0,
            verbose=False,
        )
    except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
        shown = f"--model {path}" if args.model is not None else f"the tiny model {path}"
        raise SystemExit(f"sjfsched bench real: {shown}: llama.cpp could not load it ({exc})") from None
    real: dict[str, list[Completion]] = {}
    try:
        llm.create_completion("warm up", max_tokens=8)
        context = _real_context(pinned)
        for policy in policies:
            backend = TraceLengthBackend(LlamaCppBackend(llm), prompt_chars=args.prompt_chars)
            requests = [item.request() for item in items]
            t0 = time.monotonic()
            print(f"running {len(requests)} requests under {policy.name} ...", file=sys.stderr, flush=True)
            real[policy.name] = anyio.run(_real_burst, policy.make(backend, context), requests)
            print(f"  {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    finally:
        llm.close()
    return real


def _report(
    args: argparse.Namespace,
    real: dict[str, list[Completion]],
    sim: dict[str, list[Completion]],
    prefill: float,
    decode: float,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
    wall: float,
) -> dict[str, Any]:
    stats = {
        kind: {name: _stats(cs, args.scale) for name, cs in runs.items()}
        for kind, runs in (("real", real), ("sim", sim))
    }
    names = list(real)
    base = "fcfs" if "fcfs" in names else names[0]  # the gains are against first-come-first-served
    names = [base, *(n for n in names if n != base)]
    label = "FCFS" if base == "fcfs" else base
    lines = [
        f"{len(next(iter(real.values())))} requests from {args.trace} (lengths x {args.scale}), "
        f"model {args.model or 'write_tiny_llama preset ' + args.preset}, {args.threads} thread(s)",
        f"measured: prefill {prefill:.0f} tokens/s, decode {decode:.1f} tokens/s "
        f"({1000 / decode:.1f} ms/token); load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; "
        f"{wall:.0f} s in all",
        "",
        f"| policy | run | short P50 (s) | vs {label} | medium P50 | long P50 | long P95 | vs {label} "
        "| mean | makespan | pauses |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    gains: dict[str, dict[str, float]] = {"real": {}, "sim": {}}
    for name in names:
        for kind in ("real", "sim"):
            s = stats[kind][name]
            b = stats[kind][base]
            g = gain(b["short_p50"], s["short_p50"])
            d = -gain(b["long_p95"], s["long_p95"])
            gains[kind][name] = g
            vs = "" if name == base else _signed(-g)
            dv = "" if name == base else _signed(d)
            lines.append(
                f"| {name} | {kind} | {_seconds(s['short_p50'])} | {vs} | {_seconds(s['medium_p50'])} "
                f"| {_seconds(s['long_p50'])} | {_seconds(s['long_p95'])} | {dv} | {s['mean']:.1f} "
                f"| {s['makespan']:.0f} | {s['pauses']} |"
            )
    agree = True
    lines.append("")
    for name in names[1:]:
        if math.isnan(gains["real"][name]) or math.isnan(gains["sim"][name]):
            lines.append(f"{name}: no short request in the sample, so no short-request gain to compare")
            continue
        diff = (gains["real"][name] - gains["sim"][name]) * 100
        ok = abs(diff) <= 10
        agree = agree and ok
        lines.append(
            f"{name}: short-request P50 gain {gains['real'][name]:.0%} real, "
            f"{gains['sim'][name]:.0%} simulated: "
            f"{abs(diff):.1f} points apart {'(within 10: agree)' if ok else '(more than 10: disagree)'}"
        )
    counts = stats["real"][base]["n"]
    lines.append(
        f"classes (by trace length): {counts['short']} short, {counts['medium']} medium, "
        f"{counts['long']} long"
    )
    return {
        "trace": args.trace,
        "requests": len(next(iter(real.values()))),
        "scale": args.scale,
        "model": str(args.model) if args.model else f"write_tiny_llama preset {args.preset}",
        "threads": args.threads,
        "prefill_rate": prefill,
        "decode_rate": decode,
        "load_before": load_before,
        "load_after": load_after,
        "wall_seconds": wall,
        "stats": stats,
        "gains": gains,
        "agree": agree,
        "table": "\n".join(lines),
    }


def _no_nan(value: Any) -> Any:
    """``value`` with every NaN as None, so the file is standard JSON (``null`` for "no such requests")."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value


def _seconds(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1f}"


def _signed(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:+.0%}"
