"""A blocking facade over Scheduler, for threaded programs."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, final

import anyio.from_thread
from typing_extensions import Self

from ._errors import SchedulerClosed
from ._records import Chunk, Completion, Request
from ._scheduler import ChunkStream, Job, Scheduler, SchedulerStatistics, Ticket

if TYPE_CHECKING:
    from .backends._base import Backend

__all__ = ["SyncScheduler", "SyncStream"]


@final
class SyncStream:
    """The chunks of one scheduled request, as a blocking iterator."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, stream: ChunkStream) -> None:
        self._portal = portal
        self._stream = stream

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
        try:
            return self._portal.call(self._stream.__anext__)
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
        self._exit_stack = contextlib.ExitStack()
        self._portal = self._exit_stack.enter_context(anyio.from_thread.start_blocking_portal(async_backend))
        try:
            self._scheduler = self._portal.call(_make_scheduler, scheduler_class, backend, options)
            self._portal.call(self._scheduler.__aenter__)
        except BaseException:
            self._exit_stack.close()
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
            self._exit_stack.close()

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
            completion: Completion = self._portal.call(_call_complete, self._scheduler, request, fields)
        return completion

    @contextlib.contextmanager
    def stream(self, request: Request | str | None = None, /, **fields: Any) -> Iterator[SyncStream]:
        """Blocking :meth:`Scheduler.stream`: a context manager of a chunk iterator."""
        with contextlib.ExitStack() as stack:
            with self._portal_open():
                cm = self._portal.wrap_async_context_manager(self._scheduler.stream(request, **fields))
                stream = stack.enter_context(cm)
            yield SyncStream(self._portal, stream)

    @contextlib.contextmanager
    def admit(self, request: Request | str | None = None, /, **fields: Any) -> Iterator[Ticket]:
        """Blocking :meth:`Scheduler.admit`: run your own call inside the block.

        The ticket's :meth:`~Ticket.first_token` may be called from this
        thread: it reads the scheduler's clock through its event loop.
        """
        with contextlib.ExitStack() as stack:
            with self._portal_open():
                cm = self._portal.wrap_async_context_manager(self._scheduler.admit(request, **fields))
                ticket = stack.enter_context(cm)
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
