"""SimulatedBackend's lengths from request.metadata: a bad one fails naming the key."""

from __future__ import annotations

import math

import anyio
import pytest

from sjfsched import BackendError, Chunk, Request
from sjfsched.backends import SimulatedBackend

pytestmark = pytest.mark.anyio


async def collect(request: Request) -> list[Chunk]:
    with anyio.fail_after(10):
        return [c async for c in SimulatedBackend(prefill_rate=1e6, decode_rate=1e6).stream(request)]


@pytest.mark.parametrize("key", ["output_tokens", "prompt_tokens"])
@pytest.mark.parametrize("value", ["many", math.nan, math.inf, True, [3], 10**400])
async def test_a_bad_length_in_metadata_fails_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(BackendError, match=rf"metadata\['{key}'\] must be a finite number of tokens, got"):
        await collect(Request("hello", max_tokens=20, metadata={key: value}))


async def test_good_lengths_in_metadata_are_taken() -> None:
    chunks = await collect(
        Request("hello", max_tokens=20, metadata={"output_tokens": "12", "prompt_tokens": 7.4})
    )
    assert sum(c.tokens for c in chunks) == 12  # a number in a string, as a trace file may hold it
    assert chunks[0].prompt_tokens == 7
    chunks = await collect(Request("hello", max_tokens=20, metadata={"output_tokens": -3}))
    assert sum(c.tokens for c in chunks) == 0
