"""An in-process llama.cpp model (llama-cpp-python's ``Llama``) as a backend."""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import operator
import os
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final, final

import anyio
import anyio.to_thread
import attrs

from .._errors import BackendError, BackendUnavailable
from .._records import Chunk, Request
from ._base import ToolCallPieces, goes_on_as_it_was, resume_by_continuation

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from llama_cpp import Llama

__all__ = ["LlamaCppBackend"]

# One lock per Llama, shared by every LlamaCppBackend and wrap() over it: a
# Llama holds one context and one KV cache and is not thread-safe, so two
# generations must never overlap (llama-cpp-python#1529, #471).
_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()

# What our stream() sets itself; an option of the same name is refused.
_RESERVED = frozenset({"prompt", "messages", "stream"})
#: Options of other servers (Ollama, llama.cpp's server, OpenAI) that ``Llama`` takes under
#: another name or not per call: what to use instead, for the error that refuses them.
_ELSEWHERE = {
    "num_predict": "use Request.max_tokens",
    "n_predict": "use Request.max_tokens",
    "max_completion_tokens": "use Request.max_tokens",
    "num_ctx": "the context size is the Llama's own: Llama(..., n_ctx=N)",
}

_DONE = object()

#: How often a thread waiting for a Llama's lock looks whether its waiter gave up.
_WAIT_STEP = 0.1


def llama_lock(llm: Llama) -> threading.Lock:
    """The lock that serialises generations on ``llm`` (one per ``Llama``)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(llm)
        if lock is None:
            lock = _LOCKS[llm] = threading.Lock()
        return lock


@attrs.define
class TokenCounter:
    """Counts the tokens llama.cpp samples, through a logits processor.

    llama-cpp-python calls every logits processor once per sampled token with
    the tokens evaluated so far: the prompt, then the prompt and each output
    token but the newest.  So the first call tells the prompt's length in the
    model's own tokens, and the number of calls is the number of tokens
    sampled, an end-of-generation token included.  Which token came last,
    an end-of-generation one or not, only the sampler knows:
    :func:`recording_samples` keeps it in ``last``.
    """

    prompt_tokens: int | None = None
    #: The prompt's tokens (what llama-cpp-python detokenizes the answer after).
    prompt_ids: list[int] | None = None
    sampled: int = 0
    last: int | None = None
    #: The caller's stopping criteria stopped the generation right after the
    #: newest sample, which llama-cpp-python then drops (see :meth:`watch`).
    dropped: bool = False
    #: The answer starts with the BOS token, which ``usage`` counts: llama-cpp-python
    #: starts the answer to an empty prompt with it (the BOS is all it evaluates).
    starts_with_bos: bool = False
    _criteria_after: int = -1

    def __call__(
        self, input_ids: npt.NDArray[np.intc], scores: npt.NDArray[np.single]
    ) -> npt.NDArray[np.single]:
        if self.prompt_tokens is None:
            self.prompt_ids = input_ids.tolist()
            self.prompt_tokens = len(self.prompt_ids)
        self.sampled += 1
        return scores

    def watch(self, criteria: Any) -> Any:
        """The caller's ``stopping_criteria``, watched for the sample they make llama.cpp drop.

        llama-cpp-python asks the criteria once after each sample and, when
        they say stop, ends without that sample; it asks them once more at
        the very end, which drops nothing.  So only the first answer after
        each sample counts.
        """
        if criteria is None:
            return None

        def watched(input_ids: Any, logits: Any) -> bool:
            stop = bool(criteria(input_ids, logits))
            if self.sampled != self._criteria_after:
                self._criteria_after = self.sampled
                self.dropped = stop
            return stop

        return watched

    def answer_tokens(self, llm: Llama) -> int:
        """The tokens of the answer so far, as llama.cpp's ``usage`` counts them.

        Every sampled token but a last one that ended the generation without
        being text: an end-of-generation token, or the sample after which the
        caller's stopping criteria said stop.  The token that completes a
        stop string (ours, the caller's or a chat template's) is answer text,
        and so is the BOS that starts an answer to an empty prompt.
        """
        bos = 1 if self.starts_with_bos else 0
        if self.dropped or (self.last is not None and _is_end_of_generation(llm, self.last)):
            return bos + max(0, self.sampled - 1)
        return bos + self.sampled


@contextlib.contextmanager
def recording_samples(
    llm: Llama, counter: TokenCounter, then: Callable[[int], None] | None = None
) -> Iterator[None]:
    """Keep the token each ``llm.sample()`` returns in ``counter.last``, for the block.

    ``then``, if given, is called with each token after that (an exception
    from it ends the generation).  The block must hold the Llama's lock
    (:func:`llama_lock`): the recorder is an attribute of this ``Llama``
    object (it shadows the method), put back as it was on leaving.
    """
    attributes = vars(llm)
    before = attributes.get("sample", _DONE)
    sample = llm.sample

    def recorded(*args: Any, **kwargs: Any) -> Any:
        token = sample(*args, **kwargs)
        counter.last = int(token)
        if then is not None:
            then(counter.last)
        return token

    attributes["sample"] = recorded
    try:
        yield
    finally:
        if before is _DONE:
            attributes.pop("sample", None)
        else:
            attributes["sample"] = before


def _is_end_of_generation(llm: Llama, token: int) -> bool:
    import llama_cpp

    vocab = getattr(getattr(llm, "_model", None), "vocab", None)
    is_eog = getattr(llama_cpp, "llama_vocab_is_eog", None)
    if vocab is not None and is_eog is not None:
        return bool(is_eog(vocab, token))
    return token == llm.token_eos()  # pragma: no cover - llama-cpp-python before 0.3.6


class _Cancelled(Exception):
    """Raised inside llama.cpp's generation, at its next sample, once the caller was cancelled."""


async def _next(iterator: Iterator[Any], watcher: _StopStrings) -> Any:
    """``next(iterator, _DONE)`` in a worker thread; cancelled, it ends at the next sample.

    One ``next()`` on llama-cpp-python's stream runs until it has text to hand
    out: many samples when they are bytes of no whole character.  So the call
    is given up at once when the caller is cancelled, and the generation told
    to end at its next sample, which is waited for (shielded) before the
    cancellation goes on: the model is free when this returns.  A call not
    started yet when the cancellation comes (anyio may never start it) never
    touches the model.
    """
    guard = threading.Lock()
    phase = ["queued"]  # queued -> running -> done, or queued -> given up
    done = threading.Event()

    def step() -> Any:
        with guard:
            if phase[0] == "given up":
                return _DONE
            phase[0] = "running"
        try:
            return next(iterator, _DONE)
        finally:
            with guard:
                phase[0] = "done"
            done.set()

    try:
        return await anyio.to_thread.run_sync(step, abandon_on_cancel=True)
    except BaseException:  # cancelled; or Ctrl-C, which trio delivers by abandoning the wait too
        with guard:
            running = phase[0] == "running"
            if phase[0] == "queued":
                phase[0] = "given up"
        if running:  # the wait was given up while the read runs: end it at its next sample
            watcher.cancelled = True
            with anyio.CancelScope(shield=True):
                while not done.is_set():  # noqa: ASYNC110  # set by the worker thread: polled
                    await anyio.sleep(0.002)
        raise


def llama_closed(llm: object) -> bool:
    """Whether a ``Llama`` was closed (``close()`` frees its context and model; a call on it
    then crashes the process)."""
    context = getattr(llm, "_ctx", None)
    model = getattr(llm, "_model", None)
    return getattr(context, "ctx", True) is None or getattr(model, "model", True) is None


#: Why a closed ``Llama`` is refused (by a backend, or by a ``wrap()`` over it).
CLOSED_LLAMA: Final = (
    "the llama_cpp.Llama is closed (close() was called on it, or on a "
    "LlamaCppBackend(close_llm=True) over it); make a new one"
)


def failure(exc: BaseException) -> str:
    """What a ``BackendError`` says of llama-cpp-python's own exception (its type where its
    message says nothing)."""
    return str(exc) or type(exc).__name__


class _StopFound(Exception):
    """Raised inside llama.cpp's generation when one of our stop strings is complete: it ends there."""

    def __init__(self, text: bytes) -> None:
        super().__init__("stop string found")
        self.text = text  # the answer's bytes before the stop string


class _StopStrings:
    """Our ``stop`` strings, looked for as llama-cpp-python looks for its own.

    The backend keeps ``stop`` from llama-cpp-python, whose stream loses the
    text it held back as a stop string's possible start when the answer
    ends at ``max_tokens`` ("a€" comes out as "a" with the stop "€b").  But
    the text that stream hands out is not where llama-cpp-python looks for
    stop strings either: after an invalid or incomplete UTF-8 byte it hands
    out nothing more until the end.  llama-cpp-python looks in the bytes of
    the tokens sampled so far, after each sample; so does this, as it does:
    no look while its check for a character's first byte near the end says
    wait, then the first stop string (in the order given) found ends the
    generation, the token that completed it counted, as in ``usage``.

    :meth:`sampled` runs after each ``Llama.sample`` (see
    :func:`recording_samples`) and ends the generation by raising
    :class:`_StopFound` out of it; with the caller's stopping criteria,
    which llama-cpp-python asks after the sample and which drop it when they
    say stop, :meth:`criteria` raises it after asking them instead.

    With no stop strings it only learns :attr:`first_raw` (whether the
    answer's text starts with a space llama.cpp drops, see
    :attr:`drops_leading_space`), then stops decoding.
    """

    def __init__(self, llm: Llama, stops: tuple[str, ...], counter: TokenCounter) -> None:
        self._llm = llm
        self.stops = stops
        self._stops = [s.encode("utf-8") for s in stops]
        self._counter = counter
        self._bos = llm.token_bos()
        self._tokens: list[int] = [self._bos] if counter.starts_with_bos else []
        self._multibyte = 0
        self._criteria = False
        self._found: bytes | None = None
        # The answer's bytes so far, and how far the last look reached.  llama.cpp's own
        # tokenizer decodes token by token (its only context rule: the leading space after a
        # first BOS goes), so the bytes grow by each new token's alone; any other tokenizer
        # (an HF one given to the Llama) is asked for the whole answer, as llama-cpp-python asks.
        self._text = b""
        #: Set when the caller is cancelled: the next sample ends the generation (a call of
        #: ``next()`` on llama-cpp-python's stream can run for many samples).
        self.cancelled = False
        self._last_at: int | None = None  # where the newest sample's bytes start in _text
        #: The first byte the answer's tokens print, before the rule that drops a space
        #: there when they start with the BOS (None: none yet, or not llama.cpp's tokenizer).
        self.first_raw: int | None = None
        self._looked = 0
        self._longest = max((len(s) for s in self._stops), default=1)
        tokenizer = getattr(llm, "tokenizer_", None)
        self._by_token = type(tokenizer).__name__ == "LlamaTokenizer" and type(tokenizer).__module__ == (
            "llama_cpp.llama_tokenizer"
        )

    def criteria(self, callers: Any) -> Any:
        """The caller's stopping criteria, then the end at a stop string found in the newest sample."""
        self._criteria = True

        def stopping(input_ids: Any, logits: Any) -> bool:
            if callers(input_ids, logits):
                # llama-cpp-python drops the sample: its bytes, and a stop string they end, never were
                self._found = None
                self._drop_last()
                return True
            if self._found is not None:
                raise _StopFound(self._found)
            return False

        return stopping

    def sampled(self, token: int) -> None:
        """Look for a stop string once ``token`` is part of the answer."""
        if self.cancelled:
            raise _Cancelled
        if _is_end_of_generation(self._llm, token):
            return  # llama-cpp-python ends here, before its own look
        if not self._stops and (self.first_raw is not None or not self._by_token):
            self._last_at = None  # nothing more to learn, nor to forget
            return
        self._tokens.append(token)
        self._last_at = len(self._text)
        if self._by_token:
            # llama.cpp's tokenizer decodes token by token; its one context rule: a space
            # that starts the printed bytes goes when the tokens start with the BOS.
            piece = self._llm.detokenize([token])
            if self.first_raw is None and piece:
                self.first_raw = piece[0]
                if self._tokens[0] == self._bos and piece[0] == 0x20:
                    piece = piece[1:]
            self._text += piece
        else:
            self._text = self._llm.detokenize(self._tokens, prev_tokens=self._counter.prompt_ids)
        if not self._stops:
            return
        text = self._text
        # llama-cpp-python's wait for the rest of a character (Llama._create_completion),
        # as it is: the first byte of a 2-, 3- or 4-byte character among the last three.
        for i, byte in enumerate(text[-3:]):
            k = 3 - i
            for size, pattern in ((2, 192), (3, 224), (4, 240)):
                if size > k and pattern & byte == pattern:
                    self._multibyte = size - k
        if self._multibyte > 0:
            self._multibyte -= 1
            return
        # Each look found none, so a stop string can only start past the last one's reach.
        start = max(0, self._looked - self._longest + 1)
        self._looked = len(text)
        for stop in self._stops:
            at = text.find(stop, start)
            if at >= 0:
                self._found = text[:at]
                if not self._criteria:
                    raise _StopFound(self._found)
                return

    def _drop_last(self) -> None:
        """Forget the newest sample (the caller's stopping criteria made llama.cpp drop it)."""
        if self._last_at is None:
            return
        self._text = self._text[: self._last_at]
        self._looked = min(self._looked, len(self._text))
        self._last_at = None

    @property
    def drops_leading_space(self) -> bool | None:
        """Whether llama.cpp drops a space the answer's text starts with (None: not known).

        It does when the answer's tokens start with the BOS (an empty prompt's
        answer does, or a model's first sample) and the first byte they print
        is a space; llama-cpp-python's stream keeps that space.
        """
        if self.first_raw is None:
            return None
        return self._tokens[0] == self._bos and self.first_raw == 0x20

    def last_look(self) -> bytes | None:
        """At the end of the generation: the answer's bytes before the first stop string, if any.

        A wait for the rest of a character skips the looks after the samples
        in it; at the end, llama-cpp-python's stream looks once more in what
        it has not handed out yet, in the bytes, and cuts the answer there.
        """
        start = max(0, self._looked - self._longest + 1)
        found = [at for at in (self._text.find(stop, start) for stop in self._stops) if at >= 0]
        return self._text[: min(found)] if found else None


#: Sampling options that weigh the answer's earlier tokens, at their neutral values: a resumed
#: call would not know those tokens (llama.cpp's penalties remember only the call's own samples).
_NEUTRAL_PENALTIES: Final = (("repeat_penalty", 1.0), ("frequency_penalty", 0.0), ("presence_penalty", 0.0))


def counting_processors(counter: TokenCounter, extra: Any) -> Any:
    """A ``LogitsProcessorList``: the token counter, then the caller's own processors.

    See :func:`processor_list` for what it checks and why its ``extend``
    returns the list.
    """
    processors = _processor_list_class()([counter])
    own = processor_list(extra)
    if own is not None:
        processors.extend(own)
    return processors


def processor_list(extra: Any) -> Any:
    """The caller's ``logits_processor`` as a ``LogitsProcessorList`` whose ``extend`` returns it.

    llama-cpp-python adds its ``logit_bias`` processor with ``processors =
    processors.extend(...)``; ``list.extend`` returns ``None``, which drops
    every processor, the caller's and the bias both (llama-cpp-python 0.3).
    This list keeps them all.  ``extra`` not a list of processors (a bare
    function) raises :class:`TypeError` saying so, where llama-cpp-python
    would print each call's traceback and answer without it.  ``None``
    stays ``None``.
    """
    if extra is None:
        return None
    if isinstance(extra, (str, bytes, Mapping)) or not isinstance(extra, Iterable):
        what = f"a function ({getattr(extra, '__name__', '?')})" if callable(extra) else repr(extra)
        raise TypeError(
            f"'logits_processor' must be a list of processors, as llama_cpp takes a "
            f"LogitsProcessorList, got {what}: pass LogitsProcessorList([...])"
        )
    items = list(extra)
    for i, item in enumerate(items):
        if not callable(item):
            raise TypeError(
                f"'logits_processor' must be a list of processors (functions of input_ids and "
                f"scores), got {item!r} at index {i}"
            )
    return _processor_list_class()(items)


@functools.cache
def _processor_list_class() -> type[Any]:
    from llama_cpp import LogitsProcessorList

    class Processors(LogitsProcessorList):
        def extend(self, items: Any) -> Processors:  # type: ignore[override]
            super().extend(items)
            return self

    return Processors


async def acquire_thread_lock(lock: threading.Lock) -> None:
    """Acquire a ``threading.Lock`` without blocking the event loop, cancellably.

    The wait runs in a worker thread of its own (one per waiter, not one of
    anyio's default 40), in steps of :data:`_WAIT_STEP` seconds.  On
    cancellation the thread is abandoned: it gives up at its next step (a
    thread left blocked on the lock would keep the program from exiting while
    someone else holds it), and if it got the lock meanwhile it gives it
    straight back.
    """
    if lock.acquire(blocking=False):
        return
    guard = threading.Lock()
    state = {"acquired": False, "abandoned": False}

    def wait() -> None:
        while True:
            got = lock.acquire(timeout=_WAIT_STEP)
            with guard:
                if state["abandoned"]:
                    if got:
                        lock.release()
                    return
                if got:
                    state["acquired"] = True
                    return

    try:
        # A thread of its own, outside anyio's default limiter (40 threads): waits holding its
        # threads would leave none for the generation they wait for, whose every read of the
        # stream takes one (45 requests waiting on one model: none went on), and none for the
        # rest of the program's worker threads.
        await anyio.to_thread.run_sync(wait, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1))
    except BaseException:
        with guard:
            if state["acquired"]:
                lock.release()
            else:
                state["abandoned"] = True
        raise


@final
class LlamaCppBackend:
    """Serves requests with an in-process ``llama_cpp.Llama``.

    A ``Llama`` holds one context and computes one answer at a time; two
    threads calling it at once crash or garble the output.  This backend
    runs each generation in a worker thread (so the event loop stays free),
    one at a time per ``Llama`` (``slots`` is 1), and streams the text as the
    model writes it::

        llm = llama_cpp.Llama("model.gguf", n_ctx=4096)
        async with Scheduler(LlamaCppBackend(llm)) as sched:
            answer = await sched.complete("Why is the sky blue?", max_tokens=200)

    - ``Request.prompt`` goes to ``llm.create_completion``,
      ``Request.messages`` to ``llm.create_chat_completion`` (the model's
      chat template).
    - ``Request.max_tokens`` becomes ``max_tokens``; without it the model may
      write until the context is full.  ``Request.options`` are passed as
      keyword arguments (``temperature``, ``seed``, ``stop``, ``top_p``,
      ``logit_bias``, ``grammar``, ...); an option the method does not take
      fails the request with :class:`~sjfsched.BackendError` naming it.
    - Token counts are the model's own: ``Chunk.prompt_tokens`` is the
      prompt's length after the chat template, and the chunks' ``tokens`` add
      up to the tokens generated (an end-of-generation token is not counted;
      the token that completed a ``stop`` string is, as in llama.cpp's
      ``usage``).
    - Closing the stream (the caller was cancelled or left early) stops the
      generation after the token being computed, and the model is free for
      the next request at once.  A prompt being evaluated is finished first:
      llama.cpp cannot interrupt it.

    The ``Llama`` is shared with any other ``LlamaCppBackend`` or
    :func:`sjfsched.wrap` over it through one lock, so they never run at the
    same time.  ``close_llm=True`` closes the ``Llama`` when the backend is
    closed; :meth:`from_path` loads a model the backend owns.
    """

    slots = 1

    def __init__(self, llm: Llama, *, close_llm: bool = False) -> None:
        if not callable(getattr(llm, "create_completion", None)) or not callable(
            getattr(llm, "create_chat_completion", None)
        ):
            hint = (
                ": load it with LlamaCppBackend.from_path(path), or give llama_cpp.Llama(path, verbose=False)"
                if isinstance(llm, (str, os.PathLike))
                else ""
            )
            raise TypeError(f"LlamaCppBackend needs a llama_cpp.Llama, got {type(llm).__name__}{hint}")
        from .._wrap import ScheduledLlama  # here: _wrap imports this module

        given: object = llm  # typed as a Llama, but may be a wrap() of one
        if isinstance(given, ScheduledLlama):
            raise TypeError(
                "LlamaCppBackend needs the Llama itself, got a sjfsched.wrap() of it: pass wrapped.llm: "
                "LlamaCppBackend and wrap() over the same Llama share its lock"
            )
        self._llm = llm
        self._lock = llama_lock(llm)
        self._close_llm = close_llm
        self._closed = False  # the backend: it takes no more requests
        self._llm_closed = False  # the Llama (close_llm=True), closed under its lock
        self._closer: threading.Thread | None = None  # closes it once free, after a cancelled aclose()
        self._completion_params = _keyword_names(llm.create_completion)
        self._chat_params = _keyword_names(llm.create_chat_completion)

    @classmethod
    def from_path(cls, model_path: str | os.PathLike[str], /, **llama_options: Any) -> LlamaCppBackend:
        """Load ``model_path`` (a ``str`` or a path) into a new ``Llama`` that the backend owns
        and closes.

        ``llama_options`` go to ``llama_cpp.Llama`` (``n_ctx``, ``n_threads``,
        ``n_gpu_layers``, ...); ``verbose`` defaults to false.  A name
        ``Llama`` does not take raises :class:`TypeError` (``Llama`` itself
        ignores it).
        """
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "LlamaCppBackend needs llama-cpp-python: pip install 'sjfsched[llama]'"
            ) from exc
        _check_llama_options(Llama, llama_options)
        llama_options.setdefault("verbose", False)
        return cls(Llama(os.fspath(model_path), **llama_options), close_llm=True)

    @property
    def llm(self) -> Llama:
        """The ``Llama`` this backend drives."""
        return self._llm

    def __repr__(self) -> str:
        return f"LlamaCppBackend({getattr(self._llm, 'model_path', self._llm)!r})"

    def _arguments(self, request: Request, counter: TokenCounter) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The keyword arguments for llama-cpp-python, checked, and our stop strings."""
        params = self._chat_params if request.messages is not None else self._completion_params
        options = dict(request.options)
        reserved = sorted(_RESERVED.intersection(options))
        if reserved:
            raise BackendError(f"LlamaCppBackend sets {', '.join(reserved)} itself; remove it from options")
        unknown = [] if params is None else sorted(k for k in options if k not in params)
        if unknown:
            method = "create_chat_completion" if request.messages is not None else "create_completion"
            hints = "; ".join(f"{k}: {_ELSEWHERE[k]}" for k in unknown if k in _ELSEWHERE)
            raise BackendError(
                f"llama_cpp.Llama.{method} takes no option(s) {', '.join(map(repr, unknown))}"
                + (f" ({hints})" if hints else "")
            )
        _check_option_types(options)
        if options.get("echo"):
            raise BackendError(
                "LlamaCppBackend does not take option 'echo': the answer is the model's text only "
                "(llama-cpp-python's echo=True puts the prompt before it); add the prompt yourself"
            )
        if request.max_tokens is not None:
            options["max_tokens"] = request.max_tokens
        else:
            options.setdefault("max_tokens", None)  # to the end of the context
        try:
            options["logits_processor"] = counting_processors(counter, options.pop("logits_processor", None))
        except TypeError as exc:
            raise BackendError(f"option {exc}") from exc
        if options.get("stopping_criteria") is not None:
            options["stopping_criteria"] = counter.watch(options["stopping_criteria"])
        if request.messages is not None and (options.get("tools") or options.get("functions")):
            # A chat that may call tools: llama-cpp-python's chat format runs completions of its
            # own (deciding to call, writing the arguments), where its stop strings belong; ours,
            # looking at every sampled byte, would take the arguments for the answer's text.
            checked = _stop_strings(options.get("stop"))  # checked all the same
            if options.get("stop") is not None:  # a list: llama-cpp-python's chat formats add to it
                options["stop"] = list(checked)
            stops: tuple[str, ...] = ()
        else:
            stops = _stop_strings(options.pop("stop", None))
        options["stream"] = True
        return options, stops

    def _watching(
        self, arguments: dict[str, Any], stops: tuple[str, ...], counter: TokenCounter
    ) -> _StopStrings:
        """Our watcher of the sampled tokens (made with the model held, and known not closed: it
        reads the model's vocabulary), with no stop strings too: it tells whether llama.cpp
        drops a leading space."""
        watcher = _StopStrings(self._llm, stops, counter)
        if arguments.get("stopping_criteria") is not None:
            arguments["stopping_criteria"] = watcher.criteria(arguments["stopping_criteria"])
        return watcher

    def _start(self, request: Request, arguments: dict[str, Any]) -> Iterator[Any]:
        llm: Any = self._llm  # llama_cpp's TypedDicts are stricter than our Mappings
        if request.messages is not None:
            messages = [dict(m) for m in request.messages]
            return iter(llm.create_chat_completion(messages, **arguments))
        return iter(llm.create_completion(request.prompt, **arguments))

    async def stream(self, request: Request, /) -> AsyncIterator[Chunk]:
        self._refuse_if_closed()
        counter = TokenCounter(starts_with_bos=request.messages is None and not request.prompt)
        arguments, stops = self._arguments(request, counter)
        await acquire_thread_lock(self._lock)
        try:
            self._refuse_if_closed(backend=False)  # the Llama closed while this waited for it
            watcher = self._watching(arguments, stops, counter)
            with recording_samples(self._llm, counter, watcher.sampled):
                try:
                    iterator = await anyio.to_thread.run_sync(self._start, request, arguments)
                except Exception as exc:
                    raise BackendError(f"llama.cpp failed: {failure(exc)}") from exc
                try:
                    async with aclosing(self._chunks(iterator, counter, watcher)) as chunks:
                        async for chunk in chunks:
                            yield chunk
                finally:
                    # Closing a suspended generator stops it at once: no token is
                    # computed after this (we are not inside next() any more).
                    close = getattr(iterator, "close", None)
                    if close is not None:
                        close()
        finally:
            self._lock.release()

    def _refuse_if_closed(self, *, backend: bool = True) -> None:
        """:class:`BackendUnavailable` if this backend (unless ``backend`` is false), or its
        ``Llama``, is closed: it can serve nothing more (a :class:`BackendPool` takes it out of
        rotation).  Any call on a closed ``Llama`` would crash the process: its vocabulary and
        context are freed."""
        if (backend and self._closed) or self._llm_closed:
            raise BackendUnavailable(f"this LlamaCppBackend is closed: {self!r}")
        if llama_closed(self._llm):  # by its owner (another backend, the program)
            raise BackendUnavailable(f"{self!r}: {CLOSED_LLAMA}")

    def resumable(self, request: Request, /) -> bool:
        """A prompt request can be paused and resumed (a chat request cannot: see :meth:`resume`),
        unless its options hold what a new call over the text so far cannot go on with: a
        ``grammar`` (it would start over, and the answer leave it), a ``suffix`` (the text
        so far would land before it), or a repetition penalty (it would forget the answer's
        earlier tokens)."""
        return request.messages is None and goes_on_as_it_was(
            request.options, ("grammar",), _NEUTRAL_PENALTIES
        )

    async def resume(self, request: Request, answer: str, tokens: int, /) -> AsyncIterator[Chunk]:
        """The rest of the answer to a prompt request: the prompt followed by ``answer`` is read
        again and the model goes on (``max_tokens`` less the tokens written).

        ``Scheduler(preempt=True)`` pauses an answer this way for a request
        ranked before it.  The model reads its own text again, tokenized anew
        and in one batch (so it may go on differently from an answer never
        paused, greedy sampling too); text held back as what may begin a ``stop`` string is
        written again, and counted once, so the stop is still found.  A chat
        request is not paused: llama-cpp-python's chat API cannot go on with
        an assistant's answer.
        """
        await acquire_thread_lock(self._lock)  # a Llama closed meanwhile would crash tokenize()
        try:
            self._refuse_if_closed()
            prompt = str(request.prompt).encode("utf-8")
            # As llama-cpp-python tokenizes a prompt: special-token text ("</s>", "<|im_end|>") as one token.
            base = len(self._llm.tokenize(prompt, add_bos=True, special=True))
            whole = (
                len(self._llm.tokenize(prompt + answer.encode("utf-8"), add_bos=True, special=True))
                if answer
                else base
            )
            n_ctx = self._llm.n_ctx()
        finally:
            self._lock.release()
        # The tokens the answer so far holds: those its text adds after the prompt (tokenized
        # alone, a vocabulary that puts a space before a text's first word would count one
        # more). The stream counts a token one chunk late, and counts tokens whose text it
        # held back (it may begin a stop string): that text is written again, and counted once.
        written = whole - base
        if not request.prompt and answer:
            written += 1  # llama-cpp-python counts an empty prompt's BOS among the answer's tokens
        if not request.prompt:
            # llama-cpp-python's answer to an empty prompt holds its BOS, once in the context:
            # at most n_ctx - 1 tokens, BOS included (the continuation's prompt would allow one more).
            cap = n_ctx - 1
            if request.max_tokens is None or request.max_tokens > cap:
                request = request._replace({"max_tokens": cap})
            n_ctx -= 1
        if answer and whole >= n_ctx:  # the context is full: the answer ends there
            yield Chunk("", tokens=max(written - tokens, 0), finish_reason="length")
            return
        rest = resume_by_continuation(self.stream, request, answer, tokens, written=written, exact=True)
        async with aclosing(rest) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _chunks(
        self, iterator: Iterator[Any], counter: TokenCounter, watcher: _StopStrings
    ) -> AsyncGenerator[Chunk, None]:
        # A chunk's tokens are counted one sample late: the newest sampled
        # token may turn out to be the end-of-generation token (not part of
        # the answer), which only the end of the stream tells.  The last
        # chunk makes the sum exact.
        reported = 0
        sent_prompt = False
        sent = 0  # characters handed out
        pending = ""  # text held back: it may be the start of a stop string
        # Where each of llama-cpp-python's pieces (a token's text, mostly) ends in ``pending``:
        # text goes out a whole piece at a time, so an answer paused and resumed
        # (Scheduler(preempt=True)) never ends in part of a token, which, tokenized anew, the
        # model would go on from differently.
        ends: list[int] = []
        finish: str | None = None
        stops = watcher.stops
        # llama.cpp's detokenizer drops a space that starts the printed bytes
        # when the answer's tokens start with the BOS (an empty prompt's do),
        # so the unstreamed answer has none there; llama-cpp-python's stream
        # keeps it.  Only a space that was the first byte goes: the stream's
        # text drops bytes that are no UTF-8 text.
        leading_space = True
        tools = ToolCallPieces()  # a chat's, with tools (llama-cpp-python's chat formats that call them)
        while True:
            try:
                item: Any = await _next(iterator, watcher)
            except _StopFound as found:
                # Our own stop string, found in the sampled tokens' bytes: the
                # answer is the text before it, decoded as llama-cpp-python
                # decodes it.  What went out is a start of that text (the
                # stream hands out whole characters, and what may begin a stop
                # string is held back), so the rest follows; the count below
                # is every sampled token (the one completing the stop is text).
                pending, finish = _as_text(found.text)[sent:], "stop"
                break
            except Exception as exc:
                raise BackendError(f"llama.cpp failed: {failure(exc)}") from exc
            if item is _DONE:
                before = watcher.last_look() if stops else None
                if before is not None:
                    # The generation ended (an end of generation, max_tokens) while
                    # llama.cpp's wait for the rest of a character skipped the look
                    # in the bytes: the answer ends before the stop string there.
                    pending, finish = _as_text(before)[sent:], "stop"
                break
            text, reason, pieces = _chunk_text(item)
            tools.add(pieces)
            if leading_space and text:
                leading_space = False
                drops = watcher.drops_leading_space
                if drops or (drops is None and counter.starts_with_bos):  # None: as for llama.cpp's
                    text = text.removeprefix(" ")
            pending += text
            if text:
                ends.append(len(pending))
            if reason is not None:
                finish = reason
                continue  # the last chunk goes out below, with the exact count
            ready = len(pending) - _held_back(pending, stops)
            before = watcher.last_look() if stops else None
            if before is not None:  # in the bytes a wait for a character's rest kept the looks from
                ready = min(ready, max(0, len(_as_text(before)) - sent))
            if ready < len(pending):  # part held back: out up to the end of a whole piece
                ready = max((end for end in ends if end <= ready), default=0)
            settled = max(reported, counter.sampled - 1)
            if not ready and settled == reported:
                continue
            prompt_tokens = None if sent_prompt else counter.prompt_tokens
            sent_prompt = sent_prompt or prompt_tokens is not None
            yield Chunk(pending[:ready], tokens=settled - reported, prompt_tokens=prompt_tokens)
            sent += ready
            pending = pending[ready:]
            ends = [end - ready for end in ends if end > ready]
            reported = settled
        yield Chunk(
            pending,
            tokens=max(0, counter.answer_tokens(self._llm) - reported),
            prompt_tokens=None if sent_prompt else counter.prompt_tokens,
            finish_reason=finish or "stop",
            tool_calls=tools.calls(),
        )

    async def aclose(self) -> None:
        """Close the backend, and the ``Llama`` if the backend owns it (``close_llm=True``).

        The ``Llama`` is closed once no call runs on it: this waits for the
        model's lock, which another backend or a :func:`sjfsched.wrap` over
        the same ``Llama`` may hold.  If that wait is cancelled (the
        scheduler gives up closing after 10 s), the backend is closed all
        the same, and a daemon thread closes the ``Llama`` as soon as the
        lock is free; a later ``aclose()`` waits for the lock again and
        returns once the ``Llama`` is closed.
        """
        self._closed = True
        if not self._close_llm or self._llm_closed:
            return
        try:
            await acquire_thread_lock(self._lock)
        except BaseException:
            self._close_llm_when_free()
            raise
        try:
            self._close_llm_now()
        finally:
            self._lock.release()

    def _close_llm_now(self) -> None:
        """Close the ``Llama`` unless closed already; the model's lock must be held."""
        if not self._llm_closed:
            close = getattr(self._llm, "close", None)
            if close is not None:
                close()
            self._llm_closed = True

    def _close_llm_when_free(self) -> None:
        """After a cancelled :meth:`aclose`: close the ``Llama`` in a daemon thread once it is free."""
        if self._closer is not None:
            return

        def close_when_free() -> None:
            with self._lock:
                self._close_llm_now()

        self._closer = threading.Thread(target=close_when_free, name="LlamaCppBackend.aclose", daemon=True)
        self._closer.start()


def _check_llama_options(llama: type[Any], options: Mapping[str, Any]) -> None:
    """Refuse options ``Llama(...)`` does not take: it has ``**kwargs`` and ignores them."""
    names = _keyword_names(llama.__init__, named_only=True)
    unknown = sorted(k for k in options if names and k not in names)
    if not names or not unknown:
        return
    hints = []
    for name in unknown:
        if name == "close_llm":
            hints.append("close_llm: from_path's backend always closes its Llama")
        elif close := difflib.get_close_matches(name, names, n=1):
            hints.append(f"{name}: did you mean {close[0]}?")
    raise TypeError(
        f"llama_cpp.Llama takes no option(s) {', '.join(map(repr, unknown))}"
        + (f" ({'; '.join(hints)})" if hints else "")
    )


#: Options llama-cpp-python takes as numbers (it compares them with floats), and as whole numbers
#: (it hands them to llama.cpp's C functions, a seed to ``random.Random``): of another type they
#: failed deep in llama.cpp, saying nothing of the option ("AssertionError", "wrong type").
_NUMBER_OPTIONS: Final = frozenset(
    {
        "temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "frequency_penalty",
        "presence_penalty", "mirostat_tau", "mirostat_eta",
    }
)  # fmt: skip
_WHOLE_OPTIONS: Final = frozenset({"top_k", "seed"})


def _check_option_types(options: dict[str, Any]) -> None:
    """:class:`BackendError` naming an option of a type llama-cpp-python cannot use.

    What it takes passes, as it converts it (``float()``, ``int()``); a whole
    number of another integer type (numpy's) goes on as an ``int``: a numpy
    ``seed``, which the ``Llama`` keeps, failed its later calls without one.
    ``None`` goes on as it is (llama-cpp-python takes it for a seed, and
    where no sampler reads the option; elsewhere it fails as it did).
    """
    for name, value in options.items():
        if value is None:
            continue
        if name in _NUMBER_OPTIONS:
            ok, kind = not isinstance(value, (str, bytes)) and _converts(float, value), "a number"
        elif name in _WHOLE_OPTIONS:
            ok, kind = _converts(operator.index, value), "an integer"
            if ok:
                options[name] = operator.index(value)
        elif name == "suffix":
            ok, kind = type(value) is str, "a str or None"  # llama-cpp-python asserts exactly str
        elif name == "logit_bias":
            ok = (
                isinstance(value, Mapping)
                and all(_converts(int, k) for k in value)
                and all(_converts(float, v) for v in value.values())
            )
            kind = "a mapping of token ids to numbers"
        else:
            continue
        if not ok:
            raise BackendError(f"option {name!r} must be {kind}, got {value!r}")


def _converts(convert: Callable[[Any], object], value: object) -> bool:
    try:
        convert(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _stop_strings(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = (value,) if isinstance(value, str) else value
    if not isinstance(stops, (list, tuple)) or not all(isinstance(v, str) for v in stops):
        raise BackendError(f"option 'stop' must be a str or a list of str, got {value!r}")
    if "" in stops:
        raise BackendError(
            f"option 'stop' has an empty string ({value!r}), which llama.cpp finds at once, "
            "so the answer would be empty: leave it out"
        )
    return tuple(stops)


def _as_text(answer: bytes) -> str:
    """The answer's bytes as llama-cpp-python's text has them: what is no UTF-8 text left out."""
    return answer.decode("utf-8", errors="ignore")


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` may begin a stop string."""
    keep = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), keep, -1):
            if text.endswith(stop[:n]):
                keep = n
                break
    return keep


def _chunk_text(item: Mapping[str, Any]) -> tuple[str, str | None, object]:
    """The text, finish reason and tool call pieces of a llama-cpp-python stream chunk."""
    choices = item.get("choices") or ()
    if not choices:
        return "", None, None
    choice = choices[0]
    reason = choice.get("finish_reason")
    if "delta" in choice:
        content = choice["delta"].get("content")
        return (content if isinstance(content, str) else ""), reason, choice["delta"].get("tool_calls")
    text = choice.get("text")
    return (text if isinstance(text, str) else ""), reason, None


def _keyword_names(method: Any, *, named_only: bool = False) -> frozenset[str] | None:
    """The keyword arguments ``method`` takes, or None for any (it has ``**kwargs``).

    ``named_only``: the names it lists, even with ``**kwargs``.
    """
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return frozenset()
    if not named_only and any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) - {
        "self"
    }
