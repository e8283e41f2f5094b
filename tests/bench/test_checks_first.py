"""`sjfsched bench` refuses what it cannot run or save before it trains or runs anything.

Found by a reviewer with reproducers: `bench all --traces ,` overwrote the results with none,
`bench all --jobs 0` ran serially without a word, and `--profiles tpu` failed after the
training; a `--results` that could not be written lost the whole run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sjfsched._bench import _cli, _run
from sjfsched._bench._run import save_results
from sjfsched._cli import main

from ._data import sharegpt_like


def _exit_message(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert isinstance(info.value.code, str), info.value.code  # a message, printed on one line
    assert "\n" not in info.value.code
    return info.value.code


@pytest.fixture
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training the unseen predictors or running a unit fails the test."""

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("trained or ran before refusing its arguments")

    monkeypatch.setattr(_run, "prepare_models", never)
    monkeypatch.setattr(_cli, "run_units", never)


@pytest.mark.usefixtures("nothing_runs")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--traces", ","], "sjfsched bench: --traces names nothing to run"),
        (["--profiles", ","], "sjfsched bench: --profiles names nothing to run"),
        (["--jobs", "0"], "sjfsched bench: --jobs must be 1 or more, got 0"),
        (["--jobs", "-3"], "sjfsched bench: --jobs must be 1 or more, got -3"),
        (["--profiles", "gpu,tpu"], "sjfsched bench: unknown backend profile 'tpu' in --profiles"),
    ],
)
@pytest.mark.parametrize("command", ["sim", "all"])
def test_sim_and_all_refuse_bad_lists_before_training(
    tmp_path: Path, command: str, argv: list[str], message: str
) -> None:
    data = sharegpt_like(tmp_path / "data", n=30)
    results = tmp_path / "sim.json"
    results.write_text("the results of an earlier run\n")
    common = ["--data", str(data), "--results", str(results), "--no-progress"]
    extra = ["--out", str(tmp_path / "docs")] if command == "all" else ["--scenarios", "burst5"]
    if "--traces" not in argv:
        common += ["--traces", "sharegpt"]
    assert _exit_message(["bench", command, *common, *extra, *argv]).startswith(message)
    assert results.read_text() == "the results of an earlier run\n"  # left as it was


def test_an_empty_result_set_is_never_written(tmp_path: Path) -> None:
    results = tmp_path / "sim.json"
    results.write_text("the results of an earlier run\n")
    with pytest.raises(ValueError, match="no results to save"):
        save_results([], results, {})
    assert results.read_text() == "the results of an earlier run\n"
