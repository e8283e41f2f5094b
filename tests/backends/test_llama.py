"""LlamaCppBackend against real llama.cpp generation (the tiny model, stories260K)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
import numpy.typing as npt
import pytest
from llama_cpp import Llama, LogitsProcessorList

import sjfsched
from sjfsched import BackendError, BackendUnavailable, Chunk, Request, Scheduler
from sjfsched.backends import BackendPool, LlamaCppBackend
from sjfsched.backends._llama import llama_lock
from sjfsched.predictors import ConstantPredictor
from tests.support.models import STORIES_SKIP_REASON, stories_model
from tests.support.signals import run_python

pytestmark = pytest.mark.anyio


async def collect(backend: LlamaCppBackend, request: Request) -> list[Chunk]:
    with anyio.fail_after(60):
        return [chunk async for chunk in backend.stream(request)]


def reference(llm: Llama, request: Request) -> Any:
    """What llama-cpp-python itself returns for the request, not streamed."""
    options = dict(request.options)
    model: Any = llm  # llama_cpp's TypedDicts are stricter than plain dicts
    if request.messages is not None:
        return model.create_chat_completion(
            [dict(m) for m in request.messages], max_tokens=request.max_tokens, **options
        )
    return model.create_completion(request.prompt, max_tokens=request.max_tokens, **options)


def text_of(answer: Any) -> str:
    choice = answer["choices"][0]
    return str(choice["message"]["content"] if "message" in choice else choice["text"])


@pytest.fixture
def backend(tiny_llm: Llama) -> LlamaCppBackend:
    return LlamaCppBackend(tiny_llm)


@pytest.mark.parametrize(
    "request_",
    [
        Request("Once upon a time", max_tokens=40, options={"temperature": 0}),
        Request("Once upon a time", max_tokens=40, options={"temperature": 0.9, "seed": 7}),
        Request(messages=[{"role": "user", "content": "Say hello."}], max_tokens=25, options={"seed": 3}),
    ],
    ids=["greedy", "sampled", "chat"],
)
async def test_streams_what_llama_cpp_generates_with_its_token_counts(
    backend: LlamaCppBackend, tiny_llm: Llama, request_: Request
) -> None:
    chunks = await collect(backend, request_)
    expected = reference(tiny_llm, request_)
    assert len(chunks) > 10  # streamed piece by piece, not in one lump
    assert "".join(c.text for c in chunks) == text_of(expected)
    assert sum(c.tokens for c in chunks) == expected["usage"]["completion_tokens"] == request_.max_tokens
    prompt_counts = [c.prompt_tokens for c in chunks if c.prompt_tokens is not None]
    assert prompt_counts == [expected["usage"]["prompt_tokens"]]
    assert [c.finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]


async def test_prompt_tokens_are_the_models_own_count(backend: LlamaCppBackend, tiny_llm: Llama) -> None:
    prompt = "Count me: 12345 ~ é"
    chunks = await collect(backend, Request(prompt, max_tokens=2))
    assert chunks[0].prompt_tokens == len(tiny_llm.tokenize(prompt.encode()))


async def test_stop_string_counts_the_completing_token_as_llama_cpp_does(
    backend: LlamaCppBackend, tiny_llm: Llama
) -> None:
    greedy = text_of(tiny_llm.create_completion("Once upon a time", max_tokens=60, temperature=0))
    stop = greedy[20:22]  # a piece of text the model will write
    request = Request("Once upon a time", max_tokens=60, options={"temperature": 0, "stop": [stop]})
    chunks = await collect(backend, request)
    expected = reference(tiny_llm, request)
    assert expected["choices"][0]["finish_reason"] == "stop"
    assert "".join(c.text for c in chunks) == text_of(expected) == greedy[: greedy.index(stop)]
    assert sum(c.tokens for c in chunks) == expected["usage"]["completion_tokens"]
    assert chunks[-1].finish_reason == "stop"


def _eos_after(llm: Llama, n: int) -> LogitsProcessorList:
    """A logits processor that forces end-of-sequence after n output tokens."""
    start: list[int] = []

    def force(ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        if not start:
            start.append(len(ids))
        if len(ids) - start[0] >= n:
            scores = np.full_like(scores, -np.inf)
            scores[llm.token_eos()] = 0.0
        return scores

    return LogitsProcessorList([force])


@pytest.mark.parametrize("n", [0, 1, 9])
async def test_end_of_generation_token_is_not_counted(
    backend: LlamaCppBackend, tiny_llm: Llama, n: int
) -> None:
    chunks = await collect(
        backend,
        Request(
            "Once upon a time",
            max_tokens=50,
            options={"temperature": 0, "logits_processor": _eos_after(tiny_llm, n)},
        ),
    )
    expected: Any = tiny_llm.create_completion(
        "Once upon a time", max_tokens=50, temperature=0, logits_processor=_eos_after(tiny_llm, n)
    )
    assert expected["choices"][0]["finish_reason"] == "stop"
    assert sum(c.tokens for c in chunks) == expected["usage"]["completion_tokens"] == n
    assert "".join(c.text for c in chunks) == text_of(expected)
    assert chunks[-1].finish_reason == "stop"


async def test_stories_model_runs_to_length_with_exact_counts() -> None:
    path = stories_model()
    if path is None:
        pytest.skip(STORIES_SKIP_REASON)
    llm = Llama(str(path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        backend = LlamaCppBackend(llm)
        request = Request("Once upon a time", max_tokens=48, options={"temperature": 0})
        chunks = await collect(backend, request)
        expected = reference(llm, request)
        assert "".join(c.text for c in chunks) == text_of(expected)
        assert "Lily" in "".join(c.text for c in chunks)  # the real model writes a real story
        assert sum(c.tokens for c in chunks) == 48
        assert chunks[-1].finish_reason == "length"
    finally:
        llm.close()


def _counting(calls: list[int]) -> LogitsProcessorList:
    def count(ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        calls.append(len(ids))
        return scores

    return LogitsProcessorList([count])


async def test_cancelling_mid_stream_stops_generation_and_frees_the_model(
    backend: LlamaCppBackend, tiny_llm: Llama
) -> None:
    sampled: list[int] = []
    request = Request("A long story:", max_tokens=400, options={"logits_processor": _counting(sampled)})
    async with Scheduler(backend, predictor=ConstantPredictor()) as sched:
        with anyio.CancelScope() as scope:
            async with sched.stream(request) as chunks:
                seen = 0
                async for _ in chunks:
                    seen += 1
                    if seen == 5:
                        scope.cancel()
                        await anyio.lowlevel.checkpoint()
        assert scope.cancelled_caught
        at_cancel = len(sampled)
        assert not llama_lock(tiny_llm).locked()  # the worker thread let go of the model
        await anyio.sleep(0.2)
        assert len(sampled) == at_cancel <= 8  # nothing ran on after the cancellation
        # The next request runs at once and is intact.
        after = Request("Once upon a time", max_tokens=12, options={"temperature": 0})
        with anyio.fail_after(10):
            completion = await sched.complete(after)
        assert completion.text == text_of(reference(tiny_llm, after))
        stats = sched.statistics()
        assert (stats.cancelled, stats.completed, stats.running) == (1, 1, 0)


async def test_closing_the_stream_early_frees_the_model(backend: LlamaCppBackend, tiny_llm: Llama) -> None:
    stream = backend.stream(Request("Go on:", max_tokens=300))
    first = await stream.__anext__()
    assert isinstance(first, Chunk)
    assert llama_lock(tiny_llm).locked()
    await stream.aclose()  # type: ignore[attr-defined]
    assert not llama_lock(tiny_llm).locked()


async def test_bad_options_fail_with_a_clear_error(backend: LlamaCppBackend) -> None:
    with pytest.raises(BackendError, match="'num_ctx'"):
        await collect(backend, Request("x", options={"num_ctx": 3}))
    with pytest.raises(BackendError, match="sets stream itself"):
        await collect(backend, Request("x", options={"stream": False}))
    with pytest.raises(BackendError, match="'stop' must be"):
        await collect(backend, Request("x", options={"stop": 3}))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"echo": True}, "option 'echo'"),
        ({"stop": ""}, "option 'stop' has an empty string"),
        ({"stop": ["x", ""]}, "option 'stop' has an empty string"),
    ],
)
async def test_options_the_answer_would_silently_differ_by_are_refused_by_name(
    backend: LlamaCppBackend, tiny_llm: Llama, options: dict[str, Any], message: str
) -> None:
    """llama.cpp answers prompt + answer for echo, and nothing for an empty stop string."""
    with pytest.raises(BackendError, match=message):
        await collect(backend, Request("Once upon a time", max_tokens=5, options=options))
    assert not llama_lock(tiny_llm).locked()
    chunks = await collect(backend, Request("Once", max_tokens=3, options={"echo": False}))
    assert sum(c.tokens for c in chunks) == 3  # echo=False is what it does anyway


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # llama.cpp's own failures for these named no option: "AssertionError", "'<' not
        # supported between instances of 'str' and 'float'", "invalid literal for int()",
        # "argument 1: TypeError: wrong type"
        ({"suffix": 5}, "option 'suffix' must be a str or None, got 5"),
        ({"suffix": np.str_("x")}, "option 'suffix' must be a str or None, got np.str_('x')"),
        ({"temperature": "hot"}, "option 'temperature' must be a number, got 'hot'"),
        ({"temperature": "0.5"}, "option 'temperature' must be a number, got '0.5'"),
        ({"temperature": 10**400}, "option 'temperature' must be a number"),
        ({"logit_bias": {"x": 1.0}}, "option 'logit_bias' must be a mapping of token ids"),
        ({"logit_bias": {"--5": 1.0}}, "option 'logit_bias' must be a mapping of token ids"),
        ({"top_k": 2.5}, "option 'top_k' must be an integer, got 2.5"),
        ({"seed": "1"}, "option 'seed' must be an integer, got '1'"),
    ],
)
async def test_an_option_of_the_wrong_type_is_refused_by_name(
    backend: LlamaCppBackend, tiny_llm: Llama, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(BackendError, match=re.escape(message)):
        await collect(backend, Request("Once", max_tokens=3, options=options))
    assert not llama_lock(tiny_llm).locked()


async def test_options_of_the_types_llama_cpp_takes_are_taken(backend: LlamaCppBackend) -> None:
    options = {
        "temperature": np.float32(0.5), "top_k": np.int64(5), "seed": None, "top_p": 1,
        "logit_bias": {"15": 0.5, 16: -1, 17.0: "1.5", "+18": 0}, "suffix": None, "min_p": 0.0,
        "tfs_z": None, "mirostat_mode": 0.0, "typical_p": np.array(1.0),
    }  # fmt: skip
    chunks = await collect(backend, Request("Once", max_tokens=3, options=options))
    assert sum(c.tokens for c in chunks) == 3
    # A numpy seed, kept by the Llama, failed its next calls without one ("The only supported
    # seed types are: None, int, ..."): it goes on as an int.
    await collect(backend, Request("Once", max_tokens=2, options={"seed": np.int64(3)}))
    chunks = await collect(backend, Request("Once", max_tokens=2))
    assert sum(c.tokens for c in chunks) == 2


def _unlisted(ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
    return scores


async def test_a_logits_processor_not_in_a_list_is_refused_naming_the_option(
    backend: LlamaCppBackend, tiny_llm: Llama
) -> None:
    """llama.cpp's own error for a bare function is "'function' object is not iterable"."""
    with pytest.raises(
        BackendError, match=r"option 'logits_processor' must be a list of processors.*_unlisted"
    ):
        await collect(backend, Request("x", max_tokens=3, options={"logits_processor": _unlisted}))
    with pytest.raises(
        BackendError, match=r"'logits_processor' must be a list of processors.*'hot' at index 1"
    ):
        await collect(backend, Request("x", max_tokens=3, options={"logits_processor": [_unlisted, "hot"]}))
    # wrap() checks it at the call, streamed (whose tokens it counts through the same list) or not.
    with sjfsched.wrap(tiny_llm) as wrapped:
        for stream in (True, False):
            with pytest.raises(TypeError, match="'logits_processor' must be a list of processors"):
                wrapped.create_completion(
                    "x",
                    max_tokens=3,
                    stream=stream,
                    logits_processor=_unlisted,  # type: ignore[arg-type]  # the wrong input under test
                )
    assert not llama_lock(tiny_llm).locked()
    chunks = await collect(backend, Request("x", max_tokens=3, options={"logits_processor": (_unlisted,)}))
    assert sum(c.tokens for c in chunks) == 3  # any sequence of processors is taken


async def test_prompt_longer_than_the_context_is_a_backend_error(
    backend: LlamaCppBackend, tiny_llm: Llama
) -> None:
    with pytest.raises(BackendError, match="context window") as info:
        await collect(backend, Request("x" * 600, max_tokens=4))
    assert isinstance(info.value.__cause__, ValueError)
    assert not llama_lock(tiny_llm).locked()


async def test_two_backends_on_one_llama_never_overlap(tiny_llm: Llama) -> None:
    """Two schedulers share one Llama: the per-Llama lock keeps every answer intact."""
    prompts = [f"Story {i}:" for i in range(6)]
    expected = {p: text_of(tiny_llm.create_completion(p, max_tokens=30, temperature=0)) for p in prompts}
    results: dict[str, str] = {}
    async with (
        Scheduler(LlamaCppBackend(tiny_llm), predictor=ConstantPredictor()) as one,
        Scheduler(LlamaCppBackend(tiny_llm), predictor=ConstantPredictor()) as two,
    ):

        async def run(sched: Scheduler, prompt: str) -> None:
            completion = await sched.complete(prompt, max_tokens=30, options={"temperature": 0})
            results[prompt] = completion.text

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i, prompt in enumerate(prompts):
                    tg.start_soon(run, one if i % 2 else two, prompt)
    assert results == expected


async def test_event_loop_stays_responsive_while_generating(backend: LlamaCppBackend) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.005)
            ticks += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        start = time.perf_counter()
        await collect(backend, Request("Tick tock", max_tokens=200))
        elapsed = time.perf_counter() - start
        tg.cancel_scope.cancel()
    # Generation ran in worker threads: the loop kept ticking meanwhile.
    assert ticks >= min(5, int(elapsed / 0.005) // 4)


async def test_from_path_owns_and_closes_its_llama(tiny_path: Any) -> None:
    # A Path, as write_tiny_llama() returns (it failed deep inside llama_cpp: no .encode)
    backend = LlamaCppBackend.from_path(Path(tiny_path), n_ctx=128, n_threads=1, n_threads_batch=1)
    chunks = await collect(backend, Request("abc", max_tokens=3))
    assert sum(c.tokens for c in chunks) == 3
    await backend.aclose()
    with pytest.raises(BackendError, match="closed"):
        await collect(backend, Request("abc", max_tokens=3))


def test_from_path_refuses_an_option_llama_does_not_take(tiny_path: Path) -> None:
    """Llama(**kwargs) ignores a misspelt name: the context would be 512, not the 64 asked for."""
    with pytest.raises(TypeError, match=r"option\(s\) 'n_ctxx', 'n_thread' \(n_ctxx: did you mean n_ctx\?"):
        LlamaCppBackend.from_path(str(tiny_path), n_ctxx=64, n_thread=1)
    with pytest.raises(TypeError, match="close_llm: from_path's backend always closes its Llama"):
        LlamaCppBackend.from_path(str(tiny_path), n_ctx=64, close_llm=False)


def test_not_a_llama_is_refused() -> None:
    with pytest.raises(TypeError, match=r"llama_cpp\.Llama"):
        LlamaCppBackend(object())  # type: ignore[arg-type]


def test_a_wrap_of_the_llama_is_refused_naming_what_to_pass(tiny_llm: Llama) -> None:
    """It has the Llama's methods, but takes **kwargs: every option was refused as unknown."""
    with sjfsched.wrap(tiny_llm) as wrapped:
        with pytest.raises(TypeError, match=r"got a sjfsched\.wrap\(\) of it: pass wrapped\.llm"):
            LlamaCppBackend(wrapped)  # type: ignore[arg-type]


class _ForwardingLlama(Llama):
    """A Llama whose create_completion takes any keyword and hands it on (as a user's subclass may)."""

    def create_completion(self, prompt: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().create_completion(prompt, **kwargs)


async def test_options_of_a_method_with_kwargs_are_handed_on(tiny_path: Path) -> None:
    llm = _ForwardingLlama(str(tiny_path), n_ctx=128, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        request = Request("Once upon a time", max_tokens=8, options={"temperature": 0, "top_k": 1})
        chunks = await collect(LlamaCppBackend(llm), request)
        expected = reference(llm, request)
        assert "".join(c.text for c in chunks) == text_of(expected)
        assert sum(c.tokens for c in chunks) == expected["usage"]["completion_tokens"] == 8
    finally:
        llm.close()


def test_lock_is_one_per_llama(tiny_llm: Llama) -> None:
    assert llama_lock(tiny_llm) is llama_lock(tiny_llm)
    assert isinstance(llama_lock(tiny_llm), type(threading.Lock()))


async def test_cancelled_while_waiting_for_the_model_leaves_the_lock_free(
    backend: LlamaCppBackend, tiny_llm: Llama
) -> None:
    lock = llama_lock(tiny_llm)
    lock.acquire()  # someone else (another backend, a wrap() caller) is generating
    try:
        with anyio.move_on_after(0.1) as scope:
            await collect(backend, Request("waiting", max_tokens=3))
        assert scope.cancelled_caught
    finally:
        lock.release()
    # The abandoned waiter thread may get the lock a moment later: it gives it back.
    with anyio.fail_after(5):
        while lock.locked():  # noqa: ASYNC110 - the lock is a threading.Lock
            await anyio.sleep(0.01)
    chunks = await collect(backend, Request("after", max_tokens=3))
    assert sum(c.tokens for c in chunks) == 3


async def test_logit_bias_applies_and_the_tokens_are_still_counted(
    backend: LlamaCppBackend, tiny_llm: Llama
) -> None:
    """llama-cpp-python adds its logit_bias processor to ours with list.extend's None: ours survives it."""
    forced = tiny_llm.tokenize(b"!", add_bos=False)[-1]
    request = Request("Once", max_tokens=8, options={"temperature": 0, "logit_bias": {forced: 100.0}})
    chunks = await collect(backend, request)
    expected = reference(tiny_llm, request)
    assert "".join(c.text for c in chunks) == text_of(expected) == tiny_llm.detokenize([forced] * 8).decode()
    assert sum(c.tokens for c in chunks) == expected["usage"]["completion_tokens"] == 8
    assert [c.prompt_tokens for c in chunks if c.prompt_tokens is not None] == [
        expected["usage"]["prompt_tokens"]
    ]


def _forcing(llm: Llama, text: bytes) -> LogitsProcessorList:
    """A logits processor that makes the model write ``text``, then end-of-sequence."""
    tokens = [*llm.tokenize(text, add_bos=False, special=False), llm.token_eos()]
    start: list[int] = []

    def force(ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        if not start:
            start.append(len(ids))
        wanted = tokens[min(len(ids) - start[0], len(tokens) - 1)]
        scores = np.full_like(scores, -np.inf)
        scores[wanted] = 0.0
        return scores

    return LogitsProcessorList([force])


async def test_a_chat_templates_own_stop_string_counts_as_llama_cpp_does(tiny_path: Any) -> None:
    """chatml stops at "<|im_end|>" inside llama.cpp: the token completing it is answer text."""
    llm = Llama(str(tiny_path), n_ctx=256, chat_format="chatml", verbose=False, seed=0)
    try:
        messages = [{"role": "user", "content": "Hi"}]
        request = Request(
            messages=messages,
            max_tokens=40,
            options={"temperature": 0, "logits_processor": _forcing(llm, b"ab<|im_end|>cd")},
        )
        chunks = await collect(LlamaCppBackend(llm), request)
        expected: Any = llm.create_chat_completion(
            messages,  # type: ignore[arg-type]
            max_tokens=40,
            temperature=0,
            logits_processor=_forcing(llm, b"ab<|im_end|>cd"),
        )
        assert expected["choices"][0]["finish_reason"] == "stop"
        assert "".join(c.text for c in chunks) == text_of(expected) == "ab"
        assert sum(c.tokens for c in chunks) == expected["usage"]["completion_tokens"] == 12
        assert chunks[-1].finish_reason == "stop"
    finally:
        llm.close()


async def test_our_stop_string_seen_after_the_end_of_generation_counts_no_end_token(
    backend: LlamaCppBackend, tiny_llm: Llama
) -> None:
    """Text flushed with llama.cpp's last chunk may hold our stop string; the end token is not text."""
    # A character's first byte makes llama.cpp hold the text back; end-of-sequence flushes it.
    processors = _forcing(tiny_llm, b"a\xe2b")
    request = Request(
        "Once", max_tokens=20, options={"temperature": 0, "stop": ["b"], "logits_processor": processors}
    )
    chunks = await collect(backend, request)
    assert "".join(c.text for c in chunks) == "a"
    assert chunks[-1].finish_reason == "stop"
    # llama.cpp's own count of the same generation: 3 tokens, the end-of-sequence not among them.
    expected: Any = tiny_llm.create_completion(
        "Once", max_tokens=20, temperature=0, logits_processor=_forcing(tiny_llm, b"a\xe2b")
    )
    assert expected["choices"][0]["finish_reason"] == "stop"
    assert sum(c.tokens for c in chunks) == expected["usage"]["completion_tokens"] == 3
    assert "sample" not in vars(tiny_llm)  # the sampler's recorder is gone with the stream


def _forcing_ids(pieces: list[int | bytes], llm: Llama) -> LogitsProcessorList:
    """A logits processor that makes the model sample these tokens (bytes: their tokens), then stay."""
    ids: list[int] = []
    for piece in pieces:
        ids.extend(llm.tokenize(piece, add_bos=False, special=False) if isinstance(piece, bytes) else [piece])
    calls = [0]

    def force(_: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        wanted = ids[min(calls[0], len(ids) - 1)]
        calls[0] += 1
        scores = np.full_like(scores, -np.inf)
        scores[wanted] = 0.0
        return scores

    return LogitsProcessorList([force])


# Answers whose first bytes are not plain text, or that start with the BOS: llama.cpp drops a
# space that starts the printed bytes after a BOS, and only that one.
_EDGES: dict[str, tuple[str, list[Any], list[str] | None, int]] = {
    # empty prompt (the answer starts with the BOS), then a token that prints nothing
    "unk-first": ("", [0, b" and on the d"], ["on t"], 12),
    # empty prompt, a first byte that is no UTF-8 text, then a space llama.cpp keeps
    "invalid-first": ("", [b"\xe2", b" c c"], None, 3),
    # the model samples the BOS first
    "bos-first": ("Hi", ["bos", b" Once upon a"], [" Once"], 12),
    "bos-first-no-stop": ("Hi", ["bos", b" Once upon a"], None, 8),
    # a stop string only there when an invalid byte is left out of the text
    "stop-across-invalid": ("Once upon a time", [b" m sa", b"\xe2", b" g Once"], ["a g "], 10),
}


@pytest.mark.parametrize("case", list(_EDGES), ids=list(_EDGES))
async def test_forced_answers_are_llama_cpp_pythons_own(
    backend: LlamaCppBackend, tiny_llm: Llama, case: str
) -> None:
    prompt, pieces, stop, max_tokens = _EDGES[case]
    forced = [tiny_llm.token_bos() if p == "bos" else p for p in pieces]
    options: dict[str, Any] = {"temperature": 0, "stop": stop}
    request = Request(
        prompt, max_tokens=max_tokens, options={**options, "logits_processor": _forcing_ids(forced, tiny_llm)}
    )
    chunks = await collect(backend, request)
    model: Any = tiny_llm
    expected = model.create_completion(
        prompt, max_tokens=max_tokens, logits_processor=_forcing_ids(forced, tiny_llm), **options
    )
    got = ("".join(c.text for c in chunks), sum(c.tokens for c in chunks), chunks[-1].finish_reason)
    choice = expected["choices"][0]
    assert got == (choice["text"], expected["usage"]["completion_tokens"], choice["finish_reason"])


@pytest.mark.parametrize("stop", [["sa", "zzzz"], ["a", "zzzz"], ["sa"]])
async def test_a_sample_the_callers_criteria_drop_ends_no_stop_string(
    backend: LlamaCppBackend, tiny_llm: Llama, stop: list[str]
) -> None:
    """The criteria stop on the sample that completes our stop string: llama.cpp drops that sample."""
    pieces: list[int | bytes] = [b" the", b" sa", b" c"]
    options: dict[str, Any] = {"temperature": 0, "stop": stop}
    request = Request(
        "Once upon a time",
        max_tokens=10,
        options={
            **options,
            "logits_processor": _forcing_ids(pieces, tiny_llm),
            "stopping_criteria": _stop_at_sample(7),
        },
    )
    chunks = await collect(backend, request)
    model: Any = tiny_llm
    expected = model.create_completion(
        "Once upon a time",
        max_tokens=10,
        logits_processor=_forcing_ids(pieces, tiny_llm),
        stopping_criteria=_stop_at_sample(7),
        **options,
    )
    got = ("".join(c.text for c in chunks), sum(c.tokens for c in chunks), chunks[-1].finish_reason)
    choice = expected["choices"][0]
    assert got == (choice["text"], expected["usage"]["completion_tokens"], choice["finish_reason"])


def _stop_at_sample(n: int) -> Any:
    """Stopping criteria that say stop at the n-th sample (llama.cpp then drops that sample)."""
    from llama_cpp import StoppingCriteriaList

    calls = [0]

    def stop(ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
        calls[0] += 1
        return calls[0] >= n

    return StoppingCriteriaList([stop])


async def test_a_sample_the_callers_stopping_criteria_reject_is_not_counted(
    backend: LlamaCppBackend, tiny_llm: Llama
) -> None:
    request = Request(
        "Once upon a time", max_tokens=20, options={"temperature": 0, "stopping_criteria": _stop_at_sample(5)}
    )
    chunks = await collect(backend, request)
    expected: Any = tiny_llm.create_completion(
        "Once upon a time", max_tokens=20, temperature=0, stopping_criteria=_stop_at_sample(5)
    )
    assert expected["choices"][0]["finish_reason"] == "stop"
    assert "".join(c.text for c in chunks) == text_of(expected)
    assert sum(c.tokens for c in chunks) == expected["usage"]["completion_tokens"] == 4


def _writing(llm: Llama, text: bytes) -> LogitsProcessorList:
    """A logits processor that makes the model write ``text``, then "x" for ever (no end of sequence)."""
    tokens = llm.tokenize(text, add_bos=False, special=False)
    filler = llm.tokenize(b"x", add_bos=False, special=False)[-1]
    start: list[int] = []

    def force(ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]) -> npt.NDArray[np.single]:
        if not start:
            start.append(len(ids))
        i = len(ids) - start[0]
        scores = np.full_like(scores, -np.inf)
        scores[tokens[i] if i < len(tokens) else filler] = 0.0
        return scores

    return LogitsProcessorList([force])


def _never(ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
    return False


@pytest.mark.parametrize(
    ("written", "max_tokens", "chat", "criteria"),
    [
        (b"a\xe2b", 30, False, False),  # a character's first byte, then the stop string
        (b"a\xffbcd", 30, False, False),  # a byte that is never UTF-8
        (b"q\xc3bc", None, False, False),  # no max_tokens: it ran to the context's end
        (b"a\xe2b", 30, True, False),
        (b"a\xffbcd", 30, False, True),  # with the caller's stopping criteria (that never stop)
    ],
    ids=["first-byte", "invalid-byte", "unbounded", "chat", "with-criteria"],
)
async def test_a_stop_string_after_a_stray_byte_stops_as_in_llama_cpp(
    backend: LlamaCppBackend,
    tiny_llm: Llama,
    written: bytes,
    max_tokens: int | None,
    chat: bool,
    criteria: bool,
) -> None:
    """llama.cpp looks for stop strings in the bytes; its stream hands out nothing after a stray byte."""
    from llama_cpp import StoppingCriteriaList

    def options() -> dict[str, Any]:
        extra = {"stopping_criteria": StoppingCriteriaList([_never])} if criteria else {}
        return {"temperature": 0, "stop": ["b"], "logits_processor": _writing(tiny_llm, written), **extra}

    messages = [{"role": "user", "content": "Once"}]
    if chat:
        request = Request(messages=messages, max_tokens=max_tokens, options=options())
    else:
        request = Request("Once", max_tokens=max_tokens, options=options())
    chunks = await collect(backend, request)
    model: Any = tiny_llm
    if chat:
        expected = model.create_chat_completion(messages, max_tokens=max_tokens, **options())
    else:
        expected = model.create_completion("Once", max_tokens=max_tokens, **options())
    assert expected["choices"][0]["finish_reason"] == "stop"
    assert expected["usage"]["completion_tokens"] <= 5  # the stop string, just after the stray byte
    got = ("".join(c.text for c in chunks), sum(c.tokens for c in chunks), chunks[-1].finish_reason)
    assert got == (text_of(expected), expected["usage"]["completion_tokens"], "stop")
    assert "sample" not in vars(tiny_llm)


def _is_open(llm: Llama) -> bool:
    """Whether the Llama still holds its model (llama-cpp-python frees it through this ExitStack)."""
    stack: Any = llm._stack
    return bool(stack._exit_callbacks)


@pytest.mark.parametrize("again", [True, False], ids=["closed-by-a-later-aclose", "closed-once-free"])
async def test_an_aclose_cancelled_while_the_model_is_busy_still_closes_the_llama(
    tiny_path: Path, again: bool
) -> None:
    """A Scheduler gives up closing after 10 s: the Llama must not stay open for good."""
    backend = LlamaCppBackend.from_path(str(tiny_path), n_ctx=128, n_threads=1, n_threads_batch=1)
    try:
        other = LlamaCppBackend(backend.llm).stream(Request("A long story:", max_tokens=200))
        await other.__anext__()  # another user of the same Llama holds the model
        with anyio.move_on_after(0.2) as scope:
            await backend.aclose()
        assert scope.cancelled_caught
        assert _is_open(backend.llm)  # not closed under the running call
        with pytest.raises(BackendError, match="closed"):
            await collect(backend, Request("x", max_tokens=2))  # the backend is closed all the same
        await other.aclose()  # type: ignore[attr-defined]
        with anyio.fail_after(10):
            if again:
                await backend.aclose()
            else:
                while _is_open(backend.llm):  # noqa: ASYNC110 - a thread closes it
                    await anyio.sleep(0.01)
        assert not _is_open(backend.llm)
        assert not llama_lock(backend.llm).locked()
    finally:
        backend.llm.close()


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_a_request_that_gave_up_waiting_for_the_model_does_not_keep_the_program_alive(
    tiny_path: Path, loop: str
) -> None:
    script = textwrap.dedent(
        """
        import sys, anyio
        from llama_cpp import Llama
        from sjfsched import Request
        from sjfsched.backends import LlamaCppBackend
        from sjfsched.backends._llama import llama_lock

        llm = Llama(sys.argv[1], n_ctx=128, n_threads=1, n_threads_batch=1, verbose=False)
        llama_lock(llm).acquire()  # someone holds the model and never lets go (a wrap() stream left open)

        async def main():
            with anyio.move_on_after(0.3) as scope:
                async for _ in LlamaCppBackend(llm).stream(Request("x", max_tokens=3)):
                    pass
            print("timed out:", scope.cancelled_caught, flush=True)

        anyio.run(main, backend=sys.argv[2])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tiny_path), loop],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "timed out: True\n"), result.stderr


@pytest.mark.parametrize("model", ["tiny", "stories260K"])
async def test_an_empty_prompt_counts_and_reads_as_llama_cpps_usage(tiny_llm: Llama, model: str) -> None:
    """llama-cpp-python starts the answer to an empty prompt with the BOS token and counts it in usage.

    Its detokenizer drops a space right after the BOS (stories260K's first word has one).
    """
    llm = tiny_llm
    if model != "tiny":
        path = stories_model()
        if path is None:
            pytest.skip(STORIES_SKIP_REASON)
        llm = Llama(str(path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        greedy = text_of(llm.create_completion("", max_tokens=20, temperature=0))
        backend = LlamaCppBackend(llm)
        for max_tokens, stop in [(10, None), (1, None), (20, [greedy[3:5]])]:
            options: dict[str, Any] = {"temperature": 0} | ({"stop": stop} if stop else {})
            request = Request("", max_tokens=max_tokens, options=options)
            chunks = await collect(backend, request)
            expected = reference(llm, request)
            got = ("".join(c.text for c in chunks), sum(c.tokens for c in chunks), chunks[-1].finish_reason)
            wanted = (
                text_of(expected),
                expected["usage"]["completion_tokens"],
                expected["choices"][0]["finish_reason"],
            )
            assert got == wanted, (max_tokens, stop)
    finally:
        if llm is not tiny_llm:
            llm.close()


async def test_a_cancelled_request_stops_while_the_stream_hands_out_nothing(tiny_llm: Llama) -> None:
    """After a byte that is no whole character, llama-cpp-python's stream hands out nothing until
    the generation ends, so one read ran to the end of the context: a request cancelled then went
    on generating, and held the model, for all of it (found by a reviewer: 38 s after a 0.5 s
    deadline on a slower model)."""
    byte_ff = next(i for i in range(tiny_llm.n_vocab()) if tiny_llm.detokenize([i]) == b"\xff")
    counts = {"samples": 0, "after": 0}
    cancelled = threading.Event()

    def invalid_first(
        input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]
    ) -> npt.NDArray[np.single]:
        counts["samples"] += 1
        if cancelled.is_set():
            counts["after"] += 1
        if counts["samples"] == 1:
            forced = np.full_like(scores, -1e9)
            forced[byte_ff] = 0.0
            return forced
        return scores

    options = {"logits_processor": LogitsProcessorList([invalid_first]), "temperature": 0.0}
    async with Scheduler(LlamaCppBackend(tiny_llm), predictor=ConstantPredictor()) as sched:
        with anyio.CancelScope() as scope:

            async def cancel_after_a_few_samples() -> None:
                while counts["samples"] < 5:  # noqa: ASYNC110  # counted in llama's thread
                    await anyio.sleep(0.0005)
                cancelled.set()
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_after_a_few_samples)
                async with sched.stream("Once", options=options) as chunks:
                    async for _ in chunks:
                        pass
        assert scope.cancelled_caught
        assert counts["after"] <= 20, counts  # the context holds hundreds more
        # The model is free for the next request.
        with anyio.fail_after(30):
            answer = await sched.complete("Once", max_tokens=3)
    assert answer.output_tokens == 3


def test_a_closed_llama_is_refused_not_a_crash(tiny_path: Path) -> None:
    """A Llama closed by a LlamaCppBackend(close_llm=True) crashed the process (a segmentation
    fault) at the next call through another backend or a wrap() over it. In a child interpreter,
    so that the old crash fails this test and not the run."""
    code = textwrap.dedent(
        f"""
        import json, anyio, llama_cpp, sjfsched
        from sjfsched import Scheduler
        from sjfsched.backends import LlamaCppBackend
        from sjfsched.predictors import ConstantPredictor

        llm = llama_cpp.Llama({str(tiny_path)!r}, n_ctx=256, n_threads=1, verbose=False)
        got = {{}}

        async def main():
            async with Scheduler(LlamaCppBackend(llm, close_llm=True), predictor=ConstantPredictor()) as s:
                await s.complete("Once", max_tokens=2)
            async with Scheduler(LlamaCppBackend(llm), predictor=ConstantPredictor()) as s:
                try:
                    await s.complete("Once", max_tokens=2)
                except sjfsched.BackendError as exc:
                    got["backend"] = str(exc)

        anyio.run(main)
        with sjfsched.wrap(llm, predictor=ConstantPredictor()) as wrapped:
            try:
                wrapped("Once", max_tokens=2)
            except RuntimeError as exc:
                got["wrap"] = str(exc)
        print(json.dumps(got))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert "the llama_cpp.Llama is closed" in got["backend"]
    assert got["wrap"].startswith("wrap(): the llama_cpp.Llama is closed")


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_read_cancelled_before_its_thread_starts_returns_and_never_reads(anyio_backend: str) -> None:
    """The shielded wait for a cancelled read waited for the worker thread to finish a read it
    never started (anyio drops a job cancelled before it runs): it hung for ever, holding the
    model (found by a reviewer, in 4 runs of 4 on asyncio)."""
    from sjfsched.backends._llama import _next

    class Watcher:
        cancelled = False

    reads: list[int] = []

    def iterator() -> Iterator[int]:
        reads.append(1)
        yield 1

    busy = threading.Event()
    limiter = anyio.to_thread.current_default_thread_limiter()
    before = limiter.total_tokens
    limiter.total_tokens = 1
    try:
        async with anyio.create_task_group() as tg:

            async def hold_the_worker() -> None:
                await anyio.to_thread.run_sync(busy.wait)

            tg.start_soon(hold_the_worker)  # takes the only worker
            try:
                await anyio.sleep(0.1)
                watcher = Watcher()
                with anyio.fail_after(5), anyio.move_on_after(0.2) as scope:
                    await _next(iterator(), watcher)  # type: ignore[arg-type]
            finally:
                busy.set()  # else a failure here would wait for ever on the held worker
        await anyio.sleep(0.1)
        assert scope.cancelled_caught
        assert reads == [] and not watcher.cancelled  # given up unread: nothing to tell llama
    finally:
        busy.set()
        limiter.total_tokens = before


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_ctrl_c_mid_read_leaves_the_model_only_once_its_work_ended(tiny_path: Path, loop: str) -> None:
    """On trio Ctrl-C ends the wait for a read running in the worker thread without trio's
    cancellation: the stream then closed llama's generator while it ran (ValueError 'generator
    already executing' replaced the KeyboardInterrupt) and gave the model's lock back while the
    thread still sampled (found by a reviewer). In a child interpreter: a real SIGINT."""
    code = textwrap.dedent(
        f"""
        import json, os, signal, threading, time, anyio
        from llama_cpp import Llama, LogitsProcessorList
        from sjfsched import Request
        from sjfsched.backends import LlamaCppBackend
        from sjfsched.backends._llama import llama_lock

        llm = Llama({str(tiny_path)!r}, n_ctx=256, n_threads=1, verbose=False)
        lock = llama_lock(llm)
        samples = []

        def slow(input_ids, scores):
            time.sleep(0.2)  # the worker thread stays inside llama's next()
            samples.append((time.monotonic(), lock.locked()))
            return scores

        request = Request("Once", max_tokens=30, options={{"logits_processor": LogitsProcessorList([slow])}})
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()

        async def main():
            async for _ in LlamaCppBackend(llm).stream(request):
                pass

        try:
            anyio.run(main, backend={loop!r})
            ended = "returned"
        except BaseException as exc:
            ended = type(exc).__name__
        at = time.monotonic()
        time.sleep(0.6)
        print(json.dumps({{"ended": ended, "after": sum(t > at for t, _ in samples),
                          "unlocked": sum(not held for _, held in samples), "locked_now": lock.locked()}}))
        """
    )
    done = run_python(code, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"ended": "KeyboardInterrupt", "after": 0, "unlocked": 0, "locked_now": False}


def test_a_llama_closed_before_any_call_is_unavailable_not_a_crash(tiny_path: Path) -> None:
    """The stop-string watcher read the vocabulary of a Llama closed before its first call
    (the test above generates first, and the freed memory happened to still read): a
    segmentation fault. Refused as unavailable now, so a pool fails over to its next backend.
    In a child interpreter, so that the old crash fails this test and not the run."""
    code = textwrap.dedent(
        f"""
        import json, anyio, llama_cpp, sjfsched
        from sjfsched import Scheduler
        from sjfsched.backends import BackendPool, LlamaCppBackend
        from sjfsched.predictors import ConstantPredictor

        def load():
            return llama_cpp.Llama({str(tiny_path)!r}, n_ctx=256, n_threads=1, verbose=False)

        closed = load()
        closed.close()
        got = {{}}

        async def main():
            async with Scheduler(LlamaCppBackend(closed), predictor=ConstantPredictor()) as s:
                for stop in (None, ["x"]):
                    try:
                        await s.complete("Once", max_tokens=2, options={{"stop": stop}})
                    except sjfsched.BackendError as exc:
                        got.setdefault("backend", []).append([type(exc).__name__, str(exc)])
            pool = BackendPool([LlamaCppBackend(closed), LlamaCppBackend(load(), close_llm=True)])
            async with Scheduler(pool, predictor=ConstantPredictor()) as s:
                answer = await s.complete("Once", max_tokens=2)
                got["pool"] = [answer.output_tokens, pool.statistics().members[0].healthy]

        anyio.run(main)
        print(json.dumps(got))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert [kind for kind, _ in got["backend"]] == ["BackendUnavailable"] * 2
    assert all("the llama_cpp.Llama is closed" in said for _, said in got["backend"])
    assert got["pool"] == [2, False]  # served by the second, the first out of rotation


async def test_a_closed_backend_in_a_pool_is_failed_over(tiny_llm: Llama) -> None:
    # "this LlamaCppBackend is closed" was the request's fault (BackendError): the pool sent
    # every request to it, first in its list, and never to the next backend.
    first, second = LlamaCppBackend(tiny_llm), LlamaCppBackend(tiny_llm)
    await first.aclose()
    pool = BackendPool([first, second])
    async with Scheduler(pool, predictor=ConstantPredictor()) as sched:
        with anyio.fail_after(30):
            answers = [await sched.complete("Once", max_tokens=2) for _ in range(3)]
        members = pool.statistics().members
    assert [a.output_tokens for a in answers] == [2, 2, 2]
    assert (members[0].healthy, members[1].served) == (False, 3)
    with pytest.raises(BackendUnavailable, match=r"this LlamaCppBackend is closed: LlamaCppBackend\("):
        await anext(aiter(first.stream(Request("Once", max_tokens=2))))  # raises: nothing to close


async def test_more_requests_waiting_for_the_model_than_anyio_has_threads_all_end(tiny_llm: Llama) -> None:
    # Each request waiting for the model held one of anyio's 40 default worker threads for its
    # whole wait, and the running answer needs one for every read of its stream: with 45
    # waiting, none went on, for ever. The program's own worker threads stay free meanwhile too.
    n = 45
    async with Scheduler(LlamaCppBackend(tiny_llm), concurrency=n, predictor=ConstantPredictor()) as sched:
        answers: list[int] = []

        async def one() -> None:
            answers.append((await sched.complete("Once", max_tokens=4)).output_tokens)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(one)
                await anyio.sleep(0.05)  # they wait for the model now
                assert await anyio.to_thread.run_sync(lambda: "free") == "free"
    assert answers == [4] * n


def test_the_last_look_cuts_at_the_first_stop_string_in_what_it_had_not_looked_at(tiny_llm: Llama) -> None:
    """At the end of a generation that ended in a wait for the rest of a character, the bytes
    not looked at yet may hold two stop strings: the answer ends before the earlier one, as
    llama-cpp-python's stream cuts it (a mutation audit found no test telling the two apart)."""
    from sjfsched.backends._llama import TokenCounter, _StopStrings

    watcher = _StopStrings(tiny_llm, ("b", "a"), TokenCounter(starts_with_bos=False))
    watcher._text = b"xab\xe2\x82"  # sampled during the wait: no look since the start
    assert watcher.last_look() == b"x"
    watcher = _StopStrings(tiny_llm, ("zz",), TokenCounter(starts_with_bos=False))
    watcher._text = b"xab\xe2\x82"
    assert watcher.last_look() is None
