"""The loopback Ollama-API server itself follows Ollama's documented API.

Other tests (these backends', the proxy's) trust it to behave like Ollama, so
its own answers are checked here against docs/api.md's shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.support.ollama_server import VERSION, OllamaServer, running_ollama_url


def test_discovery_endpoints(ollama: OllamaServer) -> None:
    with httpx.Client(base_url=ollama.url, timeout=30) as client:
        assert client.get("/").text == "Ollama is running"
        assert client.get("/api/version").json() == {"version": VERSION}
        tags = client.get("/api/tags").json()["models"]
        assert [m["name"] for m in tags] == ["tiny:latest"]
        assert set(tags[0]) >= {"name", "modified_at", "size", "digest", "details"}
        assert tags[0]["details"]["format"] == "gguf"
        show = client.post("/api/show", json={"model": "tiny"}).json()
        assert set(show) >= {"modelfile", "parameters", "template", "details", "model_info"}
        client.post("/api/generate", json={"model": "tiny", "prompt": "", "stream": False})
        running = client.get("/api/ps").json()["models"]
        assert [m["name"] for m in running] == ["tiny:latest"]
        assert client.get("/v1/models").json()["data"][0]["id"] == "tiny:latest"


def test_generate_not_streamed_and_streamed(ollama: OllamaServer) -> None:
    body = {"model": "tiny", "prompt": "Why?", "options": {"num_predict": 7, "temperature": 0}}
    with httpx.Client(base_url=ollama.url, timeout=30) as client:
        whole = client.post("/api/generate", json={**body, "stream": False})
        assert whole.headers["content-type"].startswith("application/json")
        answer = whole.json()
        assert answer["done"] is True and answer["done_reason"] == "length"
        assert answer["eval_count"] == 7
        assert answer["prompt_eval_count"] == len(answer["context"]) - 7
        for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
            assert isinstance(answer[key], int) and answer[key] >= 0
        with client.stream("POST", "/api/generate", json=body) as response:
            assert response.headers["content-type"] == "application/x-ndjson"
            lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [line["done"] for line in lines] == [False] * 7 + [True]
    assert "".join(line["response"] for line in lines) == answer["response"]
    assert all(set(line) >= {"model", "created_at", "response", "done"} for line in lines)


def test_chat_lines_carry_a_message(ollama: OllamaServer) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "options": {"num_predict": 3}}
    with (
        httpx.Client(base_url=ollama.url, timeout=30) as client,
        client.stream("POST", "/api/chat", json=body) as r,
    ):
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert [line["message"]["role"] for line in lines] == ["assistant"] * 4
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 3


def test_load_unload_and_errors(ollama: OllamaServer) -> None:
    with httpx.Client(base_url=ollama.url, timeout=30) as client:
        load = client.post("/api/chat", json={"model": "tiny", "messages": []}).json()
        assert (load["done"], load["done_reason"]) == (True, "load")
        unload = client.post("/api/generate", json={"model": "tiny", "keep_alive": 0}).json()
        assert unload["done_reason"] == "unload"
        missing = client.post("/api/generate", json={"model": "x", "prompt": "p"})
        assert (missing.status_code, missing.json()) == (404, {"error": "model 'x' not found"})
        no_model = client.post("/api/generate", json={"prompt": "p"})
        assert (no_model.status_code, no_model.json()) == (400, {"error": "model is required"})
        bad_json = client.post("/api/chat", content=b"{not json")
        assert bad_json.status_code == 400 and "error" in bad_json.json()
        openai_missing = client.post("/v1/chat/completions", json={"model": "x", "messages": []})
        assert openai_missing.status_code == 404
        assert openai_missing.json()["error"]["message"] == "model 'x' not found"


def test_a_server_of_your_own(tiny_path: Path) -> None:
    with running_ollama_url({"mini": tiny_path}, num_parallel=2) as url:
        assert url.startswith("http://127.0.0.1:")
        answer = httpx.post(
            f"{url}/api/generate", json={"model": "mini:latest", "prompt": "x", "stream": False}, timeout=30
        ).json()
        assert answer["model"] == "mini:latest"
    try:
        httpx.get(f"{url}/api/version", timeout=2)
    except httpx.ConnectError:
        pass  # stopped
    else:
        raise AssertionError("the server still answers after the block")


def test_num_predict_zero_is_no_limit_as_in_ollama(ollama: OllamaServer) -> None:
    # Ollama's runner stops at num_predict only where it is positive (runner.go): 0
    # generates as -1 does, not nothing.
    body = {"model": "tiny", "prompt": "Why?", "stream": False}
    counts = {}
    with httpx.Client(base_url=ollama.url, timeout=60) as client:
        for limit in (0, -1, 4):
            options = {"num_predict": limit, "temperature": 0, "seed": 1}
            answer = client.post("/api/generate", json={**body, "options": options}).json()
            counts[limit] = answer["eval_count"]
    assert counts[4] == 4
    assert counts[0] == counts[-1] > 4


def test_a_post_to_a_path_it_has_not_is_read_whole_before_its_404(ollama: OllamaServer) -> None:
    # Its body left unread was taken for the next request on the kept-alive connection (a
    # proxy's pull through it got a 501 page).
    with httpx.Client(base_url=ollama.url, timeout=30) as client:
        missing = client.post("/api/pull", json={"model": "tiny", "stream": False})
        version = client.get("/api/version")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    assert version.status_code == 200 and version.json() == {"version": VERSION}
