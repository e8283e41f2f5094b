"""Units in worker processes (--jobs 2): a unit that fails stops the run without running the rest.

Found by a reviewer: with --jobs 2 a policy that failed to build failed the run only once every
other unit had run (17.9 s against 1.3 s with --jobs 1), the pending units were never cancelled.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sjfsched._bench import _run
from sjfsched._bench._run import Unit, run_units
from sjfsched._bench._sim import PinnedModels, Scenario

_real_job = _run._run_unit_job


def _job_recording_starts(data_dir: str, unit: Unit, seed: int, models: PinnedModels) -> _run.Result:
    """The worker's job, which notes each start in a file; the good units wait for the bad
    one to have failed, so none of them finishes before it."""
    starts, failed = Path(os.environ["BENCH_TEST_STARTS"]), Path(os.environ["BENCH_TEST_FAILED"])
    if unit.policy.startswith("sjfsched@aging=-1"):
        failed.write_text("")
    else:
        with starts.open("a") as f:
            f.write(f"{unit.scenario.name}\n")
        deadline = time.monotonic() + 30
        while not failed.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return _real_job(data_dir, unit, seed, models)


def test_a_failing_unit_cancels_the_units_not_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(f'{{"prompt": "q{i}", "output_tokens": {10 + 100 * i}}}\n' for i in range(4)))
    starts, failed = tmp_path / "starts", tmp_path / "failed"
    starts.write_text("")
    monkeypatch.setenv("BENCH_TEST_STARTS", str(starts))
    monkeypatch.setenv("BENCH_TEST_FAILED", str(failed))
    monkeypatch.setattr(_run, "_run_unit_job", _job_recording_starts)
    bad = Unit(str(trace), "gpu", Scenario("burst", 2, 1), "sjfsched@aging=-1")
    good = [Unit(str(trace), "gpu", Scenario("burst", 2, r), "fcfs") for r in range(1, 21)]
    with pytest.raises(ValueError, match="aging must be"):
        run_units([bad, *good], tmp_path, jobs=2, progress=False, models=PinnedModels())
    started = starts.read_text().split()
    assert len(started) < len(good) // 2, started
