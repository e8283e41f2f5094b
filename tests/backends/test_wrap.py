"""sjfsched.wrap(llm): the Llama API, thread-safe and shortest-first, on a real model."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import inspect
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from llama_cpp import Llama
from llama_cpp.llama_cache import LlamaRAMCache

import sjfsched
from sjfsched import SchedulerClosed
from sjfsched.backends._llama import llama_lock
from sjfsched.predictors import HeuristicPredictor

GREEDY: dict[str, Any] = {"temperature": 0.0}


@pytest.fixture
def wrapped(tiny_llm: Llama) -> Any:
    with sjfsched.wrap(tiny_llm, predictor=HeuristicPredictor()) as w:
        yield w


def shape(value: Any) -> Any:
    """The keys of a response, recursively (values differ: ids, timestamps)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def test_create_completion_returns_what_llama_returns(wrapped: Any, tiny_llm: Llama) -> None:
    got = wrapped.create_completion("Once upon a time", max_tokens=20, **GREEDY)
    direct: Any = tiny_llm.create_completion("Once upon a time", max_tokens=20, **GREEDY)
    assert shape(got) == shape(direct)
    assert got["choices"] == direct["choices"]
    assert got["usage"] == direct["usage"]
    # Positional arguments bind as in Llama.create_completion(prompt, suffix, max_tokens, ...).
    positional = wrapped("Once upon a time", None, 20, temperature=0.0)
    assert positional["choices"] == direct["choices"]
    stats = wrapped.scheduler.statistics()
    assert (stats.completed, stats.running, stats.waiting) == (2, 0, 0)


def test_chat_and_token_prompts(wrapped: Any, tiny_llm: Llama) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    got = wrapped.create_chat_completion(messages=messages, max_tokens=10, **GREEDY)
    direct: Any = tiny_llm.create_chat_completion(messages=messages, max_tokens=10, **GREEDY)  # type: ignore[arg-type]
    assert shape(got) == shape(direct)
    assert got["choices"] == direct["choices"]
    tokens = tiny_llm.tokenize(b"Once upon")
    assert wrapped.create_completion(tokens, max_tokens=5, **GREEDY)["usage"]["prompt_tokens"] == len(tokens)


def test_streaming_iterators_match_llama(wrapped: Any, tiny_llm: Llama) -> None:
    chunks = list(wrapped.create_completion("Once upon a time", max_tokens=15, stream=True, **GREEDY))
    direct: Any = list(tiny_llm.create_completion("Once upon a time", max_tokens=15, stream=True, **GREEDY))
    assert [shape(c) for c in chunks] == [shape(c) for c in direct]
    assert [c["choices"] for c in chunks] == [c["choices"] for c in direct]
    chat = list(
        wrapped.create_chat_completion(
            [{"role": "user", "content": "Hi"}], max_tokens=6, stream=True, **GREEDY
        )
    )
    assert chat[-1]["choices"][0]["finish_reason"] == "length"
    assert sum(1 for c in chat if c["choices"][0]["delta"].get("content")) == 6
    stats = wrapped.scheduler.statistics()
    assert (stats.completed, stats.running) == (2, 0)


def test_sixteen_threads_get_intact_answers(wrapped: Any, tiny_llm: Llama) -> None:
    """Every thread's answer equals the answer of a serial run with the same input."""

    def job(i: int) -> Callable[[Any], str]:
        prompt = f"Thread {i} says:"
        if i % 4 == 0:
            return lambda llm: "".join(
                c["choices"][0]["text"]
                for c in llm.create_completion(prompt, max_tokens=20 + i, stream=True, **GREEDY)
            )
        if i % 4 == 1:
            return lambda llm: llm.create_chat_completion(
                [{"role": "user", "content": prompt}], max_tokens=20 + i, **GREEDY
            )["choices"][0]["message"]["content"]
        return lambda llm: llm(prompt, max_tokens=20 + i, **GREEDY)["choices"][0]["text"]

    jobs = [job(i) for i in range(16)]
    serial = [j(tiny_llm) for j in jobs]
    assert len(set(serial)) >= 12  # the answers differ, so a mix-up would show
    start = threading.Barrier(16)

    def run(i: int) -> str:
        start.wait()
        return jobs[i](wrapped)

    with ThreadPoolExecutor(16) as pool:
        threaded = list(pool.map(run, range(16), timeout=120))
    assert threaded == serial
    stats = wrapped.scheduler.statistics()
    assert (stats.completed, stats.failed, stats.cancelled, stats.running) == (16, 0, 0, 0)


def test_calls_are_admitted_shortest_first(tiny_llm: Llama) -> None:
    ended: list[str] = []  # in the order the scheduler ended them, not the order threads woke
    with sjfsched.wrap(
        tiny_llm, predictor=HeuristicPredictor(), on_complete=lambda c: ended.append(c.request.text)
    ) as wrapped:
        # Hold the model with a streaming call while the others queue up.
        holder: Any = wrapped.create_completion("Hold", max_tokens=200, stream=True)
        next(holder)

        def call(kind: str, max_tokens: int) -> None:
            wrapped.create_completion(f"A {kind} one", max_tokens=max_tokens)

        threads = [threading.Thread(target=call, args=("long", 120)) for _ in range(3)]
        threads += [threading.Thread(target=call, args=("short", 3)) for _ in range(3)]
        for t in threads:  # the long ones arrive first
            t.start()
            time.sleep(0.01)
        deadline = time.monotonic() + 10
        while wrapped.scheduler.statistics().waiting < 6:
            assert time.monotonic() < deadline, "the calls did not queue"
            time.sleep(0.005)
        for _ in holder:
            pass
        for t in threads:
            t.join(timeout=60)
    assert ended == ["Hold"] + ["A short one"] * 3 + ["A long one"] * 3


def test_a_numpy_max_tokens_is_the_requests_limit(tiny_llm: Llama) -> None:
    # Request takes numpy's integers; wrap() read only int's, and ranked such a call unlimited.
    import numpy as np

    seen: list[int | None] = []
    with sjfsched.wrap(tiny_llm, on_complete=lambda c: seen.append(c.request.max_tokens)) as wrapped:
        got: Any = wrapped.create_completion("Once upon a time", max_tokens=np.int64(5), **GREEDY)
    assert got["usage"]["completion_tokens"] <= 5
    assert seen == [5]


def test_a_stream_read_to_its_finish_reason_frees_the_model(tiny_llm: Llama) -> None:
    # A reader breaking on the last chunk's finish_reason left llama's generator suspended,
    # the model held: the same thread's next call waited for itself, for ever.
    with sjfsched.wrap(tiny_llm) as wrapped:
        result: list[Any] = []

        def read_then_ask() -> None:
            stream: Any = wrapped.create_completion("Once upon a time", max_tokens=6, stream=True, **GREEDY)
            for chunk in stream:
                if chunk["choices"][0]["finish_reason"]:
                    break
            answer: Any = wrapped("Next", max_tokens=2, **GREEDY)
            result.append(answer["choices"][0]["finish_reason"])

        thread = threading.Thread(target=read_then_ask, daemon=True)
        thread.start()
        thread.join(60)
        assert result == ["length"]
        stats = wrapped.scheduler.statistics()
    assert (stats.completed, stats.running) == (2, 0)


class _FullDiskCache(LlamaRAMCache):
    """A cache whose save fails, as a LlamaDiskCache's does on a full disk."""

    def __setitem__(self, key: Any, value: Any) -> None:
        raise OSError(28, "No space left on device")


def _read_until_raised(stream: Any) -> tuple[list[Any], BaseException | None]:
    chunks: list[Any] = []
    try:
        for chunk in stream:
            chunks.append(chunk)  # noqa: PERF402 (the chunks read before the error, kept)
    except Exception as exc:
        return chunks, exc
    return chunks, None


def test_an_error_after_the_last_chunk_comes_after_that_chunk(tiny_llm: Llama) -> None:
    # llama-cpp-python saves its cache after yielding the answer's last chunk: if that
    # fails, a caller reading the model itself gets the chunk, then the error. The
    # wrapper holds the last chunk back until the model is free, and lost it.
    tiny_llm.set_cache(_FullDiskCache())
    try:
        direct, direct_error = _read_until_raised(
            tiny_llm.create_completion("Once upon a time", max_tokens=6, stream=True, **GREEDY)
        )
        with sjfsched.wrap(tiny_llm) as wrapped:
            chunks, error = _read_until_raised(
                wrapped.create_completion("Once upon a time", max_tokens=6, stream=True, **GREEDY)
            )
            stats = wrapped.scheduler.statistics()
            wrapped.set_cache(None)
            after: Any = wrapped("Next", max_tokens=2, **GREEDY)  # the model was let go
    finally:
        tiny_llm.set_cache(None)
    assert isinstance(direct_error, OSError)
    assert isinstance(error, OSError) and error.errno == 28
    assert [c["choices"] for c in chunks] == [c["choices"] for c in direct]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert (stats.completed, stats.failed, stats.running) == (0, 1, 0)
    assert after["choices"][0]["finish_reason"] == "length"


class _CallTimeout(Exception):
    """What a call-timeout library (func_timeout) raises in the thread it gives up on."""


def test_an_exception_landing_as_the_model_is_freed_leaves_its_lock_free(tiny_llm: Llama) -> None:
    # A timed acquire() in steps let an exception raised in the thread land just after it had
    # taken the lock, before that was noted: the lock was held by nobody, for ever.
    with sjfsched.wrap(tiny_llm) as w:
        lock = llama_lock(tiny_llm)
        raise_in = ctypes.pythonapi.PyThreadState_SetAsyncExc
        for _ in range(12):
            lock.acquire()  # the model is busy
            thread = threading.Thread(target=_call_until_stopped, args=(w,), daemon=True)
            thread.start()
            time.sleep(0.05)
            assert thread.ident is not None
            raise_in(ctypes.c_ulong(thread.ident), ctypes.py_object(_CallTimeout))
            lock.release()  # freed as the exception lands
            thread.join(10)
            assert not thread.is_alive()
            assert lock.acquire(timeout=5), "the lock was left held"
            lock.release()


@pytest.mark.parametrize(
    ("where", "after"),
    [
        # just after the note was made (as the guard's __exit__() returns): it was left behind
        ("_HOLDING[self._llm] = holding", 1),
        # in its removal, once the note was looked up: the note was left behind
        ("del _HOLDING[self._llm]", 0),
    ],
    ids=["made", "removed"],
)
def test_an_exception_landing_by_the_holding_note_leaves_no_note_that_refuses(
    tiny_llm: Llama, where: str, after: int
) -> None:
    # An exception landing in the thread (a call timeout's) as the note "this thread holds the
    # model" was made or removed left it: the model was free, and this thread's next calls, and
    # close() from it, were refused. Raised there by a trace function.
    from sjfsched import _wrap

    holding = _wrap.ScheduledLlama._holding.__wrapped__  # type: ignore[attr-defined]
    lines, first = inspect.getsourcelines(holding)
    target = first + after + next(i for i, line in enumerate(lines) if where in line)

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        return local if event == "call" and frame.f_code is holding.__code__ else None

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == target:
            sys.settrace(None)
            raise _CallTimeout
        return local

    w = sjfsched.wrap(tiny_llm)
    sys.settrace(tracer)
    try:
        with pytest.raises(_CallTimeout):
            w.create_completion("Once", max_tokens=2)
    finally:
        sys.settrace(None)
    answer: Any = w.create_completion("Once", max_tokens=2)  # not refused
    w.close()  # nor this
    assert answer["choices"][0]["finish_reason"] == "length"
    assert tiny_llm not in _wrap._HOLDING


def _call_until_stopped(w: Any) -> None:
    with contextlib.suppress(_CallTimeout):
        w.create_completion("Once", max_tokens=2)


def test_closing_from_the_thread_that_handed_its_stream_to_another_waits_for_it(tiny_llm: Llama) -> None:
    # wrap()'s close() waits for streams other threads read; the scheduler refused it, taking
    # the thread that opened the stream for its reader.
    w = sjfsched.wrap(tiny_llm)
    stream: Any = w.create_completion("Once upon a time", max_tokens=30, stream=True, **GREEDY)
    next(stream)
    texts: list[str] = []
    reading = threading.Event()

    def read_on() -> None:
        for chunk in stream:
            texts.append(chunk["choices"][0]["text"])
            reading.set()
            time.sleep(0.01)

    reader = threading.Thread(target=read_on, daemon=True)
    reader.start()
    assert reading.wait(10)
    w.close()
    reader.join(10)
    assert len(texts) == 30 and w.scheduler.closed  # 29 tokens, then the finish chunk
    assert w.scheduler.statistics().completed == 1


def test_a_wrong_argument_is_named_with_its_method_as_llama_names_it(wrapped: Any, tiny_llm: Llama) -> None:
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("create_completion", ("Once",), {"max_tokenz": 5}),
        ("create_completion", (), {"max_tokens": 5}),
        ("create_chat_completion", (), {"messages": [], "max_tokenz": 5}),
    ]
    for name, args, kwargs in calls:
        with pytest.raises(TypeError) as direct:
            getattr(tiny_llm, name)(*args, **kwargs)
        with pytest.raises(TypeError) as ours:
            getattr(wrapped, name)(*args, **kwargs)
        said = str(ours.value)
        assert said.startswith(f"Llama.{name}() ") and str(direct.value).startswith(f"Llama.{name}() ")
        assert ("max_tokenz" in said) is ("max_tokenz" in str(direct.value))
    assert wrapped.scheduler.statistics().completed == 0


def test_an_abandoned_stream_frees_the_model(wrapped: Any, tiny_llm: Llama) -> None:
    stream = wrapped.create_completion("Never mind", max_tokens=300, stream=True)
    next(stream)
    assert llama_lock(tiny_llm).locked()
    stream.close()  # what leaving a for loop and dropping the iterator does
    assert not llama_lock(tiny_llm).locked()
    assert wrapped("Next!", max_tokens=4)["usage"]["completion_tokens"] == 4
    stats = wrapped.scheduler.statistics()
    assert (stats.cancelled, stats.completed, stats.running) == (1, 1, 0)


def test_other_attributes_are_the_llamas_and_close_stops_calls(tiny_llm: Llama) -> None:
    wrapped = sjfsched.wrap(tiny_llm)
    assert wrapped.tokenize(b"abc") == tiny_llm.tokenize(b"abc")
    assert wrapped.llm is tiny_llm
    wrapped.close()
    with pytest.raises(SchedulerClosed):
        wrapped("too late", max_tokens=2)


def test_wrap_refuses_what_is_not_a_llama() -> None:
    with pytest.raises(TypeError, match=r"needs a llama_cpp\.Llama, got object$"):
        sjfsched.wrap(object())  # type: ignore[arg-type]
    # A model's path, a newcomer's first try, says what to give instead.
    with pytest.raises(TypeError, match=r"got str: give llama_cpp.Llama\(path, verbose=False\)"):
        sjfsched.wrap("model.gguf")  # type: ignore[arg-type]
    from sjfsched.backends import LlamaCppBackend

    with pytest.raises(TypeError, match=r"got PosixPath: load it with LlamaCppBackend.from_path\(path\)"):
        LlamaCppBackend(Path("model.gguf"))  # type: ignore[arg-type]


def test_a_streamed_call_keeps_its_logit_bias(wrapped: Any, tiny_llm: Llama) -> None:
    forced = tiny_llm.tokenize(b"!", add_bos=False)[-1]
    options: Any = {"max_tokens": 6, "logit_bias": {forced: 100.0}, **GREEDY}
    chunks = list(wrapped.create_completion("Once", stream=True, **options))
    direct: Any = tiny_llm.create_completion("Once", **options)
    assert "".join(c["choices"][0]["text"] for c in chunks) == direct["choices"][0]["text"]
    assert direct["choices"][0]["text"] == tiny_llm.detokenize([forced] * 6).decode()


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_stopped_by_a_stop_string_reports_llama_cpps_count(tiny_llm: Llama, stream: bool) -> None:
    first: Any = tiny_llm.create_completion("Once upon a time", max_tokens=60, **GREEDY)
    greedy = first["choices"][0]["text"]
    stop = greedy[20:22]  # a piece of text the model will write
    options: Any = {"max_tokens": 60, "stop": [stop], **GREEDY}
    direct: Any = tiny_llm.create_completion("Once upon a time", **options)
    assert direct["choices"][0]["finish_reason"] == "stop"
    completions: list[Any] = []
    with sjfsched.wrap(tiny_llm, predictor=HeuristicPredictor(), on_complete=completions.append) as w:
        got: Any = w.create_completion("Once upon a time", stream=stream, **options)
        if stream:
            got = list(got)
    assert [c.output_tokens for c in completions] == [direct["usage"]["completion_tokens"]]
    assert "sample" not in vars(tiny_llm)


@pytest.mark.parametrize("stream", [False, True])
def test_an_empty_prompt_reports_llama_cpps_count(tiny_llm: Llama, stream: bool) -> None:
    """llama-cpp-python starts an empty prompt's answer with the BOS and counts it; streams were 1 short."""
    direct: Any = tiny_llm.create_completion("", max_tokens=10, **GREEDY)
    completions: list[Any] = []
    with sjfsched.wrap(tiny_llm, predictor=HeuristicPredictor(), on_complete=completions.append) as w:
        got: Any = w.create_completion("", max_tokens=10, stream=stream, **GREEDY)
        if stream:
            got = list(got)
    assert [c.output_tokens for c in completions] == [direct["usage"]["completion_tokens"]]


def test_an_abandoned_stream_collected_on_the_loops_thread_frees_the_model(wrapped: Any) -> None:
    """The garbage collector may finalise a dropped stream on the scheduler's own thread."""
    import gc

    class Holder:  # a reference cycle holding the iterator: only the collector frees it
        pass

    holder = Holder()
    holder.cycle = holder  # type: ignore[attr-defined]
    holder.iterator = wrapped.create_completion("Once upon a time", max_tokens=50, stream=True, **GREEDY)  # type: ignore[attr-defined]
    next(holder.iterator)  # type: ignore[attr-defined]
    del holder
    gc.disable()
    try:
        wrapped.scheduler.call(gc.collect)  # collected on the loop's thread
    finally:
        gc.enable()
    done = threading.Event()

    def later() -> None:
        wrapped("Next!", max_tokens=2)
        done.set()

    threading.Thread(target=later, daemon=True).start()
    assert done.wait(20), "the model stayed taken"
    stats = wrapped.scheduler.statistics()
    assert (stats.running, stats.cancelled, stats.completed) == (0, 1, 1)


def test_a_streamed_call_stopped_by_stopping_criteria_reports_llama_cpps_count(tiny_llm: Llama) -> None:
    from llama_cpp import StoppingCriteriaList

    def criteria() -> Any:
        calls = [0]

        def stop(ids: Any, logits: Any) -> bool:
            calls[0] += 1
            return calls[0] >= 5

        return StoppingCriteriaList([stop])

    direct: Any = tiny_llm.create_completion("Once", max_tokens=20, stopping_criteria=criteria(), **GREEDY)
    completions: list[Any] = []
    with sjfsched.wrap(tiny_llm, predictor=HeuristicPredictor(), on_complete=completions.append) as w:
        list(w.create_completion("Once", max_tokens=20, stream=True, stopping_criteria=criteria(), **GREEDY))
    assert [c.output_tokens for c in completions] == [direct["usage"]["completion_tokens"]] == [4]


@pytest.mark.parametrize("concurrency", [2, 3, True])
def test_concurrency_other_than_one_is_refused(tiny_llm: Llama, concurrency: Any) -> None:
    """Calls admitted together would only queue on the Llama's lock, in lock order, not shortest first."""
    with pytest.raises(ValueError, match="concurrency must be 1"):
        sjfsched.wrap(tiny_llm, concurrency=concurrency)
    for accepted in (1, None):
        with sjfsched.wrap(tiny_llm, predictor=HeuristicPredictor(), concurrency=accepted) as w:
            assert w.scheduler.statistics().concurrency == 1


def test_the_openai_typed_chat_call_is_scheduled_too(wrapped: Any, tiny_llm: Llama) -> None:
    """Forwarded as it was, it ran on the bare model, past the lock, inside other calls' streams."""
    messages = [{"role": "user", "content": "hi"}]
    typed = wrapped.create_chat_completion_openai_v1(messages=messages, max_tokens=4, temperature=0)
    plain: Any = tiny_llm.create_chat_completion(messages=messages, max_tokens=4, temperature=0)  # type: ignore[arg-type]
    assert typed.choices[0].message.content == plain["choices"][0]["message"]["content"]
    streamed = list(wrapped.create_chat_completion_openai_v1(messages=messages, max_tokens=4, stream=True))
    assert streamed and all(type(c).__name__ == "ChatCompletionChunk" for c in streamed)
    assert wrapped.scheduler.statistics().completed == 2


def test_an_empty_chat_is_answered_as_llama_answers_it(wrapped: Any, tiny_llm: Llama) -> None:
    ours = wrapped.create_chat_completion([], max_tokens=3, temperature=0)
    theirs: Any = tiny_llm.create_chat_completion([], max_tokens=3, temperature=0)
    assert ours["choices"][0]["message"] == theirs["choices"][0]["message"]


@pytest.mark.parametrize("messages", [None, "", b"", 0, {}, 5])
def test_a_chat_that_is_no_list_of_messages_is_refused_by_name_before_it_queues(
    wrapped: Any, messages: Any
) -> None:
    """wrap.md: anything but a list of message dicts is a TypeError naming messages=; an empty
    or false value went through as an empty chat (a bare TypeError from llama-cpp-python, or an answer)."""
    with pytest.raises(TypeError, match=r"create_chat_completion\(messages=\.\.\.\) under wrap\(\)"):
        wrapped.create_chat_completion(messages, max_tokens=3)
    stats = wrapped.scheduler.statistics()
    assert (stats.completed, stats.failed) == (0, 0)  # nothing ran


# ------------------------------------------------- the reviewer's four defects


def run_script(tiny_path: Path, code: str, timeout: float = 90) -> str:
    """Run ``code`` in a fresh interpreter with ``load()`` (a Llama over the tiny model); its output.

    For what ended the interpreter (llama.cpp aborting) or hung for ever
    (a thread waiting for itself) before the fix: the test fails instead.
    """
    prelude = textwrap.dedent(
        """
        import sys, threading, time
        from llama_cpp import Llama
        import sjfsched
        from sjfsched import SchedulerClosed

        def load(**options):
            options.update(n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False, seed=0)
            return Llama(sys.argv[1], **options)
        """
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", prelude + textwrap.dedent(code), str(tiny_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the script hung (killed after {timeout} s); its output: {exc.stdout!r} {exc.stderr!r}")
    assert result.returncode == 0, (
        f"exit status {result.returncode}:\n{result.stdout}\n{result.stderr[-3000:]}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def embedding_llm(tiny_path: Path) -> Iterator[Llama]:
    llm = Llama(
        str(tiny_path), embedding=True, n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False, seed=0
    )
    yield llm
    llm.close()


#: Each Llama method that uses the model's context, called as a program would through the wrapper.
MODEL_METHODS: dict[str, Callable[[Any, Any], Any]] = {
    "generate": lambda w, state: [next(g) for g in [w.generate([1, 300, 301], temp=0.0)] for _ in range(3)],
    "eval": lambda w, state: w.eval([1, 300]),
    "sample": lambda w, state: w.sample(temp=0.0),
    "reset": lambda w, state: w.reset(),
    "save_state": lambda w, state: w.save_state(),
    "load_state": lambda w, state: w.load_state(state),
    "set_seed": lambda w, state: w.set_seed(0),
    "set_cache": lambda w, state: w.set_cache(None),
    "create_embedding": lambda w, state: w.create_embedding("Once upon a time"),
    "embed": lambda w, state: w.embed("Once upon a time"),
}


@pytest.mark.parametrize("name", list(MODEL_METHODS))
def test_a_llama_method_that_uses_the_model_waits_for_the_running_call(
    tiny_llm: Llama, embedding_llm: Llama, name: str
) -> None:
    """Forwarded as they were, past the lock, they ran inside another thread's call (crashing llama.cpp)."""
    llm = embedding_llm if name in ("create_embedding", "embed") else tiny_llm
    state = llm.save_state()
    direct: Any = llm.create_completion("Once upon a time", max_tokens=12, **GREEDY)
    outcome: list[object] = []
    done = threading.Event()

    def call() -> None:
        try:
            MODEL_METHODS[name](wrapped, state)
            outcome.append("ok")
        except BaseException as exc:  # the assertion below shows it
            outcome.append(exc)
        done.set()

    with sjfsched.wrap(llm, predictor=HeuristicPredictor()) as wrapped:
        holder: Any = wrapped.create_completion("Once upon a time", max_tokens=12, stream=True, **GREEDY)
        try:
            text = next(holder)["choices"][0]["text"]
            worker = threading.Thread(target=call, daemon=True)
            worker.start()
            assert not done.wait(0.3), f"{name}() ran while a call held the model"
            text += "".join(c["choices"][0]["text"] for c in holder)
        finally:
            holder.close()
        assert done.wait(30), f"{name}() did not run once the model was free"
        assert outcome == ["ok"]
        assert text == direct["choices"][0]["text"]  # the stream ran undisturbed
    assert not llama_lock(llm).locked()


def test_reads_of_the_llama_do_not_wait(wrapped: Any, tiny_llm: Llama) -> None:
    holder = wrapped.create_completion("Once upon a time", max_tokens=12, stream=True)
    try:
        next(holder)  # this thread holds the model: a locked call would refuse (or wait for ever)
        assert wrapped.tokenize(b"abc") == tiny_llm.tokenize(b"abc")
        assert wrapped.detokenize([300, 301]) == tiny_llm.detokenize([300, 301])
        assert (wrapped.n_ctx(), wrapped.n_vocab()) == (tiny_llm.n_ctx(), tiny_llm.n_vocab())
        assert wrapped.metadata == tiny_llm.metadata
    finally:
        holder.close()


def test_llama_methods_beside_wrapped_calls_in_threads_do_not_crash(tiny_path: Path) -> None:
    """The reviewer's scenario: generate()/eval()/state calls in one thread, wrapped calls in another."""
    out = run_script(
        tiny_path,
        """
        llm = load()
        want = llm("The little dog", max_tokens=30, temperature=0)["choices"][0]["text"]
        w = sjfsched.wrap(llm)
        tokens = llm.tokenize(b"Once upon a time there was")
        done, bad = threading.Event(), []

        def calls():
            try:
                for _ in range(15):
                    got = w("The little dog", max_tokens=30, temperature=0)["choices"][0]["text"]
                    bad.append(got != want)
            except Exception as exc:
                print("a wrapped call failed:", repr(exc))
            finally:
                done.set()

        def methods():
            while not done.is_set():
                for j, _ in enumerate(w.generate(tokens, temp=0)):
                    if j > 20:
                        break
                w.reset()
                w.eval(tokens)
                w.load_state(w.save_state())

        threads = [threading.Thread(target=calls), threading.Thread(target=methods)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        w.close()
        print("garbled", sum(bad), "of", len(bad))
        """,
    )
    assert "garbled 0 of 15" in out


def test_closing_the_wrapper_closes_the_closing_threads_own_streams_first(tiny_path: Path) -> None:
    """Before, leaving the block with a stream still open waited for that stream: for ever."""
    out = run_script(
        tiny_path,
        """
        llm = load()
        with sjfsched.wrap(llm) as w:
            kept = w("Once upon a time", max_tokens=30, temperature=0, stream=True)
            next(kept)
        print("left the block")
        try:
            next(kept)
        except SchedulerClosed as exc:
            print("next read:", type(exc).__name__, exc)
        print("then:", next(kept, "ended"))

        try:  # the consumer fails inside the block: its exception comes out
            with sjfsched.wrap(llm) as w:
                for chunk in (stream := w("Once upon a time", max_tokens=30, temperature=0, stream=True)):
                    raise ValueError("the consumer failed")
        except ValueError as exc:
            print("caller sees:", exc)

        with sjfsched.wrap(llm) as w:  # generate() holds the model like a stream
            tokens = w.generate(llm.tokenize(b"Once"), temp=0)
            next(tokens)
        try:
            next(tokens)
        except SchedulerClosed:
            print("generate closed too")

        # a stream that another thread reads is waited for (and read to its end)
        w = sjfsched.wrap(llm)
        started = threading.Event()

        def read():
            other = w("Once upon a time", max_tokens=30, temperature=0, stream=True)
            next(other)
            started.set()
            time.sleep(0.5)
            print("other read", len(list(other)))

        reader = threading.Thread(target=read)
        reader.start()
        started.wait()
        w.close()
        reader.join()
        print("closed after the other thread's stream")
        print("the model works:", llm("Once", max_tokens=3, temperature=0)["usage"]["completion_tokens"])
        """,
    )
    assert "left the block" in out
    assert "next read: SchedulerClosed this stream was closed, its answer cut short" in out
    assert "then: ended" in out
    assert "caller sees: the consumer failed" in out
    assert "generate closed too" in out
    assert out.index("other read") < out.index("closed after the other thread's stream")
    assert "the model works: 3" in out


def test_a_call_from_inside_the_call_that_holds_the_model_is_refused_at_once(tiny_path: Path) -> None:
    """A callback of the model's calling the model could only wait for itself (it hung before)."""
    out = run_script(
        tiny_path,
        """
        import llama_cpp
        llm = load()
        w = sjfsched.wrap(llm)
        other = sjfsched.wrap(llm)
        tried = []

        def reenter(input_ids, scores):
            if not tried:
                tried.append(1)
                for label, call in [
                    ("call", lambda: w("The little dog", max_tokens=5)),
                    ("stream", lambda: next(w("The little dog", max_tokens=5, stream=True))),
                    ("eval", lambda: w.eval([1, 300])),
                    ("setattr", lambda: setattr(w, "verbose", False)),
                    ("another wrap", lambda: other("The little dog", max_tokens=5)),
                ]:
                    try:
                        call()
                    except RuntimeError as exc:
                        print(label, "refused:", exc)
            return scores

        processors = llama_cpp.LogitsProcessorList([reenter])
        plain = w("Once upon a time", max_tokens=4, logits_processor=processors)
        print("plain:", plain["usage"]["completion_tokens"])
        tried.clear()
        chunks = list(w("Once upon a time", max_tokens=4, logits_processor=processors, stream=True))
        print("streamed:", "".join(c["choices"][0]["text"] for c in chunks) != "")
        print("after:", w("Once", max_tokens=3, temperature=0)["usage"]["completion_tokens"])
        print(w.scheduler.statistics().waiting, "waiting")
        w.close()
        other.close()
        """,
        timeout=60,
    )
    for label in ("call", "stream", "eval", "setattr", "another wrap"):
        assert out.count(f"{label} refused: ") == 2, out  # in the plain call and in the stream's read
    assert "refused: a create_completion() call from the thread that holds the model through " in out
    assert "of another wrap() of the same Llama" in out
    assert "plain: 4" in out and "streamed: True" in out and "after: 3" in out and "0 waiting" in out


@pytest.mark.parametrize("how", ["read one chunk", "broke out of the loop"])
def test_a_script_ending_with_a_wrapped_stream_open_exits(tiny_path: Path, how: str) -> None:
    """The stream, finalised as the interpreter ended, waited for ever on the loop's dead thread."""
    loop = "next(stream)" if how == "read one chunk" else "for chunk in stream:\n    break"
    out = run_script(
        tiny_path,
        "llm = sjfsched.wrap(load())\n"
        'stream = llm("Once upon a time", max_tokens=50, stream=True)\n'
        f"{loop}\n"
        'print("main ends")\n',
        timeout=60,
    )
    assert "main ends" in out


def test_closing_from_a_thread_holding_its_own_stream_ends_the_waiting_calls_first(tiny_path: Path) -> None:
    """The stream's slot, given back as it was cut, went to a waiting call, and close() waited for it."""
    out = run_script(
        tiny_path,
        """
        w = sjfsched.wrap(load())
        stream = w("Once upon a time", max_tokens=50, stream=True)
        next(stream)
        outcome = {}

        def call(key):
            try:
                w("The little dog", max_tokens=200)
                outcome[key] = "ran"
            except SchedulerClosed:
                outcome[key] = "closed"

        callers = [threading.Thread(target=call, args=(key,)) for key in "abc"]
        for caller in callers:
            caller.start()
        while w.scheduler.statistics().waiting < 3:
            time.sleep(0.01)
        w.close()
        for caller in callers:
            caller.join(30)
        print(sorted(outcome.items()))
        """,
        timeout=60,
    )
    assert "[('a', 'closed'), ('b', 'closed'), ('c', 'closed')]" in out


def test_closing_a_second_wrap_from_the_thread_holding_the_firsts_stream_raises(tiny_path: Path) -> None:
    """Its admitted call waited for the model the stream held, and close() waited for it: a hang."""
    out = run_script(
        tiny_path,
        """
        llm = load()
        alone = llm("The little dog", max_tokens=5, temperature=0)["choices"][0]["text"]
        a, b = sjfsched.wrap(llm), sjfsched.wrap(llm)
        stream = a("Once upon a time", max_tokens=30, stream=True)
        next(stream)
        outcome = {}

        def call(key):
            try:
                outcome[key] = b("The little dog", max_tokens=5, temperature=0)["choices"][0]["text"]
            except SchedulerClosed:
                outcome[key] = "closed"

        first = threading.Thread(target=call, args=("admitted",))
        first.start()
        while b.scheduler.statistics().running < 1:
            time.sleep(0.01)
        second = threading.Thread(target=call, args=("waiting",))
        second.start()
        while b.scheduler.statistics().waiting < 1:
            time.sleep(0.01)
        try:
            b.close()
            print("closed")
        except RuntimeError as exc:
            print("refused:", "another wrap() of the same Llama" in str(exc))
        second.join(30)
        print("waiting call:", outcome.get("waiting"))
        for _ in stream:
            pass
        first.join(30)
        print("admitted call intact:", outcome.get("admitted") == alone)
        b.close()
        a.close()
        print("both closed")
        """,
        timeout=60,
    )
    assert "refused: True" in out
    assert "waiting call: closed" in out
    assert "admitted call intact: True" in out and "both closed" in out


def test_a_pool_worker_that_read_a_stream_last_may_call_the_model(tiny_path: Path) -> None:
    """Another worker reads the stream on, so the call waits its turn (it was refused for a while)."""
    out = run_script(
        tiny_path,
        """
        import concurrent.futures
        import time
        llm = load()
        want = llm("Once upon a time", max_tokens=20, temperature=0)["choices"][0]["text"]
        alone = llm("The little dog", max_tokens=5, temperature=0)["choices"][0]["text"]
        w = sjfsched.wrap(llm)
        worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        stream = w("Once upon a time", max_tokens=20, temperature=0, stream=True)
        text = worker.submit(next, stream).result()["choices"][0]["text"]  # the worker read it last
        later = worker.submit(lambda: w("The little dog", max_tokens=5, temperature=0))
        while w.scheduler.statistics().waiting < 1:  # the worker's call asks first
            time.sleep(0.01)
        text += "".join(chunk["choices"][0]["text"] for chunk in stream)  # this thread reads it on
        answer = later.result(timeout=30)
        print("pool call:", answer["choices"][0]["text"] == alone)
        print("stream intact:", text == want)
        print(w.scheduler.statistics().completed, "completed")
        w.close()
        """,
        timeout=60,
    )
    assert "pool call: True" in out and "stream intact: True" in out and "2 completed" in out


def test_a_token_id_outside_the_vocabulary_raises_instead_of_aborting(
    tiny_path: Path, tiny_llm: Llama
) -> None:
    """Before, detokenizing it for the predictor threw std::out_of_range in llama.cpp: the process aborted."""
    out = run_script(
        tiny_path,
        """
        llm = load()
        w = sjfsched.wrap(llm)
        for prompt in ([1, 300, 99999], [1, -5], [1, llm.n_vocab()]):
            for stream in (False, True):
                try:
                    w(prompt, max_tokens=3, temperature=0, stream=stream)
                except ValueError as exc:
                    print("ValueError:", exc)
        print("after:", w([1, 300], max_tokens=3, temperature=0)["usage"]["completion_tokens"])
        w.close()
        """,
    )
    n_vocab = tiny_llm.n_vocab()
    last = n_vocab - 1
    assert (
        out.count(f"prompt token id 99999 at index 2 is not in the model's vocabulary (ids 0 to {last})") == 2
    )
    assert out.count("prompt token id -5 at index 1 is not in the model's vocabulary") == 2
    assert out.count(f"prompt token id {n_vocab} at index 1 ") == 2
    assert "after: 3" in out


def test_setting_a_llama_attribute_through_the_wrapper_sets_it_on_the_llama(
    wrapped: Any, tiny_llm: Llama
) -> None:
    """Before, it landed on the wrapper, and calls went on with the Llama's old value."""
    messages = [{"role": "user", "content": "Hi"}]
    before = tiny_llm.chat_format
    assert before != "chatml"
    try:
        wrapped.chat_format = "chatml"
        assert tiny_llm.chat_format == "chatml"
        assert "chat_format" not in vars(wrapped)
        direct: Any = tiny_llm.create_chat_completion(messages, max_tokens=3, **GREEDY)  # type: ignore[arg-type]
        ours = wrapped.create_chat_completion(messages, max_tokens=3, **GREEDY)
        assert ours["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]
        del wrapped.chat_format  # deleted from the Llama too (the class has none: reads fail)
        assert "chat_format" not in vars(tiny_llm)
    finally:
        tiny_llm.chat_format = before
    assert wrapped.chat_format == before
    wrapped._note = 1  # the wrapper's own
    assert vars(wrapped)["_note"] == 1 and not hasattr(tiny_llm, "_note")
    with pytest.raises(AttributeError, match="wrapper's own"):
        wrapped.llm = tiny_llm
    with pytest.raises(AttributeError, match="wrapper's own"):
        wrapped.create_completion = None


def test_setting_an_attribute_waits_for_the_running_call(wrapped: Any, tiny_llm: Llama) -> None:
    """A call reads the Llama's attributes while it runs: an assignment waits until it ends."""
    before = tiny_llm.verbose
    done = threading.Event()
    holder = wrapped.create_completion("Once upon a time", max_tokens=10, stream=True)
    try:
        next(holder)

        def assign() -> None:
            wrapped.verbose = before
            done.set()

        threading.Thread(target=assign, daemon=True).start()
        assert not done.wait(0.3)
        for _ in holder:
            pass
    finally:
        holder.close()
    assert done.wait(20)
    assert tiny_llm.verbose == before


def test_a_chat_given_as_an_iterator_is_answered_and_a_bad_chat_names_the_argument(
    wrapped: Any, tiny_llm: Llama
) -> None:
    messages = [{"role": "user", "content": "hi"}]
    direct: Any = tiny_llm.create_chat_completion(messages, max_tokens=4, **GREEDY)  # type: ignore[arg-type]
    ours = wrapped.create_chat_completion(iter(messages), max_tokens=4, **GREEDY)
    assert ours["choices"] == direct["choices"]
    with pytest.raises(
        TypeError, match=r"create_chat_completion\(messages=...\) under wrap\(\).*list of message dicts"
    ):
        wrapped.create_chat_completion([{"role": "user", "content": 5}], max_tokens=4)


def test_an_answer_cut_by_max_tokens_is_logged_as_such(tiny_llm: Llama, tmp_path: Path) -> None:
    """wrap() reported no finish reason (Ticket.report took none), so a RequestLog recorded
    answers cut off by max_tokens as whole ones, and skip_truncated skipped nothing."""
    import json

    direct: Any = tiny_llm.create_completion("Once upon a time", max_tokens=3, **GREEDY)
    assert direct["choices"][0]["finish_reason"] == "length"  # the tiny model goes on past 3
    logged = tmp_path / "all.jsonl"
    kept = tmp_path / "whole-only.jsonl"
    with sjfsched.RequestLog(logged) as everything, sjfsched.RequestLog(kept, skip_truncated=True) as whole:

        def both(completion: sjfsched.Completion) -> None:
            everything(completion)
            whole(completion)

        with sjfsched.wrap(tiny_llm, predictor=HeuristicPredictor(), on_complete=both) as w:
            w.create_completion("Once upon a time", max_tokens=3, **GREEDY)
            stream: Any = w.create_completion("Once upon a time", max_tokens=3, stream=True, **GREEDY)
            for _ in stream:
                pass
    lines = [json.loads(line) for line in logged.read_text().splitlines()]
    assert [line["finish_reason"] for line in lines] == ["length", "length"]
    assert not kept.exists() or kept.read_text() == ""


def test_a_logits_processor_and_a_logit_bias_both_apply_streamed_or_not(
    wrapped: Any, tiny_llm: Llama
) -> None:
    """llama-cpp-python 0.3 drops both when given together (``processors = processors.extend(...)``);
    a streamed wrap() call applied both and an unstreamed one neither: now both, either way."""
    from llama_cpp import LogitsProcessorList

    plain: Any = tiny_llm.create_completion("Once upon a time", max_tokens=1, **GREEDY)
    first = tiny_llm.tokenize(plain["choices"][0]["text"].encode(), add_bos=False)[0]
    calls: list[int] = []

    def count(ids: Any, scores: Any) -> Any:
        calls.append(len(ids))
        return scores

    def answer(stream: bool) -> str:
        calls.clear()
        result = wrapped.create_completion(
            "Once upon a time",
            max_tokens=4,
            logit_bias={first: -100.0},
            logits_processor=LogitsProcessorList([count]),
            stream=stream,
            **GREEDY,
        )
        text = "".join(c["choices"][0]["text"] for c in result) if stream else result["choices"][0]["text"]
        assert len(calls) == 4  # the caller's processor ran at every sample
        return str(text)

    unstreamed, streamed = answer(False), answer(True)
    assert unstreamed == streamed
    assert tiny_llm.tokenize(unstreamed.encode(), add_bos=False)[0] != first  # the bias applied


def test_what_the_wrapper_cannot_be_given_is_refused_by_name(wrapped: Any, tiny_llm: Llama) -> None:
    with pytest.raises(TypeError, match=r"got a wrap\(\) of one already"):
        sjfsched.wrap(wrapped)
    with pytest.raises(AttributeError, match=r"private attributes \('_model'\): use \.llm\._model"):
        wrapped._model  # noqa: B018
    assert wrapped.llm._model is tiny_llm._model


def test_a_chat_message_without_content_is_answered_as_llama_answers_it(
    wrapped: Any, tiny_llm: Llama
) -> None:
    messages = [{"role": "system", "content": None}, {"role": "user", "content": "Hi!"}]
    got = wrapped.create_chat_completion(messages=messages, max_tokens=6, **GREEDY)
    direct: Any = tiny_llm.create_chat_completion(messages=messages, max_tokens=6, **GREEDY)  # type: ignore[arg-type]
    assert got["choices"] == direct["choices"]
    with pytest.raises(
        ValueError, match=r"create_chat_completion\(messages=\.\.\.\) under wrap\(\).*no 'content'"
    ):
        wrapped.create_chat_completion(messages=[{"role": "user"}], max_tokens=2)


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_a_call_from_an_event_loop_whose_thread_reads_an_open_stream_is_refused(
    tiny_llm: Llama, loop: str
) -> None:
    """llama-index's ``astream_complete`` reads the sync stream in the loop's own thread: a
    second one in the same loop waited for its turn there, blocking the loop, so the first
    stream, which holds the model, was never read on: both hung for ever."""
    import anyio

    with sjfsched.wrap(tiny_llm) as w:

        async def main() -> tuple[str, str]:
            stream: Iterator[Any] = iter(w("Once", max_tokens=6, stream=True))
            first = next(stream)["choices"][0]["text"]
            with pytest.raises(RuntimeError, match="from an event loop's thread, which reads an open"):
                w("Hi", max_tokens=2)
            with pytest.raises(RuntimeError, match="it would block the loop"):
                next(iter(w("Hi", max_tokens=2, stream=True)))

            def rest() -> str:
                return "".join(c["choices"][0]["text"] for c in stream)

            # The stream read on, from a worker thread; then the call runs, from one too.
            text = first + await anyio.to_thread.run_sync(rest)
            other: Any = await anyio.to_thread.run_sync(lambda: w("Hi", max_tokens=2))
            return text, other["choices"][0]["text"]

        # Should the call wait for its turn after all, it waits for ever: ended after 30 s by an
        # exception raised in this thread, as a call timeout would (the wait takes it).
        this = threading.get_ident()
        watchdog = threading.Timer(
            30, ctypes.pythonapi.PyThreadState_SetAsyncExc, (ctypes.c_ulong(this), ctypes.py_object(_Hung))
        )
        watchdog.start()
        try:
            text, other = anyio.run(main, backend=loop)
        finally:
            watchdog.cancel()
        stats = w.scheduler.statistics()
    assert (stats.completed, stats.waiting, stats.running) == (2, 0, 0)
    assert text and other


class _Hung(BaseException):
    """Raised in a test's thread that waits for ever."""


@pytest.mark.parametrize("name", ["client", "_model"])
def test_wrapping_a_framework_object_says_where_its_llama_is(tiny_llm: Llama, name: str) -> None:
    # LangChain's LlamaCpp keeps its Llama in .client, llama-index's LlamaCPP in ._model: the
    # error named the framework's class only.
    framework_object = type("LlamaCpp", (), {})()
    setattr(framework_object, name, tiny_llm)
    with pytest.raises(
        TypeError, match=rf"got LlamaCpp: its \.{name} is the Llama; wrap that and put it back"
    ):
        sjfsched.wrap(framework_object)


# Found by a mutation audit: behaviours no test told apart.


def test_max_tokens_zero_means_no_limit_as_in_llama_cpp(tiny_llm: Llama) -> None:
    # llama.cpp reads max_tokens=0 (and < 0) as "until the context is full"; the wrapper must
    # rank it as a request without a limit, not refuse it (Request refuses max_tokens < 1).
    with sjfsched.wrap(tiny_llm, predictor=HeuristicPredictor()) as w:
        for limit in (0, -1):
            got: Any = w.create_completion("Once upon a time", max_tokens=limit, temperature=0.0)
            assert got["usage"]["completion_tokens"] > 0
            chunks = list(w.create_completion("Once", max_tokens=limit, stream=True, temperature=0.0))
            assert chunks


def test_a_stream_left_early_closes_the_models_iterator_while_it_still_holds_the_model(
    tiny_llm: Llama, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the Llama's own stream generator is closed (its finally runs) before the model's lock
    # is given back, not later by the garbage collector, when another call may already run.
    lock = llama_lock(tiny_llm)
    seen: list[bool] = []
    real = tiny_llm.create_completion

    @functools.wraps(real)
    def create_completion(*args: Any, **kwargs: Any) -> Any:
        inner = real(*args, **kwargs)
        if not kwargs.get("stream"):
            return inner

        def gen() -> Any:
            try:
                yield from inner
            finally:
                seen.append(lock.locked())

        return gen()

    monkeypatch.setattr(tiny_llm, "create_completion", create_completion)
    with sjfsched.wrap(tiny_llm, predictor=HeuristicPredictor()) as w:
        stream: Any = w.create_completion("Once upon a time", max_tokens=30, stream=True, temperature=0.0)
        next(stream)  # the caller still holds it: only close() may end it
        stream.close()
        assert seen == [True]
