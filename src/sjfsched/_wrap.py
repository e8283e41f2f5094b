"""``wrap(llm)``: a thread-safe, shortest-job-first drop-in for ``llama_cpp.Llama``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import operator
import os
import threading
import types
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, final

from typing_extensions import Self

from ._errors import SchedulerClosed
from ._records import Request, _as_int
from ._sync import SyncScheduler, _runs_trio
from .backends._llama import (
    CLOSED_LLAMA,
    TokenCounter,
    counting_processors,
    llama_closed,
    llama_lock,
    processor_list,
    recording_samples,
)

_P = ParamSpec("_P")
_R = TypeVar("_R")

if TYPE_CHECKING:
    from llama_cpp import Llama

    def _typed_as(
        method: Callable[Concatenate[Llama, _P], _R], /
    ) -> Callable[[Callable[..., Any]], Callable[Concatenate[ScheduledLlama, _P], _R]]:
        """For type checkers: the decorated method takes and returns what ``method`` does."""
        ...

    _create_completion = Llama.create_completion
    _create_chat_completion = Llama.create_chat_completion
else:

    def _typed_as(method: object, /) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return lambda f: f  # at run time the wrapper checks the arguments against the Llama's own

    _create_completion = _create_chat_completion = None


__all__ = ["ScheduledLlama", "wrap"]

#: The ``Llama`` methods that only read what the model was loaded with (its
#: vocabulary, its sizes): forwarded as they are.  Every other method of the
#: ``Llama`` class reached through the wrapper runs under the model's lock.
_READ_ONLY = frozenset(
    {
        "tokenize",
        "detokenize",
        "tokenizer",
        "n_ctx",
        "n_embd",
        "n_vocab",
        "token_bos",
        "token_eos",
        "token_nl",
        "pooling_type",
    }
)

#: What the next read of a stream says when closing the wrapper closed it.
_CUT = (
    "this stream was closed, its answer cut short, when its own thread closed the wrapper "
    "(wrapped.close(), or the end of `with sjfsched.wrap(llm)`) while it was open"
)


class _Holding:
    """Who holds a ``Llama``'s lock through a wrap() over it, and through what."""

    __slots__ = ("ended", "opened", "thread", "what", "wrapper")

    def __init__(self, wrapper: ScheduledLlama, what: str, opened: _Opened | None) -> None:
        self.wrapper = wrapper
        self.what = what
        self.opened = opened  # a stream (or generate()) that holds the model between reads
        self.thread = threading.get_ident()  # the thread that runs it, or last read the stream
        #: its block was left: a note removed late (an exception landing in the removal) says nothing
        self.ended = False


class _Opened:
    """A stream that holds the model while it is open, and whether closing the wrapper cut it."""

    __slots__ = ("cut", "generator")

    def __init__(self) -> None:
        self.generator: Generator[Any, Any, Any] | None = None
        self.cut = False

    def cut_short(self) -> None:
        if self.generator is not None and not self.running():
            self.cut = True
            self.generator.close()  # leaves its turn and the lock, in this thread

    def running(self) -> bool:
        """Whether it runs now (a callback of the model's, in its own thread)."""
        generator = self.generator
        return generator is not None and inspect.getgeneratorstate(generator) == inspect.GEN_RUNNING


# Who holds each Llama's lock through a wrap() (several wraps over one Llama share it).
_HOLDING: weakref.WeakKeyDictionary[Any, _Holding] = weakref.WeakKeyDictionary()
_HOLDING_GUARD = threading.Lock()


def _in_event_loop() -> bool:
    """Whether this thread runs an event loop (asyncio's, or trio's): a blocking call here
    blocks every task of it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _runs_trio()
    return True


def _ranked_messages(messages: Any) -> Any:
    """The chat as the predictor reads it: a message whose ``content`` is ``None`` reads as empty.

    llama-cpp-python's chat templates take a ``None`` content (a system
    message left empty), and the wrapper hands the chat on as it is.
    """
    if not isinstance(messages, (list, tuple)) or not any(map(_content_none, messages)):
        return messages
    return [{**m, "content": ""} if _content_none(m) else m for m in messages]


def _content_none(message: Any) -> bool:
    return isinstance(message, Mapping) and "content" in message and message["content"] is None


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
    drop it) so the next caller can go.  A call on the model from inside
    the call that holds it (a logits processor calling it) raises
    :class:`RuntimeError` at once: it could only wait for itself.  A call
    between two reads of an open stream waits its turn (another thread may
    read the stream on), so do not call the model from inside the loop over
    your own stream in one thread.

    The other methods of the ``Llama`` that use its context (``generate``,
    ``eval``, ``sample``, ``reset``, ``create_embedding``, ``embed``,
    ``save_state``, ``load_state``, ``set_cache``, ``set_seed``) run under
    the model's lock, unscheduled: each waits until no call runs on the
    model (``generate`` holds it while its generator is open, like a
    stream).  Those that only read what the model was loaded with
    (``tokenize``, ``detokenize``, ``n_ctx``, ``n_vocab``, ...) and data
    attributes (``metadata``, ...) are the ``Llama``'s own.  Setting a public
    attribute sets it on the ``Llama``, under the lock.
    :attr:`scheduler` gives the :class:`~sjfsched.SyncScheduler` (for
    ``statistics()``); :meth:`close` stops it (waiting calls fail with
    :class:`~sjfsched.SchedulerClosed`) and leaves the ``Llama`` open.  Use
    the object as a context manager to close it at the end.
    """

    def __init__(self, llm: Llama, /, **scheduler_options: Any) -> None:
        given: object = llm  # typed a Llama: what untyped code passes may be anything
        if isinstance(given, ScheduledLlama):
            raise TypeError(
                "wrap() needs a llama_cpp.Llama, got a wrap() of one already: use it as it is "
                "(its .llm is the Llama)"
            )
        if not callable(getattr(llm, "create_completion", None)) or not callable(
            getattr(llm, "create_chat_completion", None)
        ):
            path = isinstance(llm, (str, os.PathLike))
            hint = ": give llama_cpp.Llama(path, verbose=False)" if path else ""
            for name in ("client", "_model"):  # LangChain's LlamaCpp, llama-index's LlamaCPP
                inner = getattr(llm, name, None)
                if callable(getattr(inner, "create_completion", None)):
                    back = f"x.{name} = wrap(x.{name})"
                    hint = f": its .{name} is the Llama; wrap that and put it back ({back})"
                    break
            raise TypeError(f"wrap() needs a llama_cpp.Llama, got {type(llm).__name__}{hint}")
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
        """Stop the scheduler (the ``Llama`` stays open).

        A stream of this wrapper that the calling thread holds open is closed
        first (its next read raises :class:`~sjfsched.SchedulerClosed`):
        closing waits for the calls that run, and that one could only wait
        for this thread.  Streams read by other threads are waited for.
        From the thread that holds an open stream of another wrap() of the
        same ``Llama``, while this one has a call admitted (which waits for
        the model), it raises :class:`RuntimeError` once the waiting calls
        have ended: close again after that stream.
        """
        holding = _HOLDING.get(self._llm)
        if holding is not None and not holding.ended and holding.thread == threading.get_ident():
            if holding.wrapper is self:
                if holding.opened is None or holding.opened.running():
                    raise RuntimeError(
                        f"close() from inside {holding.what} on this wrapper (a callback of it) would "
                        f"wait for that call, which waits for close(): close it after the call"
                    )
                # The waiting calls end first: the slot the stream gives back goes to none of them.
                self._stop_admitting()
                holding.opened.cut_short()
            else:
                # This thread holds the model through another wrap() of the same Llama: a call
                # this wrapper admitted waits for the model, so closing would wait for this thread.
                self._stop_admitting()
                if self._scheduler.statistics().running:
                    raise RuntimeError(
                        f"close() from the thread that holds the model through {holding.what} of "
                        f"another wrap() of the same Llama would wait for this wrapper's running call, "
                        f"which waits for the model: "
                        + (
                            "read that stream to the end or close it, then close()"
                            if holding.opened is not None and not holding.opened.running()
                            else "close it after that call"
                        )
                        + " (calls that waited for a turn have ended with SchedulerClosed)"
                    )
        self._scheduler.close()

    def _stop_admitting(self) -> None:
        """End the calls waiting for a turn (SchedulerClosed) and admit no more."""
        with contextlib.suppress(SchedulerClosed):  # closed already: none waits
            self._scheduler.call(self._scheduler.scheduler._stop_admitting)

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
            if name.startswith("__") or name == "_llm":
                raise AttributeError(name)
            raise AttributeError(
                f"{type(self).__name__} does not forward the Llama's private attributes ({name!r}): "
                f"use .llm.{name}, which is the Llama's own, read outside the wrapper's lock",
                name=name,
                obj=self,
            )
        value = getattr(self._llm, name)
        method = inspect.getattr_static(type(self._llm), name, None)
        if name in _READ_ONLY or not isinstance(method, types.FunctionType):
            return value  # a data attribute, a property, a static or class method, or a read
        return self._locked(name, value, generator=inspect.isgeneratorfunction(method))

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):  # the wrapper's own state
            object.__setattr__(self, name, value)
            return
        self._refuse_own(name)
        with self._holding(f"setting {name}"):  # not while a call reads the Llama's attributes
            setattr(self._llm, name, value)

    def __delattr__(self, name: str) -> None:
        if name.startswith("_"):
            object.__delattr__(self, name)
            return
        self._refuse_own(name)
        with self._holding(f"deleting {name}"):
            delattr(self._llm, name)

    def _refuse_own(self, name: str) -> None:
        if hasattr(type(self), name):
            raise AttributeError(
                f"{name!r} is the wrapper's own and cannot be set; the wrapped Llama is wrapped.llm"
            )

    def __repr__(self) -> str:
        return f"wrap({self._llm!r})"

    # ----------------------------------------------------------- the calls

    @_typed_as(_create_completion)
    def create_completion(self, *args: Any, **kwargs: Any) -> Any:
        """``Llama.create_completion``, admitted shortest-first."""
        bound = _bind(self._completion_signature, "create_completion", args, kwargs)
        values = _with_defaults(bound)
        prompt = values["prompt"]
        if not isinstance(prompt, str):  # a list of token ids
            self._check_open_llm()
            tokens = list(prompt)
            _check_token_ids(tokens, self._llm.n_vocab())  # llama.cpp aborts the process on a bad one
            prompt = self._llm.detokenize(tokens).decode("utf-8", errors="replace")
        request = Request(prompt, max_tokens=_max_tokens(values.get("max_tokens")))
        # llama-cpp-python starts the answer to an empty prompt with the BOS, and its usage counts it.
        bos = len(values["prompt"]) == 0
        return self._run(self._llm.create_completion, bound, request, bool(values.get("stream")), bos)

    @_typed_as(_create_chat_completion)
    def create_chat_completion(self, *args: Any, **kwargs: Any) -> Any:
        """``Llama.create_chat_completion``, admitted shortest-first."""
        bound = _bind(self._chat_signature, "create_chat_completion", args, kwargs)
        values = _with_defaults(bound)
        messages = values["messages"]
        if isinstance(messages, Iterable) and not isinstance(messages, (str, bytes, Mapping, Sequence)):
            # an iterator of messages (which the Llama reads once): read here, and handed on as a list
            messages = bound.arguments["messages"] = list(messages)
        limit = _max_tokens(values.get("max_tokens"))
        try:
            if messages is None:
                raise TypeError("got None")
            # llama.cpp answers an empty chat (from the template alone); so does the wrapper
            empty = isinstance(messages, (list, tuple)) and not messages
            request = (
                Request("", max_tokens=limit)
                if empty
                else Request(messages=_ranked_messages(messages), max_tokens=limit)
            )
        except (TypeError, ValueError) as exc:
            raise type(exc)(
                "create_chat_completion(messages=...) under wrap(): the wrapper reads the chat to rank "
                f"the call, and needs a list of message dicts (a str 'role'; a str, or a list of parts, "
                f"as 'content'): {exc}"
            ) from exc
        return self._run(self._llm.create_chat_completion, bound, request, bool(values.get("stream")))

    @_typed_as(_create_completion)
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``Llama.__call__`` (which is ``create_completion``), admitted shortest-first."""
        return self.create_completion(*args, **kwargs)

    def create_chat_completion_openai_v1(self, *args: Any, **kwargs: Any) -> Any:
        """``Llama.create_chat_completion_openai_v1``: the chat call above, typed with the openai package."""
        # llama-cpp-python's own method, run on the wrapper: its create_chat_completion is
        # the scheduled one (forwarded as it was, it ran on the bare model, past the lock).
        return type(self._llm).create_chat_completion_openai_v1(self, *args, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------ the model's lock

    def _refuse_reentry(self, what: str) -> None:
        """A call from inside the call that holds the model could only wait for itself: refuse it.

        That is a call from the model's own callbacks (a logits processor, a
        stopping criterion) while a call or a stream's read runs in this
        thread.  A thread that merely read an open stream last may call: in a
        thread pool another worker may read the stream on, so the call waits
        its turn.  Unless that thread runs an event loop: a stream an async
        task reads in the loop's own thread (llama-index's
        ``astream_complete``) goes on only when the loop runs, which the
        call would block.
        """
        holding = _HOLDING.get(self._llm)
        if (
            holding is not None
            and not holding.ended
            and holding.thread == threading.get_ident()
            and holding.opened is not None
            and not holding.opened.running()
            and _in_event_loop()
        ):
            where = "this wrapper" if holding.wrapper is self else "another wrap() of the same Llama"
            raise RuntimeError(
                f"{what} from an event loop's thread, which reads {holding.what} of {where}: it "
                "would block the loop, and that stream with it, for ever; read the stream to the "
                "end or close it first, or call the model and read its streams in worker threads "
                "(asyncio.to_thread), or use a Scheduler over a LlamaCppBackend in async code"
            )
        if (
            holding is not None
            and not holding.ended
            and holding.thread == threading.get_ident()
            and (holding.opened is None or holding.opened.running())
        ):
            where = "this wrapper" if holding.wrapper is self else "another wrap() of the same Llama"
            advice = (
                "read it to the end or close it first"
                if holding.opened is not None
                else "call the model after that call returns"
            )
            raise RuntimeError(
                f"{what} from the thread that holds the model through {holding.what} of {where}: "
                f"it would wait for that to end, which waits for this thread; {advice}"
            )

    @contextlib.contextmanager
    def _holding(
        self, call: str, held: str | None = None, opened: _Opened | None = None
    ) -> Iterator[_Holding]:
        """The model's lock for ``call``, noted as held by this thread through ``held``.

        The note is for :meth:`_refuse_reentry` and :meth:`close`.
        """
        self._refuse_reentry(call)
        # A blocking acquire: an exception another thread raises in this one while it waits (a
        # call timeout's PyThreadState_SetAsyncExc) lands once the model is free. Waits that
        # could take it sooner (timed acquires in steps, a helper thread handing the lock over)
        # could each leave the lock held by nobody, or this wrapper stuck, when it landed
        # at the wrong moment; ``with`` cannot.
        with self._lock:
            self._check_open_llm()
            holding = _Holding(self, held or call, opened)
            try:
                with _HOLDING_GUARD:
                    _HOLDING[self._llm] = holding
                yield holding
            finally:
                holding.ended = True  # first: a plain store, where no exception can land before it
                with _HOLDING_GUARD:
                    if _HOLDING.get(self._llm) is holding:
                        del _HOLDING[self._llm]

    def _check_open_llm(self) -> None:
        """Refuse a closed ``Llama`` (closed by the program, or by a ``LlamaCppBackend(close_llm=True)``
        over it): a call on it would crash the process."""
        if llama_closed(self._llm):
            raise RuntimeError(f"wrap(): {CLOSED_LLAMA}")

    def _locked(self, name: str, method: Callable[..., Any], *, generator: bool) -> Callable[..., Any]:
        """The ``Llama``'s method ``name``, run under the model's lock (a generator: while it is open)."""
        what = f"{name}()"
        if generator:  # generate()

            @functools.wraps(method)
            def generating(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
                opened = _Opened()

                def held() -> Generator[Any, Any, Any]:
                    with self._holding(what, f"an open {what} generator", opened) as holding:
                        inner = getattr(self._llm, name)(*args, **kwargs)
                        try:
                            item = next(inner)
                            while True:
                                sent = yield item
                                holding.thread = threading.get_ident()  # whoever reads it now
                                item = inner.send(sent)
                        except StopIteration as stop:
                            return stop.value
                        finally:
                            inner.close()

                return (yield from _closable(held(), opened))

            return generating

        @functools.wraps(method)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._holding(what):
                # looked up under the lock: a running stream shadows sample() while it runs
                return getattr(self._llm, name)(*args, **kwargs)

        return locked

    def _run(
        self,
        method: Callable[..., Any],
        bound: inspect.BoundArguments,
        request: Request,
        stream: bool,
        starts_with_bos: bool = False,
    ) -> Any:
        if bound.arguments.get("logits_processor") is not None:
            # Checked at the call, streamed or not; a list that keeps the caller's processors
            # beside a logit_bias (llama-cpp-python's own list would drop both).
            bound.arguments["logits_processor"] = processor_list(bound.arguments["logits_processor"])
        if stream:
            opened = _Opened()
            return _closable(self._stream(method, bound, request, opened, starts_with_bos), opened)
        what = f"a {method.__name__}() call"
        self._refuse_reentry(what)  # before waiting for a turn that could not come
        with self._scheduler.admit(request) as ticket, self._holding(what):
            result = method(*bound.args, **bound.kwargs)
            usage = result.get("usage") or {}
            completion_tokens = usage.get("completion_tokens")
            if isinstance(completion_tokens, int):
                prompt_tokens = usage.get("prompt_tokens")
                ticket.report(
                    completion_tokens,
                    prompt_tokens if isinstance(prompt_tokens, int) else None,
                    finish_reason=_finish_reason(result),
                )
            return result

    def _stream(
        self,
        method: Callable[..., Any],
        bound: inspect.BoundArguments,
        request: Request,
        opened: _Opened,
        starts_with_bos: bool,
    ) -> Generator[Any, None, None]:
        what = f"a {method.__name__}(stream=True) call"
        self._refuse_reentry(what)  # before waiting for a turn that could not come
        # Count the tokens as the model samples them (the stream has no usage).
        counter = TokenCounter(starts_with_bos=starts_with_bos)
        extra = bound.arguments.get("logits_processor")
        bound.arguments["logits_processor"] = counting_processors(counter, extra)
        if bound.arguments.get("stopping_criteria") is not None:
            bound.arguments["stopping_criteria"] = counter.watch(bound.arguments["stopping_criteria"])
        last: Any = None  # the chunk that ends the answer, held until the model is free
        try:
            with (
                self._scheduler.admit(request) as ticket,
                self._holding(what, f"an open {method.__name__}(stream=True) stream", opened) as holding,
                recording_samples(self._llm, counter),
            ):
                self._scheduler._note_reader(ticket._entry)  # a stream: read by this thread so far
                iterator = iter(method(*bound.args, **bound.kwargs))
                first = True
                finish: str | None = None
                try:
                    for chunk in iterator:
                        if first:
                            first = False
                            ticket.first_token()  # the loop's own clock, read from this thread
                        if last is not None:  # more after a finish: it was not the last, then
                            yield last
                            last = None
                        reason = _finish_reason(chunk)
                        finish = reason or finish
                        if reason is not None:
                            # A reader that stops at the answer's end (breaks on finish_reason)
                            # would leave the model held, and its next call wait for itself: the
                            # stream is read to its end (llama-cpp-python saves its cache there)
                            # before this chunk goes out.
                            last = chunk
                            continue
                        yield chunk
                        holding.thread = threading.get_ident()  # whoever reads it now
                        self._scheduler._note_reader(ticket._entry)  # for the scheduler's close()
                finally:
                    close = getattr(iterator, "close", None)
                    if close is not None:
                        close()
                # What llama.cpp's usage would say: the sampled tokens, less an
                # end of generation (a stop string's last token is answer text).
                ticket.report(counter.answer_tokens(self._llm), counter.prompt_tokens, finish_reason=finish)
        except Exception:
            # Raised after the answer's last chunk (llama-cpp-python saves its cache
            # there): the request failed, and the caller gets that chunk, then the
            # error, as from the model itself.
            if last is None:
                raise
            yield last
            raise
        if last is not None:
            yield last


def _closable(inner: Generator[Any, Any, Any], opened: _Opened) -> Generator[Any, Any, Any]:
    """``inner`` (a generator holding the model while open), as the caller's generator.

    Closing the wrapper from the thread that reads it closes ``inner`` (not
    this one, whose caller may read on): the next read raises
    :class:`SchedulerClosed`, as a call made after closing does.
    """
    opened.generator = inner
    result = yield from inner
    if opened.cut:
        raise SchedulerClosed(_CUT)
    return result


def _bind(
    signature: inspect.Signature, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> inspect.BoundArguments:
    """``signature.bind``, its ``TypeError`` naming the method as the ``Llama``'s own does."""
    try:
        return signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"Llama.{name}() {exc}") from None


def _finish_reason(answer: object) -> str | None:
    """The finish reason of a llama-cpp-python answer or stream chunk, if it has one."""
    choices = answer.get("choices") if isinstance(answer, Mapping) else None
    if isinstance(choices, Sequence) and choices and isinstance(choices[0], Mapping):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None
    return None


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
    value = _as_int(value)  # numpy's integers too, as Request takes them
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None
