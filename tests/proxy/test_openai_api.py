"""The proxy in front of an OpenAI-compatible server: llama_cpp.server and the official ``openai`` client."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from .conftest import ProxyFactory
from .harness import RunningProxy

pytestmark = pytest.mark.slow

MODEL = "tiny"


def _client(proxy: RunningProxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)


def test_detects_an_openai_compatible_server(openai_proxy: RunningProxy) -> None:
    assert openai_proxy.app.api == "openai"
    assert set(openai_proxy.app.scheduled_paths) == {"/v1/chat/completions", "/v1/completions"}


def test_openai_client_chat_and_completions(openai_proxy: RunningProxy) -> None:
    with _client(openai_proxy) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=6
        )
        chat = raw.parse()
        assert chat.usage is not None and 1 <= chat.usage.completion_tokens <= 6
        assert raw.headers["x-predicted-tokens"] == "6.0"
        assert float(raw.headers["x-queue-wait-ms"]) >= 0
        completion = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
        assert completion.usage is not None and completion.usage.completion_tokens <= 5
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True
        )
        chunks = list(stream)
        assert chunks[-1].choices[0].finish_reason in ("length", "stop")
        text_stream = client.completions.create(model=MODEL, prompt="Hi", max_tokens=4, stream=True)
        assert list(text_stream)[-1].choices[0].finish_reason in ("length", "stop")
    # The openai client hangs up at "data: [DONE]", maybe before the upstream ended its response.
    openai_proxy.wait_until(lambda s: s.running == 0)
    stats = openai_proxy.stats()
    assert (stats.completed, stats.failed, stats.cancelled) == (4, 0, 0)
    metrics = openai_proxy.metrics()
    assert (
        metrics["sjfsched_output_tokens_total"]
        >= chat.usage.completion_tokens + completion.usage.completion_tokens
    )


def test_models_and_other_v1_calls_pass_through_unchanged(
    openai_url: str, openai_proxy: RunningProxy
) -> None:
    with httpx.Client(timeout=30) as client:
        for method, path, body in (
            ("GET", "/v1/models", None),
            ("POST", "/v1/embeddings", {"input": "not an embedding model"}),
            ("GET", "/v1/no-such-path", None),
        ):
            direct = client.request(method, f"{openai_url.removesuffix('/v1')}{path}", json=body)
            proxied = client.request(method, f"{openai_proxy.url}{path}", json=body)
            assert (proxied.status_code, proxied.content) == (direct.status_code, direct.content), path
            assert proxied.headers["content-type"] == direct.headers["content-type"]
    with _client(openai_proxy) as oai:
        assert [m.id for m in oai.models.list()] == ["tiny"]
    assert openai_proxy.stats().completed == 0


def _content_arrivals(url: str, body: dict[str, object]) -> list[float]:
    """When each streamed piece with text arrived, read as raw lines (seconds from the call)."""
    with httpx.Client(timeout=60) as client:
        t0 = time.monotonic()
        with client.stream("POST", f"{url}/chat/completions", json=body) as response:
            assert response.status_code == 200
            return [
                time.monotonic() - t0
                for line in response.iter_lines()
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content")
            ]


def test_streams_arrive_token_by_token(openai_url: str, openai_proxy: RunningProxy) -> None:
    """Each token is passed on as llama_cpp.server writes it, not held until the answer ends.

    Timed on raw lines: the openai client parses a chunk in about half a millisecond, slower than
    the tiny model writes one on a fast machine, and then times only itself.  The checks compare
    the stream through the proxy with the same stream straight from the server, so they hold on
    a fast or a slow machine and whatever delays the first token.
    """
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story"}],
        "max_tokens": 400,
        "min_tokens": 400,  # llama_cpp.server: no early stop
        "stream": True,
    }
    direct = _content_arrivals(openai_url, body)
    arrivals = _content_arrivals(f"{openai_proxy.url}/v1", body)
    assert len(arrivals) == len(direct) >= 100
    first, last = arrivals[0], arrivals[-1]
    # The pieces are spread over about as long as the server takes to write them: a proxy that
    # held them until the answer's end passes them all on within a millisecond or so.
    assert last - first > 0.3 * (direct[-1] - direct[0]), (first, last, direct[0], direct[-1])
    # ... and evenly, not the first few passed on and the rest held back.
    early = sum(t < (first + last) / 2 for t in arrivals)
    assert early > len(arrivals) // 5, (early, len(arrivals), first, last)


def test_concurrent_streams_run_one_at_a_time_shortest_first(
    openai_url: str, start_proxy: ProxyFactory
) -> None:
    """llama_cpp.server cuts a stream short when another request arrives; behind the proxy none is cut."""
    proxy = start_proxy(openai_url, aging=0.0, cap=None)  # plain shortest-first: order checked exactly
    rng = random.Random(11)
    limits = [rng.randint(1, 12) for _ in range(24)]
    reasons: list[str | None] = []

    def one(i: int, client: openai.OpenAI) -> float:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Write something."}],
            max_tokens=limits[i],
            stream=True,
        )
        reason = None
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].finish_reason:
                reason = chunk.choices[0].finish_reason
        reasons.append(reason)
        return float(raw.headers["x-predicted-tokens"])

    with proxy.completions() as ended, _client(proxy) as client, ThreadPoolExecutor(len(limits)) as pool:
        with proxy.hold_slot():
            futures = [pool.submit(one, i, client) for i in range(len(limits))]
            proxy.wait_until(lambda s: s.waiting == len(limits))
        predicted = sorted(future.result(60) for future in futures)
        proxy.wait_until(lambda s: s.running == 0)
    assert reasons.count("length") + reasons.count("stop") == len(limits)  # every stream ran to its end
    # In the order the proxy ended them (one at a time: the order it served them in), after the
    # test's own holder of the slot; not the order the client threads noted (a thread that was
    # not scheduled for a few milliseconds noted its end after the next stream's).
    assert [c.request.text for c in ended[:1]] == ["the test holds this slot"]
    # The same prompt each time, predicted longer than any limit: each is predicted its
    # max_tokens, as the x-predicted-tokens headers say, and ranked by it.
    assert predicted == sorted(float(limit) for limit in limits)
    assert [c.request.max_tokens for c in ended[1:]] == sorted(limits), "not served shortest-predicted first"
    assert [c.estimate for c in ended[1:]] == sorted(c.estimate for c in ended[1:])
    stats = proxy.stats()
    assert (stats.completed, stats.failed, stats.cancelled) == (len(limits) + 1, 0, 0)


def test_a_stream_the_upstream_cuts_short_for_another_client_counts_as_failed(
    openai_url: str, openai_proxy: RunningProxy
) -> None:
    """llama_cpp.server ends a stream with [DONE] and no finish_reason when another client's
    request arrives: the proxy passed it on (as it must) but counted a completion and learnt
    the cut length."""
    before = openai_proxy.stats()
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 450, "stream": True}
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{openai_proxy.url}/v1/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: {"))
        # Another client of the same server, past the proxy.
        other = client.post(
            f"{openai_url}/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 3}
        )
        rest = list(lines)
    assert other.status_code == 200
    events = [first, *(line for line in rest if line.startswith("data: "))]
    assert events[-1] == "data: [DONE]"  # passed on as the upstream sent it
    assert '"finish_reason": null' in first and all('"finish_reason": null' in e for e in events[:-1])
    openai_proxy.wait_until(
        lambda s: s.running == 0 and s.completed + s.failed > before.completed + before.failed
    )
    after = openai_proxy.stats()
    assert (after.completed - before.completed, after.failed - before.failed) == (0, 1)


def test_max_completion_tokens_alone_does_not_rank_a_call(openai_proxy: RunningProxy) -> None:
    """OpenAI's newer limit, which llama_cpp.server does not read: the call was ranked by it as a
    5-token job, then generated on past it (found by a reviewer). It is ranked by the prediction."""
    with _client(openai_proxy) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}], max_completion_tokens=5
        )
        chat = raw.parse()
    assert raw.headers["x-predicted-tokens"] != "5.0"
    assert chat.usage is not None and chat.usage.completion_tokens > 5  # llama_cpp.server read no limit
