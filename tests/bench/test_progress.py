"""The progress bar shows only on a terminal: in a log (stderr redirected) it is noise."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from sjfsched._bench._run import Unit, run_units
from sjfsched._bench._sim import PinnedModels, Scenario
from sjfsched._cli import main


def test_no_progress_bar_where_stderr_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(f'{{"prompt": "q{i}", "output_tokens": {10 + 100 * i}}}\n' for i in range(4)))
    unit = Unit(str(trace), "gpu", Scenario("burst", 2, 2), "fcfs")
    results = run_units([unit], tmp_path, progress=True, models=PinnedModels())
    assert len(results) == 1
    assert capsys.readouterr().err == ""  # captured stderr is no terminal


def test_the_help_says_when_there_is_no_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "sim", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "there is none either where stderr is not a terminal" in help_text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("progress", [True, False])
def test_a_terminal_gets_the_bar_unless_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, progress: bool
) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(f'{{"prompt": "q{i}", "output_tokens": {10 + 100 * i}}}\n' for i in range(4)))
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run_units([Unit(str(trace), "gpu", Scenario("burst", 2, 2), "fcfs")], tmp_path, progress=progress)
    assert ("4/4" in terminal.getvalue()) is progress  # 2 bursts of 2 requests
