"""``python -m sjfsched serve`` as a real process: configuration, start-up, graceful shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import httpx
import pytest

from sjfsched.proxy import ProxyApp, ProxySettings
from sjfsched.proxy._upstream import UpstreamUnavailable
from tests.support.ollama_server import OllamaServer
from tests.support.signals import ctrl_c_as_at_a_terminal

from .harness import free_port, parse_metrics

pytestmark = pytest.mark.slow

MODEL = "tiny"


class Serve:
    """A running ``sjfsched serve`` process and everything it printed."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no line with {text!r}; output:\n{self.output}")

    @property
    def url(self) -> str:
        return self.wait_for_line("listening on ").rsplit(" ", 1)[1]

    def metric(self, name: str) -> float:
        return parse_metrics(httpx.get(f"{self.url}/metrics", timeout=10).text)[name]

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code


@contextlib.contextmanager
def serve(*args: str, env: dict[str, str] | None = None) -> Iterator[Serve]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SJFSCHED_")}
    environment.update(env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "sjfsched", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
        preexec_fn=ctrl_c_as_at_a_terminal,
    )
    try:
        yield Serve(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SJFSCHED_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "sjfsched", "serve", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


def _stream_lines(
    url: str, body: Mapping[str, object], headers: dict[str, str], first: threading.Event
) -> list[str]:
    lines: list[str] = []
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", url, json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.strip():
                lines.append(line)
                first.set()
    return lines


def test_flags_win_over_environment_and_sigterm_drains(ollama: OllamaServer) -> None:
    env = {
        "SJFSCHED_UPSTREAM": ollama.url,
        "SJFSCHED_CONCURRENCY": "5",  # the flag below wins
        "SJFSCHED_MAX_QUEUE": "7",
        "SJFSCHED_SHUTDOWN_TIMEOUT": "20",
        "SJFSCHED_LOG_LEVEL": "info",
    }
    with serve("--listen", "127.0.0.1:0", "--concurrency", "1", env=env) as proxy:
        url = proxy.url
        table = proxy.output
        for expected in (
            f"upstream           {ollama.url}",
            "upstream-api       ollama",
            "(detected)",
            "concurrency        1",
            "(--concurrency)",
            "max-queue          7",
            "(SJFSCHED_MAX_QUEUE)",
            "shutdown-timeout   20.0",
            "max-body-bytes     10485760",
        ):
            assert expected in table, table
        assert "(SJFSCHED_UPSTREAM)" in proxy.wait_for_line("  upstream  ")

        run = uuid.uuid4().hex
        started = threading.Event()
        generate = f"{url}/api/generate"
        body = {"model": MODEL, "prompt": "Hello", "options": {"num_predict": 6}}
        with ThreadPoolExecutor(2) as pool, httpx.Client(timeout=30) as client:
            # Running: the upstream pauses 1.5 s after two tokens.
            running = pool.submit(
                _stream_lines, generate, body, {"X-Test-Fault": "stall:2:1.5", "X-Test-Run": run}, started
            )
            assert started.wait(30)
            queued = pool.submit(client.post, generate, json=body)
            deadline = time.monotonic() + 30
            while proxy.metric("sjfsched_requests_waiting") != 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)

            proxy.process.send_signal(signal.SIGTERM)
            # The waiting request is refused at once; new ones are too; the running one goes on.
            refused = queued.result(10)
            assert refused.status_code == 503
            assert refused.json() == {"error": "the proxy is shutting down"}
            late = client.post(generate, json=body)
            assert late.status_code == 503
            health = client.get(f"{url}/healthz")
            assert health.status_code == 503 and health.json()["status"] == "draining"
            openai_late = client.post(f"{url}/v1/chat/completions", json={"messages": []})
            assert openai_late.status_code == 503
            assert openai_late.json()["error"]["type"] == "server_error"

            lines = running.result(30)
        finished = time.monotonic()
        assert json.loads(lines[-1])["done"] is True
        assert json.loads(lines[-1])["eval_count"] == 6
        assert proxy.wait(15) == 0
        assert time.monotonic() - finished < 10  # soon after its last request, not 20 s
    assert "SIGTERM: shutting down; 1 running request(s) may take up to 20 s to finish" in proxy.output
    assert [r.outcome for r in ollama.records if r.headers.get("x-test-run") == run] == ["done"]


def test_shutdown_timeout_bounds_the_drain(ollama: OllamaServer) -> None:
    run = uuid.uuid4().hex
    with serve("--upstream", ollama.url, "--listen", "127.0.0.1:0", "--shutdown-timeout", "0.5") as proxy:
        url = proxy.url
        started = threading.Event()
        body = {"model": MODEL, "prompt": "Hello", "options": {"num_predict": 6}}
        headers = {"X-Test-Fault": "stall:1:30", "X-Test-Run": run}
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(_stream_lines, f"{url}/api/generate", body, headers, started)
            assert started.wait(30)
            t0 = time.monotonic()
            proxy.process.send_signal(signal.SIGINT)
            with pytest.raises(httpx.HTTPError):  # cut before its end
                running.result(30)
            assert proxy.wait(15) == 0
            assert time.monotonic() - t0 < 10  # bounded by the 0.5 s timeout, not the 30 s stall
    assert "requests still running after --shutdown-timeout 0.5 s are cut" in proxy.output
    # said once, not again as an application error with a traceback per request cut
    assert "Exception in ASGI application" not in proxy.output and "Traceback" not in proxy.output
    deadline = time.monotonic() + 10
    while [r.outcome for r in ollama.records if r.headers.get("x-test-run") == run] != ["client_gone"]:
        assert time.monotonic() < deadline, "the upstream request was not closed"
        time.sleep(0.02)


def test_a_second_signal_stops_at_once_without_a_traceback(ollama: OllamaServer) -> None:
    with serve("--upstream", ollama.url, "--listen", "127.0.0.1:0") as proxy:
        url = proxy.url
        started = threading.Event()
        body = {"model": MODEL, "prompt": "Hello", "options": {"num_predict": 6}}
        headers = {"X-Test-Fault": "stall:1:30", "X-Test-Run": uuid.uuid4().hex}
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(_stream_lines, f"{url}/api/generate", body, headers, started)
            assert started.wait(30)
            proxy.process.send_signal(signal.SIGINT)  # a drain of up to 30 s begins
            proxy.wait_for_line("SIGINT: shutting down", 10)
            proxy.process.send_signal(signal.SIGINT)  # Ctrl-C again: at once
            with pytest.raises(httpx.HTTPError):
                running.result(30)
            assert proxy.wait(15) == 130
    assert "SIGINT again: stopping at once" in proxy.output
    assert "stopped at once (a second signal)" in proxy.output
    assert "Traceback" not in proxy.output and "Exception in ASGI application" not in proxy.output


def test_an_idle_proxy_stops_at_once_on_sigint(ollama: OllamaServer) -> None:
    with serve("--upstream", ollama.url, "--listen", "127.0.0.1:0", "--upstream-api", "ollama") as proxy:
        url = proxy.url
        assert "upstream-api       ollama                           (--upstream-api)" in proxy.output
        assert httpx.get(f"{url}/healthz", timeout=10).json() == {
            "status": "ok",
            "upstream": ollama.url,
            "api": "ollama",
            "waiting": 0,
            "running": 0,
        }
        t0 = time.monotonic()
        proxy.process.send_signal(signal.SIGINT)
        assert proxy.wait(15) == 0
        assert time.monotonic() - t0 < 10  # not the 30 s a drain may take


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "sjfsched serve: an upstream is required: pass --upstream URL or set SJFSCHED_UPSTREAM"),
        (
            ("--upstream", "http://127.0.0.1:1"),
            {"SJFSCHED_CONCURRENCY": "zero"},
            "sjfsched serve: SJFSCHED_CONCURRENCY: expected an integer, got 'zero'",
        ),
        (
            ("--upstream", "http://127.0.0.1:1", "--concurrency", "0"),
            {},
            "sjfsched serve: --concurrency: concurrency must be an integer >= 1, got 0",
        ),
        (
            ("--upstream", "localhost:11434"),
            {},
            "sjfsched serve: --upstream: upstream must be an http:// or https:// URL, got 'localhost:11434'",
        ),
        (
            ("--upstream", "http://127.0.0.1:1", "--max-body-bytes", "lots"),
            {},
            "argument --max-body-bytes: expected a number of bytes (e.g. 10485760, 10MiB), got 'lots'",
        ),
        (  # the last one named was used, silently
            ("--upstream", "http://127.0.0.1:1", "--upstream", "http://127.0.0.1:2"),
            {},
            "--upstream given twice: the proxy forwards to one upstream server",
        ),
        (
            ("--upstream", "http://127.0.0.1:1", "--upstream-api", "vllm"),
            {},
            "sjfsched serve: --upstream-api: upstream_api must be one of auto, ollama, openai; got 'vllm'",
        ),
        (  # read as host ":" and port 1, it failed to bind, status 1, naming no flag
            ("--upstream", "http://127.0.0.1:1", "--listen", "::1"),
            {},
            "argument --listen: an IPv6 address goes in brackets, before the port (e.g. [::1]:8080)",
        ),
        (
            ("--upstream", "http://127.0.0.1:1"),
            {"SJFSCHED_LISTEN": "::1"},
            "sjfsched serve: SJFSCHED_LISTEN: an IPv6 address goes in brackets",
        ),
        (  # it listened on 0.0.0.0
            ("--upstream", "http://127.0.0.1:1", "--listen", "[]:0"),
            {},
            "argument --listen: expected HOST:PORT (e.g. 127.0.0.1:8080), got '[]:0'",
        ),
        (  # said by sjfsched's own parser, whose usage does not show serve's --listen
            ("--upstream", "http://127.0.0.1:1", "--port", "8080"),
            {},
            "usage: sjfsched serve [-h] [--upstream URL] [--listen HOST:PORT]",
        ),
        (
            ("--upstream", "http://127.0.0.1:1", "--port", "8080"),
            {},
            "sjfsched serve: error: unrecognized arguments: --port 8080",
        ),
    ],
)
def test_bad_configuration_exits_2_naming_the_setting(
    args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    result = _run(*args, env=env)
    assert result.returncode == 2, result
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("by_variable", [False, True])
def test_a_bad_state_file_exits_2_before_listening(tmp_path: Path, by_variable: bool) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    flag = () if by_variable else ("--predictor-state", str(state))
    env = {"SJFSCHED_PREDICTOR_STATE": str(state)} if by_variable else {}
    result = _run("--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", *flag, env=env)
    assert result.returncode == 2, result
    where = "SJFSCHED_PREDICTOR_STATE" if by_variable else "--predictor-state"
    assert result.stderr.startswith(f"sjfsched serve: {where}: {state}: cannot load"), result.stderr
    assert result.stderr.count("\n") == 1 and "listening" not in result.stdout, result


def test_unreachable_upstream_at_start_exits_1() -> None:
    port = free_port()
    result = _run("--upstream", f"http://127.0.0.1:{port}", "--listen", "127.0.0.1:0")
    assert result.returncode == 1, result
    assert (
        f"sjfsched serve: http://127.0.0.1:{port} answered neither GET /api/tags (Ollama) nor GET /v1/models "
        "(OpenAI-compatible)"
    ) in result.stderr
    assert "Connection refused" in result.stderr
    assert "--upstream-api ollama|openai" in result.stderr


@contextlib.contextmanager
def _silent_upstream() -> Iterator[socket.socket]:
    """A loopback socket that takes connections and never answers (a server stuck loading)."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        yield listening


def test_ctrl_c_while_asking_the_upstream_what_it_is_ends_in_one_line() -> None:
    """It printed a KeyboardInterrupt traceback through asyncio.run and exited -2."""
    with (
        _silent_upstream() as upstream,
        serve("--upstream", f"http://127.0.0.1:{upstream.getsockname()[1]}") as proxy,
    ):
        upstream.settimeout(30)
        asked, _ = upstream.accept()  # it is asking now
        with asked:
            proxy.process.send_signal(signal.SIGINT)
            assert proxy.wait(30) == 130
    assert proxy.output.endswith("sjfsched serve: interrupted while asking the upstream what it is"), (
        proxy.output
    )
    assert "Traceback" not in proxy.output


def test_asking_a_silent_upstream_what_it_is_waits_no_longer_than_the_read_timeout() -> None:
    """It waited 30 s a question whatever --read-timeout said (60 s, then an error naming 30 s)."""
    with _silent_upstream() as upstream:
        port = upstream.getsockname()[1]
        started = time.monotonic()
        result = _run(
            "--upstream", f"http://127.0.0.1:{port}", "--listen", "127.0.0.1:0", "--read-timeout", "1"
        )
        took = time.monotonic() - started
    assert result.returncode == 1, result
    assert "/api/tags: the upstream sent nothing for 1 s (the read timeout)" in result.stderr, result.stderr
    assert took < 20, took


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the proxy runs on asyncio
async def test_an_embedded_proxy_asks_a_silent_upstream_for_a_bounded_time(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default read_timeout (none), startup() (make_server's lifespan) waited for ever."""
    monkeypatch.setattr("sjfsched.proxy._upstream.DETECT_READ_TIMEOUT", 0.5)
    with _silent_upstream() as upstream:
        port = upstream.getsockname()[1]
        app = ProxyApp(ProxySettings(upstream=f"http://127.0.0.1:{port}"))
        with anyio.fail_after(20), pytest.raises(UpstreamUnavailable, match=r"sent nothing for 0\.5 s"):
            await app.startup()


def test_help_lists_every_flag_with_its_variable() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for flag, variable in (
        ("--upstream", "SJFSCHED_UPSTREAM"),
        ("--listen", "SJFSCHED_LISTEN"),
        ("--upstream-api", "SJFSCHED_UPSTREAM_API"),
        ("--concurrency", "SJFSCHED_CONCURRENCY"),
        ("--max-queue", "SJFSCHED_MAX_QUEUE"),
        ("--max-body-bytes", "SJFSCHED_MAX_BODY_BYTES"),
        ("--shutdown-timeout", "SJFSCHED_SHUTDOWN_TIMEOUT"),
    ):
        assert flag in result.stdout and variable in result.stdout


def test_make_server_listens_on_the_settings_host_and_port(ollama: OllamaServer) -> None:
    """docs/proxy.md's embedding: make_server(app) listened on uvicorn's default 8000 instead."""
    import asyncio

    from sjfsched.proxy import ProxyApp, ProxySettings, make_server

    port = free_port()
    app = ProxyApp(ProxySettings(upstream=ollama.url, host="127.0.0.1", port=port, log_level="warning"))
    server = make_server(app, log_config=None)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.01)
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert health.status_code == 200
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()


def test_an_embedded_server_cancelled_with_a_request_in_flight_stops_at_once_and_cleans_up(
    ollama: OllamaServer,
) -> None:
    """Its serve() waited a second for requests nobody cut, and left its log filter on uvicorn's logger."""
    import asyncio
    import functools
    import logging

    import anyio

    from sjfsched.proxy import ProxyApp, ProxySettings, make_server
    from sjfsched.proxy._server import _quiet_cut, bind

    async def main() -> float:
        settings = ProxySettings(upstream=ollama.url, upstream_api="ollama", log_level="warning")
        server = make_server(ProxyApp(settings), log_config=None)
        body = {"model": MODEL, "prompt": "Hello", "options": {"num_predict": 6}}
        with bind("127.0.0.1", 0) as sock:
            url = f"http://127.0.0.1:{sock.getsockname()[1]}/api/generate"
            async with anyio.create_task_group() as tg, httpx.AsyncClient(timeout=30) as client:
                tg.start_soon(functools.partial(server.serve, sockets=[sock]))
                while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
                    await anyio.sleep(0.01)
                headers = {"X-Test-Fault": "stall:1:30", "X-Test-Run": uuid.uuid4().hex}
                tg.start_soon(functools.partial(client.post, url, json=body, headers=headers))
                while not server.server_state.tasks:  # noqa: ASYNC110 - the request is in flight
                    await anyio.sleep(0.01)
                logging.getLogger("uvicorn.error").addFilter(_quiet_cut)  # as a cut adds it
                server._cut = True
                started = anyio.current_time()
                tg.cancel_scope.cancel()  # the embedding program stops it
            return anyio.current_time() - started

    elapsed = asyncio.run(main())
    assert elapsed < 0.5
    assert _quiet_cut not in logging.getLogger("uvicorn.error").filters


def test_a_client_still_sending_its_body_does_not_hold_the_drain(ollama: OllamaServer) -> None:
    """A scheduled call whose body was still arriving held a drain for the whole
    --shutdown-timeout with nothing running, and one refused as the scheduler closed went
    uncounted (found by a reviewer)."""
    with serve("--upstream", ollama.url, "--listen", "127.0.0.1:0", "--shutdown-timeout", "20") as proxy:
        host, port = proxy.url.removeprefix("http://").split(":")
        body = json.dumps({"model": MODEL, "prompt": "Hello", "options": {"num_predict": 2}}).encode()
        head = f"POST /api/generate HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
        with (
            socket.create_connection((host, int(port))) as slow,
            socket.create_connection((host, int(port))) as late,
        ):
            slow.sendall(head.encode() + body[:-5])  # never finished
            late.sendall(head.encode() + body[:-5])  # finished after the drain began
            time.sleep(1.0)  # the proxy (another process) reads both heads
            t0 = time.monotonic()
            proxy.process.send_signal(signal.SIGTERM)
            proxy.wait_for_line("SIGTERM: shutting down", 10)
            with contextlib.suppress(OSError):  # it may have been answered and closed already
                late.sendall(body[-5:])
            # Both are refused at once in Ollama's shape: a 503, not uvicorn's plain-text 500
            # for a request cut at the exit.
            for client in (slow, late):
                client.settimeout(10)
                answer = b""
                while b"shutting down" not in answer and (part := client.recv(4096)):
                    answer += part
                assert answer.startswith(b"HTTP/1.1 503"), answer
                assert answer.endswith(b'{"error": "the proxy is shutting down"}'), answer
            assert proxy.wait(15) == 0
            assert time.monotonic() - t0 < 10  # not the 20 s of --shutdown-timeout
    assert "still sending their body are cut" not in proxy.output
    assert "Traceback" not in proxy.output and "Exception in ASGI application" not in proxy.output


def test_the_shutdown_line_counts_the_passed_through_calls_it_waits_for(ollama: OllamaServer) -> None:
    """A pass-through upload still under way holds the drain (it may be a real upload), and the
    shutdown line said 0 running requests (found by a reviewer)."""
    with serve("--upstream", ollama.url, "--listen", "127.0.0.1:0", "--shutdown-timeout", "20") as proxy:
        host, port = proxy.url.removeprefix("http://").split(":")
        head = f"POST /api/blobs/sha256:abc HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\n\r\n"
        with socket.create_connection((host, int(port))) as upload:
            upload.sendall(head.encode() + b"x" * 10)
            deadline = time.monotonic() + 10
            while "sjfsched_passthrough_requests_total 1" not in httpx.get(f"{proxy.url}/metrics").text:
                assert time.monotonic() < deadline, "the proxy never passed the upload on"
                time.sleep(0.01)
            proxy.process.send_signal(signal.SIGTERM)
            proxy.wait_for_line("SIGTERM: shutting down", 10)
        # The client gave up (its connection closed): the drain ends with it.
        assert proxy.wait(15) == 0
    line = "SIGTERM: shutting down; 0 running request(s) and 1 passed-through call(s) may take"
    assert line in proxy.output


def test_the_settings_table_writes_an_ipv6_address_as_listen_takes_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # It printed ::1:8080, which --listen refuses (an IPv6 address goes in brackets).
    from sjfsched.proxy._cli import _print_settings

    _print_settings(ProxySettings(upstream="http://127.0.0.1:1", host="::1", port=8080), {})
    assert "  listen             [::1]:8080 " in capsys.readouterr().out
