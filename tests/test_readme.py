"""The README's Python examples run as written, against Ollama's API on 127.0.0.1 over real llama.cpp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sjfsched import Scheduler
from tests.support.models import tiny_model
from tests.support.ollama_server import running_ollama_server

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.slow


def python_block(after: str) -> str:
    """The README's first Python block after the text ``after``."""
    text = README.read_text(encoding="utf-8")
    start = text.index("```python", text.index(after)) + len("```python")
    return text[start : text.index("```", start)]


def quickstart() -> str:
    """The Quickstart's program (after the lines that put llama.cpp in Ollama's place)."""
    return python_block("which would cut the answers short")


def test_the_quickstart_runs_on_llama_cpp_as_its_lines_for_it_say(tmp_path: Path) -> None:
    swap = python_block("## Quickstart")
    assert "n_ctx=4096" in swap and "backend = LlamaCppBackend(" in swap
    swap = swap.replace('"model.gguf"', repr(str(tiny_model())))
    code = swap + quickstart().replace('OllamaBackend("llama3.2")', "backend")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    done = [line.split(": ", 1)[1][:10] for line in lines]
    assert sorted(done) == ["What is 17", "Write a 10", "Write a 15"]
    assert done[-1] != "What is 17"  # never last: it goes before the essay, or pauses the story


def test_the_quickstart_puts_the_short_question_before_the_essay() -> None:
    code = quickstart()
    assert code.count('OllamaBackend("llama3.2")') == 1
    # The story must still be running when the other two arrive (0.1 and 0.2 s after it). The
    # tiny model writes its 2,048 tokens in under half a second here, and faster elsewhere, so
    # the server falls silent for a second after each answer's first token (its test fault,
    # X-Test-Fault: stall): the story holds the model past their arrival on any machine.
    with running_ollama_server({"llama3.2": tiny_model()}, n_ctx=2048) as server:
        backend = f'OllamaBackend("llama3.2", {server.url!r}, headers={{"X-Test-Fault": "stall:1:1"}})'
        code = code.replace('OllamaBackend("llama3.2")', backend)
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, check=False
        )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    # Printed as each finishes: the story (it found the model idle), the question, the essay.
    assert [line.split(": ", 1)[1][:10] for line in lines] == ["Write a 15", "What is 17", "Write a 10"]
    assert lines[0].lstrip().startswith("0.0s queued")
    assert [(r.endpoint, r.outcome) for r in server.records] == [("generate", "done")] * 3


def test_the_admit_example_runs_your_own_ollama_calls_one_at_a_time() -> None:
    code = python_block("Already have code that calls a model?")
    assert code.count("ollama.AsyncClient()") == 1
    assert code.count("anyio.run(main)") == 1
    # Each answer stalls 0.3 s after its first token, so calls sent together would overlap at
    # the server; admitted, they reach it one at a time. The statistics show what was taught.
    with running_ollama_server({"llama3.2": tiny_model()}, n_ctx=512) as server:
        client = f'ollama.AsyncClient({server.url!r}, headers={{"X-Test-Fault": "stall:1:0.3"}})'
        code = code.replace("ollama.AsyncClient()", client)
        code = code.replace(
            "                tg.start_soon(ask, sched, client, prompt)\n",
            "                tg.start_soon(ask, sched, client, prompt)\n"
            "        s = sched.statistics()\n"
            "        print('STATS', s.completed, s.failed, s.decode_rate, s.prefill_rate)\n",
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, check=False
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(r.endpoint, r.outcome) for r in server.records] == [("generate", "done")] * 2
    assert server.max_pending == 1
    stats = [line.split() for line in result.stdout.splitlines() if line.startswith("STATS ")]
    assert len(stats) == 1, result.stdout
    completed, failed, decode_rate, prefill_rate = stats[0][1:]
    assert (completed, failed) == ("2", "0")
    # report() and first_token() taught both rates: they moved from a fresh scheduler's.
    fresh = Scheduler().statistics()
    assert float(decode_rate) != fresh.decode_rate
    assert float(prefill_rate) != fresh.prefill_rate
