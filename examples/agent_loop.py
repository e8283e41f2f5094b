"""Several tool-calling agents sharing one local model, scheduled shortest-first.

A plain function-calling agent loop, the kind agent frameworks run: the model
gets the conversation and either calls a tool (a JSON object
``{"tool": ..., "arguments": {...}}``) or answers.  Four agents run in
threads and share one in-process model.  Hooking the scheduler in is the
two lines marked below: the agents' model call becomes the wrapped model's
``create_chat_completion``, and nothing else changes.  Quick tool-call turns
(few tokens) no longer wait behind another agent's long final answer.

    python examples/agent_loop.py --model path/to/instruct-model.gguf

Without ``--model`` a tiny random-weight model stands in: it never emits a
valid tool call, so every agent answers (gibberish) on its first turn; the
loop, the tools and the scheduling are the same.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llama_cpp import Llama

import sjfsched

ModelCall = Callable[..., Any]  # create_chat_completion(messages=..., max_tokens=...)

TOOLS: dict[str, Callable[..., str]] = {
    "add": lambda a, b: str(a + b),
    "clock": lambda: time.strftime("%H:%M:%S"),
}
SYSTEM = (
    'To use a tool, reply only with JSON: {"tool": "add", "arguments": {"a": 1, "b": 2}} '
    'or {"tool": "clock", "arguments": {}}. Otherwise reply with the final answer.'
)


def run_agent(model: ModelCall, task: str, *, answer_tokens: int, max_turns: int = 4) -> str:
    """The agent loop: ask, run the tool it calls, feed the result back, until it answers."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": task},
    ]
    for _ in range(max_turns):
        reply = model(messages=messages, max_tokens=answer_tokens, temperature=0.2)
        content = reply["choices"][0]["message"]["content"] or ""
        try:
            call = json.loads(content)
            result = TOOLS[call["tool"]](**call.get("arguments", {}))
        except (ValueError, KeyError, TypeError, AttributeError):
            return content  # not a tool call: the final answer
        messages += [{"role": "assistant", "content": content}, {"role": "tool", "content": result}]
    return content


def main(model_path: Path) -> None:
    llm = Llama(str(model_path), n_ctx=2048, n_threads=1, n_threads_batch=1, verbose=False)
    # --- the two lines that add scheduling --------------------------------
    scheduled = sjfsched.wrap(llm)
    model_call: ModelCall = scheduled.create_chat_completion  # was: llm.create_chat_completion
    # ------------------------------------------------------------------------
    tasks = [
        ("Write a detailed report on renewable energy.", 400),
        ("What is 2 + 40? Use the add tool.", 24),
        ("What time is it? Use the clock tool.", 24),
        ("Summarise the plot of Hamlet at length.", 300),
    ]
    start = time.perf_counter()
    lines: list[str] = []

    def agent(task: str, answer_tokens: int) -> None:
        answer = run_agent(model_call, task, answer_tokens=answer_tokens)
        lines.append(f"{time.perf_counter() - start:6.3f}s  {task}\n          -> {answer[:60]!r}")

    threads = [threading.Thread(target=agent, args=task) for task in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("\n".join(sorted(lines)))
    print(scheduled.scheduler.statistics())
    scheduled.close()
    llm.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a chat GGUF model (default: a tiny random one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from sjfsched.testing import write_tiny_llama

            args.model = write_tiny_llama(Path(tmp) / "tiny.gguf", n_ctx=2048)
            print(f"(no --model: using a tiny random-weight model, {args.model})")
        main(args.model)
