"""A predictor's state and model files when they are odd: found by review, each with its reproducer."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from pathlib import Path

import pytest

from sjfsched import PredictorError, Request
from sjfsched.predictors import LengthCalibration, LexicalPredictor, _lexical
from sjfsched.predictors._calibration import read_state, write_state
from sjfsched.predictors._lexical import bundled_model_path

PROMPT = Request("What is the capital of France?")


def _learnt(n: int = 20) -> LexicalPredictor:
    predictor = LexicalPredictor()
    for i in range(n):
        request = Request(f"Tell me about item {i}")
        predictor.observe(request, predictor.predict(request), 100 + 10 * i)
    return predictor


def _saved(tmp_path: Path, **edit: object) -> Path:
    """A saved state of a predictor that learnt something, with ``edit`` applied ("a.b": value)."""
    path = tmp_path / "state.json"
    _learnt().save_calibration(path)
    data = json.loads(path.read_text())
    for dotted, value in edit.items():
        *parents, key = dotted.split(".")
        node = data
        for p in parents:
            node = node[p]
        node[key] = value
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "edit",
    [
        {"state.sr": -1e6},  # a negative sum of squares: the fit takes the root of it
        {"state.n": -5},
        {"correction.size": 5},  # a correction for another model
        {"correction.observations": float("inf")},  # valid to Python's json, no int
        {"state.n": 10**400},  # past float's range
    ],
)
def test_a_state_that_does_not_load_leaves_the_predictor_as_it_was(
    tmp_path: Path, edit: dict[str, object]
) -> None:
    path = _saved(tmp_path, **edit)
    predictor = _learnt(5)
    before = predictor.predict(PROMPT)
    observations = (predictor.calibration.observations, predictor.correction.observations)  # type: ignore[union-attr]
    with pytest.raises(PredictorError, match=r"state\.json: cannot load calibration"):
        predictor.load_calibration(path)
    assert predictor.predict(PROMPT) == before
    assert (predictor.calibration.observations, predictor.correction.observations) == observations  # type: ignore[union-attr]
    predictor.observe(PROMPT, before, 50)  # still learns
    assert predictor.calibration.observations == observations[0] + 1


def test_a_state_nested_too_deeply_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000)
    with pytest.raises(PredictorError, match=r"deep\.json: cannot load calibration .*nested too deeply"):
        LexicalPredictor(calibration_path=path)


def test_one_absurd_length_does_not_throw_the_calibration_off() -> None:
    """A miscount of 1e300 tokens weighs as a million; a count past float's range is ignored."""
    predictor = _learnt(50)
    before = predictor.predict(PROMPT).tokens
    predictor.observe(PROMPT, predictor.predict(PROMPT), 10**400)
    assert predictor.calibration.observations == 50
    predictor.observe(PROMPT, predictor.predict(PROMPT), 1e300)  # type: ignore[arg-type]
    after = predictor.predict(PROMPT).tokens
    assert after < 20 * before  # it was a million tokens with the log of 1e300 in the fit


def test_a_calibration_takes_no_number_it_cannot_fit(tmp_path: Path) -> None:
    for name in ("center", "spread", "sigma"):
        shape = {"center": 5.0, "spread": 1.0, "sigma": 1.0, name: math.nan}
        with pytest.raises(ValueError, match=f"{name} must be a finite number, got nan"):
            LengthCalibration(**shape)
    calibration = LengthCalibration(center=5.0, spread=1.0, sigma=1.0)
    calibration.observe(5.0, 100)
    calibration.observe(1e160, 100)  # its square overflows: not a score a model gives
    assert calibration.observations == 1 and math.isfinite(calibration.offset)
    path = tmp_path / "calibration.json"
    write_state(path, calibration.to_dict())
    again = LengthCalibration(center=5.0, spread=1.0, sigma=1.0)
    again.load_dict(read_state(path))
    assert again.offset == calibration.offset


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"sx": 1e300}, r"\|sx\| > 1e6 s0"),
        ({"s0": 0.0, "sx": 1e6, "sxx": 0.0}, r"\|sx\| > 1e6 s0"),
        ({"sy": -5.0}, "sy outside"),
        ({"sr": 1e9}, "sr > 25 s0"),
        ({"s0": 1e6}, "s0 > n"),
    ],
)
def test_a_state_whose_sums_no_observations_give_is_refused(
    tmp_path: Path, change: dict[str, float], why: str
) -> None:
    """Finite numbers that no run of observe() makes: they loaded, and put 0 tokens on every prompt."""
    predictor = LexicalPredictor(calibration_path=tmp_path / "good.json")
    for i in range(50):
        request = Request(f"question number {i}: explain topic {i % 7}")
        predictor.observe(request, predictor.predict(request), 100 + 20 * (i % 7))
    predictor.save_calibration()
    good = json.loads((tmp_path / "good.json").read_text())
    LexicalPredictor(calibration_path=tmp_path / "good.json")  # the real state loads
    good["state"].update(change)
    (tmp_path / "bad.json").write_text(json.dumps(good))
    with pytest.raises(PredictorError, match=f"bad.json: .*numbers no observations give \\({why}"):
        LexicalPredictor(calibration_path=tmp_path / "bad.json")


def test_several_writers_of_one_state_file_never_collide(tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    errors: list[BaseException] = []

    def writer() -> None:
        predictor = LexicalPredictor(calibration_path=path, save_every=1, adapt=False)
        try:
            for i in range(150):
                predictor.observe(PROMPT, predictor.predict(PROMPT), 100 + i)
        except BaseException as exc:  # pragma: no cover - the failure this test is for
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(path.read_text())["state"]["n"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]  # no temporary file left
    plain = tmp_path / "plain.txt"
    plain.write_text("")
    assert path.stat().st_mode == plain.stat().st_mode  # the umask's mode, as any file gets


def test_rejected_observations_do_not_rewrite_the_state(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    predictor = LexicalPredictor(calibration_path=path, save_every=5)
    for _ in range(10):
        predictor.observe(PROMPT, predictor.predict(PROMPT), -1)  # refused: nothing learnt
    assert not path.exists()


def test_a_changed_model_file_replaces_its_cached_copy(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    shutil.copy(bundled_model_path(), path)
    key = str(path.resolve())
    LexicalPredictor(path)
    entries = len(_lexical._CACHE)
    for i in range(5):
        os.utime(path, ns=(10**18 + i, 10**18 + i))
        LexicalPredictor(path)
        assert len(_lexical._CACHE) == entries  # replaced, not added
    assert _lexical._CACHE[key][0][0] == 10**18 + 4


def test_a_model_path_with_a_nul_byte_is_a_predictor_error() -> None:
    with pytest.raises(PredictorError, match="not a usable model path"):
        LexicalPredictor("bad\x00name.onnx")
