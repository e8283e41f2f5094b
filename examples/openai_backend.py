"""Shortest-job-first in front of an OpenAI-compatible server.

llama.cpp's ``llama-server`` (or ``python -m llama_cpp.server``, which needs
``pip install "llama-cpp-python[server]"``), LM Studio,
vLLM, LocalAI: anything that serves ``/v1/chat/completions`` and
``/v1/completions``.  A burst of prompts goes through the scheduler; the
short ones finish first.

    llama-server -m model.gguf --port 8080 &
    python examples/openai_backend.py --base-url http://127.0.0.1:8080/v1

LM Studio: ``--base-url http://127.0.0.1:1234/v1``; vLLM:
``--base-url http://127.0.0.1:8000/v1 --model <served name> --slots 8``.
"""

from __future__ import annotations

import argparse

import anyio

from sjfsched import BackendError, Completion, Scheduler
from sjfsched.backends import OpenAIBackend

PROMPTS = [
    ("Write a detailed essay about the history of maps.", 500),
    ("2+2? Answer with the number.", 4),
    ("Explain TCP congestion control step by step.", 400),
    ("Say hi.", 4),
]


async def main(base_url: str, model: str | None, api_key: str | None, slots: int) -> None:
    backend = OpenAIBackend(base_url, model=model, api_key=api_key, slots=slots)
    async with Scheduler(backend) as sched:
        finished: list[Completion] = []
        errors: list[BackendError] = []

        async def ask(prompt: str, max_tokens: int) -> None:
            messages = [{"role": "user", "content": prompt}]
            try:
                finished.append(await sched.complete(messages=messages, max_tokens=max_tokens))
            except BackendError as error:  # the server's own message, or why it could not be reached
                errors.append(error)

        async with anyio.create_task_group() as tg:
            for prompt, max_tokens in PROMPTS:
                tg.start_soon(ask, prompt, max_tokens)
        if errors:
            raise SystemExit(f"the server failed: {errors[0]}")
        print(f"model: {backend.model}")
        for c in finished:
            print(
                f"{c.latency:7.2f}s  {c.output_tokens:4d} tokens ({c.finish_reason}): {c.request.text[:45]}"
            )

        print("\nstreamed completion:")
        async with sched.stream("The three laws of robotics are", max_tokens=30) as chunks:
            async for chunk in chunks:
                print(chunk.text, end="", flush=True)
        print(f"\n[{chunks.completion.output_tokens} tokens]")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--model", help="the served model's name (default: ask the server)")
    parser.add_argument("--api-key")
    parser.add_argument("--slots", type=int, default=1)
    args = parser.parse_args()
    anyio.run(main, args.base_url, args.model, args.api_key, args.slots)
