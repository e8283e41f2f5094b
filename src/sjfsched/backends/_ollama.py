"""An Ollama server as a backend: ``/api/generate`` and ``/api/chat``, streamed."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, final

from .._errors import BackendError
from .._records import Chunk, Request, content_text, usable_count
from ._http import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    BackendUnavailable,
    HttpSettings,
    import_httpx,
    log_probabilities_refused,
    refused_unsent,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["OllamaBackend"]

#: Body fields of /api/generate that /api/chat does not have, and what a chat uses instead.
_GENERATE_ONLY = {
    "system": "give the chat a system message",
    "images": "put them in the user message's 'images'",
    "template": "a chat uses the model's template",
    "raw": "a chat is always templated",
    "suffix": "use /api/generate (Request.prompt) for fill-in-the-middle",
    "context": "send the earlier turns as messages",
}

#: Request options that are fields of the request body, not model ``options``.
_TOP_LEVEL = frozenset(
    {
        "format",
        "system",
        "template",
        "raw",
        "keep_alive",
        "think",
        "suffix",
        "images",
        "context",
        "tools",
        "logprobs",
        "top_logprobs",
        "truncate",
        "shift",
    }
)
#: Body fields of /api/chat that /api/generate does not have, and what to use instead.
_CHAT_ONLY = {
    "tools": "send the request as a chat (Request.messages) for tool calling",
}
_RESERVED = frozenset({"model", "prompt", "messages", "stream"})
#: How many pieces alike in a row (trimmed) Ollama's token repeat limit lets out before it stops a
#: generation (llm/llama_server.go: ``tokenRepeat > 30``, the first piece and 30 repeats).
_REPEAT_LIMIT = 30
#: Body fields asking for parts of the answer a Chunk has no place for: refused when set.
_UNREAD = frozenset({"logprobs", "top_logprobs"})
#: The types of Ollama's model options (api/types.go: ``Options`` and ``Runner``).  Ollama's
#: ``Options.FromMap`` refuses a value of another type with a 500, which would read as the
#: server's fault (a pool would take it out of rotation); the backend refuses it first.
_OPTION_TYPES: dict[str, str] = {
    **dict.fromkeys(
        ("num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "mirostat", "num_ctx",
         "num_batch", "num_gpu", "main_gpu", "num_thread"),
        "integer",
    ),
    **dict.fromkeys(
        ("top_p", "min_p", "typical_p", "tfs_z", "temperature", "repeat_penalty", "presence_penalty",
         "frequency_penalty", "mirostat_tau", "mirostat_eta"),
        "float32",
    ),
    **dict.fromkeys(
        ("numa", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap", "use_mlock",
         "penalize_newline"),
        "boolean",
    ),
    "stop": "array",
}  # fmt: skip


def _check_option(key: str, value: object) -> None:
    """Refuse what Ollama's ``Options.FromMap`` refuses, in its words (``None`` it skips)."""
    kind = _OPTION_TYPES.get(key)
    if kind is None or value is None:
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "array" and isinstance(value, (list, tuple)):  # JSON arrays both
        if all(isinstance(item, str) for item in value):
            return
        fault = f"option {key!r} must be an array of strings"
    elif isinstance(value, bool) if kind == "boolean" else (kind != "array" and number):
        return
    else:
        fault = f"option {key!r} must be of type {kind}"
    raise BackendError(f"OllamaBackend: {fault}, got {value!r} (Ollama would answer 500 for it)")


#: A Go duration, as Ollama's ``keep_alive`` strings are parsed (``time.ParseDuration``).
_GO_DURATION = re.compile(r"[+-]?(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h))+)")


@final
class OllamaBackend:
    """Sends requests to an Ollama server and streams its answers.

    ``Request.prompt`` goes to ``POST /api/generate``, ``Request.messages``
    to ``POST /api/chat``, both streamed (Ollama's newline-delimited JSON).
    ``Request.max_tokens`` becomes ``options.num_predict``.  The keys of
    ``Request.options`` that are request fields in Ollama's API (``format``,
    ``system``, ``template``, ``raw``, ``keep_alive``, ``think``,
    ``suffix``, ``images``, ``context``, ``tools``, ``truncate``, ``shift``)
    go into the request body; every other key (``temperature``,
    ``seed``, ``stop``, ``num_ctx``, ``top_k``, ...) goes into its ``options``,
    unchanged (an ``options`` mapping is merged into it; the output limit is
    ``Request.max_tokens``, and :class:`~sjfsched.Request` refuses one in its
    options).  ``model``, ``prompt``, ``messages`` and ``stream`` are the
    backend's to set: a request that sets one fails with
    ``BackendError``, and so does a chat that sets a field only
    ``/api/generate`` has (``system``, ``images``, ``template``, ``raw``,
    ``suffix``, ``context``), which ``/api/chat`` would ignore, and a
    prompt that sets ``tools``, a field only ``/api/chat`` has, and one that
    sets ``logprobs`` or ``top_logprobs`` (a :class:`~sjfsched.Chunk` has no
    place for log probabilities).

    Token counts are Ollama's own: each streamed line counts as one token and
    the final line's ``eval_count`` makes the sum exact; its
    ``prompt_eval_count`` is the prompt's length (absent from a server that
    leaves it out) and ``done_reason`` the finish reason.

    ``slots`` is how many requests the server runs at once: 1 for a default
    Ollama, ``N`` with ``OLLAMA_NUM_PARALLEL=N``.  A
    :class:`~sjfsched.Scheduler` takes its concurrency from it.

    Errors reach the caller as :class:`~sjfsched.BackendError` carrying
    Ollama's own message (``{"error": "..."}``) and ``status_code``: an
    unknown model is a 404 (``model 'x' not found``), a full Ollama queue a
    503 (``server busy``).  Failures of the server or the network (connection
    refused or lost, timeouts, 5xx, a malformed stream, an error line in the
    stream) are :class:`BackendUnavailable`, the subclass a
    :class:`BackendPool` takes out of rotation; a generation Ollama stopped
    at its token repeat limit is a plain ``BackendError``, the request's
    doing.  ``connect_timeout`` (default
    5 s) bounds connecting; ``read_timeout`` (default 300 s, ``None`` for no
    bound) bounds the wait for each next line, model loading and prompt
    evaluation included.

    Cancelling the caller closes the HTTP stream, which makes Ollama stop
    generating that answer.

    ``keep_alive`` (e.g. ``"10m"``, or ``-1`` for ever) is sent with every
    request that does not set its own.  ``headers`` are added to every request
    (a proxy's ``Authorization``, say).  The backend's own HTTP client allows
    a connection for each of its ``slots`` (at least 100, httpx's default).
    It honours the proxies the environment names (``HTTP_PROXY``, ``ALL_PROXY``,
    ``NO_PROXY``) except for a server on this machine (``localhost``, a
    loopback address), which it reaches directly.
    Pass your own ``httpx.AsyncClient`` as ``client`` to share a connection
    pool (it is not closed by :meth:`aclose`; the timeouts are then the
    client's, and so are its connection limits: let them allow ``slots``
    connections, e.g. ``httpx.Limits(max_connections=slots)``, or the streams
    beyond them wait for a connection and fail after its pool timeout).
    """

    def __init__(
        self,
        model: str,
        base_url: str = "http://127.0.0.1:11434",
        *,
        slots: int = 1,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        keep_alive: str | float | None = None,
        headers: Mapping[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty str (an Ollama model name), got {model!r}")
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be an int >= 1, got {slots!r}")
        if keep_alive is not None and (
            isinstance(keep_alive, bool)
            or not isinstance(keep_alive, (str, int, float))
            or (not isinstance(keep_alive, str) and not math.isfinite(keep_alive))
        ):
            raise ValueError(
                f"keep_alive must be a duration string or a number of seconds, got {keep_alive!r}"
            )
        if isinstance(keep_alive, str) and not _GO_DURATION.fullmatch(keep_alive):
            # Ollama parses a string as a Go duration and answers 400 to every request otherwise.
            raise ValueError(
                f"keep_alive {keep_alive!r} is not a duration Ollama reads: give a number and a unit "
                '("10m", "1h30m", "-1m" for ever) or a number of seconds (-1 for ever)'
            )
        import_httpx("OllamaBackend", "ollama")  # without the ollama extra: fail here, not on every request
        self.model = model
        self.slots = slots
        self.keep_alive = keep_alive
        self._http = HttpSettings(
            service="Ollama",
            extra="ollama",
            base_url=base_url,
            slots=slots,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            headers=headers,
            client=client,
        )

    @property
    def base_url(self) -> str:
        return self._http.base_url

    def __repr__(self) -> str:
        return f"OllamaBackend({self.model!r}, {self._http.shown_url!r}, slots={self.slots})"

    def body(self, request: Request) -> tuple[str, dict[str, Any]]:
        """The endpoint and JSON body Ollama gets for ``request``."""
        body: dict[str, Any] = {"model": self.model}
        if request.messages is not None:
            path = "/api/chat"
            body["messages"] = [_message(m, i) for i, m in enumerate(request.messages)]
        else:
            path = "/api/generate"
            body["prompt"] = request.prompt
        body["stream"] = True
        options: dict[str, Any] = {}
        for key, value in request.options.items():
            if key in _RESERVED:
                raise BackendError(f"OllamaBackend sets {key!r} itself; remove it from Request.options")
            if key in _UNREAD and value:
                raise log_probabilities_refused("OllamaBackend", key, "Ollama")
            if key in _TOP_LEVEL:
                if path == "/api/chat" and key in _GENERATE_ONLY:
                    raise BackendError(
                        f"OllamaBackend: {key!r} is a field of /api/generate, not of /api/chat "
                        f"(Request.messages); {_GENERATE_ONLY[key]}"
                    )
                if path == "/api/generate" and key in _CHAT_ONLY:
                    raise BackendError(
                        f"OllamaBackend: {key!r} is a field of /api/chat, not of /api/generate "
                        f"(Request.prompt), which would ignore it; {_CHAT_ONLY[key]}"
                    )
                body[key] = _images(value) if key == "images" else value
            elif key == "options" and isinstance(value, Mapping):
                options.update(value)
            elif key == "max_tokens":  # no limit (None, 0 or less): Request refuses a cap here
                if value is not None:
                    options["num_predict"] = value
            else:
                options[key] = value
        if options.get("num_predict", 0) is None:  # no limit: Ollama's default
            del options["num_predict"]
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        if isinstance(options.get("stop"), str):  # Ollama takes a list only (500 for a string)
            options["stop"] = [options["stop"]]
        for key, value in options.items():
            _check_option(key, value)
        if options:
            body["options"] = options
        if self.keep_alive is not None:
            body.setdefault("keep_alive", self.keep_alive)
        return path, body

    async def stream(self, request: Request, /) -> AsyncIterator[Chunk]:
        path, body = refused_unsent(self.body, request)
        chat = request.messages is not None
        async with self._http.stream_lines(path, body) as lines:
            counted = 0
            last: str | None = None  # the latest piece's output, trimmed,
            repeats = 0  # and how often in a row
            async for raw in lines:
                line = raw.strip()
                if not line:
                    continue
                message = _parse_line(line)
                text, thinking, tool_calls = _text_of(message, chat)
                if message.get("done") is True:
                    yield _final_chunk(message, text, counted, thinking, tool_calls)
                    await self._http.read_tail(lines)  # after the answer: so the connection is kept
                    return
                if text or thinking or tool_calls:
                    counted += 1
                    # As Ollama compares the model's raw output: thinking included; a line of
                    # tool calls is no piece the model repeated.
                    piece = None if tool_calls else (thinking + text).strip()
                    repeats = repeats + 1 if piece is not None and piece == last else 1
                    last = piece
                    yield Chunk(text, thinking=thinking, tool_calls=tool_calls)
        # The body ended in good order (a broken connection is BackendUnavailable from the
        # transport) with no final line.  Ollama (before ollama#18374) ends so when it stops a
        # generation that has written one piece over 30 times in a row, trimmed (its token
        # repeat limit): the request's doing, not the server's fault.  Any other such end is.
        if repeats >= _REPEAT_LIMIT:
            raise BackendError(
                f"Ollama at {self._http.shown_url} ended the answer without its final line (done: "
                f"true) after {repeats} pieces alike, as Ollama does when it stops a generation "
                "that keeps repeating one token (its token repeat limit)"
            )
        raise BackendUnavailable(
            f"Ollama at {self._http.shown_url} ended the stream before its final line (done: true)"
        )

    async def models(self) -> list[str]:
        """The names of the models the server has (``GET /api/tags``)."""
        tags = await self._http.get_json("/api/tags")
        models = tags.get("models") if isinstance(tags, Mapping) else None
        if not isinstance(models, list):
            raise BackendUnavailable(f"Ollama at {self._http.shown_url} sent an unexpected /api/tags answer")
        return [m["name"] for m in models if isinstance(m, Mapping) and isinstance(m.get("name"), str)]

    async def aclose(self) -> None:
        """Close this event loop's HTTP client of the backend's own (one passed in is yours to close)."""
        await self._http.aclose()


def _message(message: Mapping[str, Any], i: int) -> dict[str, Any]:
    """One chat message as Ollama reads it: content as a string, images as base64.

    Ollama's ``content`` is a string: a list of OpenAI-style parts is sent as
    its text parts joined by newlines, its images (``data:`` URLs) in the
    message's ``images``.  Anything else Ollama cannot take is refused here.
    """
    out = dict(message)
    where = f"Request.messages[{i}]"
    content = out.get("content")
    images = _images(out["images"]) if "images" in out else None
    if isinstance(content, (list, tuple)):
        found: list[object] = []
        for part in content:
            if isinstance(part, str):
                continue  # text: read below, as Request.text reads it
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            if isinstance(part, Mapping) and kind in ("text", None) and isinstance(part.get("text"), str):
                continue
            if kind == "image_url":
                found.append(_data_url(part.get("image_url"), where))
            else:
                raise BackendError(
                    f"OllamaBackend: {where} has a content part Ollama cannot take "
                    f"({kind!r}); Ollama reads text and images only"
                )
        out["content"] = content_text(content)
        if found:
            images = [*images, *found] if isinstance(images, (list, tuple)) else found
    if images is not None:
        out["images"] = images
    return out


def _data_url(value: object, where: str) -> str:
    """The base64 data of an ``image_url`` part (a ``data:`` URL), which is what Ollama takes."""
    url = value.get("url") if isinstance(value, Mapping) else value
    if isinstance(url, str) and url.startswith("data:") and ";base64," in url:
        return url.partition(";base64,")[2]
    shown = url[:60] if isinstance(url, str) else type(url).__name__
    raise BackendError(
        f"OllamaBackend: {where} has an image_url Ollama cannot fetch ({shown!r}): Ollama takes "
        "images as base64 data, so give a data: URL or the image's bytes in the message's 'images'"
    )


def _images(value: object) -> object:
    """Images for Ollama: bytes become base64 text (Ollama's JSON carries them so); others as given."""
    if not isinstance(value, (list, tuple)):
        return value  # Ollama's 400 says what it wants
    return [
        base64.b64encode(bytes(image)).decode("ascii")
        if isinstance(image, (bytes, bytearray, memoryview))
        else image
        for image in value
    ]


def _parse_line(line: str) -> Mapping[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        raise BackendUnavailable(f"Ollama sent a malformed line: {line[:200]!r}") from None
    if not isinstance(message, Mapping):
        raise BackendUnavailable(f"Ollama sent a malformed line: {line[:200]!r}")
    error = message.get("error")
    if error is not None:
        # An error after the stream began: the status line already said 200.
        if isinstance(error, str) and "token repeat limit" in error:
            # The generation kept repeating one token and Ollama stopped it: the request's
            # doing, not the server's fault (a pool keeps the server in rotation).
            raise BackendError(f"Ollama stopped the generation: {error}")
        raise BackendUnavailable(f"Ollama failed while generating: {error}")
    return message


def _text_of(message: Mapping[str, Any], chat: bool) -> tuple[str, str, tuple[Mapping[str, Any], ...]]:
    """The answer text of one line, its thinking, and its tool calls (whole, as Ollama sends them)."""
    if chat:
        body = message.get("message")
        if not isinstance(body, Mapping):
            return "", "", ()
        content, thinking, calls = body.get("content"), body.get("thinking"), body.get("tool_calls")
    else:
        # Tool calls a model's own parser found (GenerateResponse.ToolCalls, on the final line).
        content, thinking, calls = message.get("response"), message.get("thinking"), message.get("tool_calls")
    return (
        content if isinstance(content, str) else "",
        thinking if isinstance(thinking, str) else "",
        tuple(c for c in calls if isinstance(c, Mapping)) if isinstance(calls, list) else (),
    )


def _final_chunk(
    message: Mapping[str, Any],
    text: str,
    counted: int,
    thinking: str,
    tool_calls: tuple[Mapping[str, Any], ...],
) -> Chunk:
    eval_count = usable_count(message.get("eval_count"))
    tokens = (1 if text else 0) if eval_count is None else max(0, eval_count - counted)
    reason = message.get("done_reason")
    return Chunk(
        text,
        tokens=tokens,
        prompt_tokens=usable_count(message.get("prompt_eval_count")),
        finish_reason=reason if isinstance(reason, str) else "stop",
        thinking=thinking,
        tool_calls=tool_calls,
    )
