"""Model files for tests: written once per process, removed at exit."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import socket
import tempfile
from pathlib import Path

from sjfsched.testing import write_tiny_llama

#: The shared real (tiny) model, when the checkout has it next to it (or
#: ``SJFSCHED_STORIES_MODEL`` names it): a 260K-parameter Llama trained on TinyStories.
STORIES_260K = Path(
    os.environ.get(
        "SJFSCHED_STORIES_MODEL",
        Path(__file__).resolve().parents[3] / "shared" / "models" / "stories260K.gguf",
    )
)
STORIES_SKIP_REASON = (
    f"{STORIES_260K} is not present (it lives outside the repository; set SJFSCHED_STORIES_MODEL)"
)

#: The context size every test model is loaded with.
N_CTX = 512


@functools.cache
def _scratch() -> Path:
    path = Path(tempfile.mkdtemp(prefix="sjfsched-test-models-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def tiny_model() -> Path:
    """The default tiny random Llama (~0.5 MB, about a millisecond a token)."""
    return write_tiny_llama(_scratch() / "tiny.gguf", n_ctx=N_CTX)


def stories_model() -> Path | None:
    """``stories260K.gguf`` if present, else None."""
    return STORIES_260K if STORIES_260K.is_file() else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def llama_threads() -> int:
    """Threads per Llama in tests: 1 (the CI machine has two cores)."""
    return int(os.environ.get("SJFSCHED_TEST_THREADS", "1"))
