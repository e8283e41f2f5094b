"""The two APIs the proxy speaks: which calls it schedules, how it reads them, how it errs.

A scheduled call's JSON body is read once, to build the
:class:`~sjfsched.Request` the predictor sees (prompt or messages, the output
limit, priority, tenant); the body itself goes to the upstream unchanged
unless it carried the proxy's own ``priority``/``tenant`` fields, which are
taken out.  The answer is read as it passes (:class:`Tally`) for the token
counts that teach the scheduler its rates.

Errors are written in the API's own shape: Ollama's ``{"error": "..."}``,
OpenAI's ``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, final

import attrs

from .._records import Request, role_only, usable_count
from ..backends._base import ToolCallPieces

__all__ = [
    "BadRequest",
    "Endpoint",
    "Parsed",
    "Style",
    "Tally",
    "error_body",
    "error_event",
    "framing_of",
    "separator",
    "parse_scheduled",
    "scheduled_endpoints",
    "style_of",
]

#: Which API an error is written for: ``/v1/...`` speaks OpenAI, the rest Ollama.
Style = Literal["ollama", "openai"]
#: How an answer is framed: newline-delimited JSON (Ollama), server-sent events (OpenAI), one JSON body.
Framing = Literal["ndjson", "sse", "json"]

#: Request body fields that belong to the proxy; removed before forwarding.
PROXY_FIELDS = ("priority", "tenant")


def style_of(path: str) -> Style:
    return "openai" if path.startswith("/v1/") or path == "/v1" else "ollama"


@final
@attrs.frozen
class Endpoint:
    """A scheduled call: ``POST path``, read as ``kind``."""

    path: str
    kind: Literal["generate", "chat", "chat_completions", "completions"]

    @property
    def style(self) -> Style:
        return "openai" if self.kind in ("chat_completions", "completions") else "ollama"


_OLLAMA = (Endpoint("/api/generate", "generate"), Endpoint("/api/chat", "chat"))
_OPENAI = (Endpoint("/v1/chat/completions", "chat_completions"), Endpoint("/v1/completions", "completions"))


def scheduled_endpoints(api: Literal["ollama", "openai"]) -> dict[str, Endpoint]:
    """The calls scheduled in front of an upstream of this kind, by path.

    Ollama serves OpenAI's ``/v1`` calls too, so both sets are scheduled in
    front of it.
    """
    endpoints = _OPENAI if api == "openai" else _OLLAMA + _OPENAI
    return {e.path: e for e in endpoints}


class BadRequest(Exception):
    """The request body cannot be scheduled: answered 400 with this message."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@final
@attrs.frozen
class Parsed:
    """A scheduled call, read: what the scheduler orders, and the body to forward."""

    request: Request
    body: bytes


# ------------------------------------------------------------------ reading


def parse_scheduled(
    endpoint: Endpoint,
    raw: bytes,
    *,
    priority_header: bytes | None,
    tenant_header: bytes | None,
    upstream: Literal["ollama", "openai"] = "openai",
) -> Parsed:
    """Read a scheduled call's body; raise :class:`BadRequest` naming what is wrong.

    ``upstream``: the API the upstream speaks.  Ollama reads an OpenAI call's
    ``max_tokens`` and not ``max_completion_tokens``, so in front of Ollama a
    call limited by ``max_completion_tokens`` alone gets the same
    ``max_tokens`` too; in front of an OpenAI-compatible server the body goes
    as it came, and that limit does not rank the call (llama-cpp-python's
    server does not read it; OpenAI's refuses ``max_tokens`` for some models).
    """
    if not raw.strip():
        raise BadRequest("the request body is empty; expected a JSON object")
    try:
        try:
            body = json.loads(raw)  # UTF-8 (with or without a BOM), UTF-16 or UTF-32, as JSON allows
        except UnicodeDecodeError:
            if endpoint.style != "ollama":
                raise
            # Ollama's Go JSON reader takes invalid UTF-8 in a string as U+FFFD; the body goes
            # upstream as it came (re-encoded, with U+FFFD, where the proxy's own fields go).
            body = json.loads(raw.decode("utf-8", errors="replace"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply to read") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got a JSON {_json_type(body)}")

    priority = _priority(body, priority_header)
    tenant = _tenant(body, tenant_header)
    changed = any(f in body for f in PROXY_FIELDS)
    for f in PROXY_FIELDS:
        body.pop(f, None)
    # max_tokens null is no limit to Ollama (a *int) and to llama-cpp-python: as if absent.
    newer_only = (
        endpoint.style == "openai"
        and body.get("max_tokens") is None
        and body.get("max_completion_tokens") is not None
    )
    if newer_only and upstream == "ollama":
        # OpenAI's newer name for the limit, which Ollama does not read: sent on as max_tokens
        # too, so the limit the call is ranked by holds upstream.
        limit = _openai_limit({"max_completion_tokens": body["max_completion_tokens"]})
        if limit is not None:
            body["max_tokens"] = limit
            changed = True
    if changed:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        try:
            raw = text.encode()
        except UnicodeEncodeError:  # a lone surrogate ("\ud800" is valid JSON): keep it escaped
            raw = json.dumps(body, separators=(",", ":")).encode()

    kind = endpoint.kind
    if kind == "generate":
        fields = _ollama_generate(body)
    elif kind == "chat":
        fields = _ollama_chat(body)
    elif kind == "chat_completions":
        fields = _openai_chat(body)
    else:
        fields = _openai_completions(body)
    if newer_only and upstream != "ollama":
        fields["max_tokens"] = None  # a limit the upstream may not read: ranked by the prediction
    model = body.get("model")
    try:
        request = Request(
            **fields,
            priority=priority,
            tenant=tenant,
            metadata={"model": model} if isinstance(model, str) else None,
        )
    except (TypeError, ValueError) as exc:  # pragma: no cover - the checks above come first
        raise BadRequest(str(exc)) from None
    return Parsed(request, raw)


def _json_type(value: object) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


def _priority(body: Mapping[str, Any], header: bytes | None) -> int:
    if header is not None:
        try:
            return int(header.decode("latin-1").strip())
        except ValueError:
            text = header.decode("latin-1")
            raise BadRequest(
                f"the X-Priority header must be an integer (lower runs earlier), got {text!r}"
            ) from None
    value = body.get("priority")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(
            f"priority must be an integer (lower runs earlier), got {json.dumps(value)}", param="priority"
        )
    return value


def _tenant(body: Mapping[str, Any], header: bytes | None) -> str | None:
    if header is not None:
        return header.decode("latin-1").strip() or None
    value = body.get("tenant")
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"tenant must be a string, got {json.dumps(value)}", param="tenant")
    return value


def _require_model(body: Mapping[str, Any]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        got = "nothing" if model is None else json.dumps(model)
        raise BadRequest(f"model is required: the name of a model as a non-empty string, got {got}")


def _ollama_limit(body: Mapping[str, Any]) -> int | None:
    options = body.get("options")
    if options is None:
        return None
    if not isinstance(options, dict):
        raise BadRequest(f"options must be a JSON object, got a JSON {_json_type(options)}")
    value = options.get("num_predict")
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value):
        value = int(value)  # Ollama's Options.FromMap: a JSON number's integer part (2.5: 2)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"options.num_predict must be an integer, got {json.dumps(value)}")
    if value <= 0:  # -1: no limit, -2: fill the context; 0: Ollama's runner stops only at a limit > 0
        return None
    return value


def _openai_limit(body: Mapping[str, Any]) -> int | None:
    """The output limit of an OpenAI call (``None``: none).  With both ``max_tokens`` and
    ``max_completion_tokens``, servers differ in which they read: the larger counts."""
    limits: list[int | None] = []
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():  # 16.0: llama-cpp-python's pydantic takes it
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"{name} must be an integer, got {json.dumps(value)}", param=name)
        # <= 0: llama-cpp-python: no limit (0 too); Ollama: num_predict -1. The upstream judges it
        limits.append(value if value > 0 else None)
    if not limits or None in limits:
        return None
    return max(limit for limit in limits if limit is not None)


def _ollama_generate(body: Mapping[str, Any]) -> dict[str, Any]:
    _require_model(body)
    prompt = body.get("prompt")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise BadRequest(f"prompt must be a string, got a JSON {_json_type(prompt)}")
    limit = _ollama_limit(body)
    if not prompt:  # with images too (server/routes.go: an empty prompt only loads the model)
        limit = 1  # loads (or unloads) the model: no generation
    return {"prompt": prompt, "max_tokens": limit}


def _messages(body: Mapping[str, Any], *, required: bool, parts_allowed: bool) -> list[dict[str, Any]] | None:
    messages = body.get("messages")
    if messages is None or messages == []:
        if required:
            raise BadRequest(
                'messages is required: a non-empty array of {"role": ..., "content": ...} objects',
                param="messages",
            )
        return None
    if not isinstance(messages, list):
        raise BadRequest(f"messages must be an array, got a JSON {_json_type(messages)}", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(
                f"messages[{i}] must be an object with role and content, got a JSON {_json_type(message)}",
                param="messages",
            )
        if not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}].role must be a string", param="messages")
        content = message.get("content")
        if (
            content is not None
            and not isinstance(content, str)
            and not (parts_allowed and isinstance(content, list))
        ):
            expected = "a string or an array of parts" if parts_allowed else "a string"
            raise BadRequest(
                f"messages[{i}].content must be {expected}, got a JSON {_json_type(content)}",
                param="messages",
            )
        if role_only(message) and parts_allowed:  # refused as Request refuses it, in the API's shape
            raise BadRequest(f"messages[{i}] has no content", param="messages")
    if not parts_allowed:  # Ollama's: a message's content is a string, "" when left out (api/types.go)
        return [{**m, "content": ""} if role_only(m) else m for m in messages]
    return messages


def _ollama_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    _require_model(body)
    messages = _messages(body, required=False, parts_allowed=False)
    limit = _ollama_limit(body)
    if messages is None:  # loads (or unloads) the model
        return {"prompt": "", "max_tokens": 1}
    return {"messages": messages, "max_tokens": limit}


def _openai_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    messages = _messages(body, required=True, parts_allowed=True)
    return {"messages": messages, "max_tokens": _openai_limit(body)}


def _openai_completions(body: Mapping[str, Any]) -> dict[str, Any]:
    if "prompt" not in body:
        raise BadRequest("prompt is required: a string or an array of strings", param="prompt")
    return {"prompt": _completion_prompt(body["prompt"]), "max_tokens": _openai_limit(body)}


def _completion_prompt(prompt: object) -> str:
    """The text a predictor reads from an OpenAI completions prompt (strings or token ids)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        if all(isinstance(p, str) for p in prompt):
            return "\n".join(prompt)
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return "tok " * len(prompt)  # token ids: about four characters each
        if all(isinstance(p, list) for p in prompt):
            return "\n".join(_completion_prompt(p) for p in prompt)
    raise BadRequest("prompt must be a string, an array of strings, or an array of token ids", param="prompt")


# ------------------------------------------------------------------ errors


def error_body(
    style: Style,
    message: str,
    *,
    kind: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """An error in the API's own JSON shape."""
    if style == "ollama":
        return json.dumps({"error": message}).encode()
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


def error_event(framing: Framing, message: str) -> bytes:
    """An error inside a stream that has begun, in the stream's own framing."""
    if framing == "sse":
        error = {"error": {"message": message, "type": "upstream_error", "param": None, "code": None}}
        return b"data: " + json.dumps(error).encode() + b"\n\n"
    return json.dumps({"error": message}).encode() + b"\n"


def separator(framing: Framing, tail: bytes) -> bytes:
    """What must follow a stream that ended in ``tail`` for an error event to start cleanly."""
    if framing == "sse":
        return b"" if tail.endswith(b"\n\n") else b"\n" if tail.endswith(b"\n") else b"\n\n"
    return b"" if tail.endswith(b"\n") else b"\n"


def framing_of(content_type: str) -> Framing:
    if "text/event-stream" in content_type:
        return "sse"
    if "ndjson" in content_type:
        return "ndjson"
    return "json"


# ------------------------------------------------------------------ answers

#: A line longer than this is passed on but not read.
_MAX_LINE = 1 << 20


@final
class Tally:
    """Reads an answer as it passes: output and prompt tokens, the first output, an error.

    Ollama's last line carries exact counts (``eval_count``,
    ``prompt_eval_count``), as does an OpenAI ``usage`` object; without them
    each streamed piece of output counts as one token.
    """

    __slots__ = (
        "_buffer",
        "_framing",
        "_skip",
        "_tail",
        "_tools",
        "done",
        "error",
        "exact",
        "finished",
        "pieces",
        "prompt_tokens",
    )

    def __init__(self, framing: Framing) -> None:
        self._framing = framing
        self._buffer = b""
        self._skip = False
        self._tail = b"\n\n"
        self._tools = ToolCallPieces()
        #: Pieces of output seen (one per streamed token, as servers stream them).
        self.pieces = 0
        #: The server's own output count, when it gave one.
        self.exact: int | None = None
        self.prompt_tokens: int | None = None
        self.error: str | None = None
        self.done = False
        #: An OpenAI choice came with its finish_reason (an answer that [DONE] ends without one
        #: was cut short: llama_cpp.server does that to a stream when another request arrives).
        self.finished = False

    @property
    def output_tokens(self) -> int:
        return self.exact if self.exact is not None else self.pieces

    def separator(self) -> bytes:
        """What to send before an injected error so that it starts a fresh line/event."""
        return separator(self._framing, self._tail)

    def feed(self, data: bytes) -> None:
        """Read the next bytes of a stream."""
        if not data:
            return
        self._tail = (self._tail + data[-2:])[-2:]
        buffer = self._buffer + data if self._buffer else data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if self._skip:
                self._skip = False
            else:
                self._line(buffer[start:end])
            start = end + 1
        rest = buffer[start:]
        if len(rest) > _MAX_LINE:
            self._skip, rest = True, b""
        self._buffer = rest

    def feed_whole(self, body: bytes) -> None:
        """Read a whole (non-streamed) JSON answer."""
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(obj, dict):
            self._object(obj)

    def _line(self, line: bytes) -> None:
        line = line.strip()
        if not line:
            return
        if self._framing == "sse":
            if line.startswith(b"error:"):
                # llama.cpp's server reports a failure with an "error:" field
                # (then still sends [DONE]).
                self._error_field(line[6:].strip())
                return
            if line.startswith(b"data:"):
                line = line[5:].strip()
                if line == b"[DONE]":
                    self.done = True
                    return
            elif not line.startswith(b"{"):
                return  # event:, id:, retry:, comments; a bare JSON line is
                # how Ollama's OpenAI layer reports an error, read below
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(obj, dict):
            self._object(obj)

    def _error_field(self, value: bytes) -> None:
        try:
            obj = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            obj = None
        if isinstance(obj, dict):
            message = obj.get("error", obj)
            if isinstance(message, Mapping):
                message = message.get("message", message)
            self.error = str(message)
        else:
            self.error = value.decode("utf-8", "replace") or "an error"

    def _object(self, obj: Mapping[str, Any]) -> None:
        error = obj.get("error")
        if error is not None:
            if isinstance(error, Mapping):
                error = error.get("message", error)
            self.error = str(error)
            return
        # Ollama: {"response": ...} or {"message": {"content": ...}}; done: true with counts.
        if "done" in obj:
            message = obj.get("message")
            text = obj.get("response") or obj.get("thinking")
            if not text and isinstance(message, Mapping):
                text = message.get("content") or message.get("thinking") or message.get("tool_calls")
            if text:
                self.pieces += 1
            if obj.get("done") is True:
                self.done = True
                self._counts(obj.get("eval_count"), obj.get("prompt_eval_count"))
            return
        # OpenAI: choices[].delta.content / choices[].text / choices[].message; usage.
        choices = obj.get("choices")
        if isinstance(choices, Sequence) and not isinstance(choices, str):
            for choice in choices:
                if not isinstance(choice, Mapping):
                    continue
                if isinstance(choice.get("finish_reason"), str) and choice["finish_reason"]:
                    self.finished = True  # (sglang's and Ollama's old /v1 "" on every chunk: not yet)
                delta = choice.get("delta") or choice.get("message")
                text = choice.get("text")
                if not text and isinstance(delta, Mapping):
                    text = (
                        delta.get("content")
                        or delta.get("reasoning_content")  # vLLM, llama-server
                        or delta.get("reasoning")  # Ollama's /v1
                        or self._tools.add(delta.get("tool_calls"))  # a new call or argument text
                    )
                if text:
                    self.pieces += 1
        usage = obj.get("usage")
        if isinstance(usage, Mapping):
            self._counts(usage.get("completion_tokens"), usage.get("prompt_tokens"))

    def _counts(self, output: object, prompt: object) -> None:
        # A count no answer could have is left out (the pieces are counted), as the backends do.
        if (exact := usable_count(output)) is not None:
            self.exact = exact
        if (prompt_tokens := usable_count(prompt)) is not None:
            self.prompt_tokens = prompt_tokens
