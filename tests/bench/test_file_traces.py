"""`sjfsched bench` on a trace file of your own: a RequestLog of real scheduler runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from sjfsched import Request, RequestLog, Scheduler
from sjfsched._bench._real import _sample
from sjfsched._bench._run import load_results
from sjfsched._bench._traces import is_file_trace, is_trace_name, load_trace
from sjfsched._cli import main
from sjfsched.backends import CallableBackend

#: prompt kind -> answer length in tokens (one token per chunk of CallableBackend)
LENGTHS = {"quick question": 40, "explain": 400, "write a long report": 1200}


def _answer(request: Request) -> list[str]:
    kind = next(k for k in LENGTHS if request.text.startswith(k))
    return ["w "] * LENGTHS[kind]


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log written by RequestLog from a real scheduler: 3 x 20 prompts, two answered twice."""
    import anyio

    path = tmp_path_factory.mktemp("logs") / "requests.jsonl"

    async def serve() -> None:
        with RequestLog(path, model="my-model") as log:
            async with Scheduler(CallableBackend(_answer), on_complete=log) as sched:
                for i in range(20):
                    for kind in LENGTHS:
                        await sched.complete(f"{kind} number {i} about topic {i * 7 % 11}")
                await sched.complete("quick question number 0 about topic 0")  # asked again
                await sched.complete("explain number 1 about topic 7")

    anyio.run(serve)
    return path


def test_a_request_log_is_a_trace(log_file: Path) -> None:
    assert is_file_trace(str(log_file)) and is_trace_name(f"{log_file}#my-model/fresh")
    assert not is_file_trace("sharegpt") and not is_trace_name("requests.csv")
    trace = load_trace(str(log_file), "/nonexistent")  # a file needs no corpora directory
    assert len(trace) == 60  # one item per prompt: the repeated questions count once
    assert sorted({i.output_tokens for i in trace.items}) == [40, 400, 1200]
    assert trace.class_shares() == pytest.approx({"short": 1 / 3, "medium": 1 / 3, "long": 1 / 3})
    assert all(i.source == "requestlog" and i.prompt_tokens >= 1 for i in trace.items)
    assert len(load_trace(f"{log_file}#my-model", "/nonexistent")) == 60
    fresh = load_trace(f"{log_file}/fresh", "/nonexistent")
    assert len(fresh) + len(fresh.history) == 60 and fresh.items and fresh.history


def test_bench_sim_runs_on_the_log(
    log_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ../shared/data from here: a trace file needs none
    results = tmp_path / "r.json"
    status = main(
        [
            "bench", "sim", "--traces", f"{log_file},{log_file}/fresh", "--profiles", "gpu",
            "--scenarios", "burst30", "--repetitions", "4", "--policies", "fcfs,oracle,sjfsched,unseen",
            "--results", str(results), "--no-progress",
        ]
    )  # fmt: skip
    assert status == 0
    captured = capsys.readouterr()
    assert "unseen left out on" in captured.err
    assert f"### {log_file}, gpu backend, burst30" in captured.out
    loaded, _ = load_results(results)
    assert {(r.unit.trace, r.unit.policy) for r in loaded} == {
        (t, p) for t in (str(log_file), f"{log_file}/fresh") for p in ("fcfs", "oracle", "sjfsched")
    }
    by = {(r.unit.trace, r.unit.policy): r.summary for r in loaded}
    for trace in (str(log_file), f"{log_file}/fresh"):
        fcfs, oracle = by[(trace, "fcfs")], by[(trace, "oracle")]
        assert fcfs.requests == oracle.requests == 120
        # The log's lengths drive the simulation: knowing them puts the short answers first.
        assert oracle.classes["short"].p50 < 0.5 * fcfs.classes["short"].p50
        assert oracle.classes["long"].n == fcfs.classes["long"].n > 0

    assert main(["bench", "traces", "--traces", f"{log_file}#my-model"]) == 0
    assert f"| {log_file}#my-model | 60 | 33% | 33% | 33% | 547 |" in capsys.readouterr().out


def test_a_warm_policy_learns_from_the_other_half_of_the_log(
    log_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            "bench", "sim", "--traces", f"{log_file}/fresh", "--profiles", "gpu", "--scenarios",
            "burst30", "--repetitions", "4", "--policies", "fcfs,sjfsched@adapt=0,sjfsched@warm=30",
            "--no-progress",
        ]
    )  # fmt: skip
    assert status == 0
    assert "| sjfsched@warm=30 |" in capsys.readouterr().out


def test_bench_real_samples_the_log(log_file: Path) -> None:
    args = argparse.Namespace(data=None, trace=f"{log_file}#my-model", requests=9, seed=0, scale=0.5)
    items = _sample(args)
    assert len(items) == 9
    assert {i.output_tokens for i in items} <= {20, 200, 600}  # the log's lengths, scaled


@pytest.mark.slow
def test_bench_real_on_a_log_saves_only_where_results_says(
    log_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FILE trace wrote over ./benchmarks/results/real.json (in the repository: the published run)."""
    monkeypatch.chdir(tmp_path)
    argv = ["bench", "real", "--trace", f"{log_file}#my-model", "--requests", "6", "--scale", "0.02"]
    status = main([*argv, "--preset", "small"])
    out = capsys.readouterr().out
    # the sample is drawn by a seed and the trace's name, its path here: a short request or not
    assert status in (0, 1) and "classes (by trace length)" in out and "wrote" not in out
    assert list(tmp_path.iterdir()) == []  # nothing written
    main([*argv, "--preset", "small", "--results", "mine.json"])
    assert json.loads((tmp_path / "mine.json").read_text())["trace"] == f"{log_file}#my-model"


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


M1 = {"prompt": "a", "output_tokens": 3, "model": "m1"}
M2 = {"prompt": "b", "output_tokens": 9, "model": "m2"}


@pytest.mark.parametrize(
    ("lines", "suffix", "message"),
    [
        ([M1, M2], "", r"has answers of 2 models \('m1', 'm2'\); keep one with .*#MODEL"),
        ([M1], "#m9", r"no record of .* has model 'm9' \(its models: 'm1'\)"),
        ([M1, "{not json"], "", r"t\.jsonl:2: not JSON"),
        ([{"prompt": "a", "output_tokens": -3}], "", r"t\.jsonl:1: 'output_tokens' must be >= 0"),
        ([{"prompt": "a", "output_tokens": "many"}], "", r"t\.jsonl:1: 'output_tokens' must be a finite"),
        ([{"output_tokens": 3}], "", r"t\.jsonl:1: no 'prompt'$"),
        ([{"prompt": ["a"], "output_tokens": 3}], "", r"t\.jsonl:1: 'prompt' must be a string, got list"),
        # these were turned into strings ("17", "{'x': 1}"), a record filed under the wrong name
        ([{**M1, "source": 17}], "", r"t\.jsonl:1: 'source' must be a string, got int"),
        ([{**M1, "model": {"x": 1}}], "", r"t\.jsonl:1: 'model' must be a string, got dict"),
        ([{**M1, "prompt_id": [1, 2]}], "", r"t\.jsonl:1: 'prompt_id' must be a string or an int"),
        (
            [{"messages": [{"role": "user", "content": "a"}], "output_tokens": 3}],
            "",
            r"t\.jsonl:1: no 'prompt' \(a chat's 'messages' are not read: give the text to rank by",
        ),
        ([{"prompt": "  ", "output_tokens": 3}], "", r"t\.jsonl:1: 'prompt' is empty"),
        ([], "", r"t\.jsonl has no records"),
    ],
)
def test_a_bad_trace_file_fails_clearly(
    tmp_path: Path, lines: list[object], suffix: str, message: str
) -> None:
    path = _write(tmp_path / "t.jsonl", lines)
    with pytest.raises(SystemExit, match=message):
        main(["bench", "sim", "--traces", f"{path}{suffix}", "--policies", "fcfs", "--no-progress"])


def test_file_trace_errors_name_the_problem(log_file: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"trace file .*missing\.jsonl does not exist"):
        main(["bench", "sim", "--traces", str(tmp_path / "missing.jsonl"), "--no-progress"])
    with pytest.raises(
        SystemExit, match=r"nothing to run \(plain-unseen, unseen\): the unseen predictor exists only"
    ):
        main(["bench", "sim", "--traces", str(log_file), "--policies", "unseen,plain-unseen"])
    with pytest.raises(SystemExit, match="built-in traces only"):
        main(["bench", "all", "--traces", str(log_file), "--no-progress"])
    with pytest.raises(SystemExit, match=r"or give a \.jsonl or \.jsonl\.gz file"):
        main(["bench", "sim", "--traces", "requests.csv", "--no-progress"])
    with pytest.raises(SystemExit):  # argparse: unknown trace for bench real
        main(["bench", "real", "--trace", "requests.csv"])


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            '"output_tokens": 1e300',
            "'output_tokens' must be at most 10,000,000 (more than any model's context), got 1e+300",
        ),
        (
            f'"output_tokens": {10**30}',
            "'output_tokens' must be at most 10,000,000 (more than any model's context), got 1e+30",
        ),
        ('"output_tokens": 5, "input_tokens": 1e300', "'input_tokens' must be a finite number up to"),
        ('"output_tokens": 5, "input_tokens": Infinity', "'input_tokens' must be a finite number up to"),
        ('"output_tokens": 5, "input_tokens": NaN', "'input_tokens' must be a finite number up to"),
    ],
)
def test_a_length_too_large_to_simulate_is_refused_naming_its_line(
    tmp_path: Path, record: str, message: str
) -> None:
    """An output_tokens of 1e300 ended in an OverflowError traceback once the simulation ran."""
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"prompt": "fine", "output_tokens": 5}\n{"prompt": "x", ' + record + "}\n")
    with pytest.raises(SystemExit) as info:
        main(["bench", "sim", "--traces", str(trace), "--profiles", "gpu", "--scenarios", "burst2",
              "--policies", "fcfs", "--repetitions", "1", "--no-progress"])  # fmt: skip
    assert str(info.value.code).startswith(f"sjfsched bench: {trace}:2: {message}"), info.value.code


def test_prompts_sharing_a_conversation_id_each_count(tmp_path: Path) -> None:
    """An id of one's own per conversation (as predictor.md suggests) kept one prompt of each."""
    path = tmp_path / "conversations.jsonl"
    rows = [
        {"prompt_id": f"conv-{i // 5}", "prompt": f"turn {i}", "model": "m", "output_tokens": 10 + i}
        for i in range(20)
    ]
    rows.append(dict(rows[3], output_tokens=999))  # the same prompt answered again: counts once
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trace = load_trace(str(path), "/nonexistent")
    assert [i.output_tokens for i in trace.items] == [10 + i for i in range(20)]


def test_a_run_on_a_log_of_yours_shows_no_targets_of_the_project(
    log_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The project's targets for its own traces (≥80% lower in a burst of 100...) were printed
    for a user's log, where they mean nothing (found by a newcomer's review)."""
    monkeypatch.chdir(tmp_path)
    status = main(
        [
            "bench", "sim", "--traces", str(log_file), "--profiles", "gpu", "--scenarios", "poisson0.74",
            "--repetitions", "1", "--policies", "fcfs,sjfsched", "--no-progress",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0 and f"### {log_file}, gpu backend, poisson0.74" in out
    assert "Targets" not in out


def test_a_log_without_long_answers_is_said_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every long column of its tables read "-", with no word why (a newcomer's small model's log).
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "small.jsonl"
    log.write_text(
        "".join(json.dumps({"prompt": f"q {i}", "output_tokens": 20 + 30 * i}) + "\n" for i in range(12))
    )
    argv = ["bench", "sim", "--traces", str(log), "--profiles", "gpu", "--scenarios", "burst10"]
    assert (
        main([*argv, "--policies", "fcfs,oracle", "--results", str(tmp_path / "r.json"), "--no-progress"])
        == 0
    )
    err = capsys.readouterr().err
    assert f"sjfsched bench: {log} has no long (>= 800 tokens) answers: its long columns stay -" in err
    assert "no short" not in err
