"""Backend speed profiles: the prefill and decode rates a simulated server runs at."""

from __future__ import annotations

import attrs

from ..backends import SimulatedBackend
from ._traces import Trace

__all__ = ["CHUNK_SECONDS", "PROFILES", "Profile"]

#: Most seconds of decoding between two chunks of the simulated server where answers may be
#: paused (``Scheduler(preempt=True)``).  It also streams a chunk at the first token after each
#: arrival (``SimulatedBackend.chunk_after``), so an arriving request is ranked against a running
#: answer at once; as keys are fixed at arrival, these periodic chunks matter only where what is
#: left of an answer ranks later as it goes on (a prompt read more slowly than answers are written).
CHUNK_SECONDS = 2.0


@attrs.frozen
class Profile:
    """A serial backend's speed, in tokens per second.

    A request's service time is ``prompt_tokens / prefill_rate +
    output_tokens / decode_rate``.
    """

    name: str
    prefill_rate: float
    decode_rate: float
    description: str = ""

    def __attrs_post_init__(self) -> None:
        for field in ("prefill_rate", "decode_rate"):
            if not getattr(self, field) > 0:
                raise ValueError(f"Profile.{field} must be > 0, got {getattr(self, field)!r}")

    def service_time(self, prompt_tokens: float, output_tokens: float) -> float:
        return prompt_tokens / self.prefill_rate + output_tokens / self.decode_rate

    def mean_service_time(self, trace: Trace) -> float:
        """Mean seconds per request of ``trace`` on this backend."""
        return sum(self.service_time(i.prompt_tokens, i.output_tokens) for i in trace.items) / len(trace)

    def mean_short_service_time(self, trace: Trace) -> float:
        """Mean seconds per short (< 200 tokens) request: Clairvoyant's calibration."""
        shorts = [i for i in trace.items if i.length_class == "short"]
        if not shorts:
            return self.service_time(0, 100)
        return sum(self.service_time(i.prompt_tokens, i.output_tokens) for i in shorts) / len(shorts)

    @property
    def chunk_tokens(self) -> int:
        """Most tokens per streamed chunk for a scheduler that may pause answers: CHUNK_SECONDS
        of decoding (a real server streams every token; fewer chunks keep runs fast)."""
        return max(1, round(self.decode_rate * CHUNK_SECONDS))

    def backend(self) -> SimulatedBackend:
        """The simulated server, streaming each answer in one piece after its first token (a
        pausing scheduler's run gives it :attr:`chunk_tokens` and the arrival times)."""
        return SimulatedBackend(prefill_rate=self.prefill_rate, decode_rate=self.decode_rate)


#: See docs/benchmarks.md ("Backend rates") for where these numbers come from.
PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "gpu",
            2500.0,
            60.0,
            "an 8B model (4-bit) on a mid-range local GPU (RTX 3060/4060 class) under llama.cpp or Ollama",
        ),
        Profile(
            "cpu",
            150.0,
            10.0,
            "a 7-8B model (4-bit) on a laptop CPU (8 cores) under llama.cpp or Ollama",
        ),
    )
}
