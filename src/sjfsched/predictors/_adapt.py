"""Online adaptation: learn which prompts of *this* deployment answer long.

The bundled model ranks prompts from corpora it was trained on; a
deployment's own prompts may look like none of them (a code assistant, a
support bot with its own templates).  A :class:`ScoreCorrection` is a second,
sparse linear model over the same features, added to the model's score and
learnt online from the deployment's completed requests: after each one it
takes a normalised least-mean-squares step (NLMS) towards the residual of
the real length (made into a target on the model's score scale as in
training, see :class:`TargetMap`) over the model's score, and replays a few
earlier completions from a small buffer so that what it learns does not
hinge on the order of arrival.

Cost (``benchmarks/predictor.py``): ``observe()`` with adaptation a tenth
to a quarter of a millisecond per completed request on the machines it ran
on (the prompt is encoded and scored afresh, then four learning steps); a
prediction gathers the correction's weights too once something was learnt.
Memory: one float32 per row of the model's weight table (368,313 rows, 1.5 MB,
for the bundled model), allocated at the first completion, and the replay
buffer.
"""

from __future__ import annotations

import base64
import bisect
import math
import random
from collections import deque
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, Final

import attrs
import numpy as np
import numpy.typing as npt

from ._calibration import saved_count, saved_number

__all__ = ["ScoreCorrection", "TargetMap"]


def _b64(array: npt.NDArray[Any]) -> str:
    return base64.b64encode(array.tobytes()).decode("ascii")


def _random_state(randomness: random.Random) -> list[Any]:
    version, internal, gauss = randomness.getstate()
    return [version, list(internal), gauss]


def _floats(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


#: NLMS step size, replays per observation, replay buffer length: chosen on
#: the shared corpora (see docs/predictor.md, "Adapting to your traffic").
STEP: Final = 0.1
REPLAYS: Final = 3
BUFFER: Final = 512
#: The longest answer a target is made from, without a target map (as the calibration's cap).
_MAX_TOKENS: Final = 1e6
#: How far beyond its targets' span a residual may reach: the model's score is kept
#: within its targets' range widened by 0.5 on each side (``SCORE_MARGIN``).
_RESIDUAL_SLACK: Final = 1.0
#: A saved bias or weight larger than this is refused: far beyond what learning
#: gives (a weight grows with the residual over its feature's value, which can be
#: 1/28 for a byte 4-gram of a long prompt: tens, in a long run of near-identical
#: prompts), and small enough that a prompt's correction cannot overflow.
_SAVED_BOUND: Final = 1e4


@attrs.frozen
class TargetMap:
    """How a model's training target was made from an answer's length, on its score scale.

    A piecewise-linear, non-decreasing function from ``log(1 + tokens)`` to
    the score, flat beyond its first and last knots: ``xs`` (strictly
    increasing) and ``ys`` (non-decreasing).  A target clipped to ``[low,
    high]`` tokens is the identity between ``log1p(low)`` and
    ``log1p(high)``; a rank target (``sjfsched train``'s default) follows the
    training answers' quantiles.
    """

    xs: tuple[float, ...] = attrs.field(converter=_floats)
    ys: tuple[float, ...] = attrs.field(converter=_floats)

    def __attrs_post_init__(self) -> None:
        xs, ys = self.xs, self.ys
        if len(xs) != len(ys) or not xs:
            raise ValueError(f"a target map needs as many xs as ys, at least one: got {len(xs)}, {len(ys)}")
        if not all(math.isfinite(v) for v in (*xs, *ys)):
            raise ValueError("a target map's knots must be finite")
        if any(b <= a for a, b in pairwise(xs)) or any(b < a for a, b in pairwise(ys)):
            raise ValueError("a target map's xs must increase and its ys must not decrease")

    @classmethod
    def clipped(cls, low: float, high: float) -> TargetMap:
        """``log(1 + tokens)`` with tokens clipped to ``[low, high]``."""
        if not 0 <= low < high or not math.isfinite(high):
            raise ValueError(f"a clip range needs 0 <= low < high, got ({low!r}, {high!r})")
        xs = (math.log1p(low), math.log1p(high))
        return cls(xs, xs)

    def __call__(self, output_tokens: float) -> float:
        x = math.log1p(output_tokens)
        xs, ys = self.xs, self.ys
        i = bisect.bisect_right(xs, x)
        if i == 0:
            return ys[0]
        if i == len(xs):
            return ys[-1]
        x0, x1 = xs[i - 1], xs[i]
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)


class ScoreCorrection:
    """A sparse linear correction to a model's score, learnt one completion at a time.

    ``size``: rows of the model's weight table (feature ids index it);
    ``target_map``: how the model's training target was made from an
    answer's length (``None``: plain ``log(1 + tokens)``).
    """

    def __init__(
        self,
        size: int,
        target_map: TargetMap | None = None,
        *,
        step: float = STEP,
        replays: int = REPLAYS,
        buffer: int = BUFFER,
        seed: int = 0,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        if not (0.0 < step <= 1.0):
            raise ValueError(f"step must be within (0, 1], got {step!r}")
        if replays < 0 or buffer < 1:
            raise ValueError(f"replays must be >= 0 and buffer >= 1, got {replays!r}, {buffer!r}")
        self.size = size
        self.target_map = target_map
        self.step = float(step)
        self.replays = int(replays)
        self._buffer: deque[tuple[npt.NDArray[np.int32], npt.NDArray[np.float32], float]] = deque(
            maxlen=buffer
        )
        self._random = random.Random(seed)
        #: The largest residual an observation gives (larger ones are clipped to it):
        #: its target's span on the score scale plus the score's margin.
        self.limit = (
            target_map.ys[-1] - target_map.ys[0] if target_map is not None else math.log1p(_MAX_TOKENS)
        ) + _RESIDUAL_SLACK
        #: One weight per row of the model's table; ``None`` until something is learnt.
        self.weights: npt.NDArray[np.float32] | None = None
        self.bias = 0.0
        self.observations = 0

    def reset(self) -> None:
        """Forget everything learnt."""
        self.weights = None
        self.bias = 0.0
        self.observations = 0
        self._buffer.clear()

    # value() and row_weights() run in predict(), which takes no lock: they read the weights
    # once, as reset() (from load_calibration or reset_calibration in another thread) may
    # drop them at any moment.

    def value(self, ids: npt.NDArray[np.int32], values: npt.NDArray[np.float32]) -> float:
        """The correction for one text's feature rows (as ``LexicalFeaturizer.encode`` gives them)."""
        weights = self.weights
        if weights is None:
            return 0.0
        return float(np.dot(weights.take(ids), values)) + self.bias

    def row_weights(self, ids: npt.NDArray[np.int32]) -> npt.NDArray[np.float32]:
        """The weight of each row in ``ids`` (zeros before anything is learnt)."""
        weights = self.weights
        if weights is None:
            return np.zeros(len(ids), np.float32)
        return weights.take(ids)

    def target(self, output_tokens: float) -> float:
        """The answer's length on the model's score scale, as its training target was made."""
        if self.target_map is not None:
            return self.target_map(output_tokens)
        return math.log1p(min(output_tokens, _MAX_TOKENS))

    def learn(
        self,
        ids: npt.NDArray[np.int32],
        values: npt.NDArray[np.float32],
        base_score: float,
        output_tokens: float,
    ) -> None:
        """One completed request: its features, the model's score of it, its real length."""
        try:
            base_score, output_tokens = float(base_score), float(output_tokens)
        except (OverflowError, TypeError, ValueError):  # e.g. an int past float's range
            return
        if not (math.isfinite(base_score) and math.isfinite(output_tokens)) or output_tokens < 0:
            return
        if len(ids):
            rows, inverse = np.unique(ids, return_inverse=True)
            summed = np.bincount(inverse, weights=values).astype(np.float32)
        else:
            rows, summed = ids, values
        limit = self.limit
        residual = min(max(self.target(output_tokens) - base_score, -limit), limit)
        entry = (rows, summed, residual)
        self._update(*entry)
        buffer = self._buffer
        if buffer and self.replays:
            pick = self._random.randrange
            n = len(buffer)
            for _ in range(self.replays):
                self._update(*buffer[pick(n)])
        buffer.append(entry)
        self.observations += 1

    def _update(self, rows: npt.NDArray[np.int32], summed: npt.NDArray[np.float32], residual: float) -> None:
        w = self.weights
        if w is None:
            w = self.weights = np.zeros(self.size, np.float32)
        error = residual - (float(np.dot(w.take(rows), summed)) + self.bias)
        gain = self.step * error / (float(np.dot(summed, summed)) + 1.0)
        if not math.isfinite(gain):  # cannot happen from a state this class made or loaded
            return
        w[rows] += np.float32(gain) * summed
        self.bias += gain

    # ---------------------------------------------------------------- state

    def to_dict(self) -> dict[str, Any]:
        """The learnt state (nonzero weights, base64 of little-endian int32 rows and float32 values)."""
        return self.encode(self.snapshot())

    def snapshot(self) -> tuple[Any, ...]:
        """A copy of the learnt state, quick to take (under the lock :meth:`observe` waits for);
        :meth:`encode` makes it the dict of :meth:`to_dict`, outside it."""
        weights = np.zeros(0, np.float32) if self.weights is None else self.weights.copy()
        return (
            self.size,
            self.observations,
            self.bias,
            weights,
            list(self._buffer),
            _random_state(self._random),
        )

    @staticmethod
    def encode(snapshot: tuple[Any, ...]) -> dict[str, Any]:
        """The dict of :meth:`to_dict`, from a :meth:`snapshot`."""
        size, observations, bias, weights, entries, randomness = snapshot
        rows = np.flatnonzero(weights).astype("<i4")
        return {
            "size": size,
            "observations": observations,
            "bias": bias,
            "rows": _b64(rows),
            "weights": _b64(weights[rows].astype("<f4")),
            # the replay buffer, so that a restart learns on as it would have
            "replay": {
                "lengths": _b64(np.array([len(e[0]) for e in entries], "<i4")),
                "rows": _b64(
                    np.concatenate([e[0] for e in entries] or [np.zeros(0, np.int32)]).astype("<i4")
                ),
                "values": _b64(
                    np.concatenate([e[1] for e in entries] or [np.zeros(0, np.float32)]).astype("<f4")
                ),
                "residuals": _b64(np.array([e[2] for e in entries], "<f8")),
                "random": randomness,
            },
        }

    def load_dict(self, data: Any, *, where: str = "correction") -> None:
        """Take a state written by :meth:`to_dict`; raises ValueError if it does not fit this model."""
        try:
            size = saved_count(data["size"], "size")
            observations = saved_count(data["observations"], "observations")
            bias = saved_number(data["bias"], "bias")
            rows = np.frombuffer(base64.b64decode(data["rows"], validate=True), "<i4")
            weights = np.frombuffer(base64.b64decode(data["weights"], validate=True), "<f4")
            replay = data.get("replay")
            if replay is not None:  # states written before it was saved have none
                lengths = np.frombuffer(base64.b64decode(replay["lengths"], validate=True), "<i4")
                replay_rows = np.frombuffer(base64.b64decode(replay["rows"], validate=True), "<i4")
                values = np.frombuffer(base64.b64decode(replay["values"], validate=True), "<f4")
                residuals = np.frombuffer(base64.b64decode(replay["residuals"], validate=True), "<f8")
                randomness = random.Random()
                version, internal, gauss = replay["random"]
                randomness.setstate(
                    (int(version), tuple(map(int, internal)), None if gauss is None else float(gauss))
                )
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
            raise ValueError(f"{where}: not a sjfsched score correction ({exc!r})") from exc
        if size != self.size:  # first: the replay's rows are checked against the size
            raise ValueError(f"{where}: correction is for a model with {size} rows, this one has {self.size}")
        entries = []
        if replay is not None:
            if (
                len(lengths) != len(residuals)
                or (len(lengths) and lengths.min() < 0)
                or int(lengths.sum()) != len(replay_rows)
                or len(replay_rows) != len(values)
                or (len(replay_rows) and (replay_rows.min() < 0 or replay_rows.max() >= size))
                or not (np.isfinite(values).all() and np.isfinite(residuals).all())
                or (len(residuals) and float(np.abs(residuals).max()) > self.limit * (1 + 1e-9))
            ):
                raise ValueError(f"{where}: correction's replay buffer is inconsistent")
            ends = np.cumsum(lengths)
            entries = [
                (
                    replay_rows[end - n : end].astype(np.int32),
                    values[end - n : end].astype(np.float32),
                    float(r),
                )
                for n, end, r in zip(lengths.tolist(), ends.tolist(), residuals.tolist(), strict=True)
            ]
        if len(rows) != len(weights) or (len(rows) and (rows.min() < 0 or rows.max() >= size)):
            raise ValueError(f"{where}: correction rows are inconsistent")
        if not (math.isfinite(bias) and np.isfinite(weights).all()) or observations < 0:
            raise ValueError(f"{where}: correction holds invalid numbers")
        if not observations and (len(rows) or bias):
            raise ValueError(f"{where}: correction holds weights but no observations")
        largest = max(abs(bias), float(np.abs(weights).max()) if len(weights) else 0.0)
        if largest > _SAVED_BOUND:
            raise ValueError(
                f"{where}: correction holds a weight or bias of {largest:.3g}, beyond any learnt one "
                f"(at most {_SAVED_BOUND:.3g} on the log-length scale)"
            )
        self.reset()
        if observations:
            self.weights = np.zeros(size, np.float32)
            self.weights[rows] = weights
        self.bias = bias
        self.observations = observations
        if replay is not None:
            self._buffer.extend(entries)  # the latest, if this buffer is shorter
            self._random = randomness
