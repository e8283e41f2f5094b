"""A custom policy: least slack first, for requests with deadlines.

Subclass Scheduler and override sort_key(), the one method that orders the
queue.  Here each request may carry a deadline (seconds from now) in its
metadata; the request with the least slack (deadline minus estimated service
time) runs first, and requests without a deadline fall back to plain
shortest-job-first behind them.  The simulated server can pause an answer,
so a deadline request that arrives pauses the one running (``preempt=True``,
the default where the backend can resume): its line says how often it was
paused, and its time in all counts the pauses.

Runs in virtual time against a simulated server, no model needed:

    python examples/custom_policy.py
"""

from __future__ import annotations

import math
from typing import Any

import anyio

from sjfsched import Job, Request, Scheduler, run_virtual
from sjfsched.backends import SimulatedBackend


class DeadlineScheduler(Scheduler):
    def sort_key(self, job: Job) -> Any:
        deadline = job.request.metadata.get("deadline")
        if deadline is None:
            # No deadline: after every deadline request, shortest first (with aging).
            return (job.request.priority, 1, super().sort_key(job)[1])
        slack = job.submitted + float(deadline) - job.estimate
        return (job.request.priority, 0, slack)


async def main() -> None:
    backend = SimulatedBackend(prefill_rate=2000, decode_rate=40)
    requests = [
        Request("Translate 'hello' to French.", metadata={"output_tokens": 5}),
        Request("Write a long report on the quarter.", metadata={"output_tokens": 1200}),
        Request(
            "Summarise this ticket for the on-call engineer.",
            metadata={"output_tokens": 150, "deadline": 60},
        ),
        Request("Draft the release notes.", metadata={"output_tokens": 600, "deadline": 30}),
        Request("Generate unit tests for parser.py.", metadata={"output_tokens": 900}),
    ]
    async with DeadlineScheduler(backend, decode_rate=40) as sched:

        async def one(request: Request) -> None:
            c = await sched.complete(request)
            deadline = request.metadata.get("deadline", math.inf)
            met = "met" if c.latency <= deadline else "MISSED"
            # latency: from submission to the end, pauses included; waited: before its first turn
            paused = f"paused {c.preemptions}x" if c.preemptions else ""
            print(
                f"t={c.finished:6.1f}s  in all {c.latency:5.1f}s  waited {c.wait:5.1f}s  {paused:<10}"
                f"{request.text[:45]:<45}"
                + (f"  deadline {deadline:.0f}s {met}" if deadline != math.inf else "")
            )

        async with anyio.create_task_group() as tg:
            for request in requests:
                tg.start_soon(one, request)
                await anyio.sleep(0.01)


if __name__ == "__main__":
    run_virtual(main)
