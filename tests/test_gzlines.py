"""Reading gzip member by member gives exactly what gzip gives on sound files."""

from __future__ import annotations

import gzip
import io
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from sjfsched._gzlines import Cut, Damaged, scan_gzip

_lines = st.lists(
    st.lists(st.text(max_size=30).map(lambda t: (json.dumps(t) + "\n").encode()), min_size=1, max_size=4),
    min_size=1,
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(members=_lines, padding=st.lists(st.integers(0, 3), min_size=8, max_size=8))
def test_sound_files_read_as_gzip_reads_them(members: list[list[bytes]], padding: list[int]) -> None:
    data = b"".join(
        gzip.compress(b"".join(m)) + b"\0" * pad for m, pad in zip(members, padding, strict=False)
    )
    events = list(scan_gzip(io.BytesIO(data)))
    assert not [e for e in events if not isinstance(e, bytes)]
    assert b"".join(e for e in events if isinstance(e, bytes)) == gzip.decompress(data)


@settings(max_examples=200, deadline=None)
@given(members=_lines, cut=st.integers(1, 10_000), tail=st.booleans())
def test_a_member_cut_short_is_marked_and_no_garbage_comes_through(
    members: list[list[bytes]], cut: int, tail: bool
) -> None:
    # tail: whole members follow the one cut short (lines appended after a crash)
    whole = [gzip.compress(b"".join(m)) for m in members]
    k = cut % len(whole)
    broken = whole[k][: 1 + cut % (len(whole[k]) - 1)]
    before, after = b"".join(whole[:k]), b"".join(whole[k + 1 :]) if tail else b""
    data = before + broken + after
    events = list(scan_gzip(io.BytesIO(data)))
    got = b"".join(e for e in events if isinstance(e, bytes))
    marks = [e for e in events if not isinstance(e, bytes)]
    text = [b"".join(m) for m in members]
    if after:  # skipped; the members after it read whole
        assert len(marks) == 1 and isinstance(marks[0], Damaged)
        assert (marks[0].start, marks[0].end) == (len(before), len(before) + len(broken))
        assert got == b"".join(text[:k] + text[k + 1 :])
        assert marks[0].unfinished is not None and text[k].startswith(marks[0].unfinished)
    else:  # the end of the file: what the unfinished member decodes to so far is a true prefix of it
        assert marks == [Cut(len(before))]
        assert got.startswith(b"".join(text[:k])) and text[k].startswith(got[len(b"".join(text[:k])) :])


def test_a_member_bigger_than_what_is_held_streams() -> None:
    text = b"".join(b'{"prompt": "%d", "output_tokens": 1}\n' % i for i in range(200_000))  # 7 MB
    data = gzip.compress(text, compresslevel=1)
    assert b"".join(e for e in scan_gzip(io.BytesIO(data)) if isinstance(e, bytes)) == text
    events = list(scan_gzip(io.BytesIO(data[: len(data) // 2])))
    got = b"".join(e for e in events if isinstance(e, bytes))
    assert events[-1] == Cut(0) and len(got) > len(text) // 3 and text.startswith(got)


def test_an_unfinished_member_that_swallows_the_next_one_does_not_hide_it() -> None:
    # A stored (level 0) block copies what follows as data: the unfinished
    # member decodes the appended member as its own bytes, without an error,
    # to the end of the file.
    line = b'{"prompt": "' + b"x" * 2000 + b'", "output_tokens": 3}\n'
    broken = gzip.compress(line, compresslevel=0)[:100]
    after = gzip.compress(b'{"prompt": "after", "output_tokens": 4}\n')
    events = list(scan_gzip(io.BytesIO(broken + after)))
    assert [e for e in events if isinstance(e, bytes)] == [gzip.decompress(after)]
    marks = [e for e in events if not isinstance(e, bytes)]
    assert len(marks) == 1 and isinstance(marks[0], Damaged) and (marks[0].start, marks[0].end) == (0, 100)
    assert marks[0].unfinished is not None and line.startswith(marks[0].unfinished)
