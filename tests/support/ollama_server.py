"""A server implementing Ollama's HTTP API over real llama.cpp generation.

It follows Ollama's documented API (docs/api.md and docs.ollama.com/api):

- ``POST /api/generate`` and ``POST /api/chat``: newline-delimited JSON
  (``application/x-ndjson``) streamed one line per token, or one object with
  ``"stream": false``; the final object has ``done: true``, ``done_reason``
  (``stop``, ``length``, ``load``, ``unload``), ``prompt_eval_count``,
  ``eval_count`` and the durations in nanoseconds; ``/api/generate`` also
  returns ``context``.  The model's chat template formats ``/api/chat``
  messages and, unless ``raw`` is true, the ``/api/generate`` prompt (with
  ``system``).  ``options`` are Ollama's names: ``num_predict``,
  ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``typical_p``,
  ``repeat_penalty``, ``presence_penalty``, ``frequency_penalty``, ``seed``,
  ``stop``, ``mirostat``, ``mirostat_tau``, ``mirostat_eta``; the others
  (``num_ctx``, ``num_thread``, ...) are accepted and ignored.  An option
  of the wrong type for its field is a 500 (``Options.FromMap``); ``think``
  is a 400 (no test model thinks); an empty prompt loads the model, or
  unloads it with a zero ``keep_alive`` (``0``, ``"0s"``, ``"0m"``, ...).
- ``GET /api/tags``, ``POST /api/show``, ``GET /api/ps``,
  ``GET /api/version``, ``GET /`` ("Ollama is running").
- Ollama's OpenAI compatibility: ``POST /v1/chat/completions`` and
  ``POST /v1/completions`` (server-sent events, ``stream_options:
  {"include_usage": true}`` for a final usage chunk, errors as
  ``{"error": {"message": ...}}``) and ``GET /v1/models``.
- Errors are ``{"error": "..."}`` with the status Ollama uses: 400 for a bad
  body, 404 ``model 'x' not found`` for an unknown model, 503 ``server busy``
  when more requests wait than ``max_queue`` (``OLLAMA_MAX_QUEUE``).  An error
  after streaming began is an ``{"error": ...}`` line in the 200 stream; on
  the ``/v1`` endpoints it is what Ollama's OpenAI layer makes of that line,
  an empty chunk, and the stream ends without ``data: [DONE]``.
- One deviation: a prompt longer than the context is refused (400), where
  Ollama truncates it unless the request says ``"truncate": false``.  No
  test relies on either.
- ``num_parallel`` (``OLLAMA_NUM_PARALLEL``) requests per model run at once,
  each on its own ``Llama`` instance; more wait in arrival order.
- When the client goes away, generation stops at the next token (unlike
  Ollama before ollama#11889 was fixed) and the request is recorded as
  ``client_gone``: tests check that cancellation reaches the server.

For fault tests, a request may carry an ``X-Test-Fault`` header:
``garbage:N`` (a non-JSON line after N tokens), ``error:N`` (an error line
after N tokens; ``error:N:S``: the stream ends S seconds after it),
``close:N`` (the connection cut after N tokens, no final
line), ``stall:N:S`` (S seconds of silence after N tokens), ``end:N`` (the
stream ended in good order after N tokens with no final line: a server
gone wrong), ``repeat:N`` (after N tokens the model repeats one piece, a
newline, and Ollama stops it at its token repeat limit: 31 pieces alike,
then, as Ollama before ollama#18374, the end in good order with no final
line), ``repeat-error:N`` (the same, then, as Ollama since, an error line
"prediction aborted, token repeat limit reached").

Run it in a thread with :func:`running_ollama_server` (a context manager
yielding the :class:`OllamaServer`: ``.url``, ``.records``) or
:func:`running_ollama_url` (yielding the base URL), or as a process::

    python -m tests.support.ollama_server --model tiny=/path/tiny.gguf

which prints ``READY http://127.0.0.1:PORT`` once it listens.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import datetime as dt
import hashlib
import json
import os
import queue
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

__all__ = ["OllamaServer", "RequestRecord", "running_ollama_server", "running_ollama_url"]

VERSION = "0.12.6"
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


@attrs.define
class RequestRecord:
    """What the server did for one generation request."""

    endpoint: str
    model: str
    prompt_tokens: int = 0
    generated: int = 0
    #: "done", "client_gone", "error", "busy", "fault"
    outcome: str = "running"
    done_reason: str | None = None
    #: The request's headers (lower-case names).
    headers: dict[str, str] = attrs.field(factory=dict)


class _ClientGone(Exception):
    pass


class _Model:
    """One model name: its file and ``num_parallel`` Llama instances."""

    def __init__(self, name: str, path: Path, *, num_parallel: int, n_ctx: int, n_threads: int) -> None:
        self.name = name
        self.path = path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.num_parallel = num_parallel
        self.free: queue.Queue[llama_cpp.Llama] = queue.Queue()
        self.loaded = 0
        self.load_lock = threading.Lock()
        self.digest = hashlib.sha256(path.read_bytes()).hexdigest()
        self.modified = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
        self.last_used: float | None = None
        self.metadata: dict[str, str] = {}

    def acquire(self) -> tuple[llama_cpp.Llama, int]:
        """A free instance (loading one if fewer than num_parallel exist) and the load time."""
        with self.load_lock:
            if self.free.empty() and self.loaded < self.num_parallel:
                t0 = time.perf_counter_ns()
                llm = llama_cpp.Llama(
                    str(self.path),
                    n_ctx=self.n_ctx,
                    n_threads=self.n_threads,
                    n_threads_batch=self.n_threads,
                    verbose=False,
                    seed=0,
                )
                self.metadata = dict(llm.metadata)
                self.loaded += 1
                return llm, time.perf_counter_ns() - t0
        return self.free.get(), 0

    def release(self, llm: llama_cpp.Llama) -> None:
        self.last_used = time.time()
        self.free.put(llm)

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.metadata.get("general.architecture", "llama"),
            "families": [self.metadata.get("general.architecture", "llama")],
            "parameter_size": f"{max(1, self.path.stat().st_size // 4000)}K",
            "quantization_level": "F32",
        }


class OllamaServer:
    """Ollama's API on 127.0.0.1, backed by llama-cpp-python.

    ``models`` maps model names (``"tiny"`` or ``"tiny:latest"``) to GGUF
    files.  ``num_parallel`` requests per model run at once; beyond that up
    to ``max_queue`` wait, and more get 503.  Use as a context manager or call
    :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        models: Mapping[str, str | os.PathLike[str]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        num_parallel: int = 1,
        max_queue: int = 512,
        n_ctx: int = 512,
        n_threads: int = 1,
    ) -> None:
        self.models = {
            _full_name(name): _Model(
                _full_name(name), Path(path), num_parallel=num_parallel, n_ctx=n_ctx, n_threads=n_threads
            )
            for name, path in models.items()
        }
        self.num_parallel = num_parallel
        self.max_queue = max_queue
        self.records: list[RequestRecord] = []
        #: Every GET: its path and headers (lower-case names).
        self.gets: list[tuple[str, dict[str, str]]] = []
        #: Generations running now, and the most that ever ran at once.
        self.running = 0
        self.max_running = 0
        #: The most requests it had at once, running or queued (refused ones not counted).
        self.max_pending = 0
        self._pending = 0
        self._pending_lock = threading.Lock()
        server = ThreadingHTTPServer((host, port), _Handler)
        server.daemon_threads = True
        server.ollama = self  # type: ignore[attr-defined]
        self._server = server
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> str:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> OllamaServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no request is running or waiting (for tests that check records)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._pending_lock:
                if self._pending == 0:
                    return
            time.sleep(0.005)
        raise TimeoutError("the Ollama test server still has requests running")

    # Admission: Ollama rejects requests beyond its queue with 503.
    def _enter(self) -> bool:
        with self._pending_lock:
            if self._pending >= self.num_parallel + self.max_queue:
                return False
            self._pending += 1
            self.max_pending = max(self.max_pending, self._pending)
            return True

    def _leave(self) -> None:
        with self._pending_lock:
            self._pending -= 1

    def _running(self, change: int) -> None:
        with self._pending_lock:
            self.running += change
            self.max_running = max(self.max_running, self.running)


@contextlib.contextmanager
def running_ollama_server(
    models: Mapping[str, str | os.PathLike[str]], **options: Any
) -> Iterator[OllamaServer]:
    """Start an :class:`OllamaServer` on a free 127.0.0.1 port in a thread; stop it after."""
    server = OllamaServer(models, **options)
    with server:
        yield server


@contextlib.contextmanager
def running_ollama_url(models: Mapping[str, str | os.PathLike[str]], **options: Any) -> Iterator[str]:
    """Like :func:`running_ollama_server`, yielding only the base URL (``http://127.0.0.1:PORT``)."""
    with running_ollama_server(models, **options) as server:
        yield server.url


def _full_name(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "OllamaTestServer"

    @property
    def ollama(self) -> OllamaServer:
        return self.server.ollama  # type: ignore[attr-defined,no-any-return]

    def setup(self) -> None:
        super().setup()
        # As Ollama (Go's net/http) does: without TCP_NODELAY a response's
        # headers and body, written separately, wait on the client's delayed
        # ACK (40 ms a response on Linux).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet

    # ------------------------------------------------------------ plumbing

    def _send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message})

    def _no_route(self) -> None:
        """Ollama's answer to a path it has no route for (gin's default: plain text)."""
        data = b"404 page not found"
        self.send_response(404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            raise ValueError("missing request body")
        # Go's encoding/json, which Ollama uses, reads invalid UTF-8 in a string as U+FFFD.
        return json.loads(raw.decode("utf-8", errors="replace"))

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            raise _ClientGone from exc

    def _write_line(self, obj: Any) -> None:
        self._write_chunk(json.dumps(obj).encode() + b"\n")

    def _client_gone(self) -> bool:
        """Whether the client closed its end (without waiting)."""
        try:
            peeked: bytes = self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            return peeked == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _end_stream(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    # --------------------------------------------------------------- routes

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.ollama.gets.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        if self.path == "/":
            data = b"Ollama is running"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif self.path == "/api/version":
            self._send_json(200, {"version": VERSION})
        elif self.path == "/api/tags":
            models = [
                {
                    "name": m.name,
                    "model": m.name,
                    "modified_at": m.modified.isoformat(),
                    "size": m.path.stat().st_size,
                    "digest": m.digest,
                    "details": m.details(),
                }
                for m in self.ollama.models.values()
            ]
            self._send_json(200, {"models": models})
        elif self.path == "/v1/models":
            listing = [
                {
                    "id": m.name,
                    "object": "model",
                    "created": int(m.modified.timestamp()),
                    "owned_by": "library",
                }
                for m in self.ollama.models.values()
            ]
            self._send_json(200, {"object": "list", "data": listing})
        elif self.path == "/api/ps":
            models = [
                {
                    "name": m.name,
                    "model": m.name,
                    "size": m.path.stat().st_size,
                    "digest": m.digest,
                    "details": m.details(),
                    "expires_at": dt.datetime.fromtimestamp(
                        (m.last_used or time.time()) + 300, dt.timezone.utc
                    ).isoformat(),
                    "size_vram": 0,
                }
                for m in self.ollama.models.values()
                if m.loaded
            ]
            self._send_json(200, {"models": models})
        else:
            self._no_route()

    def do_POST(self) -> None:
        openai = self.path in ("/v1/chat/completions", "/v1/completions")
        if self.path not in ("/api/generate", "/api/chat", "/api/show") and not openai:
            # Its body read first, as Go's server does: left unread, it would be taken for the
            # next request on this kept-alive connection.
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self._no_route()
            return
        try:
            body = self._read_body()
        except ValueError as exc:
            self._fail(openai, 400, str(exc) or "invalid JSON")
            return
        if not isinstance(body, dict):
            self._fail(openai, 400, "invalid request body: expected a JSON object")
            return
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            self._fail(openai, 400, "model is required")
            return
        model = self.ollama.models.get(_full_name(name))
        if model is None:
            self._fail(openai, 404, f"model '{name}' not found")
            return
        if self.path == "/api/show":
            self._show(model)
            return
        self._generate(
            model,
            body,
            chat=self.path.endswith("chat") or self.path.endswith("chat/completions"),
            openai=openai,
        )

    def _fail(self, openai: bool, status: int, message: str) -> None:
        if openai:  # Ollama's OpenAI compatibility layer answers in OpenAI's shape
            kind = "api_error" if status >= 500 else "invalid_request_error"
            self._send_json(
                status, {"error": {"message": message, "type": kind, "param": None, "code": None}}
            )
        else:
            self._error(status, message)

    def _show(self, model: _Model) -> None:
        self._send_json(
            200,
            {
                "modelfile": f"FROM {model.path}\n",
                "parameters": f"num_ctx {model.n_ctx}",
                "template": model.metadata.get("tokenizer.chat_template", "{{ .Prompt }}"),
                "details": model.details(),
                "model_info": {
                    k: v for k, v in model.metadata.items() if not k.startswith("tokenizer.ggml.")
                },
                "capabilities": ["completion"],
            },
        )

    # ----------------------------------------------------------- generation

    def _generate(self, model: _Model, body: dict[str, Any], *, chat: bool, openai: bool) -> None:
        endpoint = ("v1/" if openai else "") + ("chat" if chat else "generate")
        record = RequestRecord(endpoint, model.name, headers={k.lower(): v for k, v in self.headers.items()})
        self.ollama.records.append(record)
        stream = body.get("stream", not openai) is not False
        options: Any = _openai_options(body) if openai else body.get("options") or {}
        if not isinstance(options, dict):
            record.outcome = "error"
            self._fail(openai, 400, "options must be an object")
            return
        refused = None if openai else _refused_by_ollama(body, options, chat)
        if refused is not None:
            record.outcome = "error"
            self._fail(openai, *refused)
            return
        if chat:
            messages = body.get("messages") or []
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
            ):
                record.outcome = "error"
                self._fail(openai, 400, "messages must be a list of objects with a role")
                return
            empty = not messages and not openai
        else:
            prompt = body.get("prompt", "")
            if not isinstance(prompt, str):
                record.outcome = "error"
                self._fail(openai, 400, "prompt must be a string")
                return
            empty = prompt == "" and not openai
        if not self.ollama._enter():
            record.outcome = "busy"
            self._fail(openai, 503, BUSY_MESSAGE)
            return
        try:
            t_start = time.perf_counter_ns()
            llm, load_ns = model.acquire()
            self.ollama._running(+1)
            try:
                if empty:  # load (or unload) request
                    reason = "unload" if _zero_duration(body.get("keep_alive")) else "load"
                    record.outcome, record.done_reason = "done", reason
                    final = {"model": model.name, "created_at": _now(), "done": True, "done_reason": reason}
                    final.update(
                        {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
                    )
                    self._send_json(200, final)
                    return
                raw = bool(body.get("raw")) or (openai and not chat)  # /v1/completions is raw
                generation = _Generation(
                    llm, model, self._prompt(llm, body, chat, raw), options, record, t_start, load_ns
                )
                if generation.too_long:
                    record.outcome = "error"
                    self._fail(openai, 400, generation.too_long)
                    return
                fault = _parse_fault(self.headers.get("X-Test-Fault"))
                try:
                    if openai:
                        self._respond_openai(generation, body, chat, stream, fault)
                    else:
                        self._respond_ollama(generation, body, chat, stream, fault)
                except _ClientGone:
                    record.outcome = "client_gone"
            finally:
                self.ollama._running(-1)
                model.release(llm)
        finally:
            self.ollama._leave()

    def _prompt(self, llm: llama_cpp.Llama, body: dict[str, Any], chat: bool, raw: bool) -> str:
        template = llm.metadata.get("tokenizer.chat_template")
        if chat:
            messages = [{"role": m["role"], "content": m.get("content") or ""} for m in body["messages"]]
        else:
            if raw or not template:
                return str(body["prompt"])
            messages = []
            if isinstance(body.get("system"), str):
                messages.append({"role": "system", "content": body["system"]})
            messages.append({"role": "user", "content": body["prompt"]})
        if not template:
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llm.detokenize([llm.token_eos()]).decode(errors="ignore"),
            bos_token=llm.detokenize([llm.token_bos()]).decode(errors="ignore"),
        )
        return formatter(messages=messages).prompt  # type: ignore[arg-type]

    def _respond_ollama(
        self,
        generation: _Generation,
        body: dict[str, Any],
        chat: bool,
        stream: bool,
        fault: tuple[str, int, float] | None,
    ) -> None:
        model = generation.model.name

        def line(content: str) -> dict[str, Any]:
            out: dict[str, Any] = {"model": model, "created_at": _now()}
            if chat:
                out["message"] = {"role": "assistant", "content": content}
            else:
                out["response"] = content
            out["done"] = False
            return out

        if stream:
            self._start_stream()
        for piece in generation:
            if stream and piece:
                self._write_line(line(piece))
            if (
                fault is not None
                and generation.count == fault[1]
                and self._fault(fault, openai=False, piece=line("\n"))
            ):
                generation.record.outcome = "fault"
                return
        final = line(generation.pending if stream else generation.text)
        final.update(
            {
                "done": True,
                "done_reason": generation.reason,
                "total_duration": generation.t_end - generation.t_start,
                "load_duration": generation.load_ns,
                "prompt_eval_count": len(generation.prompt_tokens),
                "prompt_eval_duration": generation.prompt_ns,
                "eval_count": generation.count,
                "eval_duration": generation.t_end - generation.t_prompt_done,
            }
        )
        if not chat and not body.get("raw"):
            final["context"] = [int(t) for t in generation.prompt_tokens + generation.output]
        # Recorded before the last write: a client that has read the answer may look at
        # the record at once (a failed write makes it "client_gone" in _generate).
        generation.record.outcome = "done"
        if stream:
            self._write_line(final)
            self._end_stream()
        else:
            self._send_json(200, final)

    def _respond_openai(
        self,
        generation: _Generation,
        body: dict[str, Any],
        chat: bool,
        stream: bool,
        fault: tuple[str, int, float] | None,
    ) -> None:
        # Ollama's OpenAI compatibility: server-sent events, usage on request.
        model = generation.model.name
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{id(generation) % 1000}"
        obj = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())

        def event(text: str | None, reason: str | None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
            if chat:
                choice["delta"] = {"role": "assistant", "content": text or ""} if text is not None else {}
            else:
                choice["text"] = text or ""
            return {"id": ident, "object": obj, "created": created, "model": model, "choices": [choice]}

        usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))
        if not stream:
            for _ in generation:
                pass
            answer = event(generation.text, generation.reason)
            choice = answer["choices"][0]
            if chat:
                choice["message"] = {"role": "assistant", "content": generation.text}
                del choice["delta"]
            answer["object"] = "chat.completion" if chat else "text_completion"
            answer["usage"] = generation.usage()
            generation.record.outcome = "done"  # before the write, as in _respond_ollama
            self._send_json(200, answer)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in generation:
            if piece:
                self._write_chunk(b"data: " + json.dumps(event(piece, None)).encode() + b"\n\n")
            if (
                fault is not None
                and generation.count == fault[1]
                and self._fault(fault, openai=True, empty_event=json.dumps(event("", None)).encode())
            ):
                generation.record.outcome = "fault"
                return
        if generation.pending:
            self._write_chunk(b"data: " + json.dumps(event(generation.pending, None)).encode() + b"\n\n")
        self._write_chunk(b"data: " + json.dumps(event(None, generation.reason)).encode() + b"\n\n")
        if usage_wanted:
            final = event(None, None)
            final["choices"] = []
            final["usage"] = generation.usage()
            self._write_chunk(b"data: " + json.dumps(final).encode() + b"\n\n")
        generation.record.outcome = "done"  # before the last writes, as in _respond_ollama
        self._write_chunk(b"data: [DONE]\n\n")
        self._end_stream()

    def _linger(self, seconds: float) -> None:
        """``seconds`` of silence (a client gone meanwhile ends the response)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self._client_gone():
                raise _ClientGone
            time.sleep(0.01)

    def _fault(
        self,
        fault: tuple[str, int, float],
        *,
        openai: bool,
        empty_event: bytes = b"",
        piece: dict[str, Any] | None = None,
    ) -> bool:
        """Misbehave as asked; True if the response is over.

        ``empty_event``: an OpenAI-compatible chunk with no text, which an
        error becomes in Ollama's OpenAI layer; ``piece``: a line of the
        answer, the one the model repeats for ``repeat``.
        """
        kind, _, seconds = fault
        if kind == "stall":
            self._linger(seconds)
            return False
        if kind == "garbage":
            self._write_chunk(b"data: this is not json {\n\n" if openai else b"this is not json {\n")
            self._end_stream()
            return True
        if kind in ("repeat", "repeat-error") and not openai:
            # The model writes one piece over and over (JSON mode's whitespace); Ollama lets out
            # the first and 30 repeats (llm/llama_server.go: tokenRepeat > 30), then stops it.
            for _ in range(31):
                self._write_line(piece)
        if kind in ("end", "repeat") and not openai:
            # No error and no final line: the stream ends in good order.
            self._end_stream()
            return True
        if kind in ("error", "repeat-error"):
            message = (
                "prediction aborted, token repeat limit reached"
                if kind == "repeat-error"
                else "an error was encountered while running the model"
            )
            if openai:
                # What Ollama's OpenAI layer makes of the error line once the stream has begun
                # (middleware/openai.go: ChatWriter/CompleteWriter.Write call writeError only while
                # the status is not 200 yet; after it, writeResponse reads {"error": ...} as an
                # empty response): a chunk with no text, then the end, with no [DONE].
                self._write_chunk(b"data: " + empty_event + b"\n\n")
            else:
                self._write_line({"error": message})
            self._linger(seconds)
            self._end_stream()
            return True
        if kind == "close":
            # Die mid-stream: cut the connection without the final line or chunk.
            with contextlib.suppress(OSError):
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return True
        raise ValueError(f"unknown fault {kind!r}")


class _Generation:
    """Real llama.cpp generation, token by token: iterate for the text pieces."""

    def __init__(
        self,
        llm: llama_cpp.Llama,
        model: _Model,
        prompt_text: str,
        options: Mapping[str, Any],
        record: RequestRecord,
        t_start: int,
        load_ns: int,
    ) -> None:
        self.llm = llm
        self.model = model
        self.options = options
        self.record = record
        self.t_start = t_start
        self.load_ns = load_ns
        # A chat template writes the BOS token itself; a raw prompt gets one.
        bos = llm.detokenize([llm.token_bos()], special=True).decode(errors="ignore")
        add_bos = not (bos and prompt_text.startswith(bos))
        self.prompt_tokens: list[int] = llm.tokenize(prompt_text.encode(), add_bos=add_bos, special=True)
        record.prompt_tokens = len(self.prompt_tokens)
        self.too_long = ""
        if len(self.prompt_tokens) >= model.n_ctx:
            self.too_long = f"prompt is {len(self.prompt_tokens)} tokens, the context is {model.n_ctx}"
        self.output: list[int] = []
        self.text = ""
        self.pending = ""  # held back at the end (a possible stop string start), sent last
        self.reason = "length"
        self.t_prompt_done = t_start
        self.t_end = t_start

    @property
    def count(self) -> int:
        return len(self.output)

    @property
    def prompt_ns(self) -> int:
        return max(0, self.t_prompt_done - self.t_start - self.load_ns)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": len(self.prompt_tokens),
            "completion_tokens": self.count,
            "total_tokens": len(self.prompt_tokens) + self.count,
        }

    def __iter__(self) -> Iterator[str]:
        llm, options = self.llm, self.options
        num_predict = int(options.get("num_predict", -1))
        room = self.model.n_ctx - len(self.prompt_tokens)
        limit = room if num_predict <= 0 else min(num_predict, room)  # Ollama: 0 is no limit too
        stops = options.get("stop") or []
        if isinstance(stops, str):
            stops = [stops]
        seed = options.get("seed")
        llm.set_seed(int(seed) if isinstance(seed, int) and seed >= 0 else int(time.time_ns() % 2**31))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        sent = 0
        first = True
        tokens = llm.generate(
            self.prompt_tokens,
            temp=float(options.get("temperature", 0.8)),
            top_k=int(options.get("top_k", 40)),
            top_p=float(options.get("top_p", 0.9)),
            min_p=float(options.get("min_p", 0.0)),
            typical_p=float(options.get("typical_p", 1.0)),
            repeat_penalty=float(options.get("repeat_penalty", 1.1)),
            presence_penalty=float(options.get("presence_penalty", 0.0)),
            frequency_penalty=float(options.get("frequency_penalty", 0.0)),
            mirostat_mode=int(options.get("mirostat", 0)),
            mirostat_tau=float(options.get("mirostat_tau", 5.0)),
            mirostat_eta=float(options.get("mirostat_eta", 0.1)),
        )
        try:
            for token in tokens if limit > 0 else ():
                if first:
                    first = False
                    self.t_prompt_done = time.perf_counter_ns()
                if token == llm.token_eos():
                    self.reason = "stop"
                    break
                self.output.append(token)
                self.record.generated = self.count
                piece = llm.detokenize([token], prev_tokens=self.prompt_tokens + self.output[:-1])
                self.text += decoder.decode(piece)
                cut = min((i for i in (self.text.find(s) for s in stops) if i >= 0), default=-1)
                if cut >= 0:  # Ollama leaves the stop string out
                    self.text, self.reason = self.text[:cut], "stop"
                    break
                ready = len(self.text) - _held_back(self.text, stops)
                yield self.text[sent:ready]
                sent = max(sent, ready)
                if self.count >= limit:
                    self.reason = "length"
                    break
        finally:
            tokens.close()
        self.text += decoder.decode(b"", final=True)
        self.pending = self.text[sent:]
        self.t_end = time.perf_counter_ns()
        if first:
            self.t_prompt_done = self.t_end
        self.record.done_reason = self.reason


#: A Go duration (``time.ParseDuration``), the form of Ollama's ``keep_alive`` strings.
_GO_DURATION = re.compile(r"[+-]?(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h))+)")


#: api/types.go: the fields of Options and Runner, as Go declares them (JSON name, Go type).
_GO_OPTION_FIELDS = """
    numa bool, num_ctx int, num_batch int, num_gpu int, main_gpu int, low_vram bool, f16_kv bool,
    logits_all bool, vocab_only bool, use_mmap TriState, use_mlock bool, num_thread int,
    num_keep int, seed int, num_predict int, top_k int, top_p float32, min_p float32,
    tfs_z float32, typical_p float32, repeat_last_n int, temperature float32,
    repeat_penalty float32, presence_penalty float32, frequency_penalty float32, mirostat int,
    mirostat_tau float32, mirostat_eta float32, penalize_newline bool, stop []string
"""
#: What Options.FromMap names each Go type in its errors.
_FROM_MAP_NAMES = {"int": "integer", "float32": "float32", "bool": "boolean", "TriState": "boolean"}
_OPTION_TYPES = {
    name: _FROM_MAP_NAMES.get(go, "array")
    for name, go in (field.split() for field in _GO_OPTION_FIELDS.replace("\n", " ").split(","))
}


def _zero_duration(value: object) -> bool:
    """Whether a ``keep_alive`` is zero, as Ollama's ``Duration.UnmarshalJSON`` reads it (a
    number of seconds, or a Go duration string: "0", "0s", "0m", "0h0m" are all zero)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value) == 0
    if isinstance(value, str) and _GO_DURATION.fullmatch(value):
        return not any(float(n) for n in re.findall(r"[0-9]*\.?[0-9]+", value))
    return False


def _refused_by_ollama(
    body: Mapping[str, Any], options: Mapping[str, Any], chat: bool
) -> tuple[int, str] | None:
    """The status and error Ollama answers a body with that it refuses, as its source does.

    ``api/types.go``: a message's ``content`` is a Go string (the JSON
    decoder's 400), ``keep_alive`` a duration string or a number (400), a
    model option must have its field's type, a slice option such as ``stop`` a
    JSON array of strings (``Options.FromMap``, answered 500); ``server/routes.go``: ``raw`` with ``system``,
    ``template`` or ``context`` is a 400.
    """
    if chat and isinstance(body.get("messages"), list):
        for m in body["messages"]:
            if isinstance(m, dict) and "content" in m and not isinstance(m["content"], str):
                kind = "array" if isinstance(m["content"], list) else type(m["content"]).__name__
                return 400, (
                    f"json: cannot unmarshal {kind} into Go struct field "
                    "Message.messages.content of type string"
                )
    keep_alive = body.get("keep_alive")
    if isinstance(keep_alive, str) and not _GO_DURATION.fullmatch(keep_alive):
        return 400, f'time: missing unit in duration "{keep_alive}"'
    for key, value in options.items():  # Options.FromMap (a 500: scheduleRunner's error)
        wanted = _OPTION_TYPES.get(key)
        if wanted is None or value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if wanted == "array":
            if not isinstance(value, list):
                return 500, f'option "{key}" must be of type array'
            if not all(isinstance(item, str) for item in value):
                return 500, f'option "{key}" must be of an array of strings'
        elif (wanted == "boolean") != isinstance(value, bool) or (wanted != "boolean" and not number):
            return 500, f'option "{key}" must be of type {wanted}'
    think = body.get("think")
    if think is True or (isinstance(think, str) and think):  # no test model thinks
        return 400, f'"{body.get("model")}" does not support thinking'
    if not chat and body.get("raw") and (body.get("system") or body.get("template") or body.get("context")):
        return 400, "raw mode does not support template, system, or context"
    return None


def _openai_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama's mapping of OpenAI request fields to its options (openai/openai.go: it reads
    ``max_tokens``, not OpenAI's newer ``max_completion_tokens``)."""
    options: dict[str, Any] = {}
    for source, target in (
        ("max_tokens", "num_predict"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("seed", "seed"),
        ("stop", "stop"),
        ("frequency_penalty", "frequency_penalty"),
        ("presence_penalty", "presence_penalty"),
    ):
        if body.get(source) is not None:
            options[target] = body[source]
    return options


def _parse_fault(value: str | None) -> tuple[str, int, float] | None:
    if not value:
        return None
    parts = value.split(":")
    return parts[0], int(parts[1]), float(parts[2]) if len(parts) > 2 else 0.0


def _held_back(text: str, stops: list[str]) -> int:
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:n]):
                keep = n
                break
    return keep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH.gguf (repeatable)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--num-parallel", type=int, default=1)
    parser.add_argument("--max-queue", type=int, default=512)
    parser.add_argument("--n-ctx", type=int, default=512)
    args = parser.parse_args(argv)
    models = dict(m.split("=", 1) for m in args.model)
    server = OllamaServer(
        models, port=args.port, num_parallel=args.num_parallel, max_queue=args.max_queue, n_ctx=args.n_ctx
    )
    print(f"READY {server.url}", flush=True)
    try:
        server._server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    finally:
        server._server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
