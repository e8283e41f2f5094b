"""User errors on the command line end in one line naming what is wrong, not a traceback,
and nothing runs on input it would misread. Found by review, each with its reproducer."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from sjfsched import Completion, Prediction, Request, RequestLog
from sjfsched._cli import main
from sjfsched.predictors._corpus import load_records
from tests.support.records import write_records

_records = write_records


def _exit_message(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert isinstance(info.value.code, str), info.value.code  # a message, printed on one line
    assert "\n" not in info.value.code
    return info.value.code


def test_train_and_evaluate_name_the_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    assert _exit_message(["train", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "m.onnx")]) == (
        f"sjfsched train: no such file or directory: {tmp_path / 'nope.jsonl'}"
    )
    assert "bad.jsonl:1: no 'output_tokens'" in _exit_message(
        ["train", str(bad), "--out", str(tmp_path / "m.onnx")]
    )
    assert _exit_message(["evaluate", str(bad)]).startswith("sjfsched evaluate: ")
    assert main(["evaluate", str(_records(tmp_path / "ok.jsonl", 50)), "--test-fraction", "1.5"]) == 2


def test_train_refuses_a_card_that_would_overwrite_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _records(tmp_path / "ok.jsonl", 200)
    assert main(["train", str(data), "--out", str(tmp_path / "model.md")]) == 2
    assert not (tmp_path / "model.md").exists()
    assert "would overwrite the model" in capsys.readouterr().err
    # Found by a reviewer: with --card given as the model's file, the message said "pass --card".
    model = tmp_path / "x.onnx"
    assert main(["train", str(data), "--out", str(model), "--card", str(model)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"sjfsched train: --card {model} is the model's file (--out {model})"
    )
    assert (
        main(
            [
                "train",
                str(data),
                "--out",
                str(tmp_path / "m.onnx"),
                "--card",
                str(tmp_path / "new" / "card.md"),
            ]
        )
        == 0
    )
    assert (tmp_path / "new" / "card.md").read_text().startswith("# Model card")


def test_train_and_evaluate_on_tiny_or_empty_logs_say_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _records(tmp_path / "ten.jsonl", 10)
    for out in (".", "/"):  # no file name: pathlib's "has an empty name" escaped
        assert main(["train", str(data), "--out", out]) == 2
        assert f"sjfsched train: --out {out} is a directory" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert main(["train", str(empty), "--out", str(tmp_path / "m.onnx")]) == 1
    assert (
        f"no records in {empty} (empty, blank lines only, or a folder without *.jsonl files)"
        in capsys.readouterr().err
    )  # not "after filtering"
    assert main(["train", str(data), "--include", "nothing*", "--out", str(tmp_path / "m.onnx")]) == 1
    assert "the options kept none of the 10 in" in capsys.readouterr().err
    # The held-out split leaves one prompt to train on: --fit-all fits all ten instead of failing.
    fit_all = ["train", str(data), "--fit-all", "--test-fraction", "0.9", "--out", str(tmp_path / "m.onnx")]
    assert main(fit_all) == 0
    assert "nothing held out, the model is fitted on all of them" in capsys.readouterr().err
    assert (tmp_path / "m.onnx").stat().st_size > 0
    # An empty test split is an error that says so, not a header-only table.
    five = _records(tmp_path / "five.jsonl", 5)
    assert main(["evaluate", str(five), "--test-fraction", "0.01", "--split", "test"]) == 1
    assert "the test split is empty" in capsys.readouterr().err
    assert main(["evaluate", str(five), "--split", "all"]) == 0
    # The bundled model never saw these: by default every answer is scored.
    assert main(["evaluate", str(five), "--test-fraction", "0.01"]) == 0
    assert (
        "on every answer (it was trained on none: other sources, or prompts it was kept from): 5 answers"
        in capsys.readouterr().out
    )


@pytest.mark.parametrize("load", ["-1", "0", "nan", "1.5", "1e-16", "5e-324"])
def test_demo_refuses_a_load_outside_zero_to_one(load: str, capsys: pytest.CaptureFixture[str]) -> None:
    # 1e-16 printed a short answer's median latency as 32768 s; 5e-324 divided by zero.
    assert main(["demo", "--load", load]) == 2
    assert "--load must be within [0.01, 1)" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--decode-rate", "--prefill-rate"])
@pytest.mark.parametrize("rate", ["nan", "0", "-5", "inf", "1e-3", "1e308"])
def test_demo_names_a_bad_rate(option: str, rate: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Found by reviewers: with NaN the demo's chunk size was worked out first ("cannot convert
    # float NaN to integer"); then a bad rate was named by the backend's attribute
    # ("prefill_rate must be ...", exit status 1); and 1e-3 ran, its table's columns run together.
    assert main(["demo", option, rate]) == 2
    assert f"sjfsched demo: {option} must be within [0.1, 1e+06] tokens a second" in capsys.readouterr().err


def test_demo_runs_at_the_ends_of_its_rates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--decode-rate", "1e6", "--prefill-rate", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "Poisson arrivals" in out
    rows = [line for line in out.splitlines() if line.startswith("  all mean")]
    assert rows and all(len(row.split()) == 5 for row in rows)  # metric, FCFS, sjfsched, change


def test_bench_sim_refuses_what_it_would_run_wrongly(tmp_path: Path) -> None:
    ten = _records(tmp_path / "ten.jsonl", 10)
    one = _records(tmp_path / "one.jsonl", 1)
    sim = ["bench", "sim", "--profiles", "gpu", "--policies", "fcfs", "--no-progress"]
    assert _exit_message([*sim, "--traces", str(ten), "--scenarios", "burst100,poisson0.5,burst5"]).endswith(
        "ten.jsonl has 10 requests, fewer than a burst100 draws: pass --scenarios burstN with N <= 10, "
        "e.g. --scenarios burst10,poisson0.5,burst5"
    )
    assert "a trace needs at least 2" in _exit_message(
        [*sim, "--traces", str(one), "--scenarios", "poisson0.5"]
    )
    assert "--jobs must be 1 or more" in _exit_message(
        [*sim, "--traces", str(ten), "--scenarios", "burst5", "--jobs", "0"]
    )
    assert "--scenarios names nothing" in _exit_message([*sim, "--traces", str(ten), "--scenarios", ""])
    assert _exit_message([*sim, "--traces", str(ten), "--scenarios", "burst0"]).startswith("sjfsched bench: ")
    missing = tmp_path / "missing.json"
    assert _exit_message(["bench", "tables", "--results", str(missing)]) == (
        f"sjfsched bench tables: --results {missing}: no such file"
    )


def _completion(text: str, tokens: int) -> Completion:
    return Completion(
        request=Request(text), text="x", output_tokens=tokens, prompt_tokens=3, prediction=Prediction(10.0),
        estimate=1.0, submitted=0.0, started=0.0, first_token=None, finished=1.0,
    )  # fmt: skip


def test_a_compressed_request_log_reads_while_open_and_after_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "requests.jsonl.gz"
    log = RequestLog(path)
    for i in range(30):
        log(_completion(f"prompt {i}", 10 + i))
    log(_completion("a lone surrogate \ud800 in it", 7))
    log(_completion("   ", 5))  # no text (an image-only turn): skipped
    assert log.written == 31
    assert len(load_records([path])) == 31  # still open: every line is a whole gzip member
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(path.read_bytes()[:-20])  # a crash in the middle of the last write
    assert [r.output_tokens for r in load_records([cut])] == [10 + i for i in range(30)]
    assert "cut.jsonl.gz is cut short after line 30" in caplog.text
    log.close()
    assert (
        json.loads(gzip.decompress(path.read_bytes()).splitlines()[-1])["prompt"]
        == "a lone surrogate \ud800 in it"
    )
    junk = tmp_path / "junk.jsonl.gz"
    damaged = bytearray(gzip.compress(b'{"prompt": "b", "output_tokens": 4}\n' * 50))
    damaged[12:20] = b"\xff" * 8  # inside the compressed data
    junk.write_bytes(gzip.compress(b'{"prompt": "a", "output_tokens": 3}\n') + bytes(damaged))
    with pytest.raises(ValueError, match=r"junk\.jsonl\.gz: corrupt gzip data after line 1"):
        load_records([junk])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--features", "clairvoyant", "--alpha", "3"],
            "--alpha: for the lexical model, not --features clairvoyant",
        ),
        (
            ["--features", "clairvoyant", "--target", "log", "--byte-bits", "10", "--min-count", "7"],
            "--byte-bits, --min-count, --target: for the lexical model, not --features clairvoyant",
        ),
        (
            ["--target-percentiles", "5", "95"],
            "--target-percentiles is for --target log (the rank target clips nothing)",
        ),
        (["--word-vector-weight", "0.5"], "--word-vector-weight: for --word-vectors, which is not given"),
        (
            ["--word-vector-limit", "100", "--word-vector-weight", "0.5"],
            "--word-vector-limit, --word-vector-weight: for --word-vectors, which is not given",
        ),
        (["--alpha", "-1"], "--alpha must be a number > 0, got -1"),
        (["--alpha", "nan"], "--alpha must be a number > 0, got nan"),
        (["--byte-bits", "40"], "--byte-bits must be within [8, 24], got 40"),
        (["--min-count", "0"], "--min-count must be at least 1, got 0"),
        (["--max-bigrams", "-5"], "--max-bigrams must be 0 or more, got -5"),
    ],
)
def test_train_refuses_options_its_model_would_ignore_or_cannot_take_before_reading_data(
    options: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The data does not exist: the options are checked first.
    argv = ["train", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "m.onnx"), *options]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"sjfsched train: {message}"


def test_train_takes_a_lexical_option_passed_at_its_default_with_clairvoyant(tmp_path: Path) -> None:
    data = _records(tmp_path / "ok.jsonl", 50)
    argv = [
        "train",
        str(data),
        "--out",
        str(tmp_path / "m.onnx"),
        "--features",
        "clairvoyant",
        "--alpha",
        "1",
    ]
    assert main(argv) == 0


def test_train_refuses_answers_all_of_one_length(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    same = tmp_path / "same.jsonl"
    same.write_text(
        "".join(json.dumps({"prompt": f"question {i}", "output_tokens": 100}) + "\n" for i in range(40))
    )
    assert main(["train", str(same), "--out", str(tmp_path / "m.onnx")]) == 1
    assert capsys.readouterr().err.strip() == (
        "sjfsched train: every one of the 40 answers has the same length (100 tokens): there is no order "
        "to learn; train on answers of different lengths"
    )
    assert not (tmp_path / "m.onnx").exists()


def test_train_says_how_many_answers_were_cut_off_and_the_card_records_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "requests.jsonl"
    lines = [
        {
            "prompt": f"question {i} about {i % 7}",
            "output_tokens": 150 if i % 3 else 10 + i,
            "finish_reason": "length" if i % 3 else "stop",
        }
        for i in range(60)
    ]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["train", str(log), "--out", str(tmp_path / "m.onnx"), "--fit-all"]) == 0
    assert (
        'sjfsched train: 40 of the 60 answers were cut off at their max_tokens ("finish_reason": "length"): '
        "their lengths are lower bounds" in capsys.readouterr().err
    )
    card = (tmp_path / "m.md").read_text()
    assert 'Cut off at their max_tokens (`"finish_reason": "length"`): 40 of the 60 training answers' in card


def test_a_record_without_output_tokens_is_named_as_missing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "hi", "tokens": 12}) + "\n")
    with pytest.raises(
        ValueError, match=r"bad.jsonl:1: no 'output_tokens' \(the length of the answer, in tokens\)"
    ):
        load_records([bad])


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["bench", "sim", "--bogus"], "sjfsched bench sim"),
        (["demo", "--bogus"], "sjfsched demo"),
        # Given before the command, it is sjfsched's own option that is unknown.
        (["--bogus", "demo"], "sjfsched"),
    ],
)
def test_an_unknown_option_is_named_by_its_commands_parser(
    argv: list[str], command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # sjfsched's own parser said it, with its usage, not the command's options.
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith(f"usage: {command} ")
    assert f"{command}: error: unrecognized arguments: --bogus" in err
