"""The ``sjfsched`` command line: one sub-command per module, imported lazily.

Each command module exposes ``configure(parser)`` (adds its arguments) and
``run(args) -> int`` (does the work, returns the exit status).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

from ._errors import PredictorError
from ._version import __version__

__all__ = ["at_least_one", "main", "missing_module", "needs_extra", "same_file"]

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("sjfsched._demo", "replay a bundled trace: first-come-first-served against sjfsched"),
    "train": ("sjfsched.predictors._train", "train a length predictor on JSONL logs and export ONNX"),
    "evaluate": ("sjfsched.predictors._evaluate", "rank-accuracy of predictors per corpus and model"),
    "bench": ("sjfsched._bench", "scheduling benchmarks on real traces in virtual time"),
    "serve": ("sjfsched.proxy._cli", "an Ollama/OpenAI-compatible SJF proxy in front of a server"),
}
#: The optional extra each command needs beyond the core dependencies.
EXTRAS: Final = {"train": "train", "evaluate": "train", "bench": "bench", "serve": "proxy"}
#: Modules a command may import late that come with another extra than the command's own.
MODULE_EXTRAS: Final = {"matplotlib": "bench"}  # evaluate --plot
#: What ``sjfsched train --features F`` imports of the ``train`` extra (the ``bench``
#: extra has the lexical ones: the benchmarks train the unseen predictor).
TRAIN_MODULES: Final[dict[str, tuple[str, ...]]] = {
    "lexical": ("scipy", "sklearn", "onnx"),
    "clairvoyant": ("scipy", "xgboost", "sklearn", "onnx", "onnxmltools"),
}


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (the same path resolved, or a hard link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def machine_summary() -> str:
    """The machine a benchmark runs on, for its output: processor, cores, memory, load average."""
    import platform

    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    except (AttributeError, OSError, ValueError):  # not a POSIX system
        memory = "memory unknown"
    load = f"load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "load unknown"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {memory}, {load}"


def at_least_one(text: str) -> int:
    """An argparse type (the bench options, the scripts in benchmarks/): a whole number of 1 or more.

    argparse names the option when it is not.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _evaluate_imports(args: argparse.Namespace) -> tuple[str, ...]:
    from .predictors._evaluate import late_imports  # imported already: it is the command's module

    return late_imports(args)


#: The modules of its extra a command imports only once under way (``train``: after loading
#: all its data; ``evaluate``: after scoring or training, by mode and ``--methods``), by
#: command; checked before the command runs, so that a missing extra ends in one line at
#: once, not in a traceback at the end.
LATE_IMPORTS: Final[dict[str, Callable[[argparse.Namespace], tuple[str, ...]]]] = {
    "train": lambda args: TRAIN_MODULES[args.features],
    "evaluate": _evaluate_imports,
    # Virtual time (trio's MockClock), the progress bar and the plots: imported where used,
    # so that `sjfsched bench --help` shows the options without the extra.
    "bench": lambda args: ("trio", "tqdm", "matplotlib"),
}


def missing_module(modules: Iterable[str]) -> str | None:
    """The first of ``modules`` (top-level names) that is not installed, or ``None``; imports none."""
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return name
    return None


def needs_extra(command: str, missing: str, extra: str, why: str = "not available") -> str:
    """The one line a command missing the module ``missing`` of its extra ``extra`` ends with."""
    return (
        f"sjfsched {command}: {why} (No module named {missing!r}); "
        f"it needs its extra: pip install 'sjfsched[{extra}]'"
    )


def _innermost(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub-)command ``args`` were parsed for: ``sjfsched bench sim``'s."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if chosen is not None:
                return _innermost(chosen, args)
    return parser


class OptionError(SystemExit):
    """A bad option value: its message (one line), and exit status 2 from the command.

    As argparse's own errors for a bad command line; a missing or malformed
    input exits with 1.  Raised like ``SystemExit(message)``, so that
    :func:`main` reports it with the message as its code; :func:`command`,
    the ``sjfsched`` command itself, says it and exits with 2.
    """


def command(argv: Sequence[str] | None = None) -> None:
    """The ``sjfsched`` command (``python -m sjfsched``, the scripts in ``benchmarks/``):
    :func:`main` with its exit status."""
    for stream in (sys.stdout, sys.stderr):
        # A name that is no text (a data file's Latin-1 bytes, a lone surrogate in a record's
        # source) is printed escaped, not a UnicodeEncodeError after the work is done (where
        # Python writes such text as it came, under the C locale, it still does).
        if getattr(stream, "errors", None) == "strict":
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    try:
        status = main(argv)
    except OptionError as exc:
        print(exc.code, file=sys.stderr)
        status = 2
    sys.exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sjfsched",
        description="Shortest-job-first admission for local LLM inference.",
    )
    parser.add_argument("--version", action="version", version=f"sjfsched {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    args_list = list(sys.argv[1:] if argv is None else argv)
    wanted = next((a for a in args_list if not a.startswith("-")), None)
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name != wanted:
            continue  # import only the command being run
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            extra = EXTRAS.get(name)
            hint = f": pip install 'sjfsched[{extra}]'" if extra else ""
            if extra and f"sjfsched[{extra}]" in str(exc):  # the package's own error says it already
                parser.exit(2, f"sjfsched {name}: not available: {exc}\n")
            parser.exit(2, f"sjfsched {name}: not available ({exc}); it needs its extra{hint}\n")
        module.configure(command_parser)
        modules[name] = module
    args, unknown = parser.parse_known_args(args_list)
    if unknown:  # said by the command's own parser, with its usage (--port: serve has --listen)
        before_command = args_list[: args_list.index(wanted)] if wanted in args_list else args_list
        said_by = parser if unknown[0] in before_command else _innermost(parser, args)
        said_by.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = args_list  # the command line as given, for the records a command keeps of itself
    if args.command is None:
        parser.print_help()
        return 2
    late = LATE_IMPORTS.get(args.command)
    missing = missing_module(late(args)) if late is not None else None
    if missing is not None:
        extra = MODULE_EXTRAS.get(missing, EXTRAS[args.command])
        parser.exit(2, needs_extra(args.command, missing, extra) + "\n")
    try:
        return int(modules[args.command].run(args))
    except KeyboardInterrupt:
        # Ctrl-C: one line, as for a user error, not a traceback through the command's workers
        if os.environ.get("SJFSCHED_TRACEBACK"):
            raise
        print(f"sjfsched {args.command}: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, PredictorError) as exc:
        # A missing or malformed input, a bad value: one line naming it, not a traceback
        # (SJFSCHED_TRACEBACK=1 shows the traceback, for bug reports).
        if os.environ.get("SJFSCHED_TRACEBACK"):
            raise
        raise SystemExit(f"sjfsched {args.command}: {str(exc) or type(exc).__name__}") from None


if __name__ == "__main__":  # pragma: no cover
    command()
