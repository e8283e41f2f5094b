"""``llama_cpp.server`` (llama-cpp-python's OpenAI-compatible server) in a subprocess.

:func:`running_openai_server` starts it on a free 127.0.0.1 port with a GGUF
model, waits until ``GET /v1/models`` answers, yields the ``/v1`` base URL and
kills the process after.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from .models import free_port, llama_threads

__all__ = ["running_openai_server"]

#: The model name the server answers to (``--model_alias``).
MODEL_ALIAS = "tiny"


@contextlib.contextmanager
def running_openai_server(
    model: str | os.PathLike[str], *, n_ctx: int = 512, startup_timeout: float = 60.0
) -> Iterator[str]:
    """Run ``python -m llama_cpp.server`` on 127.0.0.1; yield ``http://127.0.0.1:PORT/v1``."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(Path(model)),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(llama_threads()),
        "--n_threads_batch",
        str(llama_threads()),
        "--verbose",
        "False",
    ]
    # A file, not a pipe: a full pipe would block the server.
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                log.seek(0)
                err = log.read().decode(errors="replace")
                raise RuntimeError(f"llama_cpp.server exited with {process.returncode}: {err[-2000:]}")
            try:
                if httpx.get(f"{base_url}/models", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama_cpp.server did not answer within {startup_timeout} s")
            time.sleep(0.1)
        yield base_url
    finally:
        process.kill()
        process.wait(timeout=10)
        log.close()
