"""The timing scripts in benchmarks/ refuse a count below 1 in one line naming the option.

Found by a reviewer with reproducers: `overhead.py --depths 0` or `--repeat 0`,
`predictor.py --repeat 0` or `--limit 0` and `proxy_overhead.py --requests 0` ended in
tracebacks (ZeroDivisionError, StatisticsError...) instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize(
    ("script", "argv", "refusal"),
    [
        (
            "overhead.py",
            ["--depths", "10", "0", "--repeat", "1"],
            "argument --depths: must be 1 or more, got 0",
        ),
        ("overhead.py", ["--depths", "10", "--repeat", "0"], "argument --repeat: must be 1 or more, got 0"),
        ("predictor.py", ["--limit", "0", "--repeat", "1"], "argument --limit: must be 1 or more, got 0"),
        ("predictor.py", ["--limit", "20", "--repeat", "0"], "argument --repeat: must be 1 or more, got 0"),
        ("gather.py", ["--limit", "0"], "argument --limit: must be 1 or more, got 0"),
        (
            "proxy_overhead.py",
            ["--requests", "0", "--no-model"],
            "argument --requests: must be 1 or more, got 0",
        ),
        ("proxy_overhead.py", ["--requests", "-1"], "argument --requests: must be 1 or more, got -1"),
        (
            "proxy_overhead.py",
            ["--model-requests", "0"],
            "argument --model-requests: must be 1 or more, got 0",
        ),
        ("overhead.py", ["--repeat", "two"], "argument --repeat: not a whole number: 'two'"),
        # a FileNotFoundError traceback once the prompts were read
        ("predictor.py", ["--model", "missing.onnx"], "--model missing.onnx: no such file"),
        (  # it failed with a LookupError once the asyncio part had run
            "overhead.py",
            ["--depths", "1", "--repeat", "1", "--backends", "asyncio", "foo"],
            "argument --backends: invalid choice: 'foo' (choose from 'asyncio', 'trio')",
        ),
    ],
)
def test_a_count_below_one_is_refused_naming_the_option(
    tmp_path: Path, script: str, argv: list[str], refusal: str
) -> None:
    if script in ("predictor.py", "gather.py"):
        argv = [*argv, "--data", str(tmp_path)]  # no corpora: the bundled demo trace's prompts
    assert _refusal(script, argv, tmp_path) == f"{script}: error: {refusal}"


def _refusal(script: str, argv: list[str], cwd: Path) -> str:
    """The last line of what ``script argv`` printed, checking it exited 2 without a traceback."""
    if not (BENCHMARKS / script).is_file():
        pytest.skip("the benchmarks/ scripts are not in this tree")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("script", ["predictor.py", "proxy_overhead.py", "overhead.py"])
def test_the_scripts_start_without_the_bench_extra(tmp_path: Path, script: str) -> None:
    """They need only what they time: not trio, which only the bench harness imports."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "trio.py").write_text("raise ImportError('trio is hidden by this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_predictor_py_names_a_damaged_corpus_and_its_line(tmp_path: Path) -> None:
    """It read the corpora with gzip and json itself: a BadGzipFile or KeyError traceback."""
    (tmp_path / "mine.jsonl.gz").write_text('{"prompt": "hi"}\n')
    last = _refusal("predictor.py", ["--data", str(tmp_path), "--repeat", "1"], tmp_path)
    assert "mine.jsonl.gz: not gzip data; if it is plain JSON lines, name the file without .gz" in last


def test_gather_py_times_both_graphs_on_the_same_scores(tmp_path: Path) -> None:
    """benchmarks/gather.py (docs/performance.md) runs the shipped graph and a Gather copy."""
    if not (BENCHMARKS / "gather.py").is_file():
        pytest.skip("the benchmarks/ scripts are not in this tree")
    done = subprocess.run(  # no corpora in tmp_path: the bundled demo trace's prompts
        [
            sys.executable,
            str(BENCHMARKS / "gather.py"),
            "--data",
            str(tmp_path),
            "--limit",
            "30",
            "--repeat",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "same scores for all 30 prompts" in done.stdout
    graphs = {
        line.split(" graph: ")[0]: line.split(" graph: ")[1].split()
        for line in done.stdout.splitlines()
        if " graph: " in line
    }
    assert graphs["shipped"][0] == "GatherElements" and graphs["copy"][0] == "Gather"  # the two it times
    assert graphs["shipped"][1:] == graphs["copy"][1:]  # and only that op differs
    rows = {
        line.split()[0]: line.split()[-2:] for line in done.stdout.splitlines() if line.startswith("Gather")
    }
    assert set(rows) == {"GatherElements", "Gather"}
    assert all(float(x) > 0 for cells in rows.values() for x in cells)


def test_resume_drift_finds_no_drift_when_nothing_runs_during_the_pause() -> None:
    pytest.importorskip("llama_cpp", reason="resume_drift.py needs llama-cpp-python")
    from tests.support.models import STORIES_SKIP_REASON, stories_model

    path = stories_model()
    if path is None:
        pytest.skip(STORIES_SKIP_REASON)
    script = str(BENCHMARKS / "resume_drift.py")
    runs = [
        subprocess.run(
            [sys.executable, script, str(path), "--max-tokens", "12", *extra],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        for extra in ([], ["--nothing-between"])
    ]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr[-500:] for r in runs]
    between, nothing = (r.stdout.splitlines() for r in runs)
    assert between[0] == "paused after each of its first 12 chunks, another request run in between, resumed:"
    assert between[1].endswith(" of 12 answers differ from the answer never paused")
    assert nothing[1] == "0 of 12 answers differ from the answer never paused"
