"""The README's quickstart runs as written, against Ollama's API on 127.0.0.1 over real llama.cpp."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.models import tiny_model
from tests.support.ollama_server import running_ollama_server

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.slow


def quickstart() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("```python", text.index("## Quickstart")) + len("```python")
    return text[start : text.index("```", start)]


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
