"""Virtual time for asyncio: run hours of simulated traffic in a second.

trio has ``trio.testing.MockClock(autojump_threshold=0)``; this is the same
idea for asyncio without extra dependencies.  Whenever the event loop would
sleep waiting for a timer and no I/O is ready, the clock jumps straight to the
timer instead.  Only code that reads time from the loop
(``anyio.current_time()``, ``loop.time()``, ``anyio.sleep``) sees virtual
time; worker threads do not, so keep virtual-time runs free of real work.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import selectors
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

import anyio
from typing_extensions import TypeVarTuple, Unpack

__all__ = ["VirtualEventLoop", "run_virtual"]

#: The longest wait asyncio asks of its selector (``base_events.MAXIMUM_SELECT_TIMEOUT``).
_LONGEST_SELECT = 24 * 3600

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _Clock:
    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0


class _VirtualSelector(selectors.BaseSelector):
    """Delegates to a real selector, but turns timed waits into clock jumps."""

    def __init__(self, clock: _Clock, next_timer: Callable[[], float | None]) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = clock
        self._next_timer = next_timer

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready:
            return ready
        if timeout == 0:
            self._unstick()
            return ready
        if timeout is None:  # no timer at all: only real I/O can wake us
            return self._real.select(None)
        target = self._clock.now + timeout
        if timeout >= _LONGEST_SELECT:
            # asyncio waits at most a day at a time: a timer further off (a sleep of
            # years, a rate near zero) would take a loop pass per virtual day.
            when = self._next_timer()
            if when is not None and target < when < math.inf:  # never to a sleep without end
                target = when
        if target + 1e-9 == target:
            # From 2**24 s on the loop's 1 ns resolution is lost in rounding, and a
            # timer due "now" would never count as due: land two steps past it.
            target = math.nextafter(math.nextafter(target, math.inf), math.inf)
        self._clock.now = target
        return []

    def _unstick(self) -> None:
        """Make a timer due that the loop cannot see as due: far on, ``now + 1 ns`` rounds to ``now``.

        asyncio counts a timer due once it is before ``now`` plus its clock
        resolution; from about 2**24 s on that sum rounds to ``now``, and a
        timer that rounded to ``now`` itself would wait with a timeout of 0
        for ever.  The clock moves two steps past it (time is that coarse
        there anyway).
        """
        now = self._clock.now
        if now + 1e-9 != now:  # the usual case, checked first: every busy loop pass comes here
            return
        when = self._next_timer()
        if when == now:  # one before now is due as it is
            self._clock.now = math.nextafter(math.nextafter(now, math.inf), math.inf)

    def close(self) -> None:
        self._real.close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()


class VirtualEventLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop whose clock starts at 0 and jumps when idle.

    Prefer :func:`run_virtual`: it also waits for the default executor's
    threads before the loop ends, which ``asyncio.run(...,
    loop_factory=VirtualEventLoop)`` on Python 3.13 gives up on at once
    (its 300 s of loop time pass in no time).
    """

    def __init__(self) -> None:
        self._virtual_clock = _Clock()
        super().__init__(_VirtualSelector(self._virtual_clock, self._next_timer))

    def _next_timer(self) -> float | None:
        """When the earliest timer is due (``None``: none); a cancelled one is no later than the next."""
        scheduled = getattr(self, "_scheduled", None)  # asyncio's heap of timers
        return float(scheduled[0].when()) if scheduled else None

    def time(self) -> float:
        return self._virtual_clock.now


def run_virtual(fn: Callable[[Unpack[Ts]], Awaitable[T]], *args: Unpack[Ts]) -> T:
    """Run ``fn(*args)`` on asyncio in virtual time and return its result."""

    async def main() -> T:
        try:
            result: Any = fn(*args)
            if not inspect.isawaitable(result):
                kind = "an async generator" if inspect.isasyncgen(result) else repr(result)
                raise TypeError(
                    f"run_virtual() runs an async function: {fn!r} returned {kind}, not an awaitable"
                )
            return cast("T", await result)
        finally:
            # Joined here, with no timeout: the runner's own shutdown (Python 3.13)
            # waits 300 s of loop time for it, which virtual time skips at once.
            await asyncio.get_running_loop().shutdown_default_executor()

    return anyio.run(main, backend="asyncio", backend_options={"loop_factory": VirtualEventLoop})
