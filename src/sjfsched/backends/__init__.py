"""Backends: what generates the answers.

- :class:`Backend`: the protocol.
- :class:`CallableBackend`: any sync or async function (the test double).
- :class:`SimulatedBackend`: a serial server simulated with sleeps.
"""

from ._base import Backend as Backend
from ._callable import CallableBackend as CallableBackend
from ._simulated import SimulatedBackend as SimulatedBackend

__all__ = [
    "Backend",
    "CallableBackend",
    "SimulatedBackend",
]
