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
    """A miscount of 1e300 tokens weighs as a million; a count past float's range is refused."""
    predictor = _learnt(50)
    before = predictor.predict(PROMPT).tokens
    with pytest.raises(ValueError, match="past a float's range"):
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
    for bad in (-1, -0.5, math.nan, math.inf, 10**400) * 2:
        with pytest.raises(ValueError, match="output_tokens must be a finite number >= 0, got "):
            predictor.observe(PROMPT, predictor.predict(PROMPT), bad)  # type: ignore[arg-type]  # refused
    assert not path.exists()
    assert predictor.calibration.observations == 0


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


def _b64_floats(*values: float) -> str:
    import base64

    import numpy as np

    return base64.b64encode(np.array(values, "<f4").tobytes()).decode("ascii")


def _b64_doubles(*values: float) -> str:
    import base64

    import numpy as np

    return base64.b64encode(np.array(values, "<f8").tobytes()).decode("ascii")


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        # finite, but beyond any learnt correction: it loaded, predicted a million tokens for
        # every prompt, and the next observe() made the state NaN for good
        ({"correction.bias": 2e4}, "weight or bias of 2e\\+04"),
        ({"correction.bias": 1e300}, "weight or bias of 1e\\+300"),
        ({"correction.rows": "AAAAAA==", "correction.weights": _b64_floats(3e38)}, "of 3e\\+38"),
        (
            {
                "correction.replay.lengths": "AAAAAA==",  # one entry of no rows
                "correction.replay.rows": "",
                "correction.replay.values": "",
                "correction.replay.residuals": _b64_doubles(1e300),
            },
            "replay buffer is inconsistent",
        ),
        # numbers JSON did not write as numbers, and counts that are not whole
        ({"state.sx": "0.5"}, "sx must be a number, got '0.5'"),
        ({"state.n": 20.5}, "n must be a whole number"),
        ({"correction.observations": 2.7}, "observations must be a whole number, got 2.7"),
        ({"correction.observations": True}, "observations must be a whole number, got True"),
        ({"correction.bias": True}, "bias must be a number, got True"),
        ({"correction.observations": 0}, "weights but no observations"),
    ],
)
def test_a_state_with_numbers_no_learning_gives_is_refused(
    tmp_path: Path, edit: dict[str, object], why: str
) -> None:
    path = _saved(tmp_path, **edit)
    predictor = _learnt(5)
    before = predictor.predict(PROMPT)
    with pytest.raises(PredictorError, match=f"state\\.json: cannot load calibration .*{why}"):
        predictor.load_calibration(path)
    assert predictor.predict(PROMPT) == before
    predictor.observe(PROMPT, before, 50)
    assert math.isfinite(predictor.predict(PROMPT).tokens)


def test_no_observation_makes_the_correction_non_finite() -> None:
    """The correction's residuals are clipped to its targets' span: it stays finite and bounded."""
    predictor = LexicalPredictor()
    correction = predictor.correction
    assert correction is not None and 3.0 < correction.limit < 6.0  # the bundled model's span + 1
    for i in range(300):
        request = Request(f"prompt {i} " + "x" * (i % 37))
        predictor.observe(request, predictor.predict(request), 0 if i % 2 else 10**7)
    assert correction.weights is not None
    assert abs(correction.bias) <= correction.limit
    assert float(abs(correction.weights).max()) <= correction.limit
    assert all(math.isfinite(predictor.predict(Request(f"q {i}")).tokens) for i in range(20))


def test_a_correction_without_a_target_map_clips_its_target() -> None:
    from sjfsched.predictors._adapt import ScoreCorrection

    correction = ScoreCorrection(4)
    assert correction.target(1e300) == correction.target(1e6) == math.log1p(1e6)
    import numpy as np

    for _ in range(50):
        correction.learn(np.array([1], np.int32), np.array([1.0], np.float32), -1e300, 5.0)
    assert abs(correction.bias) <= correction.limit  # the residual of 1e300 counted as its limit
    assert correction.value(np.array([1], np.int32), np.array([1.0], np.float32)) <= 2 * correction.limit


def test_a_state_that_json_cannot_hold_is_refused_before_the_file_is_touched(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"old": 1}')
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_state(path, {"x": math.nan})
    assert path.read_text() == '{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_saving_keeps_the_files_mode_and_follows_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    predictor = _learnt(5)
    predictor.save_calibration(real)
    os.chmod(real, 0o600)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    predictor.observe(PROMPT, predictor.predict(PROMPT), 77)
    predictor.save_calibration(link)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert oct(real.stat().st_mode & 0o777) == oct(0o600)
    assert json.loads(real.read_text())["state"]["n"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]


@pytest.mark.parametrize(
    ("where", "why"),
    [
        ("a directory", "it is a directory"),
        ("missing/state.json", "No such file or directory"),
        ("", "it is a directory"),  # Path("") is "."
    ],
)
def test_a_state_that_cannot_be_saved_is_a_predictor_error_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, why: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a directory").mkdir()
    predictor = _learnt(3)
    with pytest.raises(PredictorError, match=f"cannot save calibration \\({why}\\)") as caught:
        predictor.save_calibration(where)
    assert str(Path(where)) in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a directory"]


def test_a_relative_calibration_path_stays_where_it_was_when_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was read from the start-up folder and saved relative to a later chdir() (a daemon's).
    (tmp_path / "app").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "app")
    predictor = LexicalPredictor(calibration_path="state.json", save_every=1)
    monkeypatch.chdir(tmp_path / "elsewhere")
    predictor.observe(PROMPT, predictor.predict(PROMPT), 40)
    assert not (tmp_path / "elsewhere" / "state.json").exists()
    assert LexicalPredictor(calibration_path=tmp_path / "app" / "state.json").calibration.n == 1


def test_observe_names_a_request_that_is_not_one() -> None:
    predictor = LexicalPredictor()
    with pytest.raises(TypeError, match="observe\\(\\) takes the completed Request first, got 'hello'"):
        predictor.observe("hello", predictor.predict(PROMPT), 10)  # type: ignore[arg-type]


# ---- found by a reviewer (stop 21), each with a reproducer


def test_a_model_whose_metadata_is_not_utf8_is_a_predictor_error(tmp_path: Path) -> None:
    """One flipped byte in a metadata string raised UnicodeDecodeError, which the default
    predictor's fallback to HeuristicPredictor does not catch."""
    data = bytearray(bundled_model_path().read_bytes())
    at = data.rindex(b"sjfsched.trained_on")
    data[data.index(b"arena", at)] = 0x9B  # not UTF-8
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(bytes(data))
    with pytest.raises(PredictorError, match=r"damaged\.onnx: the model's metadata cannot be read"):
        LexicalPredictor(model_path=damaged)


def _paused_before(method: object, marker: str, call: object, meanwhile: object) -> dict[str, object]:
    """Run ``call()`` in a thread paused at the line of ``method`` holding ``marker``, run
    ``meanwhile()`` here, then let it go on: a forced interleaving, no code of sjfsched changed."""
    import inspect
    import sys

    code = method.__code__  # type: ignore[attr-defined]
    lines, first = inspect.getsourcelines(method)  # type: ignore[arg-type]
    stop = first + next(i for i, line in enumerate(lines) if marker in line)
    paused, resume = threading.Event(), threading.Event()

    def tracer(frame: object, event: str, arg: object) -> object:
        if getattr(frame, "f_code", None) is not code:
            return None

        def local(frame: object, event: str, arg: object) -> object:
            if event == "line" and getattr(frame, "f_lineno", 0) == stop and not paused.is_set():
                paused.set()
                resume.wait(5)
            return local

        return local

    result: dict[str, object] = {}

    def run() -> None:
        sys.settrace(tracer)  # type: ignore[arg-type]
        try:
            result["value"] = call()  # type: ignore[operator]
        except Exception as exc:
            result["error"] = exc
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=run)
    thread.start()
    assert paused.wait(5)
    meanwhile()  # type: ignore[operator]
    resume.set()
    thread.join(10)
    return result


def test_predict_survives_a_reset_from_another_thread() -> None:
    """predict() takes no lock: the correction's weights were read twice, and a reset between
    the two (reset_calibration, load_calibration) failed it with an AttributeError."""
    from sjfsched.predictors._adapt import ScoreCorrection

    p = LexicalPredictor()
    r = Request("Write a poem about the sea")
    p.observe(r, p.predict(r), 300)  # something learnt: predictions add the correction
    one = _paused_before(ScoreCorrection.value, "np.dot", lambda: p.predict(r), p.reset_calibration)
    assert "error" not in one and math.isfinite(one["value"].tokens)  # type: ignore[attr-defined]
    p.observe(r, p.predict(r), 300)
    many = _paused_before(
        ScoreCorrection.row_weights, "weights.take", lambda: p.predict_many([r] * 12), p.reset_calibration
    )
    assert "error" not in many and len(many["value"]) == 12  # type: ignore[arg-type]


def test_a_calibration_weight_past_what_its_decay_allows_is_refused(tmp_path: Path) -> None:
    """s0 is bounded by 1 / (1 - decay) (500 at the default 0.998): a state rescaled past it
    loaded, and froze the calibration against every later answer."""
    p = LexicalPredictor(adapt=False)
    for i in range(50):
        r = Request(f"question {i}")
        p.observe(r, p.predict(r), 40)
    path = tmp_path / "state.json"
    p.save_calibration(path)
    state = read_state(path)
    scale = 1e9 / state["state"]["s0"]
    for key in ("s0", "sx", "sy", "sxx", "sxy", "sr"):
        state["state"][key] *= scale
    state["state"]["n"] = 10**10
    write_state(path, state)
    with pytest.raises(PredictorError, match=r"s0 > 1 / \(1 - decay\) = 500"):
        LexicalPredictor(adapt=False, calibration_path=path)


def test_predictors_name_what_is_not_a_request() -> None:
    from sjfsched.predictors import ConstantPredictor, HeuristicPredictor

    lexical = LexicalPredictor()
    for call in (
        lambda: lexical.predict("hello"),  # type: ignore[arg-type]
        lambda: lexical.predict_many(["hello"] * 20),  # type: ignore[list-item]
        lambda: HeuristicPredictor().predict("hello"),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError, match=r"takes Request objects, got str 'hello'.*Request\(prompt\)"):
            call()
    with pytest.raises(TypeError, match=r"scores\(\) takes a sequence of texts \(str\).*, got one str"):
        lexical.scores("hello world")
    # Found by a reviewer: bytes raised AttributeError, None and ints unrelated errors; one str
    # given to predict_many() was named by its first character.
    for value in (b"hello", None, 3):
        with pytest.raises(TypeError, match=rf"score\(\) takes a str, got {type(value).__name__}"):
            lexical.score(value)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=rf"scores\(\) takes texts \(str\), got {type(value).__name__}"):
            lexical.scores(["fine", value] * 10)  # type: ignore[list-item]
    for predictor in (lexical, HeuristicPredictor(), ConstantPredictor()):
        with pytest.raises(
            TypeError, match=r"predict_many\(\) takes a sequence of Requests, got one str: 'hello"
        ):
            predictor.predict_many("hello world, " * 20)  # type: ignore[arg-type]


def test_a_chats_text_is_made_once() -> None:
    """Request.text joined a chat's parts on every read (a predictor reads it two or three
    times a request): a user turn of 100,000 parts cost 30 ms a prediction."""
    parts = [{"type": "text", "text": f"part {i}"} for i in range(1000)]
    chat = Request(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}])
    assert chat.text is chat.text
    assert chat.text == "\n".join(f"part {i}" for i in range(1000))
    assert chat.input_chars == len("Be brief.") + len(chat.text)
    # Kept beside the request, not in it: its attrs fields are its own (a first try added two).
    import attrs

    names = [f.name for f in attrs.fields(Request)]
    assert names == ["prompt", "messages", "max_tokens", "priority", "tenant", "options", "metadata"]
    copy = Request(**attrs.asdict(chat, recurse=False))
    assert copy.text == chat.text and copy is not chat

    @attrs.frozen  # compares by value: its hash would take the unhashable messages
    class Tagged(Request):
        user: str = "someone"

    tagged = Tagged(messages=[{"role": "user", "content": "hi"}])
    assert (tagged.text, tagged.input_chars) == ("hi", 2)


def test_predict_many_keeps_a_repredicted_request_among_the_latest() -> None:
    """With adapt=False, a request predicted again through predict_many() kept its first place
    among the remembered scores, and was forgotten while still among the latest."""
    from sjfsched.predictors._lexical import _FORGET_BATCH, RECENT_SCORES

    p = LexicalPredictor(adapt=False)
    r = Request("the request of interest")
    p.predict(r)
    fillers = [Request(f"filler {i}") for i in range(RECENT_SCORES)]
    p.predict_many(fillers[: RECENT_SCORES - 100])
    p.predict_many([r, *fillers[-20:-9]])  # predicted again, in a batch of 12
    p.predict_many([Request(f"later {i}") for i in range(_FORGET_BATCH + 200)])
    assert id(r) in p._recent


def test_a_predictor_that_does_not_calibrate_saves_a_states_correction_back(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    adapting = _learnt(50)
    adapting.save_calibration(path)
    learnt = json.loads(path.read_text())["correction"]
    fixed = LexicalPredictor(calibration_path=path, calibrate=False)  # its calibration stays as read
    fixed.save_calibration(path)
    assert json.loads(path.read_text())["correction"] == learnt  # not dropped: it still fits
    again = LexicalPredictor(calibration_path=path)
    assert again.predict(PROMPT) == adapting.predict(PROMPT)
    fixed.reset_calibration()  # forgets everything, the correction it kept too
    fixed.save_calibration(path)
    assert "correction" not in json.loads(path.read_text())
    # adapt=False goes on calibrating on uncorrected scores: the correction would not fit it
    adapting.save_calibration(path)
    LexicalPredictor(calibration_path=path, adapt=False).save_calibration(path)
    assert "correction" not in json.loads(path.read_text())


def test_calibration_paths_and_save_every_that_could_never_work_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PredictorError, match="not a usable calibration path"):
        LexicalPredictor(calibration_path=str(tmp_path / "state\x00.json"), save_every=1)
    with pytest.raises(ValueError, match="calibrate=False learns nothing"):
        LexicalPredictor(calibration_path=tmp_path / "state.json", save_every=1, calibrate=False)
    predictor = LexicalPredictor()
    with pytest.raises(PredictorError, match="cannot save calibration"):
        predictor.save_calibration(str(tmp_path / "x\x00.json"))


def test_a_correction_for_another_table_size_says_so_and_the_file_is_named_once(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    _learnt(5).save_calibration(path)
    state = json.loads(path.read_text())
    assert state["correction"].get("replay") is not None  # the check that used to come first
    state["correction"]["size"] = 1000
    path.write_text(json.dumps(state))
    with pytest.raises(PredictorError) as caught:
        LexicalPredictor(calibration_path=path)
    message = str(caught.value)
    assert message.endswith(
        "cannot load calibration (correction is for a model with 1000 rows, this one has "
        f"{LexicalPredictor()._features.table_size})"
    )
    assert message.count(str(path)) == 1


def test_a_load_in_another_thread_never_gives_a_prediction_of_one_state_and_the_other(tmp_path: Path) -> None:
    """A load replaced the calibration and the correction one after the other, and reset the
    correction before reading it: predictions made meanwhile matched neither file (a third of them
    with one thread loading and one predicting)."""
    states = {}
    for name, scale in (("a", 1), ("b", 20)):
        learnt = LexicalPredictor()
        for i in range(40):
            request = Request(f"Tell me about item {i}" + " please" * (i % 5))
            learnt.observe(request, learnt.predict(request), scale * (50 + 10 * i))
        states[name] = tmp_path / f"{name}.json"
        learnt.save_calibration(states[name])
    predictor = LexicalPredictor()
    expected = set()
    for path in states.values():
        predictor.load_calibration(path)
        expected.add(predictor.predict(PROMPT).tokens)
    assert len(expected) == 2
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            for path in states.values():
                predictor.load_calibration(path)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        seen = [predictor.predict(PROMPT).tokens for _ in range(20_000)]
    finally:
        stop.set()
        loader.join()
    assert set(seen) <= expected, f"{sum(t not in expected for t in seen)} of {len(seen)} matched neither"


def test_a_state_file_another_predictor_wrote_meanwhile_is_warned_of_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two workers saving to one path: the last to save wins, silently, what the other learnt lost."""
    path = tmp_path / "shared.json"
    first = LexicalPredictor(calibration_path=path, save_every=5)
    second = LexicalPredictor(calibration_path=path, save_every=5)
    for i in range(20):  # one predictor alone saving again and again: nothing to warn of
        first.observe(PROMPT, first.predict(PROMPT), 100 + i)
    assert "written by another" not in caplog.text
    for i in range(20):
        second.observe(PROMPT, second.predict(PROMPT), 300 + i)
        first.observe(PROMPT, first.predict(PROMPT), 100 + i)
    warnings = [r for r in caplog.records if "written by another predictor or process" in r.getMessage()]
    assert len(warnings) == 2  # once for each predictor
    assert all("give each process its own calibration_path" in r.getMessage() for r in warnings)


def test_the_first_save_over_another_workers_first_state_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two workers started before either state file existed: the second's first save replaced
    the first's state without a word (found by a reviewer)."""
    path = tmp_path / "shared.json"
    first = LexicalPredictor(calibration_path=path)
    second = LexicalPredictor(calibration_path=path)
    first.observe(PROMPT, first.predict(PROMPT), 100)
    first.save_calibration()
    assert "written by another" not in caplog.text  # it was absent: nobody's to replace
    second.observe(PROMPT, second.predict(PROMPT), 300)
    second.save_calibration()
    assert "written by another predictor or process" in caplog.text
    alone = LexicalPredictor(calibration_path=tmp_path / "alone.json")
    caplog.clear()
    for _ in range(2):
        alone.save_calibration()
    assert "written by another" not in caplog.text


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_save_to_a_pipe_refuses_and_leaves_it_a_pipe(tmp_path: Path) -> None:
    # The save renamed a file over it: a pipe, or a device (/dev/null itself, run as root),
    # was replaced by a regular file.
    import stat

    fifo = tmp_path / "state.json"
    os.mkfifo(fifo)
    with pytest.raises(PredictorError, match=r"state\.json: cannot save calibration \(not a regular file"):
        _learnt(2).save_calibration(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    with pytest.raises(OSError, match="not a regular file"):
        write_state(fifo, {"a": 1})
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_state_file_with_a_long_name_is_saved(tmp_path: Path) -> None:
    # Its temporary file's name added about 30 bytes: a name of 225 bytes or more, which the
    # system allows (255), could never be saved ("File name too long").
    path = tmp_path / ("s" * 245 + ".json")
    predictor = _learnt(3)
    predictor.save_calibration(path)
    assert read_state(path)["model"]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
