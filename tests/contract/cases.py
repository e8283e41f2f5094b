"""The implementations every contract test runs against.

Add a case here for each Predictor and Backend the package ships.  A backend
case is an async context manager factory, so a case may start a server or
write a model file first and clean up after.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio
import attrs

from sjfsched import Chunk, Request
from sjfsched.backends import Backend, CallableBackend, SimulatedBackend
from sjfsched.predictors import ConstantPredictor, HeuristicPredictor, Predictor


@attrs.frozen
class BackendCase:
    id: str
    #: make(tmp_dir) -> async context manager yielding a ready backend
    make: Callable[[Path], AbstractAsyncContextManager[Backend]]
    #: whether it accepts Request(messages=...)
    chat: bool = True
    #: whether generation honours max_tokens exactly when it runs to length
    exact_max_tokens: bool = True
    #: whether it needs real (wall-clock) time rather than a virtual clock
    real_time: bool = False


@attrs.frozen
class PredictorCase:
    id: str
    make: Callable[[], Predictor]


def _words(request: Request) -> list[str]:
    n = request.max_tokens if request.max_tokens is not None else 8
    return [f"w{i} " for i in range(n)]


@asynccontextmanager
async def _callable_sync(tmp: Path) -> AsyncIterator[Backend]:
    yield CallableBackend(_words)


async def _async_words(request: Request) -> AsyncIterator[Chunk]:
    for word in _words(request):
        await anyio.sleep(0.001)
        yield Chunk(word)


@asynccontextmanager
async def _callable_async(tmp: Path) -> AsyncIterator[Backend]:
    yield CallableBackend(_async_words)


@asynccontextmanager
async def _simulated(tmp: Path) -> AsyncIterator[Backend]:
    yield SimulatedBackend(prefill_rate=1e5, decode_rate=1e4)


BACKEND_CASES: list[BackendCase] = [
    BackendCase("callable-sync-iter", _callable_sync),
    BackendCase("callable-async-gen", _callable_async),
    BackendCase("simulated", _simulated),
]

PREDICTOR_CASES: list[PredictorCase] = [
    PredictorCase("constant", ConstantPredictor),
    PredictorCase("heuristic", HeuristicPredictor),
]


# --- Real backends (issue 4): real llama.cpp generation, real HTTP on 127.0.0.1.
# The model file and the servers start once per test session (tests/support/shared.py).


@asynccontextmanager
async def _llama_cpp(tmp: Path) -> AsyncIterator[Backend]:
    from sjfsched.backends import LlamaCppBackend
    from tests.support import shared

    yield LlamaCppBackend(shared.tiny_llama())


@asynccontextmanager
async def _ollama(tmp: Path) -> AsyncIterator[Backend]:
    from sjfsched.backends import OllamaBackend
    from tests.support import shared

    backend = OllamaBackend(shared.TINY, shared.ollama_server().url)
    try:
        yield backend
    finally:
        await backend.aclose()


@asynccontextmanager
async def _openai(tmp: Path) -> AsyncIterator[Backend]:
    import anyio.to_thread

    from sjfsched.backends import OpenAIBackend
    from tests.support import shared

    base_url = await anyio.to_thread.run_sync(shared.openai_server)  # starts llama_cpp.server once
    backend = OpenAIBackend(base_url, model="tiny")
    try:
        yield backend
    finally:
        await backend.aclose()


@asynccontextmanager
async def _pool(tmp: Path) -> AsyncIterator[Backend]:
    from sjfsched.backends import BackendPool, LlamaCppBackend, OllamaBackend
    from tests.support import shared

    pool = BackendPool(
        [LlamaCppBackend(shared.tiny_llama()), OllamaBackend(shared.TINY, shared.ollama_server().url)]
    )
    try:
        yield pool
    finally:
        await pool.aclose()


BACKEND_CASES += [
    BackendCase("llama-cpp", _llama_cpp, real_time=True),
    BackendCase("ollama", _ollama, real_time=True),
    BackendCase("openai-llama-cpp-server", _openai, real_time=True),
    BackendCase("pool-llama-cpp+ollama", _pool, real_time=True),
]


# ----------------------------------------------------------------- predictors
#: The Clairvoyant baseline model the repository keeps (trained by
#: `sjfsched train --features clairvoyant`, see docs/predictor.md).
CLAIRVOYANT_MODEL = Path(__file__).resolve().parents[2] / "benchmarks" / "models" / "clairvoyant.onnx"


def _lexical_uncalibrated() -> Predictor:
    from sjfsched.predictors import LexicalPredictor

    return LexicalPredictor(calibrate=False)


def _lexical() -> Predictor:
    from sjfsched.predictors import LexicalPredictor

    return LexicalPredictor()


def _clairvoyant() -> Predictor:
    from sjfsched.predictors import ClairvoyantPredictor

    return ClairvoyantPredictor(CLAIRVOYANT_MODEL)


PREDICTOR_CASES += [
    PredictorCase("lexical", _lexical),
    PredictorCase("lexical-uncalibrated", _lexical_uncalibrated),
]
if CLAIRVOYANT_MODEL.exists():
    PREDICTOR_CASES.append(PredictorCase("clairvoyant", _clairvoyant))
