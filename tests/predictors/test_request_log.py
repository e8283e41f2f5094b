"""RequestLog writes what `sjfsched train` reads."""

from __future__ import annotations

import gzip
import json
import os
import threading
import time
from pathlib import Path

import pytest

from sjfsched import Completion, Prediction, Request, RequestLog, Scheduler
from sjfsched._cli import main
from sjfsched.backends import CallableBackend
from sjfsched.predictors import LexicalPredictor
from sjfsched.predictors._corpus import cut_short, load_records, prompt_id_of

pytestmark = pytest.mark.anyio


def _answer(request: Request) -> list[str]:
    n = 5 if "short" in request.text else 60
    return [f"w{i} " for i in range(n)]


@pytest.mark.parametrize("name", ["requests.jsonl", "requests.jsonl.gz"])
async def test_scheduler_logs_completions_in_the_training_schema(tmp_path: Path, name: str) -> None:
    path = tmp_path / "logs" / name
    log = RequestLog(path, model="tiny-model")
    prompts = [f"please give a short answer {i}" for i in range(6)] + [
        f"write a long text {i}" for i in range(6)
    ]
    async with Scheduler(CallableBackend(_answer), on_complete=log) as sched:
        for p in prompts:
            await sched.complete(p)
        await sched.complete(
            Request(messages=[{"role": "user", "content": "short chat"}], options={"model": "x"})
        )
    log.close()
    assert log.written == len(prompts) + 1
    data = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    lines = [json.loads(line) for line in data.decode().splitlines()]
    first = lines[0]
    assert first["prompt"] == prompts[0] and first["prompt_id"] == prompt_id_of(prompts[0])
    assert first["model"] == "tiny-model" and first["output_tokens"] == 5 and first["source"] == "requestlog"
    assert lines[-1]["prompt"] == "short chat"
    records = load_records([path])
    assert [r.output_tokens for r in records[:7]] == [5] * 6 + [60]
    # and it trains: the user's own "Model D"
    out = tmp_path / "model-d.onnx"
    assert main(["train", str(path), "--out", str(out), "--fit-all", "--test-fraction", "0"]) == 0
    mine = LexicalPredictor(out, calibrate=False)
    assert (
        mine.predict(Request("write a long text 99")).tokens
        > mine.predict(Request("a short answer 99")).tokens
    )


async def test_model_name_from_request_options(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with RequestLog(path, source="app1", skip_truncated=True) as log:
        async with Scheduler(CallableBackend(_answer), on_complete=log) as sched:
            await sched.complete("short one", options={"model": "llama3.2:1b"})
            await sched.complete("short two")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(x["model"], x["source"]) for x in lines] == [("llama3.2:1b", "app1"), ("unknown", "app1")]


async def test_truncated_and_empty_answers_are_left_out(tmp_path: Path) -> None:
    from sjfsched import Chunk

    def answer(request: Request) -> list[Chunk]:
        if "empty" in request.text:
            return []
        reason = "length" if "cut" in request.text else "stop"
        return [Chunk("w ", tokens=3, finish_reason=reason)]

    for skip, expected in [(True, ["whole"]), (False, ["whole", "cut off"])]:
        path = tmp_path / f"r{skip}.jsonl"
        with RequestLog(path, skip_truncated=skip) as log:
            async with Scheduler(CallableBackend(answer), on_complete=log) as sched:
                for prompt in ["whole", "cut off", "empty"]:
                    await sched.complete(prompt)
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert [x["prompt"] for x in lines] == expected
        assert all(x["output_tokens"] == 3 for x in lines)


def _done(text: str, tokens: int) -> Completion:
    return Completion(
        request=Request(text), text="x", output_tokens=tokens, prompt_tokens=3, prediction=Prediction(10.0),
        estimate=1.0, submitted=0.0, started=0.0, first_token=None, finished=1.0,
    )  # fmt: skip


def _unfinished(name: str) -> bytes:
    """Half of the bytes a log line is written as: what a crash in the middle of a write leaves."""
    line = (json.dumps({"source": "requestlog", "prompt": "cut " * 40, "output_tokens": 9}) + "\n").encode()
    data = gzip.compress(line) if name.endswith(".gz") else line
    return data[: len(data) // 2]


@pytest.mark.parametrize("name", ["requests.jsonl", "requests.jsonl.gz"])
def test_a_log_reopened_after_a_crash_keeps_every_whole_line(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / name
    with RequestLog(path) as log:
        for i in range(5):
            log(_done(f"before {i}", 10 + i))
    with path.open("ab") as f:
        f.write(_unfinished(name))
    with RequestLog(path) as log:  # the application restarts and logs on
        for i in range(5):
            log(_done(f"after {i}", 20 + i))
    assert "dropped" in caplog.text and "unfinished last line" in caplog.text
    records = load_records([path])
    assert [r.output_tokens for r in records] == [10, 11, 12, 13, 14, 20, 21, 22, 23, 24]


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("notes.csv", b"id,text\n1,first row\n2,last row", "its first line is not a JSON object"),
        ("requests.jsonl", gzip.compress(b'{"prompt": "a"}\n', mtime=0), "it is gzip-compressed"),
        ("requests.jsonl.gz", b'{"prompt": "a", "output_tokens": 1}\n', "it is not gzip-compressed"),
        # zeros before a plain log's first line: its reader refuses them, so nothing appended would read
        ("requests.jsonl", bytes(8) + b'{"prompt": "a", "output_tokens": 1}\n', "its first line is not"),
    ],
)
def test_a_file_that_is_no_log_is_refused_and_left_as_it_was(
    tmp_path: Path, name: str, content: bytes, why: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{name} is not a request log: {why}"):
        RequestLog(path)
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("requests.jsonl", b'\n  \n{"prompt": "a", "output_tokens": 1}\n'),  # blank lines first
        ("requests.jsonl.gz", bytes(64)),  # a crash's zeros where the data was
        ("requests.jsonl.gz", bytes(64) + gzip.compress(b'{"prompt": "a", "output_tokens": 1}\n')),
    ],
)
def test_a_log_the_reader_reads_is_a_log(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    before = len(load_records([path]))
    with RequestLog(path) as log:
        log(_done("appended", 7))
    assert [r.output_tokens for r in load_records([path])][before:] == [7]


def test_a_last_line_that_is_no_json_is_not_dropped_as_a_crash_would_leave(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    log = RequestLog(path)
    content = b'{"prompt": "a", "output_tokens": 1}\nsomething else'
    path.write_bytes(content)  # after the log was made: found when it opens the file to append
    with pytest.raises(ValueError, match="its last line is neither JSON nor a line cut short"):
        log(_done("x", 3))
    assert path.read_bytes() == content


def test_a_whole_last_line_without_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "a", "output_tokens": 3}\n{"prompt": "b", "output_tokens": 4}')
    with RequestLog(path) as log:
        log(_done("c", 5))
    assert [r.output_tokens for r in load_records([path])] == [3, 4, 5]


def test_lines_after_a_crash_remnant_written_by_an_older_version_are_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before the tail was finished on reopening, new lines went straight after
    # the unfinished member; reading gave up there and lost every later line.
    path = tmp_path / "old.jsonl.gz"
    lines = [(json.dumps({"prompt": f"p{i}", "output_tokens": i + 1}) + "\n").encode() for i in range(6)]
    path.write_bytes(
        b"".join(map(gzip.compress, lines[:3])) + _unfinished(".gz") + b"".join(map(gzip.compress, lines[3:]))
    )
    assert [r.output_tokens for r in load_records([path])] == [1, 2, 3, 4, 5, 6]
    assert "an unfinished gzip member after line 3" in caplog.text


@pytest.mark.parametrize("keep", [1, 2, 9, 30])
def test_a_compressed_log_cut_anywhere_in_its_last_line_reads_up_to_it(
    tmp_path: Path, keep: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cut.jsonl.gz"
    lines = [(json.dumps({"prompt": f"p{i}", "output_tokens": i + 1}) + "\n").encode() for i in range(3)]
    path.write_bytes(b"".join(map(gzip.compress, lines[:2])) + gzip.compress(lines[2])[:keep])
    assert [r.output_tokens for r in load_records([path])] == [1, 2]
    assert "cut.jsonl.gz is cut short after line 2" in caplog.text


def test_a_plain_log_cut_in_its_last_line_reads_up_to_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cut.jsonl"
    path.write_bytes(b'{"prompt": "a", "output_tokens": 3}\n' + _unfinished(".jsonl"))
    assert [r.output_tokens for r in load_records([path])] == [3]
    assert "cut.jsonl is cut short after line 1" in caplog.text
    path.write_bytes(b'{"prompt": "a", "output_tokens": 3}\nnot json\n{"prompt": "b", "output_tokens": 4}\n')
    with pytest.raises(ValueError, match=r"cut\.jsonl:2: not JSON"):
        load_records([path])  # a bad line in the middle is an error, not a crash's remnant


def test_a_plain_log_cut_at_any_byte_of_its_last_line_reads_up_to_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cut.jsonl"
    first = b'{"prompt": "a", "output_tokens": 3}\n'
    text = 'say "hi" {not a brace} [x] \u00e9t\u00e9 \\'
    extra = {"a": [1, {"b": "}"}], "c": {}}
    last = json.dumps({"prompt": text, "extra": extra, "output_tokens": 5}, ensure_ascii=False).encode()
    for keep in range(1, len(last)):
        path.write_bytes(first + last[:keep] + bytes(keep % 3))  # a crash may leave zeros after it
        assert cut_short(last[:keep]), last[:keep]
        assert len(load_records([path])) == 1, last[:keep]
    # Whole but for its newline, lost with the page a crash filled with zeros (a reviewer's case)
    path.write_bytes(first + last + bytes(16))
    assert cut_short(last + bytes(16))
    assert len(load_records([path])) == 1
    with RequestLog(path) as log:  # dropped as a crash's remnant; the log appends after it
        log(_done("after", 4))
    assert [r.output_tokens for r in load_records([path])] == [3, 4]


@pytest.mark.parametrize(
    "last",
    [
        b'{"prompt": "b", "output_tokens": 4,}',  # a trailing comma
        b"{'prompt': 'b', 'output_tokens': 4}",  # single quotes
        b'{"prompt": "b", "output_tokens": 4}}',
        b'{"prompt": "b", "output_tokens": 4} and more',
        b'{"prompt": "b"}\r{"prompt": "c"}',  # old Mac line ends
        b"prompt,output_tokens",
    ],
)
def test_a_last_line_written_whole_with_a_mistake_is_an_error_not_a_crash(
    tmp_path: Path, last: bytes
) -> None:
    # Hand-written files often end without a newline: a typo there is named, not skipped as a
    # crash's remnant; and RequestLog refuses to append to such a file rather than delete the line.
    path = tmp_path / "hand.jsonl"
    content = b'{"prompt": "a", "output_tokens": 3}\n' + last
    path.write_bytes(content)
    assert not cut_short(last)
    with pytest.raises(ValueError, match=r"hand\.jsonl:2: not JSON"):
        load_records([path])
    log = RequestLog(path)
    with pytest.raises(ValueError, match=r"hand\.jsonl is not a request log: its last line is neither JSON"):
        log(_done("x", 3))
    assert path.read_bytes() == content


def test_lines_that_break_the_json_reader_name_their_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "output_tokens": 3}\n' + "[" * 100_000 + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not JSON \(nested too deeply\)"):
        load_records([path])
    path.write_text('{"prompt": "a", "output_tokens": 1' + "0" * 400 + "}\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: 'output_tokens' must be a finite number"):
        load_records([path])
    path.write_bytes(b'{"prompt": "\xff", "output_tokens": 3}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not UTF-8 \(invalid start byte at byte 12\)$"):
        load_records([path])
    # Found by a reviewer: a gzip file named .jsonl said only "not UTF-8 (... at byte 1)". Its
    # header holds a time: where no byte of it was a newline, the file read as one line cut
    # short, with a warning and no record (CI met one such time).
    without_a_newline = gzip.compress(b'{"prompt": "a", "output_tokens": 3}\n', mtime=0).replace(b"\n", b"")
    datas = [gzip.compress(b'{"prompt": "a", "output_tokens": 3}\n', mtime=t) for t in range(64)]
    for data in [without_a_newline, *datas]:  # the reader looks at the bytes, not at the whole gzip
        path.write_bytes(data)
        with pytest.raises(
            ValueError, match=r"bad\.jsonl:1: not UTF-8 \(.*\): gzip data; name the file \.jsonl\.gz"
        ):
            load_records([path])
    # The mirror case (a reviewer): plain lines named .gz said "corrupt gzip data after line 0".
    named_gz = path.with_name("bad.jsonl.gz")
    named_gz.write_bytes(b'{"prompt": "a", "output_tokens": 3}\n')
    with pytest.raises(
        ValueError,
        match=r"bad\.jsonl\.gz: not gzip data; if it is plain JSON lines, name the file without \.gz$",
    ):
        load_records([named_gz])


def _line(i: int) -> bytes:
    return (json.dumps({"prompt": f"p{i}", "output_tokens": i + 1}) + "\n").encode()


def _tokens(path: Path) -> list[float]:
    return [r.output_tokens for r in load_records([path])]


def test_opening_a_log_keeps_the_whole_lines_of_a_member_cut_short(tmp_path: Path) -> None:
    # One gzip member of many lines, as gzip or another tool writes it, cut short
    path = tmp_path / "theirs.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(_line(i) for i in range(2000)))[:-4])  # its checksum cut
    assert len(_tokens(path)) == 2000
    with RequestLog(path) as log:
        log(_done("new", 7))
    assert _tokens(path) == [*range(1, 2001), 7]
    cut = gzip.compress(b"".join(_line(i) for i in range(2000)))
    path.write_bytes(cut[: len(cut) // 2])  # in the middle of a line
    before = _tokens(path)
    with RequestLog(path) as log:
        log(_done("new", 7))
    assert _tokens(path) == [*before, 7]


def test_a_crash_that_left_zeros_or_no_final_newline_does_not_spoil_a_compressed_log(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl.gz"
    last = gzip.compress(_line(2))
    path.write_bytes(
        gzip.compress(_line(0)) + gzip.compress(_line(1)) + last[: len(last) // 2] + b"\0" * 4096
    )
    assert _tokens(path) == [1, 2]
    with RequestLog(path) as log:
        log(_done("new", 7))
    assert _tokens(path) == [1, 2, 7]
    path.write_bytes(gzip.compress(_line(0) + b'{"prompt": "b", "output_tokens": 5}'))  # no final newline
    with RequestLog(path) as log:
        log(_done("new", 7))
    assert _tokens(path) == [1, 5, 7]


@pytest.mark.parametrize("before_boundary", [1, 5, 20])
def test_an_unfinished_member_just_before_a_read_boundary_is_passed_over(
    tmp_path: Path, before_boundary: int
) -> None:
    # scan_gzip reads 1 MiB at a time; the unfinished member ends just before a
    # boundary, so the damage shows only in the next read
    head = b"".join(gzip.compress(_line(i)) for i in range(100))
    unfinished = gzip.compress(_line(100))[:30]
    after = b"".join(gzip.compress(_line(i)) for i in range(101, 131))
    pad = (1 << 20) - before_boundary - len(unfinished) - len(head)
    path = tmp_path / "old.jsonl.gz"
    path.write_bytes(head + b"\0" * pad + unfinished + after)
    assert _tokens(path) == [i + 1 for i in range(131) if i != 100]


def test_a_crashs_zero_fill_is_never_read_as_data(tmp_path: Path) -> None:
    """Zeros after an unfinished member, with members an older version appended after them.

    Fed to the decoder, zeros can decode as made-up text without an error: every
    cut point of one member is tried, and nothing but whole written lines comes back.
    """
    path = tmp_path / "log.jsonl.gz"
    before = [gzip.compress(_line(i)) for i in range(3)]
    unfinished = gzip.compress(_line(3))
    after = [gzip.compress(_line(i)) for i in range(4, 6)]
    for cut in range(1, len(unfinished) - 8):
        for tail in (b"", b"".join(after)):
            path.write_bytes(b"".join(before) + unfinished[:cut] + b"\0" * 4096 + tail)
            want = [1, 2, 3, 5, 6] if tail else [1, 2, 3]
            # the cut line itself comes back only if the cut spared all of it
            assert _tokens(path) in (want, sorted([*want, 4])), cut


def test_reopening_a_log_never_removes_a_line_reading_returned(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl.gz"
    whole = gzip.compress(_line(9))
    for cut in range(1, len(whole)):
        for zeros in (0, 1, 3, 4096):
            path.write_bytes(gzip.compress(_line(0)) + whole[:cut] + b"\0" * zeros)
            try:
                read = _tokens(path)
            except ValueError:
                continue  # a cut in the header followed by a few zeros: not readable as a crash
            with RequestLog(path) as log:
                log(_done("new", 77))
            assert _tokens(path) == [*read, 77], (cut, zeros)


# ---- found by a reviewer (stop 21), each with a reproducer


def _completion(text: str, tokens: int = 5) -> Completion:
    return Completion(
        request=Request(text),
        text="y",
        output_tokens=tokens,
        prompt_tokens=3,
        prediction=Prediction(10.0),
        estimate=1.0,
        submitted=0.0,
        started=0.0,
        first_token=None,
        finished=1.0,
    )


@pytest.mark.parametrize("name", ["shared.jsonl", "shared.jsonl.gz"])
def test_a_log_opened_while_another_writes_loses_none_of_its_lines(tmp_path: Path, name: str) -> None:
    """A second RequestLog on the same path took the first one's line under way for a crash's
    remnant and truncated it away, with every line appended since (25 of 40 large lines lost)."""
    import threading

    path = tmp_path / name
    blob = "x" * 2_000_000  # a line long enough to be caught half-written
    stop = threading.Event()
    reopened = [0]

    def reopen() -> None:
        while not stop.is_set():
            with RequestLog(path) as log:
                log(_completion(f"small {reopened[0]}"))
            reopened[0] += 1

    thread = threading.Thread(target=reopen)
    thread.start()
    try:
        with RequestLog(path) as big:
            for i in range(15):
                big(_completion(f"big {i} {blob}"))
    finally:
        stop.set()
        thread.join(60)
    prompts = [r.prompt for r in load_records([path])]
    assert sorted(p.split(" ", 2)[1] for p in prompts if p.startswith("big ")) == sorted(
        str(i) for i in range(15)
    )
    assert sum(p.startswith("small ") for p in prompts) == reopened[0] > 0


def test_a_line_that_cannot_be_written_whole_is_taken_back(tmp_path: Path) -> None:
    """A full disk (here a file size limit, in a child interpreter): the calls that failed wrote
    part of their line anyway, glued to the next, or wrote it later from Python's buffer, and a
    close() that failed left the log unusable."""
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "full.jsonl"
    code = textwrap.dedent(
        f"""
        import json, resource, signal
        from sjfsched import Completion, Prediction, Request, RequestLog
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
        log = RequestLog({str(path)!r})
        failed = []
        for i in range(30):
            c = Completion(request=Request(f"prompt {{i}} " + "z" * 200), text="y", output_tokens=5,
                           prompt_tokens=3, prediction=Prediction(10.0), estimate=1.0, submitted=0.0,
                           started=0.0, first_token=None, finished=1.0)
            try:
                log(c)
            except OSError:
                failed.append(i)
        log.close()
        print(json.dumps({{"failed": failed, "written": log.written}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failed"], "the limit was never reached"
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a whole line
    kept = [json.loads(line)["prompt"].split()[1] for line in lines[:-1]]
    assert kept == [str(i) for i in range(30) if i not in result["failed"]]
    assert result["written"] == len(kept)


def test_an_unwritable_log_is_refused_at_once(tmp_path: Path) -> None:
    import os

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who may write anywhere (root): no read-only folder to test")
        with pytest.raises(
            PermissionError, match=r"cannot write .*log\.jsonl: the folder .*ro is not writable"
        ):
            RequestLog(folder / "log.jsonl")
    finally:
        folder.chmod(0o700)


def test_an_integer_prompt_id_is_kept_zero_included(tmp_path: Path) -> None:
    # Found by a reviewer: 0 was falsy, so two answers filed under prompt id 0 were each given
    # their prompt's hash instead, and landed apart in a split by prompt id.
    path = tmp_path / "ids.jsonl"
    lines = [{"prompt": p, "output_tokens": 3, "prompt_id": i} for p, i in (("a", 0), ("b", 0), ("c", 17))]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [r.prompt_id for r in load_records([path])] == ["0", "0", "17"]


def test_a_log_deleted_or_rotated_while_open_goes_on_at_its_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log kept its file open: after a delete its lines went to the deleted file, after a
    rename (logrotate's default) into the rotated one, silently (found by a reviewer)."""
    path = tmp_path / "requests.jsonl"
    with RequestLog(path) as log:
        log(_done("first", 10))
        path.rename(tmp_path / "requests.jsonl.1")  # rotated
        log(_done("second", 11))
        assert [r.output_tokens for r in load_records([path])] == [11]
        path.unlink()  # deleted
        log(_done("third", 12))
        log(_done("fourth", 13))
    assert [r.output_tokens for r in load_records([path])] == [12, 13]
    assert [r.output_tokens for r in load_records([tmp_path / "requests.jsonl.1"])] == [10]
    assert log.written == 4
    # A folder of logs: the rotated one is named in the warning of what is not read.
    caplog.clear()
    assert [r.output_tokens for r in load_records([tmp_path])] == [12, 13]
    assert "not requests.jsonl.1" in caplog.text


@pytest.mark.parametrize("name", ["requests.jsonl", "requests.jsonl.gz"])
def test_another_writers_crash_mid_line_is_mended_before_the_next_line(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two writers of one path, one crashes mid-line: the other wrote straight after the half
    line, and `sjfsched train` refused the whole log at that line (found by a reviewer)."""
    path = tmp_path / name
    with RequestLog(path) as log:
        log(_done("before", 10))
        with path.open("ab") as f:  # the other writer, cut off in the middle of its line
            f.write(_unfinished(name))
        log(_done("after", 11))
        log(_done("later", 12))
    assert [r.output_tokens for r in load_records([path])] == [10, 11, 12]
    if name.endswith(".jsonl"):
        assert "dropped" in caplog.text and "unfinished last line" in caplog.text


def test_an_answer_of_more_tokens_than_training_reads_is_not_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A miscounted answer (20 million tokens: a backend may report up to a billion) was logged,
    and `sjfsched train` then refused the whole log at its line (found by a reviewer)."""
    path = tmp_path / "requests.jsonl"
    with RequestLog(path) as log:
        log(_done("fine", 10))
        log(_done("miscounted", 20_000_000))
        log(_done("fine again", 12))
    assert log.written == 2 and "not logged: an answer of 20000000 tokens" in caplog.text
    assert [r.output_tokens for r in load_records([path])] == [10, 12]


def test_a_prompt_count_the_benchmarks_would_refuse_is_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Logged as given, 20 million prompt tokens made `sjfsched bench` refuse the whole log.
    import attrs

    from sjfsched._bench._traces import load_trace

    path = tmp_path / "requests.jsonl"
    with RequestLog(path) as log:
        for i in range(3):
            prompt_tokens = 20_000_000 if i == 1 else 3
            log(attrs.evolve(_completion(f"prompt {i}"), prompt_tokens=prompt_tokens))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line.get("input_tokens") for line in lines] == [3, None, 3]
    assert "a prompt of 20000000 tokens logged without its count" in caplog.text
    assert len(load_trace(str(path), tmp_path).items) == 3


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX's")
@pytest.mark.parametrize("reader_late", [False, True])
def test_a_log_on_a_pipe_is_written_through_it(tmp_path: Path, reader_late: bool) -> None:
    # Its head was read to check it was a log: on a pipe (or /dev/stdout piped, a terminal) the
    # read waited for ever, and the program hung as it made its RequestLog. And the pipe was
    # opened for reading too, which does not wait for a reader: a line written before the
    # reader came was lost with the pipe, and the reader then waited for ever (a CI run under
    # load, where the reader thread started first but opened the pipe late).
    pipe = tmp_path / "requests.pipe"
    os.mkfifo(pipe)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()), daemon=True)
    if not reader_late:
        reader.start()
    done = threading.Event()

    def write() -> None:
        with RequestLog(pipe) as log:
            log(_completion("through a pipe"))
        done.set()

    threading.Thread(target=write, daemon=True).start()
    if reader_late:
        time.sleep(0.3)  # the writer is at the pipe by now
        reader.start()
    assert done.wait(30), "RequestLog on a pipe hung"
    reader.join(5)
    assert got and json.loads(got[0])["prompt"] == "through a pipe"


def test_a_log_that_begins_with_a_byte_order_mark_is_appended_to(tmp_path: Path) -> None:
    """The reader takes a log a Windows tool saved with a BOM; the log refused it, saying its
    first line was not a JSON object (found by a reviewer)."""
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "from a tool", "output_tokens": 7}\r\n')
    with RequestLog(path) as log:
        log(_done("mine", 8))
    assert [r.output_tokens for r in load_records([path])] == [7, 8]


def test_a_relative_log_path_stays_where_it_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checking the path before each line followed a later chdir() to another folder's file
    (found by a second-pass review)."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    with RequestLog("requests.jsonl") as log:
        log(_done("one", 10))
        monkeypatch.chdir(second)
        log(_done("two", 11))
    assert [r.output_tokens for r in load_records([first / "requests.jsonl"])] == [10, 11]
    assert not (second / "requests.jsonl").exists()


def test_bytes_another_program_appended_do_not_stop_the_logging(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Foreign bytes without a newline at the end of an open log: every later line raised, and
    nothing more was logged (found by a second-pass review). Opening such a log still refuses it."""
    path = tmp_path / "requests.jsonl"
    with RequestLog(path) as log:
        log(_done("before", 10))
        with path.open("ab") as f:
            f.write(b"hello")
        log(_done("after", 11))
    assert "another program wrote 5 bytes that are not a log line" in caplog.text
    lines = path.read_bytes().split(b"\n")
    assert lines[1] == b"hello" and json.loads(lines[2])["output_tokens"] == 11
    with path.open("ab") as f:
        f.write(b"hello")
    with pytest.raises(ValueError, match="is not a request log: its last line is neither JSON"):
        RequestLog(path)(_done("refused", 12))


@pytest.mark.parametrize(
    "rotated",
    [
        "requests.jsonl.1",
        "requests.jsonl.2.gz",
        "requests.jsonl-20240601",
        "requests.jsonl.2024-06-01",
        "requests.jsonl.gz.1",
        "requests.jsonl.gz-20240601",
    ],
)
def test_rotated_logs_in_a_folder_are_named_as_not_read(
    tmp_path: Path, rotated: str, caplog: pytest.LogCaptureFixture
) -> None:
    with RequestLog(tmp_path / "requests.jsonl") as log:
        log(_done("kept", 10))
    (tmp_path / rotated).write_bytes(b"")
    assert [r.output_tokens for r in load_records([tmp_path])] == [10]
    assert f"not {rotated}" in caplog.text


def test_a_directory_is_refused_when_the_log_is_made(tmp_path: Path) -> None:
    # It was taken: every line then failed to be written (IsADirectoryError), logged and lost.
    folder = tmp_path / "requests.jsonl"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"requests\.jsonl is not a request log: it is a directory"):
        RequestLog(folder)
