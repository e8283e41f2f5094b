"""One scheduler in front of several Ollama hosts (or one with OLLAMA_NUM_PARALLEL).

Each ``--host URL=SLOTS`` is an Ollama server and how many requests it runs at
once.  The scheduler runs ``sum(slots)`` requests at a time, shortest first;
the pool sends each to the first host with a free slot, takes a failing host
out of rotation and sends the request elsewhere if nothing was streamed yet.

    python examples/pool.py --model llama3.2 \
        --host http://gpu-1:11434=4 --host http://gpu-2:11434=1
"""

from __future__ import annotations

import argparse
import sys

import anyio

from sjfsched import BackendError, Scheduler
from sjfsched.backends import BackendPool, OllamaBackend


async def main(model: str, hosts: list[tuple[str, int]], requests: int) -> int:
    """Exit status 1 if every request failed (no host answered)."""
    pool = BackendPool(
        [(OllamaBackend(model, url, slots=slots, connect_timeout=2), slots) for url, slots in hosts],
        retry_after=5,
    )
    async with Scheduler(pool) as sched:
        print(f"{len(hosts)} host(s), {pool.slots} slots: concurrency {sched.concurrency}")
        results: list[str] = []
        failed: list[str] = []

        async def ask(i: int) -> None:
            # Mixed lengths: every third request is long.
            max_tokens = 300 if i % 3 == 0 else 12
            prompt = f"Request {i}: " + ("tell a long story." if i % 3 == 0 else "say one word.")
            try:
                c = await sched.complete(prompt, max_tokens=max_tokens)
                results.append(f"{c.latency:6.2f}s  {c.output_tokens:4d} tokens  {prompt}")
            except BackendError as error:
                results.append(f"FAILED  {prompt}: {error}")
                failed.append(prompt)

        async with anyio.create_task_group() as tg:
            for i in range(requests):
                tg.start_soon(ask, i)
        print("\n".join(sorted(results)))
        for member in pool.statistics().members:
            state = "in rotation" if member.healthy else f"out of rotation, retry in {member.retry_in:.1f}s"
            print(f"{member.name}: served {member.served}, {state}")
    return 1 if len(failed) == requests else 0


def host(value: str) -> tuple[str, int]:
    url, _, slots = value.rpartition("=")
    if not url:
        return value, 1
    return url, int(slots)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3.2")
    parser.add_argument("--host", type=host, action="append", help="URL=SLOTS (repeatable)")
    parser.add_argument("--requests", type=int, default=9)
    args = parser.parse_args()
    sys.exit(anyio.run(main, args.model, args.host or [("http://127.0.0.1:11434", 1)], args.requests))
