"""A blocking facade over Scheduler, for threaded programs."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, final

import anyio.from_thread
from typing_extensions import Self

from ._errors import SchedulerClosed
from ._records import Chunk, Completion, Request
from ._scheduler import ChunkStream, Job, Scheduler, SchedulerStatistics, Ticket

if TYPE_CHECKING:
    from .backends._base import Backend

__all__ = ["SyncScheduler", "SyncStream"]

T = TypeVar("T")


@final
class SyncStream:
    """The chunks of one scheduled request, as a blocking iterator."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, stream: ChunkStream) -> None:
        self._portal = portal
        self._stream = stream
        self._kept: list[Chunk] = []

    @property
    def job(self) -> Job:
        return self._stream.job

    @property
    def completion(self) -> Completion:
        """The finished answer; only once the stream has been read to the end."""
        return self._stream.completion

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Chunk:
        if self._kept:  # read before an interrupt reached the caller: not lost
            return self._kept.pop(0)
        try:
            return _call_interruptibly(self._portal, self._stream.__anext__, orphan=self._kept.append)
        except StopAsyncIteration:
            raise StopIteration from None


@final
class SyncScheduler:
    """A :class:`Scheduler` for threaded code: every call blocks.

    It runs an event loop in a background thread (an anyio blocking portal)
    and is safe to call from any number of threads at once: each call waits
    its turn shortest-job-first, exactly as with the async scheduler.  The
    arguments are the :class:`Scheduler`'s; ``async_backend`` picks the event
    loop (``"asyncio"`` or ``"trio"``) and ``scheduler_class`` a subclass with
    your own policy.

    ::

        with SyncScheduler(backend) as sched:
            answer = sched.complete("Hello").text

    Use it as a context manager, or call :meth:`close`.  Closing ends waiting
    requests with :class:`SchedulerClosed` and waits for running ones.
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        async_backend: str = "asyncio",
        scheduler_class: type[Scheduler] = Scheduler,
        **options: Any,
    ) -> None:
        self._portal, self._thread = _start_portal(async_backend)
        try:
            self._scheduler = self._portal.call(_make_scheduler, scheduler_class, backend, options)
            self._portal.call(self._scheduler.__aenter__)
        except BaseException:
            self._stop_portal()
            raise
        self._closed = False

    @property
    def scheduler(self) -> Scheduler:
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
        """Close the scheduler and stop its event loop thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._portal.call(self._scheduler.aclose)
        finally:
            self._stop_portal()

    def _stop_portal(self) -> None:
        with contextlib.suppress(RuntimeError):  # stopped already
            self._portal.call(self._portal.stop)
        self._thread.join()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise SchedulerClosed("the scheduler is closed")

    @contextlib.contextmanager
    def _portal_open(self) -> Iterator[None]:
        """Turn the portal's refusal after a concurrent :meth:`close` into :class:`SchedulerClosed`."""
        self._check_open()
        try:
            yield
        except RuntimeError as exc:
            if self._closed and "portal is not running" in str(exc):
                raise SchedulerClosed("the scheduler is closed") from exc
            raise

    def complete(self, request: Request | str | None = None, /, **fields: Any) -> Completion:
        """Blocking :meth:`Scheduler.complete`."""
        with self._portal_open():
            completion: Completion = _call_interruptibly(
                self._portal, _call_complete, self._scheduler, request, fields
            )
        return completion

    @contextlib.contextmanager
    def stream(self, request: Request | str | None = None, /, **fields: Any) -> Iterator[SyncStream]:
        """Blocking :meth:`Scheduler.stream`: a context manager of a chunk iterator."""
        with contextlib.ExitStack() as stack:
            with self._portal_open():
                context = _LoopContext(self._portal, self._thread, self._scheduler.stream(request, **fields))
                stack.push(context)  # before entering: an interrupt right after entering still leaves
                stream = context.__enter__()
            yield SyncStream(self._portal, stream)

    @contextlib.contextmanager
    def admit(self, request: Request | str | None = None, /, **fields: Any) -> Iterator[Ticket]:
        """Blocking :meth:`Scheduler.admit`: run your own call inside the block.

        The ticket's :meth:`~Ticket.first_token` may be called from this
        thread: it reads the scheduler's clock through its event loop.
        """
        with contextlib.ExitStack() as stack:
            with self._portal_open():
                context = _LoopContext(self._portal, self._thread, self._scheduler.admit(request, **fields))
                stack.push(context)  # before entering: an interrupt right after entering still leaves
                ticket = context.__enter__()
            ticket._clock = functools.partial(_loop_time, self._portal)
            yield ticket

    def statistics(self) -> SchedulerStatistics:
        if self._closed:
            return self._scheduler.statistics()
        try:
            return self._portal.call(self._scheduler.statistics)
        except RuntimeError:
            if self.closed:  # closed meanwhile: the counts are final
                return self._scheduler.statistics()
            raise

    def position(self, request: Request) -> int | None:
        if self._closed:
            return None
        try:
            return self._portal.call(self._scheduler.position, request)
        except RuntimeError:
            if self.closed:  # closed meanwhile: nothing waits
                return None
            raise

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (sync or async) in the scheduler's event loop."""
        with self._portal_open():
            return self._portal.call(fn, *args)


def _loop_time(portal: anyio.from_thread.BlockingPortal) -> float:
    """The scheduler's clock, from its own thread or from any other."""
    try:
        return anyio.current_time()  # on the event loop's thread (``call(ticket.first_token)``)
    except Exception:
        return float(portal.call(anyio.current_time))


def _make_scheduler(
    scheduler_class: type[Scheduler], backend: Backend | None, options: dict[str, Any]
) -> Scheduler:
    return scheduler_class(backend, **options)


async def _call_complete(
    scheduler: Scheduler, request: Request | str | None, fields: dict[str, Any]
) -> Completion:
    return await scheduler.complete(request, **fields)


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
    fn: Callable[..., Awaitable[T]],
    *args: Any,
    orphan: Callable[[T], object] | None = None,
) -> T:
    """``portal.call(fn, *args)``; an exception in this thread while it waits (Ctrl-C) cancels the call.

    ``portal.call`` leaves the call running in the loop when the waiting
    thread is interrupted: a request would keep its slot and go on
    generating.  Here it is cancelled, and this thread waits until it has
    ended before the exception goes on.  Interrupted while the loop had not
    yet taken the call, the call does nothing when it starts.  A call that
    finished all the same has its result passed to ``orphan`` (a stream's
    next chunk, kept for the next read), exactly once.
    """
    finished = threading.Event()
    abandoned = threading.Event()
    claimed = threading.Lock()  # whoever takes it hands an orphaned result over
    scopes: list[anyio.CancelScope] = []

    def hand_over(value: T) -> None:
        if orphan is not None and claimed.acquire(blocking=False):
            orphan(value)

    async def run() -> T:
        try:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                if abandoned.is_set():
                    scope.cancel()  # given up before it started
                value = await fn(*args)
                if abandoned.is_set():  # finished after this thread gave up on it
                    hand_over(value)
                return value
            return cast(T, None)  # cancelled: no one reads this
        finally:
            finished.set()

    future: concurrent.futures.Future[T] | None = None
    try:
        future = portal.start_task_soon(run)
        return future.result()
    except BaseException:
        abandoned.set()
        if future is not None and not future.done():  # interrupted here, not failed there
            future.cancel()
            finished.wait()
        elif future is None and scopes:  # interrupted while handing it over, and it started
            with contextlib.suppress(RuntimeError):
                portal.call(scopes[0].cancel)
            finished.wait()
        if future is not None and future.done() and not future.cancelled() and future.exception() is None:
            hand_over(future.result())  # it finished as this thread was interrupted
        raise


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
    ) -> None:
        self._portal = portal
        self._loop_thread = loop_thread
        self._cm = cm
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
                    await self._leave.wait()
                except BaseException as exc:  # cancelled in the loop before the block was left
                    if not await self._cm.__aexit__(type(exc), exc, exc.__traceback__):
                        raise
                    return None
            return await self._cm.__aexit__(*self._exit_info)
        finally:
            self._finished.set()

    def __enter__(self) -> T:
        try:
            self._task = self._portal.start_task_soon(self._run)
            return self._entered.result()
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
        if threading.current_thread() is self._loop_thread:
            # Left from the loop's own thread: the garbage collector finalising
            # an abandoned wrap() stream there.  It must not block the loop:
            # the block is left, and the request ends, in the loop's own time.
            self._leave.set()
            return None
        self._portal.call(self._leave.set)
        return self._task.result()
