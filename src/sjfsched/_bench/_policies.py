"""The scheduling policies the benchmarks compare.

- ``fcfs``: first-come-first-served, the scheduler with a
  :class:`~sjfsched.predictors.ConstantPredictor`;
- ``sjfsched``: the :class:`~sjfsched.Scheduler` with every default
  (predictor, ``aging``, ``max_wait``);
- ``oracle``: the same policy told every answer's true length: the bound on
  what any predictor can reach;
- ``clairvoyant``: the peer, Clairvoyant's policy (arXiv 2606.07248):
  ascending P(Long) from its 3-class predictor, and a starvation timeout
  tau = 3 x the mean service time (start to last token) of the short
  requests served so far, starting from the trace's mean short service
  time, after which the longest waiting request runs next;
- sweeps of ``aging`` and ``max_wait`` around the defaults.
"""

from __future__ import annotations

import math
import random
import re
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from .._records import Completion, Prediction, Request
from .._scheduler import DEFAULT_AGING, DEFAULT_CAP, DEFAULT_MAX_WAIT, DEFAULT_PREEMPT, Job, Scheduler
from ..backends import Backend
from ..predictors import ConstantPredictor, HeuristicPredictor, Predictor, default_predictor, predict_all
from ._traces import LONG_TOKENS, SHORT_TOKENS, TraceItem

__all__ = [
    "AGING_SWEEP",
    "ALIASES",
    "MAX_WAIT_SWEEP",
    "NOISE_SWEEP",
    "PLAIN_AGING",
    "PLAIN_AGING_SWEEP",
    "STANDARD_POLICIES",
    "SWEEPS",
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
    larger ``sigma``, the more short/long pairs it ranks wrong (``sjfsched
    bench ranking`` prints how many).
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
    mean service time (start to end) of the short requests served so far
    runs next, oldest first (the core's ``max_wait``).  tau starts at ``tau_factor * short_latency`` (the
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
            preempt=False,  # Clairvoyant runs each request to its end
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
    #: Past completions of prompts the run will not see (a ``/fresh`` trace's history).
    history: tuple[TraceItem, ...] = ()


@attrs.frozen
class Policy:
    """A named way to build the scheduler under test."""

    name: str
    make: Callable[[Backend, PolicyContext], Scheduler]
    #: fcfs, sjfsched, oracle, clairvoyant, or the predictor name of a variant.
    family: str
    aging: float | None = None
    max_wait: float | None = None
    #: The estimate cap, as a multiple of the median estimate (None: the plain key).
    cap: float | None = DEFAULT_CAP
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
    ``oracle``, ``heuristic``, ``lexical`` (the bundled LexicalPredictor),
    ``lexical:PATH`` (a LexicalPredictor model file, e.g. one of your own) or
    ``noisySIGMA`` (the oracle with log-normal noise, e.g. ``noisy1.5``).
    """
    if name in PREDICTORS:
        return PREDICTORS[name]
    if name == "unseen":
        return _unseen
    m = re.fullmatch(r"noisy([0-9]+(?:\.[0-9]*)?|\.[0-9]+)", name)
    if m:
        sigma = float(m.group(1))
        return lambda context: NoisyOraclePredictor(sigma)
    if name == "lexical":
        from ..predictors import LexicalPredictor

        return lambda context: LexicalPredictor()
    if name.startswith("lexical:"):
        from ..predictors import LexicalPredictor

        path = name.removeprefix("lexical:")
        return lambda context: LexicalPredictor(model_path=path)
    raise ValueError(
        f"unknown predictor {name!r}; choose from sjfsched, unseen, oracle, heuristic, lexical, "
        "lexical:PATH, noisySIGMA"
    )


def _fcfs(backend: Backend, context: PolicyContext) -> Scheduler:
    return Scheduler(backend, predictor=ConstantPredictor(), max_wait=None, preempt=False)


def _clairvoyant(backend: Backend, context: PolicyContext) -> Scheduler:
    predictor, _ = clairvoyant_predictor(context.clairvoyant_model)
    return ClairvoyantScheduler(backend, predictor=predictor, short_latency=context.short_latency)


def _parse_seconds(text: str) -> float | None:
    return None if text.lower() in ("none", "inf") else float(text)


class FrozenPredictor:
    """A predictor that no longer learns: ``observe`` does nothing."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def predict(self, request: Request, /) -> Prediction:
        return self.predictor.predict(request)

    def predict_many(self, requests: Sequence[Request], /) -> list[Prediction]:
        return predict_all(self.predictor, requests)


def _without_adaptation(predictor: Predictor) -> Predictor:
    from ..predictors import LexicalPredictor

    if not isinstance(predictor, LexicalPredictor):
        raise ValueError("adapt=0 applies to the lexical predictors only (sjfsched, unseen, lexical)")
    return LexicalPredictor(model_path=predictor.model_path, adapt=False)


def warmed(predictor: Predictor, history: Sequence[TraceItem], n: int) -> Predictor:
    """``predictor`` after observing ``n`` completions drawn from ``history``, then frozen.

    What a deployment knows after ``n`` completed requests of its traffic,
    measured on prompts it has not seen (the run draws from the other half
    of a ``/fresh`` trace), and not learning during the run, so that no
    prompt drawn twice is ranked by what its first completion taught.
    """
    if not history:
        raise ValueError("warm=N needs a NAME/fresh trace (its other half is the history learnt from)")
    observe = getattr(predictor, "observe", None)
    if observe is None:
        raise ValueError(
            f"warm=N needs a predictor that learns (observe); {type(predictor).__name__} does not"
        )
    rng = random.Random(f"warm/{n}")
    for item in rng.choices(history, k=n):
        request = item.request()
        observe(request, predictor.predict(request), item.output_tokens)
    return FrozenPredictor(predictor)


#: The key before the estimate cap (sjfsched 0.1's first defaults): aging 0.2, no cap.
PLAIN_AGING = 0.2

#: Short names for longer policy names.
ALIASES: dict[str, str] = {
    "plain": f"sjfsched@cap=none,aging={PLAIN_AGING:g}",
    "plain-unseen": f"unseen@cap=none,aging={PLAIN_AGING:g}",
    "plain-oracle": f"oracle@cap=none,aging={PLAIN_AGING:g}",
}


def policy_named(name: str) -> Policy:
    """Build a policy from its name.

    ``fcfs``, ``clairvoyant``, ``plain`` (the key without the estimate cap,
    aging 0.2: the defaults before the cap), ``plain-unseen``,
    ``plain-oracle``, or ``<predictor>`` optionally followed by
    ``@key=value,...`` with keys ``aging``, ``max_wait`` (seconds or
    ``none``), ``cap`` (multiple of the median estimate, or ``none``),
    ``adapt`` (``0``: a lexical predictor without adaptation), ``preempt``
    (``0``: running answers are never paused; ``1``, the default: they are) and ``warm``
    (``N``: the predictor first learns from ``N`` completions of a
    ``NAME/fresh`` trace's other half, then stops learning).
    The predictor is ``sjfsched`` (the default predictor), ``unseen``,
    ``oracle``, ``heuristic``, ``lexical`` or ``noisySIGMA``.  Unset keys take
    the scheduler's defaults.  Examples: ``sjfsched``, ``oracle``,
    ``sjfsched@aging=0.2``, ``sjfsched@max_wait=600``,
    ``unseen@cap=none,aging=0.2``.
    """
    if name == "fcfs":
        return Policy("fcfs", _fcfs, "fcfs")
    if name == "clairvoyant":
        _, real = clairvoyant_predictor()
        return Policy("clairvoyant", _clairvoyant, "clairvoyant", 0.0, None, faithful=real)
    base, _, params = ALIASES.get(name, name).partition("@")
    if base in ("fcfs", "clairvoyant"):
        raise ValueError(f"{base} takes no @options (it is a policy of its own, not a predictor): {name!r}")
    predictor = predictor_factory(base)
    aging: float = DEFAULT_AGING
    max_wait: float | None = DEFAULT_MAX_WAIT
    cap: float | None = DEFAULT_CAP
    adapt = True
    preempt = DEFAULT_PREEMPT
    warm = 0
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
                cap = _parse_seconds(value)
                if cap is not None and not (math.isfinite(cap) and cap > 0):
                    raise ValueError("cap must be a number > 0 or none")
            elif key == "adapt":
                if value not in ("0", "1"):
                    raise ValueError("adapt must be 0 or 1")
                adapt = value == "1"
            elif key == "preempt":
                if value not in ("0", "1"):
                    raise ValueError("preempt must be 0 or 1")
                preempt = value == "1"
            elif key == "warm":
                warm = int(value)
                if warm < 1:
                    raise ValueError("warm must be an int >= 1")
            else:
                raise ValueError(f"unknown key {key!r} (aging, max_wait, cap, adapt, preempt, warm)")
        except ValueError as exc:
            raise ValueError(f"bad policy name {name!r}: {part!r}: {exc}") from None

    def make(backend: Backend, context: PolicyContext) -> Scheduler:
        if base == "sjfsched" and not params:
            if context.bundled_model is None:
                return Scheduler(backend)  # exactly what a user gets
            # The same, with the snapshot of the bundled model the run started with.
            return Scheduler(backend, predictor=_default(context))
        chosen = predictor(context)
        if not adapt:
            chosen = _without_adaptation(chosen)
        if warm:
            chosen = warmed(chosen, context.history, warm)
        return Scheduler(backend, predictor=chosen, aging=aging, cap=cap, max_wait=max_wait, preempt=preempt)

    return Policy(name, make, base, aging, max_wait, cap)


#: The policies every table shows.
STANDARD_POLICIES: tuple[str, ...] = (
    "fcfs",
    "sjfsched",
    "unseen",
    "oracle",
    "clairvoyant",
    "plain",
    "plain-unseen",
    "plain-oracle",
)
#: Aging values of the sweep of the default key (seconds of estimate forgiven per second waited).
AGING_SWEEP: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
#: Aging values of the sweep of the plain key (no estimate cap).
PLAIN_AGING_SWEEP: tuple[float, ...] = (0.0, 0.05, 0.2, 0.5, 1.0)
#: max_wait values of the sweep, in seconds (None: no bound).
MAX_WAIT_SWEEP: tuple[float | None, ...] = (300.0, 900.0, 1800.0, 3600.0, None)
#: Log-normal noise levels of the predictor-quality sweep (see NoisyOraclePredictor).
NOISE_SWEEP: tuple[float, ...] = (1.0, 2.0)


def sweep_names(kind: str) -> list[str]:
    """Policy names of one sweep.

    ``aging``: the default key across AGING_SWEEP (other settings at their
    defaults); ``plain-aging``: the plain key (no estimate cap) across
    PLAIN_AGING_SWEEP; both with the ``unseen`` predictor (the one a
    deployment on traffic unlike the training corpora gets); ``max_wait``:
    the defaults across MAX_WAIT_SWEEP; ``noise``: the default and the plain
    key with a noisy oracle for a predictor.
    """
    if kind == "aging":
        return [f"unseen@aging={a:g}" for a in AGING_SWEEP]
    if kind == "plain-aging":
        return [f"unseen@cap=none,aging={a:g}" for a in PLAIN_AGING_SWEEP]
    if kind == "max_wait":
        return [f"sjfsched@max_wait={'none' if w is None else f'{w:g}'}" for w in MAX_WAIT_SWEEP]
    if kind == "noise":
        names = []
        for sigma in NOISE_SWEEP:
            names.append(f"noisy{sigma:g}")
            names.append(f"noisy{sigma:g}@cap=none,aging={PLAIN_AGING:g}")
        return names
    raise ValueError(f"unknown sweep {kind!r}: aging, plain-aging, max_wait or noise")


SWEEPS: tuple[str, ...] = ("aging", "plain-aging", "max_wait", "noise")


def all_sweep_names() -> list[str]:
    """Policy names of every sweep."""
    return [name for kind in SWEEPS for name in sweep_names(kind)]
