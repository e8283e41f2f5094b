"""The ``sjfsched`` command line itself: help, and a command whose extra is missing."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sjfsched import _cli
from sjfsched._cli import main


def test_without_a_command_it_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert all(name in out for name in _cli.COMMANDS)


@pytest.mark.parametrize(("command", "extra"), [("bench", "bench"), ("serve", "proxy"), ("train", "train")])
def test_a_missing_extra_is_named(
    command: str, extra: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.import_module

    def without_it(name: str, package: str | None = None) -> ModuleType:
        if name == _cli.COMMANDS[command][0]:
            raise ModuleNotFoundError("No module named 'something_optional'")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", without_it)
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"sjfsched {command}: not available (No module named 'something_optional')" in err
    assert f"pip install 'sjfsched[{extra}]'" in err


def test_every_help_works_under_python_OO() -> None:
    """``python -OO`` strips docstrings: no help text may be read from one."""
    commands = [
        ["sjfsched"],
        *(["sjfsched", c] for c in ("demo", "train", "evaluate", "bench", "serve")),
        ["sjfsched.testing"],
        ["sjfsched.testing", "write"],
        ["sjfsched.testing", "speed"],
    ]
    for module, *args in commands:
        out = subprocess.run(
            [sys.executable, "-OO", "-m", module, *args, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, (module, args, out.stderr)
        assert "usage:" in out.stdout


@pytest.mark.parametrize(
    ("args", "status", "said"),
    [
        # a bad option value: 2, as argparse's own errors (it was 1, like a missing input)
        (["bench", "sim", "--scenarios", "wave", "--data", "DATA"], 2, "sjfsched bench: bad scenario 'wave'"),
        (["bench", "sim", "--traces", "nope"], 2, "sjfsched bench: unknown trace 'nope'"),
        (["bench", "sim", "--jobs", "0"], 2, "sjfsched bench: --jobs must be 1 or more, got 0"),
        (["bench", "real", "--requests", "0"], 2, "sjfsched bench real: --requests must be at least 1"),
        (["bench", "sim", "--nope"], 2, "unrecognized arguments: --nope"),
        (
            ["bench", "real", "--policies", "nope", "--requests", "4", "--data", "DATA"],
            2,
            "sjfsched bench real: --policies: unknown",
        ),
        (
            ["bench", "ranking", "--predictors", "nope", "--data", "DATA"],
            2,
            "sjfsched bench: --predictors: unknown",
        ),
        # a missing input: 1
        (["bench", "sim", "--data", "/nonexistent/data"], 1, "--data /nonexistent/data is not a directory"),
        (["evaluate", "/nonexistent/data"], 1, "sjfsched evaluate: no such file or directory"),
    ],
)
def test_the_command_exits_2_for_a_bad_option_and_1_for_a_missing_input(
    args: list[str], status: int, said: str, tmp_path: Path
) -> None:
    # DATA: corpora of the shared data's shape (the checks come after finding them; without
    # ../shared beside the checkout, a run names that first)
    from tests.bench._data import sharegpt_like

    data = str(sharegpt_like(tmp_path / "data", n=30)) if "DATA" in args else ""
    args = [data if a == "DATA" else a for a in args]
    out = subprocess.run(
        [sys.executable, "-m", "sjfsched", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert (out.returncode, out.stdout) == (status, ""), out.stderr
    assert said in out.stderr
    assert "Traceback" not in out.stderr


def test_main_raises_a_bad_option_value_with_its_message(tmp_path: Path) -> None:
    from tests.bench._data import sharegpt_like

    with pytest.raises(_cli.OptionError) as info:
        main(["bench", "sim", "--scenarios", "wave", "--data", str(sharegpt_like(tmp_path / "data", n=30))])
    assert str(info.value.code).startswith("sjfsched bench: bad scenario 'wave'")


@pytest.mark.parametrize(
    ("script", "args", "said"),
    [
        ("scheduling.py", ["--jobs", "0"], "sjfsched bench: --jobs must be 1 or more, got 0"),
        ("real_llama.py", ["--requests", "0"], "sjfsched bench real: --requests must be at least 1"),
    ],
)
def test_the_benchmark_scripts_exit_as_the_command_does(script: str, args: list[str], said: str) -> None:
    """They called main() and exited with 1 where ``sjfsched bench`` exits with 2."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / script
    out = subprocess.run(
        [sys.executable, str(path), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 2, out.stderr
    assert said in out.stderr


def test_a_policy_value_that_cannot_run_exits_2(tmp_path: Path) -> None:
    from tests.bench._data import sharegpt_like

    data = sharegpt_like(tmp_path / "data", n=30)
    argv = ["bench", "sim", "--data", str(data), "--traces", "sharegpt", "--scenarios", "burst5"]
    out = subprocess.run(
        [sys.executable, "-m", "sjfsched", *argv, "--policies", "oracle@aging=-1", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    assert "cannot run --policies oracle@aging=-1: aging must be a finite number >= 0" in out.stderr
