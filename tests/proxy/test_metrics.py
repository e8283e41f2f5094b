"""``/metrics`` in Prometheus' text format and ``/healthz``: they parse, and the counters move."""

from __future__ import annotations

import httpx
import pytest

from sjfsched import DEFAULT_DECODE_RATE, DEFAULT_PREFILL_RATE
from tests.support.ollama_server import OllamaServer

from .harness import RunningProxy, parse_metrics

pytestmark = pytest.mark.slow

MODEL = "tiny"


def test_metrics_parse_and_move(ollama: OllamaServer, ollama_proxy: RunningProxy) -> None:
    before = ollama_proxy.metrics()
    assert before['sjfsched_requests_total{outcome="completed"}'] == 0
    assert before["sjfsched_requests_waiting"] == 0
    assert before["sjfsched_concurrency"] == 1
    assert before["sjfsched_predictor_duration_seconds_count"] == 0
    for klass in ("short", "medium", "long"):
        assert before[f'sjfsched_queue_wait_seconds_count{{class="{klass}"}}'] == 0

    with httpx.Client(timeout=30) as client:
        short = client.post(
            f"{ollama_proxy.url}/api/generate",
            json={"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 4}},
        )
        long = client.post(  # no limit: the prediction decides its class
            f"{ollama_proxy.url}/api/chat",
            json={
                "model": MODEL,
                "stream": False,
                "messages": [{"role": "user", "content": "Write a long essay about the history of the sea."}],
            },
        )
        bad = client.post(f"{ollama_proxy.url}/api/generate", content=b"{")
        tags = client.get(f"{ollama_proxy.url}/api/tags")
    assert (short.status_code, long.status_code, bad.status_code, tags.status_code) == (200, 200, 400, 200)
    after = ollama_proxy.metrics()
    assert after['sjfsched_requests_total{outcome="completed"}'] == 2
    assert after['sjfsched_rejected_total{reason="bad_request"}'] == 1
    assert after["sjfsched_passthrough_requests_total"] == 1
    assert after["sjfsched_output_tokens_total"] == 4 + long.json()["eval_count"]
    assert after["sjfsched_prompt_tokens_total"] > 0
    assert after["sjfsched_predictor_duration_seconds_count"] == 2  # one prediction per scheduled request
    assert after['sjfsched_predictor_duration_seconds_bucket{le="+Inf"}'] == 2
    classes = [short.headers["x-predicted-class"], long.headers["x-predicted-class"]]
    for klass in ("short", "medium", "long"):
        count = classes.count(klass)
        assert after[f'sjfsched_queue_wait_seconds_count{{class="{klass}"}}'] == count
        assert after[f'sjfsched_request_duration_seconds_count{{class="{klass}"}}'] == count
        assert after[f'sjfsched_time_to_first_byte_seconds_count{{class="{klass}"}}'] == count
    # The decode rate was learned from the two completions.  They were not streamed, so
    # there is no first-token time: the whole call counts as decode, and prefill stays put.
    assert after["sjfsched_decode_rate_tokens_per_second"] != DEFAULT_DECODE_RATE
    assert after["sjfsched_prefill_rate_tokens_per_second"] == DEFAULT_PREFILL_RATE


def test_healthz(ollama: OllamaServer, ollama_proxy: RunningProxy) -> None:
    response = httpx.get(f"{ollama_proxy.url}/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "upstream": ollama.url,
        "api": "ollama",
        "waiting": 0,
        "running": 0,
    }


@pytest.mark.parametrize(
    "text",
    [
        "# HELP x_total A.\n# TYPE x_total counter\nx_total 1\nx_total 2\n",  # twice
        "# HELP x A.\n# TYPE x counter\nx 1\n",  # counter without _total
        "# HELP x A.\n# TYPE x gauge\nx one\n",  # not a number
        "x 1\n",  # no TYPE
        "# HELP h A.\n# TYPE h histogram\n"
        'h_bucket{le="1.0"} 3\nh_bucket{le="+Inf"} 2\nh_sum 1.0\nh_count 2\n',  # not cumulative
        "# HELP x A.\n# TYPE x gauge\nx 1",  # no final newline
    ],
)
def test_the_metrics_parser_is_strict(text: str) -> None:
    with pytest.raises(AssertionError):
        parse_metrics(text)
