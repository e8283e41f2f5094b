"""Traces read from corpus files in the shared schema."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from sjfsched._bench._traces import TRACES, TraceSpec, default_data_dir, length_class, load_trace

from ._data import write_corpus


def test_length_classes_follow_clairvoyant() -> None:
    assert [length_class(n) for n in (0, 199, 200, 799, 800, 5000)] == [
        "short",
        "short",
        "medium",
        "medium",
        "long",
        "long",
    ]


def test_a_trace_keeps_one_model_and_the_chosen_sources(tmp_path: Path) -> None:
    rows = [
        {
            "source": "castillo/Mbpp",
            "prompt_id": "a",
            "prompt": "Write f",
            "model": "m1",
            "output_tokens": 120.4,
            "input_tokens": 33,
        },
        {
            "source": "castillo/Mbpp",
            "prompt_id": "a",
            "prompt": "Write f",
            "model": "m1",
            "output_tokens": 99.0,
        },
        {
            "source": "castillo/Alpaca",
            "prompt_id": "b",
            "prompt": "Say hi",
            "model": "m1",
            "output_tokens": 5,
        },
        {
            "source": "castillo/Mbpp",
            "prompt_id": "c",
            "prompt": "x" * 40,
            "model": "m1",
            "output_tokens": 900,
        },
        {
            "source": "castillo/Mbpp",
            "prompt_id": "d",
            "prompt": "Write g",
            "model": "m2",
            "output_tokens": 10,
        },
        {"source": "castillo/Mbpp", "prompt_id": "e", "prompt": "  ", "model": "m1", "output_tokens": 10},
    ]
    write_corpus(tmp_path / "c.jsonl.gz", rows)
    trace = load_trace(TraceSpec("t", "c.jsonl.gz", "m1", sources=("castillo/Mbpp",)), tmp_path)
    assert [(i.prompt, i.output_tokens, i.prompt_tokens) for i in trace.items] == [
        ("Write f", 120, 33),  # the model's own prompt count; the duplicate prompt_id is dropped
        ("x" * 40, 900, 10),  # no input_tokens: characters / 4
    ]
    assert trace.class_shares() == {"short": 0.5, "medium": 0.0, "long": 0.5}
    request = trace.items[0].request()
    assert request.prompt == "Write f"
    assert request.max_tokens is None  # the scheduler is not told the length
    assert request.metadata["output_tokens"] == 120


def test_sampling_repeats_with_the_seed(tmp_path: Path) -> None:
    rows = [{"prompt_id": str(i), "prompt": f"p{i}", "model": "m", "output_tokens": i + 1} for i in range(50)]
    write_corpus(tmp_path / "c.jsonl.gz", rows)
    trace = load_trace(TraceSpec("t", "c.jsonl.gz", "m"), tmp_path)
    a = trace.sample(10, random.Random("x"))
    assert a == trace.sample(10, random.Random("x"))
    assert len(set(a)) == 10
    assert len(trace.sample(200, random.Random(0), replace=True)) == 200
    with pytest.raises(ValueError, match="cannot draw"):
        trace.sample(51, random.Random(0))


def test_errors_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.jsonl\.gz"):
        load_trace(TraceSpec("t", "nowhere.jsonl.gz", "m"), tmp_path)
    write_corpus(tmp_path / "c.jsonl.gz", [{"prompt": "p", "model": "other", "output_tokens": 3}])
    with pytest.raises(ValueError, match="no record"):
        load_trace(TraceSpec("t", "c.jsonl.gz", "m"), tmp_path)
    with pytest.raises(ValueError, match="unknown trace"):
        load_trace("no-such-trace", tmp_path)


def test_the_shipped_traces_load_from_the_shared_data() -> None:
    data = default_data_dir()
    if data is None:
        pytest.skip("../shared/data is not present")
    for name in TRACES:
        trace = load_trace(name, data)
        shares = trace.class_shares()
        assert len(trace) >= 400, name
        assert shares["short"] > 0 and shares["long"] > 0, name


def test_a_fresh_trace_splits_the_prompts_into_run_and_history() -> None:
    data = default_data_dir()
    if data is None:
        pytest.skip("../shared/data is not present")
    whole = load_trace("sharegpt", data)
    fresh = load_trace("sharegpt/fresh", data)
    assert fresh.name == "sharegpt/fresh"
    run, history = {i.prompt for i in fresh.items}, {i.prompt for i in fresh.history}
    assert not run & history  # the run never draws a prompt learnt from
    assert run | history == {i.prompt for i in whole.items}
    assert 0.4 < len(run) / len(whole) < 0.6
    assert load_trace("sharegpt/fresh", data).items == fresh.items  # the same split every time


def test_ranking_accuracy_counts_pairs_and_half_ties() -> None:
    from sjfsched.predictors._evaluate import ranking_accuracy

    # shorts scored 1 and 3, longs scored 2 and 3: pairs (1,2) right, (1,3) right, (3,2) wrong, (3,3) tie.
    assert ranking_accuracy([1, 3, 2, 3, 5], [10, 100, 900, 1000, 500]) == pytest.approx(2.5 / 4)
    assert math.isnan(ranking_accuracy([1, 2], [10, 500]))


def test_a_built_in_trace_keeps_each_prompt_of_a_shared_id(tmp_path: Path) -> None:
    rows = [
        {"source": "s", "prompt_id": "conv", "prompt": "first turn", "model": "m", "output_tokens": 5},
        {"source": "s", "prompt_id": "conv", "prompt": "second turn", "model": "m", "output_tokens": 900},
        {"source": "s", "prompt_id": "conv", "prompt": "first turn", "model": "m", "output_tokens": 7},
    ]
    write_corpus(tmp_path / "c.jsonl.gz", rows)
    trace = load_trace(TraceSpec("t", "c.jsonl.gz", "m"), tmp_path)
    assert [(i.prompt, i.output_tokens) for i in trace.items] == [("first turn", 5), ("second turn", 900)]


def test_an_installed_copy_looks_for_the_corpora_beside_the_current_folder_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed in a virtual environment, it took any ../shared/data above the environment for
    the project's corpora (found by a newcomer's review)."""
    from sjfsched._bench import _traces

    unrelated = tmp_path / "shared" / "data"
    unrelated.mkdir(parents=True)
    (unrelated / "README.md").write_text("someone else's")
    site = tmp_path / "project" / "venv" / "lib" / "site-packages" / "sjfsched" / "_bench"
    site.mkdir(parents=True)
    monkeypatch.setattr(_traces, "__file__", str(site / "_traces.py"))
    elsewhere = tmp_path / "home" / "work"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    assert default_data_dir() is None
    monkeypatch.chdir(tmp_path / "project")  # ../shared/data beside the current folder: meant
    assert default_data_dir() == unrelated.resolve()
