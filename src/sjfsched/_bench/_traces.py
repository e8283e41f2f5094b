"""Traces: real prompts with the real answer lengths of one answering model.

A built-in trace (:data:`TRACES`) is built from one corpus file of
``../shared/data`` (the schema is in that directory's README): every record
whose ``model`` is the chosen answering model (and, for CASTILLO, whose
``source`` is in the chosen subsets).  A trace can also be your own file:
``requests.jsonl`` or ``requests.jsonl.gz`` in the same schema (what
:class:`sjfsched.RequestLog` writes), optionally ``requests.jsonl#MODEL`` to
keep one answering model's records.  Each item keeps the prompt text, the
answer's length in tokens and the prompt's length in tokens (the model's own
count, ``input_tokens``, where the record has it, else characters / 4).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from .._records import Request
from ..predictors._base import LONG_TOKENS, SHORT_TOKENS
from ..predictors._corpus import MAX_OUTPUT_TOKENS, is_test, iter_json_lines, parse_record, prompt_id_of

__all__ = [
    "LONG_TOKENS",
    "SHORT_TOKENS",
    "TRACES",
    "Trace",
    "TraceItem",
    "TraceSpec",
    "default_data_dir",
    "UNSEEN_BUILT_IN_ONLY",
    "is_file_trace",
    "length_class",
    "load_trace",
    "trace_file",
    "unknown_trace",
]


def length_class(output_tokens: float) -> str:
    """``"short"`` (< 200 tokens), ``"medium"`` or ``"long"`` (>= 800)."""
    if output_tokens < SHORT_TOKENS:
        return "short"
    if output_tokens >= LONG_TOKENS:
        return "long"
    return "medium"


@attrs.frozen
class TraceSpec:
    """Which records of which corpus file make a trace."""

    name: str
    file: str
    model: str
    #: ``source`` values to keep; empty keeps all.
    sources: tuple[str, ...] = ()
    description: str = ""
    #: Source patterns left out of the training of the ``unseen`` predictor for this trace.
    holdout: tuple[str, ...] = ()


_CASTILLO = "castillo_code_and_instruct.jsonl.gz"
_CODE = ("castillo/Apps", "castillo/BigCodeBench", "castillo/DS1000", "castillo/Mbpp")

#: The traces the benchmarks run, by name.  See docs/benchmarks.md for why.
TRACES: dict[str, TraceSpec] = {
    spec.name: spec
    for spec in (
        TraceSpec(
            "castillo-llama1b",
            _CASTILLO,
            "meta-llama/Llama-3.2-1B-Instruct",
            description="CASTILLO, all six subsets (instructions and code), answered by the small "
            "open Llama-3.2-1B-Instruct",
            holdout=("castillo/*",),
        ),
        TraceSpec(
            "castillo-code-llama70b",
            _CASTILLO,
            "meta-llama/Llama-3.3-70B-Instruct",
            sources=_CODE,
            description="CASTILLO code subsets (Apps, BigCodeBench, DS1000, Mbpp), answered by the "
            "large open Llama-3.3-70B-Instruct",
            holdout=("castillo/*",),
        ),
        TraceSpec(
            "arena-llama3-8b",
            "arena_hard_v01.jsonl.gz",
            "llama-3-8b-instruct",
            description="Arena-Hard v0.1 (real Chatbot Arena prompts), answered by the small open "
            "Llama-3-8B-Instruct",
            holdout=("arena-hard-v0.1",),
        ),
        TraceSpec(
            "arena-llama3-70b",
            "arena_hard_v01.jsonl.gz",
            "llama-3-70b-instruct",
            description="Arena-Hard v0.1, answered by the large open Llama-3-70B-Instruct",
            holdout=("arena-hard-v0.1",),
        ),
        TraceSpec(
            "sharegpt",
            "sharegpt_natural.jsonl.gz",
            "chatgpt",
            description="ShareGPT natural user turns with ChatGPT's answers (lengths are characters / 4)",
            holdout=("sharegpt-natural",),
        ),
    )
}


@attrs.frozen
class TraceItem:
    """One prompt and the length of the answer it got."""

    prompt: str
    output_tokens: int
    prompt_tokens: int
    source: str = ""

    @property
    def length_class(self) -> str:
        return length_class(self.output_tokens)

    def request(self, **fields: Any) -> Request:
        """A :class:`Request` for this prompt.

        The true lengths ride along in ``metadata`` (``output_tokens``,
        ``prompt_tokens``), where :class:`~sjfsched.backends.SimulatedBackend`
        and the oracle predictor read them; the scheduler's own predictors
        never look there.
        """
        return Request(
            self.prompt,
            metadata={"output_tokens": self.output_tokens, "prompt_tokens": self.prompt_tokens},
            **fields,
        )


@attrs.frozen
class Trace:
    """A named list of trace items."""

    name: str
    items: tuple[TraceItem, ...]
    description: str = ""
    #: For a ``NAME/fresh`` trace: the other half of the prompts, whose
    #: completions a ``warm=N`` policy learns from before its run.
    history: tuple[TraceItem, ...] = ()

    def __attrs_post_init__(self) -> None:
        if not self.items:
            raise ValueError(f"trace {self.name!r} is empty")

    def __len__(self) -> int:
        return len(self.items)

    def class_shares(self) -> dict[str, float]:
        """The fraction of short, medium and long answers."""
        counts = {"short": 0, "medium": 0, "long": 0}
        for item in self.items:
            counts[item.length_class] += 1
        return {k: v / len(self.items) for k, v in counts.items()}

    def sample(self, n: int, rng: random.Random, *, replace: bool = False) -> list[TraceItem]:
        """``n`` items drawn at random (without replacement unless asked)."""
        if replace:
            return rng.choices(self.items, k=n)
        if n > len(self.items):
            raise ValueError(f"trace {self.name!r} has {len(self.items)} items, cannot draw {n}")
        return rng.sample(self.items, n)


def default_data_dir() -> Path | None:
    """``../shared/data`` next to the current directory or to this source checkout, if present.

    Not next to any folder above an installed package (a virtual environment's): a folder of
    that name there is someone else's.
    """
    candidates = [Path.cwd() / ".." / "shared" / "data"]
    checkout = Path(__file__).resolve().parents[3]  # src/sjfsched/_bench/_traces.py
    if (checkout / "pyproject.toml").is_file() and (checkout / "src" / "sjfsched").is_dir():
        candidates.append(checkout / ".." / "shared" / "data")
    for candidate in candidates:
        if (candidate / "README.md").is_file() or any(candidate.glob("*.jsonl.gz")):
            return candidate.resolve()
    return None


def corpora_dir(given: Path | None) -> Path | None:
    """``--data`` where given, else :func:`default_data_dir` (None where there is none)."""
    return given if given is not None else default_data_dir()


#: Suffix of a trace name that splits its prompts in two halves (see :func:`load_trace`).
FRESH: Final = "/fresh"


def base_name(name: str) -> str:
    """The trace a (possibly ``/fresh``) trace name is drawn from."""
    return name.removesuffix(FRESH)


#: Separates a trace file's path from the answering model to keep: ``requests.jsonl#llama3.2:3b``.
MODEL_SEPARATOR: Final = "#"
_FILE_SUFFIXES: Final = (".jsonl", ".jsonl.gz")


def split_file_trace(name: str) -> tuple[str, str | None]:
    """``PATH.jsonl[.gz][#MODEL]`` -> (path, model or None).

    The model follows the ``#`` right after the suffix, so a path may hold ``#`` too.
    """
    for suffix in _FILE_SUFFIXES[::-1]:  # .jsonl.gz before .jsonl
        at = name.rfind(suffix + MODEL_SEPARATOR)
        if at >= 0:
            cut = at + len(suffix)
            return name[:cut], name[cut + len(MODEL_SEPARATOR) :]
    return name, None


def is_file_trace(name: str) -> bool:
    """Whether a trace name is a file (``PATH.jsonl[.gz][#MODEL][/fresh]``) rather than a built-in trace."""
    path = split_file_trace(base_name(name))[0]
    return base_name(name) not in TRACES and path.endswith(_FILE_SUFFIXES)


def is_trace_name(name: str) -> bool:
    """A built-in trace, a trace file, or either with ``/fresh``."""
    return base_name(name) in TRACES or is_file_trace(name)


def unknown_trace(name: str) -> str:
    """The message for a name that is no trace (see :func:`is_trace_name`)."""
    return (
        f"unknown trace {name!r}; choose from {', '.join(TRACES)} (each also as NAME/fresh) "
        "or give a .jsonl or .jsonl.gz file"
    )


#: Why the ``unseen`` policies do not run on trace files.
UNSEEN_BUILT_IN_ONLY: Final = (
    "the unseen predictor exists only for the built-in traces: it is the bundled recipe trained "
    "without the trace's corpus; on your own files, `sjfsched` is the bundled model, which was not "
    "trained on them (unless they come from ../shared/data)"
)


def trace_file(spec: TraceSpec, data_dir: Path | str) -> Path:
    """The corpus file a built-in trace is read from; :class:`FileNotFoundError` naming it if missing."""
    path = Path(data_dir) / spec.file
    if not path.is_file():
        raise FileNotFoundError(f"trace {spec.name!r} needs {path}, which does not exist")
    return path


def load_trace(spec: TraceSpec | str, data_dir: Path | str) -> Trace:
    """Read a trace's records from ``data_dir``.

    ``NAME/fresh`` is the trace ``NAME`` split by prompt (half of the
    prompts, chosen by a hash of their id): the scenarios draw from one half,
    and the other half is the trace's ``history``, the past completions a
    ``warm=N`` policy learns from, so that what it learnt is measured on
    prompts it has never seen.

    Raises :class:`FileNotFoundError` naming the missing file, and
    :class:`ValueError` if no record matches the spec.
    """
    if isinstance(spec, str):
        if spec.endswith(FRESH):
            whole = load_trace(base_name(spec), data_dir)
            test = tuple(i for i in whole.items if is_test(prompt_id_of(i.prompt), 0.5, seed=0))
            history = tuple(i for i in whole.items if not is_test(prompt_id_of(i.prompt), 0.5, seed=0))
            return Trace(spec, test, whole.description + " (half of its prompts; the rest: history)", history)
        if is_file_trace(spec):
            return _load_file(spec)
        if spec not in TRACES:
            raise ValueError(unknown_trace(spec))
        spec = TRACES[spec]
    path = trace_file(spec, data_dir)
    items = _read(path, spec.model, spec.sources)
    if not items:
        raise ValueError(f"no record of {path} has model {spec.model!r} and source in {spec.sources}")
    return Trace(spec.name, tuple(items), spec.description)


def _read(path: Path, model: str, sources: Sequence[str]) -> list[TraceItem]:
    keep = set(sources)
    items: list[TraceItem] = []
    seen: set[tuple[object, str]] = set()
    for line, record in iter_json_lines(path):
        if not isinstance(record, dict):
            continue
        if record.get("model") != model or (keep and record.get("source") not in keep):
            continue
        prompt = record.get("prompt")
        output = record.get("output_tokens")
        if not isinstance(prompt, str) or not prompt.strip() or not isinstance(output, (int, float)):
            continue
        # One item per prompt: a trace is one deployment answering each prompt once.  The id
        # with the text: an id may name a conversation, whose prompts all differ.
        key = (record.get("prompt_id"), prompt)
        if key in seen:
            continue
        seen.add(key)
        items.append(_item(record, prompt, output, str(record.get("source", "")), f"{path}:{line}"))
    return items


#: The most tokens an answer or a prompt of a trace may have: above any model's context (the
#: bound records are read with), and far below what would overflow the simulation's counts.
MAX_TOKENS: Final = MAX_OUTPUT_TOKENS


def _item(record: dict[str, Any], prompt: str, output: float, source: str, where: str) -> TraceItem:
    """A trace item of ``record`` (line ``where``); a :class:`ValueError` names the line if a
    length is out of bounds."""
    if output > MAX_TOKENS:
        raise ValueError(f"{where}: 'output_tokens' must be at most {MAX_TOKENS:,}, got {_shown(output)}")
    prompt_tokens = record.get("input_tokens")
    if isinstance(prompt_tokens, bool) or not isinstance(prompt_tokens, (int, float)):
        prompt_tokens = None
    elif not (math.isfinite(prompt_tokens) and prompt_tokens <= MAX_TOKENS):
        raise ValueError(
            f"{where}: 'input_tokens' must be a finite number up to {MAX_TOKENS:,}, "
            f"got {_shown(prompt_tokens)}"
        )
    if prompt_tokens is None or prompt_tokens <= 0:
        prompt_tokens = math.ceil(len(prompt) / 4)
    return TraceItem(
        prompt=prompt,
        output_tokens=max(1, round(output)),
        prompt_tokens=max(1, round(prompt_tokens)),
        source=source,
    )


def _shown(tokens: float) -> str:
    """A token count for a message (an integer of hundreds of digits is not printed)."""
    if isinstance(tokens, int) and tokens.bit_length() > 100:
        return "a number too large"
    return f"{tokens:g}" if isinstance(tokens, float) else str(tokens)


def _load_file(name: str) -> Trace:
    """A trace from a JSON-lines file of your own (see the module docstring).

    Every line must be a record with a string ``prompt`` and a finite
    ``output_tokens`` >= 0 and at most :data:`MAX_TOKENS` (10,000,000), and ``input_tokens``, if a number,
    finite and at most :data:`MAX_TOKENS` (a :class:`ValueError` names the line otherwise);
    records without ``model`` count as model ``"unknown"``.  As for the
    built-in traces, a prompt answered more than once (the same ``prompt_id``
    and text) gives one item (its first answer); prompts that share an id
    (one per conversation, say) are each kept.  A file with answers of several models needs
    ``#MODEL``: mixing them would mix deployments.
    """
    path_text, chosen = split_file_trace(name)
    separator, model = ("", "") if chosen is None else (MODEL_SEPARATOR, chosen)
    path = Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(f"trace file {path} does not exist")
    by_model: dict[str, list[TraceItem]] = {}
    seen: set[tuple[str, str, str]] = set()
    for line, raw in iter_json_lines(path):
        record = parse_record(raw, path, line)
        if not record.prompt.strip():
            raise ValueError(f"{path}:{line}: 'prompt' is empty")
        if separator and record.model != model:
            by_model.setdefault(record.model, [])
            continue
        # A prompt answered again (the same id and text) counts once; an id that names a
        # conversation keeps each of its prompts.
        key = (record.model, record.prompt_id, record.prompt)
        if key in seen:
            continue
        seen.add(key)
        item = _item(raw, record.prompt, record.output_tokens, record.source, f"{path}:{line}")
        by_model.setdefault(record.model, []).append(item)
    models = sorted(by_model)
    if not separator and len(models) > 1:
        listed = ", ".join(repr(m) for m in models[:10]) + (", ..." if len(models) > 10 else "")
        raise ValueError(
            f"{path} has answers of {len(models)} models ({listed}); "
            f"keep one with {path}{MODEL_SEPARATOR}MODEL"
        )
    items = by_model.get(model) if separator else by_model.get(models[0]) if models else None
    if not items:
        if separator:
            listed = ", ".join(repr(m) for m in models[:10]) or "none"
            raise ValueError(f"no record of {path} has model {model!r} (its models: {listed})")
        raise ValueError(f"{path} has no records")
    kept = model if separator else models[0]
    return Trace(name, tuple(items), f"{path}: {len(items)} prompts answered by {kept}")
