"""Many clients at once: all answered, in shortest-predicted-first order, seen from the upstream."""

from __future__ import annotations

import json
import random
import uuid

import anyio
import anyio.to_thread
import httpx
import pytest

from tests.support.ollama_server import OllamaServer

from .conftest import ProxyFactory

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

MODEL = "tiny"
CLIENTS = 200


async def test_200_concurrent_clients_all_answered_shortest_predicted_first(
    ollama: OllamaServer, start_proxy: ProxyFactory
) -> None:
    # aging 0 and no estimate cap: pure shortest-predicted-first, so the order can be checked exactly.
    proxy = start_proxy(ollama.url, aging=0.0, cap=None, max_queue=1000)
    run = uuid.uuid4().hex
    rng = random.Random(2024)
    limits = [rng.randint(1, 8) for _ in range(CLIENTS)]
    predicted: dict[str, float] = {}
    answered: dict[str, int] = {}

    async def client_call(client: httpx.AsyncClient, i: int) -> None:
        body: dict[str, object] = {
            "model": MODEL,
            "prompt": "Say something nice.",
            "options": {"num_predict": limits[i]},
        }
        headers = {"X-Test-Run": run, "X-Test-Id": str(i)}
        if i % 2:  # half streamed, half whole
            body["stream"] = False
            response = await client.post(f"{proxy.url}/api/generate", json=body, headers=headers)
            last = response.json()
        else:
            async with client.stream(
                "POST", f"{proxy.url}/api/generate", json=body, headers=headers
            ) as response:
                lines = [json.loads(line) async for line in response.aiter_lines() if line.strip()]
            last = lines[-1]
        assert response.status_code == 200
        assert last["done"] is True and 0 <= last["eval_count"] <= limits[i]
        predicted[str(i)] = float(response.headers["x-predicted-tokens"])
        answered[str(i)] = last["eval_count"]

    limits_ = httpx.Limits(max_connections=CLIENTS + 10, max_keepalive_connections=CLIENTS + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits_) as client:
        # A request that holds the upstream (it stalls after one token) until we hang up on it.
        blocker = await client.send(
            client.build_request(
                "POST",
                f"{proxy.url}/api/generate",
                json={"model": MODEL, "prompt": "Hold", "options": {"num_predict": 5}},
                headers={"X-Test-Fault": "stall:1:30", "X-Test-Run": f"{run}-blocker"},
            ),
            stream=True,
        )
        assert blocker.status_code == 200
        async with anyio.create_task_group() as tg:
            for i in range(CLIENTS):
                tg.start_soon(client_call, client, i)
            await anyio.to_thread.run_sync(lambda: proxy.wait_until(lambda s: s.waiting == CLIENTS, 30))
            await blocker.aclose()  # hang up: the 200 now run, shortest predicted first

    assert len(answered) == CLIENTS
    order = [r.headers["x-test-id"] for r in ollama.records if r.headers.get("x-test-run") == run]
    assert sorted(order, key=int) == [str(i) for i in range(CLIENTS)]  # each reached the upstream once
    dispatched = [predicted[i] for i in order]
    assert dispatched == sorted(dispatched), "not served shortest-predicted first"
    assert len(set(dispatched)) > 1
    await anyio.to_thread.run_sync(lambda: proxy.wait_until(lambda s: s.running == 0 and s.waiting == 0))
    stats = proxy.stats()
    assert (stats.completed, stats.cancelled, stats.failed, stats.waiting, stats.running) == (
        CLIENTS,
        1,
        0,
        0,
        0,
    )
    metrics = proxy.metrics()
    assert metrics["sjfsched_output_tokens_total"] == sum(answered.values())
    assert metrics['sjfsched_queue_wait_seconds_count{class="short"}'] == CLIENTS + 1
