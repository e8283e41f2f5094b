"""Every Predictor in the package keeps the same promises."""

from __future__ import annotations

import math
import time

import pytest

from sjfsched import Prediction, Request
from sjfsched.predictors import Predictor, SupportsObserve, SupportsPredictMany

from .cases import PREDICTOR_CASES, PredictorCase

ODD_PROMPTS = {
    "empty": "",
    "space": "   \n\t ",
    "one-megabyte": "lorem ipsum dolor sit amet " * 40_000,
    "binary-junk": bytes(range(256)).decode("latin-1") * 8,
    "emoji": "😀🎉🔥 can you 🤖 write 📝 me a poem? 🌈" * 3,
    "chinese": "请写一篇关于人工智能对未来教育影响的详细文章，至少一千字。",
    "code-only": "def f(x):\n    return [i**2 for i in range(x) if i % 3]\n\nclass A: pass\n",
    "surrogates": "bad \udcff\udcfe surrogate",
    "nul": "a\x00b\x00c",
}


@pytest.fixture(params=PREDICTOR_CASES, ids=lambda c: c.id)
def predictor(request: pytest.FixtureRequest) -> Predictor:
    case: PredictorCase = request.param
    return case.make()


def test_is_a_predictor(predictor: Predictor) -> None:
    assert isinstance(predictor, Predictor)


@pytest.mark.parametrize("name", sorted(ODD_PROMPTS))
def test_odd_prompts_give_finite_predictions_quickly(predictor: Predictor, name: str) -> None:
    request = Request(ODD_PROMPTS[name])
    t0 = time.perf_counter()
    prediction = predictor.predict(request)
    elapsed = time.perf_counter() - t0
    assert isinstance(prediction, Prediction)
    assert math.isfinite(prediction.tokens) and prediction.tokens >= 0
    if prediction.p_long is not None:
        assert 0.0 <= prediction.p_long <= 1.0
    assert elapsed < 0.5, f"{name}: {elapsed:.3f}s"  # bounded cost, even for 1 MB


def test_chat_requests(predictor: Predictor) -> None:
    chat = Request(
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Write a 2000-word essay on the history of Rome."},
        ]
    )
    prediction = predictor.predict(chat)
    assert math.isfinite(prediction.tokens) and prediction.tokens >= 0


def test_predict_many_matches_predict(predictor: Predictor) -> None:
    requests = [Request(p) for p in ODD_PROMPTS.values()] + [
        Request("What is 2+2?"),
        Request("Write a detailed, multi-chapter story about a dragon."),
    ]
    assert isinstance(predictor, SupportsPredictMany)  # every predictor of ours batches
    many = predictor.predict_many(requests)
    assert len(many) == len(requests)
    for request, batch_prediction in zip(requests, many, strict=True):
        single = predictor.predict(request)
        assert batch_prediction.tokens == pytest.approx(single.tokens, rel=1e-4, abs=1e-3)
    assert predictor.predict_many([]) == []


def test_deterministic(predictor: Predictor) -> None:
    request = Request("Explain quicksort with an example in Python.")
    assert predictor.predict(request) == predictor.predict(request)


def test_observe_if_supported(predictor: Predictor) -> None:
    if not isinstance(predictor, SupportsObserve):
        pytest.skip(f"{type(predictor).__name__} does not learn online")
    request = Request("Tell me a short joke.")
    prediction = predictor.predict(request)
    for _ in range(3):
        assert predictor.observe(request, prediction, 42) is None  # type: ignore[func-returns-value]
    after = predictor.predict(request)
    assert math.isfinite(after.tokens) and after.tokens >= 0
