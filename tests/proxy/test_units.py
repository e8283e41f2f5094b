"""The proxy's pieces without a network: reading bodies and answers, settings."""

from __future__ import annotations

import argparse
import json
import re

import hypothesis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sjfsched.proxy import ProxySettings
from sjfsched.proxy._apis import BadRequest, Parsed, Tally, parse_scheduled, scheduled_endpoints
from sjfsched.proxy._cli import configure, settings_of
from sjfsched.proxy._settings import resolve
from sjfsched.proxy._upstream import request_headers, response_headers

OLLAMA = scheduled_endpoints("ollama")

NDJSON = (
    b'{"model":"m","response":"Hel","done":false}\n'
    b'{"model":"m","response":"","done":false}\n'
    b'{"model":"m","response":"lo","done":false}\n'
    b'{"model":"m","response":"","done":true,"eval_count":3,"prompt_eval_count":12}\n'
)
SSE = (
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":"lo"}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@hypothesis.settings(deadline=None)  # a busy machine makes a single example slow; the property is what counts
@given(st.lists(st.integers(min_value=0), max_size=30))
def test_tally_reads_ndjson_however_it_is_cut(cuts: list[int]) -> None:
    tally = Tally("ndjson")
    for piece in _split(NDJSON, cuts):
        tally.feed(piece)
    assert (tally.pieces, tally.exact, tally.output_tokens, tally.prompt_tokens) == (2, 3, 3, 12)
    assert tally.done and tally.error is None and tally.separator() == b""


@hypothesis.settings(deadline=None)  # a busy machine makes a single example slow; the property is what counts
@given(st.lists(st.integers(min_value=0), max_size=30))
def test_tally_reads_server_sent_events_however_they_are_cut(cuts: list[int]) -> None:
    tally = Tally("sse")
    for piece in _split(SSE, cuts):
        tally.feed(piece)
    assert (tally.pieces, tally.exact, tally.output_tokens) == (2, None, 2)
    assert tally.done and tally.separator() == b""


def test_tally_takes_an_empty_finish_reason_for_none_yet() -> None:
    # sglang and Ollama's /v1 (before ollama#4357) send finish_reason "" on every chunk: a stream
    # cut short after them was taken for a whole answer, and learnt from.
    tally = Tally("sse")
    tally.feed(b'data: {"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":""}]}\n\n')
    tally.feed(b'data: {"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":""}]}\n\n')
    assert tally.pieces == 2 and not tally.finished
    tally.feed(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    assert tally.finished


def test_tally_errors_usage_and_separators() -> None:
    tally = Tally("sse")
    tally.feed(b'data: {"choices":[],"usage":{"completion_tokens":7,"prompt_tokens":4}}\n\ndata: {"err')
    assert (tally.output_tokens, tally.prompt_tokens) == (7, 4)
    assert tally.separator() == b"\n\n"  # an error event must not glue onto the half event
    tally.feed(b'or": {"message": "boom"}}\n')
    assert tally.error == "boom" and tally.separator() == b"\n"
    lines = Tally("ndjson")
    lines.feed(b'{"error": "model crashed"}\n{"resp')
    assert lines.error == "model crashed" and lines.separator() == b"\n"
    whole = Tally("json")
    whole.feed_whole(b'{"choices":[{"message":{"content":"hi"}}],"usage":{"completion_tokens":1}}')
    assert whole.output_tokens == 1
    whole.feed_whole(b"not json")  # ignored: the count stands
    assert whole.output_tokens == 1


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        # llama.cpp's server: an "error:" field, then still [DONE].
        (
            b'error: {"code": 500, "message": "context full", "type": "server_error"}\n\ndata: [DONE]\n\n',
            "context full",
        ),
        # Ollama's OpenAI layer: a bare JSON error line, no [DONE].
        (
            b'{"error": {"message": "runner died", "type": "api_error", "param": null, "code": null}}\n',
            "runner died",
        ),
    ],
    ids=["llama-server", "ollama-v1"],
)
def test_tally_reads_other_servers_errors_in_event_streams(tail: bytes, message: str) -> None:
    tally = Tally("sse")
    tally.feed(b'data: {"choices":[{"index":0,"text":"a"}]}\n\n' + tail)
    assert tally.error == message
    assert tally.pieces == 1


def _parse(path: str, body: object, priority: bytes | None = None, tenant: bytes | None = None) -> Parsed:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_scheduled(
        OLLAMA[path], raw, priority_header=priority, tenant_header=tenant, upstream="ollama"
    )


def test_what_the_scheduler_is_told() -> None:
    parsed = _parse("/api/generate", {"model": "m", "prompt": "Hi", "options": {"num_predict": -1}})
    request = parsed.request
    assert (request.prompt, request.max_tokens, request.priority, request.metadata["model"]) == (
        "Hi",
        None,
        0,
        "m",
    )
    load = _parse("/api/chat", {"model": "m"}).request
    assert (load.prompt, load.max_tokens) == ("", 1)  # loading a model: no output
    chat = _parse(
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Look"}]}],
            "max_completion_tokens": 9,
        },
        priority=b" 3 ",
        tenant=b"team-a",
    ).request
    assert (chat.text, chat.max_tokens, chat.priority, chat.tenant) == ("Look", 9, 3, "team-a")
    tokens = _parse("/v1/completions", {"prompt": [1, 2, 3, 4], "max_tokens": 0}).request
    # 0 is no limit to llama-cpp-python's server and Ollama's runner: ranked by the prediction, not as 1 token
    assert (len(tokens.text), tokens.max_tokens) == (16, None)
    zero = _parse("/api/generate", {"model": "m", "prompt": "Hi", "options": {"num_predict": 0}}).request
    assert zero.max_tokens is None


def test_a_whole_float_limit_is_the_integer_as_the_upstreams_read_it() -> None:
    """llama-cpp-python's pydantic and Ollama take 16.0 as 16: the OpenAI routes refused it (400)."""
    for path, body in [
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 16.0}),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 16.0},
        ),
        ("/api/generate", {"model": "m", "prompt": "Hi", "options": {"num_predict": 16.0}}),
    ]:
        assert _parse(path, body).request.max_tokens == 16
    with pytest.raises(BadRequest, match=r"max_tokens must be an integer, got 16\.5"):
        _parse("/v1/completions", {"prompt": "Hi", "max_tokens": 16.5})


def test_a_field_of_the_wrong_type_is_named_with_its_json_type() -> None:
    with pytest.raises(BadRequest, match="JSON object"):
        _parse("/api/generate", {"model": "m", "prompt": {"text": "Hi"}})
    with pytest.raises(BadRequest, match="JSON array"):
        _parse("/api/generate", {"model": "m", "prompt": ["Hi"]})


def test_proxy_fields_are_removed_and_other_bodies_pass_byte_for_byte() -> None:
    raw = b'{"model": "m",  "prompt": "Hi\\u00e9", "priority": 2, "tenant": "x", "keep": [1]}'
    parsed = _parse("/api/generate", raw)
    assert json.loads(parsed.body) == {"model": "m", "prompt": "Hié", "keep": [1]}
    assert parsed.request.priority == 2 and parsed.request.tenant == "x"
    untouched = b'{"model": "m",  "prompt": "Hi\\u00e9"}'
    assert _parse("/api/generate", untouched).body == untouched
    header_wins = _parse("/api/generate", {"model": "m", "prompt": "x", "priority": 5}, priority=b"-1")
    assert header_wins.request.priority == -1
    with pytest.raises(BadRequest, match="the X-Priority header must be an integer"):
        _parse("/api/generate", {"model": "m", "prompt": "x"}, priority=b"soon")


def test_a_lone_surrogate_survives_the_removal_of_the_proxy_fields() -> None:
    """ "\ud800" is valid JSON but not UTF-8: the re-encoded body keeps it escaped."""
    raw = b'{"model": "m", "prompt": "\\ud800 x \\u00e9", "priority": 1}'
    parsed = _parse("/api/generate", raw)
    assert json.loads(parsed.body) == {"model": "m", "prompt": "\ud800 x \u00e9"}
    assert parsed.request.priority == 1


def test_headers_named_in_connection_are_hop_by_hop_both_ways() -> None:
    """RFC 9110 §7.6.1: what a message's Connection header lists is not forwarded."""
    sent = [
        (b"connection", b"keep-alive, X-Secret"),
        (b"x-secret", b"1"),
        (b"x-kept", b"2"),
        (b"x-priority", b"3"),
    ]
    out, priority, _, _ = request_headers(sent, scheduled=False)
    assert out == [(b"x-kept", b"2"), (b"x-priority", b"3")]
    assert priority == b"3"
    answered = [(b"Connection", b"x-hop"), (b"X-Hop", b"secret"), (b"Content-Type", b"text/plain")]
    assert response_headers(answered, keep_length=True) == [(b"content-type", b"text/plain")]


def test_settings_come_from_flags_then_environment_then_defaults() -> None:
    settings, sources = resolve(
        {"upstream": "http://127.0.0.1:8000/v1/", "concurrency": 2},
        {"SJFSCHED_CONCURRENCY": "9", "SJFSCHED_MAX_QUEUE": "none", "SJFSCHED_LISTEN": "[::1]:9000"},
    )
    assert settings.upstream == "http://127.0.0.1:8000"  # a pasted /v1 is dropped
    assert (settings.concurrency, settings.max_queue, settings.host, settings.port) == (2, None, "::1", 9000)
    assert sources["concurrency"][1] == "flag" and sources["max_queue"][1] == "env"
    assert sources["aging"][1] == "default"
    with pytest.raises(ValueError, match="SJFSCHED_MAX_WAIT: expected a number, got 'soon'"):
        resolve({"upstream": "http://h:1"}, {"SJFSCHED_MAX_WAIT": "soon"})
    with pytest.raises(
        ValueError, match=re.escape("SJFSCHED_AGING: aging must be a finite number >= 0, got -1.0")
    ):
        resolve({"upstream": "http://h:1"}, {"SJFSCHED_AGING": "-1"})
    assert resolve({"upstream": "http://h:1"}, {"SJFSCHED_CAP": "none"})[0].cap is None
    assert resolve({"upstream": "http://h:1", "cap": 2.5}, {"SJFSCHED_CAP": "none"})[0].cap == 2.5
    with pytest.raises(ValueError, match=re.escape("SJFSCHED_CAP: cap must be a finite number > 0 or none")):
        resolve({"upstream": "http://h:1"}, {"SJFSCHED_CAP": "0"})
    with pytest.raises(ValueError, match="upstream must name a host"):
        ProxySettings(upstream="http://")
    with pytest.raises(ValueError, match="upstream must name a host"):
        ProxySettings(upstream="http://:80")
    with pytest.raises(ValueError, match="upstream has a bad port"):
        ProxySettings(upstream="http://host:abc")
    # parts the proxy would drop or send malformed are refused, and a password is never echoed
    with pytest.raises(ValueError, match=r"must not carry credentials") as refused:
        resolve({"upstream": "http://user:secret@127.0.0.1:1"}, {})
    assert "secret" not in str(refused.value) and str(refused.value).startswith("--upstream: ")
    for url in ("http://h:1/ollama?token=abc", "http://h:1/x#part"):
        with pytest.raises(ValueError, match=r"without \?query or #fragment"):
            ProxySettings(upstream=url)
    for url in ("http://h:1/my models", "http://h:1/modèles"):
        with pytest.raises(ValueError, match="upstream path must be ASCII without spaces"):
            ProxySettings(upstream=url)
    assert ProxySettings(upstream="http://h:1/my%20models/").upstream == "http://h:1/my%20models"
    # An empty host listened on every interface, exposing the model (the CLI refused it; the
    # library did not): 0.0.0.0 says so.
    for host in ("", " 127.0.0.1", None):
        with pytest.raises(
            ValueError, match=r"listen host must be an address or host name \(0\.0\.0\.0 for every"
        ):
            ProxySettings(upstream="http://h:1", host=host)  # type: ignore[arg-type]
    assert ProxySettings(upstream="http://h:1", host="0.0.0.0").host == "0.0.0.0"
    assert (
        ProxySettings(upstream="https://ollama.example/prefix/").upstream == "https://ollama.example/prefix"
    )


def test_a_flag_given_as_none_wins_over_its_variable_and_the_default() -> None:
    parser = argparse.ArgumentParser()
    configure(parser)
    environ = {"SJFSCHED_MAX_WAIT": "60", "SJFSCHED_CAP": "2"}

    def settings(*argv: str) -> tuple[ProxySettings, dict[str, tuple[object, str]]]:
        return settings_of(parser.parse_args(["--upstream", "http://h:1", *argv]), environ)

    given, sources = settings(
        "--max-queue", "none", "--cap", "none", "--max-wait", "none", "--connect-timeout", "none"
    )
    assert (given.max_queue, given.cap, given.max_wait, given.connect_timeout) == (None, None, None, None)
    assert {sources[name][1] for name in ("max_queue", "cap", "max_wait", "connect_timeout")} == {"flag"}
    left, sources = settings()  # not given: the variable, then the default
    assert (left.max_queue, left.cap, left.max_wait, left.access_log) == (512, 2.0, 60.0, False)
    assert (sources["cap"][1], sources["max_queue"][1], sources["access_log"][1]) == (
        "env",
        "default",
        "default",
    )
    assert settings("--access-log")[0].access_log is True


def test_a_deeply_nested_body_is_a_bad_request_not_a_crash() -> None:
    with pytest.raises(BadRequest, match="nested too deeply"):
        _parse("/api/generate", b"[" * 200_000 + b"]" * 200_000)


@pytest.mark.anyio
async def test_the_fcfs_predictor_serves_in_arrival_order_whatever_the_output_limits() -> None:
    import anyio

    from sjfsched import Request, Scheduler
    from sjfsched.backends import CallableBackend
    from sjfsched.proxy._predictor import make_predictor

    served: list[str] = []
    gate = anyio.Event()

    async def answer(request: Request) -> str:
        served.append(request.text)
        if request.text == "first":
            await gate.wait()
        return "ok"

    async with Scheduler(CallableBackend(answer), predictor=make_predictor("fcfs")) as sched:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sched.complete, Request("first"))
            await anyio.wait_all_tasks_blocked()
            for i, limit in enumerate([None, 100, 300, 5]):
                tg.start_soon(sched.complete, Request(f"then {i}", max_tokens=limit))
                await anyio.wait_all_tasks_blocked()
            gate.set()
    assert served == ["first", "then 0", "then 1", "then 2", "then 3"]


@pytest.mark.parametrize(
    "encoding",
    ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"],  # JSON's own encodings, as FastAPI reads them
)
def test_json_in_any_of_its_encodings_is_read_on_every_route(encoding: str) -> None:
    text = json.dumps({"model": "m", "prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]})
    for path in ("/api/generate", "/v1/completions", "/v1/chat/completions"):
        assert _parse(path, text.encode(encoding)).request.text == "Hi"


def test_invalid_utf8_in_a_string_reads_as_ollama_reads_it_and_is_refused_on_openai_routes() -> None:
    """Ollama's Go reader takes it as U+FFFD; FastAPI servers (llama_cpp.server, vLLM) fail on it."""
    raw = b'{"model": "m", "prompt": "Hi \xff there", "priority": 1}'
    assert _parse("/api/generate", raw).request.text == "Hi \ufffd there"
    for body in (raw, raw.replace(b', "priority": 1', b"")):  # the same with the proxy's fields or not
        with pytest.raises(BadRequest, match="not valid JSON"):
            _parse("/v1/completions", body)


def test_a_signal_once_the_drain_has_ended_does_not_force_the_exit() -> None:
    """Forced, uvicorn skips the app's shutdown (the predictor's state unsaved) and prints tracebacks."""
    import signal

    from sjfsched.proxy import ProxyApp, make_server

    server = make_server(ProxyApp(ProxySettings(upstream="http://127.0.0.1:1")))
    server._drain_requested = True
    server.should_exit = True  # the drain has ended: uvicorn is stopping
    server.handle_exit(signal.SIGINT, None)
    assert not server.force_exit


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn runs on asyncio
@pytest.mark.parametrize("ended_by", ["should_exit", "cancellation"])
async def test_the_cut_filter_leaves_the_uvicorn_logger_as_the_server_found_it(
    anyio_backend: str, ended_by: str
) -> None:
    """However its serve() ends: by itself, or cancelled by an embedding program (its own timeout)."""
    import functools
    import logging

    import anyio

    from sjfsched.proxy import ProxyApp, make_server
    from sjfsched.proxy._server import _quiet_cut, bind

    settings = ProxySettings(upstream="http://127.0.0.1:1", upstream_api="ollama", host="127.0.0.1", port=0)
    server = make_server(ProxyApp(settings), log_config=None)
    uvicorn_log = logging.getLogger("uvicorn.error")
    with anyio.fail_after(10), bind("127.0.0.1", 0) as sock:  # a cancelled uvicorn leaves its own open
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(server.serve, sockets=[sock]))
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
                await anyio.sleep(0.01)
            uvicorn_log.addFilter(_quiet_cut)  # as a cut adds it
            server._cut = True
            if ended_by == "should_exit":
                server.should_exit = True
            else:
                tg.cancel_scope.cancel()
    assert _quiet_cut not in uvicorn_log.filters


def test_max_completion_tokens_goes_upstream_as_max_tokens_too() -> None:
    """Ollama reads max_tokens only: a call ranked by its max_completion_tokens ran unbounded there."""
    chat = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    newer = _parse("/v1/chat/completions", {**chat, "max_completion_tokens": 7})
    assert newer.request.max_tokens == 7
    assert json.loads(newer.body) == {**chat, "max_completion_tokens": 7, "max_tokens": 7}
    # Both given: sent as they came; servers differ in which they read, so the larger ranks it.
    both = json.dumps({**chat, "max_completion_tokens": 7, "max_tokens": 30}).encode()
    assert _parse("/v1/chat/completions", both).body == both
    assert _parse("/v1/chat/completions", both).request.max_tokens == 30
    unlimited = _parse("/v1/chat/completions", {**chat, "max_completion_tokens": 7, "max_tokens": -1})
    assert unlimited.request.max_tokens is None
    # No limit (0 or less): nothing added.
    zero = json.dumps({**chat, "max_completion_tokens": 0}).encode()
    assert _parse("/v1/chat/completions", zero).body == zero


def test_tally_counts_ollamas_reasoning_deltas() -> None:
    """Ollama's /v1 streams a thinking model's reasoning as delta.reasoning: not counted before."""
    tally = Tally("sse")
    for delta in [{"reasoning": "hmm"}] * 3 + [{"content": "ok"}]:
        tally.feed(b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n")
    assert tally.pieces == 4 and tally.output_tokens == 4


def test_max_completion_tokens_alone_does_not_rank_a_call_for_an_openai_server() -> None:
    """In front of an OpenAI-compatible server the body goes as it came (OpenAI's own refuses
    max_tokens for some models), and the newer limit, which llama-cpp-python's server does not
    read, does not rank the call: ranked by it, a call jumped the queue and ran unbounded."""
    endpoint = scheduled_endpoints("openai")["/v1/chat/completions"]
    raw = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 7}
    )
    parsed = parse_scheduled(
        endpoint, raw.encode(), priority_header=None, tenant_header=None, upstream="openai"
    )
    assert parsed.body == raw.encode() and parsed.request.max_tokens is None
    bad = raw.replace("7", '"seven"').encode()
    with pytest.raises(BadRequest, match="max_completion_tokens must be an integer"):
        parse_scheduled(endpoint, bad, priority_header=None, tenant_header=None, upstream="openai")


def test_ollamas_own_readings_of_a_limit() -> None:
    """Found by a reviewer, each against Ollama's source: max_tokens null beside
    max_completion_tokens is no limit to Ollama (it reads max_tokens only), so the call ranked
    by max_completion_tokens ran unbounded; a fractional num_predict is its integer part to
    Ollama (Options.FromMap), not a 400; an empty prompt with images only loads the model."""
    chat = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    null = _parse("/v1/chat/completions", {**chat, "max_tokens": None, "max_completion_tokens": 5})
    assert null.request.max_tokens == 5
    assert json.loads(null.body) == {**chat, "max_tokens": 5, "max_completion_tokens": 5}
    for value, limit in ((2.5, 2), (7.9, 7), (0.5, None), (-1.5, None)):
        body = {"model": "m", "prompt": "Hi", "options": {"num_predict": value}}
        assert _parse("/api/generate", body).request.max_tokens == limit, value
    with pytest.raises(BadRequest, match="num_predict must be an integer"):
        _parse("/api/generate", b'{"model": "m", "prompt": "Hi", "options": {"num_predict": NaN}}')
    load = _parse("/api/generate", {"model": "m", "prompt": "", "images": ["aGk="]}).request
    assert (load.prompt, load.max_tokens) == ("", 1)
