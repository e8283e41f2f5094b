"""How well each benchmark predictor ranks each trace (Clairvoyant's ranking accuracy)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..predictors import predict_all
from ..predictors._evaluate import ranking_accuracy
from ._policies import PolicyContext, clairvoyant_predictor, predictor_factory
from ._sim import PinnedModels
from ._traces import TRACES, load_trace

__all__ = ["DEFAULT_RANKING_PREDICTORS", "format_ranking", "ranking_table"]

DEFAULT_RANKING_PREDICTORS = ("sjfsched", "unseen", "clairvoyant", "heuristic", "noisy1", "noisy2")


def ranking_table(
    models: PinnedModels,
    data_dir: str | Path,
    predictors: Sequence[str] = DEFAULT_RANKING_PREDICTORS,
    traces: Sequence[str] = tuple(TRACES),
) -> dict[str, dict[str, float]]:
    """trace -> predictor -> ranking accuracy over all of the trace's short/long pairs.

    Clairvoyant is scored by its P(Long), the others by predicted tokens.
    """
    table: dict[str, dict[str, float]] = {}
    for name in traces:
        trace = load_trace(name, data_dir)
        context = PolicyContext(
            short_latency=1.0,
            unseen_model=models.unseen.get(name),
            bundled_model=models.bundled,
            clairvoyant_model=models.clairvoyant,
        )
        requests = [item.request() for item in trace.items]
        lengths = [item.output_tokens for item in trace.items]
        row: dict[str, float] = {}
        for predictor_name in predictors:
            if predictor_name == "clairvoyant":
                predictor, _ = clairvoyant_predictor(models.clairvoyant)
                scores = [
                    p.p_long if p.p_long is not None else p.tokens for p in predict_all(predictor, requests)
                ]
            else:
                predictor = predictor_factory(predictor_name)(context)
                scores = [p.tokens for p in predict_all(predictor, requests)]
            row[predictor_name] = ranking_accuracy(scores, lengths)
        table[name] = row
    return table


def format_ranking(table: dict[str, dict[str, float]]) -> str:
    names = list(next(iter(table.values())))
    lines = [
        "| trace | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for trace, row in table.items():
        lines.append(f"| {trace} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |")
    return "\n".join(lines)
