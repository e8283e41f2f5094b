"""WordTable: a batch's words found in numpy give exactly what the vocabulary dict gives."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sjfsched.predictors import LexicalPredictor
from sjfsched.predictors._features import _SEPARATOR, _TO_SPACE, LexicalFeaturizer
from sjfsched.predictors._lexical import bundled_model_path
from sjfsched.predictors._wordtable import MAX_WORD_BYTES, WordTable

_WORD_BYTE = st.sampled_from([*b"abcxyz019_", 0xC3, 0xA9, 0xE6, 0x97, 0xA5, 0xFF])
_WORD = st.lists(_WORD_BYTE, min_size=1, max_size=40).map(bytes)


def _dict_rows(vocabulary: dict[bytes, int], spaced: bytes) -> list[int]:
    return [vocabulary.get(w, 0) for w in spaced.split()]


@given(
    st.lists(_WORD, min_size=1, max_size=60, unique=True),
    st.lists(st.one_of(_WORD, st.sampled_from([b" ", b"   "])), max_size=80),
    st.data(),
)
@settings(max_examples=200, deadline=None)
def test_lookup_is_the_dicts(words: list[bytes], pieces: list[bytes], data: st.DataObject) -> None:
    vocabulary = {w: data.draw(st.integers(-1, 2**31 - 1)) for w in words}
    table = WordTable.build(vocabulary)
    assert table is not None
    # texts of vocabulary words, other words, words that are a vocabulary word's prefix or extension
    extra = [w + b"a" for w in words[:5]] + [w[:-1] for w in words[:5] if len(w) > 1]
    spaced = b" ".join([*pieces, *data.draw(st.permutations(words + extra)), *pieces])
    rows, found = table.lookup(spaced)
    assert rows.dtype == np.int32
    assert rows.tolist() == _dict_rows(vocabulary, spaced)
    assert list(found) == spaced.split()


def test_every_word_of_the_bundled_vocabulary_is_found() -> None:
    """11,000 words in 2 x 65,536 slots: many share a first slot, so the second table is exercised."""
    features = LexicalPredictor(calibrate=False)._features
    vocabulary = features._unigram
    table = WordTable.build(vocabulary)
    assert table is not None
    spaced = b" ".join(vocabulary)
    rows, _ = table.lookup(spaced)
    assert rows.tolist() == list(vocabulary.values())
    assert (table._slot2 < len(vocabulary)).any()  # some words live in the second table


def test_edges_of_the_buffer() -> None:
    table = WordTable.build({b"a": 5, b"bc": 7, b"x" * 70: 9})
    assert table is not None
    for spaced in [
        b"",
        b" ",
        b"a",
        b"a ",
        b" a",
        b"bc a",
        b"x" * 70,
        b"x" * 71,
        b"x" * 69,
        b"ab c",
        b"a" * 9,
    ]:
        rows, found = table.lookup(spaced)
        assert rows.tolist() == _dict_rows({b"a": 5, b"bc": 7, b"x" * 70: 9}, spaced), spaced
        assert list(found) == spaced.split()
        assert list(found[1:]) == spaced.split()[1:]


@pytest.mark.parametrize("word", [b"", b"two words", b"x" * (MAX_WORD_BYTES + 1)])
def test_a_vocabulary_it_cannot_hold_gives_none(word: bytes) -> None:
    assert WordTable.build({b"fine": 3, word: 4}) is None
    assert WordTable.build({}) is None


def test_encode_batch_with_and_without_the_table_agree() -> None:
    """The bundled vocabulary takes the table; the dict path (as before it) gives the same rows."""
    features = LexicalPredictor(calibrate=False)._features
    prompts = [
        json.loads(line)["prompt"]
        for line in (bundled_model_path().parent / "demo_trace.jsonl").read_text().splitlines()
    ]
    texts = [*prompts, "", "write 500 words", "1,000 words", "日本語" * 300, "x" * 100_000, "\udcff"]
    with_table = features.encode_batch(texts)
    assert isinstance(features._word_table, WordTable)
    dict_only = LexicalFeaturizer(
        features.unigrams, features.bigrams, features.byte_bits, features.vector_rows
    )
    dict_only._word_table = False
    without = dict_only.encode_batch(texts)
    for name in ("ids", "byte_counts", "word_counts", "signal_texts", "vector_counts"):
        assert np.array_equal(getattr(with_table, name), getattr(without, name)), name
    assert _SEPARATOR.translate(_TO_SPACE).split() == [b"\xff"]  # the separator is one word, never a text's


def test_vocabularies_with_pairs_keep_the_dict() -> None:
    pairs = LexicalFeaturizer.learn(
        ["write 500 words", "write 10 examples"], byte_bits=12, min_count=1, max_bigrams=5
    )
    assert pairs.bigrams
    pairs.encode_batch(["write 500 words"])
    assert pairs._word_table is False


def test_words_whose_hash_collides_are_told_apart_by_their_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a hash of the length alone, every word of a vocabulary word's length collides with it."""
    from sjfsched.predictors import _wordtable

    monkeypatch.setattr(_wordtable, "_chunk_mults", lambda n: [0] * n)
    vocabulary = {b"ab": 1, b"x" * 12: 2}
    table = WordTable.build(vocabulary)
    assert table is not None
    spaced = b"cd ab " + b"y" * 12 + b" " + b"x" * 12 + b" " + b"x" * 8 + b"yyyy"
    rows, _ = table.lookup(spaced)
    assert rows.tolist() == [0, 1, 0, 2, 0] == _dict_rows(vocabulary, spaced)


def test_a_large_vocabulary_gets_tables_large_enough() -> None:
    """Tables of 2 x 65,536 slots could not hold 70,000 words: they are sized by the vocabulary."""
    vocabulary = {f"w{i}x".encode(): i + 5 for i in range(70_000)}
    table = WordTable.build(vocabulary)
    assert table is not None
    rows, _ = table.lookup(b" ".join(vocabulary))
    assert rows.tolist() == list(vocabulary.values())


def test_a_featurizer_from_before_the_table_builds_one() -> None:
    """One unpickled from an older version has no _word_table slot set."""
    features = LexicalFeaturizer.learn(["write 500 words", "10 examples please"], byte_bits=12, min_count=1)
    del features._word_table
    batch = features.encode_batch(["write 500 words", "ten examples"])
    assert isinstance(features._word_table, WordTable)
    assert batch.word_counts.tolist() == [3, 1]
