"""Adaptation: the lexical predictor learns a correction to its ranking from completed requests."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from sjfsched import Prediction, PredictorError, Request
from sjfsched.predictors import LexicalPredictor
from sjfsched.predictors._adapt import ScoreCorrection, TargetMap
from sjfsched.predictors._corpus import is_test, load_records
from sjfsched.predictors._evaluate import kendall_tau, ranking_accuracy

from ._shared import DATA, needs_shared_data

# A support desk's traffic: two kinds of ticket the bundled model has no reason
# to tell apart, one answered with a long report, the other with a line.
_NAMES = ["Ana", "Bo", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea"]


def _ticket(kind: str, rng: random.Random) -> str:
    name = rng.choice(_NAMES)
    number = rng.randrange(10_000, 99_999)
    if kind == "long":
        return f"Ticket {number} from {name}: reconcile the invoice ledger for account {number % 97}."
    return f"Ticket {number} from {name}: reset the password for account {number % 97}."


def _traffic(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.choice(["long", "short"])
        out.append((_ticket(kind, rng), rng.randint(1200, 2000) if kind == "long" else rng.randint(15, 60)))
    return out


def _accuracy(predictor: LexicalPredictor, traffic: list[tuple[str, int]]) -> float:
    scores = predictor.scores([text for text, _ in traffic])
    return ranking_accuracy(scores, [tokens for _, tokens in traffic])


def test_adaptation_learns_which_prompts_of_a_deployment_answer_long() -> None:
    adapting, fixed = LexicalPredictor(), LexicalPredictor(adapt=False)
    unseen = _traffic(200, seed=2)  # new tickets: other numbers and names
    before = _accuracy(adapting, unseen)
    model_scores = fixed.scores([text for text, _ in unseen])
    for text, tokens in _traffic(300, seed=1):
        for predictor in (adapting, fixed):
            request = Request(text)
            predictor.observe(request, predictor.predict(request), tokens)
    assert adapting.correction is not None and adapting.correction.observations == 300
    after = _accuracy(adapting, unseen)
    assert before < 0.9 and after > 0.99, (before, after)
    # without adaptation the ranking is the model's, whatever it observed
    assert fixed.correction is None
    assert np.array_equal(fixed.scores([text for text, _ in unseen]), model_scores)
    # the typical length follows too: calibration and correction together
    long_ask, short_ask = _ticket("long", random.Random(5)), _ticket("short", random.Random(5))
    assert adapting.predict(Request(long_ask)).tokens > 5 * adapting.predict(Request(short_ask)).tokens


def test_correction_is_saved_with_the_calibration(tmp_path: Path) -> None:
    predictor = LexicalPredictor()
    for text, tokens in _traffic(100, seed=1):
        predictor.observe(Request(text), Prediction(1.0), tokens)
    texts = [text for text, _ in _traffic(50, seed=3)]
    path = tmp_path / "state.json"
    predictor.save_calibration(path)
    again = LexicalPredictor(calibration_path=path)
    assert again.correction is not None and again.correction.observations == 100
    np.testing.assert_allclose(again.scores(texts), predictor.scores(texts), rtol=1e-6)
    assert again.predict(Request(texts[0])) == predictor.predict(Request(texts[0]))
    # reset: back to the model's own scores
    again.reset_calibration()
    assert again.correction is not None and again.correction.observations == 0
    np.testing.assert_array_equal(again.scores(texts), LexicalPredictor(adapt=False).scores(texts))


def test_calibration_saved_without_adaptation_loads_with_an_empty_correction(tmp_path: Path) -> None:
    fixed = LexicalPredictor(adapt=False)
    for text, tokens in _traffic(40, seed=1):
        fixed.observe(Request(text), Prediction(1.0), tokens)
    path = tmp_path / "plain.json"
    fixed.save_calibration(path)
    assert "correction" not in json.loads(path.read_text())
    adapting = LexicalPredictor(calibration_path=path)
    assert adapting.calibration.observations == 40
    assert adapting.correction is not None and adapting.correction.observations == 0


def test_a_correction_for_another_model_is_refused(tmp_path: Path) -> None:
    predictor = LexicalPredictor()
    predictor.observe(Request("hello"), Prediction(1.0), 10)
    path = tmp_path / "state.json"
    predictor.save_calibration(path)
    data = json.loads(path.read_text())
    data["correction"]["size"] += 1
    path.write_text(json.dumps(data))
    with pytest.raises(PredictorError, match=r"state\.json.*correction is for a model with \d+ rows"):
        LexicalPredictor(calibration_path=path)
    data["correction"]["size"] -= 1
    data["correction"]["rows"] = "not base64!"
    path.write_text(json.dumps(data))
    with pytest.raises(PredictorError, match=r"state\.json.*not a sjfsched score correction"):
        LexicalPredictor(calibration_path=path)


def test_a_state_learnt_with_another_model_file_is_refused(tmp_path: Path) -> None:
    """Calibration and correction are relative to one model's scores: a state binds to its model file."""
    import shutil

    import onnx

    from sjfsched.predictors._lexical import bundled_model_path

    predictor = LexicalPredictor()
    for text, tokens in _traffic(20, seed=2):
        predictor.observe(Request(text), Prediction(1.0), tokens)
    path = tmp_path / "state.json"
    predictor.save_calibration(path)
    # the same model, copied elsewhere, takes it
    copy = tmp_path / "copy.onnx"
    shutil.copyfile(bundled_model_path(), copy)
    assert LexicalPredictor(copy, calibration_path=path).calibration.observations == 20
    # a retrained model, same vocabulary and table size, does not
    model = onnx.load(str(bundled_model_path()))
    weights = next(t for t in model.graph.initializer if t.name == "weights")
    table = onnx.numpy_helper.to_array(weights) * np.float32(1.01)
    weights.CopyFrom(onnx.numpy_helper.from_array(table, "weights"))
    other = tmp_path / "retrained.onnx"
    onnx.save(model, str(other))
    with pytest.raises(PredictorError, match=r"state\.json.*learnt with another model.*retrained\.onnx"):
        LexicalPredictor(other, calibration_path=path)
    # a state written before states named their model loads as before
    data = json.loads(path.read_text())
    del data["model"]
    path.write_text(json.dumps(data))
    assert LexicalPredictor(other, calibration_path=path).correction.observations == 20  # type: ignore[union-attr]


def test_correction_arguments_and_bad_observations() -> None:
    for kwargs in ({"step": 0.0}, {"step": 1.5}, {"replays": -1}, {"buffer": 0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            ScoreCorrection(10, **kwargs)
    with pytest.raises(ValueError, match="size"):
        ScoreCorrection(0)
    correction = ScoreCorrection(10, TargetMap.clipped(100.0, 1000.0))
    ids, values = np.array([1, 2, 2], np.int32), np.ones(3, np.float32)
    for base, tokens in ((math.nan, 10), (1.0, math.inf), (1.0, -5)):
        correction.learn(ids, values, base, tokens)
    assert correction.observations == 0 and correction.weights is None  # nothing allocated either
    # lengths are clipped to the training target's range
    assert correction.target(5) == math.log1p(100.0) and correction.target(10**6) == math.log1p(1000.0)
    correction.learn(ids, values, 3.0, 500)
    assert correction.observations == 1
    # a repeated row counts with its multiplicity, as the model counts it
    one, two = correction.row_weights(np.array([1, 2], np.int32))
    assert correction.value(ids, values) == pytest.approx(float(one + 2 * two) + correction.bias)


@needs_shared_data
def test_adaptation_ranks_a_source_the_model_never_saw_better() -> None:
    """CASTILLO's Alpaca prompts (not among the bundled model's sources), answered by Gemma-3-4B."""
    records = [
        r
        for r in load_records([DATA / "castillo_code_and_instruct.jsonl.gz"])
        if r.source == "castillo/Alpaca" and r.model == "google/gemma-3-4b-it"
    ]
    observed = [r for r in records if not is_test(r.prompt_id, 0.5, seed=7)]
    held_back = [r for r in records if is_test(r.prompt_id, 0.5, seed=7)]
    random.Random(1).shuffle(observed)
    predictor = LexicalPredictor()
    texts = [r.prompt for r in held_back]
    tokens = np.array([r.output_tokens for r in held_back])
    before = predictor.scores(texts)
    for r in observed[:300]:
        request = Request(r.prompt)
        predictor.observe(request, predictor.predict(request), round(r.output_tokens))
    after = predictor.scores(texts)
    assert ranking_accuracy(after, tokens) > ranking_accuracy(before, tokens) + 0.04
    assert kendall_tau(after, tokens) > kendall_tau(before, tokens) + 0.05


def test_evaluate_reports_adaptation_on_held_back_prompts(tmp_path: Path) -> None:
    """`sjfsched evaluate --adaptation`: the ranking of the held-back half rises as it learns."""
    import gzip

    from sjfsched.predictors._corpus import prompt_id_of
    from sjfsched.predictors._evaluate import adaptation_report

    path = tmp_path / "support.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for text, tokens in _traffic(900, seed=4):
            record = {"source": "support", "prompt": text, "model": "m", "output_tokens": tokens}
            f.write(json.dumps({**record, "prompt_id": prompt_id_of(text)}) + "\n")
    report = adaptation_report(load_records([path]), None, steps=(100, 300), min_answers=400)
    row = next(line for line in report.splitlines() if line.startswith("support / m"))
    observed, held, before, _, after_100, _, after_300, _ = row.split("/ m")[1].split()
    assert int(observed) == 300 and int(held) > 300
    assert float(before) < 0.9 and float(after_100) > float(before) and float(after_300) > 0.99
    assert "support (1 models)" in report


def test_a_restart_from_the_saved_state_learns_on_as_if_it_had_never_stopped(tmp_path: Path) -> None:
    # The replay buffer (and the draws from it) are part of the state: a
    # predictor saved and loaded every 40 completions ends where one that
    # never stopped does.
    traffic = _traffic(200, seed=4)
    texts = [text for text, _ in _traffic(50, seed=3)]
    steady = LexicalPredictor()
    restarted = LexicalPredictor()
    path = tmp_path / "state.json"
    for i, (text, tokens) in enumerate(traffic):
        for predictor in (steady, restarted):
            request = Request(text)
            predictor.observe(request, predictor.predict(request), tokens)
        if i % 40 == 39:
            restarted.save_calibration(path)
            restarted = LexicalPredictor(calibration_path=path)
    np.testing.assert_allclose(restarted.scores(texts), steady.scores(texts), rtol=1e-5)
    # a state saved before the buffer was part of it still loads, with an empty one
    data = json.loads(path.read_text())
    del data["correction"]["replay"]
    path.write_text(json.dumps(data))
    assert LexicalPredictor(calibration_path=path).correction.observations == 200  # type: ignore[union-attr]
    data["correction"]["replay"] = {
        "lengths": "AAAAAA==",
        "rows": "",
        "values": "",
        "residuals": "",
        "random": [],
    }
    path.write_text(json.dumps(data))
    with pytest.raises(PredictorError, match=r"state\.json.*not a sjfsched score correction"):
        LexicalPredictor(calibration_path=path)


def test_the_correction_learns_a_shift_for_every_prompt_not_only_its_words() -> None:
    """Traffic answering longer than the model scores it moves the correction's bias too, so a
    prompt of words never seen is corrected as well (a mutation audit found it untested)."""
    import numpy as np

    from sjfsched.predictors._adapt import ScoreCorrection

    correction = ScoreCorrection(100)
    rng = np.random.default_rng(0)
    for _ in range(300):
        ids = rng.choice(50, size=5, replace=False).astype(np.int32)  # rows 0-49 only
        correction.learn(ids, np.full(5, 0.2, np.float32), base_score=3.0, output_tokens=400.0)
    assert correction.bias > 2.0  # log1p(400) - 3 = 3.0 to make up, shared by the rows and it
    unseen = correction.value(np.array([70, 80], np.int32), np.array([0.5, 0.5], np.float32))
    assert unseen == pytest.approx(correction.bias)


def test_calibration_widens_its_spread_for_answers_of_widely_scattered_lengths() -> None:
    """Its squared residuals are clipped at 25 (5 in log length); a tighter clip kept the spread,
    and so p_long, near its prior however the answers scattered."""
    from sjfsched.predictors import LengthCalibration

    calibration = LengthCalibration(center=3.0, spread=1.0, sigma=1.0)
    for i in range(300):
        calibration.observe(0.0, 1 if i % 2 else 100_000)
    assert calibration.sigma > 3.0
    steady = LengthCalibration(center=3.0, spread=1.0, sigma=1.0)
    for _ in range(300):
        steady.observe(0.0, 300)
    assert steady.sigma < 1.0
