"""Tool calls and a reasoning model's thinking reach the caller: on the chunks and the completion.

Over real llama.cpp (llama-cpp-python's function-calling chat format, a
forced tool choice) and real HTTP on 127.0.0.1 (what Ollama and
OpenAI-compatible servers send, as their docs show it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from llama_cpp import Llama

from sjfsched import Chunk, Request, Scheduler
from sjfsched.backends import LlamaCppBackend, OllamaBackend, OpenAIBackend
from sjfsched.predictors import ConstantPredictor
from tests.support.wire_server import scripted_server

pytestmark = pytest.mark.anyio

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_a_chunk_takes_thinking_and_tool_calls_and_refuses_other_types() -> None:
    call = {"function": {"name": "f", "arguments": {}}}
    chunk = Chunk("", thinking="hmm", tool_calls=[call])
    assert chunk.tool_calls == (call,) and chunk.thinking == "hmm"
    assert Chunk("x").tool_calls == () and Chunk("x").thinking == ""
    with pytest.raises(TypeError, match=r"Chunk\.thinking must be a str"):
        Chunk("", thinking=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Chunk\.tool_calls must be a sequence of dicts"):
        Chunk("", tool_calls=call)
    with pytest.raises(TypeError, match=r"Chunk\.tool_calls must be a sequence of dicts"):
        Chunk("", tool_calls=["f"])


async def complete(backend: Any, request: Request) -> Any:
    async with Scheduler(backend, predictor=ConstantPredictor()) as scheduler:
        return await scheduler.complete(request)


async def test_ollamas_thinking_and_tool_calls_reach_the_completion() -> None:
    """docs/api.md: a thinking model streams ``message.thinking`` before its content; a tool call
    comes whole in a message's ``tool_calls``, arguments as an object."""
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    lines = [
        {"message": {"role": "assistant", "content": "", "thinking": "The user "}, "done": False},
        {"message": {"role": "assistant", "content": "", "thinking": "wants weather."}, "done": False},
        {"message": {"role": "assistant", "content": "", "tool_calls": [call]}, "done": False},
        {
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "eval_count": 9,
        },
    ]
    with scripted_server([json.dumps(m).encode() + b"\n" for m in lines]) as url:
        request = Request(
            messages=[{"role": "user", "content": "Weather in Paris?"}], options={"tools": [WEATHER]}
        )
        done = await complete(OllamaBackend("qwen3", url), request)
    assert done.thinking == "The user wants weather."
    assert done.tool_calls == (call,) and done.text == "" and done.output_tokens == 9


async def test_tool_calls_on_an_ollama_generations_final_line_reach_the_completion() -> None:
    """api/types.go: GenerateResponse has ``tool_calls`` too, set on the final line where a
    model's own parser found calls in a generation (server/routes.go, GenerateHandler)."""
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    lines = [
        {"response": "", "done": False},
        {"response": "", "done": True, "done_reason": "stop", "eval_count": 12, "tool_calls": [call]},
    ]
    with scripted_server([json.dumps(m).encode() + b"\n" for m in lines]) as url:
        done = await complete(OllamaBackend("qwen3", url), Request("Weather in Paris?"))
    assert done.tool_calls == (call,) and done.text == "" and done.output_tokens == 12


async def test_openai_tool_call_pieces_are_put_together() -> None:
    """The OpenAI reference: a call's first delta has its id and name, the arguments follow in
    pieces, by index; ``reasoning_content`` (llama-server, DeepSeek) carries the thinking."""

    def delta(**fields: Any) -> bytes:
        return b"data: " + json.dumps({"choices": [{"index": 0, "delta": fields}]}).encode() + b"\n\n"

    first = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    events = [
        delta(role="assistant", reasoning_content="Need the "),
        delta(reasoning_content="weather."),
        delta(tool_calls=[first]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}]),
        delta(
            tool_calls=[
                {
                    "index": 1,
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "now", "arguments": "{}"},
                }
            ]
        ),
        b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}\n\n',
        b'data: {"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 17}}\n\n',
        b"data: [DONE]\n\n",
    ]
    with scripted_server(events, content_type="text/event-stream") as url:
        request = Request(messages=[{"role": "user", "content": "Weather?"}], options={"tools": [WEATHER]})
        done = await complete(OpenAIBackend(url, model="m"), request)
    assert done.thinking == "Need the weather." and done.finish_reason == "tool_calls"
    assert done.tool_calls == (
        {
            "type": "function",
            "id": "call_1",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"type": "function", "id": "call_2", "function": {"name": "now", "arguments": "{}"}},
    )
    assert done.output_tokens == 17


async def forced_call(
    tiny_path: Path, *, sent: dict[str, Any] | None = None, **extra: Any
) -> tuple[Any, Any]:
    """llama-cpp-python's chatml-function-calling with a forced tool choice, greedy: the message
    the unstreamed call returns, and the completion the backend streams and puts together (its
    request's options changed by ``sent``)."""
    llm = Llama(str(tiny_path), n_ctx=512, verbose=False, seed=0, chat_format="chatml-function-calling")
    try:
        messages = [{"role": "user", "content": "Weather in Paris?"}]
        options = {
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "temperature": 0,
            **extra,
        }
        whole: Any = llm.create_chat_completion(messages, max_tokens=24, **options)  # type: ignore[arg-type]
        request = Request(messages=messages, max_tokens=24, options={**options, **(sent or {})})
        return whole["choices"][0]["message"], await complete(LlamaCppBackend(llm), request)
    finally:
        llm.close()


async def test_llama_cpp_tool_calls_streamed_are_the_unstreamed_ones(tiny_path: Path) -> None:
    expected, done = await forced_call(tiny_path)
    assert done.finish_reason == "tool_calls"
    [call] = done.tool_calls
    assert call["function"] == {
        "name": "get_weather",
        "arguments": expected["tool_calls"][0]["function"]["arguments"],
    }
    assert call["type"] == "function" and call["id"].startswith("call_")


async def test_tool_calls_and_thinking_are_on_the_streamed_chunks() -> None:
    async def backend(request: Request) -> AsyncIterator[Chunk]:
        yield Chunk("", thinking="a")
        yield Chunk("b", tool_calls=[{"function": {"name": "f"}}])
        yield Chunk("c", thinking="d", tool_calls=({"function": {"name": "g"}},), finish_reason="stop")

    from sjfsched.backends import CallableBackend

    async with Scheduler(CallableBackend(backend), predictor=ConstantPredictor()) as scheduler:
        async with scheduler.stream("x") as stream:
            chunks = [chunk async for chunk in stream]
        done = stream.completion
    assert [c.thinking for c in chunks] == ["a", "", "d"]
    assert (done.text, done.thinking) == ("bc", "ad")
    assert [c["function"]["name"] for c in done.tool_calls] == ["f", "g"]


# ------------------------------------------------------------------ a reviewer's edge cases


def test_tool_call_pieces_put_together_whatever_their_index() -> None:
    from sjfsched.backends import ToolCallPieces

    pieces = ToolCallPieces()
    pieces.add([{"index": 1, "id": "b", "function": {"name": "second", "arguments": "{}"}}])
    pieces.add([{"index": "0", "id": "a", "function": {"name": "first", "arguments": '{"x":'}}])
    pieces.add([{"function": {"arguments": " 1}"}}])  # no index: the latest call goes on
    pieces.add([{"id": "c", "function": {"name": "third", "arguments": {"y": 2}}}])  # a new id: a new call
    pieces.add([{"id": "c", "function": {"arguments": {"y": 2}}}])  # sent whole again: the same text
    pieces.add([{"index": 9, "id": "d"}])  # an id alone
    calls = pieces.calls()
    assert [c.get("id") for c in calls] == ["a", "b", "c", "d"]  # in the order of their index
    assert [c["function"] for c in calls] == [
        {"name": "first", "arguments": '{"x": 1}'},
        {"name": "second", "arguments": "{}"},
        {"name": "third", "arguments": '{"y": 2}'},
        {"name": "", "arguments": ""},
    ]
    assert all(c["type"] == "function" for c in calls)


def llama_cpp_pieces(arguments: list[str]) -> list[bytes]:
    """A forced call as llama_cpp.server streams it: the id and name on every piece, the arguments
    in pieces, a last piece of empty arguments, no usage."""
    call = {"index": 0, "id": "call_0", "type": "function"}

    def event(args: str, finish: str | None = None) -> bytes:
        delta = {"tool_calls": [{**call, "function": {"name": "get_weather", "arguments": args}}]}
        return (
            b"data: "
            + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).encode()
        )

    return [event(a) + b"\n\n" for a in arguments] + [event("", "tool_calls") + b"\n\n", b"data: [DONE]\n\n"]


async def test_a_last_piece_of_empty_arguments_is_no_token() -> None:
    """llama-cpp-python ends a forced call with a piece of empty arguments: a token too many was
    counted, in the backend and in the proxy's tally (a reviewer's: 13 for its 12)."""
    from sjfsched.proxy._apis import Tally

    events = llama_cpp_pieces(['{"city": ', '"Pa', 'ris"}'])
    with scripted_server(events, content_type="text/event-stream") as url:
        request = Request(messages=[{"role": "user", "content": "Weather?"}], options={"tools": [WEATHER]})
        done = await complete(OpenAIBackend(url, model="m", include_usage=False), request)
    assert done.output_tokens == 3
    assert done.tool_calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    tally = Tally("sse")
    tally.feed(b"".join(events))
    assert tally.pieces == 3


async def test_llama_cpp_stop_strings_of_a_chat_with_tools_are_llama_cpps(tiny_path: Path) -> None:
    """With tools, llama-cpp-python runs completions of its own (writing the arguments): a stop
    string is its to apply there; the backend's own took the arguments for the answer's text."""
    expected, done = await forced_call(tiny_path, stop=['"'])
    assert done.text == (expected["content"] or "")
    assert [c["function"] for c in done.tool_calls] == [c["function"] for c in expected["tool_calls"]]


async def test_a_stop_tuple_of_a_chat_with_tools_is_taken_as_a_list(tiny_path: Path) -> None:
    """The backend takes ``stop`` as a tuple as it takes a list; passed on as it was in a chat
    with tools, llama-cpp-python's chat format added its own to it (``stop + [...]``) and the
    request failed: "can only concatenate tuple (not "list") to tuple"."""
    expected, done = await forced_call(tiny_path, stop=['"'], sent={"stop": ('"',)})
    assert done.text == (expected["content"] or "")
    assert [c["function"] for c in done.tool_calls] == [c["function"] for c in expected["tool_calls"]]


async def test_an_empty_stop_tuple_of_a_chat_with_tools_is_no_stop(tiny_path: Path) -> None:
    expected, done = await forced_call(tiny_path, sent={"stop": ()})  # it failed as a tuple did
    assert [c["function"] for c in done.tool_calls] == [c["function"] for c in expected["tool_calls"]]
