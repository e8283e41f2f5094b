"""Several backends behind one scheduler: slots, health and fail-over."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing
from typing import TYPE_CHECKING, final

import anyio
import attrs

from .._records import Chunk, Request
from .._service import check_backend, close_backend, mark_service_started
from ._http import BackendUnavailable, event_loop, is_unavailable

if TYPE_CHECKING:
    from ._base import Backend

logger = logging.getLogger("sjfsched")

__all__ = ["BackendPool", "PoolMemberStatistics", "PoolStatistics"]


@attrs.frozen
class PoolMemberStatistics:
    """One backend of a :class:`BackendPool`, as it stands."""

    #: ``repr()`` of the backend.
    name: str
    slots: int
    #: Requests running on it now.
    busy: int
    #: False while it is out of rotation after a failure.
    healthy: bool
    #: Failures since it last served a request.
    failures: int
    #: Seconds until it may be tried again (``0.0`` when it may be now).
    retry_in: float
    #: Requests that ended on it other than by its failure: answered, left by their caller,
    #: or refused for a fault of their own (a 400).
    served: int


@attrs.frozen
class PoolStatistics:
    """A snapshot of a :class:`BackendPool`."""

    members: tuple[PoolMemberStatistics, ...]
    #: Total slots, healthy or not (what a Scheduler's concurrency is set to).
    slots: int
    #: Slots of the backends now in rotation.
    healthy_slots: int
    busy: int
    #: Requests moved to another backend after a failure.
    failovers: int


@attrs.define(eq=False)
class _Member:
    index: int
    backend: Backend
    slots: int
    busy: int = 0
    failures: int = 0
    #: When it may be tried again; None while it is in rotation.
    down_until: float | None = None
    probing: bool = False
    served: int = 0
    #: How many times it went out of rotation: a request that took its slot before the latest
    #: outage began says nothing, by answering, of whether the server is back.
    outages: int = 0


class _NoBackend(Exception):
    pass


@attrs.define(eq=False)
class _Waiter:
    """A request waiting inside the pool for a slot."""

    tried: set[int]
    event: anyio.Event = attrs.Factory(anyio.Event)
    granted: tuple[_Member, bool] | None = None
    error: _NoBackend | None = None


@final
class BackendPool:
    """Several backends behind one :class:`~sjfsched.Scheduler`.

    For several Ollama hosts, or llama.cpp servers, or a mix::

        pool = BackendPool([
            (OllamaBackend("llama3.2", "http://gpu-1:11434"), 4),  # OLLAMA_NUM_PARALLEL=4
            (OllamaBackend("llama3.2", "http://gpu-2:11434"), 1),
        ])
        async with Scheduler(pool) as sched:   # concurrency = pool.slots = 5
            ...

    Each backend comes with its number of slots (or, given alone, its own
    ``slots`` attribute, else 1); :attr:`slots` is their total, which a
    Scheduler uses as its concurrency.  The scheduler still picks which
    request runs next (shortest first); the pool sends it to the first backend
    in the list with a free slot.

    **Health.**  A backend that fails with
    :class:`~sjfsched.backends.BackendUnavailable` (connection refused or lost,
    timeout, malformed stream, a 429), a ``BackendError`` with a 5xx status, or an
    ``OSError`` is taken out of rotation for ``retry_after`` seconds (default
    5), doubling with each further failure up to ``max_retry_after`` (default
    60), or for as long as the server's ``Retry-After`` asked, within that
    same bound.  When that time has passed, one request at a time is sent to it as a
    probe: if the backend answers, it is back in rotation.  Other errors (a
    404 for an unknown model, a bad option) are the request's fault: they
    reach the caller and leave the backend in rotation.

    **Fail-over rule.**  A request whose backend failed *before it streamed
    anything* is sent to another backend in rotation (each backend is tried at
    most once per request; ``failover=False`` turns this off).  A request
    that had already streamed text to its caller is never replayed: it fails
    with the backend's error.  When no backend is left to try, the request
    fails with the last backend's error; when every backend is out of
    rotation, it fails at once with :class:`BackendUnavailable` saying when
    the first will be retried.

    **No oversubscription.**  While a backend is out of rotation the pool has
    fewer usable slots than the scheduler's concurrency; a request that finds
    every usable slot busy waits inside the pool for one, in the order the
    scheduler sent them, and never runs on a backend beyond its slots.
    """

    def __init__(
        self,
        backends: Iterable[Backend | tuple[Backend, int]],
        *,
        retry_after: float = 5.0,
        max_retry_after: float = 60.0,
        failover: bool = True,
    ) -> None:
        members: list[_Member] = []
        for item in backends:
            if isinstance(item, tuple):
                if len(item) != 2:
                    raise TypeError(f"give (backend, slots) pairs, got a tuple of {len(item)}")
                backend, slots = item
            else:
                backend, slots = item, getattr(item, "slots", 1)
            check_backend(backend)  # as the Scheduler checks its backend
            if any(m.backend is backend for m in members):
                raise ValueError(
                    f"{backend!r} is listed twice: give it more slots instead (as two members it "
                    "would be tried twice for one request, and be healthy and out of rotation at once)"
                )
            if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
                raise ValueError(f"slots of {backend!r} must be an int >= 1, got {slots!r}")
            members.append(_Member(len(members), backend, slots))
        if not members:
            raise ValueError("BackendPool needs at least one backend")
        for name, value in (("retry_after", retry_after), ("max_retry_after", max_retry_after)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value >= 0)
            ):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        if not isinstance(failover, bool):  # "no" would read as true
            raise TypeError(f"failover must be True or False, got {failover!r}")
        self._members = members
        self.slots = sum(m.slots for m in members)
        self.retry_after = float(retry_after)
        self.max_retry_after = max(float(max_retry_after), self.retry_after)
        self.failover = failover
        self._waiters: list[_Waiter] = []
        self._failovers = 0
        self._loop: object = None  # the event loop whose clock the back-offs are on

    def __repr__(self) -> str:
        inner = ", ".join(f"({m.backend!r}, {m.slots})" for m in self._members)
        return f"BackendPool([{inner}])"

    @property
    def backends(self) -> list[Backend]:
        return [m.backend for m in self._members]

    def statistics(self) -> PoolStatistics:
        """Slots, load and health of every backend.

        Call it from an event loop (it reads the loop's clock): under another
        loop than the pool's own, a backend out of rotation is shown due now,
        as the pool would take it, and nothing changes.
        """
        same_loop = _event_loop("BackendPool.statistics()") is self._loop
        now = anyio.current_time()
        members = tuple(
            PoolMemberStatistics(
                name=repr(m.backend),
                slots=m.slots,
                busy=m.busy,
                healthy=m.down_until is None,
                failures=m.failures,
                retry_in=0.0 if m.down_until is None or not same_loop else max(0.0, m.down_until - now),
                served=m.served,
            )
            for m in self._members
        )
        return PoolStatistics(
            members=members,
            slots=self.slots,
            healthy_slots=sum(m.slots for m in self._members if m.down_until is None),
            busy=sum(m.busy for m in self._members),
            failovers=self._failovers,
        )

    # ------------------------------------------------------------ streaming

    async def stream(self, request: Request, /) -> AsyncIterator[Chunk]:
        self._adopt_loop()
        tried: set[int] = set()
        last_error: BaseException | None = None
        while True:
            member: _Member | None = None
            probe = False
            no_backend = ""
            try:
                member, probe = await self._acquire(tried)
            except _NoBackend as exc:
                no_backend = str(exc)
            epoch = 0 if member is None else member.outages
            if member is None:
                if last_error is not None:
                    raise last_error  # the backend's own error, its cause intact
                raise BackendUnavailable(no_backend)
            if last_error is not None:
                self._failovers += 1
            tried.add(member.index)
            mark_service_started()  # any wait for a slot, or on a backend that failed, is over
            streamed = False
            try:
                async with aclosing(_aiter(member.backend.stream(request))) as chunks:
                    async for chunk in chunks:
                        if not streamed:
                            streamed = True
                            self._alive(member, probe, epoch)
                        yield chunk
            except Exception as exc:
                unavailable = is_unavailable(exc)
                wait = getattr(exc, "retry_after", None) if unavailable else None
                # Refused by the backend itself (BackendError.sent False): the server said nothing.
                answered = not unavailable and getattr(exc, "sent", True) is not False
                self._release(member, probe, failed=unavailable, answered=answered, wait=wait, epoch=epoch)
                if streamed or not unavailable or not self.failover:
                    raise
                last_error = exc
                continue
            except BaseException:
                self._release(member, probe, failed=False, answered=streamed, epoch=epoch)
                raise
            self._release(member, probe, failed=False, answered=True, epoch=epoch)
            return

    async def aclose(self) -> None:
        """Close every backend of the pool (all of them, even if one fails: its error is raised after)."""
        seen: set[int] = set()
        first_error: BaseException | None = None
        for member in self._members:
            if id(member.backend) in seen:
                continue
            seen.add(id(member.backend))
            try:
                await close_backend(member.backend)
            except Exception as exc:
                if first_error is None:
                    first_error = exc
                else:
                    logger.error("closing %r failed too: %r", member.backend, exc)
        if first_error is not None:
            raise first_error

    # ------------------------------------------------------------ internals

    def _adopt_loop(self) -> None:
        """Back-offs are times on one loop's clock: under another loop (the pool outlived one), due now."""
        loop = _event_loop("BackendPool.stream()")
        if loop is not self._loop:
            self._loop = loop
            now = anyio.current_time()
            for m in self._members:
                if m.down_until is not None:
                    m.down_until = now

    def _take(self, tried: set[int]) -> tuple[_Member, bool] | None:
        """A free slot for a request that tried ``tried`` already, and whether it is a probe; or None.

        Raises :class:`_NoBackend` when no backend is left that it could use.
        """
        now = anyio.current_time()
        candidates = [m for m in self._members if m.index not in tried]
        if not candidates:
            raise _NoBackend("every backend of the pool failed for this request")
        for m in candidates:
            if m.busy >= m.slots:
                continue
            if m.down_until is None:
                m.busy += 1
                return m, False
            if now >= m.down_until and not m.probing:
                m.probing = True  # one request at a time finds out if it is back
                m.busy += 1
                return m, True
        if not any(m.down_until is None for m in candidates):
            # Every one is out of rotation (one's probe may be on its way): fail now, not after
            # the probe, which may take as long as its read timeout.
            waits = [m.down_until - now for m in candidates if m.down_until is not None]
            raise _NoBackend(
                f"all {len(candidates)} backend(s) of the pool are out of rotation after failures; "
                f"the first is retried in {max(0.0, min(waits, default=0.0)):.1f} s"
            )
        return None

    def _next_retry(self, tried: set[int]) -> float:
        """Seconds until a backend this request may use is due for its probe (inf: none is)."""
        now = anyio.current_time()
        waits = [
            m.down_until - now
            for m in self._members
            if m.index not in tried and m.down_until is not None and not m.probing
        ]
        return max(0.0, min(waits, default=math.inf))

    async def _acquire(self, tried: set[int]) -> tuple[_Member, bool]:
        """A member with a free slot, and whether this request is its probe (it is out of rotation).

        Requests that find no free slot wait in a queue and are handed slots
        in the order they came (:meth:`_dispatch`), whatever order the event
        loop wakes them in.
        """
        if not self._waiters:
            got = self._take(tried)
            if got is not None:
                return got
        waiter = _Waiter(tried)
        self._waiters.append(waiter)
        try:
            while True:
                self._dispatch()
                if waiter.granted is not None:
                    got, waiter.granted = waiter.granted, None
                    return got
                if waiter.error is not None:
                    raise waiter.error
                with anyio.move_on_after(self._next_retry(tried)):
                    await waiter.event.wait()
                waiter.event = anyio.Event()
        except BaseException:
            if waiter.granted is not None:  # handed a slot, then cancelled before taking it
                member, probe = waiter.granted
                waiter.granted = None
                member.busy -= 1
                if probe:
                    member.probing = False
            raise
        finally:
            self._waiters.remove(waiter)
            self._dispatch()

    def _dispatch(self, *, wake_all: bool = False) -> None:
        """Hand free slots to the waiting requests, first come first served.

        ``wake_all``: a backend went out of rotation, so each waiter's time
        to its next probe changed; every waiter wakes to wait again for the
        new time (only this method hands out slots, so the order holds).
        """
        for waiter in self._waiters:
            if waiter.granted is not None or waiter.error is not None:
                continue
            try:
                got = self._take(waiter.tried)
            except _NoBackend as exc:
                waiter.error = exc
                waiter.event.set()
                continue
            if got is not None:
                waiter.granted = got
                waiter.event.set()
            elif wake_all:
                waiter.event.set()

    @staticmethod
    def _speaks_for(member: _Member, probe: bool, epoch: int) -> bool:
        """Whether a request's answer tells that its backend is (back) in rotation: the probe's
        does, and one begun since the latest outage; not one begun before it (a server may
        finish old work while it refuses new)."""
        return probe or epoch == member.outages

    def _alive(self, member: _Member, probe: bool, epoch: int) -> None:
        """The backend answered a request: it is (back) in rotation, if the request speaks for it."""
        if not self._speaks_for(member, probe, epoch):
            return
        if member.down_until is not None or member.failures:
            member.down_until = None
            member.failures = 0
            self._dispatch()

    def _release(
        self,
        member: _Member,
        probe: bool,
        *,
        failed: bool,
        answered: bool,
        epoch: int,
        wait: float | None = None,
    ) -> None:
        member.busy -= 1
        if probe:  # only the probe's end says whether another may try
            member.probing = False
        if failed:
            # One outage is one failure: requests that were already running
            # when it began and fail after it do not lengthen the back-off.
            if probe or member.down_until is None:
                member.failures += 1
                exponent = min(member.failures - 1, 64)  # 2**64 * retry_after is past any cap
                backoff = min(self.max_retry_after, self.retry_after * 2.0**exponent)
                if wait is not None:  # the server's Retry-After, within the pool's longest
                    backoff = max(backoff, min(wait, self.max_retry_after))
                member.down_until = anyio.current_time() + backoff
                member.outages += 1
                self._dispatch(wake_all=True)
                return
        else:
            member.served += 1
            if answered and self._speaks_for(member, probe, epoch):
                member.down_until = None
                member.failures = 0
        self._dispatch()


async def _aiter(iterator: AsyncIterator[Chunk]) -> AsyncGenerator[Chunk, None]:
    """An async generator over any async iterator (so it can be closed)."""
    try:
        async for chunk in iterator:
            yield chunk
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def _event_loop(caller: str) -> object:
    """The running event loop, whose clock ``anyio.current_time`` reads (see :func:`event_loop`)."""
    return event_loop(caller, " (the one the pool runs in)")
