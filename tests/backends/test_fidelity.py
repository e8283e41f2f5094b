"""What real Ollama and OpenAI-compatible servers refuse or send, and the backends' answers to it.

Over real HTTP on 127.0.0.1: the Ollama-API test server (real llama.cpp
generation, refusing what Ollama's source refuses), ``llama_cpp.server``,
and scripted servers for what another server sends (vLLM's ``abort``, a
whole JSON answer, a web page).
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from sjfsched import BackendError, Request
from sjfsched.backends import BackendUnavailable, OllamaBackend, OpenAIBackend
from sjfsched.backends._http import is_loopback_host
from tests.support.ollama_server import OllamaServer
from tests.support.wire_server import scripted_server

from .test_wire import collect

pytestmark = pytest.mark.anyio


# ------------------------------------------------------------------ Ollama


async def test_a_stop_string_goes_to_ollama_as_a_list(ollama: OllamaServer) -> None:
    backend = OllamaBackend("tiny", ollama.url)
    assert backend.body(Request("x", options={"stop": "\n"}))[1]["options"]["stop"] == ["\n"]
    assert backend.body(Request("x", options={"options": {"stop": "."}}))[1]["options"]["stop"] == ["."]
    assert backend.body(Request("x", options={"stop": ["a", "b"]}))[1]["options"]["stop"] == ["a", "b"]
    chunks = await collect(backend, Request("Once upon a time", max_tokens=8, options={"stop": "zzz"}))
    assert chunks[-1].finish_reason == "length" and sum(c.tokens for c in chunks) == 8


async def test_content_parts_go_to_ollama_as_text_and_images(ollama: OllamaServer) -> None:
    png = b"\x89PNG\r\n\x1a\n fake"
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "Tell me"},
            {"type": "image_url", "image_url": {"url": data_url}},
            {"type": "text", "text": "a story"},
        ],
    }
    backend = OllamaBackend("tiny", ollama.url)
    sent = backend.body(Request(messages=[message]))[1]["messages"][0]
    assert sent == {"role": "user", "content": "Tell me\na story", "images": [base64.b64encode(png).decode()]}
    chunks = await collect(backend, Request(messages=[message], max_tokens=4))
    assert sum(c.tokens for c in chunks) == 4  # the test server, as Ollama, takes the body


async def test_what_ollama_cannot_take_in_a_message_is_refused_by_name() -> None:
    backend = OllamaBackend("tiny")
    remote = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(BackendError, match=r"messages\[1\] has an image_url Ollama cannot fetch"):
        backend.body(
            Request(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": [remote]}])
        )
    audio = {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
    with pytest.raises(BackendError, match=r"messages\[0\] has a content part .*'input_audio'"):
        backend.body(Request(messages=[{"role": "user", "content": [audio]}]))


def test_image_bytes_go_to_ollama_as_base64() -> None:
    backend = OllamaBackend("tiny")
    _, body = backend.body(Request("what is this?", options={"images": [b"\x00\x01", "AAE="]}))
    assert body["images"] == ["AAE=", "AAE="]
    _, chat = backend.body(Request(messages=[{"role": "user", "content": "what?", "images": [b"\xff"]}]))
    assert chat["messages"][0]["images"] == ["/w=="]
    json.dumps(body), json.dumps(chat)  # what the HTTP client will do with them


def test_a_keep_alive_ollama_cannot_read_is_refused_when_the_backend_is_made() -> None:
    for fine in ("10m", "1h30m", "-1m", "0", "1.5h", 300, -1):
        assert OllamaBackend("m", keep_alive=fine).keep_alive == fine
    with pytest.raises(ValueError, match=r"keep_alive '-1' is not a duration Ollama reads"):
        OllamaBackend("m", keep_alive="-1")
    with pytest.raises(ValueError, match="keep_alive '10 minutes'"):
        OllamaBackend("m", keep_alive="10 minutes")


async def test_a_404_for_a_wrong_base_url_names_the_url(ollama: OllamaServer) -> None:
    with pytest.raises(BackendError) as wrong:
        await collect(OllamaBackend("tiny", ollama.url + "/v1"), Request("x", max_tokens=1))
    assert wrong.value.status_code == 404
    assert f"{ollama.url}/v1/api/generate" in str(wrong.value) and "the API's root" in str(wrong.value)
    with pytest.raises(BackendError) as missing:  # the API's own 404: its message, no hint
        await collect(OllamaBackend("nope", ollama.url), Request("x", max_tokens=1))
    assert "model 'nope' not found" in str(missing.value) and "root" not in str(missing.value)


# ------------------------------------------------------------------ OpenAI-compatible


def sse(*events: dict[str, Any]) -> list[bytes]:
    return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def piece(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}


async def test_cut_at_max_tokens_without_usage_counts_max_tokens() -> None:
    """A piece may hold several tokens (a character of several, text held back for a stop string)."""
    with scripted_server(
        sse(piece("ab"), piece("c"), piece("d", "length")), content_type="text/event-stream"
    ) as url:
        chunks = await collect(OpenAIBackend(url, model="m"), Request("x", max_tokens=5))
    assert sum(c.tokens for c in chunks) == 5 and chunks[-1].finish_reason == "length"


async def test_cut_by_the_context_counts_the_pieces() -> None:
    """A "length" far short of max_tokens: the context filled up, and the pieces are the count."""
    events = sse(*(piece("a") for _ in range(9)), piece("b", "length"))
    with scripted_server(events, content_type="text/event-stream", pause=0) as url:
        chunks = await collect(OpenAIBackend(url, model="m"), Request("x", max_tokens=100_000))
    assert sum(c.tokens for c in chunks) == 10


async def test_llama_cpp_server_cut_by_its_context_is_counted_as_generated(openai_url: str) -> None:
    """llama_cpp.server (no usage in its streams) stops at its context (512 here) with "length"."""
    backend = OpenAIBackend(openai_url, model="tiny")
    with anyio.fail_after(120):
        chunks = await collect(backend, Request("Once", max_tokens=100_000, options={"temperature": 0}))
    total = sum(c.tokens for c in chunks)
    assert chunks[-1].finish_reason == "length"
    assert total == len([c for c in chunks if c.text]) <= 512


def test_n_above_one_is_refused_and_stream_options_keep_the_usage() -> None:
    backend = OpenAIBackend("http://127.0.0.1:1/v1", model="m")
    for key in ("n", "best_of"):
        with pytest.raises(BackendError, match=f"reads one answer a request, and {key}=2"):
            backend.body(Request("x", options={key: 2}), "m")
        assert backend.body(Request("x", options={key: 1}), "m")[1][key] == 1
    own = {"stream_options": {"continuous_usage_stats": True}}
    assert backend.body(Request("x", options=own), "m")[1]["stream_options"] == {
        "include_usage": True,
        "continuous_usage_stats": True,
    }
    off = OpenAIBackend("http://127.0.0.1:1/v1", model="m", include_usage=False)
    assert off.body(Request("x", options=own), "m")[1]["stream_options"] == {"continuous_usage_stats": True}


async def test_log_probabilities_are_refused_unsent_by_the_openai_backend() -> None:
    # No Chunk has a place for them: the server computed them for nothing, as for Ollama.
    backend = OpenAIBackend("http://127.0.0.1:1/v1", model="m")  # nothing listens: refused first
    for key, value in (("logprobs", True), ("logprobs", 5), ("logprobs", 0), ("top_logprobs", 3)):
        with pytest.raises(BackendError, match=f"'{key}' asks for log probabilities") as info:
            await collect(backend, Request("x", options={key: value}))
        assert not info.value.sent and not isinstance(info.value, BackendUnavailable)
    assert backend.body(Request("x", options={"logprobs": False}), "m")[1]["logprobs"] is False


@pytest.mark.parametrize("reason", ["abort", "error"])
async def test_an_answer_the_engine_gave_up_on_is_no_answer(reason: str) -> None:
    """vLLM's finish reasons "abort" and "error": the text so far is not the whole answer."""
    with scripted_server(
        sse(piece("Half an ans"), piece("", reason)), content_type="text/event-stream"
    ) as url:
        with pytest.raises(BackendUnavailable, match=f"finish_reason '{reason}': it is not whole"):
            await collect(OpenAIBackend(url, model="m"), Request("x"))


@pytest.mark.parametrize(
    ("content_type", "body", "says"),
    [
        (
            "application/json",
            b'{"choices": [{"text": "whole", "finish_reason": "stop"}]}',
            "ignores stream=true",
        ),
        ("text/html; charset=utf-8", b"<html><body>Open WebUI</body></html>", "base_url is not the API's"),
    ],
)
async def test_an_answer_that_is_not_a_stream_is_named(content_type: str, body: bytes, says: str) -> None:
    with scripted_server([body], content_type=content_type) as url:
        with pytest.raises(
            BackendError, match=f"answered with {content_type.split(';')[0]}, not a stream"
        ) as caught:
            await collect(OpenAIBackend(url, model="m"), Request("x"))
    assert says in str(caught.value) and not isinstance(caught.value, BackendUnavailable)


@pytest.mark.parametrize(
    ("body", "hint"),
    [
        (
            b'{"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}',
            True,
        ),  # llama-server
        (b'{"detail": "Not Found"}', True),  # FastAPI (llama_cpp.server, vLLM)
        (b'{"object": "error", "message": "The model `x` does not exist.", "code": 404}', False),  # vLLM's
        (b'{"error": {"message": "model \'x\' not found", "type": "api_error"}}', False),
    ],
)
async def test_a_404_asks_about_base_url_only_for_a_path_the_server_does_not_have(
    body: bytes, hint: bool
) -> None:
    with scripted_server([body], status=404, content_type="application/json") as url:
        with pytest.raises(BackendError) as caught:
            await collect(OpenAIBackend(url, model="x"), Request("x"))
    assert ("the API's root" in str(caught.value)) is hint


async def test_vllms_flat_error_body_is_said_by_its_message() -> None:
    # Older vLLM and trtllm-serve: {"object": "error", "message": ..., "type": ..., "code": ...}.
    # Said as raw JSON cut at 500 characters, a long message lost its end.
    message = "This model's maximum context length is 2048 tokens." + " However, you requested more." * 20
    body = {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}
    with scripted_server([json.dumps(body).encode()], status=400, content_type="application/json") as url:
        with pytest.raises(BackendError) as caught:
            await collect(OpenAIBackend(url, model="x"), Request("x"))
    assert str(caught.value).endswith(message) and '"object"' not in str(caught.value)
    assert caught.value.status_code == 400


def test_a_keep_alive_with_digits_go_does_not_read_is_refused() -> None:
    for digits in ("\u0665m", "\uff15m"):  # Arabic-Indic and fullwidth five: \d, not Go's digits
        with pytest.raises(ValueError, match="is not a duration Ollama reads"):
            OllamaBackend("m", keep_alive=digits)


async def test_retry_after_is_read_and_a_pool_keeps_the_backend_out_that_long() -> None:
    """A 429 or 503 with Retry-After (seconds, or an HTTP date): the error says it and carries it
    (retry_after), and a BackendPool keeps that server out of rotation as long, within its bound."""
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    from sjfsched.backends import BackendPool

    busy = b'{"error": {"message": "server busy", "type": "server_error"}}'
    with scripted_server(
        [busy], status=429, content_type="application/json", headers=[("Retry-After", "30")]
    ) as url:
        pool = BackendPool([OpenAIBackend(url, model="m")], retry_after=1, max_retry_after=60)
        with pytest.raises(BackendUnavailable) as caught:
            await collect(pool, Request("x"))  # type: ignore[arg-type]
        assert caught.value.retry_after == 30.0 and "(retry after 30 s)" in str(caught.value)
        assert 29 < pool.statistics().members[0].retry_in <= 30  # not the pool's own 1 s
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
    with scripted_server(
        [busy], status=503, content_type="application/json", headers=[("Retry-After", later)]
    ) as url:
        pool = BackendPool([OpenAIBackend(url, model="m")], retry_after=1, max_retry_after=60)
        with pytest.raises(BackendUnavailable) as caught:
            await collect(pool, Request("x"))  # type: ignore[arg-type]
        assert caught.value.retry_after is not None and 115 < caught.value.retry_after <= 120
        assert 59 < pool.statistics().members[0].retry_in <= 60  # within the pool's bound
    with scripted_server(
        [busy], status=503, content_type="application/json", headers=[("Retry-After", "soon")]
    ) as url:
        with pytest.raises(BackendUnavailable) as caught:
            await collect(OpenAIBackend(url, model="m"), Request("x"))
        assert caught.value.retry_after is None  # no wait it could read


def test_digits_that_are_not_ascii_are_no_count() -> None:
    """str.isdigit() takes "²" and "５", which int() or float() then refuse (a reviewer's crash)."""
    from sjfsched.backends import ToolCallPieces
    from sjfsched.backends._http import retry_after_seconds

    assert retry_after_seconds("\u00b2") is None and retry_after_seconds("\uff15") is None
    assert retry_after_seconds("9" * 400) == 86_400.0 and retry_after_seconds(" 7 ") == 7.0
    pieces = ToolCallPieces()
    for index in ("\u00b2", "9" * 5000):
        pieces.add([{"index": index, "id": f"c{len(index)}", "function": {"name": "f", "arguments": "{}"}}])
    assert [c["id"] for c in pieces.calls()] == ["c1", "c5000"]  # each a call of its own


# ------------------------------------------------------------------ proxies in the environment

_PROXY_VARIABLES = tuple(
    case(name)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
    for case in (str.upper, str.lower)
)


@pytest.mark.parametrize(
    "env",
    [
        {"HTTP_PROXY": "http://127.0.0.1:9"},
        {"ALL_PROXY": "socks5://127.0.0.1:9", "NO_PROXY": "127.0.0.1,localhost"},
    ],
    ids=["http-proxy", "socks-proxy-with-no-proxy"],
)
async def test_a_server_on_this_machine_is_reached_past_the_environments_proxies(
    env: dict[str, str], ollama: OllamaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY / ALL_PROXY (a corporate machine's) name proxies that cannot reach this
    machine's loopback; a SOCKS one failed every request even with NO_PROXY saying loopback."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    chunks = await collect(OllamaBackend("tiny", ollama.url), Request("Once upon a time", max_tokens=4))
    assert sum(c.tokens for c in chunks) == 4
    events = sse(piece("a"), piece("b", "stop"))
    with scripted_server(events, content_type="text/event-stream", pause=0) as url:
        assert url.startswith("http://127.0.0.1:")
        chunks = await collect(OpenAIBackend(url, model="m"), Request("x", max_tokens=10))
    assert [c.text for c in chunks if c.text] == ["a", "b"]


async def test_a_connection_that_fails_at_the_proxy_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a proxy the environment names, "cannot connect to Ollama" blamed the server."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens on the discard port
    backend = OllamaBackend("tiny", "http://ollama.sjfsched-test.invalid:11434")
    says = r"the environment names the proxy http://127\.0\.0\.1:9, .*NO_PROXY.*trust_env=False"
    with pytest.raises(BackendUnavailable, match=says):
        await collect(backend, Request("x", max_tokens=4))


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LOCALHOST",
        "localhost.",
        "a.localhost",
        "127.0.0.1",
        "127.1",
        "127.0.0.53",
        "::1",
        "[::1]",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "::",
        "2130706433",
        "0x7f000001",
        "ip6-localhost",
    ],
)
def test_every_way_of_naming_this_machine_is_loopback(host: str) -> None:
    """0.0.0.0 (what OLLAMA_HOST=0.0.0.0 suggests), 127.1, the mapped IPv6 form: all this machine."""
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host", ["ollama.lan", "10.0.0.1", "192.168.1.5", "example.com", "1", "localhost.example"]
)
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


def _server_certificate(folder: Path) -> ssl.SSLContext:
    """A server context for localhost and 127.0.0.1, signed by a CA of its own (``folder/ca.pem``)."""
    (folder / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    key = "-newkey rsa:2048 -nodes -days 2"
    for command in (
        f"req -x509 {key} -keyout ca.key -out ca.pem -subj /CN=sjfsched-test-ca",
        f"req {key} -keyout srv.key -out srv.csr -subj /CN=localhost",
        "x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out srv.pem"
        " -extfile ext.cnf",
    ):
        run = ["openssl", *command.split()]
        subprocess.run(run, cwd=folder, capture_output=True, check=True, timeout=60)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(folder / "srv.pem", folder / "srv.key")
    return tls


async def test_a_server_on_this_machine_over_https_is_verified_with_the_environments_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reaching loopback past the proxies must not also drop SSL_CERT_FILE (httpx's trust_env=False
    does both): a local HTTPS server with a private CA failed to verify."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: no certificates to test with")
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    tls = _server_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    with scripted_server(
        sse(piece("a"), piece("b", "stop")), content_type="text/event-stream", tls=tls
    ) as url:
        for base in (url, url.replace("127.0.0.1", "localhost")):
            chunks = await collect(OpenAIBackend(base, model="m"), Request("x", max_tokens=10))
            assert [c.text for c in chunks if c.text] == ["a", "b"]
