"""The waiting room: a heap by ordering key plus a FIFO for overdue requests.

Entries sit in a binary heap as ``(key, sequence, ticket, entry)`` tuples so
entries themselves are never compared, and in a FIFO by arrival (for
``max_wait``, which may change at any time); an entry put back after a pause
goes, in its place by arrival, into a second heap by arrival beside the FIFO.
A request leaves each structure lazily: cancelling or granting it only flips
its state, and dead entries (or copies from before a pause, whose ticket is
old) are skipped when they reach the top, or swept out of a structure when
they outnumber its live ones, so memory stays proportional to the waiting
requests and every operation is O(log n) amortised.
"""

from __future__ import annotations

import enum
import heapq
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, final

if TYPE_CHECKING:
    import anyio

    from ._records import Prediction, Request

__all__ = ["EntryState", "WaitQueue", "_Entry"]

logger = logging.getLogger("sjfsched")


class EntryState(enum.Enum):
    WAITING = "waiting"
    GRANTED = "granted"  # handed a slot; the waiter has not resumed yet
    RUNNING = "running"
    CANCELLED = "cancelled"
    CLOSED = "closed"  # the scheduler closed while it waited
    DONE = "done"


@final
class _Entry:
    """One accepted request and what the scheduler knows of it."""

    __slots__ = (
        "estimate",
        "event",
        "handle",
        "key",
        "one_piece",
        "pauses",
        "prediction",
        "promoted",
        "request",
        "seq",
        "service_started",
        "stand_in",
        "started",
        "state",
        "submitted",
        "ticket",
    )

    def __init__(
        self,
        request: Request,
        prediction: Prediction,
        estimate: float,
        key: Any,
        submitted: float,
        seq: int,
    ) -> None:
        self.request = request
        self.prediction = prediction
        self.estimate = estimate
        self.key = key
        self.submitted = submitted
        self.seq = seq
        self.state = EntryState.WAITING
        self.event: anyio.Event | None = None
        self.started = submitted
        #: when a backend began serving it, where later than ``started`` (a
        #: pool that had it wait for a slot): see ``_service.service_started``
        self.service_started: float | None = None
        self.promoted = False
        #: its prediction is the scheduler's neutral stand-in (the predictor failed): not observed
        self.stand_in = False
        #: its answer came in one piece (the first chunk held every token): the
        #: first token's time says nothing of prompt evaluation
        self.one_piece = False
        #: times it was paused for a request ranked before it (preemption)
        self.pauses = 0
        #: times it was put back in the queue after a pause: its arrival-order
        #: copy is the FIFO's while 0, then the one in ``_returned`` with this ticket
        self.ticket = 0
        #: what ``position()`` finds it by: the caller's Request, which the
        #: queued ``request`` is a copy of when fields were given with it
        self.handle = request


def _first_copy_live(entry: _Entry) -> bool:
    """Whether an entry's copy in the FIFO (its first, by arrival) is live."""
    return entry.state is EntryState.WAITING and entry.ticket == 0


def _returned_live(item: tuple[int, int, _Entry]) -> bool:
    """Whether an item of the returned heap is its entry's live copy."""
    return item[2].state is EntryState.WAITING and item[1] == item[2].ticket


def _heap_live(item: tuple[Any, int, int, _Entry]) -> bool:
    """Whether an item of the heap by key is its entry's live copy (not one from before a pause)."""
    return item[3].state is EntryState.WAITING and item[2] == item[3].ticket


@final
class _Lenient:
    """A sort key that falls back to arrival order where two keys do not compare."""

    __slots__ = ("key", "seq")

    def __init__(self, key: Any, seq: int) -> None:
        self.key = key
        self.seq = seq

    def __lt__(self, other: _Lenient) -> bool:
        try:
            if self.key < other.key:
                return True
            if other.key < self.key:
                return False
        except Exception:  # TypeError, or numpy's ValueError for arrays, ...
            pass
        return self.seq < other.seq


@final
class WaitQueue:
    """Waiting entries, popped by lowest key or, when overdue, oldest first."""

    __slots__ = ("_fifo", "_heap", "_lenient", "_live", "_returned", "max_wait")

    def __init__(self, max_wait: float | None) -> None:
        self.max_wait = max_wait
        self._heap: list[tuple[Any, int, int, _Entry]] = []
        #: arrivals in order; an entry's copy here is live while it waits and was never put back
        self._fifo: deque[_Entry] = deque()
        #: ``(seq, ticket, entry)`` of entries put back after a pause, a heap by arrival;
        #: an item is live while its entry waits and still holds that ticket
        self._returned: list[tuple[int, int, _Entry]] = []
        self._live = 0
        #: keys were found that do not compare: every key is wrapped in _Lenient since
        self._lenient = False

    def __len__(self) -> int:
        """The number of live (waiting) entries."""
        return self._live

    def push(self, entry: _Entry) -> None:
        """Add a waiting entry."""
        self._fifo.append(entry)
        self._push_heap(entry)

    def _push_heap(self, entry: _Entry) -> None:
        """Count ``entry`` live and push it on the heap (it is in the FIFO or the returned already)."""
        self._live += 1
        try:
            heapq.heappush(self._heap, self._item(entry))
        except Exception as exc:  # keys that do not compare
            self._turn_lenient(exc)

    def requeue(self, entry: _Entry) -> None:
        """Put back a paused entry (its state WAITING again), in its place by arrival.

        Its earlier heap item is gone (popped); a dead copy of it may linger in
        the FIFO or among the returned, which would come to life with its state:
        a new ticket leaves them dead.  O(log n).
        """
        entry.ticket += 1
        heapq.heappush(self._returned, (entry.seq, entry.ticket, entry))
        self._push_heap(entry)

    def has_overdue(self, now: float) -> bool:
        """Whether :meth:`pop` would take an overdue entry (one that has waited ``max_wait``)."""
        if self.max_wait is None:
            return False
        oldest = self._oldest()
        return oldest is not None and now - oldest.submitted >= self.max_wait

    def _oldest(self) -> _Entry | None:
        """The oldest waiting entry (dead ones before it are dropped from the FIFO and the returned)."""
        fifo, returned = self._fifo, self._returned
        while fifo and not _first_copy_live(fifo[0]):
            fifo.popleft()
        while returned and not _returned_live(returned[0]):
            heapq.heappop(returned)
        if not returned:
            return fifo[0] if fifo else None
        if fifo and fifo[0].seq < returned[0][0]:
            return fifo[0]
        return returned[0][2]

    def _take_oldest(self) -> _Entry:
        """Remove and return :meth:`_oldest` (which must have found one) from its structure."""
        fifo, returned = self._fifo, self._returned
        if fifo and (not returned or fifo[0].seq < returned[0][0]):
            return fifo.popleft()
        return heapq.heappop(returned)[2]

    def peek_key(self) -> tuple[bool, Any]:
        """``(True, key)`` of the waiting entry with the lowest key, or ``(False, None)``."""
        heap = self._heap
        try:
            while heap and not _heap_live(heap[0]):
                heapq.heappop(heap)  # dead: pop() would skip it anyway
        except Exception as exc:  # keys that do not compare
            self._turn_lenient(exc)  # rebuilt from the live entries
            heap = self._heap
        if not heap:
            return False, None
        return True, heap[0][3].key

    def _item(self, entry: _Entry) -> tuple[Any, int, int, _Entry]:
        key = _Lenient(entry.key, entry.seq) if self._lenient else entry.key
        return (key, entry.seq, entry.ticket, entry)

    def _turn_lenient(self, exc: Exception, entries: list[_Entry] | None = None) -> None:
        """Keys that do not compare were found: from now on such pairs go by arrival.

        A failed sift may have half-moved the heap (and lost the entry being
        popped), so it is rebuilt from the FIFO and the returned, which hold every waiting entry;
        or from ``entries``, where the heap is whole but not yet in order (a sweep's).
        """
        if not self._lenient:
            logger.error(
                "sort_key gave keys that do not compare (%s): requests whose keys do not "
                "compare now run in arrival order",
                exc,
            )
        self._lenient = True
        if entries is None:
            entries = [e for e in self._fifo if _first_copy_live(e)]
            entries += [item[2] for item in self._returned if _returned_live(item)]
        self._heap = [self._item(e) for e in entries]
        heapq.heapify(self._heap)

    def discard(self, entry: _Entry) -> None:
        """Forget a waiting entry whose state the caller has just changed."""
        self._took_one()

    def _took_one(self) -> None:
        """One live entry fewer: it left by one structure and lingers, dead, in the others."""
        live = self._live = self._live - 1
        if live == 0:  # only dead entries are left
            self._heap.clear()
            self._fifo.clear()
            self._returned.clear()
            return
        # Sweep a structure once its dead entries outnumber the live ones, so
        # memory stays O(live) under steady traffic, not only on cancellation.
        if len(self._heap) > 64 and len(self._heap) > 2 * live:
            self._heap = [item for item in self._heap if _heap_live(item)]
            try:
                heapq.heapify(self._heap)
            except Exception as exc:  # keys that do not compare, met here first
                # From the swept heap, not the FIFO: an entry being popped is still in the FIFO,
                # and still waiting, but out of the heap; rebuilt from the FIFO it would be in twice.
                self._turn_lenient(exc, [item[3] for item in self._heap])
        if len(self._fifo) > 64 and len(self._fifo) > 2 * live:
            self._fifo = deque(e for e in self._fifo if _first_copy_live(e))
        if len(self._returned) > 64 and len(self._returned) > 2 * live:
            self._returned = [item for item in self._returned if _returned_live(item)]
            heapq.heapify(self._returned)  # (seq, ticket, entry): seqs are unique, entries never compared

    def pop(self, now: float) -> _Entry | None:
        """Remove and return the entry to run next, or None if none waits.

        An entry that has waited ``max_wait`` seconds or more goes first,
        oldest first, and is marked ``promoted``; otherwise the lowest key.
        """
        if self._live == 0:
            return None
        if self.max_wait is not None:
            oldest = self._oldest()
            if oldest is not None and now - oldest.submitted >= self.max_wait:
                entry = self._take_oldest()
                entry.promoted = True
                self._took_one()
                return entry
        while self._heap:
            try:
                item = heapq.heappop(self._heap)
            except Exception as exc:  # keys that do not compare
                self._turn_lenient(exc)
                continue
            if _heap_live(item):
                entry = item[3]
                self._took_one()
                return entry
        raise AssertionError("live count out of step with the heap")  # pragma: no cover

    def ordered(self, now: float) -> list[_Entry]:
        """Live entries in the order they would be dispatched if nothing changed."""
        live = [item[3] for item in self._heap if _heap_live(item)]
        if self.max_wait is None:
            overdue: list[_Entry] = []
        else:
            overdue = sorted(
                (e for e in live if now - e.submitted >= self.max_wait),
                key=lambda e: e.seq,
            )
        skip = {id(e) for e in overdue}
        rest = [e for e in live if id(e) not in skip]
        try:
            rest.sort(key=lambda e: (e.key, e.seq))
        except Exception:  # keys that do not compare
            rest.sort(key=lambda e: _Lenient(e.key, e.seq))
        return overdue + rest

    def drain(self) -> list[_Entry]:
        """Remove and return every live entry (used on close)."""
        live = [item[3] for item in self._heap if _heap_live(item)]
        live.sort(key=lambda e: e.seq)
        self._heap.clear()
        self._fifo.clear()
        self._returned.clear()
        self._live = 0
        return live

    def storage_size(self) -> int:
        """Entries held, dead ones included (for leak tests)."""
        return len(self._heap) + len(self._fifo) + len(self._returned)
