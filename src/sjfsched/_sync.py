"""A blocking facade over Scheduler, for threaded programs."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import enum
import functools
import inspect
import sys
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, final, overload

import anyio.from_thread
import attrs
from typing_extensions import Self, TypeVarTuple, Unpack
from typing_extensions import TypeVar as DefaultedTypeVar

from ._errors import SchedulerClosed
from ._queue import EntryState, _Entry
from ._records import Chunk, Completion, Request, RequestFields
from ._scheduler import (
    _HOLDERS,
    LEFT_EARLY,
    ChunkStream,
    FrameNote,
    Job,
    Scheduler,
    SchedulerStatistics,
    Ticket,
    block_openers,
    opened_here,
)

if TYPE_CHECKING:
    from .backends._base import Backend
    from .predictors._base import Predictor

__all__ = ["SyncScheduler", "SyncStream"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: What a read after its block says, in the words of ChunkStream's.
_LEFT_EARLY = LEFT_EARLY.format(block="with")
#: How often a thread waiting on the loop wakes: an exception raised in it from another thread
#: (``PyThreadState_SetAsyncExc``, as thread-level timeouts do) is seen only when it runs.  A
#: call's wait wakes after 0.05 s, then twice as long each time, up to once a second: a thousand
#: threads queued for long cost a few wake-ups a second, not a third of a core.
_FIRST_WAKE_SECONDS: Final = 0.05
_WAKE_SECONDS: Final = 1.0
#: A stream's reader, between two chunks, wakes this often.
_STREAM_WAKE_SECONDS: Final = 0.1
#: What a request running when an interrupted close() stopped the event loop ends with.
_TORN_DOWN = (
    "the scheduler was closed while this request ran: its close() was interrupted (Ctrl-C), "
    "so it stopped the event loop without waiting for the request"
)
#: Why a trio SyncScheduler refuses a thread that runs trio.
_TRIO_THREAD = (
    "a SyncScheduler(async_backend='trio') cannot be called from a thread that runs a trio event "
    "loop: trio does not let a blocking call wait there. In trio code use sjfsched.Scheduler, or "
    "call this from a worker thread (trio.to_thread.run_sync)"
)


class _Unset(enum.Enum):
    """A knob not given to :class:`SyncScheduler`: the scheduler class's own default applies."""

    UNSET = "the scheduler's default"


_UNSET: Final = _Unset.UNSET


@final
class SyncStream:
    """The chunks of one scheduled request, as a blocking iterator.

    A task in the event loop (its *pump*) reads the request's stream one
    chunk at a time, when :meth:`__next__` finds none waiting, and hands each
    over through a thread-safe queue.  So an interrupt (Ctrl-C) while this
    thread waits for a chunk loses nothing and leaves no read half-done in
    the loop: the chunk is there for the next read, and leaving the block
    stops the pump and ends the request.

    As with :class:`~sjfsched.ChunkStream`: a read after the end (or after
    the backend's failure was raised) raises :class:`StopIteration`, and a
    read after the block was left before the end raises
    :class:`RuntimeError`, the slot being gone.
    """

    def __init__(
        self,
        portal: anyio.from_thread.BlockingPortal,
        stream: ChunkStream | None = None,
        *,
        torn_down: threading.Event | None = None,
    ) -> None:
        self._portal = portal
        self._stream = stream
        self._torn_down = torn_down  # set as the scheduler's loop is stopped (close())
        # Filled by the pump (in the loop's thread), emptied by the reader: a
        # deque's append and popleft are atomic.
        self._results: collections.deque[tuple[str, Any]] = collections.deque()
        self._arrived = threading.Event()
        self._ended = False  # the end, or the failure, was handed to the reader
        self._stopped = False  # the pump stopped before the end: its block was left
        # the pump's side, in the loop: a chunk is wanted, one is being read, its wake-up
        self._wanted = False
        self._reading = False
        self._wake: anyio.Event | None = None
        self._on_read: Callable[[], None] | None = None  # notes the reading thread (for close())

    @property
    def job(self) -> Job:
        assert self._stream is not None
        return self._stream.job

    @property
    def completion(self) -> Completion:
        """The finished answer; only once the stream has been read to the end."""
        assert self._stream is not None
        return self._stream.completion

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Chunk:
        if self._on_read is not None:
            self._on_read()
        if self._ended:
            raise StopIteration
        if self._stopped and (not self._results or self._results[0][0] == "chunk"):
            # The pump has stopped: nothing more comes.  A chunk it had read
            # (for a read that was interrupted) is part of an answer cut short.
            raise RuntimeError(_LEFT_EARLY)
        if not self._results:
            self._portal.call(self._want)  # idempotent: the next chunk, unless one is on its way
        while not self._results:
            if self._stopped:  # left meanwhile (from another thread)
                raise RuntimeError(_LEFT_EARLY)
            self._arrived.wait(_STREAM_WAKE_SECONDS)  # an interrupt while waiting takes nothing
            self._arrived.clear()
        head = self._results[0]  # looked at, not yet taken
        try:
            self._results.popleft()
        except BaseException:  # interrupted as it was taken: put it back for the next read
            if not self._results or self._results[0] is not head:
                self._results.appendleft(head)
            raise
        kind, value = head
        if kind == "chunk":
            chunk: Chunk = value
            return chunk
        self._ended = True
        if kind == "end":
            raise StopIteration
        raise value

    def _stop(self) -> None:
        """No chunk comes any more: the block was left, and the pump stopped with it."""
        self._stopped = True
        self._arrived.set()  # a reader waiting in another thread sees it at once

    def _put(self, kind: str, value: Any) -> None:  # in the loop
        self._results.append((kind, value))
        self._arrived.set()

    def _want(self) -> None:  # in the loop
        if not self._reading and not self._results:
            self._wanted = True
            if self._wake is not None:
                self._wake.set()

    async def _pump(self, stream: ChunkStream) -> None:  # in the loop, while the block is open
        cancelled = anyio.get_cancelled_exc_class()
        try:
            while True:
                while not self._wanted:
                    self._wake = anyio.Event()
                    await self._wake.wait()
                self._wanted, self._reading = False, True
                try:
                    chunk = await stream.__anext__()
                except StopAsyncIteration:
                    self._put("end", None)
                    return
                except cancelled:
                    raise
                except BaseException as exc:  # the reader raises it: none waits for ever
                    self._put("error", exc)
                    return
                finally:
                    self._reading = False
                self._put("chunk", chunk)
        except cancelled:
            if self._torn_down is not None and self._torn_down.is_set():
                # Not the block being left: close() was interrupted and stopped the loop.
                self._put("error", SchedulerClosed(_TORN_DOWN))
            self._stop()  # the block is being left; a reader in another thread stops waiting
            raise


#: The scheduler class of a :class:`SyncScheduler` (``scheduler_class``): :attr:`SyncScheduler.scheduler`.
_S = DefaultedTypeVar("_S", bound=Scheduler, default=Scheduler)


@final
class SyncScheduler(Generic[_S]):
    """A :class:`Scheduler` for threaded code: every call blocks.

    It runs an event loop in a background thread (an anyio blocking portal)
    and is safe to call from any number of threads at once: each call waits
    its turn shortest-job-first, exactly as with the async scheduler.  The
    arguments are the :class:`Scheduler`'s (a knob left out keeps the
    scheduler class's default); ``async_backend`` picks the event loop
    (``"asyncio"`` or ``"trio"``) and ``scheduler_class`` a subclass with
    your own policy, to which any further keyword arguments go.

    ::

        with SyncScheduler(backend) as sched:
            answer = sched.complete("Hello").text

    Use it as a context manager, or call :meth:`close`.  Closing ends waiting
    requests with :class:`SchedulerClosed` and waits for running ones.

    ``on_complete`` runs in the event loop's thread; :meth:`statistics`,
    :meth:`position` and :meth:`call` (of a plain function) work there too.
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        async_backend: str = "asyncio",
        scheduler_class: type[_S] = Scheduler,  # type: ignore[assignment]  # _S's default is Scheduler
        predictor: Predictor | _Unset | None = _UNSET,
        concurrency: int | _Unset | None = _UNSET,
        aging: float | _Unset = _UNSET,
        cap: float | _Unset | None = _UNSET,
        max_wait: float | _Unset | None = _UNSET,
        max_queue: int | _Unset | None = _UNSET,
        preempt: bool | _Unset = _UNSET,
        prefill_rate: float | _Unset = _UNSET,
        decode_rate: float | _Unset = _UNSET,
        learn_rates: bool | _Unset = _UNSET,
        on_complete: Callable[[Completion], object] | _Unset | None = _UNSET,
        **options: Any,
    ) -> None:
        # The Scheduler's knobs, typed here for the caller's type checker; only those given
        # are passed on, so a scheduler_class keeps its own defaults (and its own options).
        given = {
            "predictor": predictor,
            "concurrency": concurrency,
            "aging": aging,
            "cap": cap,
            "max_wait": max_wait,
            "max_queue": max_queue,
            "preempt": preempt,
            "prefill_rate": prefill_rate,
            "decode_rate": decode_rate,
            "learn_rates": learn_rates,
            "on_complete": on_complete,
        }
        options = {**{k: v for k, v in given.items() if v is not _UNSET}, **options}
        loops = anyio.get_all_backends()  # ("asyncio", "trio")
        if not isinstance(async_backend, str) or async_backend not in loops:
            raise ValueError(
                f"async_backend must be one of {', '.join(map(repr, loops))} (the event loop to run), "
                f"got {async_backend!r}"
            )
        if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, Scheduler)):
            raise TypeError(f"scheduler_class must be Scheduler or a subclass of it, got {scheduler_class!r}")
        self._trio = async_backend == "trio"
        if self._trio and _runs_trio():
            raise RuntimeError(_TRIO_THREAD)
        #: Set as close() stops the loop: a request still running then (an interrupted close)
        #: ends with SchedulerClosed rather than the loop's own cancellation.
        self._torn_down = threading.Event()
        self._handing_over = threading.Condition()
        self._handovers = 0
        self._closed = False
        self._close_ended = threading.Event()  # the first close() has returned (or raised)
        #: The open blocks: the frame whose ``with`` opened each, its request, what it is (for close()).
        self._blocks: dict[object, tuple[tuple[FrameNote, ...], _Entry, str, int]] = {}
        #: The thread that reads each open stream now (id of its request's entry), noted as it is
        #: read (for close()): streams only, as an admit() block has no reads to say who holds it.
        self._readers: dict[int, int] = {}
        #: Calls refused here after close(), before the loop saw them: counted as ``rejected``.
        self._refused = 0
        self._portal, self._thread = _start_portal(async_backend)
        try:
            self._scheduler = self._portal.call(_make_scheduler, scheduler_class, backend, options)
            # Its loop's thread is its own: a callback's SystemExit or KeyboardInterrupt (no signal
            # reaches that thread: the caller's code raised it) is logged, as any failure there.
            self._scheduler._loop_exits = (SystemExit, KeyboardInterrupt)
            self._portal.call(self._scheduler.__aenter__)
        except BaseException:
            self._stop_portal()
            raise
        # Dropped without close(), it would keep its loop thread, and the backend, for good.
        # Not at exit: a scheduler never closed does not hold up the interpreter's exit.
        self._abandoned = weakref.finalize(
            self, _close_abandoned, self._portal, self._scheduler, type(self).__name__
        )
        self._abandoned.atexit = False

    @property
    def scheduler(self) -> _S:
        """The async scheduler underneath (runs in the portal's thread)."""
        return self._scheduler

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the scheduler and stop its event loop thread.

        Waiting requests end with :class:`SchedulerClosed` (a paused one,
        which had started, goes on to its end); this waits for the running
        ones, then closes the backend.  A second call (from another
        thread, say) waits for the first to end, except from a thread with a
        block of its own still open, which the first may be waiting for: there
        it returns at once.

        From inside a block that holds one of its running requests (an
        :meth:`admit` or :meth:`stream` block, the backend's code run for a
        request), from the thread that reads a stream of its own still open
        (between two reads: the thread that opened it, until another reads
        it), or from the scheduler's own event loop thread (``on_complete``),
        it raises :class:`RuntimeError` at once, changing nothing: it could
        only wait for itself.  A stream another thread reads is waited for.

        Interrupted (Ctrl-C) while it waits for the running requests, it stops
        the event loop at once: their calls end with :class:`SchedulerClosed`
        (the statistics count them as cancelled), and an :meth:`admit`
        block's own call, which the scheduler does not run, goes on to its end.

        A scheduler on trio (``async_backend="trio"``) is not called, nor
        made or closed, from a thread that runs a trio event loop: trio does
        not let a blocking call wait there.  It raises :class:`RuntimeError`
        saying so (use :class:`~sjfsched.Scheduler` in trio code).
        """
        if self._on_loop_thread():
            if self._closed:  # being closed: nothing more to do from here
                return
            raise RuntimeError(
                "close() from the scheduler's own event loop thread (on_complete, or a backend's code "
                "run in the loop) would block the loop that closing needs: close it from another thread"
            )
        self._check_thread()
        if self._closed and self._opened_a_block_here():
            # Closed already, by another call; waiting for that one to end would wait for this
            # thread's own request (its block, or a stream it reads between reads).
            return
        what = self._held_block()
        if what is None and self._scheduler._holds_a_request():
            what = "the backend's code run for a request"
        if what is not None:
            raise RuntimeError(
                f"close() from inside {what} of this scheduler would wait for that request, "
                f"which waits for close(): close it after the block"
            )
        if not self._closed and self._reads_a_block_here():
            # A stream this thread reads between its other calls: its request runs until this
            # thread reads it to its end, which it cannot do while close() waits. (One another
            # thread reads now is waited for.)
            raise RuntimeError(
                "close() from the thread that reads a stream of this scheduler still open (between "
                "two reads) would wait for that request, which waits for this thread: read it to "
                "its end or close it first (a wrap()'s own close() cuts the streams this thread reads)"
            )
        self._abandoned.detach()
        with self._handing_over:
            first = not self._closed
            self._closed = True
            while first and self._handovers:  # a call handing its task to the loop finishes first
                self._handing_over.wait()
        if not first:
            if not self._on_loop_thread():  # there, the first could not end while this waits
                self._close_ended.wait()
            return
        try:
            try:
                self._portal.call(self._scheduler.aclose)
            finally:
                self._torn_down.set()
                self._stop_portal()
        finally:
            self._close_ended.set()

    def _spawn(self, fn: Callable[[], Awaitable[T]]) -> concurrent.futures.Future[T]:
        """``portal.start_task_soon(fn)``, never racing :meth:`close`.

        A task handed over just as the loop stops would never run, and its
        caller would wait for ever; so :meth:`close` waits for hand-overs
        under way, and none starts once it has begun.
        """
        with self._handing_over:
            if self._closed:
                self._refused += 1
                raise SchedulerClosed("the scheduler is closed")
            self._handovers += 1
        try:
            return self._portal.start_task_soon(fn)
        finally:
            with self._handing_over:
                self._handovers -= 1
                self._handing_over.notify_all()

    def _stop_portal(self) -> None:
        # Every request has ended (the scheduler is closed); what is left in the loop are calls
        # whose caller has not yet come back to leave them (a complete() that returned, whose
        # thread the OS has not run since): cancelled, so the loop ends and close() returns.
        with contextlib.suppress(RuntimeError):  # stopped already
            self._portal.call(self._portal.stop, True)
        self._thread.join()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def _check_thread(self) -> None:
        """Refuse a call from a thread that runs trio, for a trio loop (trio would refuse it, or hang)."""
        if self._trio and not self._on_loop_thread() and _runs_trio():
            raise RuntimeError(_TRIO_THREAD)

    def _check_open(self, *, request: bool = True) -> None:
        if self._closed:
            if request:  # a request refused: as the async scheduler counts it
                with self._handing_over:
                    self._refused += 1
            raise SchedulerClosed("the scheduler is closed")

    @contextlib.contextmanager
    def _portal_open(self, *, request: bool = True) -> Iterator[None]:
        """Turn the portal's refusal after a concurrent :meth:`close`, and the loop's cancelling
        of a request an interrupted close left running, into :class:`SchedulerClosed`."""
        self._check_thread()
        self._check_open(request=request)
        if request:
            self._refuse_waiting_for_itself()
        try:
            yield
        except RuntimeError as exc:
            # The portal's and its event loop's ways of saying they stopped meanwhile.
            finished = getattr(anyio, "RunFinishedError", ())
            stopped = ("portal is not running", "has already finished", "is not active")
            if self._closed and (isinstance(exc, finished) or any(s in str(exc) for s in stopped)):
                raise SchedulerClosed("the scheduler is closed") from exc
            raise
        except BaseException as exc:
            if self._torn_down.is_set() and _is_loop_cancellation(exc):
                raise SchedulerClosed(_TORN_DOWN) from exc
            raise

    def complete(
        self, request: Request | str | None = None, /, **fields: Unpack[RequestFields]
    ) -> Completion:
        """Blocking :meth:`Scheduler.complete`."""
        with self._portal_open():
            completion: Completion = _call_interruptibly(
                self._portal, self._thread, self._spawn, _call_complete, self._scheduler, request, fields
            )
        return completion

    @contextlib.contextmanager
    def stream(
        self, request: Request | str | None = None, /, **fields: Unpack[RequestFields]
    ) -> Iterator[SyncStream]:
        """Blocking :meth:`Scheduler.stream`: a context manager of a chunk iterator."""
        with contextlib.ExitStack() as stack:
            with self._portal_open():
                chunks = SyncStream(self._portal, torn_down=self._torn_down)
                stack.callback(chunks._stop)  # pushed first: runs once the block is left
                context = _LoopContext(
                    self._portal,
                    self._thread,
                    self._scheduler.stream(request, **fields),
                    spawn=self._spawn,
                    companion=chunks._pump,
                )
                stack.push(context)  # before entering: an interrupt right after entering still leaves
                chunks._stream = context.__enter__()
            entry = chunks._stream._entry
            stack.enter_context(self._open_block(entry, "a `with sched.stream(...)` block"))
            chunks._on_read = functools.partial(self._note_reader, entry)
            chunks._on_read()  # its reader: the thread that opened it, until another reads it
            yield chunks

    @contextlib.contextmanager
    def admit(
        self, request: Request | str | None = None, /, **fields: Unpack[RequestFields]
    ) -> Iterator[Ticket]:
        """Blocking :meth:`Scheduler.admit`: run your own call inside the block.

        The ticket's :meth:`~Ticket.first_token` may be called from this
        thread, or any: it reads the scheduler's loop's own clock.
        """
        with contextlib.ExitStack() as stack:
            with self._portal_open():
                context = _LoopContext(
                    self._portal, self._thread, self._scheduler.admit(request, **fields), spawn=self._spawn
                )
                stack.push(context)  # before entering: an interrupt right after entering still leaves
                ticket = context.__enter__()
            stack.enter_context(self._open_block(ticket._entry, "a `with sched.admit(...)` block"))
            yield ticket

    @contextlib.contextmanager
    def _open_block(self, entry: _Entry, what: str) -> Iterator[None]:
        """Note the frames whose ``with`` holds ``entry``'s slot, while it does (for :meth:`close`)."""
        key = object()
        with self._handing_over:
            self._blocks[key] = (block_openers(asynchronous=False), entry, what, threading.get_ident())
        try:
            yield
        finally:
            with self._handing_over:
                del self._blocks[key]
                self._readers.pop(id(entry), None)

    def _note_reader(self, entry: _Entry) -> None:
        """The calling thread reads ``entry``'s stream now (for :meth:`close`), its block open."""
        me = threading.get_ident()
        if self._readers.get(id(entry)) != me:
            with self._handing_over:
                if any(e is entry for _, e, _, _ in self._blocks.values()):
                    self._readers[id(entry)] = me

    def _reads_a_block_here(self) -> bool:
        """Whether this thread reads an open block's request still running (a stream between reads)."""
        me = threading.get_ident()
        with self._handing_over:
            return any(
                self._readers.get(id(e)) == me and e.state is EntryState.RUNNING
                for _, e, _, _ in self._blocks.values()
            )

    def _held_block(self) -> str | None:
        """What open block of a running request the calling code runs inside, if any.

        Inside: a frame whose ``with`` opened it is on this thread's stack
        now.  A block opened in a generator that another thread reads on, or
        that is between two reads (a ``wrap()`` stream), is not; one opened in
        a ``@contextmanager`` generator is inside the ``with`` of that.
        """
        with self._handing_over:
            blocks = list(self._blocks.values())
        me = threading.get_ident()
        for openers, entry, what, opener in blocks:
            if entry.state is EntryState.RUNNING and opened_here(openers, opener, me):
                return what
        return None

    def _refuse_waiting_for_itself(self) -> None:
        """A request that could only wait for the code making it raises :class:`RuntimeError`.

        From the event loop thread (``on_complete``) a blocking call would
        block the loop that runs it; from code holding every slot (its
        blocks, or the backend's code for a request), it would wait for
        that code.
        """
        if self._on_loop_thread():
            raise RuntimeError(
                "a blocking request from the scheduler's own event loop thread (on_complete, or a "
                "backend's code run in the loop) would block the loop that runs it: make it from "
                "another thread"
            )
        with self._handing_over:
            blocks = list(self._blocks.values())
        me = threading.get_ident()
        held = self._scheduler._held_here(own_notes=True)
        held.update(
            id(entry)
            for openers, entry, _, opener in blocks
            if entry.state is EntryState.RUNNING and opened_here(openers, opener, me)
        )
        self._scheduler._refuse_waiting_for_itself(len(held), _HOLDERS)

    def _opened_a_block_here(self) -> bool:
        """Whether this thread opened a block of a running request still open (on its stack or not)."""
        me = threading.get_ident()
        with self._handing_over:
            return any(t == me and e.state is EntryState.RUNNING for _, e, _, t in self._blocks.values())

    def _on_loop_thread(self) -> bool:
        """Whether this is the scheduler's own event loop thread (``on_complete``, a backend's code).

        There the scheduler is called directly: the portal refuses to be
        called from its own thread.
        """
        return threading.current_thread() is self._thread

    def statistics(self) -> SchedulerStatistics:
        """Blocking :meth:`Scheduler.statistics`; from any thread, ``on_complete`` too."""
        if not self._closed:
            self._check_thread()
        if self._closed or self._on_loop_thread():
            stats = self._scheduler.statistics()
        else:
            try:
                stats = self._portal.call(self._scheduler.statistics)
            except RuntimeError:
                if not self.closed:
                    raise
                stats = self._scheduler.statistics()  # closed meanwhile: the counts are final
        if self._refused:
            stats = attrs.evolve(stats, rejected=stats.rejected + self._refused)
        return stats

    def position(self, request: Request) -> int | None:
        """Blocking :meth:`Scheduler.position`; from any thread, ``on_complete`` too."""
        if self._closed:
            return None
        self._check_thread()
        if self._on_loop_thread():
            return self._scheduler.position(request)
        try:
            return self._portal.call(self._scheduler.position, request)
        except RuntimeError:
            if self.closed:  # closed meanwhile: nothing waits
                return None
            raise

    @overload
    def call(self, fn: Callable[[Unpack[Ts]], Awaitable[T]], /, *args: Unpack[Ts]) -> T: ...

    @overload
    def call(self, fn: Callable[[Unpack[Ts]], T], /, *args: Unpack[Ts]) -> T: ...

    def call(self, fn: Callable[[Unpack[Ts]], Any], /, *args: Unpack[Ts]) -> Any:
        """Run ``fn(*args)`` (sync or async) in the scheduler's event loop.

        From the loop's own thread (``on_complete``) a plain function is
        called directly; an async one raises :class:`RuntimeError`, as that
        thread cannot wait for it.
        """
        if self._on_loop_thread():
            self._check_open(request=False)
            result = fn(*args)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # never awaited: dropped without a "never awaited" warning
                raise RuntimeError(
                    f"SyncScheduler.call({fn!r}) from the scheduler's own event loop thread "
                    f"(on_complete, say) cannot wait for an async function: call a plain one there"
                )
            return result
        with self._portal_open(request=False):
            return self._portal.call(fn, *args)


def _make_scheduler(scheduler_class: type[_S], backend: Backend | None, options: dict[str, Any]) -> _S:
    return scheduler_class(backend, **options)


async def _call_complete(
    scheduler: Scheduler, request: Request | str | None, fields: dict[str, Any]
) -> Completion:
    return await scheduler.complete(request, **fields)


def _close_abandoned(portal: anyio.from_thread.BlockingPortal, scheduler: Scheduler, name: str) -> None:
    """Close a scheduler whose :class:`SyncScheduler` was dropped without ``close()``.

    Run by the garbage collector, in whatever thread it runs (the loop's
    own, perhaps): the closing goes to a thread of its own.  Nothing waits
    for its requests (a call in flight keeps its SyncScheduler alive).
    """

    def close() -> None:
        with contextlib.suppress(Exception):
            portal.call(scheduler.aclose)
        with contextlib.suppress(Exception):
            portal.call(portal.stop, True)

    threading.Thread(target=close, name="sjfsched-close-abandoned", daemon=True).start()
    warnings.warn(
        f"a {name} (yours, or the one of a wrap()) was dropped without close(): closed now; close "
        "it yourself (or use it in a with block), so that its backend closes when you choose",
        ResourceWarning,
        stacklevel=1,  # no caller's line to point at: the garbage collector runs this
    )


def _runs_trio() -> bool:
    """Whether this thread runs a trio event loop."""
    trio = sys.modules.get("trio")
    if trio is None:  # nothing runs trio without importing it
        return False
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


def _is_loop_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is an event loop's cancellation (asyncio's, or trio's)."""
    if isinstance(exc, asyncio.CancelledError):
        return True
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(exc, trio.Cancelled)


def _start_portal(async_backend: str) -> tuple[anyio.from_thread.BlockingPortal, threading.Thread]:
    """A blocking portal whose event loop runs in a daemon thread of its own.

    A daemon thread, and nothing left to finalise: a scheduler that is never
    closed does not keep the interpreter from exiting (anyio's
    ``start_blocking_portal`` is a generator context manager, whose
    finalisation at exit waited for a loop thread that no longer ran).
    """
    ready: concurrent.futures.Future[anyio.from_thread.BlockingPortal] = concurrent.futures.Future()

    async def serve() -> None:
        async with anyio.from_thread.BlockingPortal() as portal:
            ready.set_result(portal)
            await portal.sleep_until_stopped()

    def run() -> None:
        try:
            anyio.run(serve, backend=async_backend)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:  # pragma: no cover - the portal's loop failed after it started
                raise

    thread = threading.Thread(target=run, name=f"sjfsched-{async_backend}-loop", daemon=True)
    thread.start()
    return ready.result(), thread


def _call_interruptibly(
    portal: anyio.from_thread.BlockingPortal,
    loop_thread: threading.Thread,
    spawn: Callable[[Callable[[], Awaitable[Any]]], concurrent.futures.Future[Any]],
    fn: Callable[..., Awaitable[T]],
    *args: Any,
) -> T:
    """``portal.call(fn, *args)``; an exception in this thread while it waits (Ctrl-C) cancels the call.

    ``portal.call`` leaves the call running in the loop when the waiting
    thread is interrupted: a request would keep its slot and go on
    generating.  Here the call is the entering of a :class:`_LoopContext`,
    which such an interrupt cancels (and waits out) in every window.
    """
    with _LoopContext(portal, loop_thread, _Awaiting(fn, args), spawn=spawn) as result:
        return result


@attrs.define
class _Awaiting(Generic[T]):
    """An async context manager whose entering is the call ``fn(*args)``; its value, the result."""

    fn: Callable[..., Awaitable[T]]
    args: tuple[Any, ...]

    async def __aenter__(self) -> T:
        return await self.fn(*self.args)

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class _LoopContext(Generic[T]):
    """An async context manager entered and left in the portal's loop, from this thread.

    Like ``portal.wrap_async_context_manager``, except that an exception in
    this thread while it waits to enter (Ctrl-C while the request waits for
    its turn) cancels the entering, or leaves the context at once if it was
    entered meanwhile, instead of leaving it to go on in the loop and hold a
    slot no one will give back.
    """

    def __init__(
        self,
        portal: anyio.from_thread.BlockingPortal,
        loop_thread: threading.Thread,
        cm: AbstractAsyncContextManager[T],
        *,
        spawn: Callable[[Callable[[], Awaitable[Any]]], concurrent.futures.Future[Any]],
        companion: Callable[[T], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self._portal = portal
        self._spawn = spawn
        self._loop_thread = loop_thread
        self._cm = cm
        self._companion = companion  # runs in the loop while the block is open
        self._entered: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._finished = threading.Event()
        self._abandoned = threading.Event()  # this thread gave up entering
        self._leave: anyio.Event | None = None
        self._entering: anyio.CancelScope | None = None
        self._exit_info: tuple[Any, Any, Any] = (None, None, None)
        self._task: concurrent.futures.Future[bool | None] | None = None

    async def _run(self) -> bool | None:
        try:
            self._leave = anyio.Event()
            entered = False
            with anyio.CancelScope() as scope:
                self._entering = scope  # _give_up cancels the entering through it
                if not self._abandoned.is_set():  # else given up before the loop took it
                    try:
                        value = await self._cm.__aenter__()
                    except BaseException as exc:
                        self._entered.set_exception(exc)
                        raise
                    entered = True
            self._entering = None
            if not entered:
                return None
            self._entered.set_result(value)
            if not self._abandoned.is_set():
                try:
                    async with anyio.create_task_group() as tg:
                        if self._companion is not None:
                            tg.start_soon(self._companion, value)
                        await self._leave.wait()
                        tg.cancel_scope.cancel()  # the block is left: the companion stops
                except BaseException as exc:  # cancelled in the loop before the block was left
                    if not await self._cm.__aexit__(type(exc), exc, exc.__traceback__):
                        raise
                    return None
            return await self._cm.__aexit__(*self._exit_info)
        finally:
            self._finished.set()

    def __enter__(self) -> T:
        try:
            self._task = self._spawn(self._run)
            entered = self._entered
            wake = _FIRST_WAKE_SECONDS
            while not entered.done():
                # Woken now and then: an exception another thread raises in this one (a
                # thread-level timeout) arrives only between bytecodes, never in a lock's wait.
                concurrent.futures.wait((entered,), wake)
                wake = min(2 * wake, _WAKE_SECONDS)
            return entered.result()
        except BaseException as exc:
            self._give_up(exc)
            raise

    def _give_up(self, exc: BaseException) -> None:
        """Interrupted while entering: whatever the loop did or does, leave as this exception."""
        self._exit_info = (type(exc), exc, exc.__traceback__)
        self._abandoned.set()  # a task that had not entered yet leaves right after
        if self._task is None:
            # Interrupted while handing the task to the loop.  Not started: it
            # will see it was given up.  Started: stop its waiting to enter, or
            # have it leave if it entered; then wait for it to end.
            entering, leave = self._entering, self._leave
            with contextlib.suppress(RuntimeError):
                if entering is not None:
                    self._portal.call(entering.cancel)
                if leave is not None:
                    self._portal.call(leave.set)
            if leave is not None:
                self._finished.wait()
            return
        if not self._entered.done():
            self._task.cancel()  # it waits to enter: stop waiting
        elif self._leave is not None and self._entered.exception() is None:
            with contextlib.suppress(RuntimeError):  # entered just before: leave now
                self._portal.call(self._leave.set)
        self._finished.wait()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if (
            self._task is None
            or self._abandoned.is_set()
            or not self._entered.done()
            or self._entered.exception() is not None
        ):
            return None  # never entered, or given up entering (which left it): nothing to leave
        assert self._leave is not None
        self._exit_info = (exc_type, exc, tb)
        if sys.is_finalizing():
            # The interpreter is ending (a stream left open at the end of a script, finalised
            # now): the loop's daemon thread runs no more, and a call to it would wait for ever.
            return None
        if threading.current_thread() is self._loop_thread:
            # Left from the loop's own thread: the garbage collector finalising
            # an abandoned wrap() stream there.  It must not block the loop:
            # the block is left, and the request ends, in the loop's own time.
            self._leave.set()
            return None
        interrupted: BaseException | None = None
        while True:  # the leave must reach the loop, or the request keeps its slot for ever
            try:
                self._portal.call(self._leave.set)
            except RuntimeError:  # close() stopped the loop meanwhile, cancelling what was left
                self._finished.wait()
                if interrupted is not None:
                    raise interrupted from None
                return None
            except BaseException as exc:  # Ctrl-C as it was handed over: hand it over again
                interrupted = exc  # (setting the event twice is setting it once)
                continue
            break
        if interrupted is not None:
            raise interrupted
        try:
            return self._task.result()
        except concurrent.futures.CancelledError:  # stopped by close() as the block was left
            return None
