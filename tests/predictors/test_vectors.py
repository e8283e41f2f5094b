"""Word vectors folded into the lexical model: words never seen in training get a meaning."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from sjfsched import Request
from sjfsched._cli import main
from sjfsched.predictors import LexicalPredictor
from sjfsched.predictors._corpus import LengthRecord, prompt_id_of
from sjfsched.predictors._train import fit_lexical, lexical_onnx
from sjfsched.predictors._vectors import WordVectors, load_word_vectors

# Two directions of meaning: long-form writing, and brevity. The training
# prompts use some words of each; the test prompts only the others.
_LONG_SEEN, _LONG_UNSEEN = ["essay", "report", "story"], ["novel", "chapter", "saga"]
_SHORT_SEEN, _SHORT_UNSEEN = ["short", "quick", "tiny"], ["brief", "terse", "concise"]
_TOPICS = [f"topic{i}" for i in range(40)]


def _vectors_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    long_axis, short_axis = np.eye(8)[0], np.eye(8)[1]
    groups = ((_LONG_SEEN + _LONG_UNSEEN, long_axis), (_SHORT_SEEN + _SHORT_UNSEEN, short_axis))
    rows = [(w, axis + 0.05 * rng.standard_normal(8)) for words, axis in groups for w in words]
    others = ["write", "a", "an", "about", "answer", "give", *_TOPICS, "don't", "Capital"]
    rows += [(w, 0.3 * rng.standard_normal(8)) for w in others]
    lines = [" ".join([w, *(f"{x:.4f}" for x in v)]) for w, v in rows]
    path = tmp_path / "vectors.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _records(
    n: int = 240,
    *,
    seed: int = 1,
    corpus: str = "mine",
    long_ask: tuple[str, list[str]] = ("write a {} about", _LONG_SEEN),
    short_ask: tuple[str, list[str]] = ("give a {} answer about", _SHORT_SEEN),
) -> list[LengthRecord]:
    """Prompts asking for long answers (odd ones) and short ones, each with one of its words."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        topic = rng.choice(_TOPICS)
        form, words = long_ask if i % 2 else short_ask
        prompt = f"{form.format(rng.choice(words))} {topic} {i}"
        tokens = rng.randint(900, 1500) if i % 2 else rng.randint(10, 60)
        out.append(LengthRecord(prompt, float(tokens), prompt_id_of(prompt), corpus, "m"))
    return out


def test_reading_vectors_keeps_words_the_featurizer_can_see(tmp_path: Path) -> None:
    vectors = load_word_vectors(_vectors_file(tmp_path))
    assert "novel" in vectors.words and vectors.matrix.shape == (len(vectors.words), 8)
    assert "don't" not in vectors.words and "Capital" not in vectors.words  # never a split, lowercased word
    assert load_word_vectors(_vectors_file(tmp_path), limit=3).words == ["essay", "report", "story"]
    wink = tmp_path / "wink.json"
    wink.write_text(
        json.dumps(
            {
                "dimensions": 2,
                "words": ["a", "b", "c"],
                "vectors": {"a": [1, 2, 9], "b": [3, 4, 9], "c": [5, 6, 9]},
            }
        )
    )
    read = load_word_vectors(wink)
    assert read.words == ["a", "b", "c"] and read.matrix.tolist() == [[1, 2], [3, 4], [5, 6]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a 1 2\nb 1\n", r"bad\.txt:2: 1 numbers, the first line has 2"),
        ("a 1 x\n", r"bad\.txt:1: not 'word number number \.\.\.'"),
        ("A 1 2\n", r"bad\.txt: no usable word vectors"),
        ("a\n", r"bad\.txt:1: a word without numbers"),
        ("a 1 2\nb nan 2\n", r"bad\.txt:2: the vector of 'b' holds a non-finite number"),
    ],
)
def test_a_bad_vectors_file_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_word_vectors(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"dimensions": 2, "words": ["a"], "vectors": [[1, 2]]}, "not a wink-embeddings JSON file"),
        ({"dimensions": 2, "words": 3, "vectors": {}}, "not a wink-embeddings JSON file"),
        # an infinity raised OverflowError (a traceback from the commands); 2.7 read as 2
        *(
            (
                {"dimensions": d, "words": ["a"], "vectors": {"a": [1, 2]}},
                rf"not a wink-embeddings JSON file \('dimensions' is {d!r}, not a whole",
            )
            for d in (math.inf, 2.7, True, "2", 0)
        ),
        (
            {"dimensions": 2, "words": ["a"], "vectors": {"a": [1, "x"]}},
            "the vector of 'a' holds a non-number",
        ),
        ({"dimensions": 2, "words": ["a"], "vectors": {"a": [1]}}, "the vector of 'a' is missing or short"),
    ],
)
def test_a_bad_wink_file_is_named(tmp_path: Path, data: object, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"bad\.json: {message}"):
        load_word_vectors(path)


def test_words_never_seen_in_training_rank_by_their_meaning(tmp_path: Path) -> None:
    records = _records()
    vectors = load_word_vectors(_vectors_file(tmp_path))
    plain, with_vectors = fit_lexical(records), fit_lexical(records, vectors=vectors, vector_weight=1.0)
    long_asks = [f"write a {w} about topic{i}" for w in _LONG_UNSEEN for i in range(3)]
    short_asks = [f"give a {w} answer about topic{i}" for w in _SHORT_UNSEEN for i in range(3)]
    tests = (
        [f"{w} about topic{i}" for w in _LONG_UNSEEN for i in range(5)],
        [f"{w} about topic{i}" for w in _SHORT_UNSEEN for i in range(5)],
    )
    for fit in (plain, with_vectors):  # both tell seen phrasings apart
        assert fit.scores(long_asks).min() > fit.scores(short_asks).max()
    # only the words' meaning separates these: "novel about topic1" against "brief about topic1"
    gap = {name: fit.scores(tests[0]).mean() - fit.scores(tests[1]).mean() for name, fit in
           (("plain", plain), ("vectors", with_vectors))}  # fmt: skip
    assert abs(gap["plain"]) < 0.05 and gap["vectors"] > 0.3, gap
    # the folded-in model runs in the predictor as it scored in training, one by one and in batches
    path = tmp_path / "m.onnx"
    path.write_bytes(lexical_onnx(with_vectors, {"sjfsched.trained_on": "[]"}).SerializeToString())
    predictor = LexicalPredictor(path, calibrate=False, adapt=False)
    texts = tests[0] + tests[1] + ["", "novel novel brief", "word2 unknown"]
    np.testing.assert_allclose(predictor.scores(texts), with_vectors.scores(texts), rtol=1e-5, atol=1e-5)
    one_by_one = [predictor.predict(Request(t)).tokens for t in texts]
    np.testing.assert_allclose(
        [p.tokens for p in predictor.predict_many([Request(t) for t in texts])], one_by_one, rtol=1e-5
    )


def test_train_and_evaluate_take_word_vectors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "mine.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": r.prompt, "output_tokens": r.output_tokens}) + "\n" for r in _records())
    )
    vectors = _vectors_file(tmp_path)
    out = tmp_path / "v.onnx"
    assert (
        main(
            [
                "train",
                str(data),
                "--out",
                str(out),
                "--word-vectors",
                str(vectors),
                "--word-vector-weight",
                "1",
            ]
        )
        == 0
    )
    card = out.with_suffix(".md").read_text()
    assert "--word-vectors" in card and "word vectors folded in: vectors.txt" in card
    assert "Word vectors folded in: `vectors.txt`: its license is as its provider states" in card
    assert LexicalPredictor(out).predict(Request("a novel about topic1")).tokens > 0
    capsys.readouterr()
    args = [
        "evaluate",
        str(data),
        "--compare",
        "--methods",
        "lexical,lexical-vectors",
        "--test-fraction",
        "0.3",
    ]
    assert main([*args, "--word-vectors", str(vectors)]) == 0
    assert "lexical-vectors" in capsys.readouterr().out
    assert main(args) == 2
    assert "lexical-vectors needs --word-vectors" in capsys.readouterr().err
    # A missing input file: status 1, as for the data; a bad option value (above): 2.
    assert main(["train", str(data), "--out", str(out), "--word-vectors", str(tmp_path / "none.txt")]) == 1
    assert main([*args, "--word-vectors", str(tmp_path / "none.txt")]) == 1
    assert "sjfsched evaluate: --word-vectors: " in capsys.readouterr().err


def test_evaluate_compares_the_vectors_by_default_when_given_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "mine.jsonl"
    medium = [(f"answer about topic{i} {i}", 400) for i in range(40)]  # Clairvoyant's model needs all three
    rows = [(r.prompt, r.output_tokens) for r in _records()] + medium
    data.write_text("".join(json.dumps({"prompt": p, "output_tokens": t}) + "\n" for p, t in rows))
    vectors = str(_vectors_file(tmp_path))
    args = ["evaluate", str(data), "--compare", "--test-fraction", "0.3", "--word-vectors", vectors]
    assert main(args) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| corpus"))
    assert header.split(" | ")[1:] == [
        "length",
        "clairvoyant-xgb",
        "ridge-ngrams",
        "lexical",
        "lexical-vectors |",
    ]
    assert main(["evaluate", str(data), "--adaptation", "--word-vectors", vectors]) == 2
    assert "--word-vectors is for --adaptation --loco" in capsys.readouterr().err


def test_adaptation_left_out_trains_with_the_vectors(tmp_path: Path) -> None:
    """`evaluate --adaptation --loco --word-vectors`: the model without a corpus knows its words' meaning."""
    from sjfsched.predictors._evaluate import adaptation_report

    # the training corpus asks with some words, the corpus left out with the others only
    records = [
        *_records(160, seed=3, corpus="sharegpt-natural", long_ask=("{} about", _LONG_SEEN),
                  short_ask=("{} about", _SHORT_SEEN)),
        *_records(160, seed=4, corpus="oasst1", long_ask=("{} about", _LONG_UNSEEN),
                  short_ask=("{} about", _SHORT_UNSEEN)),
    ]  # fmt: skip
    vectors = load_word_vectors(_vectors_file(tmp_path))
    reports = {
        name: adaptation_report(
            records, None, loco=True, steps=(10,), min_answers=100, vectors=v, vector_weight=1.0
        )
        for name, v in (("plain", None), ("vectors", vectors))
    }
    alone = {
        name: float(next(line for line in report.splitlines() if line.startswith("oasst1 / m")).split()[5])
        for name, report in reports.items()
    }
    assert alone["vectors"] > 0.85 and alone["plain"] < 0.6, alone
    assert "with word vectors (vectors.txt" in reports["vectors"]
    assert "with word vectors" not in reports["plain"]


def test_the_first_regression_learns_only_the_words_the_prompts_teach(tmp_path: Path) -> None:
    """A vector word in fewer than min_count training prompts gets no weight of its own, only its vector's."""
    records = _records()
    once = "novel"  # a vector word, in one training prompt only
    records.append(
        LengthRecord(f"write a {once} about topic1 999", 1200.0, prompt_id_of(f"{once} 999"), "mine", "m")
    )
    fit = fit_lexical(records, vectors=load_word_vectors(_vectors_file(tmp_path)), vector_weight=1.0)
    f = fit.featurizer
    row = {w: f.word_offset + i for i, w in enumerate(f.unigrams)}
    assert fit.weights[row[once]] == 0.0  # not taught: no weight of its own
    assert fit.weights[row[once] - f.word_offset + f.vector_offset] != 0.0  # its vector's projection
    assert fit.weights[row["essay"]] != 0.0  # taught by many prompts


def test_no_word_vectors_at_all_are_refused() -> None:
    empty = WordVectors([], np.zeros((0, 4)), "empty.txt")
    with pytest.raises(ValueError, match=r"empty\.txt: no word vectors to fold in"):
        fit_lexical(_records(), vectors=empty)


def test_evaluate_adaptation_left_out_hands_the_vectors_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sjfsched.predictors import _evaluate

    seen: list[WordVectors | None] = []

    def report(*args: object, vectors: WordVectors | None = None, **kwargs: object) -> str:
        seen.append(vectors)
        return ""

    monkeypatch.setattr(_evaluate, "adaptation_report", report)
    data = tmp_path / "mine.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": r.prompt, "output_tokens": r.output_tokens}) + "\n" for r in _records())
    )
    vectors = _vectors_file(tmp_path)
    assert main(["evaluate", str(data), "--adaptation", "--loco", "--word-vectors", str(vectors)]) == 0
    assert main(["evaluate", str(data), "--adaptation", "--loco"]) == 0
    assert [None if v is None else v.words[:2] for v in seen] == [["essay", "report"], None]
    assert "trained without word vectors, the bundled model with them" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["nope.json", "nope.txt"])
def test_a_missing_vectors_file_is_named_as_missing(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name}: no such file$"):
        load_word_vectors(tmp_path / name)
    with pytest.raises(ValueError, match="a directory, not a word vectors file"):
        load_word_vectors(tmp_path)
