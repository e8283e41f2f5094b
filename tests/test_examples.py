"""The examples that need no model or server run as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", ["custom_policy.py", "threads.py"])
def test_example_runs(name: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_custom_policy_meets_the_deadlines() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "custom_policy.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "MISSED" not in result.stdout
    assert result.stdout.count("met") == 2


def test_demo_prints_both_policies() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sjfsched", "demo"], capture_output=True, text=True, timeout=120, check=True
    )
    assert "FCFS" in result.stdout
    assert "sjfsched" in result.stdout
    assert "short P50" in result.stdout
