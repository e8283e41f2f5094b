"""The waiting room (``WaitQueue``) against a plain model of it, with pauses put back."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from sjfsched import Prediction, Request
from sjfsched._queue import EntryState, WaitQueue, _Entry

REQUEST = Request("q")
PREDICTION = Prediction(1.0)


def entry(seq: int, key: float, submitted: float) -> _Entry:
    return _Entry(REQUEST, PREDICTION, 1.0, (0, key), submitted, seq)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("max_wait", [None, 5.0])
def test_pops_follow_the_model_with_entries_paused_and_put_back(seed: int, max_wait: float | None) -> None:
    """Overdue entries go oldest first by arrival (a paused one by its first arrival), the
    rest by key; cancelled ones never come back; storage stays proportional to the waiting."""
    rng = random.Random(seed)
    queue = WaitQueue(max_wait)
    waiting: list[_Entry] = []  # the model: every waiting entry
    running: list[_Entry] = []  # taken, and may be paused and put back
    now = 0.0
    for seq in range(1, 3_001):
        now += rng.random() * 0.5
        op = rng.random()
        if op < 0.4 or not (waiting or running):
            e = entry(seq, rng.choice([rng.random() * 10, float(rng.randint(0, 3))]), now)
            queue.push(e)
            waiting.append(e)
        elif op < 0.5 and waiting:
            gone = waiting.pop(rng.randrange(len(waiting)))
            gone.state = EntryState.CANCELLED
            queue.discard(gone)
        elif op < 0.75 and running:
            paused = running.pop(rng.randrange(len(running)))
            paused.state = EntryState.WAITING  # as the scheduler's pause does
            queue.requeue(paused)
            waiting.append(paused)
        elif waiting:
            overdue = [e for e in waiting if max_wait is not None and now - e.submitted >= max_wait]
            expected = (
                min(overdue, key=lambda e: e.seq) if overdue else min(waiting, key=lambda e: (e.key, e.seq))
            )
            assert queue.has_overdue(now) == bool(overdue)
            taken = queue.pop(now)
            assert taken is expected
            assert taken.promoted == bool(overdue)
            taken.promoted = False
            waiting.remove(taken)
            if rng.random() < 0.3:
                taken.state = EntryState.DONE
            else:
                taken.state = EntryState.RUNNING
                running.append(taken)
        elif running:
            running.pop().state = EntryState.DONE
        assert len(queue) == len(waiting)
        assert queue.storage_size() <= 3 * (64 + 2 * len(waiting)) + 2
    assert sorted(e.seq for e in queue.drain()) == sorted(e.seq for e in waiting)


def test_putting_a_paused_entry_back_does_not_copy_the_queue() -> None:
    """A pause put the entry back by rebuilding the whole FIFO: a list and a deque of every
    waiting entry, for each pause (O(n), where the docs say every operation is O(log n))."""
    queue = WaitQueue(5.0)
    for seq in range(1, 50_001):
        queue.push(entry(seq, 1_000.0 + seq, 0.0))
    paused = entry(0, 0.0, 0.0)
    queue.push(paused)
    assert queue.pop(0.0) is paused
    paused.state = EntryState.RUNNING
    tracemalloc.start()
    try:
        for _ in range(20):
            paused.state = EntryState.WAITING
            queue.requeue(paused)
            assert queue.pop(0.0) is paused
            paused.state = EntryState.RUNNING
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000, f"a pause allocated {peak:,} bytes with 50,000 waiting"
    paused.state = EntryState.WAITING
    queue.requeue(paused)
    assert queue.pop(10.0) is paused  # overdue now, and the oldest: first by its arrival
