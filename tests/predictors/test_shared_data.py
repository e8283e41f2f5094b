"""The bundled model and its calibration on the project's shared corpora (skipped without them)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from sjfsched import Prediction, Request
from sjfsched.predictors import LexicalPredictor
from sjfsched.predictors._corpus import LengthRecord, is_test, load_records
from sjfsched.predictors._evaluate import ranking_accuracy

from ._shared import DATA, needs_shared_data

pytestmark = needs_shared_data


def _records(name: str) -> list[LengthRecord]:
    return load_records([DATA / name])


def _log_rmse(predictor: LexicalPredictor, records: list[LengthRecord], scores: dict[str, float]) -> float:
    cal = predictor.calibration
    errors = [cal.log_length(scores[r.prompt]) - math.log1p(r.output_tokens) for r in records]
    return float(np.sqrt(np.mean(np.square(errors))))


@pytest.mark.parametrize(
    ("corpus", "model", "margin"),
    [
        # answers close to the training scale already: little to gain, but no loss
        ("castillo_code_and_instruct.jsonl.gz", "meta-llama/Llama-3.2-1B-Instruct", 0.0),
        ("castillo_code_and_instruct.jsonl.gz", "google/gemma-3-4b-it", 0.05),  # verbose
        ("arena_hard_v01.jsonl.gz", "gpt-3.5-turbo-0125", 0.05),  # terse
        ("arena_hard_v01.jsonl.gz", "athene-v2-chat", 0.05),  # verbose
    ],
)
def test_calibration_on_one_models_answers_lowers_error_on_its_held_back_answers(
    corpus: str, model: str, margin: float
) -> None:
    records = [r for r in _records(corpus) if r.model == model]
    observed = [r for r in records if not is_test(r.prompt_id, 0.5, seed=7)]
    held_back = [r for r in records if is_test(r.prompt_id, 0.5, seed=7)]
    assert len(observed) > 100 and len(held_back) > 100
    random.Random(1).shuffle(observed)  # a deployment sees its traffic mixed
    predictor = LexicalPredictor(adapt=False)  # calibration alone (adaptation: test_adapt.py)
    scores = dict(
        zip([r.prompt for r in records], predictor.scores([r.prompt for r in records]), strict=True)
    )
    before = _log_rmse(predictor, held_back, scores)
    for r in observed[:600]:
        predictor.observe(Request(r.prompt), Prediction(1.0), round(r.output_tokens))
    after = _log_rmse(predictor, held_back, scores)
    assert after < before - margin, (before, after)
    # the typical length of the held-back answers is now closer too
    predicted = np.median([predictor.predict(Request(r.prompt)).tokens for r in held_back])
    actual = np.median([r.output_tokens for r in held_back])
    uncalibrated = np.median(
        [LexicalPredictor(calibrate=False).predict(Request(r.prompt)).tokens for r in held_back]
    )
    assert abs(math.log(predicted / actual)) < abs(math.log(uncalibrated / actual)) + 0.05


def test_bundled_model_ranks_a_source_it_never_saw() -> None:
    """CASTILLO's Alpaca prompts (CC BY-NC) are not among the bundled model's training sources."""
    records = [r for r in _records("castillo_code_and_instruct.jsonl.gz") if r.source == "castillo/Alpaca"]
    predictor = LexicalPredictor(calibrate=False)
    assert "castillo/Alpaca" not in predictor.metadata["sjfsched.trained_on"]
    scores = predictor.scores([r.prompt for r in records])
    tokens = np.array([r.output_tokens for r in records])
    length = np.array([len(r.prompt) for r in records])
    ours = ranking_accuracy(scores, tokens)
    assert ours > ranking_accuracy(length, tokens) + 0.2
    assert ours > 0.7


def test_the_bound_of_the_model_s_score_clips_only_prompts_answered_in_a_few_words() -> None:
    """docs/predictor.md: the bound (targets' range widened by SCORE_MARGIN) clips seven real
    prompts ("hey", "ok", fill-in-the-blank drills), each answered in under 20 tokens, and no long one."""
    predictor = LexicalPredictor(calibrate=False)
    records = load_records([DATA])
    lengths: dict[str, list[float]] = {}
    for record in records:
        lengths.setdefault(record.prompt, []).append(record.output_tokens)
    prompts = sorted(lengths)
    scores = predictor.scores(prompts)
    assert len(prompts) > 10_000
    assert scores.max() < predictor._high
    clipped = [prompts[i] for i in np.flatnonzero(scores <= predictor._low)]
    assert 0 < len(clipped) <= 7 and "hey" in clipped
    assert all(np.median(lengths[p]) < 20 for p in clipped)
