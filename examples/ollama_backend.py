"""Shortest-job-first in front of an Ollama server.

Sends a burst of prompts at once to one Ollama model, through the scheduler,
and prints when each finished: the short ones do not wait behind the long
ones.  Ollama itself would answer them in arrival order.

    ollama pull llama3.2 && python examples/ollama_backend.py --model llama3.2

``--slots`` is Ollama's ``OLLAMA_NUM_PARALLEL`` (default 1).
"""

from __future__ import annotations

import argparse

import anyio

from sjfsched import BackendError, Completion, Scheduler
from sjfsched.backends import OllamaBackend

PROMPTS = [
    ("Write a 600-word story about a lighthouse keeper.", 600),
    ("What is 17 * 23? Answer with the number only.", 10),
    ("Explain how a refrigerator works, in detail.", 400),
    ("Capital of Peru? One word.", 5),
    ("Name three primary colours.", 20),
]


async def main(model: str, base_url: str, slots: int) -> None:
    backend = OllamaBackend(model, base_url, slots=slots, keep_alive="10m")
    async with Scheduler(backend) as sched:
        finished: list[Completion] = []
        errors: list[BackendError] = []

        async def ask(prompt: str, max_tokens: int) -> None:
            try:
                completion = await sched.complete(prompt, max_tokens=max_tokens, options={"temperature": 0.2})
            except BackendError as error:  # Ollama's own message: "model 'x' not found", ...
                errors.append(error)
            else:
                finished.append(completion)

        async with anyio.create_task_group() as tg:
            for prompt, max_tokens in PROMPTS:
                tg.start_soon(ask, prompt, max_tokens)
        if errors:
            raise SystemExit(f"Ollama failed: {errors[0]}")
        for c in finished:
            print(
                f"{c.latency:7.2f}s  {c.output_tokens:4d} tokens ({c.finish_reason}),"
                f" prompt {c.prompt_tokens}: {c.request.text[:45]}"
            )

        print("\nstreamed chat:")
        async with sched.stream(
            messages=[{"role": "user", "content": "Say hello in French."}], max_tokens=20
        ) as chunks:
            async for chunk in chunks:
                print(chunk.text, end="", flush=True)
        print(f"\n[{chunks.completion.output_tokens} tokens]")
        stats = sched.statistics()
        print(f"completed {stats.completed}, decode rate learned: {stats.decode_rate:.0f} tokens/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3.2")
    parser.add_argument("--base-url", default="http://127.0.0.1:11434")
    parser.add_argument("--slots", type=int, default=1)
    args = parser.parse_args()
    anyio.run(main, args.model, args.base_url, args.slots)
