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

import math
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
    "MAX_WAIT_SWEEP",
    "STANDARD_POLICIES",
    "CappedScheduler",
    "ClairvoyantScheduler",
    "OraclePredictor",
    "Policy",
    "PolicyContext",
    "PromptLengthClassPredictor",
    "clairvoyant_predictor",
    "policy_named",
    "predictor_factory",
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


def clairvoyant_predictor() -> tuple[Predictor, bool]:
    """Clairvoyant's predictor, and whether it is the real one.

    The real one is :class:`sjfsched.predictors.ClairvoyantPredictor`
    (Clairvoyant's 19 features, XGBoost retrained on the shared corpora)
    loading :data:`CLAIRVOYANT_MODEL`; while either is missing,
    :class:`PromptLengthClassPredictor` stands in.
    """
    from .. import predictors

    cls = getattr(predictors, "ClairvoyantPredictor", None)
    path = clairvoyant_model_path()
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


class CappedScheduler(Scheduler):
    """The scheduler with its estimate capped in the ordering key (a proposed core change).

    The key is ``(priority, min(estimate, cap) + aging * submitted)`` where
    ``cap = cap_tokens / decode_rate`` (the learned rate), so requests
    predicted shorter than ``cap_tokens`` output tokens run shortest first
    and everything longer keeps its arrival order.  Since every key is at
    most ``cap + aging * submitted``, no request is overtaken by one that
    arrives more than ``cap / aging`` seconds after it: aging alone bounds
    starvation, at a scale that follows the backend's speed.
    """

    def __init__(self, backend: Backend | None = None, *, cap_tokens: float, **options: Any) -> None:
        if not cap_tokens > 0:
            raise ValueError(f"cap_tokens must be > 0, got {cap_tokens!r}")
        self.cap_tokens = float(cap_tokens)
        super().__init__(backend, **options)

    def sort_key(self, job: Job) -> Any:
        cap = self.cap_tokens / self.rates.decode_rate
        return (job.request.priority, min(job.estimate, cap) + self.aging * job.submitted)


@attrs.frozen
class PolicyContext:
    """What a policy may know of the deployment when it is built."""

    #: Mean service seconds of a short request on this backend (Clairvoyant's calibration).
    short_latency: float


@attrs.frozen
class Policy:
    """A named way to build the scheduler under test."""

    name: str
    make: Callable[[Backend, PolicyContext], Scheduler]
    #: fcfs, sjfsched, oracle, clairvoyant, or the predictor name of a variant.
    family: str
    aging: float | None = None
    max_wait: float | None = None
    cap_tokens: float | None = None
    #: False when a stand-in replaced the real component (reported next to the results).
    faithful: bool = True


#: Predictors a policy name may start with (``<predictor>[@aging=..,max_wait=..,cap=..]``).
PREDICTORS: dict[str, Callable[[], Predictor]] = {
    "sjfsched": default_predictor,
    "oracle": OraclePredictor,
    "heuristic": HeuristicPredictor,
}


def _optional_predictor(name: str) -> Callable[[], Predictor] | None:
    from .. import predictors

    cls = getattr(predictors, name, None)
    return cls if callable(cls) else None


def predictor_factory(name: str) -> Callable[[], Predictor]:
    """The predictor of a policy family: sjfsched (the default), oracle, heuristic, lexical."""
    if name in PREDICTORS:
        return PREDICTORS[name]
    if name == "lexical":
        factory = _optional_predictor("LexicalPredictor")
        if factory is not None:
            return factory
        raise ValueError("the 'lexical' policy needs sjfsched.predictors.LexicalPredictor, not available")
    raise ValueError(f"unknown predictor {name!r}; choose from sjfsched, oracle, heuristic, lexical")


def _fcfs(backend: Backend, context: PolicyContext) -> Scheduler:
    return Scheduler(backend, predictor=ConstantPredictor(), max_wait=None)


def _clairvoyant(backend: Backend, context: PolicyContext) -> Scheduler:
    predictor, _ = clairvoyant_predictor()
    return ClairvoyantScheduler(backend, predictor=predictor, short_latency=context.short_latency)


def _parse_seconds(text: str) -> float | None:
    return None if text.lower() in ("none", "inf") else float(text)


def policy_named(name: str) -> Policy:
    """Build a policy from its name.

    ``fcfs``, ``clairvoyant``, or ``<predictor>`` optionally followed by
    ``@key=value,...`` with keys ``aging``, ``max_wait`` (seconds or
    ``none``) and ``cap`` (tokens; uses :class:`CappedScheduler`).  The
    predictor is ``sjfsched`` (the default predictor), ``oracle``,
    ``heuristic`` or ``lexical``.  Unset keys take the scheduler's defaults.
    Examples: ``sjfsched``, ``oracle``, ``sjfsched@aging=0.2``,
    ``sjfsched@max_wait=none``, ``sjfsched@cap=250,aging=0.05``.
    """
    if name == "fcfs":
        return Policy("fcfs", _fcfs, "fcfs")
    if name == "clairvoyant":
        _, real = clairvoyant_predictor()
        return Policy("clairvoyant", _clairvoyant, "clairvoyant", 0.0, None, faithful=real)
    base, _, params = name.partition("@")
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
            return Scheduler(backend)  # exactly what a user gets
        if cap is None:
            return Scheduler(backend, predictor=predictor(), aging=aging, max_wait=max_wait)
        return CappedScheduler(backend, predictor=predictor(), aging=aging, max_wait=max_wait, cap_tokens=cap)

    return Policy(name, make, base, aging, max_wait, cap)


#: The policies every table shows.
STANDARD_POLICIES: tuple[str, ...] = ("fcfs", "sjfsched", "oracle", "clairvoyant")
#: Aging values of the sweep (seconds of estimate forgiven per second waited).
AGING_SWEEP: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
#: max_wait values of the sweep, in seconds (None: no bound).
MAX_WAIT_SWEEP: tuple[float | None, ...] = (60.0, 300.0, 900.0, 1800.0, 3600.0, None)


def sweep_names(
    aging: Sequence[float] = AGING_SWEEP, max_wait: Sequence[float | None] = MAX_WAIT_SWEEP
) -> list[str]:
    """Names of the sweep: the default predictor across ``aging`` (other settings at their
    defaults) and across ``max_wait``."""
    names = [f"sjfsched@aging={a:g}" for a in aging]
    names += [f"sjfsched@max_wait={'none' if w is None else f'{w:g}'}" for w in max_wait]
    return names
