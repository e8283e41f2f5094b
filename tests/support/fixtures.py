"""pytest fixtures over :mod:`tests.support.shared`, for any test directory.

Import the ones you need into your directory's ``conftest.py``::

    from tests.support.fixtures import ollama, openai_url, stop_shared_servers, tiny_llm, tiny_path

Each is session-scoped: the model is written and the servers started once per
test session (and stopped when it ends).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_cpp import Llama

from . import shared
from .models import tiny_model
from .ollama_server import OllamaServer

__all__ = ["ollama", "openai_url", "stop_shared_servers", "tiny_llm", "tiny_path"]


@pytest.fixture(scope="session", autouse=True)
def stop_shared_servers() -> Iterator[None]:
    """Stop the shared servers (and kill llama_cpp.server) when the session ends."""
    yield
    shared.close_all()


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    """The tiny random-weight GGUF model, written once per session."""
    return tiny_model()


@pytest.fixture(scope="session")
def tiny_llm() -> Llama:
    """One Llama over the tiny model, shared by the session's tests."""
    return shared.tiny_llama()


@pytest.fixture(scope="session")
def ollama() -> OllamaServer:
    """The Ollama-API server (model ``tiny``, one slot) on 127.0.0.1.

    Its ``records`` list what it did for each request; ``wait_idle()`` waits
    until nothing runs.
    """
    return shared.ollama_server()


@pytest.fixture(scope="session")
def openai_url() -> str:
    """``llama_cpp.server`` with the tiny model (as ``tiny``): its ``/v1`` base URL."""
    return shared.openai_server()
