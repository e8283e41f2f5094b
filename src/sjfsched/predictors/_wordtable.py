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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, overload

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
_SLOT_BITS: Final = 16


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
    )

    def __init__(
        self,
        hashes: npt.NDArray[np.uint64],
        rows: npt.NDArray[np.int32],
        lengths: npt.NDArray[np.int64],
        chunks: npt.NDArray[np.uint64],
        slot1: npt.NDArray[np.int64],
        slot2: npt.NDArray[np.int64],
        mults: npt.NDArray[np.uint64],
    ) -> None:
        self._hashes, self._rows, self._lengths, self._chunks = hashes, rows, lengths, chunks
        self._first = np.ascontiguousarray(chunks[:, 0])
        self._slot1, self._slot2, self._mults = slot1, slot2, mults
        self._nchunks = chunks.shape[1]

    @classmethod
    def build(cls, vocabulary: Mapping[bytes, int]) -> WordTable | None:
        """The table of ``vocabulary`` (word -> row), or ``None`` where it cannot be built.

        ``None`` when a word is empty, holds a space or is longer than
        :data:`MAX_WORD_BYTES`, when two words share a hash, or when the
        cuckoo placement fails: the caller keeps using the dict.
        """
        words = list(vocabulary)
        if not words or any(not w or b" " in w or len(w) > MAX_WORD_BYTES for w in words):
            return None
        nchunks = max(1, -(-max(map(len, words)) // 8))
        mults = _chunk_mults(nchunks)
        chunk_rows = []
        hashes = []
        for w in words:
            padded = w.ljust(8 * nchunks, b"\0")
            chunk_row = [int.from_bytes(padded[8 * j : 8 * j + 8], "little") for j in range(nchunks)]
            chunk_rows.append(chunk_row)
            hashes.append(_hash(len(w), chunk_row, mults))
        if len(set(hashes)) != len(hashes):
            return None
        size = 1 << _SLOT_BITS
        empty = len(words)  # the sentinel row: length -1, never matched
        table = [[empty] * size, [empty] * size]
        for index in range(len(words)):
            if not _place(table, hashes, index, empty):
                return None
        return cls(
            np.array([*hashes, 0], np.uint64),
            np.array([*(vocabulary[w] for w in words), 0], np.int32),
            np.array([*map(len, words), -1], np.int64),
            np.array([*chunk_rows, [0] * nchunks], np.uint64),
            np.array(table[0], np.int64),
            np.array(table[1], np.int64),
            np.array(mults, np.uint64),
        )

    def lookup(self, joined: bytes) -> tuple[npt.NDArray[np.int32], WordSpans]:
        """The row of each word of ``joined`` (0 if none), in order, and the words themselves.

        ``joined`` holds words (bytes other than a space) separated by
        spaces, as ``bytes.split()`` of it would find them given that no
        other whitespace byte occurs.
        """
        n = len(joined)
        nchunks = self._nchunks
        buf = np.frombuffer(joined + bytes(8 * nchunks + 8), np.uint8)
        is_word = buf[:n] != _SPACE
        edges = np.flatnonzero(is_word[1:] != is_word[:-1]) + 1
        if n and is_word[0]:
            edges = np.concatenate([np.zeros(1, np.int64), edges])
        if n and is_word[-1]:
            edges = np.concatenate([edges, np.full(1, n, np.int64)])
        starts, ends = edges[0::2], edges[1::2]
        spans = WordSpans(joined, starts, ends)
        if not len(starts):
            return np.zeros(0, np.int32), spans
        lengths = ends - starts
        grams = np.ndarray((n + 8 * nchunks + 1,), _LE_U64, buf, 0, _ONE_BYTE)  # 8 bytes at every offset
        first = grams[starts] & _masks(lengths)
        mults = self._mults
        h = lengths.astype(np.uint64) * np.uint64(_LENGTH_MULT)
        h ^= first * mults[0]
        longer: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64]]] = []
        which = np.flatnonzero(lengths > 8)
        for j in range(1, nchunks):
            which = which[lengths[which] > 8 * j]
            if not len(which):
                break
            chunk = grams[starts[which] + 8 * j] & _masks(lengths[which] - 8 * j)
            h[which] ^= chunk * mults[j]
            longer.append((which, chunk))
        h = _mix(h)
        slot = (h >> np.uint64(64 - _SLOT_BITS)).astype(np.int64)
        index = self._slot1[slot]
        other = self._slot2[(h & np.uint64((1 << _SLOT_BITS) - 1)).astype(np.int64)]
        index = np.where(self._hashes[index] == h, index, other)
        found = (self._hashes[index] == h) & (self._lengths[index] == lengths) & (self._first[index] == first)
        for j, (which, chunk) in enumerate(longer, 1):
            found[which] &= self._chunks[index[which], j] == chunk
        return np.where(found, self._rows[index], 0).astype(np.int32, copy=False), spans


def _masks(lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """The mask of each word's bytes within an 8-byte chunk (all 8 from a length of 8 on)."""
    return _BYTE_MASKS[np.minimum(lengths, 8)]


_BYTE_MASKS: Final = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [_MASK64], np.uint64)


def _hash(length: int, chunks: Sequence[int], mults: Sequence[int]) -> int:
    """What :meth:`WordTable.lookup` computes for a word, in Python (for building)."""
    h = length * _LENGTH_MULT & _MASK64
    for chunk, mult in zip(chunks, mults, strict=False):
        if chunk:
            h ^= chunk * mult & _MASK64
    h ^= h >> 29
    h = h * _MIX & _MASK64
    return h ^ (h >> 32)


def _mix(h: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    h ^= h >> np.uint64(29)
    h *= np.uint64(_MIX)
    h ^= h >> np.uint64(32)
    return h


def _place(table: list[list[int]], hashes: list[int], index: int, empty: int, kicks: int = 500) -> bool:
    """Cuckoo insertion of vocabulary word ``index``: its slot in either table, evicting as needed."""
    size_bits = _SLOT_BITS
    for k in range(kicks):
        h = hashes[index]
        side = k % 2
        slot = h >> (64 - size_bits) if side == 0 else h & ((1 << size_bits) - 1)
        index, table[side][slot] = table[side][slot], index
        if index == empty:
            return True
    return False
