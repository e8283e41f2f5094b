"""Why the lexical model's graph gathers with ``GatherElements``, not ``Gather``.

On a one-dimensional table the two operators give the same values;
onnxruntime's kernels for them differ in cost per row.  This script runs the
bundled model as shipped (``GatherElements``) and a copy whose first node is
``Gather`` (the graph ``sjfsched train`` wrote before), on the same inputs,
alternating between the two so that a machine whose speed drifts treats both
alike, and prints:

- one prompt's run (the ids and values :meth:`LexicalFeaturizer.encode`
  gives), the median over every prompt's run in ``--repeat`` passes,
  microseconds (the graph that goes first alternates from prompt to prompt);
- a batch's run (``predict_many``'s one run over the rows of all the
  prompts), nanoseconds per row, best of ``--repeat`` (the graph that goes
  first alternates from one pass to the next).

It also checks that both give the same scores and the same per-row
contributions.

    python benchmarks/gather.py [--data DIR] [--limit N] [--repeat 5]

Needs ``onnx`` (in the ``bench`` extra) to write the ``Gather`` copy.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from predictor import SHARED_DATA, load_prompts

from sjfsched._cli import at_least_one, machine_summary
from sjfsched.predictors import LexicalPredictor
from sjfsched.predictors._lexical import _CONTRIBUTIONS, _SCORE, bundled_model_path


def gather_copy(folder: Path) -> Path:
    model = onnx.load(str(bundled_model_path()))
    (node,) = [n for n in model.graph.node if n.op_type == "GatherElements"]
    node.op_type = "Gather"
    path = folder / "gather.onnx"
    onnx.save(model, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--limit", type=at_least_one, default=4000, help="prompts to time (default 4000)")
    parser.add_argument("--repeat", type=at_least_one, default=5)
    args = parser.parse_args()
    prompts, where = load_prompts(args.data, args.limit)
    print(f"prompts: {where}")
    print(f"machine: {machine_summary()}")
    with tempfile.TemporaryDirectory() as tmp:
        copy = gather_copy(Path(tmp))
        for name, path in (("shipped", bundled_model_path()), ("copy", copy)):
            print(f"{name} graph: {' '.join(n.op_type for n in onnx.load(str(path)).graph.node)}")
        models = {
            "GatherElements (shipped)": LexicalPredictor(calibrate=False),
            "Gather": LexicalPredictor(copy, calibrate=False),
        }
    encoded = [next(iter(models.values()))._features.encode(p) for p in prompts]
    feeds = [{"ids": ids, "values": values} for ids, values in encoded]
    runs = {name: p._run for name, p in models.items()}
    scores = {name: [float(run(_SCORE, f)[0]) for f in feeds] for name, run in runs.items()}
    first, second = scores.values()
    if first != second:
        raise SystemExit("the two graphs disagree")
    print(f"same scores for all {len(feeds):,} prompts")

    one: dict[str, list[float]] = {name: [] for name in runs}
    in_turn = list(runs.items())
    for _ in range(args.repeat):  # alternate prompt by prompt, and which graph goes first
        for j, feed in enumerate(feeds):
            for name, run in in_turn[:: 1 if j % 2 == 0 else -1]:
                t0 = time.perf_counter_ns()
                run(_SCORE, feed)
                one[name].append(time.perf_counter_ns() - t0)
    batch = next(iter(models.values()))._features.encode_batch(prompts)
    rows = {"ids": batch.ids, "values": np.ones(len(batch.ids), np.float32)}
    first, second = (run(_CONTRIBUTIONS, rows)[0] for run in runs.values())
    if not np.array_equal(first, second):
        raise SystemExit("the two graphs disagree on a batch")
    per_row: dict[str, float] = {name: float("inf") for name in runs}
    for i in range(args.repeat):
        for name, run in list(runs.items())[:: 1 if i % 2 == 0 else -1]:
            t0 = time.perf_counter_ns()
            run(_CONTRIBUTIONS, rows)
            per_row[name] = min(per_row[name], (time.perf_counter_ns() - t0) / len(batch.ids))
    rows_per_prompt = statistics.median(len(ids) for ids, _ in encoded)
    print(
        f"\none prompt's run (median {rows_per_prompt:.0f} rows), median µs; a batch's run "
        f"({len(batch.ids):,} rows of {len(prompts):,} prompts), ns per row"
    )
    print(f"{'graph':26} {'one prompt':>10} {'batch':>8}")
    for name in runs:
        print(f"{name:26} {statistics.median(one[name]) / 1000:10.1f} {per_row[name]:8.2f}")


if __name__ == "__main__":
    main()
