"""Shortest-job-first from threaded code, with SyncScheduler.

Eight worker threads each send one prompt to one shared model.  The model here
is a function that takes 2 ms per word of its answer and answers long
prompts at length (swap in your own client call).  The scheduler runs first
the prompts its predictor expects short answers to: they are its guesses,
not certainties, so the order is mostly, not always, shortest first.

    python examples/threads.py
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from sjfsched import Request, SyncScheduler
from sjfsched.backends import CallableBackend


def slow_model(request: Request) -> str:
    """A stand-in for a blocking model call: long prompts get long answers."""
    words = 5 + 10 * len(request.text.split())
    time.sleep(0.002 * words)
    return "word " * words


PROMPTS = [
    "Write a detailed, well-structured essay about the history of the printing press in Europe.",
    "What is 2 + 2? Answer with the number.",
    "Explain, step by step and with examples, how a B-tree keeps itself balanced on insert.",
    "Capital of Peru?",
    "Write a short story, at least five paragraphs, about a robot who learns to paint.",
    "Is 97 prime?",
    "Describe every stage of making sourdough bread from starter to the finished loaf.",
    "Say hi.",
]


def main() -> None:
    with SyncScheduler(CallableBackend(slow_model)) as sched:
        start = time.perf_counter()

        def ask(prompt: str) -> str:
            sched.complete(prompt)
            return f"{time.perf_counter() - start:5.2f}s  {prompt[:50]}"

        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            for line in sorted(pool.map(ask, PROMPTS)):
                print(line)
        print(sched.statistics())


if __name__ == "__main__":
    main()
