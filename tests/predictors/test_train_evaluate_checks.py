"""`sjfsched train` and `sjfsched evaluate` check what they are asked before the work: a missing
extra, an empty training or test set, an output path that is a directory or one of the inputs,
an option the chosen report would not use; and prompts that share a prompt_id are trained on
each with its own text. Found by a reviewer with reproducers."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest

import sjfsched
from sjfsched import Request
from sjfsched._cli import main
from sjfsched.predictors import LexicalPredictor
from sjfsched.predictors._corpus import LengthRecord, group_by_prompt, is_test, load_records, prompt_id_of
from sjfsched.predictors._evaluate import compare
from sjfsched.predictors._train import split_records

TOPICS = [
    "the Roman empire", "photosynthesis", "black holes", "the French revolution", "machine learning",
    "jazz music", "the stock market", "climate change", "ancient Egypt", "quantum computing",
]  # fmt: skip


def _write_log(path: Path, *, source: str = "support", models: tuple[str, ...] = ("small", "large")) -> Path:
    """Prompts whose answer length follows what they ask for, answered by ``models``."""
    rng = random.Random(0)
    lines = []
    for i, topic in enumerate(TOPICS * 3):
        for prompt, typical in (
            (f"Write a detailed {1000 + 100 * i}-word essay about {topic}, with sections.", 1300),
            (f"What is {topic}? Answer in one sentence, number {i}.", 40),
            (f"Explain {topic} to a child, take {i}.", 350),
        ):
            for model in models:
                tokens = round(typical * rng.uniform(0.8, 1.25))
                lines.append(
                    json.dumps({"source": source, "prompt": prompt, "model": model, "output_tokens": tokens})
                )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_log(tmp_path_factory.mktemp("logs") / "requests.jsonl")


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a command refuses ``argv`` with (exit status 2, or an exit message)."""
    code: object
    try:
        code = main(argv)
    except SystemExit as exc:  # parser.exit, or the command line's one-line error
        code = exc.code
        if isinstance(exc.code, str):
            message = exc.code
            assert "\n" not in message, message
            return message
    message = capsys.readouterr().err.strip()
    assert code not in (0, None), message
    assert "\n" not in message and "Traceback" not in message, message
    return message


# ---------------------------------------------------------------- a missing extra


@pytest.mark.parametrize(
    ("missing", "argv"),
    [
        ("scipy", []),  # Kendall's tau, in every report
        ("scipy", ["--calibration"]),
        ("xgboost", ["--compare"]),  # clairvoyant-xgb is among the default methods
        ("sklearn", ["--compare", "--methods", "length,clairvoyant-xgb"]),  # xgboost's classifier needs it
        ("sklearn", ["--compare", "--methods", "length,ridge-ngrams"]),
        ("sklearn", ["--compare", "--methods", "lexical-log"]),
        ("onnx", ["--adaptation", "--loco"]),
    ],
)
def test_evaluate_names_its_extra_before_reading_any_data(
    missing: str,
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    # The data is not even looked at: a missing file is not what it reports.
    assert _refused(["evaluate", str(tmp_path / "nope.jsonl"), *argv], capsys) == (
        f"sjfsched evaluate: not available (No module named {missing!r}); "
        "it needs its extra: pip install 'sjfsched[train]'"
    )


def test_evaluate_compare_needs_only_what_its_methods_import(
    log: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "xgboost", None)
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["evaluate", str(log), "--compare", "--methods", "length,lexical"]) == 0
    assert "| support |" in capsys.readouterr().out


# ------------------------------------------------------- empty training or test sets


def test_loco_skips_a_corpus_that_leaves_nothing_to_train_on(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One corpus: leaving it out leaves nothing (it was a StopIteration traceback with
    # ridge-ngrams, "need at least 2 distinct prompts" with lexical, and the in-distribution
    # table was lost).
    assert main(["evaluate", str(log), "--compare", "--loco", "--methods", "length,ridge-ngrams"]) == 0
    captured = capsys.readouterr()
    assert "| corpus | length | ridge-ngrams |\n| --- | ---: | ---: |\n| support |" in captured.out
    assert "No corpus evaluated." in captured.out
    assert "- support: 0 distinct prompts, ridge-ngrams needs at least 2" in captured.out
    assert (
        "leave out support: skipped, too little to train on without it: "
        "0 distinct prompts, ridge-ngrams needs at least 2"
    ) in captured.err.splitlines()


def test_loco_keeps_the_corpora_it_can_train_without(tmp_path: Path) -> None:
    records = load_records([_write_log(tmp_path / "a.jsonl", source="alpha")])
    lone = LengthRecord("Write a novel, long chapters, in full.", 2000.0, "x", "beta", "small")
    # beta has 30 long answers to one prompt: leaving alpha out leaves one prompt to train on
    records += [lone] * 30
    notes: list[str] = []
    report = compare(
        records, methods=["length", "lexical"], test_fraction=0.2, seed=0, loco=True, log=notes.append
    )
    loco = report.split("## Leave-one-corpus-out")[1]
    assert "| beta |" in loco and "| alpha |" not in loco
    assert "- alpha: 1 distinct prompt, lexical needs at least 2" in loco
    assert (
        "leave out alpha: skipped, too little to train on without it: "
        "1 distinct prompt, lexical needs at least 2" in notes
    )
    # the method that trains nothing needs nothing to train on
    report = compare(records, methods=["length"], test_fraction=0.2, seed=0, loco=True)
    assert "| alpha |" in report.split("## Leave-one-corpus-out")[1]


def test_nothing_to_evaluate_is_one_line_naming_why(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = len(split_records(load_records([log]), 0.2)[0])
    compare_ = ["evaluate", str(log), "--compare", "--methods", "length,lexical"]
    assert _refused([*compare_, "--train-exclude", "supp*"], capsys) == (
        "sjfsched evaluate: nothing to evaluate: in-distribution: too little to train on: "
        f"0 distinct prompts, lexical needs at least 2 (--train-exclude supp* kept 0 of {answers} answers)"
    )
    message = _refused([*compare_, "--train-exclude", "supp*", "--loco"], capsys)
    assert message.endswith(
        "; leaving out support: too little to train on without it: "
        "0 distinct prompts, lexical needs at least 2"
    )
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text(
        "".join(json.dumps({"prompt": f"question {i}", "output_tokens": 10 * i}) + "\n" for i in (1, 2))
    )
    assert split_records(load_records([tiny]), 0.2)[1] == []  # nothing held out
    assert _refused(["evaluate", str(tiny), "--compare", "--methods", "ridge-ngrams"], capsys) == (
        "sjfsched evaluate: nothing to evaluate: in-distribution: nothing held out: "
        "--test-fraction 0.2 (seed 0) holds out none of the 2 prompt ids"
    )
    # clairvoyant-xgb needs the three length classes: said before training, naming the method
    assert _refused([*compare_[:-1], "clairvoyant-xgb", "--train-exclude", "supp*"], capsys) == (
        "sjfsched evaluate: nothing to evaluate: in-distribution: too little to train on: "
        "0 distinct prompts, clairvoyant-xgb needs at least 2 "
        f"(--train-exclude supp* kept 0 of {answers} answers)"
    )
    shorts = tmp_path / "shorts.jsonl"
    shorts.write_text(
        "".join(json.dumps({"prompt": f"say hi {i}", "output_tokens": 5 + i}) + "\n" for i in range(40))
    )
    assert _refused(["evaluate", str(shorts), "--compare", "--methods", "clairvoyant-xgb"], capsys) == (
        "sjfsched evaluate: nothing to evaluate: in-distribution: too little to train on: no medium or "
        "long (>= 800 tokens) answers, clairvoyant-xgb needs short, medium and long ones"
    )


def test_adaptation_says_when_there_is_nothing_to_adapt_on(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 90 answers per model: it printed an empty table
    assert _refused(["evaluate", str(log), "--adaptation"], capsys) == (
        "sjfsched evaluate: nothing to evaluate: no answering model has >= 400 answers in one corpus "
        "(the largest has 90)"
    )
    big = tmp_path / "big.jsonl"
    big.write_text(
        "".join(
            json.dumps(
                {"source": "mine", "prompt": f"question {i} on {TOPICS[i % 10]}", "output_tokens": 10 + i}
            )
            + "\n"
            for i in range(450)
        )
    )
    # one corpus: leaving it out leaves nothing to train on ("need at least 2 distinct prompts")
    assert _refused(["evaluate", str(big), "--adaptation", "--loco"], capsys) == (
        "sjfsched evaluate: nothing to evaluate: too little to train on without mine: 0 distinct prompts "
        "of the bundled sources in the other corpora, the lexical model needs at least 2"
    )


# -------------------------------------------------- where train writes


def test_train_refuses_to_write_over_its_inputs(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    data = folder / "requests.jsonl"
    data.write_bytes(log.read_bytes())
    before = data.read_bytes()
    trace = tmp_path / "trace.jsonl"
    trace.write_text(json.dumps({"prompt": "What is jazz music? Answer in one sentence, number 5."}) + "\n")
    model = str(tmp_path / "m.onnx")
    assert _refused(["train", str(data), "--out", str(data)], capsys) == (
        f"sjfsched train: --out {data} is an input file: it would be overwritten"
    )
    assert _refused(["train", str(data), "--out", model, "--card", str(data)], capsys) == (
        f"sjfsched train: --card {data} is an input file: it would be overwritten"
    )
    link = tmp_path / "link.onnx"
    link.symlink_to(data)
    assert _refused(["train", str(data), "--out", str(link)], capsys) == (
        f"sjfsched train: --out {link} is an input file ({data}): it would be overwritten"
    )
    assert _refused(
        ["train", str(data), "--out", model, "--holdout-prompts", str(trace), "--card", str(trace)], capsys
    ) == (f"sjfsched train: --card {trace} is a --holdout-prompts file: it would be overwritten")
    # the default card beside the model, over a --holdout-prompts file
    held = tmp_path / "held.md"
    held.write_text(trace.read_text())
    assert _refused(
        ["train", str(data), "--out", str(tmp_path / "held.onnx"), "--holdout-prompts", str(held)], capsys
    ) == (
        f"sjfsched train: the model card {held} (see --card) is a --holdout-prompts file: "
        "it would be overwritten"
    )
    # a directory given as data: what it reads (*.jsonl, *.jsonl.gz) is refused, now or later
    for name in ("requests.jsonl", "new.jsonl", "new.jsonl.gz"):
        assert _refused(["train", str(folder), "--out", str(folder / name)], capsys) == (
            f"sjfsched train: --out {folder / name} is in the input directory {folder}, whose "
            "*.jsonl and *.jsonl.gz files are read: it would be read as data"
        )
    assert data.read_bytes() == before and trace.read_text().startswith("{")
    assert not (tmp_path / "m.onnx").exists()
    # a model file beside the data it reads is fine: it is not read as data
    assert main(["train", str(folder), "--out", str(folder / "m.onnx")]) == 0
    assert (folder / "m.onnx").is_file() and data.read_bytes() == before


def test_train_checks_where_it_writes_before_reading_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The data does not exist: what is reported is the output path, at once (it was 21 s of
    # training, then "Is a directory", and a card that is a directory left the model without one).
    nope = str(tmp_path / "nope.jsonl")
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    assert (
        _refused(["train", nope, "--out", str(folder)], capsys)
        == f"sjfsched train: --out {folder} is a directory"
    )
    card = tmp_path / "card.md"
    card.mkdir()
    model = tmp_path / "m.onnx"
    assert _refused(["train", nope, "--out", str(model), "--card", str(card)], capsys) == (
        f"sjfsched train: --card {card} is a directory"
    )
    (tmp_path / "m.md").mkdir()  # the default card's path
    assert _refused(["train", nope, "--out", str(model)], capsys) == (
        f"sjfsched train: the model card {tmp_path / 'm.md'} (see --card) is a directory"
    )
    a_file = tmp_path / "file"
    a_file.write_text("")
    inside = a_file / "sub" / "m.onnx"
    assert _refused(["train", nope, "--out", str(inside)], capsys) == (
        f"sjfsched train: --out {inside}: cannot make its folder {inside.parent}: {a_file} is not a directory"
    )
    assert not model.exists()
    # a folder that does not exist yet is made
    assert _refused(["train", nope, "--out", str(tmp_path / "new" / "m.onnx")], capsys) == (
        f"sjfsched train: no such file or directory: {nope}"
    )


# ------------------------------------------------------ prompts sharing a prompt_id


def test_prompts_sharing_a_prompt_id_are_trained_on_each_with_its_own_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An export with one id per conversation: greeting, then a long or a short request.
    rng = random.Random(0)
    rows = []
    for conv in range(100):
        for text, tokens in (
            (f"hello there number {conv}", 20 + rng.randint(0, 10)),
            (f"write a zebra essay please {conv}", 1500 + rng.randint(0, 100)),
            (f"quick yes or no {conv}", 5 + rng.randint(0, 3)),
        ):
            rows.append({"prompt_id": f"conv-{conv}", "prompt": text, "output_tokens": tokens})
    data = tmp_path / "conversations.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "m.onnx"
    assert main(["train", str(data), "--out", str(out), "--test-fraction", "0"]) == 0
    capsys.readouterr()
    predictor = LexicalPredictor(out, adapt=False)
    essay = predictor.predict(Request("write a zebra essay please 999")).tokens
    quick = predictor.predict(Request("quick yes or no 999")).tokens
    assert essay > 20 * quick  # the first text of each id alone was trained on: these were equal
    assert "| `conversations` | 300 | 300 |" in out.with_suffix(".md").read_text()  # answers, prompts
    # the split stays grouped by prompt_id: a conversation is on one side
    train, test = split_records(load_records([data]), 0.3)
    assert test and {r.prompt_id for r in train}.isdisjoint({r.prompt_id for r in test})


def test_group_by_prompt_keys_on_corpus_id_and_text() -> None:
    records = [
        LengthRecord("a question", 10.0, "id-1", "s", "m"),
        LengthRecord("another question", 20.0, "id-1", "s", "m"),
        LengthRecord("a question  \n", 30.0, "id-1", "s", "n"),  # the same prompt (what its id hashes)
        LengthRecord("a question", 40.0, "id-1", "other", "m"),  # another corpus
        LengthRecord("a question", 50.0, "id-2", "s", "m"),
    ]
    prompts, members = group_by_prompt(records)
    assert prompts == ["a question", "another question", "a question", "a question"]
    assert members == [[0, 2], [1], [3], [4]]
    assert prompt_id_of("a question  \n") == prompt_id_of("a question")


# ------------------------------------------------- evaluate's options


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            [
                "--compare",
                "--methods",
                "lexical,lexical-vectors",
                "--word-vectors",
                "v.txt",
                "--word-vector-weight",
                "-1",
            ],
            "--word-vector-weight must be a number >= 0",
        ),
        (["--compare", "--word-vector-weight", "nan"], "--word-vector-weight must be a number >= 0"),
        (["--compare", "--methods", ""], "--methods names no method; choose from "),
        (["--compare", "--methods", " , "], "--methods names no method; choose from "),
        (["--compare", "--methods", "length,nope"], "unknown methods ['nope']; choose from "),
        (
            ["--compare", "--methods", "lexical-vectors"],
            "the method lexical-vectors needs --word-vectors FILE",
        ),
        (
            ["--compare", "--methods", "lexical", "--word-vectors", "v.txt"],
            "--word-vectors is for the method lexical-vectors: add it to --methods",
        ),
        (["--compare", "--word-vector-weight", "0.5"], "--word-vector-weight is for --word-vectors"),
        (["--loco"], "--loco is for --compare or --adaptation"),
        (["--calibration", "--loco"], "--loco is for --compare or --adaptation, not --calibration"),
        (["--compare", "--calibration"], "--compare and --calibration are separate reports: choose one"),
        (["--methods", "length"], "--methods is for --compare"),
        (["--train-exclude", "x*"], "--train-exclude is for --compare"),
        (["--compare", "--train-fraction", "0"], "--train-fraction must be within (0, 1]"),
        (["--compare", "--train-fraction", "1.5"], "--train-fraction must be within (0, 1]"),
        (["--compare", "--train-fraction", "nan"], "--train-fraction must be within (0, 1]"),
        (["--train-fraction", "0.5"], "--train-fraction is for --compare"),
        (["--plot", "x.png"], "--plot is for --compare"),
        (["--calibration", "--plot", "x.png"], "--plot is for --compare, not --calibration"),
        (["--compare", "--plot", "-"], "--plot -: give a file name ending in .png (it writes a PNG)"),
        (
            ["--adaptation", "--train-bundled-sources"],
            "--train-bundled-sources is for --compare, not --adaptation",
        ),
        (["--word-vectors", "v.txt"], "--word-vectors is for --compare"),
        (["--compare", "--split", "all"], "--split all is for scoring one model, not --compare"),
        (["--compare", "--corpora-only"], "--corpora-only is for scoring one model, not --compare"),
        (
            ["--compare", "--predictor", "length"],
            "--predictor length is for scoring one model, not --compare",
        ),
        (["--calibration", "--seed", "3"], "--seed is for scoring one model or --compare, not --calibration"),
        (
            ["--adaptation", "--test-fraction", "0.5"],
            "--test-fraction is for scoring one model or --compare, not --adaptation",
        ),
        (
            ["--compare", "--model", "m.onnx"],
            "--model does nothing with --compare (it trains and compares the --methods)",
        ),
        (
            ["--adaptation", "--loco", "--model", "m.onnx"],
            "--model does nothing with --adaptation --loco (it trains a model without each corpus)",
        ),
        (
            ["--predictor", "length", "--model", "m.onnx"],
            "--model does nothing with --predictor length (it ranks by prompt length)",
        ),
        (
            ["--predictor", "other-answers", "--model", "m.onnx"],
            "--model does nothing with --predictor other-answers (it ranks by other answers to a prompt)",
        ),
        (
            ["--compare", "--predictor", "other-answers"],
            "--predictor other-answers is for scoring one model, not --compare",
        ),
        (["--predictor", "clairvoyant"], "--predictor clairvoyant needs --model"),
    ],
)
def test_evaluate_refuses_options_its_report_would_not_use_before_reading_data(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The data does not exist: each is refused first, in one line naming the option.
    assert main(["evaluate", str(tmp_path / "nope.jsonl"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sjfsched evaluate: {message}") and err.count("\n") == 1, err


def test_evaluate_options_each_report_uses_are_taken(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(log), "--predictor", "length", "--split", "all", "--corpora-only"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("length on all split: 180 answers\n")  # no model named: none is read
    assert (
        main(["evaluate", str(log), "--compare", "--methods", "length,length", "--test-fraction", "0.3"]) == 0
    )
    assert "| corpus | length |\n" in capsys.readouterr().out  # a method named twice: one column
    model = tmp_path / "m.onnx"
    assert main(["train", str(log), "--out", str(model), "--fit-all"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(log), "--model", str(model), "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"lexical {model} on test split:")


def test_evaluate_scores_what_the_model_was_not_trained_on_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`evaluate FILE` scored the held-out 20% of every file, even one of a source the model never
    saw, and called the bundled model's figures on its own sources a test split."""
    mine = _write_log(tmp_path / "mine.jsonl", source="mine")
    other = _write_log(tmp_path / "other.jsonl", source="other")
    n_mine, n_other = len(load_records([mine])), len(load_records([other]))
    model = tmp_path / "m.onnx"
    assert main(["train", str(mine), "--out", str(model)]) == 0
    capsys.readouterr()
    held = len(split_records(load_records([mine]), 0.2, 0)[1])
    assert 0 < held < n_mine
    # Trained on `mine` (its test split held out), never on `other`: both parts, with a note.
    assert main(["evaluate", str(mine), str(other), "--model", str(model), "--corpora-only"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(
        f"lexical {model} on test split and the {n_other:,} answers it was not trained on (of other "
        f"sources, or prompts it was kept from): {held + n_other:,} answers"
    )
    assert f"{held:,} of these answers are of sources the model was trained on (mine)" in err
    assert main(["evaluate", str(other), "--model", str(model)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"lexical {model} on every answer") and f": {n_other:,} answers" in out
    assert not err
    # The bundled model was fitted on every prompt of its sources but the demo trace's: of an
    # oasst1 file, only the demo's prompts are unseen.
    demo_text = (Path(sjfsched.__file__).parent / "data" / "demo_trace.jsonl").read_text(encoding="utf-8")
    demo = [json.loads(line) for line in demo_text.splitlines()]
    unseen = [r["prompt"] for r in demo if r["source"] == "oasst1"][:3]
    rows = [{"source": "oasst1", "prompt": p, "output_tokens": 50 * (i + 1)} for i, p in enumerate(unseen)]
    rows += [
        {"source": "oasst1", "prompt": f"{topic}, question {i}", "output_tokens": 900}
        for i, topic in enumerate(TOPICS)
    ]
    shared = tmp_path / "oasst1-like.jsonl"
    shared.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["evaluate", str(shared), "--corpora-only"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("lexical (bundled) on the answers it was not trained on") and ": 3 answers" in out
    assert main(["evaluate", str(shared), "--split", "all"]) == 0
    err = capsys.readouterr().err
    assert "are of sources the bundled model was fitted on, every prompt of them (oasst1)" in err


def test_compare_trains_on_no_prompt_it_tests(tmp_path: Path) -> None:
    """Leave-one-corpus-out trained on the other corpora's answers to the very prompts left out,
    and the in-distribution split on a prompt's answers filed under other ids (found by a reviewer:
    0.921 left out with the shared prompts, 0.804 without)."""
    mine = _write_log(tmp_path / "mine.jsonl", source="mine")
    copy = tmp_path / "copy.jsonl"  # the same prompts under ids of their own, another corpus
    rows = [json.loads(line) for line in mine.read_text().splitlines()]
    copy.write_text(
        "".join(json.dumps({**r, "source": "copy", "prompt_id": f"c{i}"}) + "\n" for i, r in enumerate(rows))
    )
    records = load_records([mine, copy])
    seen: list[str] = []
    compare(records, methods=["length"], test_fraction=0.2, seed=0, loco=True, log=seen.append, min_long=1)
    n = len(rows)
    assert f"leave out copy: {n:,} answers of other corpora to its prompts left out of training" in seen
    assert f"leave out mine: {n:,} answers of other corpora to its prompts left out of training" in seen
    assert any(
        line.startswith("in-distribution: ") and "left out, their prompts being among those tested" in line
        for line in seen
    )


def test_train_holds_a_prompt_out_under_every_id_it_has(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With an id per request (or conversation) a prompt asked three times fell on both sides of
    the split: the held-out figures were in-sample (a reviewer's: 1.000 against 0.742)."""
    rows = [json.loads(line) for line in _write_log(tmp_path / "base.jsonl").read_text().splitlines()]
    log = tmp_path / "requests.jsonl"
    log.write_text("".join(json.dumps({**r, "prompt_id": f"req-{i}"}) + "\n" for i, r in enumerate(rows)))
    records = load_records([log])
    train, test = split_records(records, 0.2, 0)
    tested = {r.prompt for r in test}
    shared = sum(r.prompt in tested for r in train)
    assert shared > 0  # the case: the same text on both sides of the split by prompt_id
    assert main(["train", str(log), "--out", str(tmp_path / "m.onnx")]) == 0
    err = capsys.readouterr().err
    assert f"{shared:,} answers left out of training: their prompt is held out under another prompt_id" in err
    assert f"{len(records):,} answers: {len(train) - shared:,} to train on, {len(test):,} held out" in err


def test_train_says_when_its_split_leaves_too_few_prompts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = next(s for s in range(100) if sum(is_test(i, 0.5, s) for i in ("a", "b")) == 1)
    path = tmp_path / "two.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt_id": i, "prompt": f"prompt {i}", "output_tokens": n}) + "\n"
            for i, n in (("a", 10), ("b", 900))
        )
    )
    argv = [
        "train",
        str(path),
        "--out",
        str(tmp_path / "m.onnx"),
        "--test-fraction",
        "0.5",
        "--seed",
        str(seed),
    ]
    message = _refused(argv, capsys)
    assert message == (
        "sjfsched train: --test-fraction 0.5 leaves fewer than 2 prompts to train on: lower it, "
        "or pass --fit-all"
    )


def test_evaluate_scores_what_a_model_held_out_as_its_metadata_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model fitted on all of its data (--fit-all), or split with another --test-fraction or
    --seed than evaluate's, was scored on answers it had learnt from, called a test split."""
    mine = _write_log(tmp_path / "mine.jsonl", source="mine")
    other = _write_log(tmp_path / "other.jsonl", source="other")
    n_other = len(load_records([other]))
    fitted = tmp_path / "fitted.onnx"
    assert main(["train", str(mine), "--out", str(fitted), "--fit-all"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(mine), str(other), "--model", str(fitted)]) == 0
    out, err = capsys.readouterr()
    assert (
        out.startswith(f"lexical {fitted} on the answers it was not trained on")
        and f": {n_other:,} answers" in out
    )
    assert main(["evaluate", str(mine), "--model", str(fitted)]) == 0  # nothing else to score
    err = capsys.readouterr().err
    assert (
        "of sources the model was fitted on, every prompt of them (mine): their figures are in-distribution"
        in err
    )
    split = tmp_path / "split.onnx"
    assert main(["train", str(mine), "--out", str(split), "--test-fraction", "0.3", "--seed", "5"]) == 0
    capsys.readouterr()
    held = len(split_records(load_records([mine]), 0.3, 5)[1])
    assert held != len(split_records(load_records([mine]), 0.2, 0)[1])
    assert main(["evaluate", str(mine), "--model", str(split)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"lexical {split} on test split: {held:,} answers")
    assert "the part its training held out (--test-fraction 0.3, --seed 5, as its metadata says)" in err


def test_an_empty_split_names_the_split_used_the_models_own(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "all.onnx"
    assert main(["train", str(log), "--out", str(out), "--test-fraction", "0"]) == 0
    capsys.readouterr()
    assert _refused(["evaluate", str(log), "--model", str(out)], capsys) == (
        "sjfsched evaluate: the test split is empty: --test-fraction 0 (seed 0) (the model's own split, "
        "as its metadata says) splits the 90 prompt ids so; --split all evaluates every answer"
    )


def test_calibration_and_adaptation_say_when_the_model_was_trained_on_the_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(1)
    rows = [
        {
            "source": "support",
            "prompt": text,
            "model": "small",
            "output_tokens": round(typical * rng.uniform(0.8, 1.25)),
        }
        for i in range(150)
        for text, typical in (
            (f"Write a detailed essay about {TOPICS[i % 10]}, with sections, part {i}.", 1300),
            (f"What is {TOPICS[i % 10]}? Answer in one sentence, number {i}.", 40),
            (f"Explain {TOPICS[i % 10]} to a child, take {i}.", 350),
        )
    ]
    log = tmp_path / "requests.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "mine.onnx"
    assert main(["train", str(log), "--out", str(out), "--fit-all"]) == 0
    capsys.readouterr()
    note = (
        "sjfsched evaluate: 450 of these 450 answers are of sources the model was trained on (support): "
        "this report runs it on every answer, so its figures on them are in-distribution, not held out"
    )
    for report in ("--calibration", "--adaptation"):
        assert main(["evaluate", str(log), "--model", str(out), report]) == 0
        assert note in capsys.readouterr().err.splitlines()
    # The bundled model never saw these: nothing to say.
    assert main(["evaluate", str(log), "--calibration"]) == 0
    assert "in-distribution" not in capsys.readouterr().err


def test_a_source_that_is_no_text_is_written_escaped_not_a_crash_after_training(tmp_path: Path) -> None:
    # A lone surrogate (JSON's "\ud800", or a data file's Latin-1 name taken as the source)
    # made the card fail to encode after the model had been written over the old one.
    import subprocess

    data = _write_log(tmp_path / "requests.jsonl", source="app\ud800")
    out = tmp_path / "mine.onnx"
    assert main(["train", str(data), "--out", str(out)]) == 0
    card = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "app\\ud800" in card
    # The command prints it escaped too, under a strict UTF-8 stdout (en_US.UTF-8's).
    run = subprocess.run(
        [sys.executable, "-m", "sjfsched", "evaluate", str(data), "--model", str(out), "--split", "all"],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"},
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    assert b"app\\ud800" in run.stdout


def test_calibration_report_says_no_ratio_where_most_answers_are_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The typical/actual ratio divided by a median answer of 0 tokens: "inf", with numpy's warning.
    import warnings

    rows = [
        {
            "prompt": f"Say something about thing number {i}",
            "model": "m",
            "output_tokens": 0 if i % 10 < 7 else 90,
        }
        for i in range(300)
    ]
    data = tmp_path / "zeros.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["evaluate", str(data), "--calibration"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("zeros / m"))
    assert "inf" not in line and line.split()[-2:] == ["-", "-"], line
