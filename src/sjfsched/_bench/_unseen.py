"""The ``unseen`` predictor: the default model's recipe, trained without the trace's corpus.

sjfsched's bundled :class:`~sjfsched.predictors.LexicalPredictor` was
trained on the corpora the traces come from, so on them it ranks better than
on a deployment's own traffic.  For each trace the benchmarks also train the
same model (``sjfsched train --bundled-sources --fit-all``, with
``--word-vectors`` where the run is given them, as the bundled model was)
with the trace's corpus left out (``TraceSpec.holdout``) and schedule with
it: the figures a user whose prompts look like none of the training corpora
can expect.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from ._traces import TRACES, UNSEEN_BUILT_IN_ONLY, TraceSpec, base_name

__all__ = ["train_unseen_models"]


def _model_name(spec: TraceSpec) -> str:
    digest = hashlib.sha1("\0".join(spec.holdout).encode()).hexdigest()[:10]
    return f"unseen-{digest}.onnx"


def train_unseen_models(
    traces: Iterable[str], data_dir: str | Path, out_dir: str | Path, word_vectors: str | Path | None = None
) -> dict[str, str]:
    """Train one model per distinct hold-out set of ``traces`` into ``out_dir``; trace -> model path.

    ``word_vectors``: the file ``sjfsched train --word-vectors`` folds in (None: none).

    Traces that share a hold-out set (both CASTILLO traces, both Arena
    traces) share the model.  Raises :class:`ValueError` with the trainer's
    output when training fails.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for name in traces:
        spec = TRACES.get(base_name(name))
        if spec is None:
            raise ValueError(f"{name!r}: {UNSEEN_BUILT_IN_ONLY}")
        if not spec.holdout:
            raise ValueError(f"trace {name!r} names no corpus to hold out of the unseen predictor")
        path = out / _model_name(spec)
        if not path.is_file():
            command = [sys.executable, "-m", "sjfsched", "train", str(data_dir), "--out", str(path)]
            command += ["--bundled-sources", "--fit-all"]
            if word_vectors is not None:
                command += ["--word-vectors", str(word_vectors)]
            for pattern in spec.holdout:
                command += ["--exclude", pattern]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0 or not path.is_file():
                raise ValueError(  # the data cannot train it (say, no other corpus): the user's to mend
                    f"training the unseen predictor for {name!r} failed ({' '.join(command)}):\n"
                    f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
                )
        paths[name] = str(path)
    return paths
