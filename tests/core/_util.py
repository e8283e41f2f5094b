"""Small real parts for core tests: a predictor that reads a table, a timed backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import trio.testing

from sjfsched import Prediction, Request, Scheduler, VirtualEventLoop
from sjfsched.backends import SimulatedBackend

T = TypeVar("T")


class TablePredictor:
    """Predicts ``request.metadata["predicted"]`` tokens and no prompt cost."""

    def predict(self, request: Request, /) -> Prediction:
        return Prediction(float(request.metadata["predicted"]), prompt_tokens=0.0)

    def predict_many(self, requests: Sequence[Request], /) -> list[Prediction]:
        return [self.predict(r) for r in requests]


def job(predicted: float, actual: int | None = None, **fields: Any) -> Request:
    """A request predicted at ``predicted`` tokens that really produces ``actual``."""
    metadata = {"predicted": predicted, "output_tokens": predicted if actual is None else actual}
    metadata["prompt_tokens"] = 0
    metadata.update(fields.pop("metadata", {}))
    return Request(f"job {predicted}", metadata=metadata, **fields)


def backend(decode_rate: float = 10.0, slots: int = 1) -> SimulatedBackend:
    """1 token = 0.1 s by default; prompts cost nothing."""
    return SimulatedBackend(prefill_rate=1e9, decode_rate=decode_rate, slots=slots)


def scheduler(**options: Any) -> Scheduler:
    """A scheduler with the plain key (no cap) unless ``cap`` is given, not preempting unless
    ``preempt`` is given; the cap and preemption have tests of their own."""
    options.setdefault("cap", None)
    options.setdefault("preempt", False)
    options.setdefault("predictor", TablePredictor())
    options.setdefault("decode_rate", 10.0)
    options.setdefault("learn_rates", False)
    return Scheduler(options.pop("backend", backend()), **options)


def run_virtual(fn: Callable[[], Awaitable[T]], async_backend: str) -> T:
    """Run ``fn`` in virtual time on asyncio or trio (for hypothesis tests)."""
    if async_backend == "asyncio":
        return anyio.run(fn, backend="asyncio", backend_options={"loop_factory": VirtualEventLoop})
    return anyio.run(
        fn, backend="trio", backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)}
    )
