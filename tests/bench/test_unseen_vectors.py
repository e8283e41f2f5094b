"""`--word-vectors` in the benchmarks: the unseen predictor trained as the bundled model is."""

from __future__ import annotations

from pathlib import Path

import pytest

from sjfsched._bench._unseen import train_unseen_models
from sjfsched._cli import main
from sjfsched.predictors import LexicalPredictor

from ._data import sharegpt_like


def _vectors(path: Path) -> Path:
    words = ["explain", "list", "why", "code", "poem", "what", "the", "question"]
    path.write_text("".join(f"{w} {i * 0.1:.1f} {1 - i * 0.1:.1f} 0.5\n" for i, w in enumerate(words)))
    return path


def test_unseen_models_fold_the_vectors_in_when_given_them(tmp_path: Path) -> None:
    data = sharegpt_like(tmp_path / "data")
    vectors = _vectors(tmp_path / "vectors.txt")
    plain = train_unseen_models(["sharegpt"], data, tmp_path / "plain")
    folded = train_unseen_models(["sharegpt"], data, tmp_path / "folded", vectors)
    meta = {
        name: LexicalPredictor(paths["sharegpt"]).metadata
        for name, paths in (("plain", plain), ("folded", folded))
    }
    assert meta["folded"].get("sjfsched.vector_rows") == "true"
    assert "vectors.txt" in meta["folded"]["sjfsched.word_vectors"]
    assert "sjfsched.vector_rows" not in meta["plain"] and "sjfsched.word_vectors" not in meta["plain"]


def test_a_missing_vectors_file_fails_before_anything_runs(tmp_path: Path) -> None:
    data = sharegpt_like(tmp_path / "data")
    missing = tmp_path / "none.txt"
    for command in (
        ["sim", "--traces", "sharegpt", "--policies", "fcfs,unseen", "--scenarios", "burst20"],
        ["ranking", "--predictors", "unseen"],
    ):
        with pytest.raises(SystemExit, match=r"--word-vectors .*none\.txt: no such file"):
            main(["bench", *command, "--data", str(data), "--word-vectors", str(missing)])
