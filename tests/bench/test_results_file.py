"""The results file: `bench tables` prints from it what the run printed, and it refuses other files.

Found by a reviewer with reproducers: summaries were saved rounded to 7 significant digits,
and a burst's latency a few microseconds below a rounding boundary then printed one digit
differently; a file that is not results failed with only "Extra data: line 2 column 1".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sjfsched._bench._run import Unit, load_results, run_units, save_results
from sjfsched._bench._sim import Scenario
from sjfsched._cli import main

#: Ten requests of 100 prompt tokens.  Named ``tiny.jsonl`` (the name seeds the draws), in two
#: bursts of 5 on the gpu profile FCFS's short P95 is 36.94999599999999 s: 36.9 in a table, but
#: 37.0 once rounded to 7 significant digits, as the results file kept it.
LENGTHS = (900, 50, 300, 10, 1000, 150, 600, 20, 250, 100)


def _trace(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tiny.jsonl`` in ``directory``, the working directory from now on."""
    monkeypatch.chdir(directory)
    path = Path("tiny.jsonl")
    record = {"input_tokens": 100, "model": "m"}
    path.write_text(
        "".join(
            json.dumps({"prompt": f"question number {i} about topic {7 * i}", "output_tokens": n, **record})
            + "\n"
            for i, n in enumerate(LENGTHS)
        )
    )
    return path


def test_saved_summaries_load_back_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = str(_trace(tmp_path, monkeypatch))
    units = [Unit(trace, "gpu", Scenario("burst", 5, 3), policy) for policy in ("fcfs", "sjfsched", "oracle")]
    results = run_units(units, tmp_path, progress=False)
    save_results(results, tmp_path / "r.json", {})
    loaded, _ = load_results(tmp_path / "r.json")
    for before, after in zip(results, loaded, strict=True):
        assert repr(after.summary) == repr(before.summary)  # repr: NaN (an empty class) is NaN again


def test_tables_prints_from_the_file_what_the_run_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = _trace(tmp_path, monkeypatch)
    results = tmp_path / "r.json"
    status = main(
        ["bench", "sim", "--traces", str(trace), "--profiles", "gpu", "--scenarios", "burst5",
         "--policies", "fcfs,oracle", "--repetitions", "2", "--no-progress", "--results", str(results)]
    )  # fmt: skip
    assert status == 0
    run = capsys.readouterr().out
    fcfs = next(line for line in run.splitlines() if line.startswith("| fcfs |"))
    assert fcfs.split(" | ")[3] == "36.9"  # its short P95, a few microseconds below 36.95
    assert main(["bench", "tables", "--results", str(results)]) == 0
    first, again = capsys.readouterr().out.split("\n", 1)
    assert first.startswith(f"<!-- from {results}: sjfsched bench sim ")
    assert again == run


def test_tables_refuses_a_file_that_is_not_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = _trace(tmp_path, monkeypatch)  # JSON lines, not one JSON document
    not_json = tmp_path / "notes.txt"
    not_json.write_text("not JSON at all\n")
    other_json = tmp_path / "other.json"
    other_json.write_text('{"results": 3}\n')
    binary = tmp_path / "figure.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    for path in (trace, not_json, other_json, binary):
        with pytest.raises(SystemExit) as info:
            main(["bench", "tables", "--results", str(path)])
        message = str(info.value.code)
        assert message.startswith(f"sjfsched bench: {path}: not results written by sjfsched bench (")
        assert "\n" not in message


def test_tables_merges_the_runs_of_several_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = _trace(tmp_path, monkeypatch)
    files = []
    for name, policies in (("a.json", "fcfs,oracle"), ("b.json", "fcfs,oracle@preempt=0")):
        files.append(tmp_path / name)
        options = ["--profiles", "gpu", "--scenarios", "burst5", "--repetitions", "2", "--no-progress"]
        argv = ["bench", "sim", "--traces", str(trace), "--policies", policies, *options]
        assert main([*argv, "--results", str(files[-1])]) == 0
    capsys.readouterr()
    assert main(["bench", "tables", "--results", str(files[0]), "--results", str(files[1])]) == 0
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("<!--")] == [
        f"<!-- from {files[0]}",
        f"<!-- from {files[1]}",
    ]
    full = out.split("### tiny.jsonl, gpu backend, burst5 (latency in seconds)")[1].split("###")[0]
    rows = [line.split(" | ")[0] for line in full.splitlines() if line.startswith("| ")][1:]
    assert rows == ["| fcfs", "| oracle", "| oracle@preempt=0"]  # fcfs once: the first file's
    with_, without = (float(r.split(" | ")[1]) for r in full.splitlines() if r.startswith("| oracle"))
    assert with_ < without  # the two runs differ: preemption pauses the burst's first request


def test_tables_refuses_to_merge_runs_that_do_not_compare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found by a reviewer: a run of 5 bursts was shown "vs FCFS" against a run of 2.
    trace = _trace(tmp_path, monkeypatch)
    files = []
    for name, policies, reps in (("a.json", "fcfs,oracle", "2"), ("b.json", "fcfs,oracle@preempt=0", "5")):
        files.append(tmp_path / name)
        options = ["--profiles", "gpu", "--scenarios", "burst5", "--repetitions", reps, "--no-progress"]
        argv = ["bench", "sim", "--traces", str(trace), "--policies", policies, *options]
        assert main([*argv, "--results", str(files[-1])]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["bench", "tables", "--results", str(files[0]), "--results", str(files[1])])
    assert str(info.value.code) == (
        f"sjfsched bench tables: {files[1]} and {files[0]} ran tiny.jsonl, gpu, burst5 differently "
        "(repetitions, requests, seed or the profile's rates): their rows would not compare"
    )
    assert capsys.readouterr().out == ""  # nothing printed before
