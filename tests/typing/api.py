"""Exercises the public API for the type checker only: mypy --strict checks it, nothing runs it.

If a change to the public API breaks this file, it breaks users' type checks too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

from llama_cpp import Llama
from llama_cpp.llama_types import (
    CreateChatCompletionResponse,
    CreateChatCompletionStreamResponse,
    CreateCompletionResponse,
    CreateCompletionStreamResponse,
)
from typing_extensions import assert_type

import sjfsched
from sjfsched import (
    BackendError,
    Chunk,
    Completion,
    Job,
    Prediction,
    PredictorError,
    QueueFull,
    Request,
    Scheduler,
    SchedulerClosed,
    SchedulerError,
    SchedulerStatistics,
    SyncScheduler,
    Ticket,
)
from sjfsched.backends import (
    Backend,
    BackendPool,
    CallableBackend,
    LlamaCppBackend,
    OllamaBackend,
    OpenAIBackend,
    Resumable,
    SimulatedBackend,
)
from sjfsched.predictors import (
    ClairvoyantPredictor,
    ConstantPredictor,
    HeuristicPredictor,
    LexicalPredictor,
    Predictor,
    SupportsObserve,
    SupportsPredictMany,
    predict_all,
)
from sjfsched.proxy import ProxyApp, ProxyServer, ProxySettings, make_server


class MyPredictor:
    def predict(self, request: Request, /) -> Prediction:
        return Prediction(len(request.text) / 2, p_long=0.1)

    def predict_many(self, requests: Sequence[Request], /) -> list[Prediction]:
        return [self.predict(r) for r in requests]

    def observe(self, request: Request, prediction: Prediction, output_tokens: int, /) -> None:
        pass


class MyBackend:
    slots = 2

    async def stream(self, request: Request, /) -> AsyncIterator[Chunk]:
        yield Chunk(request.text, tokens=3, prompt_tokens=4, finish_reason="stop")

    async def aclose(self) -> None:
        pass


class MyResumable(MyBackend):
    def resumable(self, request: Request, /) -> bool:
        return request.prompt is not None

    async def resume(self, request: Request, answer: str, tokens: int, /) -> AsyncIterator[Chunk]:
        yield Chunk("rest", finish_reason="stop")


class MyScheduler(Scheduler):
    def sort_key(self, job: Job) -> Any:
        return (job.request.priority, job.estimate)

    def on_complete(self, completion: Completion, /) -> None:
        super().on_complete(completion)


class AsyncHook(Scheduler):
    async def on_complete(self, completion: Completion, /) -> None:  # type: ignore[override]
        pass  # refused at run time: the checker says so first


class ByLength:
    """The least a predictor needs: predict (a batch and observe are optional)."""

    def predict(self, request: Request, /) -> Prediction:
        return Prediction(len(request.text) / 4)


predictor: Predictor = MyPredictor()
observer: SupportsObserve = MyPredictor()
batcher: SupportsPredictMany = MyPredictor()
just_predict: Predictor = ByLength()  # it needed predict_many, which the scheduler never calls
Scheduler(MyBackend(), predictor=ByLength())
assert_type(predict_all(ByLength(), [Request("x")]), list[Prediction])
backend: Backend = MyBackend()
predictors: list[Predictor] = [ConstantPredictor(), HeuristicPredictor(), MyPredictor()]
backends: list[Backend] = [CallableBackend(lambda r: r.text), SimulatedBackend(), MyBackend()]
resumables: list[Resumable] = [SimulatedBackend(chunk_tokens=8), MyResumable()]


def resumable_adapters(llm: Llama) -> list[Resumable]:
    return [LlamaCppBackend(llm), OpenAIBackend("http://127.0.0.1:8080/v1")]


async def use_async() -> None:
    async with Scheduler(
        backend, predictor=predictor, aging=0.1, max_wait=None, max_queue=10, preempt=False
    ) as sched:
        assert_type(sched.preempt, bool)
        assert_type(sched, Scheduler)
        completion = await sched.complete("hello", max_tokens=5, priority=-1, tenant="t")
        assert_type(completion, Completion)
        assert_type(completion.wait, float)
        assert_type(completion.time_to_first_token, float | None)
        assert_type(completion.preemptions, int)
        assert_type(completion.tool_calls, tuple[Mapping[str, Any], ...])
        assert_type(completion.thinking, str)
        await sched.complete("hello", max_token=5)  # type: ignore[call-arg]  # a misspelt field
        await sched.complete("hello", max_tokens="5")  # type: ignore[arg-type]
        await sched.complete(messages=[{"role": "user", "content": "hi"}], options={"tools": []})
        request = Request(messages=[{"role": "user", "content": "hi"}], options={"seed": 1})
        await sched.complete(request)
        async with sched.stream(request) as chunks:
            async for chunk in chunks:
                assert_type(chunk, Chunk)
            assert_type(chunks.completion, Completion)
        async with sched.admit("x") as ticket:
            assert_type(ticket, Ticket)
            ticket.first_token()
            ticket.report(output_tokens=3, prompt_tokens=2)
        stats = sched.statistics()
        assert_type(stats, SchedulerStatistics)
        assert_type(stats.preempted, int)
        assert_type(sched.position(request), int | None)
        sched.max_wait = 60.0
    async with MyScheduler() as custom:
        await custom.complete("x")


def use_sync() -> None:
    with SyncScheduler(backend) as plain:
        assert_type(plain.scheduler, Scheduler)
    with SyncScheduler(backend, scheduler_class=MyScheduler, aging=0.0) as sched:
        assert_type(sched.scheduler, MyScheduler)  # the policy's own attributes, typed
        assert_type(sched.complete("hi"), Completion)
        with sched.stream("hi") as chunks:
            for chunk in chunks:
                assert_type(chunk, Chunk)
        with sched.admit("x") as ticket:
            ticket.report(1)
        sched.complete("hi", priorty=1)  # type: ignore[call-arg]
        assert_type(sched.call(_twice, 21), int)  # an async function's result (was Any)
        assert_type(sched.call(len, "abc"), int)
        sched.call(_twice, "21")  # type: ignore[arg-type]


async def _twice(n: int) -> int:
    return 2 * n


def adapters(llm: Any) -> None:
    ollama = OllamaBackend("llama3.2", "http://127.0.0.1:11434")
    openai = OpenAIBackend("http://127.0.0.1:8000/v1", model="m", api_key="k")
    local = LlamaCppBackend(llm)
    pool = BackendPool([(ollama, 4), openai, local])
    usable: list[Backend] = [ollama, openai, local, pool]
    assert_type(pool.slots, int)
    wrapped = sjfsched.wrap(llm, aging=0.1)
    assert_type(wrapped, sjfsched.ScheduledLlama)
    wrapped.create_completion("hi", max_tokens=3)
    wrapped.create_chat_completion(messages=[{"role": "user", "content": "hi"}])
    del usable


def wrapped_as_the_llama(llm: Llama) -> None:
    """wrap()'s calls take and return what the Llama's do (an Any before)."""
    wrapped = sjfsched.wrap(llm)
    completion = CreateCompletionResponse | Iterator[CreateCompletionStreamResponse]
    assert_type(wrapped.create_completion("hi", max_tokens=3), completion)
    assert_type(wrapped("hi", max_tokens=3), completion)
    wrapped.create_completion("hi", max_tokenz=3)  # type: ignore[call-arg]  # a misspelt keyword is caught
    chat = wrapped.create_chat_completion(messages=[{"role": "user", "content": "hi"}])
    assert_type(
        chat,
        CreateChatCompletionResponse | Iterator[CreateChatCompletionStreamResponse],
    )


def learned(path: str) -> None:
    lexical = LexicalPredictor()
    tuned = LexicalPredictor(model_path=path, calibration_path="calibration.json")
    peer = ClairvoyantPredictor(path, key="p_long")
    usable: list[Predictor] = [lexical, tuned, peer]
    observing: SupportsObserve = lexical
    log = sjfsched.RequestLog("requests.jsonl", model="llama3.2")
    Scheduler(predictor=lexical, on_complete=log)
    del usable, observing


def proxy() -> None:
    settings = ProxySettings(upstream="http://127.0.0.1:11434", port=8081, max_queue=100)
    app = ProxyApp(settings)
    server = make_server(app)
    assert_type(server, ProxyServer)


def errors() -> None:
    try:
        sjfsched.run_virtual(use_async)
    except sjfsched.BackendUnavailable as exc:
        assert_type(exc, sjfsched.BackendUnavailable)
        assert_type(exc.status_code, int | None)
    except (QueueFull, SchedulerClosed, BackendError, PredictorError) as exc:
        assert_type(exc, QueueFull | SchedulerClosed | BackendError | PredictorError)
    except SchedulerError:
        pass


def records_fields_are_typed() -> None:
    # Integers of any kind and real numbers are taken; numpy's too (they have
    # __index__ and __float__).  What the fields refuse at run time, mypy refuses:
    # a needed ignore is checked by warn_unused_ignores (strict).
    Request("x", max_tokens=10, priority=-1, options={"temperature": 0}, metadata={"user": 1})
    Request(messages=[{"role": "user", "content": "hi"}])
    Prediction(12, 0.5, prompt_tokens=3)
    Prediction(12.5, prompt_tokens=None)
    Chunk("a", tokens=2, prompt_tokens=None)
    Request("x", priority="high")  # type: ignore[arg-type]
    Request("x", max_tokens=1.5)  # type: ignore[arg-type]
    Request("x", options=["temperature"])  # type: ignore[arg-type]
    Request(messages="hi")  # type: ignore[arg-type]
    Prediction("many")  # type: ignore[arg-type]
    Prediction(1.0, prompt_tokens="3")  # type: ignore[arg-type]
    Chunk("a", tokens=1.5)  # type: ignore[arg-type]


def sync_knobs_are_typed() -> None:
    SyncScheduler(aging=0.1, cap=None, max_queue=10, predictor=HeuristicPredictor(), learn_rates=False)
    SyncScheduler(aging="fast")  # type: ignore[arg-type]
    SyncScheduler(predictor=Request("x"))  # type: ignore[arg-type]
    SyncScheduler(max_queue=1.5)  # type: ignore[arg-type]
