"""The backend examples run as written: against the tiny model and the loopback servers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.models import free_port
from tests.support.ollama_server import OllamaServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.slow


def run(name: str, *args: str, status: int = 0) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == status, result.stdout + result.stderr
    return result.stdout


def test_llama_cpp_backend_example() -> None:
    out = run("llama_cpp_backend.py")
    lines = [line for line in out.splitlines() if "tokens  waited" in line]
    assert len(lines) == 6
    # The first arrival found the model free and started; it was paused for the three
    # shortest, which finish first, shortest first.
    lengths = [int(line.split()[0]) for line in lines]
    assert lengths[:3] == [4, 6, 8]
    first = next(line for line in lines if line.split()[0] == "400")
    assert "paused 1" in first
    assert "finish_reason=length" in out


def test_wrap_threads_example() -> None:
    out = run("wrap_threads.py")
    assert out.count(" tokens  ") == 8
    assert "completed=8" in out


def test_agent_loop_example() -> None:
    out = run("agent_loop.py")
    assert out.count("->") == 4
    assert "completed=4" in out


def test_ollama_example(ollama: OllamaServer) -> None:
    out = run("ollama_backend.py", "--model", "tiny", "--base-url", ollama.url)
    assert out.count("(length)") == 5
    assert "completed 6" in out


def test_openai_example(openai_url: str) -> None:
    out = run("openai_backend.py", "--base-url", openai_url)
    assert "model: tiny" in out
    assert out.count("(length)") == 4


def test_pool_example(ollama: OllamaServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    out = run("pool.py", "--model", "tiny", "--host", f"{ollama.url}=1", "--host", f"{dead}=1")
    assert "2 host(s), 2 slots" in out
    assert "FAILED" not in out  # the dead host's request failed over to the live one
    assert "served 9, in rotation" in out
    assert "served 0, out of rotation" in out


def test_pool_example_fails_when_no_host_answers() -> None:
    # It printed FAILED for every request and exited with 0, where ollama_backend.py exits with 1.
    dead = f"http://127.0.0.1:{free_port()}"
    out = run("pool.py", "--model", "tiny", "--host", f"{dead}=1", "--requests", "3", status=1)
    assert out.count("FAILED") == 3
