"""``wrap(llm)``: a thread-safe, shortest-job-first drop-in for ``llama_cpp.Llama``."""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, final

from typing_extensions import Self

from ._records import Request
from ._sync import SyncScheduler
from .backends._llama import TokenCounter, counting_processors, llama_lock, recording_samples

if TYPE_CHECKING:
    from llama_cpp import Llama


__all__ = ["ScheduledLlama", "wrap"]


def wrap(llm: Llama, /, **scheduler_options: Any) -> ScheduledLlama:
    """Make ``llm`` safe to call from many threads, shortest job first.

    Returns a :class:`ScheduledLlama`: an object with the same
    ``create_completion``, ``create_chat_completion`` and ``__call__`` as
    ``llm`` (same arguments, same return values, ``stream=True`` iterators
    included).  An existing threaded program changes one line::

        llm = sjfsched.wrap(llama_cpp.Llama("model.gguf"))

    and its threads may then call ``llm`` at once: each call waits its turn,
    the one predicted shortest first, and only one runs on the model at a
    time.  ``scheduler_options`` are :class:`~sjfsched.Scheduler`'s
    (``predictor``, ``aging``, ``max_wait``, ``max_queue``, ...), except that
    ``concurrency`` can only be 1: a ``Llama`` runs one call at a time, and
    calls admitted together would wait on its lock in no useful order
    (``ValueError``).
    """
    return ScheduledLlama(llm, **scheduler_options)


@final
class ScheduledLlama:
    """A ``llama_cpp.Llama`` whose completion calls are admitted shortest-first.

    Made by :func:`wrap`.  ``create_completion``, ``create_chat_completion``
    and calling the object take exactly the arguments of the ``Llama``
    methods and return what they return.  Each call becomes a
    :class:`~sjfsched.Request` (the prompt or the chat, ``max_tokens``) for
    the scheduler; when its turn comes the real method runs in the calling
    thread while every other call waits.

    A streaming call (``stream=True``) takes its turn when iteration starts
    and holds the model until the iterator is exhausted or closed: read it to
    the end, or close it (``iterator.close()``, or leave a ``for`` loop and
    drop it) so the next caller can go.

    Every other attribute is the ``Llama``'s own (``tokenize``, ``metadata``,
    ...), unscheduled.  :attr:`scheduler` gives the
    :class:`~sjfsched.SyncScheduler` (for ``statistics()``); :meth:`close`
    stops it (waiting calls fail with :class:`~sjfsched.SchedulerClosed`)
    and leaves the ``Llama`` open.  Use the object as a context manager to
    close it at the end.
    """

    def __init__(self, llm: Llama, /, **scheduler_options: Any) -> None:
        if not callable(getattr(llm, "create_completion", None)) or not callable(
            getattr(llm, "create_chat_completion", None)
        ):
            raise TypeError(f"wrap() needs a llama_cpp.Llama, got {type(llm).__name__}")
        concurrency = scheduler_options.get("concurrency")
        if concurrency is not None and (isinstance(concurrency, bool) or concurrency != 1):
            raise ValueError(
                f"wrap() runs one call on the model at a time, so concurrency must be 1 (or left out), "
                f"got {concurrency!r}: more calls admitted at once would only queue on the model's "
                f"lock, in lock order, not shortest first"
            )
        self._llm = llm
        self._lock = llama_lock(llm)
        self._completion_signature = inspect.signature(llm.create_completion)
        self._chat_signature = inspect.signature(llm.create_chat_completion)
        self._scheduler = SyncScheduler(None, **scheduler_options)

    @property
    def llm(self) -> Llama:
        """The wrapped ``Llama``."""
        return self._llm

    @property
    def scheduler(self) -> SyncScheduler:
        """The scheduler every call goes through."""
        return self._scheduler

    def close(self) -> None:
        """Stop the scheduler (the ``Llama`` stays open)."""
        self._scheduler.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not ours, and not to be forwarded (copy, pickle)
            raise AttributeError(name)
        return getattr(self._llm, name)

    def __repr__(self) -> str:
        return f"wrap({self._llm!r})"

    # ----------------------------------------------------------- the calls

    def create_completion(self, *args: Any, **kwargs: Any) -> Any:
        """``Llama.create_completion``, admitted shortest-first."""
        bound = self._completion_signature.bind(*args, **kwargs)
        values = _with_defaults(bound)
        prompt = values["prompt"]
        if not isinstance(prompt, str):  # a list of token ids
            tokens = list(prompt)
            _check_token_ids(tokens, self._llm.n_vocab())  # llama.cpp aborts the process on a bad one
            prompt = self._llm.detokenize(tokens).decode("utf-8", errors="replace")
        request = Request(prompt, max_tokens=_max_tokens(values.get("max_tokens")))
        return self._run(self._llm.create_completion, bound, request, bool(values.get("stream")))

    def create_chat_completion(self, *args: Any, **kwargs: Any) -> Any:
        """``Llama.create_chat_completion``, admitted shortest-first."""
        bound = self._chat_signature.bind(*args, **kwargs)
        values = _with_defaults(bound)
        messages = values["messages"]
        if isinstance(messages, Iterable) and not isinstance(messages, (str, bytes, Mapping, Sequence)):
            # an iterator of messages (which the Llama reads once): read here, and handed on as a list
            messages = bound.arguments["messages"] = list(messages)
        limit = _max_tokens(values.get("max_tokens"))
        try:
            # llama.cpp answers an empty chat (from the template alone); so does the wrapper
            request = (
                Request(messages=messages, max_tokens=limit) if messages else Request("", max_tokens=limit)
            )
        except TypeError as exc:
            raise TypeError(
                "create_chat_completion(messages=...) under wrap(): the wrapper reads the chat to rank "
                f"the call, and needs a list of message dicts (a str 'role'; a str, or a list of parts, "
                f"as 'content'): {exc}"
            ) from exc
        return self._run(self._llm.create_chat_completion, bound, request, bool(values.get("stream")))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``Llama.__call__`` (which is ``create_completion``), admitted shortest-first."""
        return self.create_completion(*args, **kwargs)

    def create_chat_completion_openai_v1(self, *args: Any, **kwargs: Any) -> Any:
        """``Llama.create_chat_completion_openai_v1``: the chat call above, typed with the openai package."""
        # llama-cpp-python's own method, run on the wrapper: its create_chat_completion is
        # the scheduled one (forwarded as it was, it ran on the bare model, past the lock).
        return type(self._llm).create_chat_completion_openai_v1(self, *args, **kwargs)  # type: ignore[arg-type]

    def _run(
        self, method: Callable[..., Any], bound: inspect.BoundArguments, request: Request, stream: bool
    ) -> Any:
        if stream:
            return self._stream(method, bound, request)
        with self._scheduler.admit(request) as ticket, self._lock:
            result = method(*bound.args, **bound.kwargs)
            usage = result.get("usage") or {}
            completion_tokens = usage.get("completion_tokens")
            if isinstance(completion_tokens, int):
                prompt_tokens = usage.get("prompt_tokens")
                ticket.report(completion_tokens, prompt_tokens if isinstance(prompt_tokens, int) else None)
            return result

    def _stream(
        self, method: Callable[..., Any], bound: inspect.BoundArguments, request: Request
    ) -> Iterator[Any]:
        # Count the tokens as the model samples them (the stream has no usage).
        counter = TokenCounter()
        extra = bound.arguments.get("logits_processor")
        bound.arguments["logits_processor"] = counting_processors(counter, extra)
        if bound.arguments.get("stopping_criteria") is not None:
            bound.arguments["stopping_criteria"] = counter.watch(bound.arguments["stopping_criteria"])
        with (
            self._scheduler.admit(request) as ticket,
            self._lock,
            recording_samples(self._llm, counter),
        ):
            iterator = iter(method(*bound.args, **bound.kwargs))
            first = True
            try:
                for chunk in iterator:
                    if first:
                        first = False
                        ticket.first_token()  # reads the scheduler's clock through its loop
                    yield chunk
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
            # What llama.cpp's usage would say: the sampled tokens, less an
            # end of generation (a stop string's last token is answer text).
            ticket.report(counter.answer_tokens(self._llm), counter.prompt_tokens)


def _with_defaults(bound: inspect.BoundArguments) -> dict[str, Any]:
    values = dict(bound.signature.parameters)
    out = {name: p.default for name, p in values.items() if p.default is not inspect.Parameter.empty}
    out.update(bound.arguments)
    return out


def _check_token_ids(tokens: list[Any], n_vocab: int) -> None:
    """Refuse a token id the model does not have (llama.cpp's detokenizer aborts on it)."""
    for i, token in enumerate(tokens):
        try:
            value = operator.index(token)
        except TypeError:
            continue  # no integer: the Llama's own error names it
        if not 0 <= value < n_vocab:
            raise ValueError(
                f"prompt token id {value} at index {i} is not in the model's vocabulary "
                f"(ids 0 to {n_vocab - 1})"
            )


def _max_tokens(value: object) -> int | None:
    # llama.cpp: None, 0 or a negative number means "until the context is full".
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None
