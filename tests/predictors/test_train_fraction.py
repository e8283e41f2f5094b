"""`sjfsched evaluate --compare --train-fraction F`: every training set keeps a seeded sample of
about F of its prompts (for a learning curve); the test sets stay whole."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sjfsched._cli import main
from sjfsched.predictors._corpus import LengthRecord, in_sample, is_test, load_records
from sjfsched.predictors._evaluate import ALL_METHODS, compare


def test_the_sample_is_about_the_fraction_nested_and_apart_from_the_split() -> None:
    ids = [f"prompt {i}" for i in range(20_000)]
    quarter = {p for p in ids if in_sample(p, 0.25)}
    half = {p for p in ids if in_sample(p, 0.5)}
    assert 0.24 < len(quarter) / len(ids) < 0.26 and 0.49 < len(half) / len(ids) < 0.51
    assert quarter < half  # one seed: the smaller sample is within the larger
    assert {p for p in ids if in_sample(p, 0.5, seed=1)} != half  # another seed, another sample
    assert all(in_sample(p, 1.0) for p in ids) and not any(in_sample(p, 0.0) for p in ids)
    # not the held-out part of the grouped split under another name: about half of it is sampled
    held = [p for p in ids if is_test(p, 0.2)]
    assert 0.45 < sum(p in half for p in held) / len(held) < 0.55


def _records(tmp_path: Path) -> list[LengthRecord]:
    rows = [
        {"source": source, "prompt": f"{source} prompt {i}", "model": "m", "output_tokens": tokens}
        for source in ("alpha", "beta")
        for i in range(200)
        for tokens in ((40 if i % 2 else 1200),)
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return load_records([path])


def test_training_sets_are_sampled_and_test_sets_are_not(tmp_path: Path) -> None:
    records = _records(tmp_path)
    trained: list[int] = []
    scored: list[list[str]] = []
    length = ALL_METHODS["length"]

    def counting(train: Sequence[LengthRecord]) -> Callable[[Sequence[str]], Any]:
        trained.append(len({r.prompt_id for r in train}))
        score = length(train)

        def scoring(texts: Sequence[str]) -> Any:
            scored.append(sorted(texts))
            return score(texts)

        return scoring

    table = {"counting": counting}
    full = compare(
        records, methods=["counting"], test_fraction=0.2, seed=0, loco=True, table=table, min_long=1
    )
    whole, tested = list(trained), list(scored)
    trained.clear()
    scored.clear()
    half = compare(
        records, methods=["counting"], test_fraction=0.2, seed=0, loco=True, table=table, min_long=1,
        train_fraction=0.5,
    )  # fmt: skip
    # in-distribution, then each corpus left out (trained on the other one's 200 prompts)
    assert whole[1:] == [200, 200]
    assert all(0.35 < got / of < 0.65 for got, of in zip(trained, whole, strict=True)), (trained, whole)
    assert scored == tested and len(tested) == 3  # every test set scored whole, as without a sample
    assert "Training sets: a sample of 50% of their prompts (seed 0)." in half
    assert "sample" not in full
    # the tables' rows are the same corpora, tested on the same answers
    assert [line.split("|")[1] for line in half.splitlines() if line.startswith("| ")] == [
        line.split("|")[1] for line in full.splitlines() if line.startswith("| ")
    ]
    tiny = compare(
        records, methods=["length"], test_fraction=0.2, seed=0, loco=True, min_long=1, train_fraction=0.004,
    )  # fmt: skip
    assert "Training sets: a sample of 0.4% of their prompts (seed 0)." in tiny
    with pytest.raises(ValueError, match=r"train_fraction must be within \(0, 1\], got 0"):
        compare(records, methods=["length"], test_fraction=0.2, seed=0, loco=False, train_fraction=0)


def test_a_sample_too_small_to_train_on_says_so(tmp_path: Path) -> None:
    path = tmp_path / "small.jsonl"
    path.write_text(
        "".join(
            json.dumps({"source": "s", "prompt": f"p {i}", "model": "m", "output_tokens": 10 + i}) + "\n"
            for i in range(12)
        ),
        encoding="utf-8",
    )
    argv = ["evaluate", str(path), "--compare", "--methods", "lexical", "--train-fraction", "0.01"]
    with pytest.raises(SystemExit) as exc:  # the command line's one-line error
        main(argv)
    assert exc.value.code == (
        "sjfsched evaluate: nothing to evaluate: in-distribution: too little to train on: "
        "0 distinct prompts, lexical needs at least 2 (--train-fraction 0.01 kept 0 of 11 answers)"
    )


def test_a_learning_curve_rises_with_the_share_of_prompts_trained_on(tmp_path: Path) -> None:
    """Prompts whose length follows their topic word: a tenth of them teaches fewer topics."""
    rng = np.random.default_rng(0)
    letters = list("bcdfghjklmnpqrstvwxz")
    topics = sorted({"".join(rng.choice(letters, 7)) for _ in range(300)})
    long_topics = set(topics[::2])
    rows = []
    for source in ("alpha", "beta"):
        for i in range(1500):
            topic = topics[int(rng.integers(len(topics)))]
            tokens = 1200 if topic in long_topics else 40
            rows.append(
                {"source": source, "prompt": f"tell me about {topic} please, {source} {i}", "model": "m",
                 "output_tokens": tokens}
            )  # fmt: skip
    path = tmp_path / "topics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    records = load_records([path])

    def accuracy(fraction: float) -> float:
        report = compare(
            records, methods=["lexical"], test_fraction=0.2, seed=0, loco=True, train_fraction=fraction
        )
        loco = report.split("## Leave-one-corpus-out")[1]
        row = next(line for line in loco.splitlines() if line.startswith("| alpha |"))
        return float(row.split("|")[2].split()[0])

    few, all_ = accuracy(0.02), accuracy(1.0)
    assert all_ > few + 0.1, (few, all_)
