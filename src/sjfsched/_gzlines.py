"""Reading a gzip file member by member, so that damage loses only what it touches.

:class:`sjfsched.RequestLog` writes one gzip member per line.  A crash while
a member is written leaves it unfinished at the end of the file; a restart
after an old version's crash appended new members behind it.  Python's
:mod:`gzip` gives up at the first bad member and loses everything after it.
Here each member is decoded on its own: the data of complete members comes
through, a damaged stretch is skipped up to the next member that decodes, and
an unfinished last member is reported as such.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import IO, Final

import attrs

__all__ = ["Cut", "Damaged", "GzipEvent", "scan_gzip"]

_MAGIC: Final = b"\x1f\x8b\x08"
_CHUNK: Final = 1 << 20
#: a member's data is held back until its checksum is read, up to this size
#: (a log's members are one line each); a bigger member streams as it decodes
_HOLD: Final = 1 << 20


@attrs.frozen
class Damaged:
    """Bytes ``start`` to ``end`` of the file did not decode and were skipped."""

    start: int
    end: int
    error: str
    #: what the skipped bytes decode to if they decode without error as the
    #: start of a member (what a crash while writing leaves, when more members
    #: are appended after it, or corruption that happens to decode: the caller
    #: judges the data); None if they do not
    unfinished: bytes | None


@attrs.frozen
class Cut:
    """The file ends inside the member that starts at byte ``start``."""

    start: int


#: decompressed data, or what went wrong where
GzipEvent = bytes | Damaged | Cut


def scan_gzip(f: IO[bytes], offset: int = 0) -> Iterator[GzipEvent]:
    """Decompressed data of ``f``, member after member, with :class:`Damaged` and :class:`Cut` marks.

    After a :class:`Damaged` mark, data resumes at the next member header;
    the line that was being read when the damage began is lost.  ``f`` must
    be seekable (the skipped bytes are read again to tell a crash's
    unfinished member from corruption).
    Zero bytes between members (padding) are skipped, as :mod:`gzip` does.

    A member's data comes through once its checksum has been read, so bytes
    that decode without error but belong to a damaged member (an unfinished
    member followed by the next one decodes as garbage for a while) are never
    passed on; a member past :data:`_HOLD` bytes streams instead.  An
    unfinished member can also swallow the members after it without an
    error to the end of the file: it is taken for the file's last only if no
    whole member starts after it.

    ``offset``: where in ``f`` to start.
    """
    f.seek(offset)
    held: list[bytes] = []
    held_size = 0
    pending = b""  # input not yet decoded; starts at byte `base` of the file
    base = offset
    start = offset  # where the member being decoded starts
    decoder = zlib.decompressobj(31)
    fed = False  # the decoder has been given bytes of the member at `start`
    eof = False
    while True:
        if not pending:
            if eof:
                break
            pending = f.read(_CHUNK)
            if not pending:
                eof = True
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
            after = _next_whole_member(f, start)
            streamed = held_size >= _HOLD  # this member's data already went out
            held.clear()
            if after is None:
                size = f.seek(0, 2)
                remnant = None if streamed else _unfinished(f, start, size, at_end=True)
                if remnant is not None:
                    # an unfinished last member with zeros after it (a crash)
                    if remnant:
                        yield remnant
                    yield Cut(start)
                    return
                yield Damaged(start, size, str(exc), None)
                return
            yield Damaged(start, after, str(exc), None if streamed else _unfinished(f, start, after))
            yield from scan_gzip(f, after)
            return
        fed = True
        if data:
            if held_size + len(data) > _HOLD:
                yield from held
                held.clear()
                held_size = _HOLD  # streaming until the member ends
                yield data
            else:
                held.append(data)
                held_size += len(data)
        if decoder.eof:
            yield from held
            held.clear()
            held_size = 0
            rest = decoder.unused_data
            base += len(pending) - len(rest)
            pending = rest
            decoder = zlib.decompressobj(31)
            fed = False
        else:
            base += len(pending)
            pending = b""
    if not fed:
        return
    after = _next_whole_member(f, start)
    if after is None:
        # What an unfinished last member decoded to is a true prefix of it
        # (nothing follows it that could decode as garbage).
        yield from held
        yield Cut(start)
        return
    yield Damaged(start, after, "an unfinished member", _unfinished(f, start, after))
    yield from scan_gzip(f, after)


def _next_whole_member(f: IO[bytes], start: int) -> int | None:
    """Where the first member that decodes whole after byte ``start`` of ``f`` begins."""
    f.seek(start + 1)
    rest = f.read()
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


def _unfinished(f: IO[bytes], start: int, end: int, *, at_end: bool = False) -> bytes | None:
    """What bytes ``start`` to ``end`` of ``f`` decode to, if they are the start of a member.

    ``at_end``: the bytes run to the end of the file, where zeros after them
    (what a crash can leave) are not part of the member.
    """
    if end - start > _HOLD:
        return None
    here = f.tell()
    try:
        f.seek(start)
        data = f.read(end - start)
    finally:
        f.seek(here)
    if at_end:
        data = data.rstrip(b"\x00")
    decoder = zlib.decompressobj(31)
    try:
        decoded = decoder.decompress(data)
    except zlib.error:
        return None
    return None if decoder.eof else decoded
