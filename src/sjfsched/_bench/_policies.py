"""The scheduling policies the benchmarks compare.

- ``fcfs``: first-come-first-served, the scheduler with a
  :class:`~sjfsched.predictors.ConstantPredictor`;
- ``sjfsched``: the :class:`~sjfsched.Scheduler` with every default
  (predictor, ``aging``, ``max_wait``);
- ``oracle``: the same policy told every answer's true length: the bound on
  what any predictor can reach;
- ``clairvoyant``: the peer, Clairvoyant's policy (arXiv 2606.07248):
  ascending P(Long) from its 3-class predictor, and a starvation timeout
  tau = 3 x the mean latency of a short request, after which the longest
  waiting request runs next;
- sweeps of ``aging`` and ``max_wait`` around the defaults.
"""

from __future__ import annotations

import bisect
import collections
import math
import random
import re
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from .._records import Completion, Prediction, Request
from .._scheduler import DEFAULT_AGING, DEFAULT_MAX_WAIT, Job, Scheduler
from ..backends import Backend
from ..predictors import ConstantPredictor, HeuristicPredictor, Predictor, default_predictor
from ._traces import LONG_TOKENS, SHORT_TOKENS

__all__ = [
    "AGING_SWEEP",
    "ALIASES",
    "MAX_WAIT_SWEEP",
    "NOISE_SWEEP",
    "PROPOSED_AGING",
    "PROPOSED_AGING_SWEEP",
    "PROPOSED_CAP",
    "STANDARD_POLICIES",
    "SWEEPS",
    "MedianCapScheduler",
    "ClairvoyantScheduler",
    "NoisyOraclePredictor",
    "OraclePredictor",
    "Policy",
    "PolicyContext",
    "PromptLengthClassPredictor",
    "clairvoyant_predictor",
    "policy_named",
    "predictor_factory",
    "all_sweep_names",
    "sweep_names",
]


class OraclePredictor:
    """Knows every answer's length: reads ``request.metadata["output_tokens"]``.

    Only for benchmarks, where traces carry the true lengths (and
    ``prompt_tokens``, passed on as the prediction's prompt length).  ``p_long`` is 1
    for long answers (>= 800 tokens) and 0 otherwise.
    """

    def predict(self, request: Request, /) -> Prediction:
        value = request.metadata.get("output_tokens")
        if value is None:
            raise KeyError("OraclePredictor needs request.metadata['output_tokens']")
        tokens = float(value)
        prompt = request.metadata.get("prompt_tokens")
        return Prediction(
            tokens,
            p_long=1.0 if tokens >= LONG_TOKENS else 0.0,
            prompt_tokens=None if prompt is None else float(prompt),
        )

    def predict_many(self, requests: Sequence[Request], /) -> list[Prediction]:
        return [self.predict(r) for r in requests]


class NoisyOraclePredictor:
    """The true length times log-normal noise: a predictor of chosen quality.

    ``tokens = true * exp(sigma * z)`` with ``z`` a standard normal drawn
    from a hash of the prompt (the same prompt always gets the same
    error, in every policy and process).  ``sigma`` 0 is the oracle; the
    larger ``sigma``, the more short/long pairs it ranks wrong (see
    :meth:`ranking_accuracy`).
    """

    def __init__(self, sigma: float) -> None:
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
        self.sigma = sigma
        self._oracle = OraclePredictor()

    def predict(self, request: Request, /) -> Prediction:
        true = self._oracle.predict(request)
        seed = zlib.crc32(request.text.encode("utf-8", "replace"))
        z = random.Random(seed).gauss(0.0, 1.0)
        tokens = true.tokens * math.exp(self.sigma * z)
        p_long = 1.0 / (1.0 + (LONG_TOKENS / max(tokens, 1e-9)) ** 4)
        return Prediction(tokens, p_long=p_long, prompt_tokens=true.prompt_tokens)

    def predict_many(self, requests: Sequence[Request], /) -> list[Prediction]:
        return [self.predict(r) for r in requests]


class PromptLengthClassPredictor:
    """Stand-in for Clairvoyant's 3-class model: P(Long) rises with prompt length.

    Used only while :class:`sjfsched.predictors.ClairvoyantPredictor` is not
    available.  The paper found prompt length alone ranks short against long
    answers about as well as its shipped model on prompts it never saw
    (58-68% against 49-61% of pairs).
    """

    def __init__(self) -> None:
        self._heuristic = HeuristicPredictor()

    def predict(self, request: Request, /) -> Prediction:
        tokens = self._heuristic.predict(request).tokens
        # A logistic in log prompt length, centred on a 100-token prompt.
        x = math.log(1.0 + len(request.text) / 4.0) - math.log(100.0)
        return Prediction(tokens, p_long=1.0 / (1.0 + math.exp(-x)))

    def predict_many(self, requests: Sequence[Request], /) -> list[Prediction]:
        return [self.predict(r) for r in requests]


#: Where the repository keeps Clairvoyant's retrained model (``sjfsched train --features clairvoyant``).
CLAIRVOYANT_MODEL = Path("benchmarks") / "models" / "clairvoyant.onnx"


def clairvoyant_model_path() -> Path | None:
    """``benchmarks/models/clairvoyant.onnx`` under the current directory or the source tree."""
    here = Path(__file__).resolve()
    for root in (Path.cwd(), *here.parents):
        candidate = root / CLAIRVOYANT_MODEL
        if candidate.is_file():
            return candidate
    return None


def clairvoyant_predictor(model_path: str | None = None) -> tuple[Predictor, bool]:
    """Clairvoyant's predictor, and whether it is the real one.

    The real one is :class:`sjfsched.predictors.ClairvoyantPredictor`
    (Clairvoyant's 19 features, XGBoost retrained on the shared corpora)
    loading :data:`CLAIRVOYANT_MODEL`; while either is missing,
    :class:`PromptLengthClassPredictor` stands in.
    """
    from .. import predictors

    cls = getattr(predictors, "ClairvoyantPredictor", None)
    path = clairvoyant_model_path() if model_path is None else Path(model_path)
    if cls is not None and path is not None:
        return cls(path), True
    return PromptLengthClassPredictor(), False


class ClairvoyantScheduler(Scheduler):
    """Clairvoyant's policy on the sjfsched core.

    Requests run in ascending P(Long) (the prediction's ``p_long``; a
    predictor without it is read as three classes by predicted tokens:
    0 below 200, 0.5 up to 800, 1 above), first come first served among
    equals.  A request that has waited longer than tau = ``tau_factor`` x the
    mean latency of a short request runs next, oldest first (the core's
    ``max_wait``).  tau starts at ``tau_factor * short_latency`` (the
    paper calibrates it on the target hardware) and follows the mean
    service latency (start to end) of the short answers completed so far.
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        predictor: Predictor,
        short_latency: float,
        tau_factor: float = 3.0,
        **options: Any,
    ) -> None:
        if not (short_latency > 0 and tau_factor > 0):
            raise ValueError("short_latency and tau_factor must be > 0")
        self.tau_factor = tau_factor
        self._short_sum = short_latency
        self._short_count = 1
        super().__init__(
            backend,
            predictor=predictor,
            aging=0.0,
            max_wait=tau_factor * short_latency,
            on_complete=self._on_complete,
            **options,
        )

    def sort_key(self, job: Job) -> Any:
        p_long = job.prediction.p_long
        if p_long is None:
            tokens = job.prediction.tokens
            p_long = 0.0 if tokens < SHORT_TOKENS else (1.0 if tokens >= LONG_TOKENS else 0.5)
        return (job.request.priority, p_long)

    @property
    def tau(self) -> float:
        """The current starvation timeout in seconds."""
        assert self.max_wait is not None
        return self.max_wait

    def _on_complete(self, completion: Completion) -> None:
        if completion.output_tokens < SHORT_TOKENS:
            self._short_sum += completion.finished - completion.started
            self._short_count += 1
            self.max_wait = self.tau_factor * self._short_sum / self._short_count


class _RecentMedian:
    """The median of the last ``window`` values added (sorted window, O(window) per add)."""

    def __init__(self, window: int = 200) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        self.window = window
        self._recent: collections.deque[float] = collections.deque()
        self._sorted: list[float] = []

    def add(self, value: float) -> float:
        """Add ``value`` and return the median of the window (the upper one of an even count)."""
        self._recent.append(value)
        bisect.insort(self._sorted, value)
        if len(self._recent) > self.window:
            del self._sorted[bisect.bisect_left(self._sorted, self._recent.popleft())]
        return self._sorted[len(self._sorted) // 2]


class MedianCapScheduler(Scheduler):
    """The proposed core change: the estimate in the key is capped at the median estimate.

    The key is ``(priority, min(estimate, cap) + aging * submitted)`` with
    ``cap = cap_factor x`` the median estimate of the last 200 arrivals.
    Requests predicted shorter than the median run shortest first; the
    others keep their arrival order among themselves (and short ones pass
    them only within ``cap / aging`` seconds of arriving).  Every key is at
    most ``cap + aging * submitted``, so no request is passed by one that
    arrives more than ``cap / aging`` seconds after it, however long its
    own estimate, even a wildly wrong one: aging alone bounds starvation.
    The cap follows the predictions' own scale (rank-based: any calibration
    or backend speed gives the same order), and the key is still fixed at
    arrival, so the queue stays a heap.
    """

    def __init__(self, backend: Backend | None = None, *, cap_factor: float = 1.0, **options: Any) -> None:
        if not (math.isfinite(cap_factor) and cap_factor > 0):
            raise ValueError(f"cap_factor must be a finite number > 0, got {cap_factor!r}")
        self.cap_factor = float(cap_factor)
        self._median = _RecentMedian()
        super().__init__(backend, **options)

    def sort_key(self, job: Job) -> Any:
        cap = self.cap_factor * self._median.add(job.estimate)
        return (job.request.priority, min(job.estimate, cap) + self.aging * job.submitted)


@attrs.frozen
class PolicyContext:
    """What a policy may know of the deployment when it is built."""

    #: Mean service seconds of a short request on this backend (Clairvoyant's calibration).
    short_latency: float
    #: A LexicalPredictor model trained without the trace's corpus (the ``unseen`` predictor).
    unseen_model: str | None = None
    #: A copy of the bundled LexicalPredictor model taken when the run started (None: the package's).
    bundled_model: str | None = None
    #: A copy of Clairvoyant's retrained model taken when the run started (None: find it).
    clairvoyant_model: str | None = None


@attrs.frozen
class Policy:
    """A named way to build the scheduler under test."""

    name: str
    make: Callable[[Backend, PolicyContext], Scheduler]
    #: fcfs, sjfsched, oracle, clairvoyant, or the predictor name of a variant.
    family: str
    aging: float | None = None
    max_wait: float | None = None
    #: The proposed key's cap, as a multiple of the median estimate (None: the core's plain key).
    cap: float | None = None
    #: False when a stand-in replaced the real component (reported next to the results).
    faithful: bool = True


PredictorFactory = Callable[[PolicyContext], Predictor]


#: Predictors a policy name may start with (``<predictor>[@aging=..,max_wait=..,cap=..]``).
def _default(context: PolicyContext) -> Predictor:
    """The default predictor, from the snapshot of its model when the run has one."""
    if context.bundled_model is None:
        return default_predictor()
    from ..predictors import LexicalPredictor

    return LexicalPredictor(model_path=context.bundled_model)


PREDICTORS: dict[str, PredictorFactory] = {
    "sjfsched": _default,
    "oracle": lambda context: OraclePredictor(),
    "heuristic": lambda context: HeuristicPredictor(),
}


def _unseen(context: PolicyContext) -> Predictor:
    if context.unseen_model is None:
        raise ValueError("the 'unseen' predictor needs a model trained without the trace (PolicyContext)")
    from ..predictors import LexicalPredictor

    return LexicalPredictor(model_path=context.unseen_model)


def predictor_factory(name: str) -> PredictorFactory:
    """The predictor of a policy family.

    ``sjfsched`` (the default predictor), ``unseen`` (the default model's
    recipe trained without the trace's corpus, see ``_unseen.py``),
    ``oracle``, ``heuristic``, ``lexical`` (the bundled LexicalPredictor) or
    ``noisySIGMA`` (the oracle with log-normal noise, e.g. ``noisy1.5``).
    """
    if name in PREDICTORS:
        return PREDICTORS[name]
    if name == "unseen":
        return _unseen
    m = re.fullmatch(r"noisy([0-9.]+)", name)
    if m:
        sigma = float(m.group(1))
        return lambda context: NoisyOraclePredictor(sigma)
    if name == "lexical":
        from ..predictors import LexicalPredictor

        return lambda context: LexicalPredictor()
    raise ValueError(
        f"unknown predictor {name!r}; choose from sjfsched, unseen, oracle, heuristic, lexical, noisySIGMA"
    )


def _fcfs(backend: Backend, context: PolicyContext) -> Scheduler:
    return Scheduler(backend, predictor=ConstantPredictor(), max_wait=None)


def _clairvoyant(backend: Backend, context: PolicyContext) -> Scheduler:
    predictor, _ = clairvoyant_predictor(context.clairvoyant_model)
    return ClairvoyantScheduler(backend, predictor=predictor, short_latency=context.short_latency)


def _parse_seconds(text: str) -> float | None:
    return None if text.lower() in ("none", "inf") else float(text)


#: The proposed core change's settings (docs/benchmarks.md, "The proposal").
PROPOSED_CAP = 1.0
PROPOSED_AGING = 0.05

#: Short names for longer policy names.
ALIASES: dict[str, str] = {
    "proposed": f"sjfsched@cap={PROPOSED_CAP:g},aging={PROPOSED_AGING:g},max_wait=none",
    "oracle-proposed": f"oracle@cap={PROPOSED_CAP:g},aging={PROPOSED_AGING:g},max_wait=none",
    "proposed-unseen": f"unseen@cap={PROPOSED_CAP:g},aging={PROPOSED_AGING:g},max_wait=none",
}


def policy_named(name: str) -> Policy:
    """Build a policy from its name.

    ``fcfs``, ``clairvoyant``, ``proposed`` (the proposed core change with
    the default predictor), ``oracle-proposed``, or ``<predictor>``
    optionally followed by ``@key=value,...`` with keys ``aging``,
    ``max_wait`` (seconds or ``none``) and ``cap`` (the proposed key,
    :class:`MedianCapScheduler`, with its cap at this multiple of the median
    estimate).  The predictor is ``sjfsched`` (the default predictor),
    ``oracle``, ``heuristic``, ``lexical`` or ``noisySIGMA``.  Unset keys take
    the scheduler's defaults.  Examples: ``sjfsched``, ``oracle``,
    ``sjfsched@aging=0.2``, ``sjfsched@max_wait=none``,
    ``sjfsched@cap=1,aging=0.05``.
    """
    if name == "fcfs":
        return Policy("fcfs", _fcfs, "fcfs")
    if name == "clairvoyant":
        _, real = clairvoyant_predictor()
        return Policy("clairvoyant", _clairvoyant, "clairvoyant", 0.0, None, faithful=real)
    base, _, params = ALIASES.get(name, name).partition("@")
    predictor = predictor_factory(base)
    aging: float = DEFAULT_AGING
    max_wait: float | None = DEFAULT_MAX_WAIT
    cap: float | None = None
    for part in filter(None, params.split(",")):
        key, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError("missing '='")
            if key == "aging":
                aging = float(value)
            elif key == "max_wait":
                max_wait = _parse_seconds(value)
            elif key == "cap":
                cap = float(value)
            else:
                raise ValueError(f"unknown key {key!r} (aging, max_wait, cap)")
        except ValueError as exc:
            raise ValueError(f"bad policy name {name!r}: {part!r}: {exc}") from None

    def make(backend: Backend, context: PolicyContext) -> Scheduler:
        if base == "sjfsched" and not params:
            if context.bundled_model is None:
                return Scheduler(backend)  # exactly what a user gets
            # The same, with the snapshot of the bundled model the run started with.
            return Scheduler(backend, predictor=_default(context))
        if cap is None:
            return Scheduler(backend, predictor=predictor(context), aging=aging, max_wait=max_wait)
        return MedianCapScheduler(
            backend, predictor=predictor(context), aging=aging, max_wait=max_wait, cap_factor=cap
        )

    return Policy(name, make, base, aging, max_wait, cap)


#: The policies every table shows.
STANDARD_POLICIES: tuple[str, ...] = (
    "fcfs",
    "sjfsched",
    "unseen",
    "oracle",
    "clairvoyant",
    "proposed",
    "proposed-unseen",
    "oracle-proposed",
)
#: Aging values of the sweep of the core's key (seconds of estimate forgiven per second waited).
AGING_SWEEP: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
#: Aging values of the sweep of the proposed key.
PROPOSED_AGING_SWEEP: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2)
#: max_wait values of the sweep, in seconds (None: no bound).
MAX_WAIT_SWEEP: tuple[float | None, ...] = (300.0, 900.0, 1800.0, 3600.0, None)
#: Log-normal noise levels of the predictor-quality sweep (see NoisyOraclePredictor).
NOISE_SWEEP: tuple[float, ...] = (1.0, 2.0)


def sweep_names(kind: str) -> list[str]:
    """Policy names of one sweep.

    ``aging``: the core's key across AGING_SWEEP (other settings at their
    defaults); ``proposed-aging``: the proposed key across
    PROPOSED_AGING_SWEEP; both with the ``unseen`` predictor (the one a
    deployment on traffic unlike the training corpora gets); ``max_wait``: the defaults across MAX_WAIT_SWEEP;
    ``noise``: the defaults and the proposal with a noisy oracle for a
    predictor.
    """
    if kind == "aging":
        return [f"unseen@aging={a:g}" for a in AGING_SWEEP]
    if kind == "proposed-aging":
        return [f"unseen@cap={PROPOSED_CAP:g},aging={a:g},max_wait=none" for a in PROPOSED_AGING_SWEEP]
    if kind == "max_wait":
        return [f"sjfsched@max_wait={'none' if w is None else f'{w:g}'}" for w in MAX_WAIT_SWEEP]
    if kind == "noise":
        names = []
        for sigma in NOISE_SWEEP:
            names.append(f"noisy{sigma:g}@aging={DEFAULT_AGING:g}")
            names.append(f"noisy{sigma:g}@cap={PROPOSED_CAP:g},aging={PROPOSED_AGING:g},max_wait=none")
        return names
    raise ValueError(f"unknown sweep {kind!r}: aging, proposed-aging, max_wait or noise")


SWEEPS: tuple[str, ...] = ("aging", "proposed-aging", "max_wait", "noise")


def all_sweep_names() -> list[str]:
    return [name for kind in SWEEPS for name in sweep_names(kind)]
