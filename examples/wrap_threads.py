"""A threaded program over one llama_cpp.Llama, made safe and shortest-first by one line.

Eight threads share one model.  Without the ``sjfsched.wrap`` line, two of
them calling the model at once crash llama.cpp (``GGML_ASSERT``) or garble
both answers; with it, each call waits its turn, the short ones first, and
every call returns exactly what ``Llama`` returns.

    python examples/wrap_threads.py --model path/to/model.gguf
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llama_cpp import Llama

import sjfsched

JOBS = [
    ("Write an essay on the history of printing.", 300),
    ("2+2?", 4),
    ("Explain B-trees with examples.", 250),
    ("Capital of Peru?", 6),
    ("Write a short story about a robot painter.", 200),
    ("Is 97 prime?", 5),
    ("Describe how sourdough bread is made.", 220),
    ("Say hi.", 3),
]


def main(model: Path) -> None:
    # The one line: wrap() the Llama, and it is thread-safe and shortest first.
    llm = sjfsched.wrap(Llama(str(model), n_ctx=1024, n_threads=1, n_threads_batch=1, verbose=False))

    start = time.perf_counter()

    def ask(job: tuple[str, int]) -> str:
        prompt, max_tokens = job
        if max_tokens < 10:  # short ones as chat, to show both methods
            out = llm.create_chat_completion([{"role": "user", "content": prompt}], max_tokens=max_tokens)
            tokens = out["usage"]["completion_tokens"]
        else:
            out = llm(prompt, max_tokens=max_tokens)
            tokens = out["usage"]["completion_tokens"]
        return f"{time.perf_counter() - start:6.3f}s  {tokens:4d} tokens  {prompt}"

    with ThreadPoolExecutor(len(JOBS)) as pool:
        for line in sorted(pool.map(ask, JOBS)):
            print(line)
    print(llm.scheduler.statistics())
    llm.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a GGUF model file (default: a tiny random one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from sjfsched.testing import write_tiny_llama

            args.model = write_tiny_llama(Path(tmp) / "tiny.gguf", n_ctx=1024)
            print(f"(no --model: using a tiny random-weight model, {args.model})")
        main(args.model)
