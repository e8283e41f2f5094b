"""OpenAIBackend against llama_cpp.server and Ollama's OpenAI-compatible endpoints."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest
from llama_cpp import Llama

from sjfsched import BackendError, Chunk, Request
from sjfsched.backends import BackendUnavailable, OpenAIBackend
from tests.support.models import free_port
from tests.support.ollama_server import OllamaServer

pytestmark = pytest.mark.anyio

#: llama_cpp.server's defaults differ from Llama.create_completion's: pin them.
SAME: dict[str, Any] = {"temperature": 0.0, "repeat_penalty": 1.0, "top_p": 0.95, "min_p": 0.05, "top_k": 40}


@pytest.fixture
async def backend(openai_url: str) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend(openai_url, model="tiny")
    yield backend
    await backend.aclose()


@pytest.fixture
async def via_ollama(ollama: OllamaServer) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend(f"{ollama.url}/v1", model="tiny", api_key="secret")
    yield backend
    await backend.aclose()


async def collect(backend: OpenAIBackend, request: Request) -> list[Chunk]:
    with anyio.fail_after(60):
        return [chunk async for chunk in backend.stream(request)]


async def test_completions_stream_what_the_model_writes(backend: OpenAIBackend, tiny_llm: Llama) -> None:
    request = Request("Once upon a time", max_tokens=25, options=SAME)
    chunks = await collect(backend, request)
    expected: Any = tiny_llm.create_completion("Once upon a time", max_tokens=25, **SAME)
    assert "".join(c.text for c in chunks) == expected["choices"][0]["text"]
    assert len(chunks) == 26  # one event per token, and the final chunk
    # llama_cpp.server sends no usage: the count is the chunks, and max_tokens
    # exactly since it stopped for "length".
    assert sum(c.tokens for c in chunks) == 25
    assert chunks[-1].finish_reason == "length"
    assert all(c.prompt_tokens is None for c in chunks)


async def test_chat_completions(backend: OpenAIBackend, tiny_llm: Llama) -> None:
    messages = [{"role": "user", "content": "Hello!"}]
    chunks = await collect(backend, Request(messages=messages, max_tokens=9, options=SAME))
    expected: Any = tiny_llm.create_chat_completion(messages, max_tokens=9, **SAME)  # type: ignore[arg-type]
    assert "".join(c.text for c in chunks) == expected["choices"][0]["message"]["content"]
    assert sum(c.tokens for c in chunks) == 9


async def test_model_none_asks_the_server(openai_url: str) -> None:
    backend = OpenAIBackend(openai_url.removesuffix("/v1"))  # no path: /v1 is added
    assert backend.base_url == openai_url
    chunks = await collect(backend, Request("Hi", max_tokens=2))
    assert backend.model == "tiny"
    assert sum(c.tokens for c in chunks) == 2
    await backend.aclose()


async def test_a_callers_client_sends_the_key_and_headers_on_every_request(ollama: OllamaServer) -> None:
    """With the caller's own httpx client, the key and headers go with the model lookup and the stream."""
    seen = len(ollama.gets)  # the server is shared by the module's tests
    async with httpx.AsyncClient() as client:
        backend = OpenAIBackend(f"{ollama.url}/v1", api_key="secret", headers={"X-Team": "a"}, client=client)
        chunks = await collect(backend, Request("Hi", max_tokens=3))
        await backend.aclose()
        assert not client.is_closed  # the caller's client is the caller's to close
    ollama.wait_idle()
    assert backend.model == "tiny:latest"  # the first model the server lists
    assert sum(c.tokens for c in chunks) == 3
    gets = [headers for path, headers in ollama.gets[seen:] if path == "/v1/models"]
    assert len(gets) == 1
    assert gets[0]["authorization"] == ollama.records[-1].headers["authorization"] == "Bearer secret"
    assert gets[0]["x-team"] == ollama.records[-1].headers["x-team"] == "a"


async def test_credentials_in_the_url_are_sent_and_never_shown(ollama: OllamaServer) -> None:
    """httpx sends a URL's user:password@ as basic auth; repr(), errors and a pool's statistics
    printed the password."""
    host = ollama.url.removeprefix("http://")
    backend = OpenAIBackend(f"http://alice:s3cr3t@{host}/v1", model="tiny")
    assert sum(c.tokens for c in await collect(backend, Request("Hi", max_tokens=2))) == 2
    await backend.aclose()
    ollama.wait_idle()
    assert ollama.records[-1].headers["authorization"] == "Basic YWxpY2U6czNjcjN0"  # alice:s3cr3t
    assert repr(backend) == f"OpenAIBackend('http://***@{host}/v1', model='tiny', slots=1)"
    assert backend.base_url == f"http://alice:s3cr3t@{host}/v1"  # the attribute is the URL given
    dead = OpenAIBackend(f"http://alice:s3cr3t@127.0.0.1:{free_port()}/v1", model="m")
    with pytest.raises(BackendUnavailable) as refused:
        await collect(dead, Request("Hi"))
    await dead.aclose()
    assert "s3cr3t" not in str(refused.value) and "http://***@127.0.0.1:" in str(refused.value)
    with pytest.raises(ValueError, match=r"got 'http://\*\*\*@'") as bad:
        OpenAIBackend("http://alice:s3cr3t@", model="m")
    assert "s3cr3t" not in str(bad.value)


async def test_usage_from_the_server_makes_counts_exact(
    via_ollama: OpenAIBackend, ollama: OllamaServer
) -> None:
    greedy = "".join(c.text for c in await collect(via_ollama, Request("Tell:", max_tokens=60, options=SAME)))
    stop = greedy[30:32]
    chunks = await collect(via_ollama, Request("Tell:", max_tokens=60, options={**SAME, "stop": [stop]}))
    ollama.wait_idle()
    record = ollama.records[-1]
    assert record.endpoint == "v1/generate"
    assert "".join(c.text for c in chunks) == greedy[: greedy.index(stop)]
    # Held-back text merged some tokens into one event; the usage chunk fixed the sum.
    assert sum(c.tokens for c in chunks) == record.generated
    assert [c.prompt_tokens for c in chunks if c.prompt_tokens is not None] == [record.prompt_tokens]
    assert chunks[-1].finish_reason == "stop"
    assert record.headers["authorization"] == "Bearer secret"


async def test_chat_via_ollamas_openai_layer(via_ollama: OpenAIBackend, ollama: OllamaServer) -> None:
    chunks = await collect(via_ollama, Request(messages=[{"role": "user", "content": "Hi"}], max_tokens=7))
    ollama.wait_idle()
    assert ollama.records[-1].endpoint == "v1/chat"
    assert sum(c.tokens for c in chunks) == ollama.records[-1].generated == 7


def test_body() -> None:
    backend = OpenAIBackend("http://127.0.0.1:1234/v1", model="m", include_usage=False)
    path, body = backend.body(Request("p", max_tokens=5, options={"temperature": 0.1, "seed": 2}), "m")
    assert path == "/completions"
    assert body == {
        "model": "m",
        "prompt": "p",
        "stream": True,
        "temperature": 0.1,
        "seed": 2,
        "max_tokens": 5,
    }
    path, body = OpenAIBackend("http://h/v1").body(Request(messages=[{"role": "user", "content": "x"}]), "m")
    assert path == "/chat/completions"
    assert body["stream_options"] == {"include_usage": True}
    with pytest.raises(BackendError, match="'stream' itself"):
        backend.body(Request("p", options={"stream": False}), "m")


# ------------------------------------------------------------------- errors


async def test_server_errors_carry_the_servers_message(backend: OpenAIBackend) -> None:
    # llama_cpp.server answers a body it cannot validate with a 500 and pydantic's message.
    with pytest.raises(BackendError, match="temperature") as info:
        await collect(backend, Request("Hi", max_tokens=4, options={"temperature": "hot"}))
    assert info.value.status_code == 500


async def test_a_stream_that_ends_without_an_answer_is_an_error(backend: OpenAIBackend) -> None:
    # A prompt longer than the context: llama_cpp.server starts the event
    # stream (200) and ends it at once, with neither text nor finish_reason.
    # The request's fault, not the server's: it was BackendUnavailable, and a
    # BackendPool took every server out of rotation in turn, sending each that prompt.
    with pytest.raises(BackendError, match="ended the stream at once, sending nothing") as info:
        await collect(backend, Request("x" * 700, max_tokens=4))
    assert not isinstance(info.value, BackendUnavailable)
    assert (await collect(backend, Request("Hi", max_tokens=2)))[-1].finish_reason == "length"


async def test_a_stream_the_server_cuts_short_for_another_request_is_an_error(openai_url: str) -> None:
    """llama_cpp.server (--interrupt_requests True, its default) ends a running stream with
    [DONE] and no finish reason when another request arrives: the cut answer was passed off
    as whole ("stop")."""
    backend = OpenAIBackend(openai_url, model="tiny", slots=2)
    second: list[Chunk] = []

    async def other_client() -> None:
        second.extend(await collect(backend, Request("Hello", max_tokens=5, options=SAME)))

    first: list[Chunk] = []

    async def read_first(tg: anyio.abc.TaskGroup) -> None:
        async for chunk in backend.stream(Request("Once upon a time", max_tokens=450, options=SAME)):
            first.append(chunk)
            if len(first) == 1:
                tg.start_soon(other_client)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            with pytest.raises(BackendError, match="the answer was cut short") as caught:
                await read_first(tg)
    await backend.aclose()
    assert not isinstance(caught.value, BackendUnavailable)
    assert 1 <= len(first) < 450
    assert sum(c.tokens for c in second) == 5 and second[-1].finish_reason == "length"


async def test_unknown_model(ollama: OllamaServer) -> None:
    backend = OpenAIBackend(f"{ollama.url}/v1", model="nope")
    with pytest.raises(BackendError, match="model 'nope' not found") as info:
        await collect(backend, Request("Hi"))
    assert info.value.status_code == 404
    await backend.aclose()


async def test_connection_refused() -> None:
    backend = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", model="m")
    with pytest.raises(BackendUnavailable, match="cannot connect") as info:
        await collect(backend, Request("Hi"))
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    await backend.aclose()


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("close:3", "broke mid-response|ended the stream before"),
        ("garbage:3", "malformed event"),
        # Ollama's OpenAI layer loses an error's text once the stream has begun.
        ("error:3", "ended the stream before the answer was complete"),
    ],
    ids=["dies-mid-stream", "garbage-event", "error-event"],
)
async def test_faults_mid_stream(ollama: OllamaServer, fault: str, message: str) -> None:
    backend = OpenAIBackend(f"{ollama.url}/v1", model="tiny", headers={"X-Test-Fault": fault})
    received: list[Chunk] = []

    async def read() -> None:
        async for chunk in backend.stream(Request("Story:", max_tokens=50)):
            received.append(chunk)  # noqa: PERF401 - kept when the stream fails

    with pytest.raises(BackendUnavailable, match=message):
        await read()
    assert len(received) == 3
    await backend.aclose()


async def test_read_timeout(ollama: OllamaServer) -> None:
    backend = OpenAIBackend(
        f"{ollama.url}/v1", model="tiny", read_timeout=0.3, headers={"X-Test-Fault": "stall:2:2"}
    )
    with pytest.raises(BackendUnavailable, match=r"sent nothing for 0\.3 s"):
        await collect(backend, Request("Story:", max_tokens=50))
    await backend.aclose()
    await anyio.to_thread.run_sync(ollama.wait_idle, 10.0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="model"):
        OpenAIBackend("http://h/v1", model="")
    with pytest.raises(ValueError, match="base_url"):
        OpenAIBackend("h:8080")
    # Quoted as given, not with the /v1 added to a URL without a path ("got '/v1'").
    for bad in ("", "/", "http://", "h"):
        with pytest.raises(ValueError, match=re.escape(f"URL with a host, got {bad!r}") + "$"):
            OpenAIBackend(bad)
    with pytest.raises(ValueError, match="connect_timeout"):
        OpenAIBackend("http://h/v1", connect_timeout=0)
    with pytest.raises(TypeError, match="include_usage must be True or False"):
        OpenAIBackend("http://h/v1", include_usage="false")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="headers must be a mapping"):
        OpenAIBackend("http://h/v1", headers="abc")  # type: ignore[arg-type]


def test_the_limit_goes_in_the_field_the_server_reads() -> None:
    """A server that refuses max_tokens (OpenAI's own, for some models) gets
    max_completion_tokens; a limit in the options, the only way before, is refused by Request."""
    newer = OpenAIBackend("http://h/v1", model="m", limit_field="max_completion_tokens")
    chat = Request(messages=[{"role": "user", "content": "x"}], max_tokens=7, options={"max_tokens": -1})
    path, body = newer.body(chat, "m")
    # Only the field the server reads: the options' "no limit" beside it would lift the limit.
    assert (path, body["max_completion_tokens"]) == ("/chat/completions", 7) and "max_tokens" not in body
    path, body = newer.body(Request("x", max_tokens=7), "m")  # /completions has max_tokens only
    assert (path, body["max_tokens"]) == ("/completions", 7) and "max_completion_tokens" not in body
    _, body = OpenAIBackend("http://h/v1").body(Request("x", max_tokens=7), "m")
    assert body["max_tokens"] == 7 and "max_completion_tokens" not in body
    unlimited = Request("x", max_tokens=7, options={"max_completion_tokens": 0})
    _, body = OpenAIBackend("http://h/v1").body(unlimited, "m")
    assert (body["max_tokens"], "max_completion_tokens" in body) == (7, False)
    with pytest.raises(ValueError, match="limit_field must be 'max_tokens' or 'max_completion_tokens'"):
        OpenAIBackend("http://h/v1", limit_field="max_new_tokens")  # type: ignore[arg-type]


def test_one_authorization_header_whatever_its_case() -> None:
    mine = OpenAIBackend("http://h/v1", api_key="NEW", headers={"authorization": "Bearer OLD"})
    assert [v for k, v in mine._http.headers.items() if k.lower() == "authorization"] == ["Bearer OLD"]
    keyed = OpenAIBackend("http://h/v1", api_key="NEW")
    assert keyed._http.headers == {"Authorization": "Bearer NEW"}
