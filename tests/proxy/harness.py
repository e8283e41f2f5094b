"""The proxy in-process for tests: uvicorn in a thread, on a free 127.0.0.1 port.

:func:`running_proxy` starts a :class:`~sjfsched.proxy.ProxyApp` exactly as
``sjfsched serve`` builds it (:func:`~sjfsched.proxy.make_server`), in a
thread with its own event loop, and yields a :class:`RunningProxy` for
looking at its scheduler from the test's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import httpx

from sjfsched import Completion, SchedulerStatistics
from sjfsched.proxy import ProxyApp, ProxyServer, ProxySettings, make_server
from sjfsched.proxy._server import bind

T = TypeVar("T")


class RunningProxy:
    """A proxy serving in a background thread."""

    def __init__(self, app: ProxyApp, server: ProxyServer, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.server = server
        self.url = url
        self.loop = loop

    def run(self, coroutine: Callable[[], Coroutine[Any, Any, T]], timeout: float = 10.0) -> T:
        """Run ``coroutine()`` on the proxy's event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine(), self.loop).result(timeout)

    def stats(self) -> SchedulerStatistics:
        async def read() -> SchedulerStatistics:
            return self.app.scheduler.statistics()

        return self.run(read)

    def wait_until(self, condition: Callable[[SchedulerStatistics], bool], timeout: float = 10.0) -> None:
        """Poll the scheduler's statistics until ``condition`` holds."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if condition(stats):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the proxy's scheduler never got there: {stats}")
            time.sleep(0.005)

    @contextlib.contextmanager
    def hold_slot(self) -> Iterator[None]:
        """Occupy one of the scheduler's slots (through its public admit()) until the block ends."""
        held = threading.Event()
        release: asyncio.Event | None = None

        async def holder() -> None:
            nonlocal release
            release = asyncio.Event()
            async with self.app.scheduler.admit("the test holds this slot", max_tokens=1):
                held.set()
                await release.wait()

        future = asyncio.run_coroutine_threadsafe(holder(), self.loop)
        if not held.wait(10):
            raise TimeoutError("could not take a slot")
        try:
            yield
        finally:
            assert release is not None
            self.loop.call_soon_threadsafe(release.set)
            future.result(10)

    @contextlib.contextmanager
    def completions(self) -> Iterator[list[Completion]]:
        """The requests the scheduler ends while the block runs, in the order it ends them.

        Fills the constructor's ``on_complete`` slot, which the proxy leaves empty: a test
        reads the order the proxy served in, not the order its client threads got to run.
        """
        scheduler = self.app.scheduler
        assert scheduler._on_complete is None
        ended: list[Completion] = []
        scheduler._on_complete = ended.append
        try:
            yield ended
        finally:
            scheduler._on_complete = None

    def metrics(self) -> dict[str, float]:
        """``/metrics``, parsed strictly (see :func:`parse_metrics`)."""
        response = httpx.get(f"{self.url}/metrics", timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        return parse_metrics(response.text)


@contextlib.contextmanager
def running_proxy(upstream: str, **settings: Any) -> Iterator[RunningProxy]:
    """Start the proxy in front of ``upstream`` with these :class:`ProxySettings` fields."""
    settings.setdefault("log_level", "warning")
    app = ProxyApp(ProxySettings(upstream=upstream, port=0, **settings))
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = make_server(app, log_config=None)
    loops: list[asyncio.AbstractEventLoop] = []
    errors: list[BaseException] = []

    def serve() -> None:
        async def main() -> None:
            loops.append(asyncio.get_running_loop())
            await server.serve(sockets=[sock])

        try:
            asyncio.run(main())
        except BaseException as exc:  # startup failure: uvicorn calls sys.exit
            errors.append(exc)

    thread = threading.Thread(target=serve, name="sjfsched-proxy", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError(f"the proxy did not start: {errors!r}")
        if time.monotonic() > deadline:
            raise TimeoutError("the proxy did not start within 30 s")
        time.sleep(0.005)
    try:
        yield RunningProxy(app, server, f"http://127.0.0.1:{port}", loops[0])
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "the proxy did not stop"


# ------------------------------------------------------- Prometheus text format

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_VALUE = r"(?:[+-]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+)|[+-]Inf|NaN)"
_SAMPLE = re.compile(rf"^({_NAME})(\{{(?:{_LABEL})(?:,{_LABEL})*\}})? ({_VALUE})$")
_HELP = re.compile(rf"^# HELP ({_NAME}) .+$")
_TYPE = re.compile(rf"^# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition (0.0.4), checked line by line.

    Every sample must belong to a family announced by ``# HELP`` and ``#
    TYPE`` lines just before it (histograms as ``_bucket``/``_sum``/``_count``,
    counters named ``..._total``), no sample may appear twice, and every
    histogram's buckets must be cumulative and end with ``le="+Inf"`` equal to
    its ``_count``.  Returns ``{'name{labels}': value}``.
    """
    assert text.endswith("\n"), "the exposition must end with a newline"
    samples: dict[str, float] = {}
    kinds: dict[str, str] = {}
    current: str | None = None
    helped: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if match := _HELP.match(line):
            helped.add(match.group(1))
            continue
        if match := _TYPE.match(line):
            name, kind = match.groups()
            assert name in helped, f"line {number}: TYPE before HELP for {name}"
            assert name not in kinds, f"line {number}: {name} announced twice"
            kinds[name] = kind
            current = name
            continue
        match = _SAMPLE.match(line)
        assert match is not None, f"line {number} is not a valid sample: {line!r}"
        name, labels, value = match.groups()
        assert current is not None, f"line {number}: a sample before any TYPE"
        kind = kinds[current]
        allowed = {current}
        if kind == "histogram":
            allowed = {f"{current}_bucket", f"{current}_sum", f"{current}_count"}
        if kind == "counter":
            assert current.endswith("_total"), f"counter {current} must end in _total"
        assert name in allowed, f"line {number}: {name} does not belong to {current} ({kind})"
        key = name + (labels or "")
        assert key not in samples, f"line {number}: {key} appears twice"
        samples[key] = float(value.replace("Inf", "inf"))
    for family, kind in kinds.items():
        if kind != "histogram":
            continue
        series: dict[str, list[tuple[float, float]]] = {}
        for key, value in samples.items():
            if not key.startswith(f"{family}_bucket{{"):
                continue
            labels = key[len(family) + len("_bucket{") : -1]
            le = re.search(r'le="([^"]+)"', labels)
            assert le is not None, f"{key} has no le label"
            rest = re.sub(r',?le="[^"]+"', "", labels).lstrip(",")
            series.setdefault(rest, []).append((float(le.group(1).replace("Inf", "inf")), value))
        assert series, f"histogram {family} has no buckets"
        for rest, buckets in series.items():
            counts = [count for _, count in buckets]
            bounds = [le for le, _ in buckets]
            assert bounds == sorted(bounds), f"{family}: buckets out of order"
            assert counts == sorted(counts), f"{family}{{{rest}}}: buckets are not cumulative"
            assert buckets[-1][0] == float("inf"), f"{family}{{{rest}}}: no +Inf bucket"
            suffix = f"{{{rest}}}" if rest else ""
            assert samples[f"{family}_count{suffix}"] == counts[-1], f"{family}: +Inf bucket != count"
            assert f"{family}_sum{suffix}" in samples
    return samples


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
