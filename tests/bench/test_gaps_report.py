"""Found by a mutation audit.

the benchmark tables' signs, stand-in marks and target checks, from a real simulated run."""

from __future__ import annotations

import json
from pathlib import Path

import attrs

from sjfsched._bench._metrics import gain
from sjfsched._bench._report import Target, policy_table, target_table
from sjfsched._bench._run import Result, load_results
from sjfsched._cli import main


def _results(tmp_path: Path) -> tuple[list[Result], str]:
    trace = tmp_path / "mixed.jsonl"
    lengths = [20 + 7 * i if i % 3 else 900 + 11 * i for i in range(60)]
    trace.write_text(
        "".join(
            json.dumps({"prompt": f"question {i} " * (1 + i % 5), "output_tokens": n}) + "\n"
            for i, n in enumerate(lengths)
        )
    )
    out = tmp_path / "r.json"
    status = main(
        ["bench", "sim", "--traces", str(trace), "--profiles", "gpu", "--scenarios", "burst20",
         "--policies", "fcfs,oracle", "--repetitions", "1", "--no-progress", "--results", str(out)]
    )  # fmt: skip
    assert status == 0
    results, _ = load_results(out)
    return list(results), str(trace)


def _row(table: str, label: str) -> list[str]:
    return next(line for line in table.splitlines() if line.startswith(f"| {label} |")).split(" | ")


def test_policy_table_signs_and_stand_in_marks(tmp_path: Path) -> None:
    results, trace = _results(tmp_path)
    base = next(r for r in results if r.unit.policy == "fcfs")
    oracle = next(r for r in results if r.unit.policy == "oracle")
    g = gain(base.summary.classes["short"].p50, oracle.summary.classes["short"].p50)
    assert g > 0.01  # shortest first: the short requests wait less than under FCFS
    table = policy_table(results, "gpu", "burst20", trace, ["fcfs", "oracle"])
    assert _row(table, "oracle")[2] == f"{-g:+.0%}"  # "vs FCFS": lower is negative
    stand_in = [attrs.evolve(r, faithful=False) if r is oracle else r for r in results]
    table = policy_table(stand_in, "gpu", "burst20", trace, ["fcfs", "oracle"])
    plain = policy_table(results, "gpu", "burst20", trace, ["oracle"])
    assert _row(table, "oracle*")[1] == _row(plain, "oracle")[1]  # the stand-in is marked, same numbers


def test_target_met_exactly_is_met(tmp_path: Path) -> None:
    results, trace = _results(tmp_path)
    base = next(r for r in results if r.unit.policy == "fcfs")
    oracle = next(r for r in results if r.unit.policy == "oracle")
    g = gain(base.summary.classes["short"].p50, oracle.summary.classes["short"].p50)
    table = target_table(results, "oracle", [Target("burst20", g, 10.0)])
    row = _row(table, trace)
    assert row[2].endswith("✓"), row
