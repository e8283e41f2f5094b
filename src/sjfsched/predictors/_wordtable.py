"""The vocabulary as numpy arrays: a batch's words looked up without a Python loop.

:meth:`LexicalFeaturizer.encode_batch` splits the joined words of a whole
batch and looks each up in a dict: about a hundred nanoseconds a word, most
of a batch's encoding.  :class:`WordTable` does the same on the joined bytes
with numpy: it finds the words (runs of bytes other than a space), reads each
as 8-byte chunks through an overlapping view of the buffer, hashes the chunks
and its length, finds the slot of that hash in a two-table cuckoo hash of the
vocabulary, and then compares the word's length and every chunk with the
vocabulary word in that slot: a word is found only if its bytes are the
vocabulary word's, so the result is the dict's exactly (hash collisions
cannot give a wrong row, only cost a comparison).

The tables are sized by the vocabulary (each at least four slots per word)
and built on the first batch; vocabularies the table cannot hold (a word
with a space, an empty word, a word over :data:`MAX_WORD_BYTES`, two words
with one hash) keep the dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, overload

import numpy as np
import numpy.typing as npt

__all__ = ["WordTable", "WordSpans"]

_SPACE: Final = 0x20
_LE_U64: Final = np.dtype("<u8")
_ONE_BYTE: Final = (1,)
_MASK64: Final = (1 << 64) - 1
#: A vocabulary word longer than this many bytes: no table (the dict is used).
MAX_WORD_BYTES: Final = 256
_LENGTH_MULT: Final = 0x9E3779B97F4A7C15
_MIX: Final = 0xBF58476D1CE4E5B9


def _chunk_mults(n: int) -> list[int]:
    """An odd 64-bit multiplier per chunk position (splitmix64 of the position)."""
    out = []
    for j in range(n):
        z = (j + 1) * 0x9E3779B97F4A7C15 & _MASK64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
        out.append((z ^ (z >> 31)) | 1)
    return out


class WordSpans(Sequence[bytes]):
    """The words of a joined buffer, read on demand (only a few are ever read)."""

    __slots__ = ("_ends", "_joined", "_starts")

    def __init__(self, joined: bytes, starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64]) -> None:
        self._joined = joined
        self._starts = starts
        self._ends = ends

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return self._joined[int(self._starts[i]) : int(self._ends[i])]


class WordTable:
    """The rows of the vocabulary's words, found for all the words of a buffer at once."""

    __slots__ = (
        "_chunks",
        "_first",
        "_hashes",
        "_lengths",
        "_mults",
        "_nchunks",
        "_rows",
        "_slot1",
        "_slot2",
        "_slot_bits",
    )

    def __init__(
        self,
        hashes: npt.NDArray[np.uint64],
        rows: npt.NDArray[np.int32],
        lengths: npt.NDArray[np.int64],
        chunks: npt.NDArray[np.uint64],
        slots: tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]],
        mults: npt.NDArray[np.uint64],
    ) -> None:
        self._hashes, self._rows, self._lengths, self._chunks = hashes, rows, lengths, chunks
        self._first = np.ascontiguousarray(chunks[:, 0])
        self._slot1, self._slot2 = slots
        self._slot_bits = len(self._slot1).bit_length() - 1
        self._mults = mults
        self._nchunks = chunks.shape[1]

    @property
    def nbytes(self) -> int:
        """The memory its arrays hold."""
        arrays = (self._hashes, self._rows, self._lengths, self._chunks, self._first, self._mults)
        return sum(a.nbytes for a in arrays) + self._slot1.nbytes + self._slot2.nbytes

    @classmethod
    def build(cls, vocabulary: Mapping[bytes, int]) -> WordTable | None:
        """The table of ``vocabulary`` (word -> row), or ``None`` where it cannot be built.

        ``None`` when a word is empty, holds a space or is longer than
        :data:`MAX_WORD_BYTES`, or when two words share a hash: the caller
        keeps using the dict.  Each of the two tables has at least four
        slots per word, so the cuckoo placement all but never fails; where
        it does, the tables are doubled and it is tried again.
        """
        words = list(vocabulary)
        if not words or any(not w or b" " in w or len(w) > MAX_WORD_BYTES for w in words):
            return None
        nchunks = max(1, -(-max(map(len, words)) // 8))
        mults = np.array(_chunk_mults(nchunks), np.uint64)
        # The words hashed exactly as lookup() hashes a buffer's words.
        hashes, _, lengths, (first, rest) = _hash_words(b" ".join(words), nchunks, mults)
        if len(np.unique(hashes)) != len(words):
            return None
        hash_list = hashes.tolist()
        bits = max(_MIN_SLOT_BITS, (4 * len(words) - 1).bit_length())
        for _ in range(3):
            placed = _place_all(hash_list, bits)
            if placed is not None:
                break
            bits += 1
        else:
            return None
        # Row len(words), the empty slots' index, is a sentinel: length -1, never matched.
        return cls(
            np.append(hashes, np.uint64(0)),
            np.array([*(vocabulary[w] for w in words), 0], np.int32),
            np.append(lengths, -1),
            _chunk_matrix(first, rest, nchunks),
            (np.array(placed[0], np.int32), np.array(placed[1], np.int32)),
            mults,
        )

    def lookup(self, joined: bytes) -> tuple[npt.NDArray[np.int32], WordSpans]:
        """The row of each word of ``joined`` (0 if none), in order, and the words themselves.

        ``joined`` holds words (bytes other than a space) separated by
        spaces, as ``bytes.split()`` of it would find them given that no
        other whitespace byte occurs.
        """
        h, (starts, ends), lengths, longer = _hash_words(joined, self._nchunks, self._mults)
        spans = WordSpans(joined, starts, ends)
        if not len(h):
            return np.zeros(0, np.int32), spans
        bits = self._slot_bits
        index = self._slot1[(h >> np.uint64(64 - bits)).astype(np.intp)]
        other = self._slot2[(h & np.uint64((1 << bits) - 1)).astype(np.intp)]
        index = np.where(self._hashes[index] == h, index, other)
        found = (self._hashes[index] == h) & (self._lengths[index] == lengths)
        first, rest = longer
        found &= self._first[index] == first
        for j, (which, chunk) in enumerate(rest, 1):
            found[which] &= self._chunks[index[which], j] == chunk
        return np.where(found, self._rows[index], 0).astype(np.int32, copy=False), spans


_MIN_SLOT_BITS: Final = 10
_Chunks = tuple[npt.NDArray[np.uint64], list[tuple[npt.NDArray[np.intp], npt.NDArray[np.uint64]]]]


def _hash_words(
    joined: bytes, nchunks: int, mults: npt.NDArray[np.uint64]
) -> tuple[npt.NDArray[np.uint64], tuple[Any, Any], npt.NDArray[np.int64], _Chunks]:
    """The hash of each word of ``joined``, where the words are, their lengths, and their chunks.

    A word is read as 8-byte little-endian chunks (bytes past its end are
    0) through an overlapping view of the buffer; its hash mixes its length
    and its first ``nchunks`` chunks.  The chunks come back as the first
    chunk of every word and, for each later chunk, the words that reach it
    and its value.
    """
    n = len(joined)
    buf = np.frombuffer(joined + bytes(8 * nchunks + 8), np.uint8)
    is_word = buf[:n] != _SPACE
    edges = np.flatnonzero(is_word[1:] != is_word[:-1]) + 1
    if n and is_word[0]:
        edges = np.concatenate([np.zeros(1, np.intp), edges])
    if n and is_word[-1]:
        edges = np.concatenate([edges, np.full(1, n, np.intp)])
    starts, ends = edges[0::2], edges[1::2]
    lengths = (ends - starts).astype(np.int64)
    grams = np.ndarray((n + 8 * nchunks + 1,), _LE_U64, buf, 0, _ONE_BYTE)  # 8 bytes at every offset
    first = grams[starts] & _masks(lengths)
    h = lengths.astype(np.uint64) * np.uint64(_LENGTH_MULT)
    h ^= first * mults[0]
    rest: list[tuple[npt.NDArray[np.intp], npt.NDArray[np.uint64]]] = []
    which = np.flatnonzero(lengths > 8)
    for j in range(1, nchunks):
        which = which[lengths[which] > 8 * j]
        if not len(which):
            break
        chunk = grams[starts[which] + 8 * j] & _masks(lengths[which] - 8 * j)
        h[which] ^= chunk * mults[j]
        rest.append((which, chunk))
    h ^= h >> np.uint64(29)
    h *= np.uint64(_MIX)
    h ^= h >> np.uint64(32)
    return h, (starts, ends), lengths, (first, rest)


def _chunk_matrix(
    first: npt.NDArray[np.uint64],
    rest: list[tuple[npt.NDArray[np.intp], npt.NDArray[np.uint64]]],
    nchunks: int,
) -> npt.NDArray[np.uint64]:
    """Every word's chunks as rows (0 past its end), and a last row of zeros for the sentinel."""
    matrix = np.zeros((len(first) + 1, nchunks), np.uint64)
    matrix[:-1, 0] = first
    for j, (which, chunk) in enumerate(rest, 1):
        matrix[which, j] = chunk
    return matrix


def _masks(lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """The mask of each word's bytes within an 8-byte chunk (all 8 from a length of 8 on)."""
    return _BYTE_MASKS[np.minimum(lengths, 8)]


_BYTE_MASKS: Final = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [_MASK64], np.uint64)


def _place_all(hashes: list[int], bits: int, kicks: int = 500) -> tuple[list[int], list[int]] | None:
    """Two cuckoo tables of ``2**bits`` slots holding every word (by index), or ``None``.

    A word's slot is the top ``bits`` bits of its hash in the first table,
    the bottom ``bits`` in the second; an empty slot holds ``len(hashes)``.
    """
    empty = len(hashes)
    size = 1 << bits
    tables = ([empty] * size, [empty] * size)
    low = size - 1
    for start in range(len(hashes)):
        index = start
        for k in range(kicks):
            h = hashes[index]
            side = k % 2  # a word evicted from one table goes to its slot in the other
            slot = h >> (64 - bits) if side == 0 else h & low
            table = tables[side]
            index, table[slot] = table[slot], index
            if index == empty:
                break
        else:
            return None
    return tables
