"""Pausing and resuming answers on real llama.cpp generation: in process and over HTTP."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import anyio
import pytest
from llama_cpp import Llama

from sjfsched import BackendError, Chunk, Completion, Prediction, Request, Scheduler
from sjfsched.backends import BackendUnavailable, LlamaCppBackend, OllamaBackend, OpenAIBackend, Resumable
from sjfsched.backends._base import continuation
from tests.support.models import STORIES_SKIP_REASON, stories_model
from tests.support.wire_server import ChunkedAnswers, scripted_server, serving

pytestmark = pytest.mark.anyio

#: llama_cpp.server's defaults differ from Llama.create_completion's: pin them.
SAME: dict[str, Any] = {"temperature": 0.0, "repeat_penalty": 1.0, "top_p": 0.95, "min_p": 0.05, "top_k": 40}


class ByMaxTokens:
    """Predicts each request's ``max_tokens``."""

    def predict(self, request: Request, /) -> Prediction:
        return Prediction(float(request.max_tokens or 256), prompt_tokens=1.0)


def reference(llm: Llama, request: Request) -> tuple[str, int]:
    """What llama-cpp-python itself writes for a prompt request, not streamed, and its length."""
    model: Any = llm
    answer = model.create_completion(request.prompt, max_tokens=request.max_tokens, **request.options)
    return str(answer["choices"][0]["text"]), int(answer["usage"]["completion_tokens"])


def reference_text(llm: Llama, request: Request) -> str:
    return reference(llm, request)[0]


async def read_until(chunks: Any, tokens: int) -> tuple[str, int]:
    text, counted = "", 0
    async for chunk in chunks:
        text += chunk.text
        counted += chunk.tokens
        if counted >= tokens:
            break
    return text, counted


async def test_llama_cpp_goes_on_with_a_closed_answer_as_llama_cpp_writes_the_continuation(
    tiny_llm: Llama,
) -> None:
    backend = LlamaCppBackend(tiny_llm)
    request = Request("Once upon a time", max_tokens=30, options={"temperature": 0})
    assert isinstance(backend, Resumable) and backend.resumable(request)
    with anyio.fail_after(60):
        stream = backend.stream(request)
        text, counted = await read_until(stream, 8)
        await stream.aclose()  # type: ignore[attr-defined]
        rest = [chunk async for chunk in backend.resume(request, text, counted)]
    written = len(tiny_llm.tokenize(text.encode(), add_bos=False))
    expected = continuation(request, text, written)
    assert expected is not None and expected.max_tokens == 30 - written
    assert "".join(c.text for c in rest) == reference_text(tiny_llm, expected)
    assert counted + sum(c.tokens for c in rest) == 30  # to max_tokens, the uncounted token too
    assert rest[-1].finish_reason == "length"


async def test_llama_cpp_does_not_pause_a_chat_request(tiny_llm: Llama) -> None:
    backend = LlamaCppBackend(tiny_llm)
    assert not backend.resumable(Request(messages=[{"role": "user", "content": "hi"}]))


async def test_a_resumed_answer_at_max_tokens_ends_without_generating(tiny_llm: Llama) -> None:
    backend = LlamaCppBackend(tiny_llm)
    request = Request("Once upon a time", max_tokens=3, options={"temperature": 0})
    whole = "".join([chunk.text async for chunk in backend.stream(request)])
    rest = [chunk async for chunk in backend.resume(request, whole, 3)]
    assert rest == [Chunk("", tokens=0, finish_reason="length")]


async def test_tokens_counted_whose_text_was_held_back_are_written_again_and_counted_once(
    tiny_llm: Llama,
) -> None:
    # Counted, but held back (they may begin a stop string): the resumed answer took them for
    # written, and came out that many tokens short, though counted at max_tokens.
    backend = LlamaCppBackend(tiny_llm)
    request = Request("Once upon a time", max_tokens=3, options={"temperature": 0})
    whole = "".join([chunk.text async for chunk in backend.stream(request)])
    rest = [chunk async for chunk in backend.resume(request, "", 3)]
    assert "".join(chunk.text for chunk in rest) == whole
    assert sum(chunk.tokens for chunk in rest) == 0  # the 3 were counted before the pause


async def scheduled_long_and_short(
    backend: Any, long: Request, short: Request, pause_after: int = 5
) -> tuple[str, int, Completion, Completion]:
    """Stream ``long``; after its first ``pause_after`` tokens submit ``short``; read ``long`` to its end.

    The model writes only as a stream is read, so the short request is waiting when the
    long one's next chunk is asked for: there the long one is paused.  Returns the long
    one's text and counted tokens before the pause, and both completions.
    """
    done: dict[str, Completion] = {}
    before, counted, submitted = "", 0, False
    async with Scheduler(backend, predictor=ByMaxTokens(), learn_rates=False) as sched:

        async def short_one() -> None:
            done["short"] = await sched.complete(short)

        async with anyio.create_task_group() as tg:
            with anyio.fail_after(120):
                async with sched.stream(long) as chunks:
                    async for chunk in chunks:
                        if submitted:
                            continue
                        before += chunk.text
                        counted += chunk.tokens
                        if counted >= pause_after:
                            submitted = True
                            tg.start_soon(short_one)
                            await anyio.sleep(0.2)  # queued, and ranked first
                done["long"] = chunks.completion
    return before, counted, done["long"], done["short"]


async def test_a_scheduled_llama_cpp_answer_is_paused_for_a_shorter_one_and_completed() -> None:
    path = stories_model()
    if path is None:
        pytest.skip(STORIES_SKIP_REASON)
    llm = Llama(str(path), n_ctx=512, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        long = Request("Once upon a time", max_tokens=120, options={"temperature": 0})
        short = Request("Lily and Tom", max_tokens=5, options={"temperature": 0})
        before, _, done_long, done_short = await scheduled_long_and_short(LlamaCppBackend(llm), long, short)
        assert done_long.preemptions == 1
        assert done_short.finished < done_long.finished
        assert done_short.text == reference_text(llm, short)
        # The tokens the answer so far adds after the prompt (stories260K's vocabulary puts a
        # space before a text's first word: the answer tokenized alone counted one token more,
        # and the whole answer came out a token short of max_tokens).
        prompt = b"Once upon a time"
        written = len(llm.tokenize(prompt + before.encode())) - len(llm.tokenize(prompt))
        assert written < len(llm.tokenize(before.encode(), add_bos=False))
        rest = continuation(long, before, written)
        assert rest is not None
        rest_text, rest_tokens = reference(llm, rest)
        assert done_long.text == before + rest_text
        assert "Lily" in done_long.text  # the real model, going on with its story
        assert done_long.output_tokens == written + rest_tokens == 120
        # Greedy, without penalties: the answer paused and resumed is the answer never paused.
        assert (done_long.text, done_long.output_tokens) == reference(llm, long)
        assert done_long.prompt_tokens == len(llm.tokenize(prompt))
    finally:
        llm.close()


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "stop", "pause_after"),
    [
        # An empty prompt's answer begins with the BOS, which llama-cpp-python counts: resumed,
        # it was one token longer.
        ("", 20, None, 5),
        # Text held back as what may begin a stop string was counted, then taken for written:
        # the resumed answer came out short; held back mid-token (" " of " little"), the
        # continuation, tokenized anew, went elsewhere.
        ("Once upon a time", 12, [", there is"], 1),
        ("Once upon a time", 12, ["little boy"], 4),
        # To the context's end: an empty prompt's BOS takes a place in it (the resumed answer
        # was one token longer); special-token text in the prompt is one token as llama reads
        # it (counted as several, the context seemed full 35 tokens early).
        ("", None, None, 5),
        ("Once upon a time</s>" * 8 + "Once upon a time", None, None, 175),
    ],
)
async def test_a_paused_llama_cpp_answer_is_the_answer_never_paused(
    prompt: str, max_tokens: int | None, stop: list[str] | None, pause_after: int
) -> None:
    path = stories_model()
    if path is None:
        pytest.skip(STORIES_SKIP_REASON)
    llm = Llama(str(path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
    options: dict[str, Any] = {"temperature": 0, **({"stop": stop} if stop else {})}
    long = Request(prompt, max_tokens=max_tokens, options=options)
    expected, expected_tokens = reference(llm, long)
    _, _, done, _ = await scheduled_long_and_short(
        LlamaCppBackend(llm), long, Request("Hi", max_tokens=2, options={"temperature": 0}), pause_after
    )
    assert done.text == expected
    assert done.output_tokens == expected_tokens
    llm.close()


async def test_resuming_on_a_llama_closed_meanwhile_is_an_error_not_a_crash(tiny_path: Path) -> None:
    # resume() tokenized on the closed Llama outside the model's lock: the process died (SIGSEGV).
    llm = Llama(str(tiny_path), n_ctx=256, n_threads=1, verbose=False)
    backend = LlamaCppBackend(llm)
    llm.close()
    with pytest.raises(BackendError, match=r"the llama_cpp\.Llama is closed"):
        async for _ in backend.resume(Request("Once", max_tokens=8), " upon", 1):
            pass


async def test_an_openai_completions_answer_is_paused_over_http_and_completed(
    openai_url: str, tiny_llm: Llama
) -> None:
    backend = OpenAIBackend(openai_url, model="tiny")
    long = Request("Once upon a time", max_tokens=40, options=SAME)
    short = Request("Hello", max_tokens=3, options=SAME)
    assert backend.resumable(long)
    assert not backend.resumable(Request(messages=[{"role": "user", "content": "hi"}]))
    # Without a limit the server's default (16 for llama_cpp.server) would apply again to the rest.
    assert not backend.resumable(Request("Once upon a time"))
    try:
        before, counted, done_long, done_short = await scheduled_long_and_short(backend, long, short)
    finally:
        await backend.aclose()
    assert done_long.preemptions == 1
    assert done_short.finished < done_long.finished
    assert done_short.text == reference_text(tiny_llm, short)
    # The server counts a token a chunk (no usage): the answer so far was counted whole.
    assert counted == 5
    rest = continuation(long, before, counted)
    assert rest is not None
    assert done_long.text == before + reference_text(tiny_llm, rest)
    assert done_long.output_tokens == 40


def test_a_continuation_asks_for_the_least_tokens_left_to_write() -> None:
    # vLLM answers 400 where min_tokens > max_tokens, and llama_cpp.server would write
    # min_tokens more: the rest of an answer asks for what is left of both.
    request = Request("Once upon a time", max_tokens=10, options={"min_tokens": 8, "temperature": 0.0})
    rest = continuation(request, " there", 4)
    assert rest is not None
    assert (rest.max_tokens, rest.options["min_tokens"], rest.options["temperature"]) == (6, 4, 0.0)
    rest = continuation(request, " there was", 9)
    assert rest is not None and (rest.max_tokens, rest.options["min_tokens"]) == (1, 0)
    assert continuation(request, " there was", 10) is None


async def test_ollama_answers_are_not_paused() -> None:
    """Ollama's /api/generate applies the model's template to the prompt: an answer cannot be
    continued through it, so the backend is not Resumable."""
    backend = OllamaBackend("tiny", "http://127.0.0.1:1")
    seen: object = backend
    assert not isinstance(seen, Resumable)
    await backend.aclose()


def _stories(n_ctx: int = 512) -> Llama:
    path = stories_model()
    if path is None:
        pytest.skip(STORIES_SKIP_REASON)
    return Llama(str(path), n_ctx=n_ctx, n_threads=1, n_threads_batch=1, verbose=False)


async def test_an_answer_paused_as_it_fills_the_context_ends_as_the_answer_never_paused() -> None:
    """The continuation's prompt, the prompt and the whole answer so far, filled the context:
    llama.cpp refused it (BackendError), where the answer never paused ends with "length"."""
    llm = _stories(n_ctx=256)
    try:
        long = Request("Once upon a time", options={"temperature": 0})  # to the end of the context
        short = Request("Lily and Tom", max_tokens=5, options={"temperature": 0})
        text, tokens = reference(llm, long)
        assert tokens > 240
        _, _, done, _ = await scheduled_long_and_short(
            LlamaCppBackend(llm), long, short, pause_after=tokens - 1
        )
        assert done.preemptions == 1
        assert (done.text, done.output_tokens, done.finish_reason) == (text, tokens, "length")
    finally:
        llm.close()


@pytest.mark.parametrize(
    "options",
    [
        {"grammar": "G"},
        {"suffix": " The end."},
        {"repeat_penalty": 1.3},
        {"frequency_penalty": 0.5},
        {"presence_penalty": 0.5},
    ],
)
async def test_what_a_new_call_over_the_text_so_far_cannot_go_on_with_is_not_paused(
    tiny_llm: Llama, options: dict[str, Any]
) -> None:
    """A grammar would start over (a paused answer left its grammar), a suffix would come before the
    text so far (the middle began again), a penalty would forget the earlier tokens."""
    backend = LlamaCppBackend(tiny_llm)
    assert not backend.resumable(Request("Once upon a time", max_tokens=30, options=options))
    neutral = {"repeat_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0, "suffix": None}
    assert backend.resumable(Request("Once upon a time", max_tokens=30, options=neutral))


async def test_a_grammar_answer_is_not_paused_and_stays_in_its_grammar() -> None:
    from llama_cpp.llama_grammar import LlamaGrammar

    llm = _stories()
    try:
        grammar = LlamaGrammar.from_string(
            'root ::= "[" word ("," word)* "]"\nword ::= [a-z]{3}', verbose=False
        )
        long = Request("Once upon a time", max_tokens=40, options={"temperature": 0, "grammar": grammar})
        short = Request("Lily and Tom", max_tokens=5, options={"temperature": 0})
        _, _, done, done_short = await scheduled_long_and_short(LlamaCppBackend(llm), long, short)
        assert done.preemptions == 0 and done_short.finished > done.finished
        assert re.fullmatch(r"\[[a-z]{3}(,[a-z]{3})*\]?|\[[a-z]{3}(,[a-z]{3})*,?[a-z]{0,2}", done.text), (
            done.text
        )
    finally:
        llm.close()


@pytest.mark.parametrize(
    "options",
    [
        {"grammar": "root ::= [a-z]+"},
        {"json_schema": {"type": "object"}},
        {"response_format": {"type": "json_object"}},
        {"guided_regex": "[a-z]+"},
        {"suffix": " The end."},
        {"frequency_penalty": 0.5},
        {"repeat_penalty": 1.1},
        {"repetition_penalty": 1.2},
        # The answer so far begins with the prompt, which the new prompt would hold twice.
        {"echo": True},
    ],
)
def test_an_openai_completions_request_a_new_request_could_not_go_on_with_is_not_paused(
    options: dict[str, Any],
) -> None:
    """As for llama.cpp in process: a form constraint would start over, a suffix would come before
    the text so far, a penalty would forget the earlier tokens."""
    backend = OpenAIBackend("http://127.0.0.1:9/v1", model="m")
    assert not backend.resumable(Request("Once upon a time", max_tokens=30, options=options))
    neutral = {"frequency_penalty": 0.0, "repeat_penalty": 1.0, "grammar": None, "suffix": "", "echo": False}
    assert backend.resumable(Request("Once upon a time", max_tokens=30, options=neutral))


async def test_an_openai_answer_cut_by_a_stop_string_is_not_paused_after_its_last_text() -> None:
    """llama_cpp.server, matching a stop string inside a token, sends the text before it and then
    the finish in an event of its own: the answer was paused after that text (its end not yet
    seen), and the rest went on past the stop string to max_tokens."""
    events = [
        b"data: "
        + json.dumps({"choices": [{"index": 0, "text": "a", "finish_reason": None}]}).encode()
        + b"\n\n"
        for _ in range(6)
    ]
    events.append(b'data: {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}\n\n')
    events.append(b"data: [DONE]\n\n")
    with scripted_server(events, content_type="text/event-stream") as url:
        backend = OpenAIBackend(url, model="m")
        long = Request("Once upon a time", max_tokens=30, options={"stop": ["play outside"]})
        short = Request("Lily", max_tokens=2)
        _, _, done, _ = await scheduled_long_and_short(backend, long, short, pause_after=6)
    assert (done.preemptions, done.text, done.finish_reason) == (0, "aaaaaa", "stop")


async def test_a_held_chunk_reaches_the_caller_before_the_connection_breaks() -> None:
    """Holding each chunk for the next event (a stop option) dropped the last text the server sent
    when the connection then broke: the caller got one piece less before the error."""

    class Breaking(ChunkedAnswers):
        def do_POST(self) -> None:
            self.begin("text/event-stream")
            for text in ("Hello", " world"):
                piece = {"choices": [{"index": 0, "text": text, "finish_reason": None}]}
                self.chunk(b"data: " + json.dumps(piece).encode() + b"\n\n")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # gone, mid-answer

    with serving(Breaking) as url:
        backend = OpenAIBackend(url, model="m")
        texts: list[str] = []

        async def read() -> None:
            async for chunk in backend.stream(Request("x", max_tokens=10, options={"stop": ["\n"]})):
                texts.append(chunk.text)  # noqa: PERF401 - what came before the error counts

        with pytest.raises(BackendUnavailable):
            await read()
    assert texts == ["Hello", " world"]
