"""Length-labelled prompt corpora: reading them and splitting them honestly.

The format is JSON lines, one record per (prompt, answering model), plain or
gzip-compressed (the schema of the project's shared data and of
:class:`sjfsched.RequestLog`)::

    {"source": "arena-hard-v0.1", "prompt_id": "aa8050bc3d8d3068",
     "prompt": "Tell me how to ...", "model": "gpt-4o", "output_tokens": 2086}

Only ``prompt`` and ``output_tokens`` are required; ``source`` and ``model``,
where given, are strings, ``prompt_id`` a string or an integer.  ``prompt_id`` defaults to
the first 16 hex digits of ``sha1(prompt.strip())``, ``source`` to the file's
name without ``.gz`` and ``.jsonl`` (:func:`source_of_file`), ``model`` to
``"unknown"``.  Records of the same ``prompt_id`` always land on the same
side of a split; records of one ``prompt_id`` with different
prompts are still trained on as different prompts (:func:`group_by_prompt`).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from .._gzlines import Cut, Damaged, scan_gzip

__all__ = [
    "DATA_PATTERNS",
    "MAX_OUTPUT_TOKENS",
    "LengthRecord",
    "corpus_of",
    "cut_short",
    "group_by_prompt",
    "is_test",
    "iter_json_lines",
    "load_records",
    "parse_record",
    "prompt_id_of",
    "without_prompts_of",
]

logger = logging.getLogger("sjfsched")

#: The longest answer a record may give, in tokens: more than any model's context window.
MAX_OUTPUT_TOKENS: Final = 10_000_000

#: The files :func:`load_records` reads in a directory it is given.
DATA_PATTERNS = ("*.jsonl", "*.jsonl.gz")


@attrs.frozen
class LengthRecord:
    """One answer: the prompt, who answered it, and how long the answer was."""

    prompt: str
    output_tokens: float
    prompt_id: str
    source: str
    model: str
    #: the answer was cut off at its max_tokens (``"finish_reason": "length"``): its length is a
    #: lower bound
    cut: bool = False

    @property
    def corpus(self) -> str:
        return corpus_of(self.source)


def prompt_id_of(prompt: str) -> str:
    """The shared data's prompt id: first 16 hex digits of sha1(prompt.strip())."""
    return hashlib.sha1(prompt.strip().encode("utf-8", "surrogatepass")).hexdigest()[:16]


def corpus_of(source: str) -> str:
    """The corpus a source belongs to: the part before the first ``/``.

    ``castillo/Mbpp`` -> ``castillo``; ``arena-hard-v0.1`` -> ``arena-hard-v0.1``.
    """
    return source.split("/", 1)[0]


def is_test(prompt_id: str, test_fraction: float, seed: int = 0) -> bool:
    """Whether a prompt falls in the held-out part of a grouped split.

    Decided by a hash of ``(seed, prompt_id)``, so the split is the same on
    every machine and every run, and a prompt's answers never straddle it.
    """
    digest = hashlib.sha1(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < test_fraction


def in_sample(prompt_id: str, fraction: float, seed: int = 0) -> bool:
    """Whether a prompt is in a sample of about ``fraction`` of all prompts.

    Decided by a hash of ``(seed, prompt_id)``, apart from :func:`is_test`'s,
    so the sample is the same on every machine and every run, and with one
    seed a smaller fraction's prompts are among a larger one's.
    """
    digest = hashlib.sha1(f"sample:{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


_CUT_SHORT = "%s is cut short after line %d (being written, or damaged): read up to there"


def _plain_lines(path: Path) -> Iterator[bytes | Cut]:
    """The lines of a plain file, and a :class:`Cut` if its last line has no newline."""
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                yield Cut(f.tell() - len(line))
            yield line


def _gzip_lines(path: Path) -> Iterator[bytes | Cut | Damaged]:
    """The lines of a gzip file's complete members, with the marks of :func:`scan_gzip`.

    A line under way when the data is cut or damaged is dropped.
    """
    tail = b""
    with path.open("rb") as f:
        for event in scan_gzip(f):
            if isinstance(event, bytes):
                *lines, tail = (tail + event).split(b"\n")
                yield from lines
            elif isinstance(event, Damaged) and event.unfinished is not None:
                # what the unfinished member decodes to continues the line under way
                yield attrs.evolve(event, unfinished=tail + event.unfinished)
                tail = b""
            else:
                tail = b""
                yield event
    if tail:  # complete members whose data does not end in a newline
        yield tail


def _a_line_begun(data: bytes) -> bool:
    """Whether ``data`` can be the start of a JSON-lines record (what a crash cut short)."""
    if b"\n" in data:
        return False
    head = data.lstrip()
    if head and not head.startswith(b"{"):
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
    except UnicodeDecodeError:
        return False
    return True


_JSON_TOKENS: Final = re.compile(rb'"(?:[^"\\]|\\.)*(")?|[][{}]')


def cut_short(line: bytes) -> bool:
    """Whether ``line``, a last line without its newline that is not JSON, is a JSON object cut
    before its end (what a crash while writing leaves), not one written whole with a mistake.

    It is cut if it begins an object that it never closes (inside a string, or with brackets
    still open at its end); one whose brackets close, a typo such as a trailing comma, is not.
    Zeros a crash may leave around it, and a byte-order mark, are read past; a line ending in
    zeros is a crash's, whole or not (its newline was lost with the page the zeros fill).
    """
    if line.rstrip(b" \t\r\n").endswith(b"\x00"):
        return True
    text = line.strip(b"\x00 \t\r\n")
    if text.startswith(codecs.BOM_UTF8):
        text = text[len(codecs.BOM_UTF8) :].lstrip()
    if not text:
        return True
    if not text.startswith(b"{"):
        return False
    depth = 0
    for token in _JSON_TOKENS.finditer(text):
        if token[0][:1] == b'"':
            if token[1] is None:  # a string still open at the end
                return True
        elif token[0] in b"[{":
            depth += 1
        else:
            depth -= 1
            if depth <= 0:  # the object closed: the line was written whole
                return False
    return True


def _loads(line: bytes, path: Path, i: int) -> Any:
    if i == 1 and line.startswith(codecs.BOM_UTF8):  # what some Windows tools begin a file with
        line = line[len(codecs.BOM_UTF8) :]
    # Without its line end: a line cut short inside a string reads "unterminated", not as a
    # control character.
    line = line.rstrip(b"\r\n")
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        gzipped = i == 1 and line.startswith(b"\x1f\x8b")
        hint = ": gzip data; name the file .jsonl.gz" if gzipped else ""
        raise ValueError(f"{path}:{i}: not UTF-8 ({exc.reason} at byte {exc.start}){hint}") from exc
    except json.JSONDecodeError as exc:
        where = "column" if exc.msg.endswith(" at") else "at column"
        raise ValueError(f"{path}:{i}: not JSON ({exc.msg} {where} {exc.colno})") from exc
    except RecursionError as exc:
        raise ValueError(f"{path}:{i}: not JSON (nested too deeply)") from exc
    except ValueError as exc:  # e.g. an integer of more digits than int() takes
        raise ValueError(f"{path}:{i}: not JSON ({exc})") from exc


def _starts_gzip(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError:
        return True  # it cannot be read again: keep the reader's own error


def iter_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of each non-blank line of a JSON-lines file (``.gz`` too).

    A line that is not JSON raises :class:`ValueError` naming the file and
    line, and so does a ``.gz`` file that is not gzip or is corrupt.  What a
    crash while writing leaves is read past with a warning, losing only the
    line being written: a last line cut short (a plain file's last line
    without its newline that is not JSON, a ``.gz`` file's unfinished last
    gzip member), and in a ``.gz`` file an unfinished member with more
    members after it (a log reopened by an older version after a crash).
    Line numbers count the lines read.
    """
    i = 0
    cut = False
    lines = _gzip_lines(path) if path.suffix == ".gz" else _plain_lines(path)
    for item in lines:
        if isinstance(item, Damaged):
            # A crash's unfinished member: its whole lines stand, its last is
            # cut short. Data that does not read that way is corruption.
            data = item.unfinished
            if data is None or not _a_line_begun(data[data.rfind(b"\n") + 1 :]):
                if i == 0 and not _starts_gzip(path):
                    raise ValueError(
                        f"{path}: not gzip data; if it is plain JSON lines, name the file without .gz"
                    )
                raise ValueError(f"{path}: corrupt gzip data after line {i} ({item.error})")
            for line in data.split(b"\n")[:-1]:
                i += 1
                if line.strip():
                    yield i, _loads(line, path, i)
            logger.warning(
                "%s: an unfinished gzip member after line %d (bytes %d-%d, left by a crash): "
                "its last line, cut short, skipped",
                path, i, item.start, item.end,
            )  # fmt: skip
            continue
        if isinstance(item, Cut):
            cut = True
            continue
        i += 1
        if not item.strip():
            continue
        if cut:  # the last line of a plain file, without its newline
            try:
                value = _loads(item, path, i)
            except ValueError:
                gzipped = i == 1 and item.startswith(b"\x1f\x8b")  # all of a gzip file, no b"\n" in it
                if gzipped or not cut_short(item):  # a whole line with a mistake in it, not a crash's
                    raise
                logger.warning(_CUT_SHORT, path, i - 1)
                return
            yield i, value
            return
        yield i, _loads(item, path, i)
    if cut and path.suffix == ".gz":
        logger.warning(_CUT_SHORT, path, i)


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int past the largest float
        return False


def parse_record(raw: Any, path: Path, line: int) -> LengthRecord:
    """One line of a JSON-lines file as a record; a :class:`ValueError` names the file and line if bad."""
    where = f"{path}:{line}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str):
        if "prompt" in raw:
            raise ValueError(f"{where}: 'prompt' must be a string, got {type(prompt).__name__}")
        chat = (
            " (a chat's 'messages' are not read: give the text to rank by, its last user turn, as 'prompt')"
        )
        raise ValueError(f"{where}: no 'prompt'" + (chat if "messages" in raw else ""))
    if "output_tokens" not in raw:
        raise ValueError(f"{where}: no 'output_tokens' (the length of the answer, in tokens)")
    tokens = raw.get("output_tokens")
    if isinstance(tokens, bool) or not isinstance(tokens, (int, float)) or not _finite(tokens):
        large = isinstance(tokens, int) and tokens.bit_length() > 100
        shown = "a number too large" if large else repr(tokens)
        raise ValueError(f"{where}: 'output_tokens' must be a finite number, got {shown}")
    if tokens < 0:
        raise ValueError(f"{where}: 'output_tokens' must be >= 0, got {tokens!r}")
    if tokens > MAX_OUTPUT_TOKENS:  # one such record throws every prediction of a model trained on it
        raise ValueError(
            f"{where}: 'output_tokens' must be at most {MAX_OUTPUT_TOKENS:,} (more than any model's "
            f"context), got {tokens:.4g}"
        )
    prompt_id = raw.get("prompt_id")
    if prompt_id is not None and (isinstance(prompt_id, bool) or not isinstance(prompt_id, (str, int))):
        got = type(prompt_id).__name__
        raise ValueError(f"{where}: 'prompt_id' must be a string or an integer, got {got}")
    source = raw.get("source")
    model = raw.get("model")
    for name, value in (("source", source), ("model", model)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
    return LengthRecord(
        prompt=prompt,
        output_tokens=float(tokens),
        prompt_id=prompt_id_of(prompt) if prompt_id in (None, "") else str(prompt_id),
        source=str(source) if source else source_of_file(path),
        model=str(model) if model else "unknown",
        cut=raw.get("finish_reason") == "length",
    )


def source_of_file(path: Path) -> str:
    """The source of a record that names none: its file's name without ``.gz`` and the JSON
    suffix (``logs.app1.jsonl.gz``: ``logs.app1``)."""
    name = path.name
    for suffix in (".gz", ".jsonl", ".ndjson", ".json"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name


def load_records(paths: Iterable[str | Path]) -> list[LengthRecord]:
    """Read every record of the given JSONL files (``.gz`` or plain).

    A directory stands for every ``*.jsonl`` and ``*.jsonl.gz`` file in it
    (files of other JSON-lines names in it, ``.ndjson``, ``.json``, another
    case, and folders, are named in a warning, not read).  A file named twice
    (or by a directory too) is read once.  Blank lines are skipped; a
    malformed line raises :class:`ValueError` naming the file and line.
    """
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(found for pattern in DATA_PATTERNS for found in path.glob(pattern))
            _note_unread(path, set(found))
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
    records: list[LengthRecord] = []
    read: dict[Path, Path] = {}
    for path in files:
        again = read.setdefault(path.resolve(), path)
        if again is not path:
            logger.warning("%s is named again (as %s): read once", again, path)
            continue
        records.extend(parse_record(raw, path, i) for i, raw in iter_json_lines(path))
    return records


#: Names that look like JSON lines, which a directory's files are told apart by (any case).
_DATA_LIKE: Final = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json", ".json.gz")


#: A rotated log's name: ``requests.jsonl.1``, ``.2.gz``, ``-20240601``, ``-20240601.gz``
#: (logrotate's, with and without ``dateext``), ``.2024-06-01`` (Python's TimedRotatingFileHandler).
_ROTATED: Final = re.compile(r"\.(jsonl|ndjson|json)(\.gz)?[.-]\d[\w.-]*$", re.IGNORECASE)


def _note_unread(directory: Path, found: set[Path]) -> None:
    """Warn of what in ``directory`` looks like data but is not read (not ``found``)."""
    unread = sorted(
        f"{entry.name}/" if entry.is_dir() else entry.name
        for entry in directory.iterdir()
        if entry not in found
        and not entry.name.startswith(".")
        and (entry.is_dir() or entry.name.lower().endswith(_DATA_LIKE) or _ROTATED.search(entry.name))
    )
    if unread:
        shown = ", ".join(unread[:5]) + (f" and {len(unread) - 5} more" if len(unread) > 5 else "")
        logger.warning(
            "%s: only its *.jsonl and *.jsonl.gz files are read, not %s (name them to read them)",
            directory,
            shown,
        )


def group_by_prompt(records: Sequence[LengthRecord]) -> tuple[list[str], list[list[int]]]:
    """Unique prompts and the records of each, in the order they first appear.

    A prompt is keyed by its corpus, its ``prompt_id`` and its text without
    surrounding whitespace (what the default ``prompt_id`` is a hash of):
    records that share a ``prompt_id`` but ask different things (an id given
    per conversation, say) are different prompts, each trained on with its
    own text; texts that differ only in surrounding whitespace are one
    prompt (the first one's text is kept).  Splits stay grouped by
    ``prompt_id`` alone (:func:`is_test`).
    """
    index: dict[tuple[str, str, str], int] = {}
    prompts: list[str] = []
    members: list[list[int]] = []
    for i, r in enumerate(records):
        key = (r.corpus, r.prompt_id, r.prompt.strip())
        j = index.get(key)
        if j is None:
            j = index[key] = len(prompts)
            prompts.append(r.prompt)
            members.append([])
        members[j].append(i)
    return prompts, members


def without_prompts_of(
    records: Sequence[LengthRecord], tested: Sequence[LengthRecord]
) -> tuple[list[LengthRecord], int]:
    """``records`` but those whose prompt text is one of ``tested``'s (under any ``prompt_id``),
    and how many those were: a prompt is trained on or tested, not both."""
    texts = {prompt_id_of(p) for p in {r.prompt for r in tested}}
    clash = {p for p in {r.prompt for r in records} if prompt_id_of(p) in texts}
    kept = [r for r in records if r.prompt not in clash]
    return kept, len(records) - len(kept)
