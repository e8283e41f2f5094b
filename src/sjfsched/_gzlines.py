"""Reading a gzip file member by member, so that damage loses only what it touches.

:class:`sjfsched.RequestLog` writes one gzip member per line.  A crash while
a member is written leaves it unfinished at the end of the file, perhaps
followed by zeros (a file system can fill the rest of a block with them); a
restart by an older version appended new members behind it.  Python's
:mod:`gzip` gives up at the first bad member and loses everything after it.
Here each member is decoded on its own: the data of complete members comes
through, an unfinished member is reported with what it decodes to, and so is
a damaged stretch, skipped up to the next member that decodes whole.

A run of :data:`ZERO_FILL` or more zero bytes ending the file, or ending an
unfinished member, is taken for a crash's zero fill, never for data: zeros
fed to the decoder can decode as made-up text.  (A member's own last bytes
are at most 3 zeros, the high bytes of its length; an empty member ends in
9: zeros held back are given back when they complete the member.)
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import IO, Final

import attrs

__all__ = ["ZERO_FILL", "Cut", "Damaged", "GzipEvent", "cut_member_data", "scan_gzip"]

_MAGIC: Final = b"\x1f\x8b\x08"
_CHUNK: Final = 1 << 20
#: a member's data is held back until its checksum is read, up to this size
#: (a log's members are one line each); a bigger member streams as it decodes
_HOLD: Final = 1 << 20
#: zero bytes in a row that end a file or an unfinished member: a crash's fill
ZERO_FILL: Final = 4
#: the longest stretch re-read to tell what an unfinished member decodes to
_MAX_REMNANT: Final = 1 << 28
_TRAILER: Final = 16  # enough zeros to end any member whose last bytes are zeros (an empty one: 9)


@attrs.frozen
class Damaged:
    """Bytes ``start`` to ``end`` of the file did not decode and were skipped."""

    start: int
    end: int
    error: str
    #: if the skipped bytes decode without error as the start of a member
    #: (what a crash leaves when more members are appended after it, or
    #: corruption that happens to decode: the caller judges it), the part of
    #: their data not passed on before the damage showed; None if they do not
    unfinished: bytes | None


@attrs.frozen
class Cut:
    """The file ends inside the member that starts at byte ``start`` (its data so far came through)."""

    start: int


#: decompressed data, or what went wrong where
GzipEvent = bytes | Damaged | Cut


def scan_gzip(f: IO[bytes]) -> Iterator[GzipEvent]:
    """Decompressed data of ``f``, member after member, with :class:`Damaged` and :class:`Cut` marks.

    ``f`` must be seekable (stretches are read again to judge them).  After a
    :class:`Damaged` mark data resumes at the next member that decodes whole;
    the line being read when the damage began continues in the mark's
    ``unfinished`` data, if any.  Zero bytes between members (padding) are
    skipped, as :mod:`gzip` does, and a crash's zero fill at the end is not
    read (see the module's docstring).

    A member's data comes through once its checksum has been read, so bytes
    that decode without error but belong to a damaged member (an unfinished
    member followed by the next one decodes as garbage for a while) are never
    passed on; a member past 1 MiB streams as it decodes.
    """
    size = f.seek(0, 2)
    end = size - _zero_fill(f, 0, size)
    yield from _scan(f, 0, end, size)


def cut_member_data(f: IO[bytes], start: int) -> bytes:
    """What the member at ``start``, which the file ends inside (a :class:`Cut`), decodes to."""
    size = f.seek(0, 2)
    data = _remnant(f, start, size - _zero_fill(f, start, size))
    return b"" if data is None else data


def _scan(f: IO[bytes], offset: int, end: int, size: int) -> Iterator[GzipEvent]:
    """:func:`scan_gzip` from byte ``offset``, reading no further than ``end`` (of ``size``)."""
    f.seek(offset)
    held: list[bytes] = []
    held_size = 0
    streaming = False  # the current member is past _HOLD: its data goes out as it decodes
    passed = 0  # bytes of the current member's data already passed on
    pending = b""  # input not yet decoded; starts at byte `base` of the file
    base = offset
    start = offset  # where the member being decoded starts
    decoder = zlib.decompressobj(31)
    fed = False  # the decoder has been given bytes of the member at `start`
    while True:
        if not pending:
            pending = f.read(min(_CHUNK, end - base))
            if not pending:
                break
        if not fed:
            stripped = pending.lstrip(b"\x00")
            base += len(pending) - len(stripped)
            pending = stripped
            if not pending:
                continue
            start = base
        try:
            data = decoder.decompress(pending)
        except zlib.error as exc:
            # Resume at the first member after this one's start that decodes
            # whole (a header inside compressed data is a false match).
            after = _next_whole_member(f, start, end)
            remnant = _remnant(f, start, end if after is None else after)
            rest = None if remnant is None or len(remnant) < passed else remnant[passed:]
            if after is None and rest is not None:
                yield rest  # an unfinished last member, zero fill and all
                yield Cut(start)
                return
            yield Damaged(start, end if after is None else after, str(exc), rest)
            if after is not None:
                yield from _scan(f, after, end, size)
            return
        fed = True
        if data:
            if not streaming and held_size + len(data) > _HOLD:
                streaming = True
                yield from held
                passed, held_size = held_size, 0
                held.clear()
            if streaming:
                yield data
                passed += len(data)
            else:
                held.append(data)
                held_size += len(data)
        if decoder.eof:
            yield from held
            held.clear()
            held_size = passed = 0
            streaming = False
            rest_input = decoder.unused_data
            base += len(pending) - len(rest_input)
            pending = rest_input
            decoder = zlib.decompressobj(31)
            fed = False
        else:
            base += len(pending)
            pending = b""
    if not fed:
        return
    # The member is unfinished where reading stopped.  Zeros held back as fill may
    # be the end of its trailer (an empty member's length): given back, do they end it?
    completed = decoder.copy()
    try:
        tail = completed.decompress(bytes(min(size - end, _TRAILER)))
    except zlib.error:
        tail = b""
    else:
        if completed.eof:
            yield from held
            if tail:
                yield tail
            return
    after = _next_whole_member(f, start, end)
    if after is None:
        # What it decoded to is a true prefix of it (nothing follows it that
        # could decode as garbage, and no zero fill was fed).
        yield from held
        yield Cut(start)
        return
    remnant = _remnant(f, start, after)
    rest = None if remnant is None or len(remnant) < passed else remnant[passed:]
    yield Damaged(start, after, "an unfinished member", rest)
    yield from _scan(f, after, end, size)


def _zeros_at_end(f: IO[bytes], start: int, end: int) -> int:
    """How many zero bytes end bytes ``start`` to ``end`` of ``f``."""
    run = 0
    position = end
    while position > start:
        block = min(1 << 16, position - start)
        f.seek(position - block)
        data = f.read(block)
        kept = len(data.rstrip(b"\x00"))
        run += len(data) - kept
        if kept:
            break
        position -= block
    return run


def _zero_fill(f: IO[bytes], start: int, end: int) -> int:
    """How many zero bytes end bytes ``start`` to ``end`` of ``f``, if a crash's fill (else 0)."""
    run = _zeros_at_end(f, start, end)
    return run if run >= ZERO_FILL else 0


def _next_whole_member(f: IO[bytes], start: int, end: int) -> int | None:
    """Where the first member that decodes whole after byte ``start`` (before ``end``) begins."""
    f.seek(start + 1)
    rest = f.read(max(end - start - 1, 0))
    at = rest.find(_MAGIC)
    while at >= 0:
        decoder = zlib.decompressobj(31)
        try:
            decoder.decompress(rest[at:])
        except zlib.error:
            pass
        else:
            if decoder.eof:
                return start + 1 + at
        at = rest.find(_MAGIC, at + 1)
    return None


def _remnant(f: IO[bytes], start: int, end: int) -> bytes | None:
    """What bytes ``start`` to ``end`` of ``f`` decode to, if they are the start of a member.

    A crash's zero fill at their end is left out; fewer zeros are tried as
    data first (a member's deflate data can end in a zero byte), then without.
    """
    run = _zeros_at_end(f, start, end)
    ends = [end - run] if run >= ZERO_FILL else [end, end - run] if run else [end]
    if ends[0] - start > _MAX_REMNANT:
        return None
    f.seek(start)
    data = f.read(ends[0] - start)
    for stop in ends:
        decoder = zlib.decompressobj(31)
        try:
            decoded = decoder.decompress(data[: stop - start])
        except zlib.error:
            continue
        if not decoder.eof:
            return decoded
    return None
