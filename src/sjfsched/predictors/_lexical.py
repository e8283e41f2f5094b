"""The learned default predictor: lexical features and a linear ONNX model."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import re
import stat
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any, Final, final

import attrs
import numpy as np
import numpy.typing as npt

from .._errors import PredictorError
from .._records import Prediction, Request
from ._adapt import ScoreCorrection, TargetMap
from ._base import LONG_TOKENS, refuse_one_text, text_of, texts_of
from ._calibration import LengthCalibration, read_state, require_length, write_state
from ._features import FEATURE_VERSION, SIGNALS, LexicalFeaturizer

__all__ = [
    "LONG_TOKENS",
    "LexicalPredictor",
    "bundled_model_has_vectors",
    "bundled_model_path",
    "open_session",
]

logger = logging.getLogger("sjfsched")

#: The length Clairvoyant calls long; ``Prediction.p_long`` is P(tokens >= this).
_LOG_LONG: Final = math.log1p(LONG_TOKENS)
_SQRT2: Final = math.sqrt(2.0)
_MAX_LOG: Final = math.log1p(1_000_000.0)
_BUNDLED: Final = "lexical.onnx"
_OUTPUTS: Final = ("bias", "contributions", "log_tokens")
_SCORE: Final = ["log_tokens"]
_CONTRIBUTIONS: Final = ["contributions"]
#: How many recent predictions' raw scores are kept for observe() at least;
#: the oldest are dropped _FORGET_BATCH at a time once there are more.
RECENT_SCORES: Final = 4096
_FORGET_BATCH: Final = 512
#: Below this many requests predict_many() predicts one by one: encoding a
#: batch has a fixed cost of some forty numpy calls, which a batch this small
#: does not earn back (benchmarks/predictor.py, batches of 1).
_SMALL_BATCH: Final = 10
#: What a state file's (inode, mtime, size) is remembered as when it was not there.
_ABSENT: Final = (-1, -1, -1)
#: How far beyond its training targets' range a score may go (log scale: a factor of e**0.5);
#: every prompt of the training corpora scores within it, a run of one character need not.
SCORE_MARGIN: Final = 0.5


def bundled_model_path() -> Path:
    """Where the model that ships inside the package lives."""
    return Path(str(resources.files("sjfsched") / "data" / _BUNDLED))


def bundled_model_has_vectors() -> bool:
    """Whether the bundled model was trained with word vectors (``sjfsched train --word-vectors``)."""
    return _load(bundled_model_path()).features.vector_rows


def open_session(path: Path, data: bytes | None = None) -> Any:
    """An onnxruntime session for a model file, or PredictorError saying why not.

    ``data``: the file's bytes, if the caller has read them already.
    Single-threaded: a prediction is a few microseconds of work, and thread
    hand-offs would cost more than they save.
    """
    import onnxruntime as ort

    if data is None and not path.is_file():
        raise PredictorError(f"{path}: model file not found")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        model = str(path) if data is None else data
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise PredictorError(f"{path}: not a valid ONNX model ({exc})") from exc


def _metadata(session: Any, path: Path, kind: str) -> Mapping[str, str]:
    try:
        meta: Mapping[str, str] = session.get_modelmeta().custom_metadata_map
    except Exception as exc:  # a damaged file: its strings are not UTF-8 (UnicodeDecodeError), say
        raise PredictorError(f"{path}: the model's metadata cannot be read ({exc})") from exc
    found = meta.get("sjfsched.kind")
    if found != kind:
        raise PredictorError(
            f"{path}: not a sjfsched {kind} model (its 'sjfsched.kind' metadata is {found!r})"
        )
    return meta


@attrs.frozen
class _Model:
    session: Any
    #: session.run, or the binding it wraps when that answers the same (it
    #: skips per-call input validation in Python: about 1.5 us of ~9).
    run: Callable[[list[str], dict[str, Any]], list[Any]]
    features: LexicalFeaturizer
    bias: float
    center: float
    spread: float
    sigma: float
    metadata: Mapping[str, str]
    #: how the training target was made from an answer's length (None: log(1 + tokens))
    target_map: TargetMap | None = None
    #: first 16 hex digits of the model file's sha1: what a saved state was learnt for
    fingerprint: str = ""


#: Loaded models by path, with the (mtime, size) they were read at: schedulers
#: built with the default predictor share one session and vocabulary (each
#: keeps its own calibration).  A file that changed is read again and replaces
#: its old entry.
_CACHE: dict[str, tuple[tuple[int, int], _Model]] = {}
_CACHE_LOCK = threading.Lock()
_TARGET_RANGE: Final = re.compile(r"clipped to \[([0-9.eE+-]+), ([0-9.eE+-]+)\]")


def _target_map(meta: Mapping[str, str], path: Path) -> TargetMap | None:
    """How the training target was made: ``sjfsched.target_map``, or the clip range of ``sjfsched.target``.

    Models written before ``sjfsched.target_map`` existed say only their clip
    range, in words.
    """
    raw = meta.get("sjfsched.target_map")
    if raw is not None:
        try:
            data = json.loads(raw)
            return TargetMap(data["log_tokens"], data["score"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise PredictorError(f"{path}: model's sjfsched.target_map is malformed ({exc})") from exc
    found = _TARGET_RANGE.search(meta.get("sjfsched.target", ""))
    if found is None:
        return None
    try:
        low, high = float(found[1]), float(found[2])
    except ValueError as exc:
        raise PredictorError(f"{path}: model's sjfsched.target is malformed ({exc})") from exc
    return TargetMap.clipped(low, high) if 0 <= low < high and math.isfinite(high) else None


def _load(path: Path) -> _Model:
    try:
        st = path.stat()
        where = str(path.resolve())
    except OSError as exc:
        if path == bundled_model_path():  # the package imported from a zip (a zipapp, zipimport)
            zipped = _load_zipped(path)
            if zipped is not None:
                return zipped
        raise PredictorError(f"{path}: model file not found") from exc
    except ValueError as exc:  # a path with a NUL byte
        raise PredictorError(f"{path!r}: not a usable model path ({exc})") from exc
    if not stat.S_ISREG(st.st_mode):  # a directory, a pipe, /dev/zero: reading it would hang or fill memory
        raise PredictorError(f"{path}: not a regular file")
    version = (st.st_mtime_ns, st.st_size)
    with _CACHE_LOCK:
        cached = _CACHE.get(where)
        if cached is not None and cached[0] == version:
            return cached[1]
        model = _read(path)
        _CACHE[where] = (version, model)
    return model


def _load_zipped(path: Path) -> _Model | None:
    """The bundled model read from inside a zip, or None where the package has none there.

    Its path names no file then; the package's resources read the bytes. A
    zip does not change under a running program, so it is read once.
    """
    key = f"zip:{path}"
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached[1]
        root = resources.files("sjfsched")
        if isinstance(root, Path):  # a package on disk: the file is missing indeed
            return None
        try:
            data = (root / "data" / _BUNDLED).read_bytes()
        except OSError:
            return None
        model = _read(path, data)
        _CACHE[key] = ((0, len(data)), model)
    return model


def _read(path: Path, data: bytes | None = None) -> _Model:
    """The model of the file at ``path`` (or of ``data``, its bytes, where already read)."""
    if data is None:
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise PredictorError(f"{path}: model file not found") from exc
        except OSError as exc:
            raise PredictorError(f"{path}: cannot read the model file ({exc})") from exc
    session = open_session(path, data)
    meta = _metadata(session, path, "lexical")
    try:
        version = int(meta["sjfsched.feature_version"])
        byte_bits = int(meta["sjfsched.byte_bits"])
        unigrams = json.loads(meta["sjfsched.unigrams"])
        flat = json.loads(meta["sjfsched.bigrams"])
        vector_rows = json.loads(meta.get("sjfsched.vector_rows", "false"))  # trained with word vectors
        table_size = int(meta["sjfsched.table_size"])
        signals = json.loads(meta["sjfsched.signals"])
        stats = json.loads(meta["sjfsched.score_stats"])
        center, spread, sigma = float(stats["center"]), float(stats["spread"]), float(stats["sigma"])
    except (KeyError, ValueError, TypeError, OverflowError) as exc:
        raise PredictorError(f"{path}: model metadata is missing or malformed ({exc!r})") from exc
    # Written last (`sjfsched train` writes its own keys after the model's): a file cut short
    # at an entry's end still parses, without them.
    lost = [key for key in ("sjfsched.target", "sjfsched.trained_on") if key not in meta]
    if lost:
        raise PredictorError(
            f"{path}: model metadata lacks {', '.join(lost)}: the file is cut short, or was not "
            "written by `sjfsched train`"
        )
    if "sjfsched.pooled_words" in meta:
        raise PredictorError(
            f"{path}: model folds word vectors in as an earlier development version of sjfsched did "
            "(pooled words); retrain it with `sjfsched train --word-vectors`"
        )
    if version != FEATURE_VERSION:
        raise PredictorError(
            f"{path}: model was trained with feature version {version}, this sjfsched "
            f"computes version {FEATURE_VERSION}; retrain it with `sjfsched train`"
        )
    if signals != list(SIGNALS):
        raise PredictorError(f"{path}: model's signals {signals} differ from this sjfsched's")
    if (
        not isinstance(unigrams, list)
        or not isinstance(flat, list)
        or len(flat) % 2
        or not isinstance(vector_rows, bool)
    ):
        raise PredictorError(f"{path}: model vocabulary metadata is malformed")
    try:
        features = LexicalFeaturizer(
            unigrams, list(zip(flat[::2], flat[1::2], strict=True)), byte_bits, vector_rows
        )
    except (ValueError, TypeError) as exc:
        raise PredictorError(f"{path}: model vocabulary is inconsistent ({exc})") from exc
    if features.table_size != table_size:
        raise PredictorError(
            f"{path}: weight table has {table_size} rows, its vocabulary needs {features.table_size}"
        )
    inputs = sorted(i.name for i in session.get_inputs())
    outputs = sorted(o.name for o in session.get_outputs())
    if inputs != ["ids", "values"] or outputs != sorted(_OUTPUTS):
        raise PredictorError(
            f"{path}: model has inputs {inputs} and outputs {outputs}; expected inputs "
            f"['ids', 'values'] and outputs {sorted(_OUTPUTS)}"
        )
    try:  # every row, once: catches a weight table cut short or holding NaN, and inputs of a fixed size
        bias_out, probe = session.run(
            ["bias", "log_tokens"],
            {"ids": np.array([0, table_size - 1, 0], np.int32), "values": np.array([0.5, 1, 2], np.float32)},
        )
        (weights,) = session.run(
            _CONTRIBUTIONS,
            {"ids": np.arange(table_size, dtype=np.int32), "values": np.ones(table_size, np.float32)},
        )
        bias = float(bias_out)
        bad = np.flatnonzero(~np.isfinite(np.asarray(weights, np.float64)))
    except Exception as exc:
        raise PredictorError(f"{path}: model does not run ({exc})") from exc
    if bad.size:
        raise PredictorError(
            f"{path}: {bad.size} of the model's {table_size} weights are not finite (row {bad[0]})"
        )
    if not all(math.isfinite(x) for x in (bias, float(probe), center, spread, sigma)):
        raise PredictorError(f"{path}: model weights or statistics are not finite")
    return _Model(
        session,
        _fast_run(session, table_size),
        features,
        bias,
        center,
        spread,
        sigma,
        dict(meta),
        _target_map(meta, path),
        hashlib.sha1(data).hexdigest()[:16],
    )


def _fast_run(session: Any, table_size: int) -> Callable[[list[str], dict[str, Any]], list[Any]]:
    """The quickest way to run the session that gives the same answers as ``session.run``."""
    import onnxruntime as ort

    public: Callable[[list[str], dict[str, Any]], list[Any]] = session.run
    inner = getattr(getattr(session, "_sess", None), "run", None)
    if inner is None:
        return public
    options = ort.RunOptions()

    def run(names: list[str], feed: dict[str, Any]) -> list[Any]:
        out: list[Any] = inner(names, feed, options)
        return out

    feed = {
        "ids": np.array([0, table_size - 1, 7], np.int32),
        "values": np.array([0.5, 1.0, 2.0], np.float32),
    }
    try:
        same = [float(x) for x in run(_SCORE, feed)] == [float(x) for x in public(_SCORE, feed)]
    except Exception:
        same = False
    return run if same else public


@final
class LexicalPredictor:
    """Predicts answer length from the prompt's words and byte n-grams.

    The model (see ``docs/predictor.md``) reads only the prompt's text
    (:attr:`Request.text`): byte 4-grams, words (and, for a model trained
    with word vectors, as the bundled one is, their vectors' projections,
    averaged), its lines and code marks and any quantity it asks for
    (``"in 500 words"``), through a linear ONNX model that returns a
    log-length score.  One prediction costs a few tens
    of microseconds, a batch through :meth:`predict_many` 10 to 20 a prompt
    (``benchmarks/predictor.py``); only the first 512 and last 256
    characters are read, so a huge prompt costs what a 770-character one
    does.

    ``model_path``: an ONNX file written by ``sjfsched train`` (default: the
    model bundled with the package; ``docs/predictor.md`` says which corpora
    trained it).  A missing, corrupt or mismatched file raises
    :class:`~sjfsched.PredictorError` naming the file and the reason.  A
    model file is read once per process and shared.

    **Calibration.**  The model ranks prompts; how many tokens a particular
    deployment's model spends on them is learnt online by :meth:`observe`
    (the scheduler calls it with every completed request), so
    ``Prediction.tokens`` drifts to that deployment's scale.  Give
    ``calibration_path`` to start from a saved state (if the file exists)
    and to save to it with :meth:`save_calibration`; ``save_every=N`` saves
    after every N observations as well.  A relative path is taken from the
    current directory when the predictor is made.  ``calibrate=False`` keeps the
    training scale and ignores :meth:`observe`.

    **Adaptation.**  With ``adapt=True`` (the default) :meth:`observe` also
    learns a sparse correction to the model's score from the completed
    requests' prompts and real lengths (:attr:`correction`): which of *this*
    deployment's prompts answer long, which the training corpora may not
    have shown.  It is saved and loaded with the calibration; once it has
    learnt something a prediction gathers its weights too.  ``adapt=False``
    keeps the model's ranking as shipped.

    ``Prediction.tokens`` is the expected number of output tokens (the mean
    of a log-normal around the calibrated score); ``p_long`` the probability
    of an answer of 800 tokens or more.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        calibration_path: str | os.PathLike[str] | None = None,
        calibrate: bool = True,
        adapt: bool = True,
        save_every: int | None = None,
    ) -> None:
        path = bundled_model_path() if model_path is None else Path(model_path)
        if save_every is not None and (
            isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1
        ):
            raise ValueError(f"save_every must be an int >= 1 or None, got {save_every!r}")
        if save_every is not None and calibration_path is None:
            raise ValueError("save_every needs a calibration_path to save to")
        if save_every is not None and not calibrate:
            raise ValueError("save_every saves what observe() learns, and calibrate=False learns nothing")
        if calibration_path is not None and "\x00" in os.fspath(calibration_path):
            raise PredictorError(f"{calibration_path!r}: not a usable calibration path (it holds a NUL byte)")
        self._path = path
        model = _load(path)
        self._fingerprint = model.fingerprint
        self._run = model.run
        self._features = model.features
        self._bias = model.bias
        self._calibrate = calibrate
        # A score is kept within its training targets' range, plus a margin: a run of one
        # character repeats one n-gram hundreds of times and would score far outside it.
        ys = model.target_map.ys if model.target_map is not None else (-math.inf, math.inf)
        self._low, self._high = ys[0] - SCORE_MARGIN, ys[-1] + SCORE_MARGIN
        # observe(), save, load and reset change the learnt state together (the scheduler may
        # observe on its thread while the program saves on its own); predict() reads it as it is.
        self._state_lock = threading.RLock()
        # Learnt only when observe() runs, that is with calibrate too.
        correction = (
            ScoreCorrection(model.features.table_size, model.target_map) if calibrate and adapt else None
        )
        # predict() remembers raw scores for observe() only without adaptation:
        # with it, observe() needs the prompt's features and encodes it afresh.
        self._remember = calibrate and not adapt
        self._ones_buffer: npt.NDArray[np.float32] = np.ones(4096, np.float32)
        # The raw scores of the latest predictions, by request identity, so that
        # observe() need not run the model again: id(request) -> (a weak
        # reference to it, to tell a reused id, and its score); oldest first.
        self._recent: dict[int, tuple[weakref.ref[Request], float]] = {}
        calibration = LengthCalibration(center=model.center, spread=model.spread, sigma=model.sigma)
        #: the two parts of the learnt state as one value: predict() reads it once, so a load
        #: from another thread (which puts both in place) never gives it one part of each
        self._learnt: tuple[LengthCalibration, ScoreCorrection | None] = (calibration, correction)
        # made absolute now, so a later chdir() (a daemon's) moves no save elsewhere
        self._calibration_path = None if calibration_path is None else Path(os.path.abspath(calibration_path))
        #: state files as this predictor last read or wrote them: (inode, mtime, size) by real path
        self._state_files: dict[str, tuple[int, int, int]] = {}
        self._warned_files: set[str] = set()
        self._save_lock = threading.Lock()  # its own saves, one at a time, each noted as it wrote
        self._save_every = save_every
        #: A loaded state's correction, kept as read where this predictor does not calibrate (its
        #: calibration stays as loaded), so that saving does not drop what an adapting one learnt;
        #: with ``adapt=False`` alone the calibration goes on fitting uncorrected scores, and the
        #: correction, which would no longer fit it, is left out of its saves
        self._kept_correction: Any = None
        if self._calibration_path is not None and self._calibration_path.exists():
            self.load_calibration(self._calibration_path)
        elif self._calibration_path is not None:  # absent now: one there at a save is another's
            with contextlib.suppress(OSError, ValueError):
                self._state_files[os.path.realpath(self._calibration_path)] = _ABSENT
        #: The model file's metadata (training sources, feature version, ...).
        self.metadata: Mapping[str, str] = model.metadata

    def __repr__(self) -> str:
        return f"LexicalPredictor(model_path={str(self._path)!r})"

    @property
    def model_path(self) -> Path:
        return self._path

    @property
    def _calibration(self) -> LengthCalibration:
        return self._learnt[0]

    @property
    def _correction(self) -> ScoreCorrection | None:
        return self._learnt[1]

    @property
    def calibration(self) -> LengthCalibration:
        """The online calibration (read its ``offset``, ``slope``, ``sigma``)."""
        return self._calibration

    @property
    def correction(self) -> ScoreCorrection | None:
        """The learnt correction to the model's ranking (``None`` when not adapting)."""
        return self._correction

    # --------------------------------------------------------------- scores

    def score(self, text: str) -> float:
        """The raw score of a text: predicted ``log(1 + tokens)`` at training scale.

        The model's score, kept within its training targets' range widened by
        :data:`SCORE_MARGIN` on each side, plus the learnt :attr:`correction`
        once there is one (what it learnt from real lengths is not bounded).
        """
        if not isinstance(text, str):
            raise TypeError(f"score() takes a str, got {type(text).__name__} {text!r:.60}")
        return self._score(text, self._learnt[1])

    def _score(self, text: str, correction: ScoreCorrection | None) -> float:
        ids, values = self._features.encode(text)
        raw = self._bounded(float(self._run(_SCORE, {"ids": ids, "values": values})[0]))
        if correction is not None and correction.observations:
            raw += correction.value(ids, values)
        return raw

    def _bounded(self, score: float) -> float:
        return min(max(score, self._low), self._high)

    def scores(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """Raw scores of many texts, with one model run (see :meth:`score`)."""
        refuse_one_text("scores()", texts, "texts (str): use score(text) or scores([text])")
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"scores() takes texts (str), got {type(text).__name__} {text!r:.60}")
        return self._scores(texts, self._learnt[1])

    def _scores(self, texts: Sequence[str], correction: ScoreCorrection | None) -> npt.NDArray[np.float64]:
        n = len(texts)
        if n == 0:
            return np.zeros(0)
        batch = self._features.encode_batch(texts)
        (weights,) = self._run(_CONTRIBUTIONS, {"ids": batch.ids, "values": self._ones(len(batch.ids))})
        # The plain weights, summed per text and block, then scaled: a block's
        # rows share one value within a text.
        raw = np.clip(np.asarray(batch.totals(weights) + self._bias, np.float64), self._low, self._high)
        if correction is not None and correction.observations:  # one weight per row, summed alike
            raw += batch.totals(correction.row_weights(batch.ids)) + correction.bias
        return raw

    def _ones(self, n: int) -> npt.NDArray[np.float32]:
        ones = self._ones_buffer
        if len(ones) < n:
            ones = self._ones_buffer = np.ones(max(n, 2 * len(ones)), np.float32)
        return ones[:n]

    # -------------------------------------------------------------- predict

    def _mu_sigma(self, raw: Any, cal: LengthCalibration) -> tuple[Any, float]:
        """The typical log(1 + tokens) of raw score(s) (a float or an array) and its spread."""
        if self._calibrate:
            return cal.log_length(raw), cal.sigma
        return raw, cal.sigma0

    def _prediction(self, raw: float, calibration: LengthCalibration) -> Prediction:
        mu, sigma = self._mu_sigma(raw, calibration)
        tokens = math.expm1(min(max(mu + 0.5 * sigma * sigma, 0.0), _MAX_LOG))
        p_long = 0.5 * math.erfc((_LOG_LONG - mu) / (sigma * _SQRT2))
        return Prediction(tokens, min(max(p_long, 0.0), 1.0))

    def predict(self, request: Request, /) -> Prediction:
        calibration, correction = self._learnt
        raw = self._score(text_of("predict()", request), correction)
        if self._remember:
            recent = self._recent
            key = id(request)
            recent.pop(key, None)  # a reused id goes to the end, not stay where the old one was
            recent[key] = (weakref.ref(request), raw)
            if len(recent) > RECENT_SCORES + _FORGET_BATCH:
                self._forget(len(recent) - RECENT_SCORES)
        return self._prediction(raw, calibration)

    def _forget(self, n: int) -> None:
        """Drop the ``n`` oldest remembered scores."""
        recent = self._recent
        try:
            for key in list(islice(recent, n)):
                recent.pop(key, None)
        except RuntimeError:  # another thread changed it meanwhile: trim next time
            pass

    def predict_many(self, requests: Iterable[Request], /) -> list[Prediction]:
        refuse_one_text("predict_many()", requests, "Requests")
        if not isinstance(requests, (list, tuple)):  # read once, whatever iterable it is
            requests = list(requests)
        if len(requests) < _SMALL_BATCH:  # a batch's fixed cost outweighs what it saves
            return [self.predict(r) for r in requests]
        calibration, correction = self._learnt
        raw = self._scores(texts_of("predict_many()", requests), correction)
        if self._remember:
            last = requests[-RECENT_SCORES:]
            recent = self._recent
            keys = list(map(id, last))
            for key in keys:  # a reused id goes to the end, as in predict()
                recent.pop(key, None)
            recent.update(
                zip(
                    keys,
                    zip(map(weakref.ref, last), raw[-RECENT_SCORES:].tolist(), strict=True),
                    strict=True,
                )
            )
            if len(recent) > RECENT_SCORES + _FORGET_BATCH:
                self._forget(len(recent) - RECENT_SCORES)
        mu, sigma = self._mu_sigma(raw, calibration)
        tokens = np.expm1(np.clip(mu + 0.5 * sigma * sigma, 0.0, _MAX_LOG)).tolist()
        z = ((_LOG_LONG - mu) * (1.0 / (sigma * _SQRT2))).tolist()
        p_long = np.clip(0.5 * np.fromiter(map(math.erfc, z), np.float64, len(z)), 0.0, 1.0).tolist()
        return list(map(Prediction, tokens, p_long))

    # ----------------------------------------------------------- calibration

    def observe(self, request: Request, prediction: Prediction, output_tokens: int, /) -> None:
        """Learn from a completed request (the scheduler calls this).

        Without adaptation the request's raw score is remembered from its
        prediction (for the latest :data:`RECENT_SCORES` predictions), so the
        model does not run again; for a request predicted longer ago, or
        never, it does.  With adaptation the prompt is scored afresh (the
        correction needs its features): the calibration takes the score the
        predictor gives now, then the correction learns from the request.
        With ``save_every``, the save it triggers may raise
        :class:`~sjfsched.PredictorError` (a full disk): the request has been
        learnt from by then, so do not observe it again.
        """
        if not isinstance(request, Request):
            raise TypeError(f"observe() takes the completed Request first, got {request!r}")
        require_length(output_tokens)
        if not self._calibrate:
            return
        with self._state_lock:
            before = self._calibration.observations
            correction = self._correction
            if correction is None:
                entry = self._recent.pop(id(request), None)
                raw = entry[1] if entry is not None and entry[0]() is request else self.score(request.text)
                self._calibration.observe(raw, output_tokens)
            else:
                ids, values = self._features.encode(request.text)
                base = self._bounded(float(self._run(_SCORE, {"ids": ids, "values": values})[0]))
                raw = base + correction.value(ids, values) if correction.observations else base
                self._calibration.observe(raw, output_tokens)
                correction.learn(ids, values, base, output_tokens)
            count = self._calibration.observations
            if self._save_every is not None and count != before and count % self._save_every == 0:
                self.save_calibration()

    def save_calibration(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write the calibration, and the correction if adapting, as JSON to ``path``.

        ``path`` defaults to ``calibration_path``.  The file is replaced
        atomically and durably (written beside it, flushed to disk, then
        renamed; a symbolic link's target is replaced, an existing file keeps
        its permissions).  Safe to call from any thread while the scheduler
        observes: the state is taken whole.  Raises
        :class:`~sjfsched.PredictorError` naming the file if it cannot be
        written.
        """
        target = self._calibration_path if path is None else Path(path)
        if target is None:
            raise ValueError("no path given and no calibration_path set")
        if target.is_dir():
            raise PredictorError(f"{target}: cannot save calibration (it is a directory)")
        with self._state_lock:  # copied under the lock; encoded outside it
            data = self._calibration.to_dict()
            learnt = None if self._correction is None else self._correction.snapshot()
        data["model"] = self._fingerprint
        if learnt is not None:
            data["correction"] = ScoreCorrection.encode(learnt)
        elif self._kept_correction is not None:  # an adapting predictor's, written back as it was
            data["correction"] = self._kept_correction
        try:
            with self._save_lock:
                self._warn_if_written_by_another(target)
                write_state(target, data)
                self._note_state_file(target)
        except OSError as exc:
            raise PredictorError(f"{target}: cannot save calibration ({exc.strerror or exc})") from exc
        except ValueError as exc:  # a path the system takes no file by (a NUL byte)
            raise PredictorError(f"{target!r}: cannot save calibration ({exc})") from exc

    def load_calibration(self, path: str | os.PathLike[str]) -> None:
        """Replace the calibration (and correction) with one saved by :meth:`save_calibration`.

        A file without a correction (saved without adaptation) leaves the
        correction empty.  Raises :class:`~sjfsched.PredictorError` naming the
        file if it cannot be read or does not fit this model, including a
        state learnt with another model file (the calibration and the
        correction are relative to the model's scores): remove the file to
        start afresh.
        """
        with self._state_lock:
            self._load_state(path)

    def _load_state(self, path: str | os.PathLike[str]) -> None:
        try:
            data = read_state(path)
            saved_for = data.get("model") if isinstance(data, dict) else None
            if saved_for is not None and saved_for != self._fingerprint:
                raise ValueError(
                    f"it was learnt with another model (file sha1 {saved_for}...), this predictor "
                    f"runs {self._path} (sha1 {self._fingerprint}...); remove it to start afresh"
                )
            # Read into copies, then put in place: a file whose second part fails leaves this
            # predictor as it was, and predict(), which takes no lock, never sees one part
            # read and the other half-read (or reset while it is read).
            calibration = copy.deepcopy(self._calibration)
            calibration.load_dict(data, where=str(path))
            correction = self._correction
            if correction is not None:
                correction = copy.deepcopy(correction)
                saved = data.get("correction")
                if saved is None:
                    correction.reset()
                else:
                    correction.load_dict(saved, where=str(path))
            self._learnt = (calibration, correction)
            if not self._calibrate:  # its calibration stays as read: the correction still fits it
                self._kept_correction = data.get("correction")
            self._note_state_file(path)
        except (OSError, ValueError, OverflowError) as exc:
            reason = str(exc).removeprefix(f"{path}: ")  # the parts' checks name the file too
            raise PredictorError(f"{path}: cannot load calibration ({reason})") from exc

    def _note_state_file(self, path: str | os.PathLike[str]) -> None:
        """Remember the state file as this predictor last read or wrote it."""
        with contextlib.suppress(OSError, ValueError):
            st = os.stat(path)
            self._state_files[os.path.realpath(path)] = (st.st_ino, st.st_mtime_ns, st.st_size)

    def _warn_if_written_by_another(self, path: Path) -> None:
        """Log once per file when it changed since this predictor last read or wrote it."""
        where = os.path.realpath(path)
        seen = self._state_files.get(where)
        with contextlib.suppress(OSError, ValueError):
            st = os.stat(where)
            changed = seen is not None and seen != (st.st_ino, st.st_mtime_ns, st.st_size)
            if changed and where not in self._warned_files:
                self._warned_files.add(where)
                logger.warning(
                    "%s was written by another predictor or process since this one last read or "
                    "wrote it; saving replaces what that one learnt: give each process its own "
                    "calibration_path (see docs/predictor.md)",
                    path,
                )

    def reset_calibration(self) -> None:
        """Forget what :meth:`observe` learnt: back to the training scale and the model's ranking."""
        with self._state_lock:
            self._calibration.reset()
            self._kept_correction = None
            if self._correction is not None:
                self._correction.reset()
