"""``sjfsched evaluate``: how well predictors rank short answers before long ones.

Two measures, per corpus and per answering model:

- **ranking accuracy** (Clairvoyant's): of every pair of a short answer
  (< 200 tokens) and a long one (>= 800), the fraction where the long one's
  prompt is ranked above the short one's; ties count half, so a constant
  scores 0.5.
- **Kendall's tau** (tau-b) between the prediction and the real length, over
  all answers.

``sjfsched evaluate DATA --model M.onnx`` scores one model on the answers it
was not trained on, as its metadata says: all of a source it was not trained
on, the held-out part of the grouped split of the others (``--split test``
for that part alone, ``--split all`` for every record).
``sjfsched evaluate DATA --compare [--loco]`` trains and compares, on the same
splits, prompt length alone, Clairvoyant's 19 features with its XGBoost, a
plain ridge regression on hashed word and character n-grams, and the lexical
model: in-distribution (grouped by ``prompt_id``) and, with ``--loco``,
leave-one-corpus-out (train on the other corpora, test on the one left out).
``sjfsched evaluate DATA --predictor other-answers`` scores each answer by
the other answers to its prompt: how much of the length the prompt decides,
about the most any predictor that reads only the prompt can rank.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import numpy as np
import numpy.typing as npt

from ._base import LONG_TOKENS, SHORT_TOKENS
from ._corpus import LengthRecord, group_by_prompt, in_sample, load_records, without_prompts_of
from ._vectors import DEFAULT_WEIGHT as VECTOR_WEIGHT
from ._vectors import WordVectors

__all__ = [
    "ReportRow",
    "configure",
    "format_report",
    "kendall_tau",
    "late_imports",
    "other_answers",
    "other_answers_accuracy",
    "plot_compare",
    "ranking_accuracy",
    "report_rows",
    "run",
]


def ranking_accuracy(scores: npt.ArrayLike, tokens: npt.ArrayLike) -> float:
    """Fraction of (short, long) pairs ranked long-above-short; ties count half.

    ``nan`` when there is no short or no long answer.
    """
    s = np.asarray(scores, np.float64)
    t = np.asarray(tokens, np.float64)
    shorts = np.sort(s[t < SHORT_TOKENS])
    longs = s[t >= LONG_TOKENS]
    if len(shorts) == 0 or len(longs) == 0:
        return float("nan")
    below = np.searchsorted(shorts, longs, side="left")
    tied = np.searchsorted(shorts, longs, side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (len(shorts) * len(longs)))


def kendall_tau(scores: npt.ArrayLike, tokens: npt.ArrayLike) -> float:
    """Kendall's tau-b between scores and lengths (``nan`` if undefined)."""
    from scipy.stats import kendalltau  # type: ignore[import-untyped]

    s = np.asarray(scores, np.float64)
    t = np.asarray(tokens, np.float64)
    if len(s) < 2:
        return float("nan")
    return float(kendalltau(s, t).statistic)


@attrs.frozen
class ReportRow:
    corpus: str
    model: str  # "" for the whole corpus
    answers: int
    short: int
    long: int
    accuracy: float
    tau: float


def report_rows(
    records: Sequence[LengthRecord], scores: npt.ArrayLike, *, per_model: bool = True
) -> list[ReportRow]:
    """Ranking accuracy and tau per corpus, then per answering model within it."""
    s = np.asarray(scores, np.float64)
    tokens = np.array([r.output_tokens for r in records])
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[(r.corpus, "")].append(i)
        if per_model:
            groups[(r.corpus, r.model)].append(i)
    rows = []
    for (corpus, model), idx in sorted(groups.items()):
        if model and len(groups[(corpus, "")]) == len(idx):
            continue  # a corpus with one answering model: its row says it all
        ix = np.array(idx)
        t = tokens[ix]
        rows.append(
            ReportRow(
                corpus,
                model,
                len(ix),
                int((t < SHORT_TOKENS).sum()),
                int((t >= LONG_TOKENS).sum()),
                ranking_accuracy(s[ix], t),
                kendall_tau(s[ix], t),
            )
        )
    return rows


def other_answers(records: Sequence[LengthRecord]) -> tuple[list[LengthRecord], npt.NDArray[np.float64]]:
    """Each answer scored by the mean ``log(1 + tokens)`` of the other answers to its prompt.

    What a predictor that knew each prompt's typical answer length from
    other answers (other models, or the same model another time) would
    score: about the most any predictor reading only the prompt can rank.
    Prompts are told apart as :func:`group_by_prompt` tells them: by
    corpus, ``prompt_id`` and text (an id given per conversation does not
    make its different prompts one).  Answers to a prompt answered once have
    no other answers and are left out.  Returns the answers kept, in their
    order, and their scores.
    """
    logs = np.log1p(np.array([r.output_tokens for r in records], np.float64))
    index: dict[tuple[str, str, str], int] = {}
    group = np.array(
        [index.setdefault((r.corpus, r.prompt_id, r.prompt.strip()), len(index)) for r in records], np.int64
    )
    if not len(group):
        return [], np.zeros(0)
    sums = np.bincount(group, logs)
    counts = np.bincount(group)[group]
    keep = counts > 1
    scores = (sums[group] - logs) / np.maximum(counts - 1, 1)
    return [r for r, k in zip(records, keep.tolist(), strict=True) if k], scores[keep]


def other_answers_accuracy(records: Sequence[LengthRecord], *, at_least: int = 20) -> float:
    """Ranking accuracy of :func:`other_answers` over ``records``.

    ``nan`` unless the answers it can score (those to prompts answered more
    than once) hold at least ``at_least`` short and ``at_least`` long ones.
    """
    kept, scores = other_answers(records)
    tokens = np.array([r.output_tokens for r in kept], np.float64)
    if (tokens < SHORT_TOKENS).sum() < at_least or (tokens >= LONG_TOKENS).sum() < at_least:
        return float("nan")
    return ranking_accuracy(scores, tokens)


#: Bar colours of ``--plot``, by method (others take matplotlib's cycle).
_METHOD_COLORS: Final = {
    "length": "#9e9e9e",
    "clairvoyant-xgb": "#d62728",
    "ridge-ngrams": "#ff7f0e",
    "lexical": "#9ecae1",
    "lexical-vectors": "#1f77b4",
}

#: The legend entry of the marks of :func:`other_answers_accuracy` in ``--plot``.
OTHER_ANSWERS_LABEL: Final = "the prompt's other answers"

#: One panel of ``--plot``: its title, then per corpus each method's (accuracy, per model, tau)
#: and the accuracy of the prompt's other answers.
Panel = tuple[str, dict[str, dict[str, tuple[float, float, float]]], dict[str, float]]


def plot_compare(path: Path, panels: Sequence[Panel], methods: Sequence[str]) -> list[str]:
    """The tables of :func:`compare` as grouped bars, one panel a table (PNG, matplotlib).

    Each corpus gets a bar per method (ranking accuracy over all its
    answers), and a black mark where its prompts' other answers rank
    (:func:`other_answers_accuracy`, where it has enough answers): about the
    most a predictor reading only the prompt can do.  A dashed line marks
    chance (0.5).  Drawn on a figure of its own (matplotlib's global backend
    and pyplot's figures are left alone).  Returns the legend's labels.
    """
    import textwrap

    import matplotlib
    from matplotlib.figure import Figure

    shown = [(title, results, ceilings) for title, results, ceilings in panels if results]
    n = max(len(shown), 1)
    fig = Figure(figsize=(6.4 * n, 4.4))
    axes = fig.subplots(1, n, squeeze=False, sharey=True)[0]
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(len(methods), 1)
    lowest = 0.5
    for ax, (title, results, ceilings) in zip(axes, shown, strict=False):
        corpora = [c for c in results if not all(np.isnan(results[c][m][0]) for m in methods)]
        x = np.arange(len(corpora))
        for k, m in enumerate(methods):
            heights = [results[c][m][0] for c in corpora]
            lowest = min([lowest, *(h for h in heights if not np.isnan(h))])
            color = _METHOD_COLORS.get(m, cycle[k % len(cycle)])
            ax.bar(x - 0.4 + width * (k + 0.5), heights, width, label=m, color=color)
        marks = [(i, ceilings[c]) for i, c in enumerate(corpora) if not np.isnan(ceilings.get(c, np.nan))]
        if marks:
            lowest = min([lowest, *(v for _, v in marks)])
            ax.scatter(
                [i for i, _ in marks], [v for _, v in marks], marker="_", s=900, linewidths=2.5,
                color="black", zorder=3, label=OTHER_ANSWERS_LABEL,
            )  # fmt: skip
        ax.axhline(0.5, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(x, [textwrap.fill(c, 16) for c in corpora], fontsize=9)
        ax.set_title(title.split(":")[0], fontsize=11)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes:
        ax.set_ylim(0.3 if lowest >= 0.32 else max(0.0, lowest - 0.05), 1.02)
    axes[0].set_ylabel("ranking accuracy\n(long above short; 0.5: chance)")
    handles: dict[str, Any] = {}
    for ax in axes:  # every panel's entries: a mark may be drawn in one panel only
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=max(1, min(len(handles), 6)),
               frameon=False)  # fmt: skip
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110, format="png")
    return list(handles)


def _num(x: float) -> str:
    return "  -  " if np.isnan(x) else f"{x:.3f}"


def format_report(rows: Sequence[ReportRow]) -> str:
    width = max([len(r.model) + 2 if r.model else len(r.corpus) for r in rows] + [24])
    out = [f"{'corpus / answering model':<{width}}  answers  short   long  rank-acc  tau"]
    for r in rows:
        name = r.corpus if not r.model else f"  {r.model}"
        counts = f"{r.answers:7d}  {r.short:5d}  {r.long:5d}"
        out.append(f"{name:<{width}}  {counts}  {_num(r.accuracy):>8}  {_num(r.tau):>5}")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ comparison

#: name -> fit(train records) -> score(texts)
Method = Callable[[Sequence[LengthRecord]], Callable[[Sequence[str]], npt.NDArray[np.float64]]]


def _length(train: Sequence[LengthRecord]) -> Callable[[Sequence[str]], npt.NDArray[np.float64]]:
    return lambda texts: np.array([float(len(t)) for t in texts])


def _clairvoyant(train: Sequence[LengthRecord]) -> Callable[[Sequence[str]], npt.NDArray[np.float64]]:
    from ._clairvoyant import clairvoyant_features
    from ._train import fit_clairvoyant

    model, _ = fit_clairvoyant(train)

    def score(texts: Sequence[str]) -> npt.NDArray[np.float64]:
        x = np.array([clairvoyant_features(t) for t in texts], np.float32)
        return np.asarray(model.predict_proba(x)[:, 2], np.float64)

    return score


def _ridge(train: Sequence[LengthRecord]) -> Callable[[Sequence[str]], npt.NDArray[np.float64]]:
    """The plain baseline: ridge on hashed word 1-2-grams and char_wb 3-5-grams, one row per answer."""
    import scipy.sparse as sp  # type: ignore[import-untyped]
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import Ridge

    words = HashingVectorizer(analyzer="word", ngram_range=(1, 2), n_features=1 << 20, alternate_sign=False)
    chars = HashingVectorizer(
        analyzer="char_wb", ngram_range=(3, 5), n_features=1 << 20, alternate_sign=False
    )

    def matrix(texts: Sequence[str]) -> Any:
        return sp.hstack([words.transform(texts), chars.transform(texts)]).tocsr()

    unique: dict[str, int] = {}
    rows = [unique.setdefault(r.prompt, len(unique)) for r in train]
    x = matrix(list(unique))[rows]
    y = np.log1p([r.output_tokens for r in train])
    model = Ridge(alpha=1.0).fit(x, y)
    return lambda texts: np.asarray(model.predict(matrix(texts)), np.float64)


def _lexical_with(**options: Any) -> Method:
    """The lexical model, trained by ``fit_lexical(train, **options)``."""

    def method(train: Sequence[LengthRecord]) -> Callable[[Sequence[str]], npt.NDArray[np.float64]]:
        from ._train import fit_lexical

        return fit_lexical(train, **options).scores

    return method


METHODS: dict[str, Method] = {
    "length": _length,
    "clairvoyant-xgb": _clairvoyant,
    "ridge-ngrams": _ridge,
    "lexical": _lexical_with(),
}
#: Methods --methods accepts besides the default ones: variants for comparison
#: (earlier targets: log length clipped to the 10th-99th percentiles, not
#: clipped, or with a floor at the 20th percentile; and with 20,000 word pairs).
VARIANTS: dict[str, Method] = {
    "lexical-log": _lexical_with(target="log"),
    "lexical-unclipped": _lexical_with(target="log", target_percentiles=None),
    "lexical-p20": _lexical_with(target="log", target_percentiles=(20.0, 99.0)),
    "lexical-bigrams": _lexical_with(max_bigrams=20_000),
}
ALL_METHODS: dict[str, Method] = {**METHODS, **VARIANTS}
#: ``--predictor`` choices that read no model: nothing is learnt, so ``--split auto`` scores
#: every answer.
_NO_MODEL: Final = ("length", "other-answers")
#: Methods that learn nothing from the training set.
UNTRAINED: Final = frozenset({"length"})
#: Distinct prompts a training set needs at the least (the lexical model's minimum).
MIN_TRAIN_PROMPTS: Final = 2
#: The modules of the ``train`` extra each method imports (the lexical ones and their
#: variants: scipy and scikit-learn); Kendall's tau needs scipy in every report.
METHOD_MODULES: Final[dict[str, tuple[str, ...]]] = {
    "length": (),
    "clairvoyant-xgb": ("xgboost", "sklearn"),  # xgboost's classifier is a scikit-learn estimator
    "ridge-ngrams": ("scipy", "sklearn"),
}
LEXICAL_MODULES: Final = ("scipy", "sklearn")


def method_names(text: str | None) -> list[str]:
    """The methods ``--methods`` names, in order, each once (``None``: the default ones)."""
    if text is None:
        return list(METHODS)
    return list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))


def late_imports(args: argparse.Namespace) -> tuple[str, ...]:
    """The modules of the ``train`` extra this command line will import once under way.

    The command line checks them before running (see ``sjfsched._cli.LATE_IMPORTS``),
    so that a missing one ends in one line at once, not in a traceback after the work:
    scipy always (Kendall's tau); with ``--compare`` what the ``--methods`` need,
    and matplotlib with ``--plot``; with ``--adaptation --loco`` what training
    and writing a lexical model need.
    """
    needed = ["scipy"]
    if args.compare:
        for m in method_names(args.methods):
            needed += METHOD_MODULES.get(m, LEXICAL_MODULES)
    if args.adaptation and args.loco:
        needed += ["sklearn", "onnx"]
    if args.compare and args.plot is not None:
        needed.append("matplotlib")  # of the bench extra (``sjfsched._cli.MODULE_EXTRAS``)
    return tuple(dict.fromkeys(needed))


def _distinct_prompts(records: Sequence[LengthRecord]) -> int:
    return len(group_by_prompt(records)[0])


def _training_problem(records: Sequence[LengthRecord], methods: Sequence[str]) -> str | None:
    """Why ``methods`` cannot be trained on ``records`` (``None``: they can), checked before fitting."""
    from ._train import length_class

    trained = [m for m in methods if m not in UNTRAINED]
    if not trained:
        return None
    prompts = _distinct_prompts(records)
    if prompts < MIN_TRAIN_PROMPTS:
        need = "needs" if len(trained) == 1 else "need"
        return (
            f"{prompts} distinct prompt{'' if prompts == 1 else 's'}, "
            f"{', '.join(trained)} {need} at least {MIN_TRAIN_PROMPTS}"
        )
    if "clairvoyant-xgb" in methods:
        names = ("short (< 200 tokens)", "medium", "long (>= 800 tokens)")
        present = {length_class(r.output_tokens) for r in records}
        lacking = [names[k] for k in range(3) if k not in present]
        if lacking:
            return f"no {' or '.join(lacking)} answers, clairvoyant-xgb needs short, medium and long ones"
    return None


def _score_unique(
    score: Callable[[Sequence[str]], npt.NDArray[np.float64]], records: Sequence[LengthRecord]
) -> Any:
    unique: dict[str, int] = {}
    idx = [unique.setdefault(r.prompt, len(unique)) for r in records]
    return score(list(unique))[idx]


def _table(
    title: str, results: dict[str, dict[str, tuple[float, float, float]]], methods: Sequence[str]
) -> str:
    out = [
        f"## {title}",
        "",
        "| corpus | " + " | ".join(methods) + " |",
        "| --- |" + " ---: |" * len(methods),
    ]
    for corpus, by_method in results.items():
        cells = []
        for m in methods:
            acc, per_model, tau = by_method[m]
            cell = f"{_num(acc)} (τ {_num(tau)})"
            if not np.isnan(per_model):
                cell += f" [{_num(per_model)}]"
            cells.append(cell)
        out.append(f"| {corpus} | " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


def _enough_pairs(tokens: npt.NDArray[Any]) -> bool:
    """At least 5 short and 5 long answers: enough for a per-model ranking accuracy."""
    return bool((tokens < SHORT_TOKENS).sum() >= 5 and (tokens >= LONG_TOKENS).sum() >= 5)


def _measure(records: Sequence[LengthRecord], scores: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    tokens = np.array([r.output_tokens for r in records])
    by_model: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_model[r.model].append(i)
    groups = list(by_model.values()) if len(by_model) > 1 else []
    per = [ranking_accuracy(scores[idx], tokens[idx]) for idx in groups if _enough_pairs(tokens[idx])]
    per_model = float(np.mean(per)) if per else float("nan")
    return ranking_accuracy(scores, tokens), per_model, kendall_tau(scores, tokens)


def compare(
    records: Sequence[LengthRecord],
    *,
    methods: Sequence[str],
    test_fraction: float,
    seed: int,
    loco: bool,
    train_permissive_only: bool = False,
    train_bundled_sources: bool = False,
    train_exclude: Sequence[str] = (),
    train_fraction: float = 1.0,
    min_long: int = 20,
    log: Callable[[str], None] = lambda s: None,
    table: Mapping[str, Method] = ALL_METHODS,
    panels: list[Panel] | None = None,
) -> str:
    """The comparison tables of ``methods``: in-distribution, and with ``loco`` leave-one-corpus-out.

    Every training and test set is sized before anything is fitted.  A
    corpus whose leave-out leaves too little to train on (see
    :func:`_training_problem`) is skipped, and so is the in-distribution
    table when its training or held-out part is too small: each with a line
    to ``log`` and one in the report naming it.  When nothing at all can be
    evaluated, :class:`ValueError` says why, before any training.

    ``train_fraction``: every training set keeps a sample of about that
    share of its prompts (by a hash of the prompt id and ``seed``; with one
    seed a smaller share's prompts are among a larger one's), for a
    learning curve; the test sets stay whole.

    ``panels``: a list to add each table to, as :func:`plot_compare`
    draws it (with the accuracy of each corpus's other answers).
    """
    from ._train import select_records, split_records

    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be within (0, 1], got {train_fraction!r}")
    filters = [
        *(["--train-permissive-only"] if train_permissive_only else []),
        *(["--train-bundled-sources"] if train_bundled_sources else []),
        *(f"--train-exclude {pattern}" for pattern in train_exclude),
        *([f"--train-fraction {train_fraction:g}"] if train_fraction < 1.0 else []),
    ]

    def training(rs: Sequence[LengthRecord]) -> list[LengthRecord]:
        kept = select_records(
            rs,
            permissive_only=train_permissive_only,
            bundled_sources=train_bundled_sources,
            exclude=train_exclude,
        )
        if train_fraction < 1.0:  # decided once a prompt id, not once an answer
            sampled = {pid for pid in {r.prompt_id for r in kept} if in_sample(pid, train_fraction, seed)}
            kept = [r for r in kept if r.prompt_id in sampled]
        return kept

    def problem(before: Sequence[LengthRecord], after: Sequence[LengthRecord]) -> str | None:
        why = _training_problem(after, methods)
        if why is not None and filters and len(after) < len(before):
            why += f" ({', '.join(filters)} kept {len(after):,} of {len(before):,} answers)"
        return why

    # ---- plan: which tables and rows can be evaluated
    whole, test = split_records(records, test_fraction, seed)
    # A prompt text under another id (or in another corpus) would be trained on and tested:
    # training sets leave out every prompt they are tested on.
    whole, shared = without_prompts_of(whole, test)
    if shared:
        log(f"in-distribution: {shared:,} training answers left out, their prompts being among those tested")
    train = training(whole)
    corpora = sorted({r.corpus for r in records})
    if not test:
        ids = len({(r.corpus, r.prompt_id) for r in records})
        skip_in: str | None = (
            f"nothing held out: --test-fraction {test_fraction:g} (seed {seed}) holds out none "
            f"of the {ids:,} prompt id{'' if ids == 1 else 's'}"
        )
    else:
        why = problem(whole, train)
        skip_in = None if why is None else f"too little to train on: {why}"
    planned: list[tuple[str, list[LengthRecord], list[LengthRecord]]] = []
    skipped: list[tuple[str, str]] = []
    if loco:
        for c in corpora:
            held = [r for r in records if r.corpus == c]
            if sum(r.output_tokens >= LONG_TOKENS for r in held) < min_long:
                continue
            others, shared = without_prompts_of([r for r in records if r.corpus != c], held)
            if shared:
                log(f"leave out {c}: {shared:,} answers of other corpora to its prompts left out of training")
            rest = training(others)
            why = problem(others, rest)
            if why is not None:
                skipped.append((c, why))
            else:
                planned.append((c, held, rest))
    if skip_in is not None and not planned:
        reasons = [f"in-distribution: {skip_in}"]
        if loco:
            reasons += [f"leaving out {c}: too little to train on without it: {why}" for c, why in skipped]
            if not skipped:
                reasons.append(f"leave-one-corpus-out: no corpus has >= {min_long} long answers")
        raise ValueError("nothing to evaluate: " + "; ".join(reasons))
    if skip_in is not None:
        log(f"in-distribution: skipped, {skip_in}")
    for c, why in skipped:
        log(f"leave out {c}: skipped, too little to train on without it: {why}")

    def fitted(m: str, rs: Sequence[LengthRecord], where: str) -> Callable[[Sequence[str]], Any]:
        try:
            return table[m](rs)
        except ValueError as exc:  # what the sizes checked cannot foresee: say which fit it was
            raise ValueError(f"{m}, trained {where}: {exc}") from exc

    # ---- evaluate
    out = []
    title = f"In-distribution: held-out {test_fraction:.0%} of prompts (grouped by prompt_id, seed {seed})"
    if skip_in is None:
        results: dict[str, dict[str, tuple[float, float, float]]] = {c: {} for c in corpora}
        for m in methods:
            t0 = time.perf_counter()
            s = _score_unique(fitted(m, train, "in-distribution"), test)
            for c in corpora:
                idx = [i for i, r in enumerate(test) if r.corpus == c]
                results[c][m] = _measure([test[i] for i in idx], s[idx])
            log(f"in-distribution {m}: {time.perf_counter() - t0:.0f} s")
        out.append(_table(title, results, methods))
        if panels is not None:
            ceilings = {c: other_answers_accuracy([r for r in test if r.corpus == c]) for c in corpora}
            panels.append((title, results, ceilings))
    else:
        out.append(f"## {title}\n\nNot evaluated: {skip_in}.\n")
    if loco:
        results = {}
        for c, held, rest in planned:
            results[c] = {}
            for m in methods:
                t0 = time.perf_counter()
                s = _score_unique(fitted(m, rest, f"without {c}"), held)
                results[c][m] = _measure(held, s)
                log(f"leave out {c}, {m}: {time.perf_counter() - t0:.0f} s")
        loco_title = (
            f"Leave-one-corpus-out: trained on the other corpora (corpora with >= {min_long} long answers)"
        )
        section = (
            _table(loco_title, results, methods) if results else f"## {loco_title}\n\nNo corpus evaluated.\n"
        )
        if panels is not None:
            ceilings = {c: other_answers_accuracy(held) for c, held, _ in planned}
            panels.append((loco_title, results, ceilings))
        if skipped:
            section += "\nNot left out, too little to train on without the corpus:\n\n"
            section += "".join(f"- {c}: {why}\n" for c, why in skipped) + "\n"
        elif not results:
            section += f"No corpus has >= {min_long} long answers.\n"
        out.append(section)
    if train_permissive_only:
        out.append("Trained on permissively licensed sources only.\n")
    if train_bundled_sources:
        out.append("Trained on the bundled model's sources only.\n")
    if train_exclude:
        out.append(f"Training sets without the sources {', '.join(train_exclude)}.\n")
    if train_fraction < 1.0:
        out.append(f"Training sets: a sample of {train_fraction * 100:g}% of their prompts (seed {seed}).\n")
    legend = (
        "Cells: ranking accuracy over all answers of the corpus (τ: Kendall's tau-b) "
        "[mean ranking accuracy over answering models with >= 5 short and >= 5 long answers].\n"
    )
    return "\n".join(out) + legend


# ----------------------------------------------------------------- calibration


def _calibration_error(
    predictor: Any, raw: npt.NDArray[np.float64], actual: npt.NDArray[np.float64]
) -> tuple[float, float]:
    """Log-RMSE of the typical length, and median typical over median actual length."""
    cal = predictor.calibration
    predicted = cal.log_length(raw)
    rmse = float(np.sqrt(np.mean(np.square(predicted - actual))))
    typical = float(np.expm1(np.median(actual)))
    if typical <= 0.0:  # half the answers empty: no ratio (nan, said as "-")
        return rmse, math.nan
    return rmse, float(np.expm1(np.median(predicted))) / typical


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def calibration_report(
    records: Sequence[LengthRecord], model: Path | None, *, observe: int = 600, min_answers: int = 200
) -> str:
    """Does online calibration on one answering model help on its held-back answers?

    For each (corpus, answering model) with at least ``min_answers`` answers
    (and 50 in each half; :class:`ValueError` if none has):
    split its prompts in halves (grouped by prompt id), let a fresh
    :class:`LexicalPredictor` observe up to ``observe`` answers of the first
    half in shuffled order, and compare on the second half the error before
    and after: the root mean square of ``log(1 + predicted) - log(1 + actual)``
    with the predicted typical (median) length, and the ratio of the median
    predicted typical length to the median actual length.
    """
    import random

    from .._records import Prediction, Request
    from ._corpus import is_test
    from ._lexical import LexicalPredictor

    groups: dict[tuple[str, str], list[LengthRecord]] = defaultdict(list)
    for r in records:
        groups[(r.corpus, r.model)].append(r)
    base = LexicalPredictor(model, calibrate=False)
    unique = sorted({r.prompt for r in records})
    score = dict(zip(unique, base.scores(unique).tolist(), strict=True))
    lines = [
        f"{'corpus / answering model':<48} {'observed':>8} {'held':>6} {'log-rmse before':>15} "
        f"{'after':>7} {'typical/actual before':>21} {'after':>6}"
    ]
    improved = total = 0
    for (corpus, name), rs in sorted(groups.items()):
        if len(rs) < min_answers:
            continue
        observed = [r for r in rs if not is_test(r.prompt_id, 0.5, seed=7)]
        held = [r for r in rs if is_test(r.prompt_id, 0.5, seed=7)]
        if len(observed) < 50 or len(held) < 50:
            continue
        random.Random(1).shuffle(observed)
        predictor = LexicalPredictor(model, adapt=False)  # calibration alone: the scores stay the model's
        actual = np.log1p([r.output_tokens for r in held])
        raw = np.array([score[r.prompt] for r in held])
        before, ratio_before = _calibration_error(predictor, raw, actual)
        for r in observed[:observe]:
            predictor.observe(Request(r.prompt), Prediction(1.0), max(0, round(r.output_tokens)))
        after, ratio_after = _calibration_error(predictor, raw, actual)
        total += 1
        improved += after < before
        label = f"{corpus} / {name}"[:48]
        lines.append(
            f"{label:<48} {min(len(observed), observe):8d} {len(held):6d} {before:15.3f} {after:7.3f} "
            f"{_ratio(ratio_before):>21} {_ratio(ratio_after):>6}"
        )
    if not total:
        sizes = [len(rs) for rs in groups.values()]
        raise ValueError(
            f"nothing to evaluate: no answering model has >= {min_answers} answers in one corpus, "
            f"with >= 50 prompts' answers in each half (the largest has {max(sizes, default=0):,})"
        )
    lines.append(f"calibration lowered the held-back log-RMSE for {improved} of {total} answering models")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- adaptation

#: After how many observed answers adaptation is measured.
ADAPTATION_STEPS: tuple[int, ...] = (100, 300, 1000)


def _ranking_cells(scores: npt.NDArray[np.float64], tokens: npt.NDArray[np.float64]) -> tuple[float, float]:
    accuracy = ranking_accuracy(scores, tokens) if _enough_pairs(tokens) else float("nan")
    return accuracy, kendall_tau(scores, tokens)


def adaptation_report(
    records: Sequence[LengthRecord],
    model: Path | None,
    *,
    loco: bool = False,
    steps: Sequence[int] = ADAPTATION_STEPS,
    min_answers: int = 400,
    log: Callable[[str], None] = lambda s: None,
    vectors: WordVectors | None = None,
    vector_weight: float = VECTOR_WEIGHT,
) -> str:
    """Does adaptation on one answering model's answers rank its held-back prompts better?

    For each (corpus, answering model) with at least ``min_answers`` answers:
    split its prompts in halves (grouped by prompt id), let a fresh
    :class:`LexicalPredictor` (adapting, the default) observe answers of the
    first half in shuffled order, and after each of ``steps`` observations
    score the second half: ranking accuracy (short against long answers;
    ``-`` with fewer than 5 of either) and Kendall's tau.  With ``loco`` the
    model is the bundled model's recipe trained without the group's corpus
    (``sjfsched train --bundled-sources --fit-all --exclude CORPUS``, with
    ``vectors`` folded in if given): a deployment whose prompts the model
    never saw.

    Sizes are checked before any training: with ``loco``, a corpus whose
    leave-out leaves too little to train on is skipped, with a line to
    ``log`` and one in the report naming it; when no answering model is left
    to evaluate, :class:`ValueError` says why.
    """
    import random
    import tempfile

    from .._records import Prediction, Request
    from ._corpus import is_test
    from ._lexical import LexicalPredictor

    groups: dict[tuple[str, str], list[LengthRecord]] = defaultdict(list)
    for r in records:
        groups[(r.corpus, r.model)].append(r)
    chosen = {k: v for k, v in sorted(groups.items()) if len(v) >= min_answers}
    if not chosen:
        raise ValueError(
            f"nothing to evaluate: no answering model has >= {min_answers} answers in one corpus "
            f"(the largest has {max(map(len, groups.values()), default=0):,})"
        )
    rests: dict[str, list[LengthRecord]] = {}
    skipped: dict[str, str] = {}
    if loco:
        from ._train import select_records

        for corpus in sorted({c for c, _ in chosen}):
            held = [r for r in records if r.corpus == corpus]
            others, shared = without_prompts_of([r for r in records if r.corpus != corpus], held)
            if shared:
                log(f"leave out {corpus}: {shared:,} answers to its prompts in other corpora left out")
            rest = select_records(others, bundled_sources=True)
            prompts = _distinct_prompts(rest)
            if prompts < MIN_TRAIN_PROMPTS:
                skipped[corpus] = (
                    f"{prompts} distinct prompt{'' if prompts == 1 else 's'} of the bundled sources "
                    f"in the other corpora, the lexical model needs at least {MIN_TRAIN_PROMPTS}"
                )
            else:
                rests[corpus] = rest
        if not rests:
            raise ValueError(
                "nothing to evaluate: "
                + "; ".join(f"too little to train on without {c}: {why}" for c, why in skipped.items())
            )
        for c, why in skipped.items():
            log(f"leave out {c}: skipped, too little to train on without it: {why}")
        chosen = {k: v for k, v in chosen.items() if k[0] not in skipped}
    header = f"{'corpus / answering model':<44} {'obs.':>5} {'held':>5}  {'model alone':>13}"
    header += "".join(f"  {'after ' + str(n):>13}" for n in steps)
    lines = [header, f"{'':<44} {'':>5} {'':>5}" + "  acc    tau  " * (1 + len(steps))]
    by_corpus: dict[str, list[list[float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="sjfsched-adapt-") as tmp:
        paths: dict[str, Path | None] = {}
        for (corpus, name), rs in chosen.items():
            if corpus not in paths:
                paths[corpus] = model
                if loco:
                    import onnx

                    from ._train import fit_lexical, lexical_onnx

                    log(f"training without {corpus} ...")
                    path = Path(tmp) / f"without-{len(paths)}.onnx"
                    fit = fit_lexical(rests[corpus], vectors=vectors, vector_weight=vector_weight)
                    onnx.save(lexical_onnx(fit, {"sjfsched.trained_on": "[]"}), path)
                    paths[corpus] = path
            observed = [r for r in rs if not is_test(r.prompt_id, 0.5, seed=7)]
            held = [r for r in rs if is_test(r.prompt_id, 0.5, seed=7)]
            random.Random(1).shuffle(observed)
            predictor = LexicalPredictor(paths[corpus])
            texts = [r.prompt for r in held]
            tokens = np.array([r.output_tokens for r in held], np.float64)
            cells = [_ranking_cells(predictor.scores(texts), tokens)]
            done = 0
            for n in steps:
                if n > len(observed):
                    break
                for r in observed[done:n]:
                    request = Request(r.prompt)
                    predictor.observe(request, Prediction(1.0), max(0, round(r.output_tokens)))
                done = n
                cells.append(_ranking_cells(predictor.scores(texts), tokens))
            row = f"{f'{corpus} / {name}'[:44]:<44} {done:5d} {len(held):5d}"
            row += "".join(f"  {'-' if math.isnan(a) else f'{a:.3f}':>5} {t:6.3f}" for a, t in cells)
            lines.append(row)
            flat = [x for cell in cells for x in cell]
            by_corpus[corpus].append(flat + [float("nan")] * (2 * (1 + len(steps)) - len(flat)))
    lines.append("")
    lines.append("Means over each corpus's answering models (those with enough answers for the column):")
    for corpus, rows in by_corpus.items():
        table = np.array(rows)
        seen = ~np.isnan(table)  # a column no model has enough answers for stays NaN, without a warning
        means = np.where(
            seen.any(axis=0), np.where(seen, table, 0.0).sum(axis=0) / np.maximum(seen.sum(axis=0), 1), np.nan
        )
        row = f"{corpus + f' ({len(rows)} models)':<56}"
        row += "".join(f"  {'-' if math.isnan(x) else f'{x:.3f}':>5}" for x in means)
        lines.append(row)
    if skipped:
        lines.append("Not evaluated, too little to train on without the corpus:")
        lines.extend(f"  {c}: {why}" for c, why in skipped.items())
    where = "trained without the corpus (--loco)" if loco else "the model as given"
    if loco and vectors is not None:
        where += f", with word vectors ({vectors.source})"
    lines.append(f"Model: {where}; adaptation after 0, {', '.join(map(str, steps))} observed answers.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the command


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="+", type=Path, help="JSONL files (.jsonl or .jsonl.gz) or directories")
    parser.add_argument("--model", type=Path, help="ONNX model to score (default: the bundled lexical model)")
    parser.add_argument(
        "--predictor",
        choices=("lexical", "clairvoyant", "length", "other-answers"),
        default="lexical",
        help="how to read --model: lexical (default), clairvoyant (ranks by P(Long)); or no model: "
        "prompt length, or other-answers (each answer ranked by the mean log length of the other "
        "answers to its prompt: about the most a predictor reading only the prompt can do)",
    )
    parser.add_argument(
        "--split",
        choices=("auto", "test", "train", "all"),
        default="auto",
        help="which records to score: auto (default): every answer the model was not trained on, as "
        "its metadata says (of the sources it was trained on, the grouped split's held-out part); "
        "test: the held-out part; train: the rest; all",
    )
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of prompts held out (0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the grouped split (0)")
    parser.add_argument("--include", action="append", default=[], metavar="PATTERN",
                        help="only sources matching this shell pattern (repeatable)")  # fmt: skip
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="leave out sources matching this shell pattern (repeatable)")  # fmt: skip
    parser.add_argument("--corpora-only", action="store_true", help="print corpus rows only, not each model")
    parser.add_argument(
        "--compare", action="store_true", help="train and compare length, Clairvoyant, ridge and lexical"
    )
    parser.add_argument(
        "--loco",
        action="store_true",
        help="with --compare: leave-one-corpus-out too; with --adaptation: models trained without the corpus",
    )
    parser.add_argument(
        "--calibration",
        action="store_true",
        help="per answering model: log error on held-back answers before and after online calibration",
    )
    parser.add_argument(
        "--adaptation",
        action="store_true",
        help="per answering model: ranking of held-back prompts after 0, 100, 300, 1000 observed answers "
        "(with --loco: by a model trained without the corpus)",
    )
    parser.add_argument(
        "--train-permissive-only",
        action="store_true",
        help="with --compare: train only on permissively licensed sources (tests stay the same)",
    )
    parser.add_argument(
        "--train-bundled-sources",
        action="store_true",
        help="with --compare: train only on the bundled model's sources (tests stay the same)",
    )
    parser.add_argument(
        "--train-exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="with --compare: leave sources matching this shell pattern out of the training sets "
        "(tests stay the same; repeatable)",
    )
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=1.0,
        metavar="F",
        help="with --compare: train on a sample of this share of each training set's prompts, for a "
        "learning curve (tests stay the same; the sample depends on --seed; 1: all)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE",
        help="with --compare: also draw its tables as a PNG there, with the mark of each corpus's "
        "other answers (needs matplotlib: the bench extra)",
    )
    parser.add_argument(
        "--methods",
        help=f"with --compare: comma-separated subset of {', '.join(ALL_METHODS)} "
        f"(and lexical-vectors, with --word-vectors; default: {','.join(METHODS)}, and "
        "lexical-vectors with --word-vectors)",
    )
    parser.add_argument(
        "--word-vectors",
        type=Path,
        metavar="FILE",
        help="with --compare: word vectors for the method lexical-vectors (the lexical model "
        "trained with `sjfsched train --word-vectors FILE`, as the bundled model is); with "
        "--adaptation --loco: the models trained without each corpus fold them in",
    )
    parser.add_argument(
        "--word-vector-weight",
        type=float,
        default=VECTOR_WEIGHT,
        help=f"with --word-vectors: their regression's weight in the blend ({VECTOR_WEIGHT:g})",
    )


#: The reports ``evaluate`` makes besides scoring one model, by option.
MODES: Final = ("--compare", "--calibration", "--adaptation")


def _option_problem(args: argparse.Namespace) -> str | None:
    """An option the chosen report would not use, or a bad value, in words (``None``: none).

    Checked before any data is read.  Options keep their defaults' meaning:
    only a value other than the default counts as given.
    """
    modes = [m for m in MODES if getattr(args, m[2:])]
    if len(modes) > 1:
        return f"{' and '.join(modes)} are separate reports: choose one"
    mode = modes[0] if modes else None
    if not (math.isfinite(args.train_fraction) and 0.0 < args.train_fraction <= 1.0):
        return "--train-fraction must be within (0, 1]"
    if not (math.isfinite(args.word_vector_weight) and args.word_vector_weight >= 0):
        return "--word-vector-weight must be a number >= 0"
    if args.methods is not None and not method_names(args.methods):
        return f"--methods names no method; choose from {', '.join(ALL_METHODS)}, lexical-vectors"
    # what each report reads: the option -> the reports that use it (None: scoring one model)
    used_by: list[tuple[str, bool, tuple[str | None, ...]]] = [
        ("--loco", args.loco, ("--compare", "--adaptation")),
        ("--methods", args.methods is not None, ("--compare",)),
        ("--word-vectors", args.word_vectors is not None, ("--compare", "--adaptation")),
        ("--train-permissive-only", args.train_permissive_only, ("--compare",)),
        ("--train-bundled-sources", args.train_bundled_sources, ("--compare",)),
        ("--train-exclude", bool(args.train_exclude), ("--compare",)),
        ("--train-fraction", args.train_fraction != 1.0, ("--compare",)),
        ("--plot", args.plot is not None, ("--compare",)),
        (f"--predictor {args.predictor}", args.predictor != "lexical", (None,)),
        (f"--split {args.split}", args.split != "auto", (None,)),
        ("--corpora-only", args.corpora_only, (None,)),
        ("--test-fraction", args.test_fraction != 0.2, (None, "--compare")),
        ("--seed", args.seed != 0, (None, "--compare")),
    ]
    for option, given, modes_using in used_by:
        if given and mode not in modes_using:
            wanted = " or ".join("scoring one model" if m is None else m for m in modes_using)
            return f"{option} is for {wanted}" + (f", not {mode}" if mode is not None else "")
    if args.model is not None:
        if mode == "--compare":
            return "--model does nothing with --compare (it trains and compares the --methods)"
        if mode == "--adaptation" and args.loco:
            return "--model does nothing with --adaptation --loco (it trains a model without each corpus)"
        if mode is None and args.predictor == "length":
            return "--model does nothing with --predictor length (it ranks by prompt length)"
        if mode is None and args.predictor == "other-answers":
            return (
                "--model does nothing with --predictor other-answers (it ranks by other answers to a prompt)"
            )
    if mode == "--adaptation" and args.word_vectors is not None and not args.loco:
        return "--word-vectors is for --adaptation --loco (it trains with them), not for a model as given"
    if mode == "--compare":
        methods = _methods(args)
        known = [*ALL_METHODS, "lexical-vectors"]
        unknown = [m for m in methods if m not in known]
        if unknown:
            return f"unknown methods {unknown}; choose from {known}"
        if "lexical-vectors" in methods and args.word_vectors is None:
            return "the method lexical-vectors needs --word-vectors FILE"
        if args.word_vectors is not None and "lexical-vectors" not in methods:
            return "--word-vectors is for the method lexical-vectors: add it to --methods"
    if args.word_vector_weight != VECTOR_WEIGHT and args.word_vectors is None:
        return "--word-vector-weight is for --word-vectors: it does nothing without them"
    if mode is None and args.predictor == "clairvoyant" and args.model is None:
        return "--predictor clairvoyant needs --model"
    if args.plot is not None and (why := _plot_path_problem(args.plot)) is not None:
        return why
    if mode is None and args.predictor in _NO_MODEL and args.split == "auto":
        for option, given in (("--test-fraction", args.test_fraction != 0.2), ("--seed", args.seed != 0)):
            if given:
                return (
                    f"{option} does nothing with --predictor {args.predictor} and --split auto "
                    "(nothing is learnt, every answer is scored): add --split test, train or all"
                )
    return None


def _plot_path_problem(path: Path) -> str | None:
    """Why ``--plot PATH`` could not be written, checked before any work, or ``None``."""
    if path.suffix.lower() != ".png":
        return f"--plot {path}: give a file name ending in .png (it writes a PNG)"
    if path.is_dir():
        return f"--plot {path}: is a directory; give the PNG file to write"
    folder = path.parent
    if not folder.is_dir():
        return f"--plot {path}: no folder {folder} to write it in"
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"--plot {path}: not allowed to write there"
    return None


def _methods(args: argparse.Namespace) -> list[str]:
    """The --methods to compare: by default, and lexical-vectors where --word-vectors are given."""
    if args.methods is None and args.word_vectors is not None:
        return [*METHODS, "lexical-vectors"]
    return method_names(args.methods)


def run(args: argparse.Namespace) -> int:
    from ._train import no_records, select_records, split_records

    if not 0.0 < args.test_fraction < 1.0:
        print("sjfsched evaluate: --test-fraction must be within (0, 1)", file=sys.stderr)
        return 2
    problem = _option_problem(args)
    if problem is not None:
        print(f"sjfsched evaluate: {problem}", file=sys.stderr)
        return 2
    table = dict(ALL_METHODS)
    vectors = None
    if args.word_vectors is not None:
        from ._vectors import load_word_vectors

        try:
            vectors = load_word_vectors(args.word_vectors)
        except ValueError as exc:
            print(f"sjfsched evaluate: --word-vectors: {exc}", file=sys.stderr)
            return 1  # a missing or malformed input, as for the data (2: a bad option value)
        table["lexical-vectors"] = _lexical_with(vectors=vectors, vector_weight=args.word_vector_weight)
    loaded = load_records(args.data)
    records = select_records(loaded, include=args.include, exclude=args.exclude)
    if not records:
        print(f"sjfsched evaluate: {no_records(args.data, loaded)}", file=sys.stderr)
        return 1

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.calibration or (args.adaptation and not args.loco):
        note = _whole_data_note(records, args.model)  # both run the model on every answer
        if note:
            log(f"sjfsched evaluate: {note}")
    if args.calibration:
        print(calibration_report(records, args.model), end="")
        return 0
    if args.adaptation:
        from ._lexical import bundled_model_has_vectors

        if args.loco and vectors is None and bundled_model_has_vectors():
            log(
                "sjfsched evaluate: the models left out are trained without word vectors, the bundled "
                "model with them: pass --word-vectors FILE to train them as it was"
            )
        report = adaptation_report(
            records,
            args.model,
            loco=args.loco,
            log=log,
            vectors=vectors,
            vector_weight=args.word_vector_weight,
        )
        print(report, end="")
        return 0
    if args.compare:
        panels: list[Panel] = []
        print(
            compare(
                records,
                methods=_methods(args),
                test_fraction=args.test_fraction,
                seed=args.seed,
                loco=args.loco,
                train_permissive_only=args.train_permissive_only,
                train_bundled_sources=args.train_bundled_sources,
                train_exclude=args.train_exclude,
                train_fraction=args.train_fraction,
                log=log,
                table=table,
                panels=None if args.plot is None else panels,
            ),
            flush=True,
        )
        if args.plot is not None:  # after the report: a failure here loses none of it
            plot_compare(args.plot, panels, _methods(args))
            log(f"sjfsched evaluate: wrote {args.plot}")
        return 0
    score: Callable[[Sequence[str]], npt.NDArray[np.float64]] | None = None  # other-answers: none
    metadata: Mapping[str, str] | None = None
    if args.predictor == "length":
        score = _length(())
    elif args.predictor == "clairvoyant":
        from ._clairvoyant import ClairvoyantPredictor
        from ._lexical import _metadata, open_session

        clairvoyant = ClairvoyantPredictor(args.model)
        metadata = _metadata(open_session(args.model), args.model, "clairvoyant")

        def score(texts: Sequence[str]) -> npt.NDArray[np.float64]:
            return np.asarray(clairvoyant.probabilities_many(texts)[:, 2], np.float64)
    elif args.predictor == "lexical":
        from ._lexical import LexicalPredictor

        predictor = LexicalPredictor(args.model, calibrate=False)
        metadata = predictor.metadata
        score = predictor.scores
    learnt = None if args.predictor in _NO_MODEL else _learnt_from(metadata)
    # How `sjfsched train` split the model's data, where its metadata says (older models do not)
    model_split = None if args.predictor in _NO_MODEL else _split_of(metadata)
    own = model_split if args.split == "auto" else None  # --split auto scores what it held out
    fraction, seed = (args.test_fraction, args.seed) if own is None else own[:2]
    given = (args.test_fraction, args.seed)
    if own is not None and given != (0.2, 0) and given != (fraction, seed):  # asked for another split
        log(
            f"sjfsched evaluate: the model's own split is used (--test-fraction {fraction:g}, --seed "
            f"{seed}, as its metadata says); --split test scores another"
        )
    train, test = split_records(records, fraction, seed)
    # The answers the model may have been trained on (ids of the records), worked out once.
    trained = None if learnt is None else {id(r) for r in records if _is_learnt(r, learnt)}
    # The bundled model is fitted on every prompt of its sources but those of its holdout.
    bundled = args.model is None and args.predictor == "lexical"
    fitted_on_all = bundled or (model_split is not None and model_split[2])
    if args.split == "auto" and args.predictor == "length":
        chosen, split = list(records), "every answer (prompt length learns nothing)"
    elif args.split == "auto" and args.predictor == "other-answers":
        chosen, split = list(records), "every answer"
    elif args.split == "auto":
        chosen, split = _unseen_part(records, test, trained, fitted_on_all=fitted_on_all)
    else:
        chosen, split = {"test": test, "train": train, "all": records}[args.split], f"{args.split} split"
    if not chosen:
        ids = len({(r.corpus, r.prompt_id) for r in records})
        print(
            f"sjfsched evaluate: the {'test' if args.split == 'auto' else args.split} split is empty: "
            f"--test-fraction {fraction:g} (seed {seed})"
            + (" (the model's own split, as its metadata says)" if own is not None else "")
            + f" splits the {ids:,} prompt id{'' if ids == 1 else 's'} so; "
            "--split all evaluates every answer",
            file=sys.stderr,
        )
        return 1
    if trained is not None:
        who = "the bundled model" if bundled else "the model"
        note = _trained_note(chosen, trained, who, fitted_on_all=fitted_on_all, split=own)
        if note:
            log(f"sjfsched evaluate: {note}")
    if score is None:
        return _report_other_answers(args, chosen, split)
    scores = score([r.prompt for r in chosen])
    model = "" if args.predictor == "length" else f" {args.model or '(bundled)'}"
    print(f"{args.predictor}{model} on {split}: {len(chosen):,} answers")
    print(format_report(report_rows(chosen, scores, per_model=not args.corpora_only)), end="")
    return 0


def _report_other_answers(args: argparse.Namespace, pool: Sequence[LengthRecord], split: str) -> int:
    """``--predictor other-answers`` on the answers ``pool`` chosen by ``--split``."""
    chosen, scores = other_answers(pool)
    if not chosen:
        where = "the data" if args.split in ("auto", "all") else f"the {args.split} split"
        print(
            f"sjfsched evaluate: no prompt has two answers or more in {where} ({len(pool):,} "
            f"answer{'' if len(pool) == 1 else 's'}; prompts are told apart by corpus, prompt_id and "
            "text): --predictor other-answers ranks an answer by the other answers to its prompt",
            file=sys.stderr,
        )
        return 1
    alone = len(pool) - len(chosen)
    left_out = f"{alone:,} answer{'' if alone == 1 else 's'} to prompts answered once left out"
    gone = sorted({r.corpus for r in pool} - {r.corpus for r in chosen})
    if gone:
        left_out += f"; no prompt answered more than once in {', '.join(gone)}"
    print(
        f"other-answers on {split}: {len(chosen):,} answers, each ranked by the mean log length of the "
        "other answers to its prompt" + (f" ({left_out})" if alone else "")
    )
    print(format_report(report_rows(chosen, scores, per_model=not args.corpora_only)), end="")
    return 0


def _learnt_from(metadata: Mapping[str, str] | None) -> tuple[frozenset[str], frozenset[str]] | None:
    """The sources a model was trained on and the prompt ids it was kept from, from its
    metadata (``None``: it does not say)."""
    if metadata is None or "sjfsched.trained_on" not in metadata:
        return None
    try:
        sources = json.loads(metadata["sjfsched.trained_on"])
        holdout = json.loads(metadata.get("sjfsched.holdout_prompts", "[]"))
    except ValueError:
        return None
    if not (isinstance(sources, list) and isinstance(holdout, list)):
        return None
    return frozenset(map(str, sources)), frozenset(map(str, holdout))


def _split_of(metadata: Mapping[str, str] | None) -> tuple[float, int, bool] | None:
    """How ``sjfsched train`` split the model's data: ``(test_fraction, seed, fitted_on_all)``,
    from its metadata (``None``: it does not say)."""
    try:
        split = json.loads((metadata or {})["sjfsched.split"])
        fraction, seed, fitted = split["test_fraction"], split["seed"], split["fitted_on_all"]
    except (KeyError, TypeError, ValueError):
        return None
    numbers = isinstance(fraction, (int, float)) and isinstance(seed, int) and isinstance(fitted, bool)
    if not numbers or isinstance(fraction, bool) or isinstance(seed, bool) or not 0 <= fraction < 1:
        return None
    return float(fraction), seed, fitted


def _is_learnt(record: LengthRecord, learnt: tuple[frozenset[str], frozenset[str]]) -> bool:
    """Whether a model with ``learnt`` (:func:`_learnt_from`) may have been trained on ``record``."""
    from ._corpus import prompt_id_of

    sources, holdout = learnt
    if record.source not in sources:
        return False
    return not holdout or (record.prompt_id not in holdout and prompt_id_of(record.prompt) not in holdout)


def _unseen_part(
    records: Sequence[LengthRecord],
    test: Sequence[LengthRecord],
    trained: set[int] | None,
    *,
    fitted_on_all: bool,
) -> tuple[list[LengthRecord], str]:
    """``--split auto``: the answers the model did not learn from, as far as it says, and how
    the header names them.

    Every answer where nothing was learnt (prompt length) or where the model's
    metadata says it was not trained on it (another source, a prompt it was
    kept from); of the sources it was trained on, the grouped split's test
    part (what ``sjfsched train`` holds out with the same ``--seed`` and
    ``--test-fraction``), unless the model was ``fitted_on_all`` of them (the
    bundled one), where that part is taken only if nothing else is left.
    ``trained``: the ids of the records the model may have been trained on
    (``None``: it does not say; then the test part).
    """
    if trained is None:
        return list(test), "test split"
    unseen = [r for r in records if id(r) not in trained]
    if len(unseen) == len(records):
        return unseen, "every answer (it was trained on none: other sources, or prompts it was kept from)"
    if fitted_on_all:
        if unseen:
            return unseen, "the answers it was not trained on (of other sources, or prompts it was kept from)"
        return list(test), "test split"
    held = {id(r) for r in test}
    chosen = [r for r in records if id(r) in held or id(r) not in trained]
    if not unseen:
        return chosen, "test split"
    return chosen, (
        f"test split and the {len(unseen):,} answers it was not trained on (of other sources, or "
        "prompts it was kept from)"
    )


def _whole_data_note(records: Sequence[LengthRecord], model: Path | None) -> str:
    """What to make of ``--calibration`` and ``--adaptation`` figures over answers that the lexical
    ``model`` (``None``: the bundled one) was trained on ('' if none, or it does not say)."""
    from ._lexical import LexicalPredictor

    learnt = _learnt_from(LexicalPredictor(model, calibrate=False).metadata)
    if learnt is None:
        return ""
    seen = [r for r in records if _is_learnt(r, learnt)]
    if not seen:
        return ""
    sources = sorted({r.source for r in seen})
    listed = ", ".join(sources[:5]) + (", ..." if len(sources) > 5 else "")
    who = "the bundled model" if model is None else "the model"
    return (
        f"{len(seen):,} of these {len(records):,} answers are of sources {who} was trained on ({listed}): "
        "this report runs it on every answer, so its figures on them are in-distribution, not held out"
    )


def _trained_note(
    chosen: Sequence[LengthRecord],
    trained: set[int],
    who: str,
    *,
    fitted_on_all: bool,
    split: tuple[float, int, bool] | None,
) -> str:
    """What to make of scored answers the model may have been trained on (``trained``: their
    records' ids; '' if none); ``split``: how its training split them, where it says."""
    learnt = [r for r in chosen if id(r) in trained]
    if not learnt:
        return ""
    sources = sorted({r.source for r in learnt})
    count = len(learnt)
    listed = ", ".join(sources[:5]) + (", ..." if len(sources) > 5 else "")
    if fitted_on_all:
        return (
            f"{count:,} of these answers are of sources {who} was fitted on, every prompt "
            f"of them ({listed}): their figures are in-distribution, not held out"
        )
    if split is not None:
        return (
            f"{count:,} of these answers are of sources {who} was trained on ({listed}): the part its "
            f"training held out (--test-fraction {split[0]:g}, --seed {split[1]}, as its metadata says)"
        )
    return (
        f"{count:,} of these answers are of sources {who} was trained on ({listed}): they are held "
        "out only if it was trained by `sjfsched train` with this --seed and --test-fraction and "
        "without --fit-all"
    )
