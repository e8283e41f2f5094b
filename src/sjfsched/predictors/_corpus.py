"""Length-labelled prompt corpora: reading them and splitting them honestly.

The format is JSON lines, one record per (prompt, answering model), plain or
gzip-compressed (the schema of the project's shared data and of
:class:`sjfsched.RequestLog`)::

    {"source": "arena-hard-v0.1", "prompt_id": "aa8050bc3d8d3068",
     "prompt": "Tell me how to ...", "model": "gpt-4o", "output_tokens": 2086}

Only ``prompt`` and ``output_tokens`` are required.  ``prompt_id`` defaults to
the first 16 hex digits of ``sha1(prompt.strip())``, ``source`` to the file's
name, ``model`` to ``"unknown"``.  Records of the same ``prompt_id`` always
land on the same side of a split.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import attrs

__all__ = [
    "LengthRecord",
    "corpus_of",
    "group_by_prompt",
    "is_test",
    "iter_json_lines",
    "load_records",
    "parse_record",
    "prompt_id_of",
]

logger = logging.getLogger("sjfsched")


@attrs.frozen
class LengthRecord:
    """One answer: the prompt, who answered it, and how long the answer was."""

    prompt: str
    output_tokens: float
    prompt_id: str
    source: str
    model: str

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


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def iter_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of each non-blank line of a JSON-lines file (``.gz`` too).

    A line that is not JSON raises :class:`ValueError` naming the file and
    line, and so does a ``.gz`` file that is not gzip or is corrupt.  A
    compressed file cut short (one being written, or a crash while writing)
    yields its complete lines: the last, partial one is left out.
    """
    i = 0
    try:
        with _open(path) as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{i}: not JSON ({exc.msg})") from exc
    except EOFError:  # a gzip member cut short: what came before it stands
        logger.warning("%s is cut short after line %d (being written, or damaged): read up to there", path, i)
        return
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path}: corrupt gzip data after line {i} ({exc})") from exc


def parse_record(raw: Any, path: Path, line: int) -> LengthRecord:
    """One line of a JSON-lines file as a record; a :class:`ValueError` names the file and line if bad."""
    where = f"{path}:{line}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: 'prompt' must be a string")
    tokens = raw.get("output_tokens")
    if isinstance(tokens, bool) or not isinstance(tokens, (int, float)) or not math.isfinite(tokens):
        raise ValueError(f"{where}: 'output_tokens' must be a finite number, got {tokens!r}")
    if tokens < 0:
        raise ValueError(f"{where}: 'output_tokens' must be >= 0, got {tokens!r}")
    prompt_id = raw.get("prompt_id")
    source = raw.get("source")
    model = raw.get("model")
    return LengthRecord(
        prompt=prompt,
        output_tokens=float(tokens),
        prompt_id=str(prompt_id) if prompt_id else prompt_id_of(prompt),
        source=str(source) if source else path.name.split(".")[0],
        model=str(model) if model else "unknown",
    )


def load_records(paths: Iterable[str | Path]) -> list[LengthRecord]:
    """Read every record of the given JSONL files (``.gz`` or plain).

    A directory stands for every ``*.jsonl`` and ``*.jsonl.gz`` file in it.
    Blank lines are skipped; a malformed line raises :class:`ValueError`
    naming the file and line.
    """
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files.extend(sorted([*path.glob("*.jsonl"), *path.glob("*.jsonl.gz")]))
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
    records: list[LengthRecord] = []
    for path in files:
        records.extend(parse_record(raw, path, i) for i, raw in iter_json_lines(path))
    return records


def group_by_prompt(records: Sequence[LengthRecord]) -> tuple[list[str], list[list[int]]]:
    """Unique prompts (keyed by corpus and prompt id) and the records of each."""
    index: dict[tuple[str, str], int] = {}
    prompts: list[str] = []
    members: list[list[int]] = []
    for i, r in enumerate(records):
        key = (r.corpus, r.prompt_id)
        j = index.get(key)
        if j is None:
            j = index[key] = len(prompts)
            prompts.append(r.prompt)
            members.append([])
        members[j].append(i)
    return prompts, members
