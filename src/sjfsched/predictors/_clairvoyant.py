"""Clairvoyant's 19 lexical features and its 3-class model, as a baseline predictor.

Clairvoyant (arXiv 2606.07248) ranks requests by P(Long) from an XGBoost
classifier over 19 features of the prompt.  This module recomputes those
features from their published definition (the project's own code, written
from the feature list in the paper's repository, `features.go` there):

1. approximate prompt tokens: characters // 4;
2. a code keyword among the words (code, function, def, class, script, ...);
3. a length constraint ("in 50 words", "no more than 3", "briefly", "tl;dr", ...);
4. the prompt ends with ``?``;
5. a format keyword (list, table, bullet, step by step, outline, ...);
6. a clause count (commas, semicolons, " and ", " but ", " because ");
7-19. one-hot of the first matching instruction verb, tried in a fixed order
   (summarize, explain, compare, translate, generate, implement, debug,
   refactor, list, write, describe, define, what, how, why), kept when it is
   one of 12 known verbs, else "other".

:class:`ClairvoyantPredictor` runs a model trained on these features by
``sjfsched train --features clairvoyant`` (a 3-class XGBoost exported to
ONNX: short < 200, medium, long >= 800 tokens).  By default it orders requests
by P(Long), as Clairvoyant does.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal, final

import numpy as np
import numpy.typing as npt

from .._errors import PredictorError
from .._records import Prediction, Request
from ._base import refuse_one_text, text_of, texts_of
from ._lexical import _metadata, open_session

__all__ = ["CLAIRVOYANT_FEATURES", "ClairvoyantPredictor", "clairvoyant_features"]

_CODE_WORDS: Final = frozenset(
    (
        *("code", "function", "def", "class", "script", "program", "implement", "algorithm", "debug"),
        *("refactor", "import", "variable", "loop", "recursion", "api", "sql", "regex"),
        # web and framework words common in ShareGPT code requests
        *("react", "angular", "vue", "nextjs", "typescript", "javascript", "html", "css", "node"),
        *("express", "django", "flask", "component", "endpoint", "middleware", "query"),
    )
)
_CONSTRAINT: Final = re.compile(
    r"\bin\s+\d+\s+words?\b|\bin\s+\d+\s+sentences?\b|\bno\s+more\s+than\s+\d+|\bunder\s+\d+\s+words?\b"
    r"|\bbriefly\b|\bconcisely\b|\bshortly\b|\bone[\s-]liner\b|\btl;?dr\b",
    re.IGNORECASE,
)
_FORMAT_WORDS: Final = (
    *("list", "table", "bullet", "step by step", "enumerate"),
    *("outline", "numbered", "format", "structure"),
)
_VERB_ORDER: Final = (
    ("summarize", r"\bsummariz(?:e|ing)\b"),
    ("explain", r"\bexplain\b"),
    ("compare", r"\bcompar(?:e|ing)\b"),
    ("translate", r"\btranslat(?:e|ing)\b"),
    ("generate", r"\bgenerat(?:e|ing)\b"),
    ("implement", r"\bimplement\b"),
    ("debug", r"\bdebug\b"),
    ("refactor", r"\brefactor\b"),
    ("list", r"\blist\b"),
    ("write", r"\bwrite\b"),
    ("describe", r"\bdescrib(?:e|ing)\b"),
    ("define", r"\bdefin(?:e|ing)\b"),
    ("what", r"\bwhat\b"),
    ("how", r"\bhow\b"),
    ("why", r"\bwhy\b"),
)
_VERBS: Final = tuple((name, re.compile(pattern, re.IGNORECASE)) for name, pattern in _VERB_ORDER)
#: The one-hot columns; translate, debug and refactor fall under "other".
_ONE_HOT: Final = (
    *("what", "write", "explain", "summarize", "how", "list", "implement"),
    *("compare", "describe", "generate", "why", "define", "other"),
)
_WORDS: Final = re.compile(r"[^\W_]+")
#: Clairvoyant reads at most this much of a prompt (bounded cost; the token
#: estimate still uses the whole length).
_MAX_CHARS: Final = 8192

CLAIRVOYANT_FEATURES: Final = (
    "prompt_token_len",
    "has_code_keyword",
    "has_length_constraint",
    "ends_with_question",
    "has_format_keyword",
    "clause_count",
    *(f"verb_{v}" for v in _ONE_HOT),
)


def clairvoyant_features(prompt: str) -> list[float]:
    """The 19 features of one prompt, in the model's input order."""
    length = len(prompt)
    if length > _MAX_CHARS:
        prompt = prompt[:_MAX_CHARS]
    low = prompt.lower()
    verb = "other"
    for name, pattern in _VERBS:
        if pattern.search(prompt):
            verb = name
            break
    clauses = prompt.count(",") + prompt.count(";") + low.count(" and ") + low.count(" but ")
    clauses += low.count(" because ")
    out = [
        float(length // 4),
        float(not _CODE_WORDS.isdisjoint(_WORDS.findall(low))),
        float(_CONSTRAINT.search(prompt) is not None),
        float(prompt.rstrip().endswith("?")),
        float(any(k in low for k in _FORMAT_WORDS)),
        float(clauses),
    ]
    out.extend(1.0 if v == verb else 0.0 for v in _ONE_HOT)
    return out


@final
class ClairvoyantPredictor:
    """Clairvoyant's policy as a predictor: 19 features, a 3-class ONNX model.

    ``model_path`` is a file written by ``sjfsched train --features
    clairvoyant`` (the repository keeps one in
    ``benchmarks/models/clairvoyant.onnx``).  :meth:`predict` gives
    ``p_long`` = P(Long) and, as ``tokens``:

    - ``key="p_long"`` (default): a length that grows with P(Long) alone,
      from the short class's median to the long class's, so the scheduler
      orders requests exactly as Clairvoyant does;
    - ``key="expected"``: the class medians weighted by the probabilities.

    :meth:`probabilities` returns the three class probabilities.
    """

    def __init__(
        self, model_path: str | os.PathLike[str], *, key: Literal["p_long", "expected"] = "p_long"
    ) -> None:
        if key not in ("p_long", "expected"):
            raise ValueError(f"key must be 'p_long' or 'expected', got {key!r}")
        path = Path(model_path)
        self._path = path
        self._key = key
        self._session = session = open_session(path)
        meta = _metadata(session, path, "clairvoyant")
        try:
            medians = [float(x) for x in json.loads(meta["sjfsched.class_tokens"])]
        except (KeyError, ValueError, TypeError) as exc:
            raise PredictorError(f"{path}: model metadata is missing or malformed ({exc!r})") from exc
        if len(medians) != 3 or not all(math.isfinite(m) and m >= 0 for m in medians):
            raise PredictorError(f"{path}: 'sjfsched.class_tokens' must be three lengths, got {medians}")
        self._medians = np.array(medians)
        inputs = session.get_inputs()
        if len(inputs) != 1 or inputs[0].shape[-1] != len(CLAIRVOYANT_FEATURES):
            raise PredictorError(
                f"{path}: model input is {[(i.name, i.shape) for i in inputs]}; expected one "
                f"[N, {len(CLAIRVOYANT_FEATURES)}] feature matrix"
            )
        self._input = inputs[0].name
        try:
            probe = self.probabilities_many([""])
        except Exception as exc:
            raise PredictorError(f"{path}: model does not run ({exc})") from exc
        if probe.shape != (1, 3):
            raise PredictorError(f"{path}: model gives {probe.shape[1]} classes, expected 3")

    def __repr__(self) -> str:
        return f"ClairvoyantPredictor(model_path={str(self._path)!r}, key={self._key!r})"

    @property
    def class_tokens(self) -> tuple[float, float, float]:
        """Median output tokens of the short, medium and long training answers."""
        a, b, c = (float(x) for x in self._medians)
        return a, b, c

    def probabilities_many(self, texts: Sequence[str]) -> npt.NDArray[np.float64]:
        """P(short), P(medium), P(long) for each text: an ``[n, 3]`` array."""
        if not texts:
            return np.zeros((0, 3))
        x = np.array([clairvoyant_features(t) for t in texts], np.float32)
        out = self._session.run(None, {self._input: x})
        probs = out[1] if len(out) > 1 else out[0]
        if isinstance(probs, list):  # a ZipMap output: one dict per row
            probs = [[row[k] for k in sorted(row)] for row in probs]
        return np.asarray(probs, np.float64).reshape(len(texts), -1)

    def probabilities(self, request: Request) -> tuple[float, float, float]:
        """P(short), P(medium), P(long) of one request."""
        a, b, c = (float(p) for p in self.probabilities_many([request.text])[0])
        return a, b, c

    def _prediction(self, probs: npt.NDArray[np.float64]) -> Prediction:
        p_long = min(max(float(probs[2]), 0.0), 1.0)
        short, _, long = self._medians
        if self._key == "p_long":
            tokens = float(short + p_long * (long - short))
        else:  # the expected length under the class probabilities
            tokens = float(probs @ self._medians)
        return Prediction(max(tokens, 0.0), p_long)

    def predict(self, request: Request, /) -> Prediction:
        return self._prediction(self.probabilities_many([text_of("predict()", request)])[0])

    def predict_many(self, requests: Sequence[Request], /) -> list[Prediction]:
        refuse_one_text("predict_many()", requests, "Requests")
        return [self._prediction(p) for p in self.probabilities_many(texts_of("predict_many()", requests))]
