"""How often a paused and resumed greedy answer goes on differently from the answer never paused.

    python benchmarks/resume_drift.py ../shared/models/stories260K.gguf --prompt "One day, a little"

For each pause point k (after the answer's k-th chunk), a ``LlamaCppBackend``
answer is paused there, another request runs on the model (as when the
scheduler pauses an answer for a shorter one), and the answer is resumed; with
``--nothing-between`` nothing runs in between. It prints how many of the
pause points gave an answer other than the one never paused (greedy, no
penalties). Figures in docs/backends/llama-cpp.md.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import cast

import anyio

from sjfsched import Chunk, Request
from sjfsched.backends import LlamaCppBackend


def _closable(chunks: AsyncIterator[Chunk]) -> AsyncGenerator[Chunk, None]:
    return cast("AsyncGenerator[Chunk, None]", chunks)  # the backend's are async generators


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("model", help="a GGUF file (stories260K)")
    parser.add_argument("--prompt", default="One day, a little")
    parser.add_argument("--max-tokens", type=int, default=80)
    parser.add_argument("--nothing-between", action="store_true", help="run no request during the pause")
    args = parser.parse_args()
    if args.max_tokens < 1:
        parser.error(f"argument --max-tokens: must be 1 or more, got {args.max_tokens}")
    from llama_cpp import Llama

    llm = Llama(args.model, n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
    backend = LlamaCppBackend(llm)
    request = Request(args.prompt, max_tokens=args.max_tokens, options={"temperature": 0.0})
    whole = llm.create_completion(args.prompt, max_tokens=args.max_tokens, temperature=0.0)
    expected = (whole["choices"][0]["text"], whole["usage"]["completion_tokens"])  # type: ignore[index]

    async def paused_after(k: int) -> tuple[str, int] | None:
        text, tokens, chunks_read = "", 0, 0
        async with aclosing(_closable(backend.stream(request))) as chunks:
            async for chunk in chunks:
                text, tokens, chunks_read = text + chunk.text, tokens + chunk.tokens, chunks_read + 1
                if chunk.finish_reason is not None:
                    return None  # it ended before its k-th chunk: no pause there
                if chunks_read == k:
                    break
        if not args.nothing_between:
            async with aclosing(_closable(backend.stream(Request("Hi", max_tokens=2)))) as other:
                async for _ in other:
                    pass
        async with aclosing(_closable(backend.resume(request, text, tokens))) as rest:
            async for chunk in rest:
                text, tokens = text + chunk.text, tokens + chunk.tokens
        return text, tokens

    async def run() -> None:
        tried = differ = 0
        for k in range(1, args.max_tokens + 1):
            got = await paused_after(k)
            if got is None:
                break
            tried += 1
            differ += got != expected
        between = "nothing" if args.nothing_between else "another request"
        print(f"paused after each of its first {tried} chunks, {between} run in between, resumed:")
        print(f"{differ} of {tried} answers differ from the answer never paused")

    try:
        anyio.run(run)
    finally:
        llm.close()


if __name__ == "__main__":
    main()
