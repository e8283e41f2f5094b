"""Shortest-job-first in front of an in-process llama.cpp model.

Six requests arrive at once at one ``llama_cpp.Llama``; the scheduler runs
the short ones first (the model only ever runs one at a time): the first to
arrive found the model free and started, and is paused for them (it goes on
later from where it stopped).  Predictions above the median of recent ones
count as that median (the default ``cap=1.0``), so requests predicted long
keep their arrival order among themselves: the story, first to arrive, may
end before a later list of ten numbers.  Then one more request, a chat, is
streamed as it is written.

    python examples/llama_cpp_backend.py --model path/to/model.gguf

Without ``--model`` it writes a tiny random-weight model first (it writes
gibberish, fast), so the script runs anywhere ``sjfsched[llama]`` is installed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import anyio
from llama_cpp import Llama

from sjfsched import Completion, Scheduler
from sjfsched.backends import LlamaCppBackend

REQUESTS = [
    ("Write a long story about a lighthouse keeper.", 400),
    ("What is 17 * 23?", 8),
    ("Describe the water cycle in detail.", 300),
    ("Capital of Peru?", 6),
    ("List ten prime numbers.", 40),
    ("Say hi.", 4),
]


async def main(model: Path) -> None:
    llm = Llama(str(model), n_ctx=2048, n_threads=1, n_threads_batch=1, verbose=False)
    async with Scheduler(LlamaCppBackend(llm, close_llm=True)) as sched:
        done: list[Completion] = []

        async def ask(prompt: str, max_tokens: int) -> None:
            done.append(await sched.complete(prompt, max_tokens=max_tokens))

        async with anyio.create_task_group() as tg:
            for prompt, max_tokens in REQUESTS:
                tg.start_soon(ask, prompt, max_tokens)

        print("finished in this order (all arrived together):")
        for c in done:
            print(
                f"  {c.output_tokens:4d} tokens  waited {c.wait:6.3f}s  latency {c.latency:6.3f}s"
                f"  paused {c.preemptions}  prompt {c.prompt_tokens} tokens: {c.request.text[:40]}"
            )

        print("\nstreaming a chat answer:")
        async with sched.stream(
            messages=[{"role": "user", "content": "Tell me a joke."}], max_tokens=40
        ) as chunks:
            async for chunk in chunks:
                print(chunk.text, end="", flush=True)
        print(
            f"\n[{chunks.completion.output_tokens} tokens, finish_reason={chunks.completion.finish_reason}]"
        )
        print(sched.statistics())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a GGUF model file (default: a tiny random one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from sjfsched.testing import write_tiny_llama

            args.model = write_tiny_llama(Path(tmp) / "tiny.gguf", n_ctx=2048)
            print(f"(no --model: using a tiny random-weight model, {args.model})")
        anyio.run(main, args.model)
