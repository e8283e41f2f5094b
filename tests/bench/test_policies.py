"""The peer's policy (Clairvoyant), the capped key, and policy names."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
import trio.testing

from sjfsched import DEFAULT_CAP, Completion, Request
from sjfsched._bench._policies import (
    ClairvoyantScheduler,
    OraclePredictor,
    policy_named,
)
from sjfsched.backends import SimulatedBackend

LONG, SHORT = 800, 50  # tokens; at 100 tokens/s: 8 s and 0.5 s


def request(tokens: int, name: str) -> Request:
    return Request(name, metadata={"output_tokens": tokens, "prompt_tokens": 0})


def starve(
    make: type[ClairvoyantScheduler] | None, short_latency: float = 0.5
) -> tuple[Completion, float | None]:
    """A long request behind a stream of shorts arriving faster than they are served."""
    result: dict[str, Completion] = {}
    tau: list[float | None] = [None]

    async def main() -> None:
        backend = SimulatedBackend(prefill_rate=1e9, decode_rate=100.0)
        if make is None:
            from sjfsched import Scheduler

            sched = Scheduler(backend, predictor=OraclePredictor(), aging=0.0, max_wait=None)
        else:
            sched = make(backend, predictor=OraclePredictor(), short_latency=short_latency)

        async def one(at: float, r: Request) -> None:
            await anyio.sleep_until(at)
            c = await sched.complete(r)
            result[r.prompt or ""] = c

        async with sched, anyio.create_task_group() as tg:
            tg.start_soon(one, 0.0, request(SHORT, "first"))
            tg.start_soon(one, 0.01, request(LONG, "long"))
            for i in range(60):  # every 0.3 s for 18 s, each 0.5 s of work
                tg.start_soon(one, 0.1 + 0.3 * i, request(SHORT, f"short {i}"))
        tau[0] = sched.max_wait

    anyio.run(main, backend="trio", backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)})
    return result["long"], tau[0]


def test_without_a_timeout_the_long_request_starves() -> None:
    long, _ = starve(None)
    assert long.wait > 25  # ran only after every short one


def test_clairvoyant_promotes_a_request_waiting_longer_than_tau() -> None:
    long, tau = starve(ClairvoyantScheduler, short_latency=0.5)
    # tau = 3 x 0.5 s: overdue at 1.51 s, it runs at the next dispatch (2.0 s).
    assert long.promoted
    assert 1.5 <= long.wait <= 1.5 + 0.5 + 1e-6
    assert tau == pytest.approx(1.5)


def test_clairvoyant_tau_follows_the_measured_short_latency() -> None:
    # Calibrated at 1 s per short request, it then sees shorts of 0.5 s.
    long, tau = starve(ClairvoyantScheduler, short_latency=1.0)
    shorts = 61  # every short request completed (the long one is not short)
    assert tau == pytest.approx(3 * (1.0 + 0.5 * shorts) / (1 + shorts))
    assert long.promoted


def test_clairvoyant_orders_by_p_long_then_arrival() -> None:
    order: list[str] = []

    async def main() -> None:
        backend = SimulatedBackend(prefill_rate=1e9, decode_rate=100.0)
        sched = ClairvoyantScheduler(backend, predictor=OraclePredictor(), short_latency=100.0)

        async def one(at: float, tokens: int, name: str) -> None:
            await anyio.sleep_until(at)
            await sched.complete(request(tokens, name))
            order.append(name)

        async with sched, anyio.create_task_group() as tg:
            for i, (tokens, name) in enumerate([(50, "a"), (900, "b"), (300, "c"), (10, "d"), (700, "e")]):
                tg.start_soon(one, i * 1e-3, tokens, name)

    anyio.run(main, backend="trio", backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)})
    # p_long is 1 for b only; c, d, e tie at 0 and keep their arrival order (not shortest first).
    assert order == ["a", "c", "d", "e", "b"]


def test_policy_names() -> None:
    p = policy_named("sjfsched@aging=0.2,max_wait=none")
    assert (p.family, p.aging, p.max_wait) == ("sjfsched", 0.2, None)
    assert policy_named("oracle@cap=0.8").cap == 0.8
    assert policy_named("sjfsched").cap == DEFAULT_CAP
    plain = policy_named("plain")
    assert (plain.family, plain.cap, plain.aging, plain.max_wait) == ("sjfsched", None, 0.2, None)
    assert policy_named("fcfs").family == "fcfs"
    with pytest.raises(ValueError, match="unknown predictor"):
        policy_named("psychic")
    with pytest.raises(ValueError, match="unknown key"):
        policy_named("sjfsched@speed=3")
    with pytest.raises(ValueError, match="aging"):
        policy_named("sjfsched@aging=fast")


def test_oracle_needs_the_true_length() -> None:
    with pytest.raises(KeyError, match="output_tokens"):
        OraclePredictor().predict(Request("no metadata"))


def test_unseen_needs_a_model_trained_without_the_trace() -> None:
    from sjfsched._bench._policies import PolicyContext

    policy = policy_named("unseen")
    assert policy.family == "unseen"
    with pytest.raises(ValueError, match="trained without the trace"):
        policy.make(SimulatedBackend(), PolicyContext(short_latency=1.0))


def test_a_lexical_model_file_as_the_predictor(tmp_path: Path) -> None:
    from sjfsched import PredictorError
    from sjfsched._bench._policies import PolicyContext, predictor_factory
    from sjfsched.predictors._lexical import bundled_model_path

    context = PolicyContext(short_latency=1.0)
    mine = predictor_factory(f"lexical:{bundled_model_path()}")(context)
    bundled = predictor_factory("lexical")(context)
    request = Request("Write a long essay about the history of Rome.")
    assert mine.predict(request).tokens == bundled.predict(request).tokens
    assert policy_named(f"lexical:{bundled_model_path()}@aging=0.1").aging == 0.1
    with pytest.raises(PredictorError, match=r"nothing\.onnx"):
        predictor_factory(f"lexical:{tmp_path / 'nothing.onnx'}")(context)


def test_adaptation_keys() -> None:
    from sjfsched._bench._policies import FrozenPredictor, PolicyContext
    from sjfsched._bench._traces import TraceItem
    from sjfsched.predictors import LexicalPredictor

    context = PolicyContext(short_latency=1.0)
    fixed = policy_named("sjfsched@adapt=0").make(SimulatedBackend(), context).predictor
    assert isinstance(fixed, LexicalPredictor) and fixed.correction is None
    adapting = policy_named("sjfsched@adapt=1").make(SimulatedBackend(), context).predictor
    assert isinstance(adapting, LexicalPredictor) and adapting.correction is not None
    with pytest.raises(ValueError, match="adapt must be 0 or 1"):
        policy_named("sjfsched@adapt=yes")
    with pytest.raises(ValueError, match="warm must be an int >= 1"):
        policy_named("sjfsched@warm=0")
    with pytest.raises(ValueError, match="adapt=0 applies to the lexical predictors only"):
        policy_named("oracle@adapt=0").make(SimulatedBackend(), context)
    warm = policy_named("sjfsched@warm=40")
    with pytest.raises(ValueError, match="NAME/fresh trace"):
        warm.make(SimulatedBackend(), context)
    history = tuple(
        TraceItem(f"Ticket {i}: " + ("write the report" if i % 2 else "say yes"), 1500 if i % 2 else 9, 20)
        for i in range(30)
    )
    frozen = warm.make(SimulatedBackend(), PolicyContext(short_latency=1.0, history=history)).predictor
    assert isinstance(frozen, FrozenPredictor) and not hasattr(frozen, "observe")  # it learns no more
    inner = frozen.predictor
    assert isinstance(inner, LexicalPredictor) and inner.correction is not None
    assert inner.correction.observations == 40 and inner.calibration.observations == 40
    request = Request("Ticket 99: write the full report")
    assert frozen.predict(request) == inner.predict(request)
