"""`--word-vectors` in the benchmarks: the unseen predictor trained as the bundled model is."""

from __future__ import annotations

from pathlib import Path

import pytest

from sjfsched._bench._traces import TRACES
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


def test_sim_trains_the_unseen_predictor_with_the_vectors_it_is_given(tmp_path: Path) -> None:
    from sjfsched._bench._run import load_results

    data = sharegpt_like(tmp_path / "data")
    vectors = _vectors(tmp_path / "vectors.txt")
    digests = {}
    for name, extra in (("plain", []), ("folded", ["--word-vectors", str(vectors)])):
        results = tmp_path / f"{name}.json"
        args = ["bench", "sim", "--data", str(data), "--traces", "sharegpt", "--profiles", "gpu",
                "--scenarios", "burst20", "--repetitions", "1", "--policies", "fcfs,unseen",
                "--results", str(results), "--no-progress", *extra]  # fmt: skip
        assert main(args) == 0
        digests[name] = load_results(results)[1]["models_sha1"]["unseen for sharegpt"]
    # the model trained with the vectors is another file than the one trained without
    folded = train_unseen_models(["sharegpt"], data, tmp_path / "again", vectors)["sharegpt"]
    import hashlib

    assert digests["folded"] == hashlib.sha1(Path(folded).read_bytes()).hexdigest()
    assert digests["plain"] != digests["folded"]


def test_vectors_where_no_unseen_predictor_runs_are_refused(tmp_path: Path) -> None:
    data = sharegpt_like(tmp_path / "data")
    vectors = str(_vectors(tmp_path / "vectors.txt"))
    for command in (
        ["sim", "--traces", "sharegpt", "--policies", "fcfs,sjfsched", "--scenarios", "burst20"],
        ["ranking", "--predictors", "sjfsched"],
    ):
        with pytest.raises(SystemExit, match="--word-vectors is for training the unseen predictor"):
            main(["bench", *command, "--data", str(data), "--word-vectors", vectors])


@pytest.mark.parametrize("command", [["ranking", "--predictors", "unseen"], ["all"]])
def test_ranking_and_all_hand_the_vectors_to_the_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """Where the models are prepared, the --word-vectors file goes with them (stopped right there)."""
    from sjfsched._bench import _run

    seen = []

    def prepare(*args: object, word_vectors: object = None, **kwargs: object) -> None:
        seen.append(word_vectors)
        raise RuntimeError("stop")

    monkeypatch.setattr(_run, "prepare_models", prepare)
    data = sharegpt_like(tmp_path / "data")
    for spec in TRACES.values():  # every trace's corpus is there (checked before the models are made)
        (data / spec.file).touch()
    vectors = _vectors(tmp_path / "vectors.txt")
    out = (
        ["--out", str(tmp_path / "docs"), "--results", str(tmp_path / "r.json")] if command == ["all"] else []
    )
    with pytest.raises(RuntimeError, match="stop"):
        main(["bench", *command, "--data", str(data), *out, "--word-vectors", str(vectors)])
    assert seen == [vectors.resolve()]
