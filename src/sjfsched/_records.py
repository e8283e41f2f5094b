"""The frozen records that flow through the scheduler.

A :class:`Request` goes in, a :class:`Prediction` is made of it, a backend
streams :class:`Chunk` objects back, and the caller gets a :class:`Completion`.
They are frozen ``attrs`` classes: fields may be added in later versions
without breaking code that builds or reads them by keyword.
"""

from __future__ import annotations

import copyreg
import math
import numbers
import weakref
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, SupportsFloat, SupportsIndex

import attrs
from typing_extensions import TypedDict

__all__ = ["Chunk", "Completion", "Prediction", "Request", "RequestFields"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _copied(value: Any) -> Any:
    """``value`` with its dicts, lists and tuples copied all the way down; anything else shared.

    A request keeps its own copy of the caller's JSON-like values (a chat's
    content parts, ``options["stop"]``), so a caller changing theirs after
    submitting does not change a queued request.  Other objects (a grammar, a
    callable, a ``LogitsProcessorList``) are passed on as they are.
    """
    kind = type(value)  # exactly these: a subclass (llama_cpp's LogitsProcessorList) is the caller's object
    if kind is dict:
        return {k: _copied(v) for k, v in value.items()}
    if kind is list:
        return [_copied(v) for v in value]
    if kind is tuple:
        return tuple(_copied(v) for v in value)
    return value


def _as_int(value: object) -> object:
    """A whole number of any integer type (numpy's too) as an ``int``; anything else as it is."""
    if isinstance(value, bool):  # refused by the field's check, not read as 0 or 1
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    return value


def _int(value: SupportsIndex) -> int:
    """An int field's converter: its ``__init__`` takes any integer by type (numpy's too)."""
    return _as_int(value)  # type: ignore[return-value]  # anything else goes to the field's check


def _opt_int(value: SupportsIndex | None) -> int | None:
    """An optional int field's converter (see :func:`_int`)."""
    return _as_int(value)  # type: ignore[return-value]  # anything else goes to the field's check


def _as_float(value: object) -> object:
    """A real number of any type (numpy's too) as a ``float``; anything else (a bool too) as it is."""
    if isinstance(value, bool):  # refused by the caller's check, not read as 0.0 or 1.0
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def _freeze_mapping(value: object, field: str) -> Mapping[str, Any]:
    if value is None:
        return _EMPTY
    if not isinstance(value, Mapping):
        raise TypeError(f"Request.{field} must be a mapping (a dict), got {type(value).__name__}")
    return MappingProxyType({k: _copied(v) for k, v in value.items()})


#: Names servers give the output limit (Ollama, llama.cpp's server, OpenAI, Hugging Face).
_OUTPUT_LIMITS: Final = ("max_tokens", "num_predict", "n_predict", "max_completion_tokens", "max_new_tokens")


def _freeze_options(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    options = _freeze_mapping(value, "options")
    nested = options.get("options")  # Ollama's own options, which OllamaBackend merges
    for where, mapping in (("", options), ("['options']", nested if isinstance(nested, Mapping) else {})):
        for key in _OUTPUT_LIMITS:
            limit = mapping.get(key)
            # None, 0 or less: no limit (Ollama's -1 and -2 lift a Modelfile's num_predict).
            if isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit <= 0:
                continue
            if limit is not None:
                raise ValueError(
                    f"Request.options{where} sets {key!r}: give the output limit as Request.max_tokens "
                    f"(max_tokens={limit!r}), which the scheduler sees: it caps the prediction at it "
                    "and knows an answer cut there for a lower bound; a limit in the options is hidden "
                    "from it (none, 0 or less, or None, is allowed there)"
                )
    return options


def _freeze_metadata(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return _freeze_mapping(value, "metadata")


def _freeze_messages(messages: Sequence[Mapping[str, Any]] | None) -> tuple[Mapping[str, Any], ...] | None:
    value: object = messages  # typed for the caller; checked here, whatever it is
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            "Request.messages must be a list of chat messages "
            f"(dicts with 'role' and 'content'), got {type(value).__name__}"
        )
    frozen: list[Mapping[str, Any]] = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise TypeError(
                f"Request.messages[{i}] must be a dict with 'role' and 'content', "
                f"got {type(message).__name__}"
            )
        role = message.get("role")
        if not isinstance(role, str):
            raise TypeError(f"Request.messages[{i}]['role'] must be a str, got {type(role).__name__}")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list, tuple)):
            raise TypeError(
                f"Request.messages[{i}]['content'] must be a str or a list of parts, "
                f"got {type(content).__name__}"
            )
        if role_only(message):  # another part ('images', say) may stand in for the text
            raise ValueError(
                f"Request.messages[{i}] ({role!r}) has no 'content': every message but an "
                "assistant's needs its text (or another part, such as 'images')"
            )
        frozen.append(MappingProxyType({k: _copied(v) for k, v in message.items()}))
    if not frozen:
        raise ValueError("Request.messages must hold at least one message")
    return tuple(frozen)


def content_text(content: object) -> str:
    """The text of one message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
        return "\n".join(parts)
    return ""


def _check_max_tokens(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Request.max_tokens must be an int or None, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"Request.max_tokens must be at least 1, got {value}")


def _check_priority(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Request.priority must be an int, got {type(value).__name__}")


def _check_optional_str(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"Request.{attribute.name} must be a str or None, got {type(value).__name__}")


class RequestFields(TypedDict, total=False):
    """The fields of a :class:`Request` given as keywords to ``complete()``, ``stream()`` and
    ``admit()`` (of :class:`Scheduler` and :class:`SyncScheduler`), for type checkers.

    A misspelt field (``max_token=``) or a value of the wrong type is then
    found before the program runs.  At run time a subclass of ``Request``
    may be given its own fields this way too; type checkers know only these
    (set a subclass's own with ``attrs.evolve`` before passing the request).
    """

    prompt: str | None
    messages: Sequence[Mapping[str, Any]] | None
    max_tokens: int | None
    priority: int
    tenant: str | None
    options: Mapping[str, Any]
    metadata: Mapping[str, Any]


@attrs.frozen(eq=False)
class Request:
    """One unit of work for the scheduler: a prompt or a chat, and how to run it.

    Give exactly one of ``prompt`` (plain completion) or ``messages`` (a chat
    in the OpenAI/Ollama shape: a list of ``{"role": ..., "content": ...}``
    dicts).  Everything else is optional:

    - ``max_tokens``: the most output tokens the backend may generate
      (``None``: the backend's own limit).  The scheduler also caps the
      predicted length at it.
    - ``priority``: lower runs earlier, as in ``asyncio.PriorityQueue`` and
      vLLM.  A lower class always goes before a higher one; within a class the
      shortest predicted job goes first.  Default ``0``.
    - ``tenant``: a free label (user, API key, application) for your own
      policies and metrics.
    - ``options``: backend generation options (temperature, seed, stop, ...),
      passed to the backend unchanged.  Not the output limit: a positive
      ``max_tokens``, ``num_predict``, ``max_completion_tokens``, ... there is a
      ``ValueError`` (it is ``max_tokens`` above, where the scheduler sees it);
      none (``None``, 0 or less, such as Ollama's -1) passes.
    - ``metadata``: anything you like; passed through untouched.

    Requests compare and hash by identity: two requests with the same prompt
    are still two units of work.  Bad input raises :class:`TypeError` or
    :class:`ValueError` naming the field.
    """

    prompt: str | None = attrs.field(default=None, validator=_check_optional_str)
    messages: tuple[Mapping[str, Any], ...] | None = attrs.field(
        default=None, converter=_freeze_messages, kw_only=True
    )
    max_tokens: int | None = attrs.field(
        default=None, converter=_opt_int, validator=_check_max_tokens, kw_only=True
    )
    priority: int = attrs.field(default=0, converter=_int, validator=_check_priority, kw_only=True)
    tenant: str | None = attrs.field(default=None, validator=_check_optional_str, kw_only=True)
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_options, kw_only=True)
    metadata: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_metadata, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of Request.prompt or Request.messages")

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled and deep-copied by its fields (its frozen mappings cannot be pickled), a
        # subclass's own too, and its other attributes (instance dict, slots); rebuilt without
        # calling a subclass's __init__ (which may take other arguments). The copy is another
        # request, as requests are compared by identity.
        return (_rebuild_request, (type(self), *self._state()))

    def _state(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Its fields by name (mappings thawed) and a subclass's other attributes (or None)."""
        fields = {field.name: getattr(self, field.name) for field in attrs.fields(type(self))}
        fields.update(
            messages=None if self.messages is None else [dict(m) for m in self.messages],
            options=dict(self.options),
            metadata=dict(self.metadata),
        )
        if type(self) is Request:
            return fields, None
        extra = dict(getattr(self, "__dict__", {}))
        for name in copyreg._slotnames(type(self)):  # type: ignore[attr-defined]
            if name not in fields and name not in ("__dict__", "__weakref__") and hasattr(self, name):
                extra[name] = getattr(self, name)
        return fields, extra or None

    def _replace(self, changes: Mapping[str, Any]) -> Request:
        """A copy with ``changes`` (init arguments) applied, checked as :class:`Request` checks
        them; a subclass keeps its class and attributes without its ``__init__`` being called."""
        fields, extra = self._state()
        names = {f.alias: f.name for f in attrs.fields(type(self)) if f.init}
        unknown = sorted(set(changes) - set(names))
        if unknown:
            known = ", ".join(names)
            raise TypeError(f"{type(self).__name__} has no field {unknown[0]!r}; its fields: {known}")
        fields.update({names[key]: value for key, value in changes.items()})
        request = _rebuild_request(type(self), fields, extra)
        if type(self) is Request:
            return request
        # A subclass: its own fields converted, its validators (which may read the changed
        # fields of Request's) and its __attrs_post_init__ run, as its __init__ would.
        own = {names[key] for key in changes} - {f.name for f in attrs.fields(Request)}
        for field in attrs.fields(type(self)):
            if field.name in own and field.converter is not None:
                value = _convert(field, getattr(request, field.name), request)
                object.__setattr__(request, field.name, value)
        attrs.validate(request)
        post_init = getattr(type(self), "__attrs_post_init__", None)
        if post_init is not None and post_init is not Request.__attrs_post_init__:
            post_init(request)
        return request

    @property
    def text(self) -> str:
        """What predictors read: the prompt, or the last user turn of a chat.

        For a chat without a user turn it is the text of every message, joined
        by newlines.
        """
        if self.prompt is not None:
            return self.prompt
        return _chat_reading(self)[0]

    @property
    def input_chars(self) -> int:
        """Characters of the whole input (every message of a chat).

        The scheduler estimates prompt tokens as ``input_chars / 4`` until the
        backend reports the real count.
        """
        if self.prompt is not None:
            return len(self.prompt)
        return _chat_reading(self)[1]


#: A chat's text and input characters, made at their first read: a predictor reads them several
#: times a request, and a chat of many parts or turns costs in proportion to join.  Kept beside
#: the request, not in it, so that its attrs fields stay its own; by identity (a subclass may
#: compare by value, and hash what cannot be hashed), dropped when the request goes.
_CHAT_READINGS: dict[int, tuple[weakref.ref[Request], tuple[str, int]]] = {}


def _chat_reading(request: Request) -> tuple[str, int]:
    key = id(request)
    held = _CHAT_READINGS.get(key)
    if held is not None and held[0]() is request:
        return held[1]
    messages = request.messages
    assert messages is not None
    texts = [content_text(m.get("content")) for m in messages]  # each message's, read once
    users = [t for m, t in zip(messages, texts, strict=True) if m.get("role") == "user"]
    # The last user turn, else every message joined by newlines; and every message's characters.
    reading = (users[-1] if users else "\n".join(texts), sum(map(len, texts)))

    def forget(_: weakref.ref[Request]) -> None:
        _CHAT_READINGS.pop(key, None)

    _CHAT_READINGS[key] = (weakref.ref(request, forget), reading)
    return reading


def _convert(field: attrs.Attribute[Any], value: object, instance: object) -> object:
    """``value`` through ``field``'s converter, a plain callable or an ``attrs.Converter``."""
    converter: Any = field.converter
    kind = getattr(attrs, "Converter", None)  # attrs >= 24.1
    if kind is not None and isinstance(converter, kind):
        extra = ([instance] if converter.takes_self else []) + ([field] if converter.takes_field else [])
        return converter.converter(value, *extra)
    return converter(value)


def _rebuild_request(
    kind: type[Request] | str | None, fields: dict[str, Any], extra: dict[str, Any] | None = None
) -> Request:
    if not isinstance(kind, type):  # pickled by an earlier version: the prompt, and the other fields
        return Request(kind, **fields)
    # The Request part made as Request makes it (its converters and checks), then given the
    # subclass's class, its own fields and its other attributes as they were.
    base = {f.name for f in attrs.fields(Request)}
    made = Request(**{name: fields[name] for name in base})
    if kind is Request:
        return made
    request = object.__new__(kind)
    for name in base:
        object.__setattr__(request, name, getattr(made, name))
    for name, value in (*fields.items(), *(extra or {}).items()):
        if name not in base:
            object.__setattr__(request, name, value)
    return request


def _number(name: str, value: object) -> None:
    """A real number (numpy's too), not a bool or a string that float() would read."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Prediction.{name} must be a number, got {type(value).__name__} {value!r}")


def _tokens(value: SupportsFloat) -> float:
    if type(value) is float:  # the common case, without the ABC check
        return value
    _number("tokens", value)
    return _float("tokens", value)


def _float(name: str, value: SupportsFloat) -> float:
    """``float(value)``; an int past float's range is refused by name (as too large: not finite)."""
    try:
        return float(value)
    except OverflowError:
        bits = int(value).bit_length()  # type: ignore[call-overload]
        raise ValueError(f"Prediction.{name} must be finite, got an int of {bits:,} bits") from None


def _prompt_tokens(value: SupportsFloat | None) -> float | None:
    if value is None:
        return None
    _number("prompt_tokens", value)
    number = _float("prompt_tokens", value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"Prediction.prompt_tokens must be finite and >= 0, got {value!r}")
    return number


def _check_tokens(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Prediction.tokens must be finite and >= 0, got {value!r}")


def _p_long(value: SupportsFloat | None) -> float | None:
    if value is None or type(value) is float:  # the common cases, without the ABC check
        return value
    _number("p_long", value)
    return float(value)


def _check_p_long(instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not (0.0 <= value <= 1.0):
        raise ValueError(f"Prediction.p_long must be within [0, 1], got {value!r}")


@attrs.frozen
class Prediction:
    """What a predictor expects of a request's answer.

    ``tokens`` is the expected number of output tokens: the scheduler's
    ranking key.  ``p_long`` is, when the predictor knows it, the probability
    that the answer is long (800 tokens or more), as in Clairvoyant.
    ``prompt_tokens`` is the predictor's count of the input's tokens; left
    ``None``, the scheduler takes characters / 4.
    """

    tokens: float = attrs.field(converter=_tokens, validator=_check_tokens)
    p_long: float | None = attrs.field(default=None, converter=_p_long, validator=_check_p_long)
    prompt_tokens: float | None = attrs.field(default=None, converter=_prompt_tokens, kw_only=True)


def _check_chunk_text(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"Chunk.text must be a str, got {type(value).__name__}")


def _check_thinking(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"Chunk.thinking must be a str, got {type(value).__name__}")


def _tool_calls(value: object) -> tuple[Mapping[str, Any], ...]:
    """Tool calls as a tuple of mappings (a list is taken; anything else is a TypeError)."""
    if type(value) is tuple and not value:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(call, Mapping) for call in value):
        raise TypeError(f"Chunk.tool_calls must be a sequence of dicts (the calls), got {value!r:.200}")
    return tuple(value)


def _check_finish_reason(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and type(value) is not str and not isinstance(value, str):
        raise TypeError(f"Chunk.finish_reason must be a str or None, got {type(value).__name__} {value!r}")


#: The most tokens one answer or prompt is taken to have: a count past it is a mistake (a
#: float's range is not far beyond: 10**309 tokens would break the learnt rates).
MAX_TOKEN_COUNT: Final = 1_000_000_000


def usable_count(value: object) -> int | None:
    """A token count a server or model sent, or ``None`` for one no answer could have (not an
    int >= 0, or past :data:`MAX_TOKEN_COUNT`): then the pieces are counted instead."""
    usable = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_COUNT
    return value if usable else None  # type: ignore[return-value]


def role_only(message: Mapping[str, Any]) -> bool:
    """Whether a chat message says nothing: no content and nothing else but its role (and name),
    and not an assistant's (whose turn may be tool calls alone, or none)."""
    return (
        message.get("content") is None
        and message.get("role") != "assistant"
        and not set(message) - {"role", "content", "name"}
    )


def shown_count(value: int) -> str:
    """A count for an error message: its digits, unless there are too many to print (10**5000)."""
    return repr(value) if value.bit_length() <= 256 else f"a number of {value.bit_length():,} bits"


def _check_chunk_tokens(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):  # a wrong type, as Request's checks say
        raise TypeError(f"Chunk.{attribute.name} must be an int >= 0, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"Chunk.{attribute.name} must be an int >= 0, got {shown_count(value)}")
    if value > MAX_TOKEN_COUNT:
        raise ValueError(
            f"Chunk.{attribute.name} must be at most {MAX_TOKEN_COUNT:,}, got {shown_count(value)}"
        )


def _check_opt_count(instance: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None:
        _check_chunk_tokens(instance, attribute, value)


@attrs.frozen
class Chunk:
    """A piece of a streamed answer.

    ``tokens`` is how many output tokens the piece stands for (usually 1).  A
    backend that learns exact counts only at the end (Ollama's ``eval_count``)
    sends a last chunk whose ``tokens`` makes the sum right.  A backend that
    knows the prompt's length in tokens reports it in ``prompt_tokens`` on any
    chunk, and the reason generation stopped in ``finish_reason`` (``"stop"``,
    ``"length"``) on the last one.

    ``thinking`` is a reasoning model's thinking that came with the piece
    (Ollama's ``thinking``, an OpenAI-compatible server's
    ``reasoning_content``), apart from the answer's ``text``.  ``tool_calls``
    are whole tool calls the model made, each in the server's own shape, the
    one to send back in the assistant's message (Ollama's ``{"function":
    {"name": ..., "arguments": {...}}}``; OpenAI's ``{"id": ..., "type":
    "function", "function": {"name": ..., "arguments": "<JSON text>"}}``,
    put together from the streamed pieces and given on the last chunk).
    """

    text: str = attrs.field(validator=_check_chunk_text)
    tokens: int = attrs.field(default=1, converter=_int, validator=_check_chunk_tokens)
    prompt_tokens: int | None = attrs.field(
        default=None, converter=_opt_int, validator=_check_opt_count, kw_only=True
    )
    finish_reason: str | None = attrs.field(default=None, kw_only=True, validator=_check_finish_reason)
    thinking: str = attrs.field(default="", kw_only=True, validator=_check_thinking)
    tool_calls: tuple[Mapping[str, Any], ...] = attrs.field(default=(), kw_only=True, converter=_tool_calls)


@attrs.frozen
class Completion:
    """A finished request: the answer, its size, and when things happened.

    Times are read from the event loop's clock (``anyio.current_time()``), so
    only their differences mean anything: see :attr:`wait`, :attr:`latency`
    and :attr:`time_to_first_token`.
    """

    request: Request
    text: str
    output_tokens: int
    prompt_tokens: int | None
    prediction: Prediction
    #: The estimated service time (seconds) the scheduler ranked the request by.
    estimate: float
    submitted: float
    started: float
    first_token: float | None
    finished: float
    finish_reason: str | None = None
    #: True when the request ran because it had waited longer than ``max_wait``.
    promoted: bool = False
    #: Times the answer was paused for a request ranked before it (``Scheduler(preempt=True)``).
    preemptions: int = 0
    #: A reasoning model's thinking, apart from the answer (the chunks' ``thinking``).
    thinking: str = ""
    #: The tool calls the model made, in the server's own shape (the chunks' ``tool_calls``).
    tool_calls: tuple[Mapping[str, Any], ...] = ()

    @property
    def wait(self) -> float:
        """Seconds spent in the queue."""
        return self.started - self.submitted

    @property
    def latency(self) -> float:
        """Seconds from submission to the last token."""
        return self.finished - self.submitted

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from submission to the first output, if any came."""
        return None if self.first_token is None else self.first_token - self.submitted
