"""``python -m sjfsched.testing``: write tiny models and measure what a token costs.

::

    python -m sjfsched.testing write model.gguf --preset medium
    python -m sjfsched.testing speed                 # every preset, one thread
    python -m sjfsched.testing speed --preset small --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._tiny_llama import PRESETS, write_tiny_llama

#: The context ``speed`` measures in, and the most tokens it generates there (its prompts,
#: in the tiny models' byte vocabulary, take about 100 of it).
_N_CTX = 512
_MAX_TOKENS = 400
#: The most threads ``speed`` asks llama.cpp for (it crashes on absurd counts).
_MAX_THREADS = 1024


def _write(args: argparse.Namespace) -> int:
    options: dict[str, Any] = dict(PRESETS[args.preset])
    for name in ("n_layer", "n_embd", "n_head", "n_ff", "n_ctx", "seed", "dtype"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    path = write_tiny_llama(args.path, **options)
    print(f"{path}  {path.stat().st_size / 1e6:.1f} MB  {options}")
    return 0


def _measure(
    path: Path, *, tokens: int, repeat: int, threads: int, threads_batch: int
) -> tuple[float, float, float]:
    """Median milliseconds per generated token (decode only: wall clock, then CPU) and per prompt token.

    On a busy machine the wall-clock figure grows with the load; the CPU time
    (of the whole process) does not, as long as ``threads`` is 1.
    """
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise ImportError(
            "measuring needs llama-cpp-python: pip install 'sjfsched[llama]'", name="llama_cpp"
        ) from exc

    llm = Llama(
        str(path), n_ctx=_N_CTX, n_threads=threads, n_threads_batch=threads_batch, verbose=False, seed=0
    )
    try:
        llm.create_completion("warm up", max_tokens=4)
        decode: list[float] = []
        decode_cpu: list[float] = []
        prefill: list[float] = []
        for i in range(repeat):
            prompt = f"Run {i}: " + "the quick brown fox jumps over the lazy dog " * 2
            t0 = time.perf_counter()
            first: float | None = None
            first_cpu = 0.0
            count = 0
            for _ in llm.create_completion(prompt, max_tokens=tokens, temperature=0, stream=True):
                count += 1
                if first is None:
                    first, first_cpu = time.perf_counter(), time.process_time()
            end, end_cpu = time.perf_counter(), time.process_time()
            assert first is not None
            decode.append((end - first) / max(1, count - 1) * 1000)
            decode_cpu.append((end_cpu - first_cpu) / max(1, count - 1) * 1000)
            prefill.append((first - t0) / len(llm.tokenize(prompt.encode())) * 1000)
        return statistics.median(decode), statistics.median(decode_cpu), statistics.median(prefill)
    finally:
        llm.close()


def _speed(args: argparse.Namespace) -> int:
    from .._cli import machine_summary

    names = [args.preset] if args.preset else list(PRESETS)
    print(f"machine: {machine_summary()}")
    print(
        f"{'preset':<8} {'size MB':>8} {'ms/token':>9} {'CPU ms/token':>13} {'ms/prompt token':>16}"
        f"  (threads={args.threads}, threads_batch={args.threads_batch or args.threads},"
        f" median of {args.repeat})"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            path = write_tiny_llama(Path(tmp) / f"{name}.gguf", **PRESETS[name])
            wall, cpu, prompt = _measure(
                path,
                tokens=args.tokens,
                repeat=args.repeat,
                threads=args.threads,
                threads_batch=args.threads_batch or args.threads,
            )
            size = path.stat().st_size / 1e6
            print(f"{name:<8} {size:>8.1f} {wall:>9.2f} {cpu:>13.2f} {prompt:>16.3f}", flush=True)
            path.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sjfsched.testing", description=(__doc__ or "").partition("\n")[0] or None
    )
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="write a tiny random-weight Llama GGUF file")
    write.add_argument("path", type=Path)
    write.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    for name in ("n_layer", "n_embd", "n_head", "n_ff", "n_ctx", "seed"):
        write.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int)
    write.add_argument("--dtype", choices=["f32", "f16", "q8_0"])
    write.set_defaults(run=_write)
    speed = commands.add_parser("speed", help="measure milliseconds per token of the presets")
    speed.add_argument("--preset", choices=sorted(PRESETS))
    speed.add_argument("--tokens", type=int, default=64)
    speed.add_argument("--repeat", type=int, default=5)
    speed.add_argument("--threads", type=int, default=1, help="n_threads (generation)")
    speed.add_argument("--threads-batch", type=int, help="n_threads_batch (prompt); default: --threads")
    speed.set_defaults(run=_speed)
    args = parser.parse_args(argv)
    if args.command == "speed":
        if args.tokens < 2:  # ms/token is timed between tokens: one token times nothing
            parser.error("--tokens must be at least 2")
        if args.tokens > _MAX_TOKENS:  # the context holds the prompt too: more would be cut silently
            parser.error(f"--tokens must be at most {_MAX_TOKENS} (the measuring context holds {_N_CTX})")
        for name in ("repeat", "threads"):
            if getattr(args, name) < 1:
                parser.error(f"--{name} must be at least 1")
        for name in ("threads", "threads_batch"):
            value = getattr(args, name)
            if value is not None and value > _MAX_THREADS:  # llama.cpp crashes on 100,000
                parser.error(f"--{name.replace('_', '-')} must be at most {_MAX_THREADS}")
        if args.threads_batch is not None and args.threads_batch < 1:
            parser.error("--threads-batch must be at least 1")
    try:
        result: int = args.run(args)
    except (OSError, ValueError) as exc:  # a bad shape, a path that cannot be written: one line
        parser.exit(1, f"python -m sjfsched.testing {args.command}: {exc}\n")
    except MemoryError as exc:  # a shape too large to hold: one line
        parser.exit(1, f"python -m sjfsched.testing {args.command}: not enough memory for it ({exc})\n")
    except ImportError as exc:  # without the llama extra: one line naming it
        parser.exit(2, f"python -m sjfsched.testing {args.command}: {exc}\n")
    return result


if __name__ == "__main__":
    sys.exit(main())
