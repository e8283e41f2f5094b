"""Fixtures for the backend tests: real models and loopback servers, one per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_cpp import Llama

from tests.support import shared
from tests.support.models import tiny_model
from tests.support.ollama_server import OllamaServer


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
    """The Ollama-API server (model ``tiny``, one slot) on 127.0.0.1."""
    return shared.ollama_server()


@pytest.fixture(scope="session")
def openai_url() -> str:
    """``llama_cpp.server`` with the tiny model: its ``/v1`` base URL."""
    return shared.openai_server()
