"""Found by a mutation audit.

scan_gzip's zero fill, zero bytes of data, and resuming only at a member that decodes whole."""

from __future__ import annotations

import gzip
import io
import zlib

from sjfsched._gzlines import ZERO_FILL, Cut, Damaged, GzipEvent, scan_gzip

_A = gzip.compress(b'{"a": 1}\n', mtime=0)
_B = gzip.compress(b'{"b": 2, "text": "' + b"hello world " * 50 + b'"}\n', mtime=0)
_C = gzip.compress(b'{"c": 3}\n', mtime=0)


def _events(data: bytes) -> list[GzipEvent]:
    return list(scan_gzip(io.BytesIO(data)))


def _prefix(member: bytes) -> bytes:
    return zlib.decompressobj(31).decompress(member)


def test_zero_fill_of_exactly_zero_fill_bytes_is_not_fed_as_data() -> None:
    for k in (11, 28):
        events = _events(_A + _B[:k] + bytes(ZERO_FILL))
        assert events[-1] == Cut(len(_A))
        data = b"".join(e for e in events if isinstance(e, bytes))
        assert data == b'{"a": 1}\n' + _prefix(_B[:k])


def test_a_zero_byte_of_an_unfinished_members_data_is_kept() -> None:
    k = max(i for i, b in enumerate(_B[:-8]) if b == 0) + 1  # the member's data ends in a zero byte
    assert k > 10 and _prefix(_B[:k]) != _prefix(_B[: k - 1])
    events = _events(_A + _B[:k] + _C)
    damaged = events[1]
    assert isinstance(damaged, Damaged)
    assert damaged.unfinished == _prefix(_B[:k])
    assert events[2] == b'{"c": 3}\n'


def test_scanning_resumes_only_at_a_member_that_decodes_whole() -> None:
    data = _A + _B[:30] + _C[:15]  # an unfinished member, then only the start of another
    events = _events(data)
    assert events[0] == b'{"a": 1}\n'
    assert len(events) == 2
    damaged = events[1]
    assert isinstance(damaged, Damaged)
    assert (damaged.start, damaged.end) == (len(_A), len(data))


def test_a_streamed_members_data_is_not_passed_on_twice() -> None:
    text = b"".join(b'{"n": %d, "t": "some words here"}\n' % i for i in range(80000))  # ~2.9 MB: it streams
    big = gzip.compress(text, 6, mtime=0)
    events = _events(_A + big[: len(big) * 3 // 4] + _C)
    damaged = [e for e in events if isinstance(e, Damaged)]
    assert len(damaged) == 1 and events[-1] == b'{"c": 3}\n'
    passed = b"".join(e for e in events if isinstance(e, bytes))
    assert len(passed) > (1 << 20)
    assert (passed + (damaged[0].unfinished or b"")).count(b'{"n": 0,') == 1
