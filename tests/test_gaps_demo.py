"""Found by a mutation audit: the demo's change column is sjfsched's value against FCFS's, with its sign."""

from __future__ import annotations

import re

import pytest

from sjfsched._cli import main

_ROW = re.compile(r"^  (\S+ \S+)\s+(\d+\.\d)\s+(\d+\.\d)\s+([+-]\d+)%$")


def test_demo_change_column_is_relative_to_fcfs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    rows = [m.groups() for m in map(_ROW.match, capsys.readouterr().out.splitlines()) if m]
    assert len(rows) == 12
    for metric, fcfs, sjf, change in rows:
        a, b = float(fcfs), float(sjf)
        if abs(b - a) > 0.05 * a:  # clear of the rounding of the printed seconds
            assert int(change) == pytest.approx((b - a) / a * 100, abs=2), metric
