"""What goes wrong: clients that leave, upstreams that are down or die, bad requests, a full queue."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx
import ollama as ollama_client
import openai
import pytest

from sjfsched import SchedulerStatistics
from tests.support.ollama_server import OllamaServer

from .conftest import ProxyFactory
from .harness import RunningProxy, free_port

pytestmark = pytest.mark.slow

MODEL = "tiny"


def _records(server: OllamaServer, run: str) -> list[str]:
    """Outcomes of the upstream's requests tagged with this run, in arrival order."""
    return [r.outcome for r in server.records if r.headers.get("x-test-run") == run]


def _wait_for_records(server: OllamaServer, run: str, outcomes: list[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _records(server, run) != outcomes:
        if time.monotonic() > deadline:
            raise AssertionError(f"upstream records {_records(server, run)}, expected {outcomes}")
        time.sleep(0.01)


def _raw_request(url: str, path: str, body: bytes, headers: dict[str, str]) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock


# ------------------------------------------------------------------ clients that leave


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": MODEL, "prompt": "Hello", "options": {"num_predict": 5}}),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True},
        ),
    ],
)
def test_client_gone_while_queued_leaves_the_queue(
    ollama: OllamaServer, ollama_proxy: RunningProxy, path: str, body: dict[str, object]
) -> None:
    run = uuid.uuid4().hex
    with ollama_proxy.hold_slot():
        sock = _raw_request(ollama_proxy.url, path, json.dumps(body).encode(), {"X-Test-Run": run})
        ollama_proxy.wait_until(lambda s: s.waiting == 1)
        sock.close()
        ollama_proxy.wait_until(lambda s: s.waiting == 0 and s.cancelled == 1)
    stats = ollama_proxy.stats()
    assert (stats.waiting, stats.running, stats.cancelled, stats.completed) == (0, 0, 1, 1)  # 1: the holder
    assert _records(ollama, run) == []  # it never reached the upstream
    assert ollama_proxy.metrics()['sjfsched_requests_total{outcome="cancelled"}'] == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": MODEL, "prompt": "Hello", "options": {"num_predict": 50}}),
        (
            "/v1/chat/completions",
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 50,
                "stream": True,
            },
        ),
    ],
)
def test_client_gone_mid_stream_closes_the_upstream_request(
    ollama: OllamaServer, ollama_proxy: RunningProxy, path: str, body: dict[str, object]
) -> None:
    run = uuid.uuid4().hex
    headers = {"X-Test-Run": run, "X-Test-Fault": "stall:2:30"}  # two tokens, then 30 s of silence
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{ollama_proxy.url}{path}", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.strip():
                break  # got something; now leave mid-stream (closing the connection)
    ollama_proxy.wait_until(lambda s: s.running == 0 and s.cancelled == 1)
    # The proxy closed its upstream request: the server saw the client go, long before 30 s.
    _wait_for_records(ollama, run, ["client_gone"])


# ------------------------------------------------------------------ upstreams that fail


def test_upstream_down_is_a_502_in_each_apis_shape(start_proxy: ProxyFactory) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    proxy = start_proxy(url, upstream_api="ollama")
    with httpx.Client(timeout=30) as client:
        generate = client.post(f"{proxy.url}/api/generate", json={"model": MODEL, "prompt": "Hi"})
        chat = client.post(
            f"{proxy.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]}
        )
        tags = client.get(f"{proxy.url}/api/tags")
    assert generate.status_code == chat.status_code == tags.status_code == 502
    message = generate.json()["error"]
    assert message.startswith(f"the upstream {url} could not be reached: cannot connect to")
    assert "refused" in message.lower()
    assert chat.json()["error"]["type"] == "upstream_error"
    assert "could not be reached" in chat.json()["error"]["message"]
    assert "could not be reached" in tags.json()["error"]

    with ollama_client.Client(host=proxy.url) as client, pytest.raises(ollama_client.ResponseError) as caught:
        client.generate(model=MODEL, prompt="Hi")
    assert caught.value.status_code == 502
    with (
        openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0) as oai,
        pytest.raises(openai.InternalServerError) as error,
    ):
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert error.value.status_code == 502

    proxy.wait_until(lambda s: s.running == 0 and s.waiting == 0)
    stats = proxy.stats()
    assert (stats.failed, stats.completed, stats.running) == (4, 0, 0)
    assert proxy.metrics()['sjfsched_upstream_errors_total{kind="connect"}'] == 5


def _ollama_stream(url: str, headers: dict[str, str], parts: list[ollama_client.GenerateResponse]) -> None:
    with ollama_client.Client(host=url, headers=headers) as client:
        parts.extend(client.generate(model=MODEL, prompt="Hello", options={"num_predict": 20}, stream=True))


def _openai_stream(url: str, headers: dict[str, str]) -> None:
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=20,
            stream=True,
            extra_headers=headers,
        )
        for _ in stream:
            pass


def test_upstream_dying_mid_stream_ends_the_stream_with_an_error(
    ollama: OllamaServer, ollama_proxy: RunningProxy
) -> None:
    fault = {"X-Test-Fault": "close:3"}  # the connection is cut after three tokens
    parts: list[ollama_client.GenerateResponse] = []
    with pytest.raises(ollama_client.ResponseError) as caught:
        _ollama_stream(ollama_proxy.url, fault, parts)
    assert 1 <= len(parts) <= 3 and not any(p.done for p in parts)
    assert "broke off its answer" in caught.value.error

    # On the wire: the upstream's lines, then one error line in Ollama's shape.
    with httpx.Client(timeout=30) as client:
        response = client.post(
            f"{ollama_proxy.url}/api/chat",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "Hi"}],
                "options": {"num_predict": 20},
            },
            headers=fault,
        )
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert response.status_code == 200
    assert all("message" in line and not line["done"] for line in lines[:-1])
    assert set(lines[-1]) == {"error"} and "closed the connection" in lines[-1]["error"]

    # OpenAI's API: an error event, which the openai client raises.
    with pytest.raises(openai.APIError) as error:
        _openai_stream(ollama_proxy.url, fault)
    assert "broke off its answer" in error.value.message

    # Not streamed: nothing was sent before the upstream died, so a plain 502.
    with httpx.Client(timeout=30) as client:
        whole = client.post(
            f"{ollama_proxy.url}/api/generate",
            json={"model": MODEL, "prompt": "Hello", "stream": False, "options": {"num_predict": 20}},
            headers=fault,
        )
    assert whole.status_code == 502
    assert "broke off its answer" in whole.json()["error"]

    ollama_proxy.wait_until(lambda s: s.running == 0 and s.waiting == 0)
    stats = ollama_proxy.stats()
    assert (stats.failed, stats.completed, stats.running) == (4, 0, 0)
    metrics = ollama_proxy.metrics()
    # Three answers cut; the whole one died before its head (the metric's "connect": before an answer).
    assert metrics['sjfsched_upstream_errors_total{kind="midstream"}'] == 3
    assert metrics['sjfsched_upstream_errors_total{kind="connect"}'] == 1


def test_upstream_errors_pass_through_and_count_as_failed(ollama_proxy: RunningProxy) -> None:
    with httpx.Client(timeout=30) as client:
        response = client.post(
            f"{ollama_proxy.url}/api/generate",
            json={"model": MODEL, "prompt": "Hello", "options": {"num_predict": 20}},
            headers={"X-Test-Fault": "error:2"},
        )
        missing = client.post(f"{ollama_proxy.url}/api/generate", json={"model": "nope", "prompt": "Hello"})
        garbage = client.post(
            f"{ollama_proxy.url}/api/generate",
            json={"model": MODEL, "prompt": "Hello", "options": {"num_predict": 20}},
            headers={"X-Test-Fault": "garbage:2"},
        )
    assert response.status_code == 200
    last = json.loads(response.text.splitlines()[-1])
    assert last == {"error": "an error was encountered while running the model"}  # the upstream's own
    assert missing.status_code == 404 and missing.json() == {"error": "model 'nope' not found"}
    # A stream that ends without Ollama's final "done" line is passed on as it is, and counted failed.
    assert garbage.status_code == 200 and garbage.text.splitlines()[-1] == "this is not json {"
    ollama_proxy.wait_until(lambda s: s.running == 0 and s.waiting == 0)
    stats = ollama_proxy.stats()
    assert (stats.failed, stats.completed) == (3, 0)


def test_a_client_hanging_up_on_an_upstreams_error_line_counts_it_failed(ollama_proxy: RunningProxy) -> None:
    # ollama's client raises on an {"error": ...} line and hangs up: counted as cancelled by its
    # client, where the upstream had failed the answer (and no upstream error counted).
    before = ollama_proxy.stats()
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            f"{ollama_proxy.url}/api/generate",
            json={"model": MODEL, "prompt": "Hello", "options": {"num_predict": 20}},
            headers={"X-Test-Fault": "error:2:1.5"},  # the upstream ends its stream 1.5 s later
        ) as response,
    ):
        for line in response.iter_lines():
            if "error" in json.loads(line):
                break  # and hang up, as ollama's client does
    ollama_proxy.wait_until(lambda s: s.running == 0 and s.waiting == 0)
    stats = ollama_proxy.stats()
    assert (stats.failed - before.failed, stats.cancelled - before.cancelled) == (1, 0)


# ------------------------------------------------------------------ bad requests

OLLAMA_BAD = [
    ("/api/generate", b"{not json", "the request body is not valid JSON"),
    ("/api/generate", b"", "the request body is empty; expected a JSON object"),
    ("/api/generate", b"\xff\xfe", "the request body is not valid JSON"),
    ("/api/generate", b"[1, 2]", "the request body must be a JSON object, got a JSON array"),
    ("/api/generate", b'{"prompt": "hi"}', "model is required"),
    ("/api/generate", b'{"model": "tiny", "prompt": 5}', "prompt must be a string, got a JSON number"),
    ("/api/generate", b'{"model": "tiny", "prompt": "x", "options": []}', "options must be a JSON object"),
    (
        "/api/generate",
        b'{"model": "tiny", "prompt": "x", "options": {"num_predict": "many"}}',
        'options.num_predict must be an integer, got "many"',
    ),
    ("/api/generate", b'{"model": "tiny", "prompt": "x", "priority": "high"}', "priority must be an integer"),
    ("/api/generate", b'{"model": "tiny", "prompt": "x", "tenant": 7}', "tenant must be a string, got 7"),
    ("/api/chat", b'{"model": "tiny", "messages": "hello"}', "messages must be an array, got a JSON string"),
    ("/api/chat", b'{"model": "tiny", "messages": [{"content": "x"}]}', "messages[0].role must be a string"),
    (
        "/api/chat",
        b'{"model": "tiny", "messages": [{"role": "user", "content": ["x"]}]}',
        "messages[0].content must be a string, got a JSON array",
    ),
]
OPENAI_BAD = [
    ("/v1/chat/completions", b"{not json", "the request body is not valid JSON", None),
    (
        "/v1/chat/completions",
        b'{"model": "tiny", "messages": [{"role": "user"}]}',
        "messages[0] has no content",
        "messages",
    ),
    ("/v1/chat/completions", b'{"model": "tiny"}', "messages is required", "messages"),
    (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": 3}]}',
        "messages[0].content must be a string or an array of parts, got a JSON number",
        "messages",
    ),
    (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "10"}',
        'max_tokens must be an integer, got "10"',
        "max_tokens",
    ),
    ("/v1/completions", b'{"model": "tiny"}', "prompt is required", "prompt"),
    ("/v1/completions", b'{"prompt": {"a": 1}}', "prompt must be a string", "prompt"),
]


def test_bad_requests_are_400_in_each_apis_shape(ollama: OllamaServer, ollama_proxy: RunningProxy) -> None:
    before = len(ollama.records)
    with httpx.Client(timeout=30) as client:
        for path, content, message in OLLAMA_BAD:
            response = client.post(f"{ollama_proxy.url}{path}", content=content)
            assert response.status_code == 400, (content, response.text)
            assert list(response.json()) == ["error"]
            assert response.json()["error"].startswith(message), (content, response.text)
        for path, content, message, param in OPENAI_BAD:
            response = client.post(f"{ollama_proxy.url}{path}", content=content)
            assert response.status_code == 400, (content, response.text)
            error = response.json()["error"]
            assert error["message"].startswith(message), (content, response.text)
            assert (error["type"], error["param"]) == ("invalid_request_error", param)
        header = client.post(
            f"{ollama_proxy.url}/api/generate",
            json={"model": MODEL, "prompt": "x"},
            headers={"X-Priority": "urgent"},
        )
        assert header.status_code == 400
        assert (
            header.json()["error"]
            == "the X-Priority header must be an integer (lower runs earlier), got 'urgent'"
        )
    with (
        openai.OpenAI(base_url=f"{ollama_proxy.url}/v1", api_key="unused", max_retries=0) as oai,
        pytest.raises(openai.BadRequestError),
    ):
        oai.chat.completions.create(model=MODEL, messages=[])
    assert len(ollama.records) == before  # none reached the upstream
    stats = ollama_proxy.stats()
    assert stats.completed + stats.failed + stats.cancelled == 0
    count = len(OLLAMA_BAD) + len(OPENAI_BAD) + 2
    assert ollama_proxy.metrics()['sjfsched_rejected_total{reason="bad_request"}'] == count


def test_a_negative_max_tokens_is_the_upstreams_to_judge(
    ollama: OllamaServer, ollama_proxy: RunningProxy
) -> None:
    # llama.cpp reads max_tokens <= 0 as no limit, Ollama's OpenAI layer makes
    # it num_predict: the proxy schedules it as unlimited and passes it on.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}
    with httpx.Client(timeout=60) as client:
        direct = client.post(f"{ollama.url}/v1/chat/completions", json=body)
        proxied = client.post(f"{ollama_proxy.url}/v1/chat/completions", json=body)
    assert direct.status_code == 200
    assert proxied.status_code == 200, proxied.text
    assert proxied.json()["usage"]["completion_tokens"] >= 1
    assert ollama_proxy.stats().completed == 1


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_oversized_bodies_are_413(ollama: OllamaServer, start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(ollama.url, max_body_bytes=1000)
    big = json.dumps({"model": MODEL, "prompt": "x" * 2000}).encode()
    with httpx.Client(timeout=30) as client:
        declared = client.post(f"{proxy.url}/api/generate", content=big)
        chunked = client.post(f"{proxy.url}/api/generate", content=_chunks(big, 100))  # no Content-Length
        openai_style = client.post(f"{proxy.url}/v1/completions", content=big)
        fine = client.post(
            f"{proxy.url}/api/generate",
            json={"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}},
        )
        # Passed-through calls are not bounded (model uploads go through /api/blobs).
        show = json.dumps({"model": MODEL, "padding": "y" * 5000}).encode()
        direct = client.post(f"{ollama.url}/api/show", content=show)
        passed = client.post(f"{proxy.url}/api/show", content=show)
    for response in (declared, chunked):
        assert response.status_code == 413
        assert response.json() == {
            "error": "the request body is larger than 1000 bytes (the proxy's --max-body-bytes)"
        }
    assert openai_style.status_code == 413
    assert "larger than 1000 bytes" in openai_style.json()["error"]["message"]
    assert fine.status_code == 200 and fine.json()["eval_count"] == 2
    assert passed.status_code == direct.status_code == 200 and passed.content == direct.content
    assert proxy.metrics()['sjfsched_rejected_total{reason="body_too_large"}'] == 3


def test_a_client_still_sending_a_body_too_large_gets_the_413(
    ollama: OllamaServer, start_proxy: ProxyFactory
) -> None:
    # The proxy closed with the rest of the body unread: the connection was reset, and an async
    # client, still sending, lost the 413 in it (a ReadError; AsyncOpenAI retried twice).
    proxy = start_proxy(ollama.url, max_body_bytes=1_000_000)
    big = json.dumps({"model": MODEL, "prompt": "x" * 8_000_000}).encode()

    async def post() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            return [
                (await client.post(f"{proxy.url}/api/generate", content=big)).status_code for _ in range(3)
            ]

    assert anyio.run(post) == [413, 413, 413]
    assert proxy.metrics()['sjfsched_rejected_total{reason="body_too_large"}'] == 3


# ------------------------------------------------------------------ a full queue


def test_full_queue_is_503_for_ollama_and_429_for_openai(
    ollama: OllamaServer, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(ollama.url, max_queue=1)
    body = {"model": MODEL, "prompt": "Hello", "stream": False, "options": {"num_predict": 2}}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(1) as pool:
        with proxy.hold_slot():
            waiting = pool.submit(client.post, f"{proxy.url}/api/generate", json=body)
            proxy.wait_until(lambda s: s.waiting == 1)
            busy = client.post(f"{proxy.url}/api/generate", json=body)
            limited = client.post(f"{proxy.url}/v1/chat/completions", json=chat)
            with (
                ollama_client.Client(host=proxy.url) as olc,
                pytest.raises(ollama_client.ResponseError) as caught,
            ):
                olc.generate(model=MODEL, prompt="Hello")
            with (
                openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0) as oai,
                pytest.raises(openai.RateLimitError),
            ):
                oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
        assert waiting.result(30).status_code == 200  # the one that waited ran
    assert busy.status_code == 503
    assert busy.json() == {"error": "server busy: 1 requests are waiting (max_queue=1)"}
    assert caught.value.status_code == 503
    assert limited.status_code == 429
    # (1 waiting + 1 running) x 1 s (no service time seen yet) / 1 slot
    assert limited.headers["retry-after"] == "2"
    assert limited.json()["error"] == {
        "message": "too many requests are waiting: 1 requests are waiting (max_queue=1)",
        "type": "rate_limit_error",
        "param": None,
        "code": "queue_full",
    }
    assert proxy.metrics()['sjfsched_rejected_total{reason="queue_full"}'] == 4


# ------------------------------------------------------------------ priority and tenant


def _waiting(n: int) -> Callable[[SchedulerStatistics], bool]:
    return lambda stats: stats.waiting == n


def test_priority_from_header_or_body_field_and_body_fields_are_stripped(
    ollama: OllamaServer, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(ollama.url, aging=0.0)
    run = uuid.uuid4().hex
    base = {"model": MODEL, "prompt": "The same prompt", "stream": False, "options": {"num_predict": 2}}
    requests = [  # (name, body, headers); same prompt and limit, so only priority orders them
        ("header 5", base, {"X-Priority": "5"}),
        ("none", base, {}),
        ("body -1", {**base, "priority": -1, "tenant": "alice"}, {}),
        ("header wins", {**base, "priority": -5}, {"X-Priority": "1", "X-Tenant": "bob"}),
    ]
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(len(requests)) as pool:
        with proxy.hold_slot():
            futures = []
            for i, (name, body, headers) in enumerate(requests):
                futures.append(
                    pool.submit(
                        client.post,
                        f"{proxy.url}/api/generate",
                        json=body,
                        headers={**headers, "X-Test-Run": run, "X-Test-Name": name},
                    )
                )
                proxy.wait_until(_waiting(i + 1))
        assert all(f.result(30).status_code == 200 for f in futures)
    seen = [r for r in ollama.records if r.headers.get("x-test-run") == run]
    assert [r.headers["x-test-name"] for r in seen] == ["body -1", "none", "header wins", "header 5"]
    # The proxy's own body fields do not reach the upstream; other bodies pass byte for byte.
    compact = len(json.dumps(base, ensure_ascii=False, separators=(",", ":")).encode())  # as httpx sends it
    by_name = {r.headers["x-test-name"]: r for r in seen}
    assert int(by_name["none"].headers["content-length"]) == compact
    assert int(by_name["body -1"].headers["content-length"]) == compact  # priority and tenant taken out
    assert by_name["header wins"].headers["x-tenant"] == "bob"  # headers pass through


def test_an_openai_stream_ending_without_a_finish_reason_counts_as_failed(ollama_proxy: RunningProxy) -> None:
    """Ollama's /v1 after an error mid-stream: an empty chunk, then the end (no [DONE], no finish_reason).

    It was counted completed, its cut length learnt."""
    before = ollama_proxy.stats()
    with httpx.Client(timeout=30) as client:
        bodies: list[tuple[str, dict[str, Any]]] = [
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello"}]}),
            ("/v1/completions", {"prompt": "Hello"}),
        ]
        for path, body in bodies:
            response = client.post(
                f"{ollama_proxy.url}{path}",
                json={"model": MODEL, "max_tokens": 20, "stream": True, **body},
                headers={"X-Test-Fault": "error:2"},
            )
            assert response.status_code == 200 and "[DONE]" not in response.text
    ollama_proxy.wait_until(
        lambda s: s.running == 0 and s.failed + s.completed >= before.failed + before.completed + 2
    )
    after = ollama_proxy.stats()
    assert (after.completed - before.completed, after.failed - before.failed) == (0, 2)


# ------------------------------------------------------------------ found by a reviewer (stop 21)


def test_a_drain_counts_the_call_it_refuses_once_its_body_arrives(
    ollama: OllamaServer, start_proxy: ProxyFactory
) -> None:
    """The 503 of a call whose body arrived after the drain began (the scheduler closed) was
    counted nowhere; and a drain waited for a body still arriving, with nothing running."""
    proxy = start_proxy(ollama.url)
    body = json.dumps({"model": MODEL, "prompt": "Hello", "options": {"num_predict": 2}}).encode()
    host, port = proxy.url.removeprefix("http://").split(":")
    head = f"POST /api/generate HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection((host, int(port))) as late:
        late.sendall(head.encode() + body[:-5])
        deadline = time.monotonic() + 10
        while proxy.run(_reading(proxy)) < 1:  # the proxy has the head and waits for the body
            assert time.monotonic() < deadline, "the proxy never read the request's head"
            time.sleep(0.005)
        t0 = time.monotonic()
        assert proxy.run(lambda: proxy.app.drain(20), timeout=30) is True
        assert time.monotonic() - t0 < 10  # not the 20 s grace
        late.sendall(body[-5:])
        late.settimeout(10)
        answer = b""
        while b"shutting down" not in answer and (part := late.recv(4096)):
            answer += part
    assert answer.startswith(b"HTTP/1.1 503")
    assert proxy.app.metrics.rejected["shutting_down"] == 1


def _reading(proxy: RunningProxy) -> Callable[[], Coroutine[Any, Any, int]]:
    async def read() -> int:
        return proxy.app.reading

    return read


def _upstream_once(answer: bytes) -> tuple[str, Callable[[], None]]:
    """A loopback upstream that reads a request and sends ``answer`` (b"" : closes at once)."""
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data and (part := conn.recv(65536)):
                    data += part
                if answer:
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(5)
        server.close()

    return f"http://127.0.0.1:{server.getsockname()[1]}", close


def _generate_once(start_proxy: ProxyFactory, url: str) -> tuple[RunningProxy, httpx.Response]:
    """A proxy in front of ``url`` (Ollama's API), and its answer to one whole /api/generate."""
    proxy = start_proxy(url, upstream_api="ollama")
    with httpx.Client(timeout=30) as client:
        got = client.post(f"{proxy.url}/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False})
    proxy.wait_until(lambda s: s.running == 0)
    return proxy, got


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n"
            + b'{"model":"m","response":"Once upon a ti',
            "json",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 36\r\n\r\n"
            b"<html>502 from some middlebox</html>",
            "json",
        ),
        (b"", "none"),
    ],
    ids=["cut-short", "not-json", "closed-before-answering"],
)
def test_a_whole_answer_that_is_no_answer_counts_as_failed(
    start_proxy: ProxyFactory, answer: bytes, kind: str
) -> None:
    """A "stream": false answer cut short, or no JSON at all, was counted completed (and its
    time taught the Retry-After estimate); an upstream that closed before answering was counted
    as a mid-answer failure, not the 'connect' kind the metric's help names."""
    url, close = _upstream_once(answer)
    try:
        proxy, got = _generate_once(start_proxy, url)
        metrics = proxy.metrics()
        assert proxy.stats().failed == 1 and proxy.stats().completed == 0
        if kind == "json":
            assert got.status_code == 200  # passed on as it came
            assert metrics['sjfsched_upstream_errors_total{kind="midstream"}'] == 1
        else:
            assert got.status_code == 502
            assert metrics['sjfsched_upstream_errors_total{kind="connect"}'] == 1
            assert metrics['sjfsched_upstream_errors_total{kind="midstream"}'] == 0
    finally:
        close()


def test_a_drained_waiting_request_is_counted_closed_not_also_rejected(
    ollama: OllamaServer, start_proxy: ProxyFactory
) -> None:
    """Counting the drain's refusals counted a request that had waited in the queue twice:
    closed, and rejected as if refused on arrival."""
    proxy = start_proxy(ollama.url)
    body = json.dumps({"model": MODEL, "prompt": "Hello", "options": {"num_predict": 2}}).encode()
    with proxy.hold_slot():
        waiting = _raw_request(proxy.url, "/api/generate", body, {})
        proxy.wait_until(lambda s: s.waiting == 1)
        assert proxy.run(lambda: proxy.app.drain(0.5), timeout=30) is False  # the held slot runs on
        waiting.settimeout(10)
        answer = b""
        while b"shutting down" not in answer and (part := waiting.recv(4096)):
            answer += part
        waiting.close()
    assert answer.startswith(b"HTTP/1.1 503")
    assert proxy.stats().closed == 1
    assert proxy.app.metrics.rejected["shutting_down"] == 0


_LINE = b'{"model": "m", "response": "Once", "done": false}\n'


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.0 200 OK\r\nContent-Type: application/x-ndjson\r\n\r\n" + _LINE * 2,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(_LINE), _LINE),
    ],
    ids=["closed", "chunked-end"],
)
def test_a_streamed_answer_cut_short_counts_as_an_upstream_error_as_a_whole_one_does(
    start_proxy: ProxyFactory, answer: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Counted failed, but not in upstream_errors{kind="midstream"} (a whole answer cut short was)."""
    url, close = _upstream_once(answer)
    try:
        proxy = start_proxy(url, upstream_api="ollama")
        with httpx.Client(timeout=30) as client:
            got = client.post(f"{proxy.url}/api/generate", json={"model": MODEL, "prompt": "Hi"})
        proxy.wait_until(lambda s: s.running == 0)
        assert got.status_code == 200 and got.content == _LINE * got.content.count(b"\n")
        assert proxy.stats().failed == 1 and proxy.stats().completed == 0
        assert proxy.metrics()['sjfsched_upstream_errors_total{kind="midstream"}'] == 1
        assert 'ended a streamed answer without its end ("done": true)' in caplog.text
    finally:
        close()


def test_calls_passed_through_during_a_drain_are_not_counted_as_refused_requests(
    ollama: OllamaServer, start_proxy: ProxyFactory
) -> None:
    """A client's GET /api/tags polling during the drain counted in rejected{shutting_down},
    which counts the scheduled requests refused."""
    proxy = start_proxy(ollama.url)
    assert proxy.run(lambda: proxy.app.drain(5), timeout=30) is True
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{proxy.url}/api/tags").status_code == 503
        assert client.get(f"{proxy.url}/api/ps").status_code == 503
        refused = client.post(f"{proxy.url}/api/generate", json={"model": MODEL, "prompt": "Hi"})
    assert refused.status_code == 503
    assert proxy.app.metrics.rejected["shutting_down"] == 1


def test_an_upstreams_count_no_answer_could_have_is_left_out_not_a_failure(start_proxy: ProxyFactory) -> None:
    """Past MAX_TOKEN_COUNT the proxy's report of it was refused, and a whole answer became a 500
    (found by a reviewer of the cap)."""
    body = json.dumps(
        {"model": "m", "response": "hello", "done": True, "done_reason": "stop", "eval_count": 10**12}
    ).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    url, close = _upstream_once(head.encode() + body)
    try:
        proxy, got = _generate_once(start_proxy, url)
        assert got.status_code == 200 and got.json()["response"] == "hello"
        assert (proxy.stats().completed, proxy.stats().failed) == (1, 0)
    finally:
        close()


def test_an_ollama_message_without_content_is_passed_on_as_ollama_takes_it(
    ollama: OllamaServer, ollama_proxy: RunningProxy
) -> None:
    """Ollama's Message.Content is a Go string, "" when left out (api/types.go): a system message
    without one is a chat Ollama answers, so the proxy in front of it answers it too (it was a 400;
    the OpenAI side still refuses one, as OpenAI does)."""
    body = {"model": MODEL, "messages": [{"role": "system"}, {"role": "user", "content": "Hi"}]}
    with httpx.Client(timeout=60) as client:
        response = client.post(f"{ollama_proxy.url}/api/chat", json={**body, "options": {"num_predict": 3}})
    assert response.status_code == 200, response.text
    assert json.loads(response.text.splitlines()[-1])["done"] is True
