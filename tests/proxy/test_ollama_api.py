"""The proxy in front of an Ollama server: the official ``ollama`` client and httpx, unchanged."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import ollama as ollama_client
import openai
import pytest

from tests.support import shared
from tests.support.ollama_server import OllamaServer

from .conftest import ProxyFactory
from .harness import RunningProxy

pytestmark = pytest.mark.slow

MODEL = "tiny"


def _records(server: OllamaServer, run: str) -> list[dict[str, object]]:
    return [
        {"outcome": r.outcome, "generated": r.generated, "headers": r.headers, "endpoint": r.endpoint}
        for r in server.records
        if r.headers.get("x-test-run") == run
    ]


def test_detects_ollama_and_schedules_its_generation_calls(ollama_proxy: RunningProxy) -> None:
    assert ollama_proxy.app.api == "ollama"
    assert set(ollama_proxy.app.scheduled_paths) == {
        "/api/generate",
        "/api/chat",
        "/v1/chat/completions",
        "/v1/completions",
    }


def test_ollama_client_generate_and_chat(ollama: OllamaServer, ollama_proxy: RunningProxy) -> None:
    run = uuid.uuid4().hex
    with ollama_client.Client(host=ollama_proxy.url, headers={"X-Test-Run": run}) as client:
        _generate_and_chat(client)

    # The upstream saw the four requests, with the client's own headers.
    records = _records(ollama, run)
    assert [r["endpoint"] for r in records] == ["generate", "chat", "generate", "chat"]
    assert all(r["outcome"] == "done" for r in records)
    first_headers = records[0]["headers"]
    assert isinstance(first_headers, dict)
    assert first_headers["user-agent"].startswith("ollama-python")
    assert first_headers["accept-encoding"] == "identity"  # so the proxy can read the answer

    # A streamed answer's job ends just after its last line reaches the client.
    ollama_proxy.wait_until(lambda s: s.running == 0 and s.waiting == 0)
    stats = ollama_proxy.stats()
    assert (stats.completed, stats.failed, stats.cancelled, stats.waiting, stats.running) == (4, 0, 0, 0, 0)
    metrics = ollama_proxy.metrics()
    assert metrics["sjfsched_output_tokens_total"] == 7 + 5 + 6 + 4  # Ollama's eval_count, exactly
    assert metrics['sjfsched_requests_total{outcome="completed"}'] == 4


def _generate_and_chat(client: ollama_client.Client) -> None:
    answer = client.generate(model=MODEL, prompt="Once upon a time", options={"num_predict": 7, "seed": 1})
    assert answer.done and answer.eval_count == 7 and answer.done_reason == "length"
    assert answer.response
    chat = client.chat(
        model=MODEL, messages=[{"role": "user", "content": "Hello there"}], options={"num_predict": 5}
    )
    assert chat.done and chat.eval_count == 5 and chat.message.role == "assistant"

    parts = list(client.generate(model=MODEL, prompt="Tell me", options={"num_predict": 6}, stream=True))
    assert parts[-1].done and parts[-1].eval_count == 6
    assert sum(1 for p in parts if p.response) >= 5  # one line per token, as the upstream sent them
    chat_parts = list(
        client.chat(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4}, stream=True
        )
    )
    assert chat_parts[-1].done and chat_parts[-1].eval_count == 4


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/tags", None),
        ("POST", "/api/show", {"model": MODEL}),
        ("GET", "/api/ps", None),
        ("GET", "/api/version", None),
        ("GET", "/", None),
        ("GET", "/v1/models", None),
        ("HEAD", "/", None),
        ("POST", "/api/show", {"model": "no-such-model"}),
        ("GET", "/api/no-such-endpoint", None),
        ("POST", "/api/show", "not json"),
    ],
)
def test_passthrough_is_byte_identical(
    ollama: OllamaServer, ollama_proxy: RunningProxy, method: str, path: str, body: object
) -> None:
    content = None if body is None else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    with httpx.Client(timeout=30) as client:
        direct = client.request(method, f"{ollama.url}{path}", content=content)
        proxied = client.request(method, f"{ollama_proxy.url}{path}", content=content)
    assert proxied.status_code == direct.status_code
    assert proxied.content == direct.content
    for header in ("content-type", "content-length", "server"):
        assert proxied.headers.get(header) == direct.headers.get(header)
    assert "x-queue-wait-ms" not in proxied.headers  # not scheduled
    assert ollama_proxy.stats().completed == 0
    assert ollama_proxy.metrics()["sjfsched_passthrough_requests_total"] == 1


def test_ollama_client_list_show_ps_through_the_proxy(ollama_proxy: RunningProxy) -> None:
    with ollama_client.Client(host=ollama_proxy.url) as client:
        assert [m.model for m in client.list().models] == ["tiny:latest"]
        assert client.show(MODEL).details is not None
        client.ps()
        with pytest.raises(ollama_client.ResponseError) as caught:
            client.show("no-such-model")
    assert caught.value.status_code == 404
    assert "not found" in caught.value.error


def test_openai_client_on_ollamas_v1_is_scheduled(ollama: OllamaServer, ollama_proxy: RunningProxy) -> None:
    with openai.OpenAI(base_url=f"{ollama_proxy.url}/v1", api_key="unused", max_retries=0) as client:
        _openai_calls(client)
    # The openai client hangs up at "data: [DONE]", maybe before the upstream ended its response.
    ollama_proxy.wait_until(lambda s: s.running == 0)
    assert ollama_proxy.stats().completed == 3
    assert ollama_proxy.metrics()["sjfsched_output_tokens_total"] == 5 + 3 + 4


def _openai_calls(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=5
    )
    assert chat.usage is not None and chat.usage.completion_tokens == 5
    raw = client.completions.with_raw_response.create(model=MODEL, prompt="Once", max_tokens=3)
    assert raw.headers["x-predicted-tokens"] == "3.0"
    assert raw.parse().usage is not None
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_streaming_arrives_as_produced(ollama: OllamaServer, ollama_proxy: RunningProxy) -> None:
    """The upstream pauses a second after three tokens: what came before must not wait for it."""
    body = {"model": MODEL, "prompt": "Tell me a story", "options": {"num_predict": 6}}
    for path, payload in (
        ("/api/generate", body),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Tell me"}],
                                  "max_tokens": 6, "stream": True}),
    ):  # fmt: skip
        with httpx.Client(timeout=30) as client:
            t0 = time.monotonic()
            with client.stream(
                "POST", f"{ollama_proxy.url}{path}", json=payload, headers={"X-Test-Fault": "stall:3:1.0"}
            ) as response:
                assert response.status_code == 200
                arrivals = [(time.monotonic() - t0, line) for line in response.iter_lines() if line.strip()]
        contentful = [t for t, line in arrivals if '"done": true' not in line and "[DONE]" not in line]
        assert len(contentful) >= 4, arrivals
        before, after = contentful[:3], contentful[3:]
        # The first three pieces arrived long before the pause ended (no buffering in the proxy;
        # a buffered answer comes at once), with slack for a loaded machine.
        assert min(after) - max(before) > 0.5, arrivals
        assert min(after) >= 1.0, arrivals


def test_response_headers_report_wait_and_prediction(ollama_proxy: RunningProxy) -> None:
    body = {"model": MODEL, "prompt": "Why?", "stream": False, "options": {"num_predict": 3}}
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(1) as pool:
        with ollama_proxy.hold_slot():
            future = pool.submit(client.post, f"{ollama_proxy.url}/api/generate", json=body)
            ollama_proxy.wait_until(lambda s: s.waiting == 1)
            time.sleep(0.2)
        response = future.result(30)
    assert response.status_code == 200
    assert float(response.headers["x-queue-wait-ms"]) >= 200
    assert response.headers["x-predicted-tokens"] == "3.0"  # capped at num_predict
    assert response.headers["x-predicted-class"] == "short"
    assert response.json()["eval_count"] == 3


def test_concurrency_bounds_what_the_upstream_sees(start_proxy: ProxyFactory) -> None:
    """OLLAMA_NUM_PARALLEL=2 and a queue of 1 upstream: the proxy sends two at a time, so never a 503."""
    upstream = shared.ollama_server_parallel()
    upstream.max_running = upstream.max_pending = 0
    proxy = start_proxy(upstream.url, concurrency=2)
    body = {"model": MODEL, "prompt": "Hello", "stream": False, "options": {"num_predict": 20}}
    # Each answer pauses 0.3 s after its first token (the server's test fault), so two admitted
    # together do overlap upstream, however fast the machine generates.
    stall = {"X-Test-Fault": "stall:1:0.3"}
    with httpx.Client(timeout=60, headers=stall) as client, ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client.post, f"{proxy.url}/api/generate", json=body) for _ in range(8)]
        responses = [f.result(60) for f in futures]
    assert [r.status_code for r in responses] == [200] * 8
    # Two at a time, not three: the upstream's queue of one would take a third without a 503.
    assert upstream.max_running == upstream.max_pending == 2
    proxy.wait_until(lambda s: s.running == 0 and s.waiting == 0)
    assert proxy.stats().completed == 8


def test_invalid_utf8_in_a_string_is_read_as_ollama_reads_it(
    ollama: OllamaServer, ollama_proxy: RunningProxy
) -> None:
    """Go's encoding/json (Ollama's) reads it as U+FFFD; the proxy answered 400 'not valid JSON'."""
    body = b'{"model": "%s", "prompt": "Hi \xff\xfe there", "stream": false, "options": {"num_predict": 2}}'
    raw = body % MODEL.encode()
    with httpx.Client(timeout=30) as client:
        direct = client.post(f"{ollama.url}/api/generate", content=raw)
        proxied = client.post(f"{ollama_proxy.url}/api/generate", content=raw)
    assert direct.status_code == proxied.status_code == 200, proxied.text
    assert proxied.json()["eval_count"] == direct.json()["eval_count"] == 2


def test_max_completion_tokens_holds_on_ollama_as_it_is_ranked(ollama_proxy: RunningProxy) -> None:
    """Ollama's /v1 reads max_tokens, not OpenAI's newer max_completion_tokens: a call ranked by
    it as a 5-token job generated on past it (found by a reviewer). The proxy sends it as both."""
    with openai.OpenAI(base_url=f"{ollama_proxy.url}/v1", api_key="unused", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}], max_completion_tokens=5
        )
        chat = raw.parse()
    assert raw.headers["x-predicted-tokens"] == "5.0"
    assert chat.usage is not None and chat.usage.completion_tokens == 5
