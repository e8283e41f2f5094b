"""SyncScheduler and wrap() when the calling thread is interrupted (Ctrl-C), and at interpreter exit.

Each case runs in a child interpreter: the interrupt is a real SIGINT, and the
exit is a real exit.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.support.signals import run_python

PRELUDE = """
import json, os, signal, threading, time
import anyio
from sjfsched import SyncScheduler
from sjfsched.backends import CallableBackend

streams = {"open": 0, "most": 0, "ended": 0}

async def generate(request):
    async def tokens():
        streams["open"] += 1
        streams["most"] = max(streams["most"], streams["open"])
        try:
            for _ in range(int(request.metadata.get("n", 40))):
                await anyio.sleep(0.25)
                yield "tok "
        finally:
            streams["open"] -= 1
            streams["ended"] += 1
    return tokens()

def interrupt_in(seconds):
    threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT)).start()

def report(sched, **extra):
    time.sleep(0.3)
    s = sched.statistics()
    print(json.dumps({"running": s.running, "waiting": s.waiting, "completed": s.completed,
                      "cancelled": s.cancelled, **streams, **extra}))
"""


def run(body: str, async_backend: str) -> dict[str, int]:
    code = PRELUDE + textwrap.dedent(body).replace("ASYNC_BACKEND", repr(async_backend))
    done = run_python(code, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


BACKENDS = pytest.mark.parametrize("async_backend", ["asyncio", "trio"])


@BACKENDS
def test_ctrl_c_in_complete_cancels_the_request(async_backend: str) -> None:
    result = run(
        """
        sched = SyncScheduler(CallableBackend(generate), async_backend=ASYNC_BACKEND)
        interrupt_in(0.6)
        try:
            sched.complete("write an essay")
        except KeyboardInterrupt:
            pass
        report(sched)
        t = time.monotonic()
        sched.close()
        assert time.monotonic() - t < 2, "close() waited for the interrupted request"
        """,
        async_backend,
    )
    assert (result["running"], result["completed"], result["cancelled"]) == (0, 0, 1)
    assert (result["open"], result["ended"]) == (0, 1)


@BACKENDS
def test_ctrl_c_while_reading_a_stream_stops_it_before_the_next_request_runs(async_backend: str) -> None:
    result = run(
        """
        sched = SyncScheduler(CallableBackend(generate), async_backend=ASYNC_BACKEND)
        interrupt_in(0.6)
        try:
            with sched.stream("write an essay") as chunks:
                for _ in chunks:
                    pass
        except KeyboardInterrupt:
            pass
        sched.complete("short", metadata={"n": 2})
        report(sched)
        sched.close()
        """,
        async_backend,
    )
    assert result["most"] == 1  # never two generations at once on a one-slot backend
    assert (result["completed"], result["cancelled"], result["open"], result["ended"]) == (1, 1, 0, 2)


@BACKENDS
def test_ctrl_c_while_waiting_for_a_slot_gives_no_slot_away(async_backend: str) -> None:
    result = run(
        """
        sched = SyncScheduler(CallableBackend(generate), async_backend=ASYNC_BACKEND)
        holder = threading.Thread(target=sched.complete, args=("hold",), kwargs={"metadata": {"n": 6}})
        holder.start()
        deadline = time.monotonic() + 10
        while sched.statistics().running < 1:  # the holder has the slot
            assert time.monotonic() < deadline, "the holder never got the slot"
            time.sleep(0.01)
        interrupt_in(0.3)
        try:
            with sched.admit("waits its turn"):
                raise AssertionError("admitted while the slot was held")
        except KeyboardInterrupt:
            pass
        holder.join()
        sched.complete("after", metadata={"n": 1})  # the slot came back
        report(sched)
        sched.close()
        """,
        async_backend,
    )
    assert (result["running"], result["waiting"], result["completed"], result["cancelled"]) == (0, 0, 2, 1)


@BACKENDS
def test_a_scheduler_never_closed_lets_the_interpreter_exit(async_backend: str) -> None:
    result = run(
        """
        sched = SyncScheduler(CallableBackend(lambda r: "ok", in_thread=False), async_backend=ASYNC_BACKEND)
        print(json.dumps({"text": sched.complete("hi").text == "ok"}))
        """,
        async_backend,
    )
    assert result == {"text": True}


@BACKENDS
def test_ctrl_c_just_as_the_slot_is_granted_gives_it_back(async_backend: str) -> None:
    """The loop entered the request's block; the interrupt reaches this thread before the block starts."""
    result = run(
        """
        import _thread
        from sjfsched import Scheduler

        class Interrupting(Scheduler):
            first = True

            def admit(self, request=None, /, **fields):
                inner = super().admit(request, **fields)
                outer = self

                class Entered:
                    async def __aenter__(self):
                        value = await inner.__aenter__()
                        if outer.first:
                            outer.first = False
                            _thread.interrupt_main()
                        return value

                    async def __aexit__(self, *exc):
                        return await inner.__aexit__(*exc)

                return Entered()

        sched = SyncScheduler(None, async_backend=ASYNC_BACKEND, scheduler_class=Interrupting, concurrency=1)
        try:
            with sched.admit("first"):
                raise AssertionError("the block ran")
        except KeyboardInterrupt:
            pass
        with sched.admit("second"):  # the slot came back
            pass
        report(sched)
        sched.close()
        """,
        async_backend,
    )
    assert (result["running"], result["completed"], result["cancelled"]) == (0, 1, 1)


@BACKENDS
def test_ctrl_c_while_the_block_is_handed_to_the_loop_leaves_nothing_queued(async_backend: str) -> None:
    """The interrupt lands as ``start_task_soon`` returns, the loop's task already waiting for a slot."""
    result = run(
        """
        sched = SyncScheduler(CallableBackend(generate), async_backend=ASYNC_BACKEND)
        holder = threading.Thread(target=sched.complete, args=("hold",), kwargs={"metadata": {"n": 8}})
        holder.start()
        deadline = time.monotonic() + 10
        while sched.statistics().running < 1:  # the holder has the slot
            assert time.monotonic() < deadline, "the holder never got the slot"
            time.sleep(0.01)
        handing_over = sched._portal.start_task_soon

        def start_task_soon(fn, *args, **kwargs):
            future = handing_over(fn, *args, **kwargs)
            if getattr(fn, "__name__", "") == "_run":
                while fn.__self__._leave is None:  # the loop has started it ...
                    time.sleep(0.01)
                time.sleep(0.1)  # ... and it waits for the slot
                sched._portal.start_task_soon = handing_over
                raise KeyboardInterrupt
            return future

        sched._portal.start_task_soon = start_task_soon
        try:
            with sched.admit("interrupted"):
                raise AssertionError("the block ran")
        except KeyboardInterrupt:
            pass
        waiting_after = sched.statistics().waiting
        holder.join()
        report(sched, waiting_after=waiting_after)
        sched.close()
        """,
        async_backend,
    )
    assert (result["waiting_after"], result["completed"], result["cancelled"], result["running"]) == (
        0,
        1,
        1,
        0,
    )


@BACKENDS
def test_reading_on_after_a_caught_ctrl_c_loses_no_chunk(async_backend: str) -> None:
    """Interrupted while it waits for a chunk, the reader gets that chunk on its next read."""
    result = run(
        """
        import _thread

        async def tokens_with_interrupt(request):
            async def tokens():
                for i in range(10):
                    await anyio.sleep(0.05)
                    if i == 3:  # the reader waits for this chunk: interrupt it there
                        await anyio.sleep(0.2)
                        _thread.interrupt_main()
                        await anyio.sleep(0.05)
                    yield "tok "
            return tokens()

        sched = SyncScheduler(CallableBackend(tokens_with_interrupt), async_backend=ASYNC_BACKEND)
        got, cut = [], False
        with sched.stream("x") as chunks:
            try:
                for chunk in chunks:
                    got.append(chunk.text)
            except KeyboardInterrupt:
                pass
            try:
                got += [chunk.text for chunk in chunks]
            except RuntimeError:
                cut = True
        whole = None if cut else chunks.completion.text
        report(sched, got=len(got), cut=cut, consistent=cut or whole == "".join(got))
        sched.close()
        """,
        async_backend,
    )
    assert result["consistent"] and not result["cut"]
    assert (result["got"], result["completed"]) == (10, 1)


@BACKENDS
def test_ctrl_c_in_close_ends_the_running_requests_with_scheduler_closed(async_backend: str) -> None:
    """Ctrl-C while close() waited for running requests handed their threads the event loop's own
    cancellation (asyncio.CancelledError, trio.Cancelled), or a stream's "left before its end"."""
    result = run(
        """
        from sjfsched import SchedulerClosed
        sched = SyncScheduler(CallableBackend(generate), async_backend=ASYNC_BACKEND, concurrency=2)
        got = {}

        def complete():
            try:
                sched.complete("write an essay")
                got["complete"] = "returned"
            except BaseException as exc:
                got["complete"] = type(exc).__name__

        def stream():
            try:
                with sched.stream("write a story") as chunks:
                    for _ in chunks:
                        pass
                got["stream"] = "ended"
            except BaseException as exc:
                got["stream"] = type(exc).__name__

        workers = [threading.Thread(target=complete), threading.Thread(target=stream)]
        for w in workers:
            w.start()
        time.sleep(0.6)
        interrupt_in(0.3)
        try:
            sched.close()
        except KeyboardInterrupt:
            got["close"] = "interrupted"
        for w in workers:
            w.join(10)
        print(json.dumps({**got, "alive": sum(w.is_alive() for w in workers)}))
        """,
        async_backend,
    )
    assert result == {
        "complete": "SchedulerClosed",
        "stream": "SchedulerClosed",
        "close": "interrupted",
        "alive": 0,
    }


def test_a_trio_sync_scheduler_refuses_a_thread_that_runs_trio() -> None:
    """Made, used or closed from inside trio, a trio SyncScheduler hung for ever in close() (trio
    refuses to let a blocking call wait in its thread) or failed with trio's own message."""
    result = run(
        """
        import trio
        from sjfsched import wrap
        outside = SyncScheduler(CallableBackend(generate), async_backend="trio")
        got = {}

        class Model:  # what wrap() needs of a llama_cpp.Llama to start
            def create_completion(self, prompt): ...
            def create_chat_completion(self, messages): ...

        async def main():
            for name, call in [
                ("make", lambda: SyncScheduler(async_backend="trio")),
                ("wrap", lambda: wrap(Model(), async_backend="trio")),
                ("complete", lambda: outside.complete("hi", metadata={"n": 1})),
                ("statistics", outside.statistics),
                ("close", outside.close),
            ]:
                try:
                    call()
                    got[name] = "returned"
                except RuntimeError as exc:
                    refused = "from a thread that runs a trio event loop" in str(exc)
                    got[name] = "refused" if refused else str(exc)
            # From a worker thread it works.
            hi = lambda: outside.complete("hi", metadata={"n": 1}).text
            got["worker"] = await trio.to_thread.run_sync(hi)

        trio.run(main)
        outside.close()
        got["closed"] = outside.closed
        print(json.dumps(got))
        """,
        "trio",
    )
    assert result == {
        **dict.fromkeys(["make", "wrap", "complete", "statistics", "close"], "refused"),
        "worker": "tok ",
        "closed": True,
    }
