"""Behaviours a mutation audit found no test for: each test fails when its behaviour is broken."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from sjfsched._scheduler import DEFAULT_MAX_WAIT
from sjfsched.proxy._metrics import Histogram, predicted_class
from sjfsched.proxy._settings import DEFAULT_MAX_QUEUE, resolve
from tests.proxy.harness import RunningProxy


def _generate(proxy: RunningProxy, *, stream: bool, num_predict: int) -> httpx.Response:
    body = {
        "model": "tiny",
        "prompt": "Once upon a time",
        "stream": stream,
        "options": {"num_predict": num_predict},
    }
    response = httpx.post(f"{proxy.url}/api/generate", json=body, timeout=30)
    assert response.status_code == 200
    return response


def test_a_streamed_relay_marks_the_first_token_and_reports_prompt_tokens(ollama_proxy: RunningProxy) -> None:
    with ollama_proxy.completions() as ended:
        r = _generate(ollama_proxy, stream=True, num_predict=6)
        lines = [line for line in r.text.splitlines() if line.strip()]
        # in the block: the scheduler may end the request after the client has its last byte
        ollama_proxy.wait_until(lambda s: s.completed == 1)
    [done] = ended
    last = json.loads(lines[-1])
    assert last["done"] is True
    # The first streamed byte is the first token: timed between start and end.
    assert done.first_token is not None
    assert done.started < done.first_token <= done.finished
    # The upstream's own prompt count reaches the scheduler (it learns the prefill rate from it).
    assert done.prompt_tokens == last["prompt_eval_count"]
    assert done.output_tokens == last["eval_count"]


def test_a_whole_json_relay_reports_prompt_tokens(ollama_proxy: RunningProxy) -> None:
    with ollama_proxy.completions() as ended:
        r = _generate(ollama_proxy, stream=False, num_predict=5)
        ollama_proxy.wait_until(lambda s: s.completed == 1)
    [done] = ended
    assert done.prompt_tokens == r.json()["prompt_eval_count"]


def test_retry_after_follows_a_moving_average_of_service_times(
    ollama: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    proxy = start_proxy(ollama.url, max_queue=1)
    body = {"model": "tiny", "prompt": "Hello", "stream": False, "options": {"num_predict": 3}}
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(1) as pool:
        # One slow answer (2 s of silence after its first token), then a quick one.
        slow = client.post(f"{proxy.url}/api/generate", json=body, headers={"X-Test-Fault": "stall:1:2"})
        assert slow.status_code == 200
        quick = client.post(f"{proxy.url}/api/generate", json=body)
        assert quick.status_code == 200
        with proxy.hold_slot():
            waiting = pool.submit(client.post, f"{proxy.url}/api/generate", json=body)
            proxy.wait_until(lambda s: s.waiting == 1)
            limited = client.post(f"{proxy.url}/v1/chat/completions", json=chat)
        assert waiting.result(30).status_code == 200
    assert limited.status_code == 429
    # (1 waiting + 1 running) x (0.9 x ~2 s + 0.1 x the quick one) / 1 slot: 4 s, not the last one's 1 s.
    assert int(limited.headers["retry-after"]) >= 3


def test_a_blank_variable_counts_as_unset() -> None:
    settings, sources = resolve(
        {"upstream": "http://h:1"}, {"SJFSCHED_MAX_WAIT": "  ", "SJFSCHED_MAX_QUEUE": " "}
    )
    assert settings.max_wait == DEFAULT_MAX_WAIT
    assert settings.max_queue == DEFAULT_MAX_QUEUE
    assert sources["max_wait"][1] == "default"


def test_body_size_suffixes_are_binary() -> None:
    settings, _ = resolve({"upstream": "http://h:1"}, {"SJFSCHED_MAX_BODY_BYTES": "64k"})
    assert settings.max_body_bytes == 64 * 1024


def test_off_means_no_bound() -> None:
    settings, _ = resolve(
        {"upstream": "http://h:1"}, {"SJFSCHED_MAX_WAIT": "off", "SJFSCHED_MAX_QUEUE": "OFF"}
    )
    assert settings.max_wait is None
    assert settings.max_queue is None


def test_an_observation_on_a_bucket_bound_counts_in_that_bucket() -> None:
    h = Histogram((1.0, 2.0))
    h.observe(1.0)
    h.observe(2.0)
    lines = list(h.lines("m", ""))
    assert lines[:3] == ['m_bucket{le="1.0"} 1', 'm_bucket{le="2.0"} 2', 'm_bucket{le="+Inf"} 2']


def test_predicted_class_boundaries() -> None:
    assert predicted_class(255.9) == "short"
    assert predicted_class(256.0) == "medium"
    assert predicted_class(799.9) == "medium"
    assert predicted_class(800.0) == "long"
