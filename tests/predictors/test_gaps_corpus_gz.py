"""Found by a mutation audit.

an unfinished gzip member whose text cannot begin a record is corruption, not a crash."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from sjfsched.predictors._corpus import load_records


def _member(record: dict[str, object]) -> bytes:
    return gzip.compress(json.dumps(record).encode() + b"\n", mtime=0)


def test_an_unfinished_member_that_is_no_record_is_corrupt(tmp_path: Path) -> None:
    first, last = _member({"prompt": "a", "output_tokens": 1}), _member({"prompt": "c", "output_tokens": 3})
    crash = _member({"prompt": "b", "output_tokens": 2})
    junk = gzip.compress(b"hello there, this is no record at all\n", mtime=0)
    good = tmp_path / "crash.jsonl.gz"
    good.write_bytes(first + crash[: len(crash) - 12] + last)
    assert [r.prompt for r in load_records([good])] == ["a", "c"]  # a crash's member: read past
    bad = tmp_path / "junk.jsonl.gz"
    bad.write_bytes(first + junk[: len(junk) - 12] + last)
    with pytest.raises(ValueError, match="corrupt gzip data after line 1"):
        load_records([bad])
