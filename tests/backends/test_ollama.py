"""OllamaBackend against a loopback server speaking Ollama's API over real llama.cpp."""

from __future__ import annotations

import contextlib
import math
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from sjfsched import BackendError, Chunk, Request, Scheduler
from sjfsched.backends import Backend, BackendPool, BackendUnavailable, OllamaBackend, OpenAIBackend
from sjfsched.predictors import ConstantPredictor
from tests.support import shared
from tests.support.models import free_port
from tests.support.ollama_server import BUSY_MESSAGE, OllamaServer

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def backend(ollama: OllamaServer) -> AsyncIterator[OllamaBackend]:
    backend = OllamaBackend("tiny", ollama.url)
    yield backend
    await backend.aclose()


async def collect(backend: OllamaBackend, request: Request) -> list[Chunk]:
    with anyio.fail_after(60):
        return [chunk async for chunk in backend.stream(request)]


async def direct(server: OllamaServer, path: str, body: dict[str, Any]) -> Any:
    """The server's non-streamed answer, asked without the backend."""
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{server.url}{path}", json={**body, "stream": False}, timeout=30)
    return response.json()


async def test_generate_streams_ollamas_tokens_and_counts(
    backend: OllamaBackend, ollama: OllamaServer
) -> None:
    request = Request("Why is the sky blue?", max_tokens=30, options={"temperature": 0, "seed": 1})
    chunks = await collect(backend, request)
    ollama.wait_idle()
    record = ollama.records[-1]
    assert (record.endpoint, record.outcome, record.generated) == ("generate", "done", 30)
    assert len(chunks) == 31  # one line per token, then the final line
    assert sum(c.tokens for c in chunks) == 30
    assert [c.prompt_tokens for c in chunks if c.prompt_tokens is not None] == [record.prompt_tokens]
    assert chunks[-1].finish_reason == "length"
    answer = await direct(
        ollama,
        "/api/generate",
        {
            "model": "tiny",
            "prompt": request.prompt,
            "options": {"temperature": 0, "seed": 1, "num_predict": 30},
        },
    )
    assert "".join(c.text for c in chunks) == answer["response"]
    assert answer["eval_count"] == 30


async def test_chat_goes_to_api_chat(backend: OllamaBackend, ollama: OllamaServer) -> None:
    messages = [{"role": "system", "content": "Be short."}, {"role": "user", "content": "Hello!"}]
    chunks = await collect(backend, Request(messages=messages, max_tokens=12, options={"temperature": 0}))
    ollama.wait_idle()
    record = ollama.records[-1]
    assert (record.endpoint, record.generated) == ("chat", 12)
    answer = await direct(
        ollama,
        "/api/chat",
        {"model": "tiny", "messages": messages, "options": {"temperature": 0, "num_predict": 12}},
    )
    assert "".join(c.text for c in chunks) == answer["message"]["content"]
    assert sum(c.tokens for c in chunks) == answer["eval_count"] == 12
    assert chunks[-1].prompt_tokens == answer["prompt_eval_count"]


@pytest.mark.parametrize("loops", [("asyncio", "asyncio"), ("trio", "asyncio"), ("asyncio", "trio")])
def test_a_backend_serves_a_later_event_loop_without_being_closed(
    ollama: OllamaServer, loops: tuple[str, str]
) -> None:
    # Its client kept the first loop's kept-alive connection: the second anyio.run() failed with
    # a bare RuntimeError ("Event loop is closed"). A pool outlives a loop by design.
    import gc
    import warnings

    backend = OllamaBackend("tiny", ollama.url)

    async def answer(close: bool) -> int:
        tokens = sum([c.tokens async for c in backend.stream(Request("Hi", max_tokens=3))])
        if close:
            await backend.aclose()
        return tokens

    with warnings.catch_warnings():
        # The first loop's connection cannot be closed once that loop is gone: it is dropped.
        warnings.simplefilter("ignore", ResourceWarning)
        assert [
            anyio.run(answer, close, backend=loop) for loop, close in zip(loops, (False, True), strict=True)
        ] == [3, 3]
        assert not backend._http._clients  # the first loop's dropped, the second's closed
        gc.collect()


def test_two_sync_schedulers_may_share_one_backend(ollama: OllamaServer) -> None:
    # Each loop's requests went through whichever loop's client was made last: "bound to a
    # different event loop" at random. One client per loop, made under a lock.
    from concurrent.futures import ThreadPoolExecutor

    from sjfsched import SyncScheduler

    backend = OllamaBackend("tiny", ollama.url)
    schedulers = [SyncScheduler(backend, async_backend=loop) for loop in ("asyncio", "trio")]
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda i: schedulers[i % 2].complete(f"Hi {i}", max_tokens=2).output_tokens, range(24))
        )
    for sched in schedulers:
        sched.close()
    assert answers == [2] * 24
    assert len(backend._http._clients) == 0  # each scheduler closed its loop's own


def test_request_fields_and_options_land_where_ollama_expects_them() -> None:
    backend = OllamaBackend("llama3.2", keep_alive="10m")
    path, body = backend.body(
        Request(
            "Hi",
            max_tokens=7,
            options={"temperature": 0.2, "raw": True, "system": "S", "format": "json", "stop": ["\n"]},
        )
    )
    assert path == "/api/generate"
    assert body == {
        "model": "llama3.2",
        "prompt": "Hi",
        "stream": True,
        "raw": True,
        "system": "S",
        "format": "json",
        "options": {"temperature": 0.2, "stop": ["\n"], "num_predict": 7},
        "keep_alive": "10m",
    }
    path, body = backend.body(Request(messages=[{"role": "user", "content": "x"}], max_tokens=3))
    assert path == "/api/chat"
    assert body["options"] == {"num_predict": 3}
    with pytest.raises(BackendError, match="'model' itself"):
        backend.body(Request("x", options={"model": "other"}))


async def test_raw_and_system_change_what_the_model_reads(
    backend: OllamaBackend, ollama: OllamaServer
) -> None:
    prompt = "Once upon a time"
    templated = await collect(backend, Request(prompt, max_tokens=1))
    raw = await collect(backend, Request(prompt, max_tokens=1, options={"raw": True}))
    system = await collect(backend, Request(prompt, max_tokens=1, options={"system": "You are terse."}))
    assert raw[-1].prompt_tokens == len(prompt) + 1  # BOS + one token per character
    assert templated[-1].prompt_tokens == len("user: Once upon a time\nassistant:") + 1
    assert system[-1].prompt_tokens == len("system: You are terse.\nuser: Once upon a time\nassistant:") + 1


async def test_stop_option_is_applied_by_the_server_and_counts_stay_exact(
    backend: OllamaBackend, ollama: OllamaServer
) -> None:
    greedy = "".join(
        c.text for c in await collect(backend, Request("Tell:", max_tokens=60, options={"temperature": 0}))
    )
    stop = greedy[25:27]
    chunks = await collect(
        backend, Request("Tell:", max_tokens=60, options={"temperature": 0, "stop": [stop]})
    )
    ollama.wait_idle()
    assert "".join(c.text for c in chunks) == greedy[: greedy.index(stop)]
    assert chunks[-1].finish_reason == "stop"
    # The server held text back while it might start the stop string, so some
    # lines carried two tokens: eval_count in the final line fixed the sum.
    assert sum(c.tokens for c in chunks) == ollama.records[-1].generated


async def test_empty_prompt_loads_the_model(backend: OllamaBackend) -> None:
    chunks = await collect(backend, Request(""))
    assert [(c.text, c.tokens, c.finish_reason) for c in chunks] == [("", 0, "load")]


async def test_lists_the_servers_models(backend: OllamaBackend) -> None:
    assert await backend.models() == ["tiny:latest"]


# ------------------------------------------------------------------- errors


async def test_connection_refused() -> None:
    backend = OllamaBackend("tiny", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(BackendUnavailable, match="cannot connect to Ollama") as info:
        await collect(backend, Request("Hi"))
    assert info.value.status_code is None
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    await backend.aclose()


@pytest.mark.skipif(sys.platform != "linux", reason="fills a listen backlog the Linux way")
async def test_connect_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepted: once the backlog is full, SYNs go unanswered
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for s in fillers:
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    s.connect(("127.0.0.1", port))
            backend = OllamaBackend("tiny", f"http://127.0.0.1:{port}", connect_timeout=0.3)
            with pytest.raises(BackendUnavailable, match=r"timed out after 0\.3 s"):
                await collect(backend, Request("Hi"))
            await backend.aclose()
        finally:
            for s in fillers:
                s.close()


async def test_unknown_model_is_a_404_with_ollamas_message(ollama: OllamaServer) -> None:
    backend = OllamaBackend("nope", ollama.url)
    with pytest.raises(BackendError, match="model 'nope' not found") as info:
        await collect(backend, Request("Hi"))
    assert info.value.status_code == 404
    assert not isinstance(info.value, BackendUnavailable)  # the request's fault, not the server's
    await backend.aclose()


async def test_busy_server_is_a_503() -> None:
    server = shared.ollama_server_parallel()  # 2 running + 1 waiting at most
    stalled = OllamaBackend("tiny", server.url, headers={"X-Test-Fault": "stall:1:30"})
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(collect_quietly, stalled, Request("Hold on", max_tokens=5))
        with anyio.fail_after(10):
            while server._pending < 3:  # noqa: ASYNC110 - the server runs in other threads
                await anyio.sleep(0.01)
        backend = OllamaBackend("tiny", server.url)
        with pytest.raises(BackendUnavailable, match="server busy") as info:
            await collect(backend, Request("Hi", max_tokens=2))
        assert info.value.status_code == 503
        assert BUSY_MESSAGE in str(info.value)
        tg.cancel_scope.cancel()
    await stalled.aclose()
    await backend.aclose()
    await anyio.to_thread.run_sync(server.wait_idle, 40.0)


async def read_into(
    received: list[Chunk],
    backend: Backend,
    request: Request,
    each: Callable[[Chunk], object] | None = None,
) -> None:
    """Stream into ``received`` (kept when the stream fails), calling ``each`` per chunk."""
    with anyio.fail_after(30):
        async for chunk in backend.stream(request):
            received.append(chunk)
            if each is not None:
                each(chunk)


async def collect_quietly(backend: OllamaBackend, request: Request) -> None:
    async for _ in backend.stream(request):
        pass


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("close:3", "broke mid-response"),
        ("garbage:3", "malformed line"),
        ("error:3", "an error was encountered while running the model"),
        # Ended in good order with no final line, and no run of pieces alike: not Ollama's
        # token repeat limit (a server or a proxy in front of it gone wrong).
        ("end:3", r"ended the stream before its final line \(done: true\)"),
    ],
    ids=["dies-mid-stream", "garbage-line", "error-line", "clean-end"],
)
async def test_faults_mid_stream(ollama: OllamaServer, fault: str, message: str) -> None:
    backend = OllamaBackend("tiny", ollama.url, headers={"X-Test-Fault": fault})
    received: list[Chunk] = []
    with pytest.raises(BackendUnavailable, match=message):
        await read_into(received, backend, Request("Story:", max_tokens=50))
    assert len(received) == 3  # what came before the fault was streamed
    await backend.aclose()


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("repeat-error:3", "stopped the generation: prediction aborted, token repeat limit reached"),
        ("repeat:3", r"without its final line \(done: true\) after 31 pieces alike.*token repeat limit"),
    ],
    ids=["error-line-since-18374", "clean-end-before-it"],
)
async def test_a_generation_stopped_for_repeating_is_the_requests_failure(
    ollama: OllamaServer, fault: str, message: str
) -> None:
    # Ollama stops a generation that repeats one token: a healthy server, which a pool
    # took out of rotation when either shape read as BackendUnavailable.
    backend = OllamaBackend("tiny", ollama.url, headers={"X-Test-Fault": fault})
    pool = BackendPool([backend])
    received: list[Chunk] = []
    with pytest.raises(BackendError, match=message) as info:
        await read_into(received, pool, Request("Story:", max_tokens=50))
    assert not isinstance(info.value, BackendUnavailable)
    assert info.value.sent
    assert len(received) == 3 + 31  # what came before was streamed, the repeats too
    assert pool.statistics().healthy_slots == 1
    await pool.aclose()


async def test_log_probabilities_are_refused_unsent(ollama: OllamaServer) -> None:
    # A Chunk has no place for them: Ollama computed them for nothing.
    backend = OllamaBackend("tiny", ollama.url)
    seen = len(ollama.records)
    for key, value in (("logprobs", True), ("top_logprobs", 3)):
        with pytest.raises(BackendError, match=f"'{key}' asks for log probabilities") as info:
            await collect(backend, Request("Story:", max_tokens=5, options={key: value}))
        assert not info.value.sent
    assert len(ollama.records) == seen  # nothing reached the server
    # Turned off, they are sent on: Ollama's own default.
    chunks = await collect(backend, Request("Story:", max_tokens=5, options={"logprobs": False}))
    assert sum(c.tokens for c in chunks) == 5
    await backend.aclose()


async def test_read_timeout(ollama: OllamaServer) -> None:
    backend = OllamaBackend("tiny", ollama.url, read_timeout=0.3, headers={"X-Test-Fault": "stall:2:1.5"})
    with pytest.raises(BackendUnavailable, match=r"sent nothing for 0\.3 s") as info:
        await collect(backend, Request("Story:", max_tokens=50))
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    await backend.aclose()
    await anyio.to_thread.run_sync(ollama.wait_idle, 10.0)


@pytest.fixture
def server_process(tiny_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.ollama_server", "--model", f"tiny={tiny_path}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("READY "), line
        yield process, line.split()[1]
    finally:
        process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.slow
async def test_server_killed_mid_stream(server_process: tuple[subprocess.Popen[str], str]) -> None:
    process, url = server_process
    backend = OllamaBackend("tiny", url, headers={"X-Test-Fault": "stall:4:30"})
    received: list[Chunk] = []

    def kill_after_four(chunk: Chunk) -> None:
        if len(received) == 4:
            process.kill()  # SIGKILL: the server dies with the response half sent

    with pytest.raises(BackendUnavailable, match=r"broke mid-response") as info:
        await read_into(received, backend, Request("Story:", max_tokens=50), kill_after_four)
    assert len(received) == 4
    assert isinstance(info.value.__cause__, (httpx.RemoteProtocolError, httpx.ReadError))
    await backend.aclose()


# ------------------------------------------------------------- cancellation


@pytest.mark.parametrize("api", ["ollama", "openai"])
async def test_cancelling_the_caller_closes_the_stream_and_stops_the_server(
    ollama: OllamaServer, api: str
) -> None:
    """OllamaBackend, and OpenAIBackend on Ollama's /v1: cancelling the caller closes the HTTP
    stream, and the server stops generating."""
    # The server falls silent for 30 s after 5 tokens (its test fault): the answer is still
    # being written when the caller gives up, however fast the machine generates.
    stall = {"X-Test-Fault": "stall:5:30"}
    backend: Backend = (
        OllamaBackend("tiny", ollama.url, headers=stall)
        if api == "ollama"
        else OpenAIBackend(f"{ollama.url}/v1", model="tiny", headers=stall)
    )
    try:
        async with Scheduler(backend, predictor=ConstantPredictor()) as sched:
            with anyio.fail_after(20), anyio.CancelScope() as scope:
                async with sched.stream("A very long story:", max_tokens=480) as chunks:
                    async for _ in chunks:
                        scope.cancel()
                        await anyio.lowlevel.checkpoint()
            assert scope.cancelled_caught
            await anyio.to_thread.run_sync(ollama.wait_idle, 10.0)
            record = ollama.records[-1]
            assert record.outcome == "client_gone"  # Ollama stopped generating: the client had gone
            assert record.generated <= 5
            completion = await sched.complete("Next", max_tokens=3)
            assert completion.output_tokens == 3
    finally:
        await backend.aclose()


def test_credentials_in_the_url_are_not_shown() -> None:
    backend = OllamaBackend("m", "http://alice:s3cr3t@127.0.0.1:1")
    assert repr(backend) == "OllamaBackend('m', 'http://***@127.0.0.1:1', slots=1)"
    # Without a scheme, or with an unencoded "#" in the password (read as a port "s3": refused
    # now), the error quoted the password.
    for url, shown in (
        ("admin:s3cret@localhost:11434", "***@localhost:11434"),
        ("http://admin:s3#cret@127.0.0.1:9", "http://***@127.0.0.1:9"),
    ):
        with pytest.raises(ValueError, match="URL with a host") as refused:
            OllamaBackend("m", url)
        assert str(refused.value).endswith(f"got {shown!r}")


def test_bad_arguments_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="model"):
        OllamaBackend("")
    with pytest.raises(ValueError, match="slots"):
        OllamaBackend("m", slots=0)
    with pytest.raises(ValueError, match="base_url"):
        OllamaBackend("m", "localhost:11434")
    with pytest.raises(ValueError, match="read_timeout"):
        OllamaBackend("m", read_timeout=-1)
    with pytest.raises(ValueError, match="with a host"):
        OllamaBackend("m", "http://")
    for keep_alive in (True, math.nan, [5]):
        with pytest.raises(ValueError, match="keep_alive"):
            OllamaBackend("m", keep_alive=keep_alive)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="headers must be a mapping"):
        OllamaBackend("m", headers="abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"client must be an httpx\.AsyncClient"):
        OllamaBackend("m", client=httpx.Client())  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["system", "images", "template", "raw", "suffix", "context"])
def test_a_generate_field_on_a_chat_is_refused_by_name(field: str) -> None:
    backend = OllamaBackend("m")
    chat = Request(messages=[{"role": "user", "content": "hi"}], options={field: "x"})
    with pytest.raises(BackendError, match=f"'{field}' is a field of /api/generate, not of /api/chat"):
        backend.body(chat)
    assert backend.body(Request("hi", options={field: "x"}))[1][field] == "x"  # generate has it


def test_tools_on_a_prompt_are_refused_by_name() -> None:
    """/api/generate has no 'tools' (only ChatRequest has): Ollama ignored them silently."""
    backend = OllamaBackend("m")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(BackendError, match="'tools' is a field of /api/chat, not of /api/generate"):
        backend.body(Request("hi", options={"tools": tools}))
    chat = Request(messages=[{"role": "user", "content": "hi"}], options={"tools": tools})
    assert backend.body(chat)[1]["tools"] == tools


@pytest.mark.parametrize("field", ["truncate", "shift"])
def test_truncate_and_shift_are_request_fields_not_options(field: str) -> None:
    """Both are top-level fields of Ollama's requests; inside options Ollama drops them with a warning."""
    backend = OllamaBackend("m")
    for request in (
        Request("hi", options={field: False}),
        Request(messages=[{"role": "user", "content": "hi"}], options={field: False}),
    ):
        body = backend.body(request)[1]
        assert body[field] is False
        assert field not in body.get("options", {})


@pytest.mark.parametrize(
    ("options", "ollamas"),
    [
        ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
        ({"seed": True}, 'option "seed" must be of type integer'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
        ({"stop": 5}, 'option "stop" must be of type array'),
        ({"options": {"stop": ["ok", 5]}}, 'option "stop" must be of an array of strings'),
    ],
)
async def test_an_option_of_the_wrong_type_is_the_requests_fault_not_the_servers(
    ollama: OllamaServer, options: dict[str, Any], ollamas: str
) -> None:
    """Ollama answers 500 for it (Options.FromMap), which reads as the server's fault: a pool
    took every server out of rotation for one bad request (found by a reviewer)."""
    request = Request("Once", max_tokens=4, options=options)
    _, body = OllamaBackend("tiny").body(Request("Once", max_tokens=4))
    body["options"].update(options.get("options", options))
    async with httpx.AsyncClient(timeout=30) as client:  # what Ollama (the test server) answers
        answer = await client.post(f"{ollama.url}/api/generate", json={**body, "stream": False})
    assert (answer.status_code, answer.json()) == (500, {"error": ollamas})
    pool = BackendPool([OllamaBackend("tiny", ollama.url), OllamaBackend("tiny", ollama.url)])
    async with Scheduler(pool, predictor=ConstantPredictor()) as sched:
        with pytest.raises(BackendError) as refused:
            await sched.complete(request)
        assert not isinstance(refused.value, BackendUnavailable)
        key = ollamas.split('"')[1]
        assert f"option {key!r} must be" in str(refused.value) and "500" in str(refused.value)
        assert [m.healthy for m in pool.statistics().members] == [True, True]
        assert (await sched.complete("Once", max_tokens=2)).output_tokens == 2


async def test_unloading_and_thinking_as_ollama_answers_them(ollama: OllamaServer) -> None:
    """An empty prompt with a zero keep_alive ("0m" as much as 0) unloads the model; thinking
    asked of a model that cannot think is a 400, the request's fault (Ollama's server/routes.go)."""
    backend = OllamaBackend("tiny", ollama.url, keep_alive="0m")
    try:
        async with Scheduler(backend, predictor=ConstantPredictor()) as sched:
            unloaded = await sched.complete("", max_tokens=1)
            assert (unloaded.text, unloaded.output_tokens, unloaded.finish_reason) == ("", 0, "unload")
            with pytest.raises(BackendError, match='"tiny" does not support thinking') as refused:
                await sched.complete("Why?", max_tokens=3, options={"think": True})
            assert refused.value.status_code == 400 and not isinstance(refused.value, BackendUnavailable)
    finally:
        await backend.aclose()
