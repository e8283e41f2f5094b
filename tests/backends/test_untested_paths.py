"""HTTP adapter paths a mutation audit found no test for, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from sjfsched import Chunk, Request
from sjfsched.backends import OllamaBackend, OpenAIBackend
from sjfsched.backends._base import resume_by_continuation
from tests.support.wire_server import scripted_server

from .test_wire import collect

pytestmark = pytest.mark.anyio


async def test_ollama_text_on_the_done_line_is_part_of_the_answer() -> None:
    lines = [
        json.dumps(m).encode() + b"\n"
        for m in (
            {"response": "a", "done": False},
            {"response": "bc", "done": True, "done_reason": "stop", "eval_count": 3, "prompt_eval_count": 2},
        )
    ]
    with scripted_server(lines) as url:
        chunks = await collect(OllamaBackend("m", url), Request("x"))
    assert "".join(c.text for c in chunks) == "abc"
    assert sum(c.tokens for c in chunks) == 3


def test_no_limit_in_the_options_is_sent_as_none() -> None:
    """A limit in the options is refused by Request; None (no limit) is left out, not sent as null."""
    for options in ({"max_tokens": None}, {"options": {"num_predict": None}}):
        _, body = OllamaBackend("m").body(Request("x", options=options))
        assert "options" not in body, options
        _, body = OllamaBackend("m").body(Request("x", max_tokens=3, options=options))
        assert body["options"] == {"num_predict": 3}, options
    # Ollama's "no limit" (-1; -2 fills the context) is sent on: it lifts a Modelfile's num_predict.
    unlimited: tuple[dict[str, object], ...] = (
        {"max_tokens": -1},
        {"num_predict": -2},
        {"options": {"num_predict": -1}},
    )
    for given in unlimited:
        _, body = OllamaBackend("m").body(Request("x", options=given))
        assert body["options"] == {"num_predict": given.get("num_predict", -1)}, given


async def test_the_documented_read_timeout() -> None:
    """docs/backends/ollama.md and openai.md: 300 s between two pieces of an answer."""
    backends = (OllamaBackend("m"), OpenAIBackend("http://127.0.0.1:1/v1", model="m"))
    try:
        assert [b._http.read_timeout for b in backends] == [300.0, 300.0]
    finally:
        for b in backends:
            await b.aclose()


def test_a_requests_own_keep_alive_wins_over_the_backends() -> None:
    backend = OllamaBackend("tiny", "http://127.0.0.1:1", keep_alive="10m")
    _, body = backend.body(Request("hi", options={"keep_alive": "1m"}))
    assert body["keep_alive"] == "1m"
    _, body = backend.body(Request("hi"))
    assert body["keep_alive"] == "10m"


async def test_a_resume_counts_at_least_the_tokens_the_chunks_counted() -> None:
    # written (what the backend can tell) below tokens (what the chunks counted) is not exact:
    # the continuation asks for max_tokens less the larger, and no chunk's count is cut.
    seen: list[Request] = []

    async def stream(rest: Request) -> AsyncIterator[Chunk]:
        seen.append(rest)
        yield Chunk("a", tokens=2)
        yield Chunk("b", tokens=1, finish_reason="stop")

    request = Request("Once", max_tokens=10)
    chunks = [c async for c in resume_by_continuation(stream, request, " upon", 5, written=3)]
    assert seen[0].max_tokens == 5
    assert [c.tokens for c in chunks] == [2, 1]
