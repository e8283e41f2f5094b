"""Fixtures for the proxy tests: real upstreams generating with a real (tiny) model.

The upstreams are shared with the backend tests (``tests/support/shared.py``):
the Ollama-API server over llama.cpp (one slot, model ``tiny``) and
``llama_cpp.server``, each started once per session.  Proxies are cheap
(a tenth of a second) and made per test, so no test sees another's counters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("uvicorn", reason="the proxy needs the 'proxy' extra")
pytest.importorskip("httptools", reason="the proxy needs the 'proxy' extra")

from tests.support import shared
from tests.support.ollama_server import OllamaServer

from .harness import RunningProxy, running_proxy

ProxyFactory = Callable[..., RunningProxy]


@pytest.fixture(scope="session")
def ollama() -> OllamaServer:
    """The Ollama-API test server (model ``tiny``, one slot) on 127.0.0.1."""
    return shared.ollama_server()


@pytest.fixture(scope="session")
def openai_url() -> str:
    """``llama_cpp.server`` with the tiny model; its ``/v1`` base URL."""
    return shared.openai_server()


@pytest.fixture
def start_proxy() -> Iterator[ProxyFactory]:
    """Start proxies (``start_proxy(upstream, **settings)``); all stop when the test ends."""
    with contextlib.ExitStack() as stack:

        def start(upstream: str, **settings: Any) -> RunningProxy:
            return stack.enter_context(running_proxy(upstream, **settings))

        yield start


@pytest.fixture
def ollama_proxy(ollama: OllamaServer, start_proxy: ProxyFactory) -> Iterator[RunningProxy]:
    """A proxy with default settings in front of the Ollama-API server (detected)."""
    proxy = start_proxy(ollama.url)
    yield proxy
    ollama.wait_idle()


@pytest.fixture
def openai_proxy(openai_url: str, start_proxy: ProxyFactory) -> RunningProxy:
    """A proxy with default settings in front of llama_cpp.server (detected)."""
    return start_proxy(openai_url)
