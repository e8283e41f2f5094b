"""Backends: what generates the answers.

- :class:`Backend`: the protocol; :class:`Resumable`: the optional half a
  backend has when answers can be paused and resumed (preemption).
- :class:`CallableBackend`: any sync or async function (the test double).
- :class:`SimulatedBackend`: a serial server simulated with sleeps.
- :class:`LlamaCppBackend`: an in-process ``llama_cpp.Llama`` (extra ``llama``).
- :class:`OllamaBackend`: an Ollama server (extra ``ollama``).
- :class:`OpenAIBackend`: an OpenAI-compatible server: llama.cpp's server,
  LM Studio, vLLM (extra ``openai``).
- :class:`BackendPool`: several backends behind one scheduler, with health
  checks and fail-over.
- :class:`BackendUnavailable`: the :class:`~sjfsched.BackendError` of a
  server that cannot be reached or failed (not the request's fault).
- For writing backends: :func:`resume_by_continuation` and
  :func:`continuation` (pausing a completion API's answer),
  :class:`ToolCallPieces` (tool calls streamed in pieces, put together),
  ``CallableResult`` (what a :class:`CallableBackend` function returns).

The adapters import their optional dependency (llama-cpp-python, httpx) only
when used, so this module imports without them.
"""

from .._errors import BackendUnavailable as BackendUnavailable
from ._base import Backend as Backend
from ._base import Resumable as Resumable
from ._base import ToolCallPieces as ToolCallPieces
from ._base import continuation as continuation
from ._base import resume_by_continuation as resume_by_continuation
from ._callable import CallableBackend as CallableBackend
from ._callable import CallableResult as CallableResult
from ._llama import LlamaCppBackend as LlamaCppBackend
from ._ollama import OllamaBackend as OllamaBackend
from ._openai import OpenAIBackend as OpenAIBackend
from ._pool import BackendPool as BackendPool
from ._pool import PoolMemberStatistics as PoolMemberStatistics
from ._pool import PoolStatistics as PoolStatistics
from ._simulated import SimulatedBackend as SimulatedBackend

__all__ = [
    "Backend",
    "BackendPool",
    "BackendUnavailable",
    "CallableBackend",
    "CallableResult",
    "LlamaCppBackend",
    "OllamaBackend",
    "OpenAIBackend",
    "PoolMemberStatistics",
    "PoolStatistics",
    "Resumable",
    "SimulatedBackend",
    "ToolCallPieces",
    "continuation",
    "resume_by_continuation",
]
