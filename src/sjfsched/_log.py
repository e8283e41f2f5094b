"""A request log in the training schema, so users can retrain on their own traffic."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal, final

if sys.platform != "win32":  # Windows has no flock: one writer per log there
    import fcntl

from ._gzlines import Cut, cut_member_data, scan_gzip
from ._records import Completion
from .predictors._corpus import MAX_OUTPUT_TOKENS, cut_short, prompt_id_of

__all__ = ["RequestLog"]

logger = logging.getLogger("sjfsched")


@final
class RequestLog:
    """Appends every completed request to a JSON-lines file that ``sjfsched train`` reads.

    Use it as a scheduler's ``on_complete`` callback::

        log = RequestLog("requests.jsonl", model="llama3.2:3b")
        async with Scheduler(backend, on_complete=log) as sched:
            ...
        log.close()

    and later retrain the predictor on your own traffic (the paper's
    "Model D")::

        sjfsched train requests.jsonl --out my-model.onnx --fit-all

    Each line is one completed request::

        {"source": "requestlog", "prompt_id": "<sha1 of the prompt, 16 hex>",
         "prompt": "<Request.text>", "model": "llama3.2:3b",
         "output_tokens": 412, "token_count": "backend",
         "input_tokens": 35, "finish_reason": "stop", "predicted_tokens": 380.5}

    ``model`` names the answering model (default: ``request.options["model"]``
    if set, else ``"unknown"``); ``source`` labels the file's records (use one
    per application to evaluate them separately).  A path ending in ``.gz``
    is written gzip-compressed, each line a gzip member of its own, so the
    file reads whole at every moment, even while it is written or after a
    crash.  Opening a log that a crash left with an unfinished last line
    (or gzip member) first drops that line, so the lines written after it
    stay readable; a ``.gz`` log is read through once for this.  A plain log
    that another writer of the same path left so while this one had it open
    is mended the same way before the next line; bytes another program
    appended without a newline are ended with one (a warning: reading the
    log then fails at that line).  A log deleted or renamed while open
    (``logrotate``'s default) goes on at its path, in a new file
    (``copytruncate``: in the emptied one).  Requests
    with no output, or with no text (an image-only turn), are skipped.
    Answers cut off by ``max_tokens`` (``finish_reason == "length"``) are
    logged with their finish reason, their length being only a lower bound;
    ``skip_truncated=True`` leaves them out.  Safe to call from several threads; the file is flushed
    after every line.  Several logs (in one process or several) may append to one path: each line
    is written under an exclusive lock on the file (``flock``; not on Windows), so a line
    being written is never taken for a crash's remnant.  A line that cannot be written whole (a
    full disk) is taken back and the call raises :class:`OSError`: a failed call wrote nothing
    (the scheduler logs ``on_complete``'s exceptions and goes on).

    A path that cannot be written (a read-only directory or file system) raises
    :class:`PermissionError` here.

    An existing file that is not such a log (a CSV, a compressed log not
    named ``.gz``, a plain one named ``.gz``) raises :class:`ValueError`
    saying why, here and before anything is written to it: a log only ever
    appends to its own kind.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        model: str | None = None,
        source: str = "requestlog",
        skip_truncated: bool = False,
    ) -> None:
        if not isinstance(source, str) or not source:
            raise ValueError("RequestLog.source must be a non-empty string")
        if model is not None and not isinstance(model, str):
            raise TypeError(f"RequestLog.model must be a string or None, got {type(model).__name__}")
        self.path = Path(path)
        #: Where it writes: the path made absolute now, so a later chdir() moves nothing.
        self._where = Path(os.path.abspath(self.path))
        _refuse_unless_a_log(self._where)
        _refuse_unless_writable(self._where)
        self.model = model
        self.source = source
        self.skip_truncated = skip_truncated
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self.written = 0

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self._where.parent.mkdir(parents=True, exist_ok=True)
            _refuse_unless_a_log(self._where)  # again: it may have been replaced since
            # Unbuffered: a failed write leaves nothing behind; readable: a writer that crashed
            # mid-line since is seen by its last byte.  A pipe or a device is only written to:
            # a pipe opened for reading too is opened at once, without its reader, and the lines
            # written before the reader came were lost with the pipe.
            try:
                regular = stat.S_ISREG(os.stat(self._where).st_mode)
            except FileNotFoundError:
                regular = True
            f = self._where.open("a+b" if regular else "ab", buffering=0)
            try:
                with _exclusive(f):  # another writer's line under way is no crash's remnant
                    _finish_tail(self._where)
            except BaseException:
                f.close()
                raise
            self._file = f
        return self._file

    def record(self, completion: Completion) -> dict[str, Any] | None:
        """The line a completion becomes (``None`` if it is skipped)."""
        if completion.output_tokens <= 0:
            return None
        if completion.output_tokens > MAX_OUTPUT_TOKENS:  # a miscount: training would refuse the log
            logger.warning(
                "%s: not logged: an answer of %d tokens (more than the %d training reads)",
                self.path,
                completion.output_tokens,
                MAX_OUTPUT_TOKENS,
            )
            return None
        if self.skip_truncated and completion.finish_reason == "length":
            return None
        request = completion.request
        text = request.text
        if not text.strip():
            return None
        model = self.model
        if model is None:
            option = request.options.get("model")
            model = option if isinstance(option, str) else "unknown"
        line: dict[str, Any] = {
            "source": self.source,
            "prompt_id": prompt_id_of(text),
            "prompt": text,
            "model": model,
            "output_tokens": completion.output_tokens,
            "token_count": "backend",
        }
        if completion.prompt_tokens is not None and completion.prompt_tokens > MAX_OUTPUT_TOKENS:
            logger.warning(  # a miscount the benchmarks would refuse the log for: characters / 4 stand in
                "%s: a prompt of %d tokens logged without its count (more than the %d the benchmarks read)",
                self.path,
                completion.prompt_tokens,
                MAX_OUTPUT_TOKENS,
            )
        elif completion.prompt_tokens is not None:
            line["input_tokens"] = completion.prompt_tokens
        if completion.finish_reason is not None:
            line["finish_reason"] = completion.finish_reason
        line["predicted_tokens"] = round(completion.prediction.tokens, 1)
        return line

    def __call__(self, completion: Completion) -> None:
        line = self.record(completion)
        if line is None:
            return
        try:
            data = (json.dumps(line, ensure_ascii=False) + "\n").encode()
        except UnicodeEncodeError:  # a lone surrogate: keep it escaped, as JSON allows
            data = (json.dumps(line) + "\n").encode()
        if self.path.suffix == ".gz":
            data = gzip.compress(data)
        with self._lock:
            f = self._open()
            if _replaced(f, self._where):  # deleted, or renamed by a rotation: a new file at the path
                self._file = None
                f.close()
                f = self._open()
            with _exclusive(f):
                start = os.fstat(f.fileno()).st_size
                if start and self.path.suffix != ".gz" and _last_byte(f, start) not in (b"\n", None):
                    # Another writer of this path crashed mid-line since it was opened: drop its
                    # remnant, or this line would be glued to it and the log unreadable there.
                    _finish_tail(self._where, foreign="end")
                    start = os.fstat(f.fileno()).st_size
                try:
                    view = memoryview(data)
                    while view:
                        written = f.write(view)
                        if not written:  # a regular file takes some of it, or raises
                            raise OSError(f"{self.path}: the file took none of a line")
                        view = view[written:]
                except BaseException:
                    # Part of the line may be on disk (a full disk): take it back, so the next
                    # line is not glued to it and a failed call wrote nothing.
                    with contextlib.suppress(OSError):
                        os.ftruncate(f.fileno(), start)
                    raise
            self.written += 1

    def close(self) -> None:
        with self._lock:
            f, self._file = self._file, None
            if f is not None:
                f.close()

    def __enter__(self) -> RequestLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_DROPPED = "%s: dropped %d bytes of an unfinished last line (left by a crash)"


def _last_byte(f: IO[bytes], size: int) -> bytes | None:
    """The last byte of the open file ``f`` of ``size`` bytes (None on Windows: one writer there)."""
    if sys.platform == "win32":  # pragma: no cover
        return None
    return os.pread(f.fileno(), 1, size - 1)


def _replaced(f: IO[bytes], path: Path) -> bool:
    """Whether ``path`` no longer names the open file ``f`` (removed, or another file there)."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return True
    mine = os.fstat(f.fileno())
    return (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino)


def _not_a_log(path: Path) -> str | None:
    """Why the file at ``path`` is no log to append to (``None``: it is one, or empty, or absent).

    A pipe, a terminal or a device (``/dev/stdout``) is written to as it is: reading its head
    would wait for ever (for a writer, for input)."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            return "it is a directory"
        if not stat.S_ISREG(mode):
            return None
        with path.open("rb") as f:
            head = f.read(1 << 16)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    if path.suffix == ".gz":
        data = head.lstrip(b"\x00")  # a crash's zeros before members: the reader skips them
        if not data or data[:2] == b"\x1f\x8b":
            return None
        return "it is not gzip-compressed (a plain log's name does not end in .gz)"
    if head[:2] == b"\x1f\x8b":
        return "it is gzip-compressed (a compressed log's name ends in .gz)"
    lines = head.removeprefix(b"\xef\xbb\xbf").split(b"\n")  # a BOM, which the reader skips
    for i, line in enumerate(lines):
        if not line.strip():
            continue  # blank lines, which the reader skips too
        last = i == len(lines) - 1  # may be cut by the read, or by a crash
        if last and not line.strip(b"\x00"):
            return None  # a crash's zeros at the end, and nothing else: dropped before appending
        if line.lstrip().startswith(b"{") and (last or _is_a_json_object(line)):
            return None
        return "its first line is not a JSON object"
    return None


def _is_a_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def _refuse_unless_a_log(path: Path) -> None:
    why = _not_a_log(path)
    if why is not None:
        raise ValueError(f"{path} is not a request log: {why}")


@contextlib.contextmanager
def _exclusive(f: IO[bytes]) -> Iterator[None]:
    """An exclusive advisory lock on the open file ``f`` for the block (none on Windows)."""
    if sys.platform == "win32":  # pragma: no cover
        yield
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _refuse_unless_writable(path: Path) -> None:
    """:class:`PermissionError` if the log at ``path`` could not be written (or created)."""
    target = path
    while not target.exists():  # the nearest existing folder, which mkdir starts from
        if target.parent == target:
            return
        target = target.parent
    if not os.access(target, os.W_OK):
        what = "the file" if target == path else f"the folder {target}"
        raise PermissionError(f"RequestLog: cannot write {path}: {what} is not writable")


def _finish_tail(path: Path, *, foreign: Literal["refuse", "end"] = "refuse") -> None:
    """Drop an unfinished last line (or gzip member) that a crash left, before appending.

    Only the unfinished line goes: a cut gzip member's whole lines are
    written again as a member of their own.  A last line without its newline
    that is whole gets one.  A plain log's last line that is neither JSON nor
    JSON cut short (another program's) is refused (:class:`ValueError`), or
    with ``foreign="end"`` (a log already open, writing on) ended with a
    newline and a warning, so this writer's lines are not lost.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    if path.suffix != ".gz":
        with path.open("rb") as f:
            keep = _complete_lines(f, size)
        if keep is None:  # a last line without its newline, but whole
            with path.open("ab") as f:
                f.write(b"\n")
        elif keep < size:
            with path.open("rb") as f:
                f.seek(keep)
                tail = f.read()
            if not cut_short(tail):  # not a JSON line a crash cut short: not ours to drop
                if foreign != "end":
                    raise ValueError(
                        f"{path} is not a request log: its last line is neither JSON nor a line cut short"
                    )
                logger.warning(
                    "%s: another program wrote %d bytes that are not a log line; ended them with a "
                    "newline and logging on (reading the log fails at that line: remove it)",
                    path,
                    size - keep,
                )
                with path.open("ab") as f:
                    f.write(b"\n")
                return
            logger.warning(
                "%s: dropped %d bytes of an unfinished last line (left by a crash)", path, size - keep
            )
            os.truncate(path, keep)
        return
    cut = None
    last = b"\n"
    with path.open("rb") as f:
        for event in scan_gzip(f):
            if isinstance(event, Cut):
                cut = event.start
            elif isinstance(event, bytes) and event:
                last = event[-1:]
        remnant = b"" if cut is None else cut_member_data(f, cut)
    if cut is not None:
        whole = remnant[: remnant.rfind(b"\n") + 1]
        if len(whole) < len(remnant):
            logger.warning(_DROPPED, path, len(remnant) - len(whole))
        else:
            logger.warning("%s: rewrote a gzip member cut short after its last whole line", path)
        os.truncate(path, cut)
        if whole:
            with path.open("ab") as f:
                f.write(gzip.compress(whole))
    elif last != b"\n":
        with path.open("ab") as f:
            f.write(gzip.compress(b"\n"))


def _complete_lines(f: IO[bytes], size: int) -> int | None:
    """The length of a plain log's complete lines; None if its last line is whole but has no newline."""
    block = 1 << 16
    end = size
    tail = b""
    while end > 0:
        start = max(end - block, 0)
        f.seek(start)
        tail = f.read(end - start) + tail
        if tail.endswith(b"\n") and end == size:
            return size
        cut = tail.rfind(b"\n")
        if cut >= 0:
            tail = tail[cut + 1 :]
            break
        end = start
    try:
        json.loads(tail)
    except (ValueError, RecursionError):
        return size - len(tail)
    return None
