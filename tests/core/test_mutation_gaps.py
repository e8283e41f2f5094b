"""Behaviours a mutation audit found no test for: each test fails when its behaviour is broken."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from typing import cast

import anyio
import pytest

from sjfsched import Chunk, Request, run_virtual
from sjfsched.backends import Backend, CallableBackend, SimulatedBackend


def _stream(backend: Backend, request: Request) -> AsyncGenerator[Chunk, None]:
    return cast("AsyncGenerator[Chunk, None]", backend.stream(request))  # the backends' are generators


async def _collect(backend: Backend, request: Request) -> list[tuple[float, Chunk]]:
    async with aclosing(_stream(backend, request)) as stream:
        return [(anyio.current_time(), chunk) async for chunk in stream]


def test_simulated_output_is_capped_at_max_tokens_and_says_length() -> None:
    backend = SimulatedBackend()
    chunks = run_virtual(_collect, backend, Request("hi", max_tokens=5, metadata={"output_tokens": 20}))
    assert sum(c.tokens for _, c in chunks) == 5
    assert chunks[-1][1].finish_reason == "length"


def test_simulated_answer_exactly_at_the_limit_says_length() -> None:
    backend = SimulatedBackend()
    chunks = run_virtual(_collect, backend, Request("hi", max_tokens=5, metadata={"output_tokens": 5}))
    assert sum(c.tokens for _, c in chunks) == 5
    assert chunks[-1][1].finish_reason == "length"
    under = run_virtual(_collect, backend, Request("hi", max_tokens=6, metadata={"output_tokens": 5}))
    assert under[-1][1].finish_reason == "stop"


def test_simulated_timing_matches_its_service_time() -> None:
    backend = SimulatedBackend(prefill_rate=100.0, decode_rate=10.0)
    request = Request("hi", metadata={"output_tokens": 4, "prompt_tokens": 50})
    chunks = run_virtual(_collect, backend, request)
    first_at, first = chunks[0]
    assert first.tokens == 1
    assert first_at == pytest.approx(50 / 100 + 1 / 10)  # the first token costs its decode step too
    assert chunks[-1][0] == pytest.approx(backend.service_time(request)) == pytest.approx(0.5 + 0.4)


def test_callable_string_answer_counts_a_token_per_four_characters_rounded_up() -> None:
    backend = CallableBackend(lambda request: "hello", in_thread=False)
    chunks = run_virtual(_collect, backend, Request("x"))
    assert [c.tokens for _, c in chunks] == [2]


class _Pieces:
    """A user's iterator object (not a generator) with a close() method, kept by the caller."""

    def __init__(self) -> None:
        self.left = ["a", "b", "c"]
        self.closed = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if not self.left:
            raise StopIteration
        return self.left.pop(0)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("in_thread", [False, True])
def test_callable_closes_an_iterator_left_midway(in_thread: bool) -> None:
    pieces = _Pieces()
    backend = CallableBackend(lambda request: pieces, in_thread=in_thread)

    async def first_only() -> str | None:
        async with aclosing(_stream(backend, Request("x"))) as stream:
            async for chunk in stream:
                return chunk.text
        return None

    assert anyio.run(first_only) == "a"
    assert pieces.closed
