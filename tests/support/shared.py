"""Servers shared by every test of a session, started on first use.

The contract cases (``tests/contract/cases.py``) build backends without
pytest fixtures, so the servers they need live here: each starts once per
test process, the first time it is asked for, and stops when the process
exits.  ``tests/backends`` uses the same ones.
"""

from __future__ import annotations

import atexit
import contextlib
import functools

from llama_cpp import Llama

from .models import N_CTX, llama_threads, tiny_model
from .ollama_server import OllamaServer
from .openai_server import running_openai_server

_exit_stack = contextlib.ExitStack()


def close_all() -> None:
    """Stop every shared server and close the shared model (a later call starts them anew)."""
    _exit_stack.close()
    for started in (ollama_server, ollama_server_parallel, openai_server, tiny_llama):
        started.cache_clear()


atexit.register(close_all)

#: The model name the shared Ollama server serves the tiny model under.
TINY = "tiny"


@functools.cache
def ollama_server() -> OllamaServer:
    """An Ollama-API server serving the tiny model as ``tiny`` (one slot)."""
    server = OllamaServer({TINY: tiny_model()}, n_threads=llama_threads())
    server.start()
    _exit_stack.callback(server.stop)
    return server


@functools.cache
def ollama_server_parallel() -> OllamaServer:
    """An Ollama-API server with OLLAMA_NUM_PARALLEL=2 and a queue of 1."""
    server = OllamaServer({TINY: tiny_model()}, num_parallel=2, max_queue=1, n_threads=llama_threads())
    server.start()
    _exit_stack.callback(server.stop)
    return server


@functools.cache
def openai_server() -> str:
    """``llama_cpp.server`` with the tiny model; its ``/v1`` base URL."""
    return _exit_stack.enter_context(running_openai_server(tiny_model()))


@functools.cache
def tiny_llama() -> Llama:
    """One ``Llama`` over the tiny model for the whole session (one thread)."""
    llm = Llama(
        str(tiny_model()),
        n_ctx=N_CTX,
        n_threads=llama_threads(),
        n_threads_batch=llama_threads(),
        verbose=False,
        seed=0,
    )
    _exit_stack.callback(llm.close)
    return llm
