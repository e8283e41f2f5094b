"""`sjfsched bench` end to end on a tiny corpus: tables, saved results, figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from sjfsched._bench._run import load_results
from sjfsched._cli import main

from ._data import sharegpt_like


def test_sim_prints_tables_saves_results_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = sharegpt_like(tmp_path / "data")
    results = tmp_path / "r.json"
    status = main(
        [
            "bench", "sim", "--data", str(data), "--traces", "sharegpt", "--profiles", "gpu,cpu",
            "--scenarios", "burst20,poisson0.74", "--repetitions", "3", "--poisson-requests", "60",
            "--seeds", "2", "--policies", "standard,unseen@aging=0.1,sjfsched@cap=0.8,aging=0.05",
            "--results", str(results), "--no-progress",
        ]
    )  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    assert "### sharegpt, gpu backend, burst20" in out
    assert "### Targets: sjfsched against FCFS" in out
    assert "| sjfsched@cap=0.8,aging=0.05 |" in out
    loaded, meta = load_results(results)
    assert meta["profiles"]["gpu"] == [2500.0, 60.0]
    assert len(loaded) == 2 * 2 * 10
    assert meta["models_sha1"]["unseen for sharegpt"]
    for r in loaded:
        # Every request of every run completed, and throughput is the same work-conserving rate.
        assert r.summary.requests == (60 if r.unit.scenario.name == "burst20" else 120)
    fcfs = [r for r in loaded if r.unit.policy == "fcfs" and r.unit.profile == "gpu"]
    sjf = [r for r in loaded if r.unit.policy == "oracle" and r.unit.profile == "gpu"]
    for a, b in zip(fcfs, sjf, strict=True):
        assert a.summary.throughput == pytest.approx(b.summary.throughput, rel=0.05)

    assert main(["bench", "plots", "--results", str(results), "--out", str(tmp_path / "docs")]) == 0
    pngs = sorted(p.name for p in (tmp_path / "docs" / "img").glob("bench-*.png"))
    assert pngs == [
        "bench-cdf-cpu-poisson0.74.png",
        "bench-cdf-gpu-poisson0.74.png",
        "bench-tradeoff.png",
    ]


def test_a_policy_named_on_its_own_gets_its_row_even_if_a_sweep_has_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--policies fcfs,sjfsched@max_wait=3600` printed only fcfs's row: 3600 is a sweep value,
    and the policy showed under a sweep heading the user never asked for."""
    data = sharegpt_like(tmp_path / "data")
    argv = ["bench", "sim", "--data", str(data), "--traces", "sharegpt", "--profiles", "gpu", "--scenarios",
            "burst20", "--repetitions", "2", "--no-progress", "--policies"]  # fmt: skip
    assert main([*argv, "fcfs,sjfsched@max_wait=3600"]) == 0
    out = capsys.readouterr().out
    assert "| sjfsched@max_wait=3600 |" in out.split("### Summary")[0]  # its per-trace row
    assert "### Sweep" not in out
    assert main([*argv, "sweep:max_wait"]) == 0  # from a sweep: shown as one
    out = capsys.readouterr().out
    assert "| sjfsched@max_wait=3600 |" not in out.split("### Summary")[0] and "### Sweep" in out


def test_bad_names_fail_clearly(tmp_path: Path) -> None:
    data = sharegpt_like(tmp_path / "data")
    with pytest.raises(SystemExit, match="unknown trace"):
        main(["bench", "sim", "--data", str(data), "--traces", "nope", "--no-progress"])
    with pytest.raises(SystemExit, match="bad scenario"):
        main(["bench", "sim", "--data", str(data), "--traces", "sharegpt", "--scenarios", "wave"])
    with pytest.raises(SystemExit, match="unknown predictor"):
        main(
            [
                "bench",
                "sim",
                "--data",
                str(data),
                "--traces",
                "sharegpt",
                "--policies",
                "psychic",
                "--no-progress",
            ]
        )


def test_bad_options_are_named_in_their_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a reviewer: errors that did not name the option at fault, or misled."""
    data = sharegpt_like(tmp_path / "data")
    sim = ["bench", "sim", "--data", str(data), "--traces", "sharegpt", "--scenarios", "burst5",
           "--no-progress"]  # fmt: skip

    def message(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as info:
            main(argv)
        return str(info.value.code)

    assert message([*sim, "--policies", "fcfs,bogus"]).startswith(
        "sjfsched bench: --policies: unknown predictor 'bogus'"
    )
    for policy in ("fcfs@max_wait=60", "clairvoyant@aging=0"):  # were "unknown predictor 'fcfs'"
        assert message([*sim, "--policies", policy]).startswith(
            f"sjfsched bench: --policies: {policy.partition('@')[0]} takes no @options"
        )
    trace = tmp_path / "requests.jsonl"
    trace.write_text('{"prompt": "a", "output_tokens": 3}\n{"prompt": "b", "output_tokens": 9}\n')
    missing = tmp_path / "nowhere"
    assert message(["bench", "sim", "--data", str(missing), "--traces", str(trace), "--no-progress"]) == (
        f"sjfsched bench: --data {missing} is not a directory"  # was "no corpora directory; pass --data"
    )
    monkeypatch.chdir(tmp_path)  # not the repository root: the default --results is not here
    assert message(["bench", "tables"]) == (
        "sjfsched bench tables: --results benchmarks/results/sim.json: no such file (the default, "
        "read from the repository root: pass --results)"
    )
    real = tmp_path / "real.json"
    real.write_text('{"table": "| policy |", "agree": true, "runs": []}\n')
    assert message(["bench", "tables", "--results", str(real)]).startswith(
        f"sjfsched bench tables: --results {real}: the report of `bench real`"
    )
    results = tmp_path / "r.json"
    assert main([*sim, "--policies", "fcfs,sjfsched", "--repetitions", "1", "--results", str(results)]) == 0
    a_file = tmp_path / "afile"
    a_file.write_text("")
    assert message(["bench", "plots", "--results", str(results), "--out", str(a_file)]) == (
        f"sjfsched bench plots: --out {a_file}: {a_file} is a file, not a directory"
    )
    assert message(["bench", "real", "--model", str(missing / "m.gguf")]) == (
        f"sjfsched bench real: --model {missing / 'm.gguf'}: no such file"
    )


@pytest.mark.slow
def test_all_writes_every_figure_and_the_ranking(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = sharegpt_like(tmp_path / "data")
    status = main(
        [
            "bench", "all", "--data", str(data), "--traces", "sharegpt", "--out", str(tmp_path / "docs"),
            "--repetitions", "2", "--poisson-requests", "40", "--seeds", "1",
            "--results", str(tmp_path / "sim.json"), "--no-progress",
        ]
    )  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    assert "### Ranking accuracy of the predictors on each trace" in out
    assert "### Targets: plain-unseen against FCFS" in out
    pngs = sorted(p.name for p in (tmp_path / "docs" / "img").glob("bench-*.png"))
    assert pngs == [
        "bench-cdf-cpu-burst100.png",
        "bench-cdf-cpu-poisson0.74.png",
        "bench-cdf-gpu-burst100.png",
        "bench-cdf-gpu-poisson0.74.png",
        "bench-max-wait-burst100.png",
        "bench-max-wait-poisson0.9.png",
        "bench-tradeoff.png",
    ]
    _, meta = load_results(tmp_path / "sim.json")
    assert 0.0 <= meta["ranking"]["sharegpt"]["noisy1"] <= 1.0


def test_a_trace_profile_or_scenario_named_twice_runs_once(tmp_path: Path) -> None:
    """`--traces t,t --profiles gpu,gpu --scenarios burst2,burst2` ran (and saved) each unit 8 times."""
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(f'{{"prompt": "q{i}", "output_tokens": {10 + 100 * i}}}\n' for i in range(4)))
    results = tmp_path / "r.json"
    main(
        ["bench", "sim", "--traces", f"{trace},{trace}", "--profiles", "gpu,gpu",
         "--scenarios", "burst2,burst2,burst02,poisson0.5,poisson0.50,poisson.5", "--policies", "fcfs,fcfs",
         "--repetitions", "1", "--seeds", "1", "--poisson-requests", "5", "--no-progress",
         "--results", str(results)]
    )  # fmt: skip
    runs, _ = load_results(results)
    assert sorted(r.unit.scenario.name for r in runs) == ["burst2", "poisson0.5"]


def test_bench_alone_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 2
    usage = capsys.readouterr().err
    assert "{sim,all,plots,tables,traces,ranking,real}" in usage


def test_bench_all_calls_a_typo_an_unknown_trace(tmp_path: Path) -> None:
    """`bench all --traces foo` said it runs built-in traces only, because of the unseen predictor."""
    data = sharegpt_like(tmp_path / "data", n=30)
    with pytest.raises(SystemExit) as info:
        main(["bench", "all", "--data", str(data), "--traces", "sharegpt,foo", "--results",
              str(tmp_path / "r.json"), "--out", str(tmp_path / "docs"), "--no-progress"])  # fmt: skip
    assert str(info.value.code).startswith("sjfsched bench: unknown trace 'foo'; choose from")


def test_plots_and_tables_say_when_the_results_hold_nothing_they_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plots of results without burst100, poisson0.74 or a sweep wrote nothing, silently, exit 0;
    tables of an empty file printed a header alone; those of other scenarios, empty Targets tables."""
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(f'{{"prompt": "q{i}", "output_tokens": {10 + 300 * i}}}\n' for i in range(6)))
    results = tmp_path / "r.json"
    main(
        ["bench", "sim", "--traces", str(trace), "--profiles", "gpu", "--scenarios", "burst5",
         "--policies", "fcfs,sjfsched,oracle", "--repetitions", "2", "--no-progress",
         "--results", str(results)]
    )  # fmt: skip
    assert "Targets" not in capsys.readouterr().out
    assert main(["bench", "tables", "--results", str(results)]) == 0
    tables = capsys.readouterr().out
    assert "### Summary, gpu backend, burst5" in tables and "Targets" not in tables
    out = tmp_path / "docs"
    with pytest.raises(SystemExit) as info:
        main(["bench", "plots", "--results", str(results), "--out", str(out)])
    assert str(info.value.code).startswith(
        f"sjfsched bench plots: --results {results} has none of the runs the figures draw"
    )
    empty = tmp_path / "empty.json"
    empty.write_text('{"results": []}\n')
    for command, more in (("plots", ["--out", str(out)]), ("tables", [])):
        with pytest.raises(SystemExit) as info:
            main(["bench", command, "--results", str(empty), *more])
        assert info.value.code == f"sjfsched bench {command}: --results {empty} holds no results"


def test_without_corpora_only_the_commands_that_take_a_log_offer_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bench ranking` offered --traces, which it does not take (found by a second-pass review)."""
    from sjfsched._bench import _traces

    monkeypatch.setattr(_traces, "default_data_dir", lambda: None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="no corpora directory") as ranking:
        main(["bench", "ranking"])
    assert "--traces" not in str(ranking.value)
    with pytest.raises(SystemExit, match="no corpora directory") as sim:
        main(["bench", "sim", "--no-progress"])
    assert "or --traces FILE.jsonl with a log of your own traffic" in str(sim.value)
