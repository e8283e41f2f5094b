"""HTTP adapter paths a mutation audit found no test for, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from sjfsched import Request
from sjfsched.backends import OllamaBackend, OpenAIBackend
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
