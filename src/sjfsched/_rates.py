"""Online estimates of a backend's prefill and decode rates."""

from __future__ import annotations

import math
from typing import final

from ._records import _as_float

__all__ = ["DEFAULT_DECODE_RATE", "DEFAULT_PREFILL_RATE", "RateEstimator"]

#: Starting prefill rate (prompt tokens per second): a small model on a laptop CPU
#: or a mid-range GPU reads a prompt at several hundred tokens per second.
DEFAULT_PREFILL_RATE = 400.0
#: Starting decode rate (output tokens per second) of one request.
DEFAULT_DECODE_RATE = 30.0

# Each observation keeps this fraction of the weight of everything before it:
# an effective memory of about 1 / (1 - 0.9) = 10 requests.
_DECAY = 0.9


def _checked(name: str, given: object) -> float:
    value = _as_float(given)  # an int, numpy's numbers too
    if not (isinstance(value, float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of tokens per second, got {given!r}")
    return value


@final
class RateEstimator:
    """Tokens per second for prefill and decode, learned from finished requests.

    Each rate is a ratio of exponentially decayed sums (tokens over seconds),
    so long requests weigh more than short ones.  The starting rate counts as
    one second of observed work, so real observations take over within a
    request or two; each observation keeps 90% of the weight of the past (a
    memory of about ten requests).  A rate set by hand holds until the next
    observation; one that no estimate could use (0, negative, not finite) is
    refused with :class:`ValueError`.
    """

    __slots__ = (
        "_decode_rate",
        "_decode_seconds",
        "_decode_tokens",
        "_prefill_rate",
        "_prefill_seconds",
        "_prefill_tokens",
    )

    def __init__(
        self, prefill_rate: float = DEFAULT_PREFILL_RATE, decode_rate: float = DEFAULT_DECODE_RATE
    ) -> None:
        self._prefill_rate = _checked("prefill_rate", prefill_rate)
        self._decode_rate = _checked("decode_rate", decode_rate)
        # The starting rates count as one second of observed work each.
        self._prefill_tokens, self._prefill_seconds = self._prefill_rate, 1.0
        self._decode_tokens, self._decode_seconds = self._decode_rate, 1.0

    # Checked when set (Scheduler.rates is this object: a rate of 0 set there would fail every
    # later estimate with a ZeroDivisionError); the learning below sets them unchecked.
    @property
    def prefill_rate(self) -> float:
        """Prompt tokens read per second."""
        return self._prefill_rate

    @prefill_rate.setter
    def prefill_rate(self, value: float) -> None:
        self._prefill_rate = _checked("prefill_rate", value)

    @property
    def decode_rate(self) -> float:
        """Output tokens written per second (one request)."""
        return self._decode_rate

    @decode_rate.setter
    def decode_rate(self, value: float) -> None:
        self._decode_rate = _checked("decode_rate", value)

    def __repr__(self) -> str:
        return f"RateEstimator(prefill_rate={self._prefill_rate!r}, decode_rate={self._decode_rate!r})"

    def service_time(self, prompt_tokens: float, output_tokens: float) -> float:
        """Seconds to read ``prompt_tokens`` and write ``output_tokens``."""
        return prompt_tokens / self._prefill_rate + output_tokens / self._decode_rate

    def observe(
        self,
        prompt_tokens: float,
        output_tokens: int,
        started: float,
        first_token: float | None,
        finished: float,
    ) -> None:
        """Learn from one finished request's timings.

        Prefill time is taken as start to first token, decode time as first
        token to the end (for ``output_tokens - 1`` tokens).  The caller passes
        ``first_token=started`` for an answer that came in one piece (the
        scheduler tells it by its chunks): then all of it counts as decoding.
        Requests without a first token, or whose times are zero, teach nothing.
        """
        if first_token is None or output_tokens < 1:
            return
        prefill = first_token - started
        if prompt_tokens > 0 and prefill > 1e-6:
            self._prefill_tokens = _DECAY * self._prefill_tokens + prompt_tokens
            self._prefill_seconds = _DECAY * self._prefill_seconds + prefill
            self._prefill_rate = self._prefill_tokens / self._prefill_seconds
        decode = finished - first_token
        if output_tokens > 1 and decode > 1e-6:
            self._decode_tokens = _DECAY * self._decode_tokens + (output_tokens - 1)
            self._decode_seconds = _DECAY * self._decode_seconds + decode
            self._decode_rate = self._decode_tokens / self._decode_seconds
