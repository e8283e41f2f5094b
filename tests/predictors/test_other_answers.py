"""`sjfsched evaluate --predictor other-answers`: each answer ranked by the other answers to its
prompt, the measure of how much of an answer's length its prompt decides."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from sjfsched._cli import main
from sjfsched.predictors._corpus import LengthRecord, is_test, load_records, prompt_id_of
from sjfsched.predictors._evaluate import other_answers


def _write(path: Path, rows: Sequence[tuple[str, str, str, float]]) -> Path:
    """``rows``: (source, prompt, model, output tokens), one answer each."""
    path.write_text(
        "".join(
            json.dumps({"source": s, "prompt": p, "model": m, "output_tokens": t}) + "\n"
            for s, p, m, t in rows
        ),
        encoding="utf-8",
    )
    return path


def _scored(records: list[LengthRecord]) -> dict[tuple[str, str], float]:
    kept, scores = other_answers(records)
    return {(r.prompt, r.model): float(s) for r, s in zip(kept, scores, strict=True)}


def test_each_answer_is_scored_by_the_mean_log_length_of_the_others_to_its_prompt(tmp_path: Path) -> None:
    records = load_records(
        [
            _write(
                tmp_path / "a.jsonl",
                [
                    ("c", "short?", "m1", 10),
                    ("c", "short?", "m2", 30),
                    ("c", "short?", "m3", 50),
                    ("c", "long!", "m1", 900),
                    ("c", "long!", "m2", 1100),
                    ("c", "once", "m1", 400),
                ],
            )
        ]
    )
    scored = _scored(records)
    assert ("once", "m1") not in scored  # no other answer to score it by
    assert scored[("short?", "m1")] == pytest.approx((math.log1p(30) + math.log1p(50)) / 2)
    assert scored[("short?", "m3")] == pytest.approx((math.log1p(10) + math.log1p(30)) / 2)
    assert scored[("long!", "m1")] == pytest.approx(math.log1p(1100))
    assert scored[("long!", "m2")] == pytest.approx(math.log1p(900))


def test_the_same_prompt_in_another_corpus_is_another_prompt(tmp_path: Path) -> None:
    records = load_records(
        [
            _write(
                tmp_path / "a.jsonl",
                [("one", "hi", "m1", 5), ("two", "hi", "m1", 900), ("two", "hi", "m2", 7)],
            )
        ]
    )
    scored = _scored(records)
    assert set(scored) == {("hi", "m1"), ("hi", "m2")}
    assert scored[("hi", "m2")] == pytest.approx(math.log1p(900))  # corpus two's m1, not corpus one's
    kept, scores = other_answers([])
    assert kept == [] and scores.shape == (0,)


def _corpus(tmp_path: Path, *, agree: bool) -> Path:
    """Short and long prompts answered by two models, who agree on which is which or do not."""
    rows = []
    for i in range(6):
        short, long = (40, 1200) if agree else (1200, 40)
        rows += [("c", f"short {i}", "m1", 40), ("c", f"short {i}", "m2", short)]
        rows += [("c", f"long {i}", "m1", 1200), ("c", f"long {i}", "m2", long)]
    rows.append(("c", "asked once", "m1", 500))
    return _write(tmp_path / f"{agree}.jsonl", rows)


def test_the_command_ranks_by_other_answers_and_says_what_it_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(_corpus(tmp_path, agree=True)), "--predictor", "other-answers"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        "other-answers on every answer: 24 answers, each ranked by the mean log length of the other "
        "answers to its prompt (1 answer to prompts answered once left out)"
    )
    row = next(line.split() for line in out.splitlines() if line.startswith("c "))
    assert row[1:4] == ["24", "12", "12"] and row[4] == "1.000", out
    # When the models disagree about every prompt, the other answers rank every pair wrong.
    assert main(["evaluate", str(_corpus(tmp_path, agree=False)), "--predictor", "other-answers"]) == 0
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("c "))
    assert float(row[4]) < 0.5, row


def test_no_prompt_answered_twice_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write(tmp_path / "once.jsonl", [("c", "a", "m1", 5), ("c", "b", "m1", 900)])
    assert main(["evaluate", str(data), "--predictor", "other-answers"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "sjfsched evaluate: no prompt has two answers or more in the data (2 answers; prompts are told "
        "apart by corpus, prompt_id and text): --predictor other-answers ranks an answer by the other "
        "answers to its prompt\n"
    )
    # A prompt answered twice, on the training side of the grouped split: none in the test split.
    prompt = next(p for p in (f"prompt {i}" for i in range(100)) if not is_test(prompt_id_of(p), 0.2, 0))
    data = _write(tmp_path / "split.jsonl", [("c", prompt, "m1", 5), ("c", prompt, "m2", 900)])
    assert main(["evaluate", str(data), "--predictor", "other-answers", "--split", "test"]) == 1
    assert "sjfsched evaluate: the test split is empty: " in capsys.readouterr().err
    assert main(["evaluate", str(data), "--predictor", "other-answers", "--split", "train"]) == 0
    assert capsys.readouterr().out.startswith("other-answers on train split: 2 answers, ")


def test_one_id_for_different_prompts_keeps_them_apart(tmp_path: Path) -> None:
    """An id given per conversation: its two different prompts are two prompts, as in training."""
    rows = []
    for i in range(3):
        rows += [("c", f"Write an essay, conversation {i}.", "m1", 1200), ("c", f"Yes or no, {i}?", "m1", 20)]
        rows += [("c", f"Write an essay, conversation {i}.", "m2", 1000), ("c", f"Yes or no, {i}?", "m2", 30)]
    data = tmp_path / "conversations.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"source": s, "prompt": p, "model": m, "output_tokens": t, "prompt_id": f"conv{p[-3]}"}
            )
            + "\n"
            for s, p, m, t in rows
        ),
        encoding="utf-8",
    )
    scored = _scored(load_records([data]))
    assert len(scored) == 12
    assert scored[("Write an essay, conversation 0.", "m1")] == pytest.approx(math.log1p(1000))
    assert scored[("Yes or no, 0?", "m1")] == pytest.approx(math.log1p(30))


@pytest.mark.parametrize("predictor", ["other-answers", "length"])
@pytest.mark.parametrize(("option", "value"), [("--test-fraction", "0.5"), ("--seed", "3")])
def test_split_options_without_a_split_are_refused(
    predictor: str, option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", str(tmp_path / "nope.jsonl"), "--predictor", predictor, option, value]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"sjfsched evaluate: {option} does nothing with --predictor {predictor} and --split auto "
        "(nothing is learnt, every answer is scored): add --split test, train or all\n"
    )
    data = _write(tmp_path / "d.jsonl", [("c", "a", "m1", 5), ("c", "a", "m2", 900)])
    assert main(["evaluate", str(data), "--predictor", predictor, option, value, "--split", "all"]) == 0
