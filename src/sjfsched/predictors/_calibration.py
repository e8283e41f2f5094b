"""Online calibration: learn how long a deployment's model really answers.

The lexical model ranks prompts well, but its scale is that of the training
corpora: a terse 1B model answers shorter, a chatty 70B model longer.  A
:class:`LengthCalibration` fits ``log(1 + actual) ~ offset + slope * raw``
over the deployment's completed requests (``raw`` is the model's log-length
score), with exponential forgetting so it follows a model that changes, and
a prior (the identity map, worth ``prior_weight`` observations) so the first
few observations do not decide it.  It is a least-squares fit: a few absurd
lengths (a miscount, counted as at most a million tokens) still move every
prediction until a few hundred later requests have outweighed them.  It
also tracks the spread of the residuals, which gives ``p_long``.

The slope is kept within ``[0.1, 3]``: positive, so calibration never changes
the ranking of two prompts, only the lengths put on them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import numbers
import os
import secrets
import stat
from pathlib import Path
from typing import Any

__all__ = [
    "LengthCalibration",
    "read_state",
    "require_length",
    "saved_count",
    "saved_number",
    "write_atomically",
    "write_state",
]

#: An observed length counts as at most this many tokens' log (one answer of
#: a billion tokens, or a miscount, must not throw the fit off for hours).
_MAX_Y = math.log1p(1e6)
#: scores further from 0 are not observed (a model's score is a log length)
_MAX_RAW = 1e6

_STATE_KEYS = ("s0", "sx", "sy", "sxx", "sxy", "sr", "n")
_MIN_SLOPE = 0.1
_MAX_SLOPE = 3.0


class LengthCalibration:
    """A running, forgetting fit of actual log-length against the model's score.

    ``center`` and ``spread`` describe the model's scores on its training
    data (mean and variance), ``sigma`` the spread of the training residuals;
    they shape the prior.  ``decay`` is the weight an observation keeps after
    each new one (0.998: a half-life of about 350 requests).
    """

    def __init__(
        self,
        *,
        center: float,
        spread: float,
        sigma: float,
        prior_weight: float = 30.0,
        decay: float = 0.998,
    ) -> None:
        if not (0.0 < decay <= 1.0):
            raise ValueError(f"decay must be within (0, 1], got {decay!r}")
        if not (prior_weight > 0 and math.isfinite(prior_weight)):
            raise ValueError(f"prior_weight must be > 0, got {prior_weight!r}")
        for name, value in (("center", center), ("spread", spread), ("sigma", sigma)):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        self.center = float(center)
        self.spread = max(float(spread), 1e-6)
        self.sigma0 = max(float(sigma), 1e-3)
        self.prior_weight = float(prior_weight)
        self.decay = float(decay)
        self.reset()

    def reset(self) -> None:
        """Forget every observation: back to the identity map."""
        self.s0 = self.sx = self.sy = self.sxx = self.sxy = self.sr = 0.0
        self.n = 0
        self._refit()

    @property
    def observations(self) -> int:
        """How many completed requests were observed (before forgetting)."""
        return self.n

    def observe(self, raw: float, output_tokens: float) -> None:
        """Add one completed request: the model's raw score and the real length.

        A length that is not a number (a string, a bool) raises ``TypeError``;
        a negative, NaN or infinite one ``ValueError``.
        """
        require_length(output_tokens)
        try:
            raw, output_tokens = float(raw), float(output_tokens)
        except (OverflowError, TypeError, ValueError):  # e.g. an int past float's range
            return
        if not (abs(raw) <= _MAX_RAW and math.isfinite(output_tokens)) or output_tokens < 0:
            return  # NaN, or a score no log-length model gives: its square would overflow the sums
        y = min(math.log1p(output_tokens), _MAX_Y)
        residual = y - self.log_length(raw)
        d = self.decay
        self.s0 = self.s0 * d + 1.0
        self.sx = self.sx * d + raw
        self.sy = self.sy * d + y
        self.sxx = self.sxx * d + raw * raw
        self.sxy = self.sxy * d + raw * y
        self.sr = self.sr * d + min(residual * residual, 25.0)
        self.n += 1
        self._refit()

    def _refit(self) -> None:
        k = self.prior_weight
        c = self.center
        second = self.spread + c * c
        s0 = self.s0 + k
        mx = (self.sx + k * c) / s0
        my = (self.sy + k * c) / s0
        vxx = (self.sxx + k * second) / s0 - mx * mx
        vxy = (self.sxy + k * second) / s0 - mx * my
        slope = vxy / vxx if vxx > 1e-9 else 1.0
        self.slope = min(max(slope, _MIN_SLOPE), _MAX_SLOPE)
        self.offset = my - self.slope * mx
        self.sigma = math.sqrt((self.sr + k * self.sigma0**2) / (self.s0 + k))

    def log_length(self, raw: float) -> float:
        """The calibrated typical (median) ``log(1 + tokens)`` for a raw score."""
        return self.offset + self.slope * raw

    # ---------------------------------------------------------------- state

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "center": self.center,
            "spread": self.spread,
            "sigma": self.sigma0,
            "prior_weight": self.prior_weight,
            "decay": self.decay,
            "state": {key: getattr(self, key) for key in _STATE_KEYS},
        }

    def load_dict(self, data: Any, *, where: str = "calibration") -> None:
        """Take the observations of a saved calibration (its prior stays this one's)."""
        try:
            if data.get("version") != 1:
                raise ValueError(f"unknown version {data.get('version')!r}")
            state = data["state"]
            values = {key: saved_number(state[key], key) for key in _STATE_KEYS}
            saved_count(state["n"], "n")
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{where}: not a sjfsched calibration ({exc})") from exc
        if not all(math.isfinite(v) for v in values.values()) or any(
            values[key] < 0 for key in ("s0", "sxx", "sr", "n")
        ):
            raise ValueError(f"{where}: calibration state holds invalid numbers")
        decay = data.get("decay", self.decay)  # what the state was learnt with
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay <= 1.0:
            raise ValueError(f"{where}: calibration decay must be within (0, 1], got {decay!r}")
        why = _impossible(values, float(decay))
        if why is not None:
            raise ValueError(f"{where}: calibration state holds numbers no observations give ({why})")
        # Fit a copy first: a state that cannot be fit leaves this one as it was.
        trial = LengthCalibration(
            center=self.center, spread=self.spread, sigma=self.sigma0,
            prior_weight=self.prior_weight, decay=self.decay,
        )  # fmt: skip
        for key in _STATE_KEYS:
            setattr(trial, key, values[key])
        trial.n = int(values["n"])
        try:
            trial._refit()
        except (ArithmeticError, ValueError) as exc:
            raise ValueError(f"{where}: calibration state holds invalid numbers ({exc})") from exc
        for key in _STATE_KEYS:
            setattr(self, key, getattr(trial, key))
        self._refit()


def _impossible(v: dict[str, float], decay: float = 1.0) -> str | None:
    """What in a state's sums no run of :meth:`LengthCalibration.observe` could give, if anything.

    Each observation adds weight 1 (then decays by ``decay``, so the weight
    never reaches ``1 / (1 - decay)``), a score within
    ``_MAX_RAW`` of 0, a log length within ``[0, _MAX_Y]`` and a squared
    residual of at most 25: the sums are bounded by their weight ``s0``.
    A little slack is left for rounding.
    """
    s0 = v["s0"] * (1 + 1e-9) + 1e-12
    most = 1.0 / (1.0 - decay) if decay < 1.0 else math.inf
    checks = (
        (v["s0"] <= v["n"] + 1e-9, "s0 > n"),
        (v["s0"] <= most * (1 + 1e-9), f"s0 > 1 / (1 - decay) = {most:g}"),
        (abs(v["sx"]) <= _MAX_RAW * s0, "|sx| > 1e6 s0"),
        (-1e-12 <= v["sy"] <= _MAX_Y * s0, "sy outside [0, log(1e6) s0]"),
        (v["sxx"] <= _MAX_RAW * _MAX_RAW * s0, "sxx > 1e12 s0"),
        (v["sx"] * v["sx"] <= v["sxx"] * s0 * (1 + 1e-6) + 1e-12, "sx^2 > sxx s0"),
        (abs(v["sxy"]) <= _MAX_RAW * _MAX_Y * s0, "|sxy| > 1e6 log(1e6) s0"),
        (v["sr"] <= 25.0 * s0, "sr > 25 s0"),
    )
    return next((why for ok, why in checks if not ok), None)


def write_state(path: str | os.PathLike[str], data: Any) -> None:
    """Write a predictor's state as JSON, atomically and durably.

    The JSON goes to a temporary file beside the state, is flushed to disk,
    then renamed over it, so a crash at any point leaves the old state or
    the new one, whole.  A symbolic link is followed (its target is
    replaced), and a file that exists keeps its permissions.  A state with
    a number JSON cannot hold (NaN, an infinity) raises ``ValueError``
    before any file is touched.
    """
    write_atomically(path, json.dumps(data, indent=1, allow_nan=False).encode("utf-8"))


def write_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash, or a full disk, leaves the old file or the new
    one, whole (as :func:`write_state` does, which uses it; ``sjfsched train`` too)."""
    path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file():  # renamed over, a pipe or a device would be replaced
        raise OSError(errno.EINVAL, "not a regular file: a pipe or a device", str(path))
    # A temporary file of its own (created exclusively, with the umask's mode):
    # several writers of one path, processes or predictors sharing a state
    # file, must not write into each other's.  Its name is cut to fit the
    # system's 255 bytes, whatever the length of the file's own.
    head = os.fsdecode(os.fsencode(path.name)[:200])
    tmp = path.with_name(f"{head}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        with tmp.open("xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Flush a directory's entries to disk (the rename), where the system allows it."""
    with contextlib.suppress(OSError, AttributeError):  # Windows opens no directory so
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def saved_number(value: object, name: str) -> float:
    """A number read from a saved state: ``TypeError`` naming it unless JSON wrote it as one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def saved_count(value: object, name: str) -> int:
    """A count read from a saved state: ``TypeError`` naming it unless it is a whole number."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    return value


def require_length(output_tokens: object) -> None:
    """``TypeError`` unless ``output_tokens`` is a real number (a bool, a string or bytes is not);
    ``ValueError`` for a negative, NaN or infinite one, or one past a float's range."""
    if isinstance(output_tokens, (bool, str, bytes)) or not isinstance(output_tokens, numbers.Real):
        raise TypeError(f"output_tokens must be a number of tokens, got {output_tokens!r}")
    try:
        tokens = float(output_tokens)
    except OverflowError:  # an int past a float's range
        raise ValueError("output_tokens must be a finite number >= 0, got one past a float's range") from None
    if not (math.isfinite(tokens) and tokens >= 0):
        raise ValueError(f"output_tokens must be a finite number >= 0, got {output_tokens!r}")


def read_state(path: str | os.PathLike[str]) -> Any:
    """Read a state written by :func:`write_state`; raises OSError, or ValueError if it is not JSON."""
    file = Path(path)
    if file.exists() and not file.is_file():  # a directory, a pipe: reading it would fail late or hang
        raise ValueError("not a regular file")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from exc
    except RecursionError:
        raise ValueError("nested too deeply to be a predictor state") from None
