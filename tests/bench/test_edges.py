"""`sjfsched bench` on awkward inputs: no short or no long requests, oversized bursts, bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sjfsched._bench._real import _stats
from sjfsched._bench._report import target_table
from sjfsched._bench._run import load_results
from sjfsched._cli import main
from sjfsched._records import Completion, Prediction, Request

from ._data import sharegpt_like


def sim_sharegpt(data: Path, *args: str) -> int:
    """``sjfsched bench sim`` on the tiny corpus's ShareGPT trace."""
    return main(["bench", "sim", "--data", str(data), "--traces", "sharegpt", "--no-progress", *args])


def _trace(path: Path, lengths: list[int]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"prompt": f"question {i} " * (1 + i % 5), "output_tokens": n}) + "\n"
            for i, n in enumerate(lengths)
        )
    )
    return path


def test_a_trace_without_short_requests_prints_its_targets_with_dashes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = _trace(tmp_path / "medium.jsonl", [250 + 4 * i for i in range(120)])
    status = main(
        ["bench", "sim", "--traces", str(trace), "--profiles", "gpu", "--scenarios", "burst100",
         "--policies", "fcfs,sjfsched", "--repetitions", "2", "--no-progress",
         "--results", str(tmp_path / "r.json")]
    )  # fmt: skip
    assert status == 0
    assert "Targets" not in capsys.readouterr().out  # a log of one's own: not the project's targets
    results, meta = load_results(tmp_path / "r.json")
    table = target_table(results, "sjfsched")
    row = next(line for line in table.splitlines() if line.startswith(f"| {trace}") and "gpu" in line)
    assert row.split(" | ")[2:4] == ["-", "-"]  # no short requests, no long ones: nothing to measure
    # The command recorded is the one given (the scripts in benchmarks/ pass their own argv).
    assert meta["command"].startswith(f"sjfsched bench sim --traces {trace} --profiles gpu")


def test_a_burst_larger_than_a_built_in_trace_is_refused(tmp_path: Path) -> None:
    data = sharegpt_like(tmp_path / "data", n=30)
    with pytest.raises(SystemExit, match="sharegpt has 30 requests, fewer than a burst40 draws"):
        sim_sharegpt(data, "--scenarios", "burst40")


def test_plots_without_the_loads_of_the_trade_off_figure(tmp_path: Path) -> None:
    data = sharegpt_like(tmp_path / "data")
    results = tmp_path / "r.json"
    status = main(
        ["bench", "sim", "--data", str(data), "--traces", "sharegpt", "--profiles", "gpu",
         "--scenarios", "burst20", "--policies", "fcfs,unseen@aging=0.05", "--repetitions", "1",
         "--no-progress", "--results", str(results)]
    )  # fmt: skip
    assert status == 0
    with pytest.raises(SystemExit, match="has none of the runs the figures draw"):  # no traceback
        main(["bench", "plots", "--results", str(results), "--out", str(tmp_path / "docs")])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "bogus"], "unknown --preset 'bogus'"),
        (["--requests", "0"], "--requests must be at least 1"),
        (["--scale", "0"], "--scale must be a positive number"),
    ],
)
def test_bench_real_refuses_bad_arguments_in_one_line(tmp_path: Path, argv: list[str], message: str) -> None:
    trace = _trace(tmp_path / "t.jsonl", [10, 50, 300, 900])
    with pytest.raises(SystemExit, match=message):
        main(["bench", "real", "--trace", str(trace), "--results", str(tmp_path / "x.json"), *argv])


def test_bench_real_names_a_model_it_cannot_use(tmp_path: Path) -> None:
    """Found by a reviewer: a directory was "no such file", a file that is not a model (or a cut
    GGUF) failed as llama.cpp's bare "Failed to load model from file", and --preset with --model
    was silently ignored."""
    pytest.importorskip("llama_cpp")
    from sjfsched.testing import write_tiny_llama

    trace = _trace(tmp_path / "t.jsonl", [10, 50, 300, 900])
    argv = ["bench", "real", "--trace", str(trace), "--results", str(tmp_path / "x.json"), "--requests", "4"]
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    whole = write_tiny_llama(tmp_path / "m.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[:4096])
    for model, message in [
        (tmp_path, f"--model {tmp_path}: not a file$"),
        (tmp_path / "none.gguf", "none.gguf: no such file$"),
        (text, "notes.txt: not a GGUF model"),
        (cut, r"cut\.gguf: llama\.cpp could not load it \("),
    ]:
        with pytest.raises(SystemExit, match=message):
            main([*argv, "--model", str(model)])
    with pytest.raises(SystemExit, match="--preset small does nothing with --model"):
        main([*argv, "--model", str(whole), "--preset", "small"])


def test_bench_ranking_and_all_name_a_missing_corpus_before_training(tmp_path: Path) -> None:
    """Found by a reviewer: with a --data folder without the corpora, both began training the
    unseen predictor and failed with train's "no records in ..." under a long command line."""
    vectors = tmp_path / "v.json"
    vectors.write_text("{}")
    missing = r"trace 'castillo-llama1b' needs .*castillo_code_and_instruct\.jsonl\.gz, which does not exist"
    with pytest.raises(SystemExit, match=missing):
        main(["bench", "ranking", "--data", str(tmp_path)])
    with pytest.raises(SystemExit, match=missing):
        main(["bench", "all", "--data", str(tmp_path), "--word-vectors", str(vectors), "--no-progress"])


def test_bench_real_reports_no_long_p95_when_there_are_no_long_requests() -> None:
    def done(tokens: int, latency: float) -> Completion:
        return Completion(
            request=Request("x"), prediction=Prediction(100), estimate=1.0, text="", output_tokens=tokens,
            prompt_tokens=1, finish_reason="stop", submitted=0.0, started=0.0, first_token=0.1,
            finished=latency, promoted=False,
        )  # fmt: skip

    stats = _stats([done(10, 1.0), done(300, 2.0), done(350, 3.0)], scale=1.0)
    assert stats["n"] == {"short": 1, "medium": 2, "long": 0}
    assert stats["long_p95"] != stats["long_p95"]  # NaN: not the medium requests' P95


def test_an_unseen_predictor_that_cannot_be_trained_is_a_one_line_error(tmp_path: Path) -> None:
    data = sharegpt_like(tmp_path / "data", n=30)
    (data / "oasst1.jsonl.gz").unlink()  # nothing left to train on without the trace's corpus
    with pytest.raises(
        SystemExit, match="sjfsched bench: training the unseen predictor for 'sharegpt' failed"
    ):
        main(
            ["bench", "sim", "--data", str(data), "--traces", "sharegpt", "--scenarios", "burst5",
             "--policies", "fcfs,unseen", "--repetitions", "1", "--no-progress"]
        )  # fmt: skip


def test_empty_lists_and_a_bad_noise_name_fail_clearly(tmp_path: Path) -> None:
    data = sharegpt_like(tmp_path / "data", n=30)
    with pytest.raises(SystemExit, match="--traces names nothing"):
        main(["bench", "traces", "--data", str(data), "--traces", ","])
    with pytest.raises(SystemExit, match="--predictors names nothing"):
        main(["bench", "ranking", "--data", str(data), "--predictors", ","])
    with pytest.raises(SystemExit, match=r"unknown predictor 'noisy\.'"):
        sim_sharegpt(data, "--policies", "noisy.")


def test_bench_real_without_short_requests_has_nothing_to_disagree_on() -> None:
    import argparse

    from sjfsched._bench._real import _no_nan, _report

    def done(tokens: int, finished: float) -> Completion:
        return Completion(
            request=Request("x"), prediction=Prediction(tokens), estimate=1.0, text="", output_tokens=tokens,
            prompt_tokens=10, submitted=0.0, started=0.0, first_token=0.1, finished=finished,
        )  # fmt: skip

    runs = {"fcfs": [done(300, 10.0), done(500, 20.0)], "sjfsched": [done(300, 10.0), done(500, 20.0)]}
    args = argparse.Namespace(scale=0.5, trace="t", model=None, preset="medium", threads=1)
    report = _report(args, runs, runs, 100.0, 10.0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 1.0)
    assert report["agree"]
    assert "sjfsched: no short request in the sample" in report["table"]
    assert json.loads(json.dumps(_no_nan(report["gains"]))) == {
        "real": {"fcfs": None, "sjfsched": None},
        "sim": {"fcfs": None, "sjfsched": None},
    }


def test_a_sweep_is_printed_against_fcfs_with_its_bound_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A third of the answers short. With an eighth, one CI run measured no short request and the
    # sweep's short-request column read "-" (not reproduced here in 66 tries over trace paths
    # and hash seeds); with a third, a sample of 40 without one is out of reach.
    lengths = [60 if i % 3 == 0 else 300 + (97 * i) % 1200 for i in range(60)]
    trace = _trace(tmp_path / "t.jsonl", lengths)
    status = main(
        ["bench", "sim", "--traces", str(trace), "--profiles", "gpu", "--scenarios", "poisson0.74",
         "--poisson-requests", "40", "--seeds", "1", "--policies", "sweep:max_wait", "--no-progress"]
    )  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    sweep, bounds = out.split("### Sweep, gpu backend, poisson0.74")[1].split(
        "longest wait within max_wait plus the run's longest service time"
    )
    rows = [line for line in sweep.splitlines() if line.startswith("| sjfsched@max_wait=")]
    assert len(rows) == 5 and all(row.count("%") == 2 for row in rows)  # against FCFS, which it runs
    assert "| sjfsched@max_wait=300 | gpu | poisson0.74 |" in bounds


def test_plots_of_a_trace_without_short_requests(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "long.jsonl", [900 + 10 * i for i in range(30)])
    results = tmp_path / "r.json"
    status = main(
        ["bench", "sim", "--traces", str(trace), "--profiles", "gpu", "--scenarios", "poisson0.74",
         "--poisson-requests", "30", "--seeds", "1", "--policies", "fcfs,sjfsched", "--no-progress",
         "--results", str(results)]
    )  # fmt: skip
    assert status == 0
    assert main(["bench", "plots", "--results", str(results), "--out", str(tmp_path / "docs")]) == 0
    assert list((tmp_path / "docs" / "img").glob("bench-cdf-*.png"))


def test_a_trace_file_whose_path_holds_a_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "run#2"
    folder.mkdir()
    trace = _trace(folder / "requests.jsonl", [10, 900])
    for name in (str(trace), f"{trace}#unknown"):
        assert main(["bench", "traces", "--traces", name]) == 0
        assert f"| {name} | 2 |" in capsys.readouterr().out


def test_bench_real_refuses_a_scale_that_leaves_nothing_to_time_before_running(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "t.jsonl", [10, 50, 300, 900])
    with pytest.raises(SystemExit, match="makes every answer one token long"):
        main(["bench", "real", "--trace", str(trace), "--scale", "0.001", "--requests", "4",
              "--results", str(tmp_path / "x.json")])  # fmt: skip


def test_in_a_run_of_both_the_targets_are_for_the_built_in_traces_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log of one's own beside a built-in trace got a row of the project's targets too (found
    by a read-through)."""
    data = sharegpt_like(tmp_path / "data", n=60)
    trace = _trace(tmp_path / "mine.jsonl", [50 + 20 * i for i in range(60)])
    status = main(
        ["bench", "sim", "--data", str(data), "--traces", f"sharegpt,{trace}", "--profiles", "gpu",
         "--scenarios", "poisson0.74", "--policies", "fcfs,sjfsched", "--repetitions", "1", "--no-progress"]
    )  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    targets = out.split("### Targets: sjfsched against FCFS")[1].split("###")[0]
    assert "| sharegpt | gpu |" in targets and str(trace) not in targets
