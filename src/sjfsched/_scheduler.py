"""The shortest-job-first scheduler."""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import enum
import inspect
import logging
import math
import numbers
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from types import CodeType, FrameType, ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, cast, final

import anyio
import anyio.lowlevel
import attrs
from typing_extensions import Self, Unpack

from ._errors import BackendError, PredictorError, QueueFull, SchedulerClosed
from ._queue import EntryState, WaitQueue, _Entry
from ._rates import DEFAULT_DECODE_RATE, DEFAULT_PREFILL_RATE, RateEstimator
from ._records import (
    MAX_TOKEN_COUNT,
    Chunk,
    Completion,
    Prediction,
    Request,
    RequestFields,
    _as_float,
    _as_int,
    shown_count,
)
from ._service import check_backend, close_backend, is_async, needs_an_instance, service_started

if TYPE_CHECKING:
    from .backends._base import Backend, Resumable
    from .predictors._base import Predictor

__all__ = [
    "DEFAULT_AGING",
    "DEFAULT_CAP",
    "DEFAULT_MAX_WAIT",
    "DEFAULT_PREEMPT",
    "ChunkStream",
    "Job",
    "Scheduler",
    "SchedulerStatistics",
    "Ticket",
]

logger = logging.getLogger("sjfsched")

#: Seconds of estimated service time forgiven per second waited.
DEFAULT_AGING = 0.05
#: Estimates above this multiple of the median recent estimate count as that value.
DEFAULT_CAP: float | None = 1.0
#: How many of the latest accepted requests' estimates the median is taken over.
CAP_WINDOW = 200
#: Seconds after which a waiting request runs next, whatever its estimate.
DEFAULT_MAX_WAIT: float | None = None
#: Whether a running answer is paused for a request ranked before it (where the backend can resume).
DEFAULT_PREEMPT = True
#: Output tokens assumed when the predictor fails, until real lengths are seen.
_NEUTRAL_TOKENS = 256.0

_SHIELDED_CLOSE_SECONDS = 10.0

#: A note of the backend's code: the scheduler, the request and the task that made the request.
_Note = tuple["Scheduler", _Entry, int | None]

#: The running requests whose slot the backend's code running now holds, for aclose(), which
#: could only wait for itself there: ``(scheduler, entry, task)`` (see _Note), noted for each read of the
#: backend's stream (for a whole ``complete()``), so seen wherever that code runs (the tasks
#: and worker threads it starts copy the context).  Blocks are noted by frame instead
#: (:func:`block_openers`): a context variable set in a block that a finaliser leaves, in
#: another context, would stay behind in the caller's.
_holding: ContextVar[tuple[_Note, ...]] = ContextVar("sjfsched_holding", default=())

#: What holds a slot, for the messages that say so.
_HOLDERS = "a block (an admit() or stream() block, or the backend's code for a request)"

_OWN_MODULES = frozenset({__name__, "sjfsched._sync", "contextlib"})


#: A frame as a note keeps it: its id and its code, not the frame (which would keep its
#: locals, a context manager left without its exit included, alive for ever).
FrameNote = tuple[int, CodeType]

_ASYNC_FLAGS = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE


def block_openers(*, asynchronous: bool) -> tuple[FrameNote, ...]:
    """The frames whose ``with`` (or ``async with``) is opening a block of this package.

    The first frame past this package's scheduler modules and contextlib's;
    and, while that is a context manager of the caller's own around ours (a
    ``@contextmanager`` or ``@asynccontextmanager`` generator, or a class's
    ``__enter__``/``__aenter__``), the frame whose ``with`` entered that.
    Code runs inside the block while one of them is on its stack.  For an
    ``async with`` only coroutine frames count (a task whose first frame is
    contextlib's has the event loop's below it): none found, none noted.
    """
    openers: list[FrameNote] = []
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") in _OWN_MODULES:
            frame = frame.f_back
            continue
        code = frame.f_code
        if asynchronous and not code.co_flags & _ASYNC_FLAGS:
            break
        openers.append((id(frame), code))
        entered_by = frame.f_back
        wrapper = code.co_name in ("__enter__", "__aenter__") or (
            code.co_flags & (inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR)
            and entered_by is not None
            and entered_by.f_globals.get("__name__") == "contextlib"
        )
        if not wrapper:
            break
        frame = entered_by
    return tuple(openers)


#: Frames that any thread or task may resume: a generator's (a ``with`` in it opens the block).
_MOVABLE = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR


def _current_task_id() -> int | None:
    """``id()`` of the task running now (anyio's ``TaskInfo.id``); None in a thread without one.

    Cheaper than :func:`anyio.get_current_task`, which it agrees with.
    """
    loop = asyncio._get_running_loop()  # None, not an exception, outside asyncio: cheap on trio
    if loop is not None:
        task = asyncio.current_task(loop)
        if task is not None:
            return id(task)
        # no asyncio task: a callback of the loop, or trio run as a guest on it
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        return id(trio.lowlevel.current_task())
    except RuntimeError:  # no event loop in this thread
        return None


def _movable(notes: tuple[FrameNote, ...]) -> bool:
    """Whether a generator's frame opened the block: any task may resume it (see below)."""
    return any(code.co_flags & _MOVABLE for _, code in notes)


def opened_here(notes: tuple[FrameNote, ...], opener: object, here: object) -> bool:
    """Whether the block noted by ``notes``, opened by thread or task ``opener``, is on this stack.

    ``here`` is the calling thread or task; one of the noted frames must run
    now, on this thread's stack (awaiting coroutines included).  A frame's
    id is reused once the frame is gone, so a frame of the same code at that
    address on another thread's or task's stack is not the opener's: only a
    generator's frame, which any of them may resume, is looked for beyond
    its opener's stack.
    """
    if not notes or (opener != here and not _movable(notes)):
        return False
    wanted = set(notes)
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if (id(frame), frame.f_code) in wanted:
            return True
        frame = frame.f_back
    return False


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


@attrs.frozen
class Job:
    """What the scheduler knows of a request when it orders it.

    Passed to :meth:`Scheduler.sort_key`; also on every :class:`Ticket`.
    ``estimate`` is the expected service time in seconds; ``submitted`` is the
    event loop's clock (``anyio.current_time()``) when the request arrived.
    """

    request: Request
    prediction: Prediction
    estimate: float
    submitted: float


@attrs.frozen
class SchedulerStatistics:
    """A snapshot of a scheduler's state and counters.

    ``completed + failed + cancelled + closed`` counts every accepted request
    that has ended (``closed``: waiting requests ended by closing the
    scheduler); ``rejected`` counts requests refused with :class:`QueueFull`
    or :class:`SchedulerClosed` before they were accepted.  ``promoted`` counts
    requests that ran because they had waited ``max_wait``.  A paused
    request (``preempt``) counts as waiting until it goes on.  The counts
    never go down (a request is counted once, as its caller sees it end: a
    waiting one that closing ends counts as waiting until its caller wakes,
    and :meth:`Scheduler.aclose` returns once every such caller has), so
    they export as counters.  ``predictor_errors`` counts predictions that failed (a
    neutral one was used) and learning steps (``observe()``) that failed.
    """

    waiting: int
    running: int
    concurrency: int
    completed: int
    failed: int
    cancelled: int
    closed: int
    rejected: int
    promoted: int
    predictor_errors: int
    #: Predictor calls made and the seconds (wall clock, not virtual time) they took in all.
    predictor_calls: int
    predictor_seconds: float
    #: The learned rates, in tokens per second.
    prefill_rate: float
    decode_rate: float
    #: The median estimate (seconds) of the latest accepted requests, and the estimate
    #: cap it gives (``cap`` times it; ``None`` without a cap or before any request).
    median_estimate: float | None = None
    estimate_cap: float | None = None
    #: Times a running answer was paused for a request ranked before it (``preempt``).
    preempted: int = 0


class Scheduler:
    """Shortest-predicted-job-first admission in front of a serial backend.

    Local inference servers answer one request at a time in arrival order, so
    a two-second question waits behind a two-minute essay.  A ``Scheduler``
    holds requests in a queue and hands its ``concurrency`` slots to the
    request with the shortest *estimated service time* first::

        estimate = prompt_tokens / prefill_rate + predicted_output_tokens / decode_rate

    The prediction comes from ``predictor`` (default: the bundled learned
    :class:`~sjfsched.predictors.LexicalPredictor` when available, else
    :class:`~sjfsched.predictors.HeuristicPredictor`); both rates start at
    documented values (``prefill_rate`` 400, ``decode_rate`` 30 tokens/s) and
    are learned from finished requests.

    Order: a lower ``Request.priority`` class always goes first; within a
    class the lowest ``min(estimate, cap * median) - aging * seconds_waited``
    goes first.  ``median`` is the median estimate of the latest 200
    accepted requests (of an even count the higher middle one, as
    ``statistics.median_high``), so requests predicted shorter than is typical run
    shortest first, and those predicted longer count as ``cap * median``
    and keep their arrival order among themselves while the median holds.
    The cap is taken when a request arrives and then fixed: after the
    median falls (a burst of short requests, say), a long request arriving
    later is capped lower and can run before earlier long ones.  ``cap``
    (default 1.0; ``None``: no cap) sets where capping starts.  ``aging``
    (default 0.05) is the seconds of estimate forgiven per second waited:
    within its class, a request is passed only by requests that arrive
    within ``cap * median / aging`` seconds of it (``median`` as at its
    arrival), however long its estimate.  A request that has waited
    ``max_wait`` seconds (default ``None``: no bound) runs next, oldest
    first, regardless of class.
    Subclass and override :meth:`sort_key` for another policy.  The defaults
    come from the scheduling benchmarks (``docs/benchmarks.md``).

    Use it as ``async with Scheduler(backend) as sched:`` and call
    :meth:`complete`, :meth:`stream` or, without a backend, :meth:`admit`.
    Leaving the block stops taking requests, ends waiting ones with
    :class:`SchedulerClosed`, waits for running ones to finish and closes the
    backend.  A closed scheduler cannot be reopened.

    ``preempt`` (default ``True``): when a request arrives that ranks before
    a running one, the running answer is paused at its next chunk, and goes
    on from where it stopped once its turn comes again, if the backend can
    resume it (:class:`~sjfsched.backends.Resumable`: the simulated and
    llama.cpp backends, OpenAI-compatible completions; see
    ``docs/design.md``).  The running request ranks by what is left of it:
    :meth:`sort_key` of its job with the estimate of the rest of its
    predicted answer plus reading its prompt and answer so far again, never
    after its own key; past its prediction, with the estimate of one token
    (what is left of it is unknown: only a request ranked before it for
    something other than length, a priority class or a policy's deadline,
    pauses it).
    Requests promoted by ``max_wait`` and requests run from :meth:`admit`
    are never paused.

    ``max_queue`` bounds the waiting requests (default ``None``: unbounded);
    beyond it a request fails at once with :class:`QueueFull`.

    ``on_complete``, if given, is called with every :class:`Completion` (for
    logs and metrics); its exceptions are logged and ignored.  It must be a
    plain function, called in the event loop as each request ends, and
    quick: an ``async def`` one is refused with ``TypeError`` (it would
    never run); hand the completion to a task of your own to do async work.
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        predictor: Predictor | None = None,
        concurrency: int | None = None,
        aging: float = DEFAULT_AGING,
        cap: float | None = DEFAULT_CAP,
        max_wait: float | None = DEFAULT_MAX_WAIT,
        max_queue: int | None = None,
        preempt: bool = DEFAULT_PREEMPT,
        prefill_rate: float = DEFAULT_PREFILL_RATE,
        decode_rate: float = DEFAULT_DECODE_RATE,
        learn_rates: bool = True,
        on_complete: Callable[[Completion], object] | None = None,
    ) -> None:
        # Numbers of any type (numpy's too) are taken, as ints and floats; bools are not.
        if concurrency is None:
            given = getattr(backend, "slots", 1)
            slots = _as_int(given)
            if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
                name = type(backend).__name__
                raise ValueError(f"{name}.slots must be an int >= 1 (or pass concurrency=), got {given!r}")
            concurrency = slots
        count = _as_int(concurrency)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        aging_value = _as_float(aging)
        if not (isinstance(aging_value, float) and math.isfinite(aging_value) and aging_value >= 0):
            raise ValueError(f"aging must be a finite number >= 0, got {aging!r}")
        cap_value = None if cap is None else _as_float(cap)
        if cap_value is not None and not (
            isinstance(cap_value, float) and math.isfinite(cap_value) and cap_value > 0
        ):
            raise ValueError(f"cap must be a finite number > 0 or None, got {cap!r}")
        max_wait_value = _max_wait(max_wait)
        max_queue_value = None if max_queue is None else _as_int(max_queue)
        if max_queue_value is not None and (
            not isinstance(max_queue_value, int) or isinstance(max_queue_value, bool) or max_queue_value < 0
        ):
            raise ValueError(f"max_queue must be an int >= 0 or None, got {max_queue!r}")
        if not isinstance(learn_rates, bool):
            raise TypeError(f"learn_rates must be True or False, got {learn_rates!r}")
        if not isinstance(preempt, bool):
            raise TypeError(f"preempt must be True or False, got {preempt!r}")
        if backend is not None:
            check_backend(backend)
        if on_complete is not None and not callable(on_complete):
            raise TypeError(f"on_complete must be a callable or None, got {type(on_complete).__name__}")
        if on_complete is not None and is_async(on_complete):
            raise TypeError(
                f"on_complete must be a plain function: it is called, not awaited, as each request "
                f"ends, so an async one would never run; got {on_complete!r}"
            )
        if predictor is None:
            predictor = _default_predictor()
        if needs_an_instance(predictor, "predict"):  # its predict() would fail on every request, unseen
            raise TypeError(
                f"predictor must be a predictor object, got the class {predictor.__name__}: "
                f"pass an instance: {predictor.__name__}()"
            )
        if not callable(getattr(predictor, "predict", None)):
            raise TypeError(f"predictor must have a predict(request) method, got {type(predictor).__name__}")
        for method in ("predict", "observe"):
            fn = getattr(predictor, method, None)
            if callable(fn) and is_async(fn):
                raise TypeError(
                    f"{type(predictor).__name__}.{method}() must be a plain method: the scheduler "
                    f"calls it and never awaits it, so an async one would never run"
                )
        for method in ("sort_key", "estimate", "on_complete"):  # a policy's
            if is_async(getattr(self, method)):
                raise TypeError(
                    f"{type(self).__name__}.{method}() must be a plain method: the scheduler calls "
                    "it and never awaits it, so an async one would "
                    + ("never run" if method == "on_complete" else "rank by a coroutine")
                )

        self._backend = backend
        self._backend_closed = False  # its aclose() has ended
        #: Open admit() and stream() blocks: the frames whose block it is, its request, the task
        #: that opened it (see opened_here).
        self._blocks: dict[object, tuple[tuple[FrameNote, ...], _Entry, int | None]] = {}
        #: open blocks by the task that opened them, and those a generator's frame opened
        #: (any task may resume it): the self-wait check's cheap bound
        self._opened_by: dict[int | None, int] = {}
        self._movable_blocks = 0
        self._backend_closing: anyio.Event | None = None  # set once its aclose() has ended
        self._close_when_idle = False  # aclose()'s wait was cancelled: the last request closes it
        self._predictor = predictor
        self._observe: Callable[[Request, Prediction, int], object] | None = getattr(
            predictor, "observe", None
        )
        self._concurrency = count
        self._aging = aging_value
        self._cap = cap_value
        self._recent: collections.deque[float] = collections.deque()
        self._recent_sorted: list[float] = []
        self._max_wait = max_wait_value
        self._max_queue = max_queue_value
        self._preempt = preempt
        self._rates = RateEstimator(prefill_rate, decode_rate)
        self._learn_rates = learn_rates
        self._on_complete = on_complete

        self._state = _State.UNOPENED
        #: the thread whose event loop the scheduler's latest requests ran in (another may take
        #: it over once nothing runs or waits)
        self._loop_thread: int | None = None
        self._admitting = threading.RLock()  # see _acquire
        self._queue = WaitQueue(self._max_wait)
        #: waiting entries by request (equal requests share a list), for position()
        # Keyed by the caller's object's id (the entry holds it): a Request subclass may compare
        # by value, and then it hashes its frozen mappings, which cannot be hashed.
        self._by_request: dict[int, list[_Entry]] = {}
        self._free = self._concurrency
        self._running = 0
        self._seq = 0
        self._idle: anyio.Event | None = None
        #: Waiting requests closed out by aclose() whose callers have not woken yet: they count
        #: as waiting until then (each is counted once, as its caller sees it end), and aclose()
        #: waits for them (``_closed_out`` is set when none is left).
        self._closing_out = 0
        self._closed_out: anyio.Event | None = None
        self._mean_tokens = _NEUTRAL_TOKENS
        #: What ends the event loop if the caller's code run there raises it, and must not: none
        #: in the caller's own loop; in a SyncScheduler's, whose thread is its own, SystemExit and
        #: KeyboardInterrupt (a thread's SystemExit ends only that thread; there they would end the
        #: loop and every request with it).  See _caller_errors and _exit_in_loop.
        self._loop_exits: tuple[type[BaseException], ...] = ()
        self._counts = dict.fromkeys(
            (
                "completed",
                "failed",
                "cancelled",
                "closed",
                "rejected",
                "promoted",
                "preempted",
                "predictor_errors",
                "predictor_calls",
            ),
            0,
        )
        self._predictor_seconds = 0.0

    # ------------------------------------------------------------------ knobs

    @property
    def backend(self) -> Backend | None:
        return self._backend

    @property
    def predictor(self) -> Predictor:
        return self._predictor

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @property
    def aging(self) -> float:
        return self._aging

    @property
    def cap(self) -> float | None:
        """The estimate cap, as a multiple of the median recent estimate (``None``: no cap)."""
        return self._cap

    @property
    def median_estimate(self) -> float | None:
        """The median estimate (seconds) of the latest 200 accepted requests; ``None`` before any.

        Of an even count, the higher of the two middle ones (``statistics.median_high``).
        """
        ordered = self._recent_sorted
        return ordered[len(ordered) // 2] if ordered else None

    @property
    def estimate_cap(self) -> float | None:
        """The current cap in seconds: ``cap`` times :attr:`median_estimate` (``None`` without a cap)."""
        median = self.median_estimate
        if self._cap is None or median is None:
            return None
        return self._cap * median

    @property
    def max_wait(self) -> float | None:
        """Seconds after which a waiting request runs next (``None``: never).

        May be changed at any time; it applies from the next dispatch on.
        """
        return self._max_wait

    @max_wait.setter
    def max_wait(self, value: float | None) -> None:
        self._max_wait = _max_wait(value)
        self._queue.max_wait = self._max_wait

    @property
    def preempt(self) -> bool:
        """Whether running answers are paused for requests ranked before them (see the class)."""
        return self._preempt

    @property
    def max_queue(self) -> int | None:
        return self._max_queue

    @property
    def rates(self) -> RateEstimator:
        """The learned prefill and decode rates (tokens per second)."""
        return self._rates

    # ------------------------------------------------------------- the policy

    def estimate(self, request: Request, prediction: Prediction) -> float:
        """Expected service time of ``request`` in seconds.

        Prompt tokens are ``prediction.prompt_tokens`` or, when the predictor
        leaves that out, ``input_chars / 4``; the predicted output is capped at
        ``request.max_tokens`` when that is set.

        An override that returns something other than a finite number (NaN,
        an infinity) for a request has that logged as an error on the
        ``sjfsched`` logger, and the request is ranked as one whose predictor
        failed: by this default estimate of a neutral prediction.
        """
        output = prediction.tokens
        if request.max_tokens is not None and output > request.max_tokens:
            output = float(request.max_tokens)
        prompt = prediction.prompt_tokens
        if prompt is None:
            prompt = request.input_chars / 4.0
        return self._rates.service_time(prompt, output)

    def sort_key(self, job: Job) -> Any:
        """The ordering key of a waiting request: the lowest runs first.

        This is the hook for custom policies.  It is called once, when the
        request arrives, and must return a value comparable with the keys of
        every other request (tuples of numbers are best).  With ``preempt``
        it is also called for what is left of a running answer, as a request
        ranked before it waits (its job's ``estimate`` is then that of the
        rest, one token's past its prediction; see the class); should it raise there,
        the answer is not paused for that request (it is asked again at the answer's next
        chunk).  The default is::

            (job.request.priority, min(job.estimate, self.estimate_cap) + self.aging * job.submitted)

        (without the ``min`` when ``cap`` is ``None``).  :attr:`estimate_cap`
        already counts this request's estimate.  Linear aging lowers every
        waiting request's effective estimate at the same pace, so
        ``estimate - aging * (now - submitted)`` orders requests exactly as
        ``estimate + aging * submitted`` does at any ``now``: the key can be
        fixed at arrival and the queue stays a plain heap.  ``max_wait``
        promotion is applied on top of whatever this returns.

        A key that is or holds (in a tuple) a NaN compares neither below nor
        above anything, which would scramble the queue: the request is refused
        with ``ValueError`` instead, as when this raises.
        """
        estimate = job.estimate
        cap = self.estimate_cap
        if cap is not None and estimate > cap:
            estimate = cap
        return (job.request.priority, estimate + self._aging * job.submitted)

    # -------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        if self._state is _State.CLOSED:
            raise RuntimeError("a closed Scheduler cannot be reopened; make a new one")
        self._state = _State.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _stop_admitting(self) -> None:
        """Refuse new requests and end the waiting ones: the first half of :meth:`aclose`."""
        if self._state is not _State.CLOSED:
            self._state = _State.CLOSED
            for entry in self._queue.drain():
                if entry.pauses:  # paused midway: a running request, which goes on
                    entry.state = EntryState.WAITING
                    self._queue.requeue(entry)
                    continue
                entry.state = EntryState.CLOSED  # counted as its caller wakes (see _acquire)
                self._closing_out += 1
                self._unindex(entry)
                assert entry.event is not None
                entry.event.set()

    async def aclose(self) -> None:
        """Close: refuse new requests, end waiting ones, let running ones finish.

        Waiting requests fail with :class:`SchedulerClosed`.  Running ones are
        not interrupted (a paused one, which had started, goes on to its end);
        this waits for them, then closes the backend.  Calling
        it again does nothing more (while the backend is being closed, it
        waits for that).

        Closing the backend is shielded from cancellation, for at most 10 s.
        If this is cancelled while it waits for running requests (a timeout
        on leaving ``async with Scheduler(...)``), the backend is closed as
        the last of them ends.

        From code that holds the slot of one of its running requests (code
        inside an :meth:`admit` or :meth:`stream` block, the frame that opened
        it on the stack; the backend's code for a request, wherever it runs)
        it raises :class:`RuntimeError` at once, changing nothing: it could
        only wait for itself.  A task started inside a block does not hold its
        slot: it waits.
        """
        if self._holds_a_request():
            raise RuntimeError(
                "aclose() from inside a block that holds a running request of this scheduler (an "
                "admit() or stream() block, or the backend's code for a request) would wait for "
                "that request, which waits for aclose(): close it after the block"
            )
        self._stop_admitting()
        try:
            if self._closing_out:  # the callers of the requests it closed out see it first
                if self._closed_out is None:
                    self._closed_out = anyio.Event()
                await self._closed_out.wait()
            if self._running:
                if self._idle is None:
                    self._idle = anyio.Event()
                await self._idle.wait()
        except BaseException:
            # Cancelled (a timeout on leaving the block): the last running request
            # closes the backend as it ends, or this, now, if they ended meanwhile.
            self._close_when_idle = True
            await self._close_backend_if_left()
            raise
        await self._close_backend()

    async def _close_backend(self) -> None:
        """Close the backend once, shielded and time-bounded; a second caller waits for the first."""
        if self._backend is None or self._backend_closed:
            return
        if self._backend_closing is not None:
            await self._backend_closing.wait()
            return
        self._close_when_idle = False
        self._backend_closing = anyio.Event()
        closing = self._close_backend_bounded(self._backend, self._backend_closing)
        asyncio = _running_asyncio()
        if asyncio is not None:
            # asyncio's own cancellation (task.cancel(), asyncio.timeout) passes anyio's
            # shield: the close runs as a task of its own, which that leaves running.
            task = asyncio.ensure_future(closing)
            try:
                with anyio.CancelScope(shield=True):  # anyio's waits for it, as on trio
                    await asyncio.shield(task)
            except BaseException as exc:
                if not task.done():  # this caller was cancelled: the close goes on, unheard
                    task.add_done_callback(_log_close_failure)
                elif not task.cancelled() and task.exception() not in (None, exc):
                    _log_close_failure(task)  # it failed as its caller was cancelled: unheard too
                raise
        else:
            await closing

    async def _close_backend_bounded(self, backend: Backend, closed: anyio.Event) -> None:
        try:
            with anyio.move_on_after(_SHIELDED_CLOSE_SECONDS, shield=True) as scope:
                await close_backend(backend)
            if scope.cancelled_caught:
                logger.warning(
                    "closing the %s took more than %g s: given up",
                    type(backend).__name__,
                    _SHIELDED_CLOSE_SECONDS,
                )
        finally:
            self._backend_closed = True
            closed.set()

    async def _close_backend_if_left(self) -> None:
        """After a request ended: close the backend if a cancelled :meth:`aclose` left that to it.

        Called by the task of the request that ended, so a failure to close is
        logged, not raised to that request's caller.
        """
        if self._close_when_idle and not self._running:
            try:
                await self._close_backend()
            except Exception:
                logger.warning("closing the %s failed", type(self._backend).__name__, exc_info=True)

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    def _hold(self, entry: _Entry) -> object:
        """Note the frames whose block holds ``entry``'s slot (for :meth:`aclose` and the
        self-wait check); undo with :meth:`_unhold` and the key."""
        key = object()
        openers = block_openers(asynchronous=True)
        task = _current_task_id()
        self._blocks[key] = (openers, entry, task)
        self._opened_by[task] = self._opened_by.get(task, 0) + 1
        if _movable(openers):
            self._movable_blocks += 1
        return key

    def _unhold(self, key: object) -> None:
        openers, _, task = self._blocks.pop(key)
        left = self._opened_by[task] - 1
        if left:
            self._opened_by[task] = left
        else:
            del self._opened_by[task]
        if _movable(openers):
            self._movable_blocks -= 1

    def _holds_a_request(self) -> bool:
        """Whether the code running now holds the slot of one of its running requests.

        It does inside an :meth:`admit` or :meth:`stream` block (a frame that
        opened it is on this stack), and in the backend's code reading a
        request, wherever that runs (a task or worker thread of its own, a call
        back into the loop).
        """
        return bool(self._held_here())

    def _held_here(self, *, own_notes: bool = False) -> set[int]:
        """The ids of the running requests whose slots the code running now holds (as above).

        ``own_notes``: a note from the backend's code counts only in the task that made it, or
        in a worker thread (which its task waits for), not in a task it started and left
        running, which may wait for the slot (for the self-wait check; :meth:`aclose` counts
        every note).
        """
        task = _current_task_id()
        held = {
            id(e)
            for s, e, t in _holding.get()
            if s is self and e.state is EntryState.RUNNING and (not own_notes or task is None or t == task)
        }
        blocks = list(self._blocks.values())
        held.update(
            id(entry)
            for openers, entry, opener in blocks
            if entry.state is EntryState.RUNNING and opened_here(openers, opener, task)
        )
        return held

    def _check_not_waiting_for_itself(self) -> None:
        """Refuse a request that would wait for a slot the code making it holds, every slot.

        Cheap where it cannot be so (the request's own task holds fewer blocks and notes
        than there are slots); else the frames are looked at.
        """
        notes = _holding.get()
        task = _current_task_id()
        bound = self._opened_by.get(task, 0) + self._movable_blocks
        if notes:
            bound += sum(1 for s, _, t in notes if s is self and (task is None or t == task))
        if bound >= self._concurrency:
            self._refuse_waiting_for_itself(len(self._held_here(own_notes=True)), _HOLDERS)

    def _refuse_waiting_for_itself(self, held: int, where: str) -> None:
        """A request from code that holds every slot could only wait for itself: refuse it."""
        if held >= self._concurrency:
            slots = "the only slot" if self._concurrency == 1 else f"all {self._concurrency} slots"
            raise RuntimeError(
                f"a request from inside {where} that holds {slots} of this scheduler would wait "
                f"for that block, which waits for the request: make the call after the block, or "
                f"give the scheduler more concurrency"
            )

    def on_complete(self, completion: Completion, /) -> None:
        """Called with every :class:`Completion` as its request ends; calls the ``on_complete``
        given to the constructor, if any.

        A subclass may override it (call ``super().on_complete(completion)`` to
        keep the constructor's): a plain method, quick, run in the event loop;
        its exceptions are logged and ignored, and an ``async def`` one is
        refused with ``TypeError`` when the scheduler is made.
        """
        if self._on_complete is not None:
            _not_awaited("on_complete", self._on_complete(completion))

    # ------------------------------------------------------------ public calls

    async def complete(
        self, request: Request | str | None = None, /, **fields: Unpack[RequestFields]
    ) -> Completion:
        """Run a request when its turn comes and return the whole answer.

        Pass a :class:`Request`, or a prompt string, or ``messages=[...]``;
        keyword ``fields`` fill in (or, with a Request, replace) the request's
        fields.  Raises :class:`QueueFull`, :class:`SchedulerClosed` or
        :class:`BackendError`; and :class:`RuntimeError` from code that holds
        every slot (inside an :meth:`admit` or :meth:`stream` block, or the
        backend's code for a request, with ``concurrency=1``): it could only
        wait for itself.
        """
        stream = await self._open_stream(request, fields)
        # Only the backend's code runs in this call: it holds the slot throughout (one note
        # for the whole call, not one per read as in a stream() block; see ChunkStream.__anext__).
        token = _holding.set((*_holding.get(), stream._held))
        stream._noted = True
        try:
            async for _ in stream:
                pass
        except BaseException as exc:
            await self._settle(stream, exc)
            raise
        else:
            await self._settle(stream, None)
        finally:
            _holding.reset(token)
        return stream.completion

    @asynccontextmanager
    async def stream(
        self, request: Request | str | None = None, /, **fields: Unpack[RequestFields]
    ) -> AsyncIterator[ChunkStream]:
        """Wait for a slot, then stream the answer chunk by chunk.

        ::

            async with sched.stream("Tell me a joke") as chunks:
                async for chunk in chunks:
                    print(chunk.text, end="")
            print(chunks.completion.output_tokens)

        Entering waits in the queue.  Leaving the block before the stream is
        exhausted closes the backend's stream and frees the slot (the request
        counts as cancelled, or failed if an exception escaped the block).
        Once the stream has been read to its end the request counts as
        completed (``on_complete`` gets it, the rates learn from it), even if
        the rest of the block raises or times out: the answer was whole.
        """
        stream = await self._open_stream(request, fields)
        held = self._hold(stream._entry)
        try:
            yield stream
        except BaseException as exc:
            await self._settle(stream, exc)
            raise
        else:
            await self._settle(stream, None)
        finally:
            self._unhold(held)

    async def _open_stream(self, request: Request | str | None, fields: Mapping[str, Any]) -> ChunkStream:
        backend = self._backend
        if backend is None:
            raise TypeError("this Scheduler has no backend: use admit() or pass a backend")
        if self._state is _State.CLOSED:
            self._counts["rejected"] += 1
            raise SchedulerClosed("the scheduler is closed")
        entry = await self._acquire(_coerce_request(request, fields), request)
        try:
            return ChunkStream(entry, backend, self)
        except BaseException as exc:  # the backend's resumable() raised sys.exit() (own loop)
            self._end(entry, _outcome_of(exc))
            raise

    async def _settle(self, stream: ChunkStream, exc: BaseException | None) -> None:
        """Close the backend stream if still open, free the slot, count the outcome."""
        stream._settled = True
        try:
            # Shielded from anyio's cancellation; asyncio's own (task.cancel(), asyncio.timeout)
            # can still interrupt it, and the request must end all the same.
            await stream._close()
        finally:
            entry = stream._entry
            if stream._completion is not None:
                # Read to its end: the answer is whole, whatever the rest of the block did
                # (the caller's own exception, or a timeout, still propagates).
                self._complete(entry, stream._completion)
            elif exc is not None:
                self._end(entry, _outcome_of(exc))
            elif stream._error is not None:  # the caller swallowed our BackendError
                self._end(entry, "failed")
            else:  # abandoned before the end (or its close interrupted)
                self._end(entry, "cancelled")
            if self._close_when_idle:  # the last request closes the backend, even so
                await self._close_backend_if_left()

    @asynccontextmanager
    async def admit(
        self, request: Request | str | None = None, /, **fields: Unpack[RequestFields]
    ) -> AsyncIterator[Ticket]:
        """Wait for a slot, then run your own inference call inside the block.

        ::

            async with sched.admit("Summarise this ...", max_tokens=200) as ticket:
                answer = my_model(ticket.request.prompt)
                ticket.report(output_tokens=answer.usage.completion_tokens)

        No backend is needed.  Reporting the output length (and, if known,
        the prompt length) lets the scheduler learn the rates and the
        predictor calibrate; without it the request still counts as
        completed.  An exception in the block counts it as failed (or
        cancelled) and propagates unchanged.
        """
        entry = await self._acquire(_coerce_request(request, fields), request)
        ticket = Ticket(entry, _loop_clock())
        held = self._hold(entry)
        try:
            yield ticket
        except BaseException as exc:
            ticket._ended = outcome = _outcome_of(exc)
            self._end(entry, outcome)
            if self._close_when_idle:
                await self._close_backend_if_left()
            raise
        else:
            ticket._ended = "completed"
            self._complete(entry, ticket._completion(anyio.current_time()), known=ticket._reported)
            if self._close_when_idle:
                await self._close_backend_if_left()
        finally:
            self._unhold(held)

    def statistics(self) -> SchedulerStatistics:
        """A snapshot of the queue, the counters and the learned rates."""
        c = self._counts
        return SchedulerStatistics(
            waiting=len(self._queue) + self._closing_out,
            running=self._running,
            concurrency=self._concurrency,
            completed=c["completed"],
            failed=c["failed"],
            cancelled=c["cancelled"],
            closed=c["closed"],
            rejected=c["rejected"],
            promoted=c["promoted"],
            preempted=c["preempted"],
            predictor_errors=c["predictor_errors"],
            predictor_calls=c["predictor_calls"],
            predictor_seconds=self._predictor_seconds,
            prefill_rate=self._rates.prefill_rate,
            decode_rate=self._rates.decode_rate,
            median_estimate=self.median_estimate,
            estimate_cap=self.estimate_cap,
        )

    def position(self, request: Request) -> int | None:
        """Where a waiting request stands in the queue: 0 runs next.

        ``None`` if the request is not waiting (never submitted, running or
        ended).  A request submitted with fields (``complete(request,
        max_tokens=...)``) waits as a copy with them; it is found by the
        request you passed.  Positions can change as requests arrive and
        age.  This sorts the queue, O(n log n): fine for a status page, not
        for a hot loop.
        """
        entries = self._by_request.get(id(request))
        if not entries:
            return None
        for i, e in enumerate(self._queue.ordered(anyio.current_time())):
            if e in entries:  # identity: entries never compare equal
                return i
        return None  # pragma: no cover

    # ------------------------------------------------------------- internals

    @property
    def _caller_errors(self) -> tuple[type[BaseException], ...]:
        """What a failure of the caller's code run by the scheduler (the predictor, on_complete)
        may raise and be logged; read only as such a failure is being caught."""
        return (Exception, *self._loop_exits)

    def _predict(self, request: Request) -> tuple[Prediction, bool]:
        """The predictor's prediction, or a neutral stand-in where it failed (``True``)."""
        counts = self._counts
        counts["predictor_calls"] += 1
        t0 = time.perf_counter()
        try:
            prediction = self._predictor.predict(request)
            if not isinstance(prediction, Prediction):
                raise PredictorError(
                    f"{type(self._predictor).__name__}.predict returned "
                    f"{type(prediction).__name__}, not a Prediction"
                )
        except self._caller_errors:
            counts["predictor_errors"] += 1
            logger.warning(
                "predictor %s failed; using a neutral prediction",
                type(self._predictor).__name__,
                exc_info=True,
            )
            self._predictor_seconds += time.perf_counter() - t0
            return Prediction(self._mean_tokens), True
        self._predictor_seconds += time.perf_counter() - t0
        return prediction, False

    def _estimate(self, request: Request, prediction: Prediction) -> float:
        """``estimate()``, or the default estimate of a neutral prediction where it is not finite."""
        estimate: object = self.estimate(request, prediction)
        if type(estimate) is float and math.isfinite(estimate):  # the default's: no conversion
            return estimate
        _refuse_awaitable(self, "estimate", estimate)
        # Anything float() takes as a number (a numpy scalar or 0-d array, a Decimal), not a
        # bool or a string, that is finite; kept as a float, which any key can use.
        if not isinstance(estimate, (bool, str, bytes)):
            try:
                value = float(cast(Any, estimate))
            except Exception:  # not a number; past float's range; a tensor of many (RuntimeError)
                value = math.nan
            if math.isfinite(value):
                return value
        neutral = Scheduler.estimate(self, request, Prediction(self._mean_tokens))
        logger.error(
            "%s.estimate returned %r, not a finite number: the request is ranked by a neutral "
            "prediction's estimate (%.3g s) instead",
            type(self).__name__,
            estimate,
            neutral,
        )
        return neutral

    async def _acquire(self, request: Request, handle: object = None) -> _Entry:
        """Admit ``request``: run it now or wait in the queue for a slot.

        ``handle``: what the caller passed; where it is a :class:`Request`,
        :meth:`position` finds the entry by it (``request`` may be a copy
        with the call's fields).
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        # From the thread check to the slot taken or the place in the queue, under a lock: a loop
        # of another thread must not find the scheduler idle between this loop's check and its
        # taking a slot (both would run on one slot, and one wait for ever on the other's event).
        with self._admitting:
            entry, runs_now = self._admit(request, handle)
        if runs_now:
            try:
                await anyio.lowlevel.cancel_shielded_checkpoint()
            except BaseException:  # pragma: no cover - shielded; defensive
                self._end(entry, "cancelled")
                raise
            return entry
        await self._wait_turn(entry)
        if entry.state is EntryState.CLOSED:
            # Counted here, not as it was closed out: a caller cancelled at that very moment
            # ends cancelled, and a count once made never goes down (Prometheus counters).
            self._settle_closed_out("closed")
            raise SchedulerClosed("the scheduler closed while this request was waiting", waited=True)
        return entry

    async def _wait_turn(self, entry: _Entry) -> None:
        """Wait in the queue until ``entry`` is handed a slot (or closed out); RUNNING after.

        Cancelled meanwhile, it ends as cancelled (a paused one too: its state
        says so, and ending it later changes nothing).
        """
        assert entry.event is not None  # queued: it was given its event
        try:
            await entry.event.wait()
        except BaseException:
            if entry.state is EntryState.WAITING:
                entry.state = EntryState.CANCELLED
                self._unindex(entry)
                self._queue.discard(entry)
                self._counts["cancelled"] += 1
            elif entry.state is EntryState.GRANTED:
                # Handed a slot at the moment it was cancelled: pass it on.
                self._end(entry, "cancelled")
                if self._close_when_idle:
                    await self._close_backend_if_left()
            elif entry.state is EntryState.CLOSED:
                # Closed out at the moment it was cancelled: the caller sees the
                # cancellation, so that is how it ended (not yet counted as closed).
                entry.state = EntryState.CANCELLED
                self._settle_closed_out("cancelled")
            raise
        if entry.state is EntryState.GRANTED:
            entry.state = EntryState.RUNNING

    def _settle_closed_out(self, outcome: str) -> None:
        """A closed-out request's caller has woken: count how it ended; the last one wakes aclose()."""
        self._counts[outcome] += 1
        self._closing_out -= 1
        if not self._closing_out and self._closed_out is not None:
            self._closed_out.set()
            self._closed_out = None

    def _admit(self, request: Request, handle: object) -> tuple[_Entry, bool]:
        """:meth:`_acquire`'s part without a wait: the request given a slot (``True``) or queued."""
        thread = threading.get_ident()
        if thread != self._loop_thread:
            if self._running or self._queue:
                # Its waits are that loop's events: from another loop a request would wait for ever.
                raise RuntimeError(
                    "this Scheduler is serving requests in the event loop of another thread; one "
                    "Scheduler serves one event loop at a time: from other threads use "
                    "sjfsched.SyncScheduler"
                )
            self._loop_thread = thread  # idle: a loop of another thread may take it over
        if self._state is _State.CLOSED:
            self._counts["rejected"] += 1
            raise SchedulerClosed("the scheduler is closed")
        runs_now = self._free > 0 and not self._queue
        if not runs_now and len(_holding.get()) + len(self._blocks) >= self._concurrency:
            self._check_not_waiting_for_itself()  # blocks or notes enough to hold every slot
        if not runs_now and self._max_queue is not None and len(self._queue) >= self._max_queue:
            # Refused before it is predicted: its estimate stays out of the median's window.
            self._counts["rejected"] += 1
            raise QueueFull(f"{len(self._queue)} requests are waiting (max_queue={self._max_queue})")
        prediction, stand_in = self._predict(request)
        try:
            estimate = self._estimate(request, prediction)
        except self._loop_exits as exc:  # a SyncScheduler's: see _exit_in_loop
            raise _exit_in_loop(f"{type(self).__name__}.estimate", exc) from exc
        now = anyio.current_time()
        # The cap sort_key reads already counts this estimate; a request it refuses takes it back.
        pushed_out = self._remember(estimate)
        try:
            key = self.sort_key(Job(request, prediction, estimate, now))
            _refuse_awaitable(self, "sort_key", key)
            if _holds_nan(key):
                raise ValueError(
                    f"{type(self).__name__}.sort_key returned {key!r}: a key holding a NaN compares "
                    f"neither below nor above any other, so the queue could not keep its order"
                )
        except BaseException as exc:
            self._forget(estimate, pushed_out)
            if isinstance(exc, self._loop_exits):
                raise _exit_in_loop(f"{type(self).__name__}.sort_key", exc) from exc
            raise
        self._seq += 1
        entry = _Entry(request, prediction, estimate, key, now, self._seq)
        entry.stand_in = stand_in
        if isinstance(handle, Request):
            entry.handle = handle

        if runs_now:
            self._free -= 1
            self._running += 1
            entry.state = EntryState.RUNNING
            return entry, True

        self._by_request.setdefault(id(entry.handle), []).append(entry)
        self._queue.push(entry)
        entry.event = anyio.Event()
        return entry, False

    def _unindex(self, entry: _Entry) -> None:
        """Drop a no longer waiting entry from the by-request index."""
        entries = self._by_request.get(id(entry.handle))
        if entries is None:
            return
        for i, e in enumerate(entries):
            if e is entry:
                del entries[i]
                break
        if not entries:
            del self._by_request[id(entry.handle)]

    def _remember(self, estimate: float) -> float | None:
        """Add a (finite) estimate to the window the median is taken over (O(window)).

        Returns the estimate it pushed out of the window, if any, for :meth:`_forget`.
        """
        recent, ordered = self._recent, self._recent_sorted
        recent.append(estimate)
        bisect.insort(ordered, estimate)
        if len(recent) > CAP_WINDOW:
            oldest = recent.popleft()
            del ordered[bisect.bisect_left(ordered, oldest)]
            return oldest
        return None

    def _forget(self, estimate: float, pushed_out: float | None) -> None:
        """Undo the latest :meth:`_remember`: its request was not accepted."""
        recent, ordered = self._recent, self._recent_sorted
        recent.pop()
        del ordered[bisect.bisect_left(ordered, estimate)]
        if pushed_out is not None:
            recent.appendleft(pushed_out)
            bisect.insort(ordered, pushed_out)

    def _should_pause(self, stream: ChunkStream) -> bool:
        """Whether a running answer should give its slot to the request ranked first (``preempt``)."""
        entry = stream._entry
        if not self._queue or self._free > 0 or entry.promoted:
            return False
        if self._max_wait is not None:
            now = anyio.current_time()
            if now - entry.submitted >= self._max_wait or self._queue.has_overdue(now):
                return False  # it would run next again; an overdue request, ranked or not, would
        found, first = self._queue.peek_key()
        try:
            if not found or not first < entry.key:
                return False
            key = self._key_of_rest(stream)
            if not first < key:
                return False
            if key < entry.key:
                entry.key = key
        except self._caller_errors:  # keys that do not compare, a sort_key or estimate that fails
            # Not paused this time; asked again at its next chunk, as a failure may pass (and a
            # request of a higher priority class still pauses it then). Said once an answer.
            if not stream._rest_key_failed:
                stream._rest_key_failed = True
                logger.warning(
                    "%s: the key of what is left of a running answer could not be taken or compared "
                    "with a waiting one's: it is not paused for it",
                    type(self).__name__,
                    exc_info=True,
                )
            return False
        return True

    def _key_of_rest(self, stream: ChunkStream) -> Any:
        """The key of what is left of a running answer: :meth:`sort_key` of its job with the
        estimate of the rest of its predicted answer plus reading its prompt and answer again.

        Where the answer has reached its prediction (or ``max_tokens``) what is left of it is
        unknown: its job's estimate is that of one token (the least it can still write), so
        that only a request ranked before it for something other than length (a priority
        class, a policy's deadline) pauses it.  Ranked
        by the cost of resuming it, it was paused for every request shorter than that, again
        and again as that cost grew, and where a prompt is read only a few times faster than
        an answer is written the pauses cost more than they saved.
        """
        entry = stream._entry
        done = stream._output_tokens
        prediction = entry.prediction
        prompt: float | None = stream._prompt_tokens
        if prompt is None:
            prompt = prediction.prompt_tokens
        if prompt is None:
            prompt = entry.request.input_chars / 4.0
        predicted = prediction.tokens
        if entry.request.max_tokens is not None:  # the rest is within what max_tokens leaves
            predicted = min(predicted, float(entry.request.max_tokens))
        if done >= predicted:
            estimate = self._estimate(entry.request, attrs.evolve(prediction, tokens=1.0, prompt_tokens=0.0))
        else:
            left = attrs.evolve(prediction, tokens=predicted - done, prompt_tokens=prompt + done)
            estimate = self._estimate(entry.request, left)
        key = self.sort_key(Job(entry.request, entry.prediction, estimate, entry.submitted))
        _refuse_awaitable(self, "sort_key", key)  # closed, and said, rather than compared
        return key

    def _requeue(self, entry: _Entry) -> None:
        """Pause a running request: back in the queue (by its key), its slot handed on."""
        entry.pauses += 1
        self._counts["preempted"] += 1
        entry.state = EntryState.WAITING
        entry.event = anyio.Event()
        self._queue.requeue(entry)
        self._by_request.setdefault(id(entry.handle), []).append(entry)
        self._running -= 1
        self._free += 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiting requests (work-conserving)."""
        queue = self._queue
        while self._free > 0 and queue:
            now = anyio.current_time()
            entry = queue.pop(now)
            assert entry is not None
            self._unindex(entry)
            if entry.promoted:  # once: a promoted request is never paused
                self._counts["promoted"] += 1
            if entry.pauses == 0:  # a paused request goes on: it started earlier
                entry.started = now
            entry.state = EntryState.GRANTED
            self._free -= 1
            self._running += 1
            assert entry.event is not None
            entry.event.set()

    def _end(self, entry: _Entry, outcome: str) -> None:
        """Free the slot of a running (or granted) request and count it."""
        if entry.state is EntryState.DONE or entry.state is EntryState.CANCELLED:
            return  # ended already (CANCELLED: a paused request cancelled as it waited)
        if entry.state is EntryState.WAITING:  # paused, and its block left: it holds no slot
            entry.state = EntryState.CANCELLED
            self._unindex(entry)
            self._queue.discard(entry)
            self._counts[outcome] += 1
            assert entry.event is not None
            entry.event.set()  # a read waiting for its turn sees the block was left
            return
        entry.state = EntryState.DONE
        self._counts[outcome] += 1
        self._running -= 1
        self._free += 1
        self._dispatch()
        if self._running == 0 and self._idle is not None:
            self._idle.set()

    @staticmethod
    def _observed_tokens(entry: _Entry, completion: Completion) -> int | None:
        """The answer's length as the predictor learns it (``None``: it learns nothing).

        A request whose prediction was longer than its ``max_tokens`` is not
        observed, however it ended: its answer was cut at the cap (it would
        have run at least that long, how much longer nobody knows), or it
        ended below it.  Observing the ones that ended and not the cut ones
        would teach the predictor shorter lengths with every capped request;
        observing the cut ones at their cut length, or at the prediction,
        would pull it down to the caps, or up without end.  The choice is
        made on the prediction alone, before the answer.  A request
        predicted within its cap is observed as it ended (cut at the cap: a
        lower bound, at least its prediction).
        """
        cap = entry.request.max_tokens
        if cap is not None and entry.prediction.tokens > cap:
            return None
        return completion.output_tokens

    def _complete(self, entry: _Entry, completion: Completion, *, known: bool = True) -> None:
        """Count a request completed and learn from it (``known``: its output length is known,
        as a stream's is and a ticket's once reported; an answer of 0 tokens too)."""
        self._end(entry, "completed")
        prompt_tokens = (
            completion.prompt_tokens
            if completion.prompt_tokens is not None
            else entry.request.input_chars / 4.0
        )
        if completion.output_tokens > 0:
            self._mean_tokens = 0.95 * self._mean_tokens + 0.05 * completion.output_tokens
            if self._learn_rates and not entry.pauses:  # a paused answer's times hold the pauses
                # Where the backend made it wait before serving it, from then.
                start = max(completion.started, entry.service_started or completion.started)
                self._rates.observe(
                    prompt_tokens,
                    completion.output_tokens,
                    start,
                    # An answer in one piece tells prefill from decoding no better than a
                    # ticket without a first token: all of it counts as decoding.
                    start if entry.one_piece else completion.first_token,
                    completion.finished,
                )
        if known and not entry.stand_in and self._observe is not None:
            # Learnt from with the prediction made for it (none was, where the predictor failed).
            observed = self._observed_tokens(entry, completion)
            if observed is not None:
                try:
                    result = self._observe(entry.request, entry.prediction, observed)
                    if inspect.iscoroutine(result):  # a plain function that returns a coroutine
                        result.close()  # never awaited: dropped without a "never awaited" warning
                        raise TypeError("observe() returned a coroutine: it is called, never awaited")
                except self._caller_errors:
                    self._counts["predictor_errors"] += 1
                    logger.warning("predictor observe() failed", exc_info=True)
        if self._on_complete is not None or type(self).on_complete is not Scheduler.on_complete:
            on_complete: Callable[[Completion], object] = self.on_complete  # a subclass's may return
            try:
                _not_awaited("on_complete", on_complete(completion))
            except self._caller_errors:
                logger.warning("on_complete callback failed", exc_info=True)


def _not_awaited(name: str, result: object) -> None:
    """Drop (and log) a coroutine that a plain function called as ``name`` returned: it is not
    awaited (closed here, so without a "never awaited" warning)."""
    if inspect.iscoroutine(result):
        result.close()
        logger.error("%s returned %r, which is not awaited: %s must be a plain function", name, result, name)


#: What a read of a stream after its block was left says (``block``: how the block is opened).
LEFT_EARLY = (
    "this stream was left before its end (its slot is gone): read it inside its "
    "`{block} sched.stream(...)` block"
)


@final
class ChunkStream:
    """The chunks of one scheduled request, as an async iterator.

    Backend failures surface here as :class:`BackendError`.  After the last
    chunk, :attr:`completion` holds the whole answer and its timings.
    """

    def __init__(self, entry: _Entry, backend: Backend, scheduler: Scheduler) -> None:
        self._entry = entry
        #: what the backend's code holds as it runs for this request (for Scheduler.aclose)
        self._held = (scheduler, entry, _current_task_id())
        self._outer: tuple[_Note, ...] | None = None
        self._inner: tuple[_Note, ...] = ()
        self._noted = False  # the caller noted _held for the whole stream (Scheduler.complete)
        self._backend_name = type(backend).__name__
        self._iterator: AsyncIterator[Chunk] | None = None
        self._backend = backend
        self._parts: list[str] = []
        self._thinking: list[str] = []
        self._tool_calls: list[Mapping[str, Any]] = []
        self._output_tokens = 0
        self._prompt_tokens: int | None = None
        self._finish_reason: str | None = None
        self._first_token: float | None = None
        self._first_tokens = 0  # tokens of the chunk that brought the first token
        self._completion: Completion | None = None
        self._error: BaseException | None = None
        self._settled = False  # its block was left: the slot is gone
        self._interrupted = False  # a read was cancelled midway: the backend's stream is spent
        self._scheduler = scheduler
        #: the backend can pause and resume this request (see Scheduler(preempt=))
        self._resumable = scheduler.preempt and _resumable(backend, entry.request, scheduler._caller_errors)
        self._paused_at = 0  # tokens written at the latest pause
        self._rest_key_failed = False  # the key of its rest could not be had once (said once)

    @property
    def job(self) -> Job:
        e = self._entry
        return Job(e.request, e.prediction, e.estimate, e.submitted)

    @property
    def completion(self) -> Completion:
        """The finished answer; only once the stream has been read to the end."""
        if self._completion is None:
            raise RuntimeError("the stream has not been read to the end")
        return self._completion

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Chunk:
        if self._completion is not None or self._error is not None:
            raise StopAsyncIteration
        if self._settled:
            raise RuntimeError(LEFT_EARLY.format(block="async with"))
        if self._interrupted:
            raise RuntimeError(
                "a read of this stream was cancelled (Ctrl-C, a timeout), which ended the backend's "
                "stream: the rest of the answer is lost; leave the block (it counts as cancelled)"
            )
        if (
            self._resumable
            and self._iterator is not None
            and self._finish_reason is None  # an answer that has ended is not paused
            and self._scheduler._should_pause(self)
        ):
            await self._pause()
        try:
            if self._iterator is None:
                if self._entry.pauses:  # paused: the backend goes on with the answer so far
                    iterator: object = cast("Resumable", self._backend).resume(
                        self._entry.request, "".join(self._parts), self._output_tokens
                    )
                    what = "resume"
                else:
                    # Cleared once, as the backend's stream starts: a backend may mark the
                    # start of service on any read before the first token (a pool after a
                    # chunk that only counts the prompt), and that mark must survive.
                    service_started.set(None)
                    iterator = self._backend.stream(self._entry.request)
                    what = "stream"
                if not hasattr(iterator, "__anext__"):
                    if inspect.iscoroutine(iterator):
                        iterator.close()  # an async def that returns: dropped without a warning
                    raise TypeError(
                        f"{self._backend_name}.{what}() returned {type(iterator).__name__}, not an "
                        f"async iterator (an async generator: async def with yield)"
                    )
                self._iterator = cast("AsyncIterator[Chunk]", iterator)
            if self._noted:  # complete(): noted for the whole call
                chunk = await self._iterator.__anext__()
            else:  # the backend's code holds the slot as it reads
                held = self._note()
                try:
                    chunk = await self._iterator.__anext__()
                finally:
                    _holding.set(held)
            if not isinstance(chunk, Chunk):
                raise TypeError(f"backend yielded {type(chunk).__name__}, not a Chunk")
        except StopAsyncIteration:
            self._iterator = None  # exhausted: nothing left to close
            self._finish()
            raise
        except BackendError as exc:  # the backend's own failure, as the protocol asks
            self._error = exc
            raise
        except Exception as exc:  # anything else, our other errors too (an inner scheduler's QueueFull)
            self._error = exc
            raise BackendError(f"{self._backend_name} failed: {exc!r}") from exc
        except self._scheduler._loop_exits as exc:  # a SyncScheduler's: see _exit_in_loop
            # sys.exit() or KeyboardInterrupt from the backend's code (a stopping criterion, a
            # tool): in the SyncScheduler's own thread it would end the loop and every request.
            self._interrupted = True  # the stream cannot go on
            error = BackendError(
                f"{self._backend_name} raised {exc!r} in the SyncScheduler's event loop thread "
                "(where it would end the loop, and every other request with it)"
            )
            self._error = error
            raise error from exc
        except BaseException:
            # Cancelled (or interrupted) inside the backend: its stream cannot go on, and a
            # later read must not take its end for the answer's.
            self._interrupted = True
            raise
        if self._first_token is None and (chunk.tokens or chunk.text):
            self._first_token = anyio.current_time()
            self._first_tokens = chunk.tokens
            self._entry.service_started = service_started.get()
        self._parts.append(chunk.text)
        if chunk.thinking:
            self._thinking.append(chunk.thinking)
        if chunk.tool_calls:
            self._tool_calls.extend(chunk.tool_calls)
        self._output_tokens += chunk.tokens
        if chunk.prompt_tokens is not None:
            if not self._entry.pauses:
                self._prompt_tokens = chunk.prompt_tokens
            elif self._prompt_tokens is None:  # a resumed stream's count holds the answer before
                self._prompt_tokens = max(0, chunk.prompt_tokens - self._paused_at)
        if chunk.finish_reason is not None:
            self._finish_reason = chunk.finish_reason
        return chunk

    async def _pause(self) -> None:
        """Close the backend's stream, give the slot to the request ranked first, wait for the
        turn again (the next read resumes)."""
        entry, scheduler = self._entry, self._scheduler
        self._paused_at = self._output_tokens
        try:
            await self._close()
            scheduler._requeue(entry)
            await scheduler._wait_turn(entry)
        except BaseException:
            self._interrupted = True  # cancelled as it waited: the answer cannot go on
            raise
        if entry.state is not EntryState.RUNNING:  # its block was left while it waited
            self._interrupted = True
            raise RuntimeError(LEFT_EARLY.format(block="async with"))

    def _note(self) -> tuple[_Note, ...]:
        """Note the code about to run as the backend's for this request; returns the notes to restore.

        :meth:`Scheduler.aclose` sees the note from the backend's code wherever
        that runs: the tasks and worker threads it starts copy the context.
        """
        held = _holding.get()
        task = _current_task_id()
        if task != self._held[2]:  # another task reads the stream: the backend's code runs in it
            self._held = (self._held[0], self._held[1], task)
            self._outer = None
        if held is not self._outer:  # the same notes as at the last read, mostly
            self._outer, self._inner = held, (*held, self._held)
        _holding.set(self._inner)
        return held

    def _finish(self) -> None:
        e = self._entry
        e.one_piece = self._output_tokens > 1 and self._first_tokens >= self._output_tokens
        self._completion = Completion(
            request=e.request,
            text="".join(self._parts),
            output_tokens=self._output_tokens,
            prompt_tokens=self._prompt_tokens,
            prediction=e.prediction,
            estimate=e.estimate,
            submitted=e.submitted,
            started=e.started,
            first_token=self._first_token,
            finished=anyio.current_time(),
            finish_reason=self._finish_reason,
            promoted=e.promoted,
            preemptions=e.pauses,
            thinking="".join(self._thinking),
            tool_calls=tuple(self._tool_calls),
        )

    async def _close(self) -> None:
        iterator, self._iterator = self._iterator, None
        if iterator is None:
            return
        aclose = getattr(iterator, "aclose", None)
        if aclose is None:
            return
        with anyio.move_on_after(_SHIELDED_CLOSE_SECONDS, shield=True):
            try:
                held = self._note()
                try:
                    await aclose()
                finally:
                    _holding.set(held)
            except self._scheduler._caller_errors:  # with a SyncScheduler's loop exits: see _exit_in_loop
                logger.warning("closing the %s stream failed", self._backend_name, exc_info=True)


@final
class Ticket:
    """Your turn to run, from :meth:`Scheduler.admit`.

    Call :meth:`report` with the output length once you know it, and
    :meth:`first_token` when the first token arrives if you stream, both
    inside the ``admit()`` block (from any task or worker thread of the
    loop): once it has ended the request is over, and they raise
    :class:`RuntimeError` rather than be lost.  :meth:`report` is called
    once, and :meth:`first_token` before it: a second report, or a first
    token after the answer's length was reported, raises too.
    """

    def __init__(self, entry: _Entry, clock: Callable[[], float]) -> None:
        self._entry = entry
        #: the scheduler's loop's own clock (:func:`_loop_clock`), which any thread may read
        self._clock = clock
        self._output_tokens: int | None = None
        self._finish_reason: str | None = None
        self._prompt_tokens: int | None = None
        self._first_token: float | None = None
        #: how the request ended once its admit() block has: "completed", "failed" or "cancelled"
        self._ended: str | None = None

    @property
    def request(self) -> Request:
        return self._entry.request

    @property
    def job(self) -> Job:
        e = self._entry
        return Job(e.request, e.prediction, e.estimate, e.submitted)

    @property
    def wait(self) -> float:
        """Seconds this request waited for its turn."""
        return self._entry.started - self._entry.submitted

    @property
    def promoted(self) -> bool:
        return self._entry.promoted

    def first_token(self) -> None:
        """Note that the first output token has arrived (for rate learning).

        Call it in the scheduler's event loop or from any thread (a sync
        client run with ``asyncio.to_thread`` or ``anyio.to_thread.run_sync``):
        it reads the loop's own clock, which any thread may read.
        """
        self._check_open("first_token")
        if self._first_token is None:
            if self._reported:
                raise RuntimeError(
                    "Ticket.first_token() after report(), none before: the answer had ended by then, "
                    "and its first token's time would teach the scheduler wrong rates; call "
                    "first_token() as the first token arrives"
                )
            self._first_token = self._clock()

    def report(
        self, output_tokens: int, prompt_tokens: int | None = None, *, finish_reason: str | None = None
    ) -> None:
        """Tell the scheduler how long the answer was, in tokens.

        ``finish_reason``, if you know it, goes into the :class:`Completion`
        (``"length"``: cut off by ``max_tokens``, which a :class:`RequestLog`
        records and ``skip_truncated`` leaves out).
        """
        self._check_open("report")
        if self._reported:
            raise RuntimeError(
                f"Ticket.report() a second time (the first reported {self._output_tokens} output "
                "tokens): report the answer's length once, when it is known"
            )
        output = _token_count("output_tokens", output_tokens)
        prompt = None if prompt_tokens is None else _token_count("prompt_tokens", prompt_tokens)
        if finish_reason is not None and not isinstance(finish_reason, str):
            raise TypeError(f"Ticket.report: finish_reason must be a str or None, got {finish_reason!r}")
        self._output_tokens, self._prompt_tokens = output, prompt
        self._finish_reason = finish_reason

    def _check_open(self, method: str) -> None:
        if self._ended is not None:
            how = "was cancelled" if self._ended == "cancelled" else self._ended
            raise RuntimeError(
                f"Ticket.{method}() after its admit() block ended (the request {how}): this "
                "would be lost; call it inside the block"
            )

    @property
    def _reported(self) -> bool:
        """Whether :meth:`report` was called: the answer's length is known (0 too)."""
        return self._output_tokens is not None

    def _completion(self, now: float) -> Completion:
        e = self._entry
        first = self._first_token
        # Without a first-token time the whole call counts as decoding, as an answer in one piece.
        e.one_piece = first is None
        return Completion(
            request=e.request,
            text="",
            output_tokens=self._output_tokens or 0,
            prompt_tokens=self._prompt_tokens,
            prediction=e.prediction,
            estimate=e.estimate,
            submitted=e.submitted,
            started=e.started,
            first_token=first,
            finished=now,
            finish_reason=self._finish_reason,
            promoted=e.promoted,
        )


def _loop_clock() -> Callable[[], float]:
    """The running event loop's clock as a function any thread may call: what
    ``anyio.current_time()`` reads in the loop (asyncio's ``loop.time``, trio's clock).
    Called in the loop (``admit()``), where one of the two is found."""
    trio = sys.modules.get("trio")
    if trio is not None:  # first: trio run as a guest of an asyncio loop keeps its own clock
        try:
            clock: Callable[[], float] = trio.lowlevel.current_clock().current_time
        except RuntimeError:  # not in a trio run
            pass
        else:
            return clock
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:
        return anyio.current_time


def _exit_in_loop(where: str, exc: BaseException) -> RuntimeError:
    """What the caller gets for a SystemExit or KeyboardInterrupt that policy code raised in a
    SyncScheduler's event loop thread, where it would end the loop and every request with it."""
    return RuntimeError(
        f"{where} raised {exc!r} in the SyncScheduler's event loop thread (where it would end "
        "the loop, and every other request with it): the request is refused"
    )


def _token_count(name: str, value: object) -> int:
    """A count for :meth:`Ticket.report`: an int >= 0 (numpy's integers too), as an ``int``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Ticket.report: {name} must be an int >= 0, got {type(value).__name__} {value!r}")
    count = int(value)
    if count < 0:
        raise ValueError(f"Ticket.report: {name} must be an int >= 0, got {shown_count(count)}")
    if count > MAX_TOKEN_COUNT:
        raise ValueError(
            f"Ticket.report: {name} must be at most {MAX_TOKEN_COUNT:,}, got {shown_count(count)}"
        )
    return count


def _max_wait(value: object) -> float | None:
    """``max_wait`` checked, as a float (from any real number, numpy's too) or ``None``."""
    if value is None:
        return None
    seconds = _as_float(value)
    if not isinstance(seconds, float) or math.isnan(seconds) or seconds < 0:
        raise ValueError(f"max_wait must be a number of seconds >= 0 or None, got {value!r}")
    return seconds


#: How deep :func:`_holds_nan` looks into a sort key's tuples, lists and dataclasses.
_NAN_DEPTH = 8


def _holds_nan(key: object, depth: int = 0) -> bool:
    """Whether a sort key is, or holds, a NaN (which breaks a heap's order).

    Looked for in tuples and lists, and in the compared fields of an
    ``order=True`` dataclass or attrs class (which compare as the tuple of
    them), down to :data:`_NAN_DEPTH` levels (a key that holds itself ends
    there).
    """
    if type(key) is float:  # the default key's types (a tuple of them): no ABC check
        return key != key
    if type(key) is int or depth >= _NAN_DEPTH:
        return False
    if isinstance(key, (tuple, list)):
        for part in key:
            if type(part) is float:
                if part != part:
                    return True
            elif _holds_nan(part, depth + 1):
                return True
        return False
    if isinstance(key, numbers.Real):
        return bool(key != key)
    kind = type(key)
    params = getattr(kind, "__dataclass_params__", None)
    if params is not None and getattr(params, "order", False):
        return any(
            _holds_nan(getattr(key, f.name, None), depth + 1)
            for f in dataclasses.fields(cast(Any, key))
            if f.compare
        )
    if attrs.has(kind) and _attrs_made(getattr(kind, "__lt__", None)):
        return any(
            _holds_nan(getattr(key, a.name, None), depth + 1)
            for a in attrs.fields(cast(Any, kind))
            if a.order
        )
    return False


def _attrs_made(method: object) -> bool:
    """Whether ``method`` was written by attrs (an ``order=True`` class's, not one of its own)."""
    made_in = getattr(sys.modules.get("attr._make"), "__file__", None)
    code = getattr(method, "__code__", None)
    return made_in is not None and getattr(code, "co_filename", None) == made_in


def _log_close_failure(task: Any) -> None:
    """A backend's close that went on after asyncio cancelled its caller: log how it failed."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("closing the backend failed", exc_info=task.exception())


def _running_asyncio() -> ModuleType | None:
    """The ``asyncio`` module where this runs in an asyncio task (``None`` under trio)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        return asyncio if asyncio.current_task() is not None else None
    except RuntimeError:  # no asyncio loop running in this thread
        return None


def _outcome_of(exc: BaseException) -> str:
    """``"cancelled"`` for a cancellation (or one only of those in an exception group: trio's
    nurseries wrap Cancelled in one), ``"failed"`` for anything else."""
    if _only_cancellations(exc, (anyio.get_cancelled_exc_class(), GeneratorExit, KeyboardInterrupt)):
        return "cancelled"
    return "failed"


def _only_cancellations(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    if isinstance(exc, kinds):
        return True
    leaves = getattr(exc, "exceptions", None)  # a BaseExceptionGroup (the backport's on 3.10)
    if not isinstance(leaves, tuple) or not leaves or not hasattr(exc, "split"):
        return False
    return all(isinstance(leaf, BaseException) and _only_cancellations(leaf, kinds) for leaf in leaves)


def _refuse_awaitable(scheduler: Scheduler, method: str, value: object) -> None:
    """``TypeError`` where a policy's hook gave an awaitable: an ``async def`` behind a
    decorator that hides it (``functools.wraps``), which the check at construction misses."""
    if inspect.isawaitable(value):
        close = getattr(value, "close", None)
        if inspect.iscoroutine(value) and close is not None:
            close()  # never awaited: no "was never awaited" warning for it
        raise TypeError(
            f"{type(scheduler).__name__}.{method}() returned {type(value).__name__}: it must be a "
            "plain method (the scheduler calls it and never awaits it)"
        )


def _resumable(
    backend: object, request: Request, caught: tuple[type[BaseException], ...] = (Exception,)
) -> bool:
    """Whether ``backend`` can pause and resume ``request`` (:class:`Resumable`); a failure: no.

    ``caught``: what counts as that failure (a SyncScheduler's loop exits too: see _exit_in_loop).
    """
    check = getattr(backend, "resumable", None)
    if not callable(check) or not callable(getattr(backend, "resume", None)):
        return False
    try:
        return check(request) is True
    except caught:
        logger.warning("%s.resumable() failed: not paused", type(backend).__name__, exc_info=True)
        return False


def _coerce_request(request: Request | str | None, fields: Mapping[str, Any]) -> Request:
    if isinstance(request, Request):
        return request._replace(fields) if fields else request
    if isinstance(request, str):
        return Request(request, **fields)
    if request is None:
        return Request(**fields)
    raise TypeError(f"expected a Request, a prompt str or messages=..., got {type(request).__name__}")


def _default_predictor() -> Predictor:
    from .predictors import default_predictor

    return default_predictor()
