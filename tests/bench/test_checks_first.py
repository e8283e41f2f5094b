"""`sjfsched bench` refuses what it cannot run or save before it trains or runs anything.

Found by a reviewer with reproducers: `bench all --traces ,` overwrote the results with none,
`bench all --jobs 0` ran serially without a word, and `--profiles tpu` failed after the
training; a `--results` that could not be written lost the whole run.
"""

from __future__ import annotations

import json
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


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench real running its burst on the model fails the test (and needs llama-cpp-python)."""
    pytest.importorskip("llama_cpp", reason="bench real needs llama-cpp-python")
    from sjfsched._bench import _real

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("loaded the model before refusing its arguments")

    monkeypatch.setattr(_real, "_run_real", never)


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


def _trace(path: Path, lengths: list[int]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"prompt": f"question {i} " * (1 + i % 5), "output_tokens": n}) + "\n"
            for i, n in enumerate(lengths)
        )
    )
    return path


def _unwritable_results(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """--results values that no run could write, and what the refusal says of each."""
    folder = tmp_path / "results"
    folder.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    return {
        "a directory": (folder, f"--results {folder} is a directory"),
        "under a file": (
            a_file / "sub" / "sim.json",
            f"--results {a_file / 'sub' / 'sim.json'}: {a_file} is",
        ),
    }


@pytest.mark.usefixtures("nothing_runs")
@pytest.mark.parametrize("where", ["a directory", "under a file"])
@pytest.mark.parametrize("command", ["sim", "all"])
def test_sim_and_all_refuse_a_results_path_they_could_not_write_before_running(
    tmp_path: Path, command: str, where: str
) -> None:
    data = sharegpt_like(tmp_path / "data", n=30)
    results, message = _unwritable_results(tmp_path)[where]
    argv = ["bench", command, "--data", str(data), "--traces", "sharegpt", "--results", str(results)]
    argv += ["--out", str(tmp_path / "docs")] if command == "all" else ["--scenarios", "burst5"]
    got = _exit_message([*argv, "--no-progress"])
    assert got.startswith("sjfsched bench: ") and message in got


@pytest.mark.usefixtures("no_model_loads")
@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_bench_real_refuses_a_results_path_it_could_not_write_before_the_model(
    tmp_path: Path, where: str
) -> None:
    trace = _trace(tmp_path / "t.jsonl", [10, 50, 300, 900])
    results, message = _unwritable_results(tmp_path)[where]
    got = _exit_message(
        ["bench", "real", "--trace", str(trace), "--requests", "4", "--results", str(results)]
    )
    assert got.startswith("sjfsched bench real: ") and message in got


def test_a_run_whose_results_cannot_be_saved_still_prints_its_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(results: Any, path: Path, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(_cli, "save_results", fail)
    trace = _trace(tmp_path / "t.jsonl", [10, 50, 300, 900, 20, 40])
    results = tmp_path / "r.json"
    got = _exit_message(
        ["bench", "sim", "--traces", str(trace), "--profiles", "gpu", "--scenarios", "burst5",
         "--policies", "fcfs,oracle", "--repetitions", "3", "--no-progress", "--results", str(results)]
    )  # fmt: skip
    assert got == f"sjfsched bench: could not save the results to --results {results}: Permission denied"
    assert f"### {trace}, gpu backend, burst5" in capsys.readouterr().out  # the run is not lost


@pytest.mark.usefixtures("no_model_loads")
@pytest.mark.parametrize(
    ("policy", "why"),
    [
        ("unseen", "bench real trains no unseen predictor"),
        ("plain-unseen", "bench real trains no unseen predictor"),
        ("sjfsched@warm=10", "bench real has no history for warm=N to learn from"),
        ("oracle@adapt=0", "adapt=0 applies to the lexical predictors only"),
        ("lexical:{tmp}/missing.onnx", "model file not found"),
    ],
)
def test_bench_real_refuses_a_policy_it_cannot_build_before_the_model(
    tmp_path: Path, policy: str, why: str
) -> None:
    policy = policy.format(tmp=tmp_path)
    trace = _trace(tmp_path / "t.jsonl", [10, 50, 300, 900])
    got = _exit_message(
        ["bench", "real", "--trace", str(trace), "--requests", "4", "--policies", f"fcfs,{policy}",
         "--results", str(tmp_path / "real.json")]
    )  # fmt: skip
    assert got.startswith(f"sjfsched bench real: cannot run --policies {policy}: ")
    assert why in got


def test_bench_real_help_says_which_policies_it_cannot_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "real", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "not unseen, plain-unseen or PREDICTOR@warm=N" in help_text


@pytest.mark.usefixtures("nothing_runs")
def test_results_over_an_input_of_the_run_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bench sim --traces requests.jsonl --results requests.jsonl` replaced the log with the report."""
    trace = _trace(tmp_path / "requests.jsonl", [10, 50, 300, 900, 20, 40])
    before = trace.read_text()
    monkeypatch.chdir(tmp_path)
    for results, traces in (
        ("requests.jsonl", "requests.jsonl"),
        (str(trace), "requests.jsonl/fresh"),  # the same file by another name and a suffix
    ):
        got = _exit_message(
            [
                "bench",
                "sim",
                "--traces",
                traces,
                "--scenarios",
                "burst5",
                "--results",
                results,
                "--no-progress",
            ]
        )
        assert got.startswith(f"sjfsched bench: --results {results} is an input of this run"), got
    model = tmp_path / "mine.onnx"
    model.write_bytes(b"a model")
    got = _exit_message(
        ["bench", "sim", "--traces", "requests.jsonl", "--scenarios", "burst5", "--no-progress",
         "--policies", f"fcfs,lexical:{model}@aging=0", "--results", str(model)]
    )  # fmt: skip
    assert "is an input of this run" in got and model.read_bytes() == b"a model"
    assert trace.read_text() == before


@pytest.mark.usefixtures("no_model_loads")
def test_bench_real_refuses_results_over_its_trace_or_model(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "t.jsonl", [10, 50, 300, 900])
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    for results in (trace, gguf):
        got = _exit_message(
            ["bench", "real", "--trace", str(trace), "--model", str(gguf), "--requests", "4",
             "--results", str(results)]
        )  # fmt: skip
        assert got.startswith(f"sjfsched bench real: --results {results} is an input of this run"), got
    assert gguf.read_bytes() == b"GGUF"


@pytest.mark.usefixtures("nothing_runs")
def test_bench_all_refuses_an_out_it_could_not_draw_into_before_training(tmp_path: Path) -> None:
    data = sharegpt_like(tmp_path / "data", n=30)
    a_file = tmp_path / "notadir.txt"
    a_file.write_text("")
    got = _exit_message(
        ["bench", "all", "--data", str(data), "--traces", "sharegpt", "--out", str(a_file),
         "--results", str(tmp_path / "sim.json"), "--no-progress"]
    )  # fmt: skip
    assert got == f"sjfsched bench all: --out {a_file}: {a_file} is a file, not a directory"


@pytest.mark.parametrize("option", ["--repetitions", "--poisson-requests", "--seeds"])
def test_zero_counts_are_refused_naming_the_option(
    tmp_path: Path, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "sim", "--traces", "sharegpt", option, "0"])
    assert info.value.code == 2
    assert f"argument {option}: must be 1 or more, got 0" in capsys.readouterr().err


@pytest.mark.usefixtures("nothing_runs")
def test_results_over_a_built_in_traces_corpus_are_refused(tmp_path: Path) -> None:
    """`bench sim --data D --traces sharegpt --results D/sharegpt_natural.jsonl.gz` replaced the corpus."""
    data = sharegpt_like(tmp_path / "data", n=30)
    corpus = data / "sharegpt_natural.jsonl.gz"
    before = corpus.read_bytes()
    for argv in (
        ["--traces", "sharegpt", "--policies", "fcfs", "--results", str(corpus)],
        ["--traces", "sharegpt/fresh", "--policies", "fcfs", "--results", str(corpus)],
        # an unseen policy trains on every corpus of --data
        ["--traces", "sharegpt", "--policies", "plain-unseen", "--results", str(data / "oasst1.jsonl.gz")],
    ):
        got = _exit_message(["bench", "sim", "--data", str(data), "--scenarios", "burst5", *argv])
        assert got.startswith(f"sjfsched bench: --results {argv[-1]} is an input of this run"), got
    for results in (corpus, data / "oasst1.jsonl.gz"):  # bench all trains the unseen predictor
        got = _exit_message(
            ["bench", "all", "--data", str(data), "--traces", "sharegpt", "--out", str(tmp_path / "docs"),
             "--results", str(results), "--no-progress"]
        )  # fmt: skip
        assert got.startswith(f"sjfsched bench: --results {results} is an input of this run"), got
    assert corpus.read_bytes() == before


@pytest.mark.usefixtures("no_model_loads")
def test_bench_real_refuses_results_over_its_built_in_traces_corpus(tmp_path: Path) -> None:
    data = sharegpt_like(tmp_path / "data", n=30)
    corpus = data / "sharegpt_natural.jsonl.gz"
    got = _exit_message(
        ["bench", "real", "--data", str(data), "--trace", "sharegpt", "--requests", "4",
         "--results", str(corpus)]
    )  # fmt: skip
    assert got.startswith(f"sjfsched bench real: --results {corpus} is an input of this run"), got


@pytest.mark.usefixtures("nothing_runs")
@pytest.mark.parametrize(
    ("policy", "why"),
    [
        ("sjfsched@aging=-1", "aging must be a finite number >= 0, got -1.0"),
        ("sjfsched@max_wait=-5", "max_wait must be a number of seconds >= 0"),
        ("unseen@aging=-1", "aging must be a finite number >= 0, got -1.0"),
        ("heuristic@adapt=0", "adapt=0 applies to the lexical predictors only"),
        ("lexical:{tmp}/missing.onnx", "model file not found"),
        ("sjfsched@warm=5", "warm=N needs a NAME/fresh trace"),
    ],
)
def test_bench_sim_refuses_a_policy_it_cannot_build_before_running(
    tmp_path: Path, policy: str, why: str
) -> None:
    """`--policies fcfs,sjfsched,sjfsched@aging=-1` ran fcfs and sjfsched, then failed naming no policy."""
    policy = policy.format(tmp=tmp_path)
    data = sharegpt_like(tmp_path / "data", n=30)
    got = _exit_message(
        ["bench", "sim", "--data", str(data), "--traces", "sharegpt", "--scenarios", "burst5",
         "--policies", f"fcfs,sjfsched,{policy}", "--no-progress"]
    )  # fmt: skip
    on = " on sharegpt" if "warm=" in policy else ""
    assert got.startswith(f"sjfsched bench: cannot run --policies {policy}{on}: "), got
    assert why in got


@pytest.mark.usefixtures("nothing_runs")
def test_bench_sim_checks_warm_policies_on_each_kind_of_trace(tmp_path: Path) -> None:
    data = sharegpt_like(tmp_path / "data", n=30)
    argv = ["bench", "sim", "--data", str(data), "--scenarios", "burst5", "--no-progress"]
    got = _exit_message([*argv, "--traces", "sharegpt/fresh,sharegpt", "--policies", "sjfsched@warm=5"])
    assert got.startswith("sjfsched bench: cannot run --policies sjfsched@warm=5 on sharegpt: "), got
    with pytest.raises(AssertionError, match="trained or ran"):  # on /fresh alone it is built, then runs
        main([*argv, "--traces", "sharegpt/fresh", "--policies", "sjfsched@warm=5"])


@pytest.mark.usefixtures("nothing_runs")
@pytest.mark.parametrize(
    ("scenario", "why"),
    [
        ("burst0", "a burst needs 1 request or more"),
        ("burst000", "a burst needs 1 request or more"),
        ("poisson0.0", "the load RHO of poissonRHO must be from 0.01 to below 1"),
        ("poisson.0", "the load RHO of poissonRHO must be from 0.01 to below 1"),
        # Far lower, arrival times grow past what a float resolves to the second.
        ("poisson0.000000000001", "the load RHO of poissonRHO must be from 0.01 to below 1"),
        ("poisson1.2", "the load RHO of poissonRHO must be from 0.01 to below 1 (e.g. poisson0.74)"),
        ("poisson1", "the load RHO of poissonRHO must be from 0.01 to below 1 (e.g. poisson0.74)"),
        ("wave", "use burstN or poissonRHO"),
    ],
)
def test_a_scenario_that_cannot_run_is_refused_naming_it(tmp_path: Path, scenario: str, why: str) -> None:
    """`--scenarios burst0` said 'Scenario.size and Scenario.repetitions must be >= 1', naming neither."""
    data = sharegpt_like(tmp_path / "data", n=30)
    got = _exit_message(
        ["bench", "sim", "--data", str(data), "--traces", "sharegpt", "--scenarios", f"burst5,{scenario}"]
    )
    assert got.startswith(f"sjfsched bench: bad scenario {scenario!r} in --scenarios: {why}"), got


@pytest.mark.usefixtures("no_model_loads")
@pytest.mark.parametrize("requests", [["--requests", "10"], []])  # the default is 36
def test_bench_real_refuses_more_requests_than_its_trace_has_naming_the_option(
    tmp_path: Path, requests: list[str]
) -> None:
    """It said "trace 't.jsonl' has 4 items, cannot draw 10", naming neither the option nor the command."""
    trace = _trace(tmp_path / "t.jsonl", [10, 50, 300, 900])
    got = _exit_message(
        ["bench", "real", "--trace", str(trace), "--results", str(tmp_path / "r.json"), *requests]
    )
    n = requests[1] if requests else "36"
    assert got == (
        f"sjfsched bench real: --requests {n} is more than trace {str(trace)!r} has (4 prompts): "
        "take --requests 4 or fewer"
    )
