"""How fast the predictors are: one request at a time, and in batches.

Prompts: every distinct prompt of the project's shared corpora
(``../shared/data``, 12,428 prompts, median 248 characters), or, where they
are absent, the 120 real prompts of the demo trace bundled with the package.

For each predictor it prints:

- ``predict()`` of one request: the median and the 90th and 99th percentiles
  over all prompts, timed one call at a time (after a warm-up pass), on the
  wall clock (``perf_counter_ns``) and as the thread's CPU time
  (``thread_time_ns``), which other programs on a busy machine disturb less;
- the lexical model fresh, and adapted (after observing 1,000 completed
  requests, its learnt correction adds a gather and a dot product);
- for the lexical model, the two halves of a prediction: its features
  (:meth:`LexicalFeaturizer.encode`) and the ONNX run, each timed alone and
  the two in turn (as ``predict()`` runs them), the two in turn and the
  whole ``predict()`` by the prompt's length, and the median cost
  of ``observe()`` of a request just predicted (what the scheduler does after
  every completed request), adapting (the default) and with ``adapt=False``;
- ``predict_many()``: prompts per second, in batches of 1, 100, 1,000 and
  all of them, per second of wall-clock time and of the thread's CPU time;
- the model file's size.

    python benchmarks/predictor.py [--data DIR] [--limit N] [--repeat 3]

Every figure is the best of ``--repeat`` passes (default 3), the usual way to
time code on a machine that other jobs share.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sjfsched import Request
from sjfsched._cli import at_least_one, machine_summary
from sjfsched.predictors import ClairvoyantPredictor, HeuristicPredictor, LexicalPredictor, Predictor
from sjfsched.predictors._corpus import iter_json_lines, parse_record
from sjfsched.predictors._features import HEAD_CHARS, TAIL_CHARS
from sjfsched.predictors._lexical import bundled_model_path
from sjfsched.predictors._wordtable import WordTable

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DEMO_TRACE = ROOT / "src" / "sjfsched" / "data" / "demo_trace.jsonl"
CLAIRVOYANT_MODEL = ROOT / "benchmarks" / "models" / "clairvoyant.onnx"
#: One character more than the part of a prompt the features read: longer prompts cost the same.
CLIPPED = HEAD_CHARS + TAIL_CHARS + 1
LENGTH_BANDS = ((0, 100), (101, 200), (201, 400), (401, CLIPPED - 1), (CLIPPED, sys.maxsize))


def load_prompts(data: Path, limit: int | None) -> tuple[list[str], str]:
    prompts: dict[str, None] = {}
    files = sorted(data.glob("*.jsonl.gz")) if data.is_dir() else []
    for path in files:  # read as the library reads corpora: a damaged file fails naming its line
        for i, raw in iter_json_lines(path):
            prompts.setdefault(parse_record(raw, path, i).prompt, None)
    where = f"{len(prompts):,} distinct prompts of {data}"
    if not prompts:
        for line in DEMO_TRACE.read_text(encoding="utf-8").splitlines():
            prompts.setdefault(json.loads(line)["prompt"], None)
        where = f"{len(prompts)} prompts of the bundled demo trace ({data} not found)"
    out = list(prompts)
    if limit is not None and limit < len(out):
        rng = np.random.default_rng(0)
        out = [out[i] for i in sorted(rng.choice(len(out), size=limit, replace=False))]
        where = f"{limit:,} sampled of the {where}"
    return out, where


def per_call(fn: Callable[[object], object], items: Sequence[object], repeat: int) -> dict[str, float]:
    """Median and tail of one call, in microseconds: best of ``repeat`` passes."""
    for item in items[: min(len(items), 500)]:
        fn(item)  # warm-up
    best: dict[str, float] = {}
    for _ in range(repeat):
        wall = np.empty(len(items))
        cpu = np.empty(len(items))
        for i, item in enumerate(items):
            c0 = time.thread_time_ns()
            t0 = time.perf_counter_ns()
            fn(item)
            t1 = time.perf_counter_ns()
            c1 = time.thread_time_ns()
            wall[i] = t1 - t0
            cpu[i] = c1 - c0
        result = {
            "median": float(np.median(wall)) / 1e3,
            "p90": float(np.percentile(wall, 90)) / 1e3,
            "p99": float(np.percentile(wall, 99)) / 1e3,
            "cpu_median": float(np.median(cpu)) / 1e3,
        }
        if not best or result["median"] < best["median"]:
            best = result
    return best


def batch_rate(
    predictor: Predictor, requests: Sequence[Request], size: int, repeat: int
) -> tuple[float, float]:
    """Prompts per second through predict_many in batches of ``size``: best of ``repeat``.

    Per second of wall-clock time, and per second of the thread's CPU time.
    """
    batches = [requests[i : i + size] for i in range(0, len(requests), size)]
    predictor.predict_many(batches[0])
    best = best_cpu = 0.0
    for _ in range(repeat):
        c0 = time.thread_time()
        t0 = time.perf_counter()
        for batch in batches:
            predictor.predict_many(batch)
        t1 = time.perf_counter()
        c1 = time.thread_time()
        best = max(best, len(requests) / (t1 - t0))
        best_cpu = max(best_cpu, len(requests) / max(c1 - c0, 1e-9))
    return best, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--limit", type=at_least_one, help="time on a random sample of this many prompts")
    parser.add_argument("--repeat", type=at_least_one, default=3)
    parser.add_argument(
        "--model",
        type=Path,
        help="time this lexical model instead of the bundled one (e.g. one trained with word vectors)",
    )
    args = parser.parse_args()
    model = args.model
    if model is not None and not model.is_file():
        parser.error(f"--model {model}: no such file")

    try:
        prompts, where = load_prompts(args.data, args.limit)
    except ValueError as exc:
        parser.error(f"--data {args.data}: {exc}")
    requests = [Request(p) for p in prompts]
    lengths = [len(p) for p in prompts]
    print(f"prompts: {where}; median {statistics.median(lengths):.0f} characters")
    print(f"machine: {machine_summary()}")
    if model is None:
        print(f"bundled model: {bundled_model_path().stat().st_size / 1e6:.2f} MB")
    else:
        print(f"model {model}: {model.stat().st_size / 1e6:.2f} MB")
    adapted = LexicalPredictor(model)
    featurizer = adapted._features
    print(
        f"weight table: {featurizer.table_size:,} rows ({featurizer.table_size * 4 / 1e6:.1f} MB of "
        f"float32); vocabulary: {len(featurizer.unigrams):,} words"
    )
    bare = LexicalPredictor(model, calibrate=False)
    scores = bare.scores(prompts)
    print(
        f"score bound: {int((scores <= bare._low).sum()):,} of the {len(prompts):,} prompts at its "
        f"low end, {int((scores >= bare._high).sum()):,} at its high end"
    )
    for i, request in enumerate(requests[:1000]):  # lengths do not matter to the cost
        adapted.observe(request, adapted.predict(request), 20 + (37 * i) % 1500)
    print(f"adapted: after observing {min(len(requests), 1000):,} completed requests")
    print()
    predictors: list[tuple[str, Predictor]] = [
        ("LexicalPredictor", LexicalPredictor(model)),
        ("  adapted", adapted),
        ("HeuristicPredictor", HeuristicPredictor()),
    ]
    if CLAIRVOYANT_MODEL.exists():
        predictors.append(("ClairvoyantPredictor", ClairvoyantPredictor(CLAIRVOYANT_MODEL)))

    print("predict() of one request, microseconds (wall clock; CPU time of the thread)")
    print(f"{'predictor':<22} {'median':>8} {'p90':>8} {'p99':>8} {'cpu median':>11}")
    for name, predictor in predictors:
        r = per_call(predictor.predict, requests, args.repeat)  # type: ignore[arg-type]
        print(f"{name:<22} {r['median']:8.1f} {r['p90']:8.1f} {r['p99']:8.1f} {r['cpu_median']:11.1f}")

    lexical = predictors[0][1]
    assert isinstance(lexical, LexicalPredictor)
    features = lexical._features
    encoded = [features.encode(p) for p in prompts]
    run = lexical._run
    r_feat = per_call(features.encode, prompts, args.repeat)  # type: ignore[arg-type]
    r_run = per_call(
        lambda e: run(["log_tokens"], {"ids": e[0], "values": e[1]}),  # type: ignore[index]
        encoded,
        args.repeat,
    )

    def features_then_run(text: str) -> object:
        ids, values = features.encode(text)
        return run(["log_tokens"], {"ids": ids, "values": values})

    # The two in turn, as predict() runs them: together they cost more than
    # apart, most likely as each leaves the processor's caches less ready for the other.
    r_both = per_call(features_then_run, prompts, args.repeat)  # type: ignore[arg-type]
    print(f"{'  of which features':<22} {r_feat['median']:8.1f} {r_feat['p90']:8.1f} {r_feat['p99']:8.1f}")
    print(f"{'  of which ONNX run':<22} {r_run['median']:8.1f} {r_run['p90']:8.1f} {r_run['p99']:8.1f}")
    print(f"{'  the two in turn':<22} {r_both['median']:8.1f} {r_both['p90']:8.1f} {r_both['p99']:8.1f}")
    print()
    # What a prediction costs grows with the prompt, up to the part read (HEAD_CHARS + TAIL_CHARS).
    print("by prompt length: median microseconds, the two in turn and the whole predict()")
    print(f"{'characters':<22} {'prompts':>8} {'in turn':>8} {'predict':>8}")
    for low, high in LENGTH_BANDS:
        band = [p for p in prompts if low <= len(p) <= high]
        if not band:
            continue
        turn = per_call(features_then_run, band, args.repeat)  # type: ignore[arg-type]
        whole = per_call(lexical.predict, [Request(p) for p in band], args.repeat)  # type: ignore[arg-type]
        label = f"{low:,}-{high:,}" if high < CLIPPED else f"{low:,} and more (read {CLIPPED - 1:,})"
        print(f"{label:<22} {len(band):8,} {turn['median']:8.1f} {whole['median']:8.1f}")
    print()
    # predict_many's word table: built once per process, at the first batch.
    builds = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        table = features._build_word_table()
        builds.append(time.perf_counter() - t0)
    if isinstance(table, WordTable):
        print(f"word table (predict_many): {table.nbytes / 1e6:.2f} MB, built in {min(builds) * 1e3:.0f} ms")
    else:
        print("word table: none (this vocabulary's words are looked up in a dict)")
    # observe() of a request predicted a moment before (the scheduler's case).
    # Adapting, it encodes and scores the prompt afresh and takes a learning
    # step; without adaptation the raw score is remembered, so no model run
    # (4,000 requests, so all are remembered).
    observed = requests[:4000]
    for label, adapt in (("observe(), adapting", True), ("observe(), adapt=False", False)):
        calibrating = LexicalPredictor(model, adapt=adapt)
        best_observe = float("inf")
        for _ in range(args.repeat):
            predictions = [calibrating.predict(r) for r in observed]
            times = np.empty(len(observed))
            for i, (request, prediction) in enumerate(zip(observed, predictions, strict=True)):
                t0 = time.perf_counter_ns()
                calibrating.observe(request, prediction, 20 + (37 * i) % 1500)
                times[i] = time.perf_counter_ns() - t0
            best_observe = min(best_observe, float(np.median(times)) / 1e3)
        print(f"{label:<22} {best_observe:8.1f}")
    print()
    # What only the timings above needed goes, so the garbage collector does not
    # walk 25,000 arrays during the batch timings.
    del encoded, predictions, calibrating
    gc.collect()

    sizes = [s for s in (1, 100, 1000) if s < len(requests)] + [len(requests)]  # none past the prompts
    print("predict_many(), prompts per second, by batch size")
    print(f"{'predictor':<22} " + " ".join(f"{s:>9,}" for s in sizes))
    for name, predictor in predictors:
        rates = [batch_rate(predictor, requests, s, args.repeat) for s in sizes]
        print(f"{name:<22} " + " ".join(f"{wall:9,.0f}" for wall, _ in rates))
        print(f"{'  per CPU second':<22} " + " ".join(f"{cpu:9,.0f}" for _, cpu in rates))


if __name__ == "__main__":
    main()
