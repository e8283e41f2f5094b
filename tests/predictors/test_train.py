"""`sjfsched train` and `sjfsched evaluate` end to end on a small synthetic log."""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from sjfsched import PredictorError, Request
from sjfsched._cli import main
from sjfsched.predictors import ClairvoyantPredictor, LexicalPredictor
from sjfsched.predictors._corpus import load_records, prompt_id_of

TOPICS = [
    "the Roman empire", "photosynthesis", "black holes", "the French revolution", "machine learning",
    "jazz music", "the stock market", "climate change", "ancient Egypt", "quantum computing",
    "the immune system", "volcanoes", "chess openings", "the printing press", "coral reefs",
]  # fmt: skip


def _write_log(path: Path, *, gz: bool = False) -> None:
    """Prompts whose answer length follows what they ask for, from three 'models'."""
    rng = random.Random(0)
    lines = []
    for i, topic in enumerate(TOPICS * 4):
        asks = [
            (f"Write a detailed {1000 + 100 * i}-word essay about {topic}, with sections.", 1300),
            (f"Write a long story set in the world of {topic}, with five chapters.", 1100),
            (f"What is {topic}? Answer in one sentence.", 40),
            (f"Is {topic} older than {i} years? Yes or no.", 15),
            (f"Explain {topic} to a child.", 350),
        ]
        for prompt, typical in asks:
            for model, scale in (("small", 0.7), ("medium", 1.0), ("large", 1.4)):
                tokens = round(typical * scale * rng.uniform(0.8, 1.25))
                record = {"source": "synthetic", "prompt": prompt, "model": model, "output_tokens": tokens}
                if rng.random() < 0.5:
                    record["prompt_id"] = prompt_id_of(prompt)
                lines.append(json.dumps(record))
    text = "\n".join(lines) + "\n\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("logs") / "requests.jsonl.gz"
    _write_log(path, gz=True)
    return path


def test_train_lexical_writes_a_model_and_a_card(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine.onnx"
    assert main(["train", str(log), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "synthetic" in report and "rank-acc" in report
    card = out.with_suffix(".md").read_text()
    assert "`synthetic`" in card and "unknown (your own data" in card
    assert f"sjfsched train {log} --out {out}" in card
    import onnx

    assert onnx.load(str(out)).graph.node[0].op_type == "GatherElements"  # the quick gather
    predictor = LexicalPredictor(out, calibrate=False)
    long = predictor.predict(
        Request("Write a detailed 3000-word essay about the Roman empire, with sections.")
    )
    short = predictor.predict(Request("What is photosynthesis? Answer in one sentence."))
    assert long.tokens > 3 * short.tokens
    assert long.p_long is not None and short.p_long is not None and long.p_long > short.p_long


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX's")
def test_a_failed_write_leaves_the_model_and_card_already_there_whole(log: Path, tmp_path: Path) -> None:
    # They were written in place: a full disk left a truncated model (and the old card).
    out = tmp_path / "mine.onnx"
    assert main(["train", str(log), "--out", str(out), "--fit-all"]) == 0
    model, card = out.read_bytes(), out.with_suffix(".md").read_text()

    # A write past 4 kB fails (EFBIG), as on a disk that is full.
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from sjfsched._cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    command = [sys.executable, "-c", script, "train", str(log), "--out", str(out), "--target", "log"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last == f"sjfsched train: could not write {out}: File too large", done.stderr
    assert out.read_bytes() == model and out.with_suffix(".md").read_text() == card
    assert LexicalPredictor(out, calibrate=False).predict(Request("hi")).tokens > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.md", "mine.onnx"]  # no temporary left


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX's")
def test_a_model_written_to_a_pipe_goes_through_it(log: Path, tmp_path: Path) -> None:
    # Written atomically, a pipe (or /dev/null, as root) was replaced by a regular file.
    pipe = tmp_path / "model.pipe"
    os.mkfifo(pipe)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()), daemon=True)
    reader.start()
    args = ["train", str(log), "--out", str(pipe), "--card", str(tmp_path / "card.md"), "--fit-all"]
    assert main(args) == 0
    reader.join(30)
    assert stat.S_ISFIFO(pipe.stat().st_mode)
    assert got and got[0][4:12] == b"sjfsched"  # the ONNX model's producer, near its start


def test_evaluate_a_trained_model(log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine.onnx"
    assert main(["train", str(log), "--out", str(out), "--fit-all"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(log), "--model", str(out), "--split", "all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("synthetic"))
    accuracy = float(row.split()[-2])
    assert accuracy > 0.95  # the synthetic lengths follow the words
    assert any(line.strip().startswith("small") for line in lines)  # one row per answering model


def test_train_clairvoyant_and_predict_p_long(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "clv.onnx"
    assert main(["train", str(log), "--out", str(out), "--features", "clairvoyant", "--fit-all"]) == 0
    predictor = ClairvoyantPredictor(out)
    short, medium, long = predictor.probabilities(Request("Write a long story set in the world of jazz."))
    assert short + medium + long == pytest.approx(1.0, abs=1e-5)
    p = predictor.predict(Request("Write a long story set in the world of jazz music, with five chapters."))
    q = predictor.predict(Request("Is jazz music older than 3 years? Yes or no."))
    assert p.p_long is not None and q.p_long is not None and p.p_long > q.p_long
    assert p.tokens > q.tokens
    volcanoes = Request("Explain volcanoes to a child.")
    expected = ClairvoyantPredictor(out, key="expected").predict(volcanoes)
    assert predictor.class_tokens[0] < expected.tokens < predictor.class_tokens[2]
    weights = predictor.probabilities(volcanoes)  # the class medians weighted by the probabilities
    weighted = sum(w * t for w, t in zip(weights, predictor.class_tokens, strict=True))
    assert expected.tokens == pytest.approx(weighted, rel=1e-5)
    with pytest.raises(PredictorError, match="not a sjfsched lexical model"):
        LexicalPredictor(out)
    with pytest.raises(PredictorError, match="not a sjfsched clairvoyant model"):
        ClairvoyantPredictor(LexicalPredictor().model_path)


def test_compare_prints_both_tables(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(log), "--compare", "--methods", "length,lexical"]) == 0
    out = capsys.readouterr().out
    assert "In-distribution" in out and "| synthetic |" in out


def test_compare_variants_and_training_exclusions(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["evaluate", str(log), "--compare", "--methods", "lexical-unclipped,lexical"]
    assert main([*args, "--train-exclude", "other*"]) == 0
    out = capsys.readouterr().out
    assert "| corpus | lexical-unclipped | lexical |" in out
    assert "Training sets without the sources other*" in out
    assert main([*args[:-1], "no-such-method"]) == 2
    assert "unknown methods ['no-such-method']" in capsys.readouterr().err


def test_bad_input_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "output_tokens": 3}\n{"prompt": "x", "output_tokens": "many"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: 'output_tokens' must be a finite number"):
        load_records([bad])
    # One absurd length (a unit slip, a corrupt counter) made every prediction of a model
    # trained on it 1,000,000 tokens: refused, naming the line.
    bad.write_text('{"prompt": "hi", "output_tokens": 3}\n{"prompt": "x", "output_tokens": 1e100}\n')
    with pytest.raises(
        ValueError, match=r"bad\.jsonl:2: 'output_tokens' must be at most 10,000,000 .*got 1e\+100"
    ):
        load_records([bad])
    bad.write_text('{"prompt": "hi", "output_tokens": 10000000}\n')
    assert [r.output_tokens for r in load_records([bad])] == [10_000_000]
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not JSON"):
        load_records([bad])
    with pytest.raises(FileNotFoundError, match="missing"):
        load_records([tmp_path / "missing.jsonl"])


def test_a_folder_names_what_it_does_not_read_and_no_file_is_read_twice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "logs"
    (folder / "sub").mkdir(parents=True)
    line = '{"prompt": "hi", "output_tokens": 3}\n'
    for name in ("a.jsonl", "B.JSONL", "c.ndjson", "d.json", "sub/e.jsonl", "notes.md", ".hidden.jsonl.swp"):
        (folder / name).write_text(line)
    records = load_records([folder, folder / "a.jsonl", f"{folder}/./a.jsonl"])
    assert len(records) == 1  # a.jsonl, read once
    text = caplog.text
    assert (
        f"{folder}: only its *.jsonl and *.jsonl.gz files are read, not B.JSONL, c.ndjson, d.json, sub/"
        in text
    )
    assert "notes.md" not in text and ".hidden" not in text
    assert f"{folder / 'a.jsonl'} is named again (as {folder / 'a.jsonl'}): read once" in text


def test_train_filters(log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(log), "--out", str(tmp_path / "m.onnx"), "--exclude", "synth*"]) == 1
    assert "no records left" in capsys.readouterr().err


def test_permissive_only_keeps_your_own_sources() -> None:
    from sjfsched.predictors._corpus import LengthRecord
    from sjfsched.predictors._train import select_records

    def rec(source: str) -> LengthRecord:
        return LengthRecord("p", 10.0, "id", source, "m")

    records = [rec("arena-hard-v0.1"), rec("sharegpt-natural"), rec("castillo/Alpaca"), rec("requestlog")]
    kept = select_records(records, permissive_only=True)
    assert [r.source for r in kept] == ["arena-hard-v0.1", "requestlog"]
    assert [r.source for r in select_records(records, include=["castillo/*"])] == ["castillo/Alpaca"]


def test_bundled_sources_and_held_out_prompts(tmp_path: Path) -> None:
    from sjfsched.predictors._corpus import LengthRecord
    from sjfsched.predictors._train import load_holdout_prompts, select_records

    def rec(source: str, prompt: str = "p") -> LengthRecord:
        return LengthRecord(prompt, 10.0, prompt_id_of(prompt), source, "m")

    records = [
        rec("arena-hard-v0.1"),
        rec("sharegpt-natural"),
        rec("castillo/Alpaca"),
        rec("cnn_dailymail"),
        rec("castillo/DollyDataset"),
        rec("requestlog"),
    ]
    kept = select_records(records, bundled_sources=True)
    assert [r.source for r in kept] == [
        "arena-hard-v0.1",
        "sharegpt-natural",
        "castillo/DollyDataset",
        "requestlog",
    ]
    trace = tmp_path / "trace.jsonl"
    trace.write_text(json.dumps({"prompt": "  Hold me out\n", "x": 1}) + "\n\n" + json.dumps({"prompt": "b"}))
    holdout = load_holdout_prompts([trace])
    assert holdout == {prompt_id_of("Hold me out"), prompt_id_of("b")}
    # matched on the prompt's text too, whatever the record's prompt_id field says
    mine = [LengthRecord("Hold me out", 5.0, "other-id", "s", "m"), rec("s", "keep me")]
    assert [r.prompt for r in select_records(mine, holdout=holdout)] == ["keep me"]
    gz = tmp_path / "trace.jsonl.gz"
    gz.write_bytes(gzip.compress(json.dumps({"prompt": "zipped"}).encode()))
    assert load_holdout_prompts([gz]) == {prompt_id_of("zipped")}
    trace.write_text('{"text": "no prompt here"}\n')
    with pytest.raises(ValueError, match=r"trace\.jsonl:1: expected a JSON object with a string 'prompt'"):
        load_holdout_prompts([trace])
    trace.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"trace\.jsonl:1: not JSON"):
        load_holdout_prompts([trace])


def test_train_holds_out_prompts(log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    held = [f"What is {topic}? Answer in one sentence." for topic in TOPICS[:3]]
    trace = tmp_path / "demo_trace.jsonl"
    trace.write_text("".join(json.dumps({"prompt": p, "output_tokens": 1}) + "\n" for p in held))
    out = tmp_path / "held.onnx"
    args = ["train", str(log), "--out", str(out), "--fit-all", "--holdout-prompts", str(trace)]
    assert main(args) == 0
    capsys.readouterr()
    meta = LexicalPredictor(out).metadata
    assert set(json.loads(meta["sjfsched.holdout_prompts"])) == {prompt_id_of(p) for p in held}
    card = out.with_suffix(".md").read_text()
    assert "Never trained on: the 3 prompts of" in card and "36 answers to them" in card
    assert "--holdout-prompts" in card and "`sjfsched demo` replays that trace" in card
    # A missing input file: status 1, as for the data (docs/predictor.md, Errors); it was 2.
    assert main([*args[:-2], "--holdout-prompts", str(tmp_path / "missing.jsonl")]) == 1
    assert "--holdout-prompts" in capsys.readouterr().err


def test_target_clips_answer_lengths() -> None:
    """The target ignores how short a short answer is: below the floor every answer counts alike."""
    from sjfsched.predictors._corpus import LengthRecord, group_by_prompt
    from sjfsched.predictors._train import fit_lexical, prompt_targets

    records = [
        LengthRecord("a", 3.0, "a", "s", "m"),
        LengthRecord("a", 150.0, "a", "s", "n"),
        LengthRecord("b", 5000.0, "b", "s", "m"),
    ]
    prompts, members = group_by_prompt(records)
    y, target_map = prompt_targets(records, members, "log", (50.0, 100.0))
    assert prompts == ["a", "b"]
    assert y.tolist() == pytest.approx([math.log1p(150), math.log1p(5000)])
    assert target_map is not None and target_map(3.0) == pytest.approx(math.log1p(150))
    y, target_map = prompt_targets(records, members, "log", None)
    assert y[0] == pytest.approx((math.log1p(3) + math.log1p(150)) / 2) and target_map is None
    fit = fit_lexical(records, target="log", target_percentiles=(50.0, 100.0))
    assert fit.target_tokens == pytest.approx((150.0, 5000.0))
    assert fit.target_map is not None and fit.target_map(3.0) == pytest.approx(math.log1p(150))
    with pytest.raises(ValueError, match="target_percentiles"):
        fit_lexical(records, target="log", target_percentiles=(50.0, 120.0))
    with pytest.raises(ValueError, match="target must be one of"):
        fit_lexical(records, target="linear")


def test_rank_target_follows_the_answers_ranks() -> None:
    """The default target: each answer's rank as a normal score, on the log-length scale."""
    from sjfsched.predictors._train import RANK_TAIL, answer_targets

    rng = np.random.default_rng(0)
    tokens = np.round(np.exp(rng.normal(5.5, 1.2, 5000))).astype(np.float64)
    values, target_map = answer_targets(tokens, "rank")
    assert target_map is not None
    # the target orders answers as their lengths do, ties alike
    order = np.argsort(tokens, kind="stable")
    assert np.all(np.diff(values[order]) >= 0)
    # on the log scale: about the same mean and spread as log(1 + tokens) for log-normal lengths
    assert values.mean() == pytest.approx(np.log1p(tokens).mean(), abs=1e-9)
    assert values.std() == pytest.approx(np.log1p(tokens).std(), rel=0.05)
    # the map makes the same target from a length, and is flat beyond the tails
    mapped = np.array([target_map(t) for t in tokens])
    assert np.max(np.abs(mapped - values)) < 0.15
    low, high = np.quantile(tokens, [RANK_TAIL, 1 - RANK_TAIL])
    assert target_map(0) == target_map(low / 2) and target_map(10 * high) == target_map(high * 2)
    # one length for every answer: a flat map
    flat, flat_map = answer_targets(np.full(10, 42.0), "rank")
    assert flat_map is not None and flat_map(1) == flat_map(10**6) == pytest.approx(math.log1p(42))
    assert flat == pytest.approx(np.full(10, math.log1p(42)))
    with pytest.raises(ValueError, match="at least one answer"):
        answer_targets(np.zeros(0, np.float64), "rank")


def test_trained_model_carries_its_target_map(log: Path, tmp_path: Path) -> None:
    """What `sjfsched train` fit the model to is what its adaptation learns towards."""
    from sjfsched.predictors._corpus import load_records
    from sjfsched.predictors._train import fit_lexical

    out = tmp_path / "mine.onnx"
    assert main(["train", str(log), "--out", str(out), "--fit-all"]) == 0
    fit = fit_lexical(load_records([log]))
    correction = LexicalPredictor(out).correction
    assert correction is not None and correction.target_map == fit.target_map
    assert "normal score of each answer's rank" in out.with_suffix(".md").read_text()
    logged = tmp_path / "log.onnx"
    assert main(["train", str(log), "--out", str(logged), "--target", "log", "--fit-all"]) == 0
    assert "--target log" in logged.with_suffix(".md").read_text()
    correction = LexicalPredictor(logged).correction
    tokens = [r.output_tokens for r in load_records([log])]
    assert correction is not None and correction.target_map is not None
    assert correction.target(0) == pytest.approx(math.log1p(np.percentile(tokens, 10)))


def test_evaluate_calibration_report(log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine.onnx"
    assert main(["train", str(log), "--out", str(out), "--fit-all"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(log), "--model", str(out), "--calibration"]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("synthetic /")]
    assert {row.split()[2] for row in rows} == {"small", "medium", "large"}
    # the 'small' model answers 0.7x: calibration must bring its error down
    small = next(row for row in rows if row.split()[2] == "small").split()
    assert float(small[6]) < float(small[5])
    assert "calibration lowered the held-back log-RMSE for" in text


def test_a_file_read_as_an_evaluator_writes_it(tmp_path: Path) -> None:
    """Found by a reviewer playing an evaluator with files of their own: a UTF-8 BOM was refused;
    a line cut short inside a string blamed a control character "at" nothing; a file without
    `source` fields took its name up to the first dot (`logs.app1.jsonl`, `logs.app2.jsonl`: one
    source); and --calibration on small models printed an empty report with exit status 0."""
    bom = tmp_path / "logs.app1.jsonl"
    bom.write_bytes(
        b'\xef\xbb\xbf{"prompt": "hi", "output_tokens": 3}\n{"prompt": "ho", "output_tokens": 4}\n'
    )
    other = tmp_path / "logs.app2.jsonl.gz"
    write_gz = __import__("gzip").open
    with write_gz(other, "wt") as f:
        f.write('{"prompt": "yo", "output_tokens": 5}\n')
    records = load_records([bom, other])
    assert [(r.prompt, r.source) for r in records] == [
        ("hi", "logs.app1"),
        ("ho", "logs.app1"),
        ("yo", "logs.app2"),
    ]
    cut = tmp_path / "cut.jsonl"
    cut.write_text('{"prompt": "x", "output_tokens": 5}\n{"prompt": "x", "output_tok\n{"prompt": "y"}\n')
    with pytest.raises(
        ValueError, match=r"cut\.jsonl:2: not JSON \(Unterminated string starting at column 17\)"
    ):
        load_records([cut])
    cut.write_text('{"prompt": "x" "output_tokens": 5}\n')
    with pytest.raises(ValueError, match=r"cut\.jsonl:1: not JSON \(Expecting ',' delimiter at column 16\)"):
        load_records([cut])
    small = tmp_path / "small.jsonl"
    small.write_text("".join(f'{{"prompt": "q{i}", "output_tokens": {i}}}\n' for i in range(120)))
    with pytest.raises(SystemExit, match="nothing to evaluate: no answering model has >= 200 answers"):
        main(["evaluate", str(small), "--calibration"])
