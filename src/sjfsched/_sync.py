"""A blocking facade over Scheduler, for threaded programs."""

from __future__ import annotations

import contextlib
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

    def _check_open(self) -> None:
        if self._closed:
            raise SchedulerClosed("the scheduler is closed")

    def complete(self, request: Request | str | None = None, /, **fields: Any) -> Completion:
        """Blocking :meth:`Scheduler.complete`."""
        self._check_open()
        completion: Completion = self._portal.call(_call_complete, self._scheduler, request, fields)
        return completion

    @contextlib.contextmanager
    def stream(self, request: Request | str | None = None, /, **fields: Any) -> Iterator[SyncStream]:
        """Blocking :meth:`Scheduler.stream`: a context manager of a chunk iterator."""
        self._check_open()
        cm = self._scheduler.stream(request, **fields)
        with self._portal.wrap_async_context_manager(cm) as stream:
            yield SyncStream(self._portal, stream)

    @contextlib.contextmanager
    def admit(self, request: Request | str | None = None, /, **fields: Any) -> Iterator[Ticket]:
        """Blocking :meth:`Scheduler.admit`: run your own call inside the block."""
        self._check_open()
        cm = self._scheduler.admit(request, **fields)
        with self._portal.wrap_async_context_manager(cm) as ticket:
            yield ticket

    def statistics(self) -> SchedulerStatistics:
        if self._closed:
            return self._scheduler.statistics()
        return self._portal.call(self._scheduler.statistics)

    def position(self, request: Request) -> int | None:
        if self._closed:
            return None
        return self._portal.call(self._scheduler.position, request)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (sync or async) in the scheduler's event loop."""
        return self._portal.call(fn, *args)


def _make_scheduler(
    scheduler_class: type[Scheduler], backend: Backend | None, options: dict[str, Any]
) -> Scheduler:
    return scheduler_class(backend, **options)


async def _call_complete(
    scheduler: Scheduler, request: Request | str | None, fields: dict[str, Any]
) -> Completion:
    return await scheduler.complete(request, **fields)
