"""The lexical features of a prompt: byte 4-grams, words, word pairs, three signals.

Everything here is plain Python and numpy and costs a few microseconds per
prompt, whatever its size:

- Only a bounded part of the text is read: the first :data:`HEAD_CHARS` and
  the last :data:`TAIL_CHARS` characters (a pasted document's instruction is
  usually at one end).
- **Byte 4-grams** of the lowercased UTF-8 text, framed by ``0xFF`` bytes
  (which never occur in UTF-8) so the start and end of the prompt are seen
  (a final ``?``, a leading ``write``).  A 4-gram is read as one
  little-endian ``uint32`` through an overlapping numpy view and hashed
  multiplicatively into ``2**byte_bits`` buckets.  They are
  language-neutral: a Chinese character is three bytes, so 4-grams see
  characters and their neighbours; emoji, code and markup get their own.
- **Words** (``\\w+``) and **pairs of adjacent words**, looked up in a
  vocabulary learnt at training time (words unseen in training would carry
  no weight, so nothing is lost by not hashing them).
- **Signals**: the number of lines and of code punctuation marks
  (``( { = ;``), in octaves, and a requested quantity (``"500 words"``,
  ``"10 examples"``, ``"a 3-paragraph essay"``), binned by unit and size.
  The prompt's length in characters is deliberately not one: across corpora
  it points both ways (pasted documents get short summaries, pasted problems
  long solutions), and in leave-one-corpus-out trials it lowered the
  accuracy on held-out corpora.

:class:`LexicalFeaturizer` turns a text into the rows of a weight table and
their values; the ONNX model gathers, multiplies, sums and adds a bias.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs
import numpy as np
import numpy.typing as npt

from ._wordtable import WordTable

__all__ = [
    "FEATURE_VERSION",
    "HEAD_CHARS",
    "SIGNALS",
    "TAIL_CHARS",
    "LexicalFeaturizer",
    "clip_text",
]

#: Bumped whenever the features change meaning; stored in every model file.
FEATURE_VERSION: Final = 1
HEAD_CHARS: Final = 512
TAIL_CHARS: Final = 256

#: Knuth's multiplicative hash.  Numbers given to numpy as 0-d arrays, and
#: arguments by position: on the per-prompt path numpy parses each call's
#: arguments, and these are the quickest to parse (a numpy scalar costs
#: about half as much again per call).
_HASH_MULT: Final = np.array(0x9E3779B1, np.uint32)
_I32: Final = np.dtype(np.int32)
_U32: Final = np.dtype(np.uint32)
_F32: Final = np.dtype(np.float32)
_LE_U32: Final = np.dtype("<u4")
_ONE_BYTE: Final = (1,)
_FRAME: Final = b"\xff"
_NO_IDS: Final[npt.NDArray[np.int32]] = np.zeros(0, dtype=np.int32)
#: Bytes that belong to words: ASCII letters, digits, ``_``, and every byte of
#: a multi-byte UTF-8 character; the rest become spaces before splitting.
_WORD_BYTES: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_") | frozenset(range(128, 256))
_TO_SPACE: Final = bytes(c if c in _WORD_BYTES else 0x20 for c in range(256))
_UNITS: Final = (
    *("word", "sentence", "paragraph", "line", "page", "chapter", "section", "verse", "stanza", "slide"),
    *("minute", "character", "char", "token", "example", "item", "point", "bullet", "step", "question"),
    *("idea", "name", "tip", "option", "way", "reason", "fact", "title", "sample", "test", "variation"),
    *("version", "list"),
)
_UNIT_WORDS: Final = frozenset(u.encode() + s for u in _UNITS for s in (b"", b"s"))
_NOT_DIGITS: Final = bytes(c for c in range(256) if not 0x30 <= c <= 0x39)
_UNIT_GROUP: Final = {
    **dict.fromkeys((b"word", b"token"), "w"),
    **dict.fromkeys((b"character", b"char"), "c"),
    **dict.fromkeys((b"sentence", b"line", b"verse", b"stanza"), "s"),
    **dict.fromkeys((b"paragraph", b"page", b"chapter", b"section", b"slide", b"minute"), "p"),
}
_UNIT_GROUP.update({u + b"s": g for u, g in list(_UNIT_GROUP.items())})


_CLIP_AT: Final = HEAD_CHARS + TAIL_CHARS
_FRAMES: Final = _FRAME + _FRAME
#: Between the texts of a batch when their words are split together: 0xFF
#: never occurs in UTF-8, so no text has this word; it maps to row -1.
_SEPARATOR: Final = b" \xff "
_SEPARATOR_WORD: Final = b"\xff"
_SEPARATOR_ROW: Final = -1
_CODE_MARKS: Final = b"({=;"
_IS_CODE_MARK: Final = np.zeros(256, bool)
_IS_CODE_MARK[list(_CODE_MARKS)] = True


def clip_text(text: str) -> str:
    """The bounded part of ``text`` the features read: head and tail."""
    if len(text) <= _CLIP_AT:
        return text
    return text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]


#: The signals, in table order: newline count and code punctuation count
#: (octaves: 0, 1, 2-3, 4-7, ...) and a requested quantity (unit group x
#: octave of the number).
SIGNALS: Final = (
    *(f"newlines{k}" for k in range(11)),
    *(f"code{k}" for k in range(11)),
    *(f"quantity-{g}{k}" for g in "wcspn" for k in range(21)),
)
_SIGNAL_INDEX: Final = {name: i for i, name in enumerate(SIGNALS)}
_QTY_BASE: Final = {g: _SIGNAL_INDEX[f"quantity-{g}0"] for g in "wcspn"}
_CODE_BASE: Final = _SIGNAL_INDEX["code0"]


@attrs.frozen
class EncodedBatch:
    """Many texts encoded: four blocks of rows (4-grams, words and pairs, word vectors, signals).

    In the 4-gram, word and word-vector blocks each text's rows are
    contiguous, in text order, and share one value (``byte_scale``,
    ``word_scale``, ``vector_scale``), so a caller can sum the plain weights
    of each run at once and scale the sums: cheaper than a value per row.
    The signals (value 1) follow, with the text of each in ``signal_texts``.
    """

    ids: npt.NDArray[np.int32]
    #: per text: how many rows of the 4-gram block, of the word block are its
    byte_counts: npt.NDArray[np.int64]
    word_counts: npt.NDArray[np.int64]
    #: per row of the signal block: the text it belongs to
    signal_texts: npt.NDArray[np.int64]
    #: per text: how many rows of the word-vector block are its
    vector_counts: npt.NDArray[np.int64]

    @property
    def byte_scale(self) -> npt.NDArray[np.float64]:
        return 1.0 / np.sqrt(np.maximum(self.byte_counts, 1))

    @property
    def word_scale(self) -> npt.NDArray[np.float64]:
        return 1.0 / np.sqrt(np.maximum(self.word_counts, 1))

    @property
    def vector_scale(self) -> npt.NDArray[np.float64]:
        return 1.0 / np.maximum(self.vector_counts, 1)

    @property
    def texts(self) -> npt.NDArray[np.int64]:
        """Per row: the text it belongs to."""
        index = np.arange(len(self.byte_counts))
        return np.concatenate(
            [
                np.repeat(index, self.byte_counts),
                np.repeat(index, self.word_counts),
                np.repeat(index, self.vector_counts),
                self.signal_texts,
            ]
        )

    @property
    def values(self) -> npt.NDArray[np.float32]:
        """Each row's value, as :meth:`LexicalFeaturizer.encode` gives them."""
        return np.concatenate(
            [
                np.repeat(self.byte_scale.astype(np.float32), self.byte_counts),
                np.repeat(self.word_scale.astype(np.float32), self.word_counts),
                np.repeat(self.vector_scale.astype(np.float32), self.vector_counts),
                np.ones(len(self.signal_texts), np.float32),
            ]
        )

    def totals(self, weights: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        """Per text: the sum of ``weights`` (one per row) times the rows' values.

        A text's 4-grams, its words and its word-vector rows are three contiguous
        runs: the runs tile the start of ``weights``, so one ``add.reduceat``
        over the starts of the runs that have rows sums them all; each sum is
        then scaled.  The few signals are counted with their texts.
        """
        n = len(self.byte_counts)
        counts = np.concatenate([self.byte_counts, self.word_counts, self.vector_counts])
        starts = np.zeros(len(counts), np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        end = int(starts[-1] + counts[-1]) if n else 0
        sums = np.zeros(len(counts))
        has_rows = counts > 0
        if end:
            sums[has_rows] = np.add.reduceat(weights[:end], starts[has_rows], dtype=np.float64)
        out: npt.NDArray[np.float64] = (
            sums[:n] * self.byte_scale
            + sums[n : 2 * n] * self.word_scale
            + sums[2 * n :] * self.vector_scale
            + np.bincount(self.signal_texts, weights=weights[end:], minlength=n)
        )
        return out


def _code(raw: bytes) -> int:
    marks = len(raw) - len(raw.translate(None, _CODE_MARKS))  # one pass, not four counts
    return _CODE_BASE + min(marks.bit_length(), 10)


def _quantity(raw: bytes, words: list[bytes]) -> int:
    """Index into :data:`SIGNALS` of the first requested quantity ("500 words"), or -1.

    A quantity is a number followed by a unit word ("10 examples", "a
    500-word essay", "1,000 words").  Looked up word by word only when the
    text has a digit and a unit word (both checks in C).
    """
    if not raw.translate(None, _NOT_DIGITS):
        return -1
    units = _UNIT_WORDS.intersection(words)
    if not units:
        return -1
    best = -1
    for unit in units:
        i = words.index(unit)
        while True:
            if i > 0 and words[i - 1].isdigit() and (best < 0 or i < best):
                best = i
                break
            try:
                i = words.index(unit, i + 1)
            except ValueError:
                break
    return -1 if best < 0 else _quantity_at(words, best)


def _quantity_at(words: Sequence[bytes], i: int) -> int:
    """Index into :data:`SIGNALS` of the quantity whose unit is ``words[i]``, a number before it."""
    n = int(words[i - 1])
    if i > 1 and len(words[i - 1]) == 3 and words[i - 2].isdigit():  # 1,000 words
        n += 1000 * int(words[i - 2])
    return _QTY_BASE[_UNIT_GROUP.get(words[i], "n")] + min(n.bit_length(), 20)


def _quantities(
    words: Sequence[bytes], units: list[int], word_texts: npt.NDArray[np.int64]
) -> dict[int, int]:
    """:func:`_quantity` of every text of a batch: text -> index into :data:`SIGNALS`.

    ``words`` are the words of all texts, ``units`` the positions of the unit
    words among them (ascending), ``word_texts`` the text of each word.
    Texts that ask for no quantity are left out.
    """
    found: dict[int, int] = {}
    for i in units:
        if i > 0 and words[i - 1].isdigit():
            text = int(word_texts[i])
            if text not in found:  # the first quantity of the text
                found[text] = _quantity_at(words, i)
    return found


def _octave(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``int.bit_length`` of each count (0, 1, 2-3, 4-7, ... -> 0, 1, 2, 3, ...)."""
    return np.frexp(counts.astype(np.float64))[1].astype(np.int64)


def _signals(raw: bytes, words: list[bytes]) -> list[int]:
    """Indices into :data:`SIGNALS` of the text's line count and requested quantity."""
    quantity = _quantity(raw, words)
    if quantity < 0:
        return [min(raw.count(b"\n").bit_length(), 10), _code(raw)]
    return [min(raw.count(b"\n").bit_length(), 10), _code(raw), quantity]


def _prompt_parts(text: str) -> tuple[bytes, list[bytes], list[int]]:
    """The clipped lowercased text as UTF-8, its words, and its signals."""
    raw = clip_text(text).lower().encode("utf-8", "replace")
    words = raw.translate(_TO_SPACE).split()
    return raw, words, _signals(raw, words)


class LexicalFeaturizer:
    """Text -> the rows of the model's weight table it activates, and their values.

    The weight table has, in order: ``2**byte_bits`` byte 4-gram buckets; the
    vocabulary's ``unigrams``; its ``bigrams`` (adjacent word pairs, each a
    pair of indices into ``unigrams``); the fixed :data:`SIGNALS`; with
    ``vector_rows``, a second row per unigram.  A text's score is ``bias +
    sum(weight[row] * value)`` where each byte 4-gram has value
    ``1/sqrt(#4-grams)``, each known word or pair ``1/sqrt(#words and
    pairs)``, each signal 1, and each known word's second row ``1/#words``:
    those weights are averaged (a model trained with word vectors gives each
    the projection of the word's vector, see ``fit_lexical``).  The second
    row is the word's row shifted by a constant, so a word is looked up once.
    """

    __slots__ = (
        "_bigram",
        "_shift",
        "_signal_offset",
        "_unigram",
        "_unit_rows",
        "_vector_delta",
        "_word_table",
        "bigrams",
        "byte_bits",
        "unigrams",
        "vector_rows",
    )

    def __init__(
        self,
        unigrams: Sequence[str],
        bigrams: Sequence[tuple[int, int]],
        byte_bits: int,
        vector_rows: bool = False,
    ) -> None:
        if not 8 <= byte_bits <= 24:
            raise ValueError(f"byte_bits must be within [8, 24], got {byte_bits}")
        self.unigrams = [str(w) for w in unigrams]
        words = [w.encode("utf-8", "surrogatepass") for w in self.unigrams]
        self.bigrams = [(int(a), int(b)) for a, b in bigrams]
        self.byte_bits = byte_bits
        self._shift = np.array(32 - byte_bits, np.uint32)
        n = len(self.unigrams)
        for i, j in self.bigrams:
            if not (0 <= i < n and 0 <= j < n):
                raise ValueError(f"bigram ({i}, {j}) refers to no unigram (there are {n})")
        # Rows start past the byte buckets, so none is 0 (see word_ids).
        off = 1 << byte_bits
        self._unigram = {w: off + i for i, w in enumerate(words)}
        self._unigram[_SEPARATOR_WORD] = _SEPARATOR_ROW  # only ever in batches: see encode_batch
        self._bigram = {(words[i], words[j]): off + n + k for k, (i, j) in enumerate(self.bigrams)}
        self._signal_offset = off + n + len(self.bigrams)
        self.vector_rows = bool(vector_rows)
        #: a unigram's row plus this is its word-vector row
        self._vector_delta = np.array(self.vector_offset - off, np.int32)
        #: which rows are unit words ("words", "examples"), when all of them have one
        self._unit_rows: npt.NDArray[np.bool_] | None = None
        if all(u in self._unigram for u in _UNIT_WORDS):
            self._unit_rows = np.zeros(self.table_size, bool)
            self._unit_rows[[self._unigram[u] for u in _UNIT_WORDS]] = True
        #: the vocabulary as numpy arrays for encode_batch, built at its first call
        #: (None: not built yet, False: this vocabulary uses the dict)
        self._word_table: WordTable | bool | None = None

    @property
    def word_offset(self) -> int:
        """The first row of the unigrams (the table's second block)."""
        return 1 << self.byte_bits

    @property
    def vector_offset(self) -> int:
        """The first of the unigrams' word-vector rows (the table's last block), or the table's size."""
        return self._signal_offset + len(SIGNALS)

    @property
    def table_size(self) -> int:
        """Rows of the model's weight table."""
        return self.vector_offset + (len(self.unigrams) if self.vector_rows else 0)

    # ------------------------------------------------------------- training

    @classmethod
    def learn(
        cls,
        texts: Iterable[str],
        *,
        byte_bits: int = 18,
        min_count: int = 2,
        max_unigrams: int = 60_000,
        max_bigrams: int = 0,
        vector_words: Iterable[str] = (),
    ) -> LexicalFeaturizer:
        """Build the vocabulary from training prompts.

        A word or a pair is kept when at least ``min_count`` prompts contain
        it; the most frequent are kept when there are more than the caps.
        With ``vector_words`` (the words of a model's word vectors), those
        words join the vocabulary as well, and every word gets a word-vector
        row.
        """
        word_lists = [_prompt_parts(t)[1] for t in texts]
        df: Counter[bytes] = Counter()
        for words in word_lists:
            df.update(set(words))
        # The unit words of requested quantities always get a row (encode_batch finds them by it).
        unigrams = sorted({w for w, c in df.most_common(max_unigrams) if c >= min_count} | _UNIT_WORDS)
        extra = {w.encode("utf-8", "surrogatepass") for w in vector_words}
        if extra:  # the pairs stay those of the learnt words
            learnt = set(unigrams)
            unigrams = sorted(learnt | extra)
        index = {w: i for i, w in enumerate(unigrams)}
        paired = index if not extra else {w: i for w, i in index.items() if w in learnt}
        pair_df: Counter[tuple[int, int]] = Counter()
        for words in word_lists:
            pair_df.update(
                {(paired[a], paired[b]) for a, b in itertools.pairwise(words) if a in paired and b in paired}
            )
        bigrams = sorted(p for p, c in pair_df.most_common(max_bigrams) if c >= min_count)
        return cls([w.decode("utf-8", "surrogatepass") for w in unigrams], bigrams, byte_bits, bool(extra))

    # ------------------------------------------------------------ inference

    def byte_ids(self, raw: bytes) -> npt.NDArray[np.int32]:
        """Hashed byte 4-grams of the clipped, lowercased UTF-8 text."""
        framed = _FRAME + raw + _FRAME
        n = len(framed) - 3
        if n <= 0:
            return _NO_IDS
        grams = np.ndarray((n,), dtype="<u4", buffer=framed, strides=(1,))
        ids: npt.NDArray[np.int32] = ((grams * _HASH_MULT) >> self._shift).view(np.int32)
        return ids

    def byte_ids_many(self, raws: Sequence[bytes]) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        """:meth:`byte_ids` of many texts at once: the ids one text after another, and their counts.

        The texts are framed and joined into one buffer and hashed in one go;
        the 4-grams that would straddle two texts are dropped.
        """
        lengths = np.fromiter(map(len, raws), np.int64, len(raws))
        return self._hash_framed(_FRAME + _FRAMES.join(raws) + _FRAME, lengths, np.cumsum(lengths + 2))

    def _hash_framed(
        self, framed: bytes, lengths: npt.NDArray[np.int64], ends: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        """Hashed 4-grams of framed texts joined into one buffer (``ends``: where each ends)."""
        counts = np.maximum(lengths - 1, 0)  # a framed text of m bytes has m - 3 4-grams
        n = len(framed) - 3
        if n <= 0 or not counts.any():
            return _NO_IDS, counts
        grams = np.ndarray((n,), dtype="<u4", buffer=framed, strides=(1,))
        hashed = ((grams * _HASH_MULT) >> self._shift).view(np.int32)
        keep = np.ones(n, bool)
        bad = (ends[:, None] - np.array([3, 2, 1])).ravel()
        keep[bad[(bad >= 0) & (bad < n)]] = False
        return hashed[keep], counts

    def word_ids(self, words: list[bytes]) -> list[int]:
        """Table rows of the known words, then of the known adjacent pairs."""
        # Rows are never 0, so filter(None) drops exactly the misses;
        # map/filter/pairwise keep the loop in C.
        ids = list(filter(None, map(self._unigram.get, words)))
        if self._bigram:
            ids.extend(filter(None, map(self._bigram.get, itertools.pairwise(words))))
        return ids

    def encode(self, text: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
        """The rows one text activates and their values.

        The steps of :func:`_prompt_parts`, :meth:`byte_ids` and
        :meth:`word_ids`, inlined: this is the hot path of every prediction.
        """
        if len(text) > _CLIP_AT:
            text = text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]
        raw = text.lower().encode("utf-8", "replace")
        words = raw.translate(_TO_SPACE).split()
        rest = list(filter(None, map(self._unigram.get, words)))
        nv = len(rest) if self.vector_rows else 0  # the words' vector rows go last
        if self._bigram:
            rest.extend(filter(None, map(self._bigram.get, itertools.pairwise(words))))
        nw = len(rest)
        off = self._signal_offset
        rest.append(off + min(raw.count(b"\n").bit_length(), 10))
        rest.append(off + _code(raw))
        quantity = _quantity(raw, words)
        if quantity >= 0:
            rest.append(off + quantity)
        nb = len(raw) - 1  # the framed text's 4-grams
        if nb > 0:  # hashed in place, in the ids' own memory
            m = nb + len(rest)
            ids = np.empty(m + nv, _I32)
            hashed = ids[:nb].view(_U32)
            grams = np.ndarray((nb,), _LE_U32, _FRAME + raw + _FRAME, 0, _ONE_BYTE)
            np.multiply(grams, _HASH_MULT, hashed)
            np.right_shift(hashed, self._shift, hashed)
            ids[nb:m] = rest
            values = np.empty(m + nv, _F32)
            values[:nb].fill(1.0 / math.sqrt(nb))
        else:
            nb = 0
            m = len(rest)
            ids = np.empty(m + nv, _I32)
            ids[:m] = rest
            values = np.empty(m + nv, _F32)
        end = nb + nw
        if nw:
            values[nb:end].fill(1.0 / math.sqrt(nw))
        values[end:m].fill(1.0)  # the signals
        if nv:  # each word's vector row: its row shifted, the words' mean
            np.add(ids[nb : nb + nv], self._vector_delta, ids[m:])
            values[m:].fill(1.0 / nv)
        return ids, values

    def encode_many(
        self, texts: Sequence[str]
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """:meth:`encode` of many texts: rows, values, and the text each belongs to."""
        batch = self.encode_batch(texts)
        return batch.ids, batch.values, batch.texts

    def _build_word_table(self) -> WordTable | bool:
        """The vocabulary as a :class:`WordTable`, where words are looked up one by one only.

        Pairs are looked up in a dict by the words themselves, and so are
        quantities when a unit word has no row: those vocabularies split the
        words as before.
        """
        if self._bigram or self._unit_rows is None:
            return False
        return WordTable.build(self._unigram) or False

    def encode_batch(self, texts: Sequence[str]) -> EncodedBatch:
        """:meth:`encode` of many texts at once, without a Python loop over them.

        The texts are clipped, lowercased and encoded one by one, then joined:
        their bytes are hashed in one go, their words found and looked up in
        one pass (a separator word that no text can contain marks where each
        text ends; in numpy through a :class:`WordTable` where the vocabulary
        allows, else split and looked up in the dict), and the signals
        counted over the joined bytes.  Only the
        words that name a unit with a number before them ("500 words") take
        a step of their own.
        """
        n = len(texts)
        clip_at, head, tail = _CLIP_AT, HEAD_CHARS, TAIL_CHARS
        raws = [
            (t if len(t) <= clip_at else t[:head] + "\n" + t[-tail:]).lower().encode("utf-8", "replace")
            for t in texts
        ]
        lengths = np.fromiter(map(len, raws), np.int64, n)
        framed = _FRAME + _FRAMES.join(raws) + _FRAME
        ends = np.cumsum(lengths + 2)  # where each framed text ends in `framed`
        byte_ids, byte_counts = self._hash_framed(framed, lengths, ends)

        # Words: all texts' at once, separated by a word no text has.
        spaced = _SEPARATOR.join(raws).translate(_TO_SPACE)
        table = getattr(self, "_word_table", None)  # a featurizer pickled before it had one: None
        if table is None:
            table = self._word_table = self._build_word_table()
        words: Sequence[bytes]
        if isinstance(table, WordTable):  # found in numpy, read from the bytes only where needed
            unigram_ids, words = table.lookup(spaced)
            nwords = len(unigram_ids)
        else:
            words = spaced.split()
            nwords = len(words)
            unigram_ids = np.fromiter(map(self._unigram.get, words, itertools.repeat(0)), np.int32, nwords)
        word_texts = np.cumsum(unigram_ids == _SEPARATOR_ROW)
        known = unigram_ids > 0
        word_block = unigram_ids[known]
        word_block_texts = word_texts[known]
        unigram_counts = np.bincount(word_block_texts, minlength=n)
        if self.vector_rows:  # each known word's vector row: its row shifted
            vector_block, vector_counts = word_block + self._vector_delta, unigram_counts
        else:
            vector_block, vector_counts = _NO_IDS, np.zeros(n, np.int64)
        if self._bigram and nwords > 1:
            pair_ids = np.fromiter(
                map(self._bigram.get, itertools.pairwise(words), itertools.repeat(0)), np.int32, nwords - 1
            )
            known = pair_ids > 0
            word_block_texts = np.concatenate([word_block_texts, word_texts[:-1][known]])
            order = np.argsort(word_block_texts, kind="stable")  # each text's rows together
            word_block = np.concatenate([word_block, pair_ids[known]])[order]
        word_counts = np.bincount(word_block_texts, minlength=n) if self._bigram else unigram_counts

        # Signals: newlines and code marks counted over the joined bytes.
        joined = np.frombuffer(framed, np.uint8)
        newlines = np.bincount(
            np.searchsorted(ends, np.flatnonzero(joined == 0x0A), side="right"), minlength=n
        )
        marks = np.bincount(
            np.searchsorted(ends, np.flatnonzero(_IS_CODE_MARK[joined]), side="right"), minlength=n
        )
        off = self._signal_offset
        index = np.arange(n)
        signal_ids = [
            off + np.minimum(_octave(newlines), 10),
            off + _CODE_BASE + np.minimum(_octave(marks), 10),
        ]
        signal_texts = [index, index]
        if self._unit_rows is not None:  # every unit word has a row: find them by row
            units = np.flatnonzero(self._unit_rows[unigram_ids[1:]]) + 1
        else:
            units = np.flatnonzero(np.fromiter(map(_UNIT_WORDS.__contains__, words), bool, nwords))
        quantities = _quantities(words, units.tolist(), word_texts)
        if quantities:
            signal_ids.append(off + np.fromiter(quantities.values(), np.int64, len(quantities)))
            signal_texts.append(np.fromiter(quantities, np.int64, len(quantities)))
        ids = np.concatenate([byte_ids, word_block, vector_block, *signal_ids], dtype=np.int32)
        return EncodedBatch(ids, byte_counts, word_counts, np.concatenate(signal_texts), vector_counts)
