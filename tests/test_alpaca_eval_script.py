"""scripts/alpaca_eval_corpus.py: AlpacaEval's published answers as a corpus in the shared data's schema."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "alpaca_eval_corpus.py"


def _checkout(root: Path) -> Path:
    answers = {
        "model-a": [
            ("oasst", "Tell me about cats.", "Cats " * 40),
            ("koala", "Write a long essay.", "x" * 4000),
        ],
        "model-b": [("oasst", "Tell me about cats.", ""), ("vicuna", "Seen before?", "yes")],
        "NullModel": [("oasst", "Tell me about cats.", "nothing")],
    }
    for model, rows in answers.items():
        folder = root / "results" / model
        folder.mkdir(parents=True)
        (folder / "model_outputs.json").write_text(
            json.dumps([{"dataset": d, "instruction": p, "output": o} for d, p, o in rows])
        )
    return root


def test_the_corpus_has_the_shared_schema_and_leaves_out_what_it_says(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path / "alpaca_eval")
    shared = tmp_path / "shared"
    shared.mkdir()
    with gzip.open(shared / "known.jsonl.gz", "wt") as f:
        f.write(json.dumps({"source": "x", "prompt": "  Seen before?  ", "output_tokens": 3}) + "\n")
    out = tmp_path / "alpaca.jsonl.gz"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(checkout), "--exclude-prompts-of", str(shared), "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    said = "2 answers to 2 prompts by 2 models; left out 1 empty answers and 1 prompts found in"
    assert said in result.stderr
    with gzip.open(out, "rt") as f:
        records = [json.loads(line) for line in f]
    assert [(r["source"], r["model"], r["output_tokens"]) for r in records] == [
        ("alpaca-eval/oasst", "model-a", 50),  # 200 characters / 4
        ("alpaca-eval/koala", "model-a", 1000),
    ]
    assert records[0]["prompt_id"] == hashlib.sha1(b"Tell me about cats.").hexdigest()[:16]
    assert {r["token_count"] for r in records} == {"chars/4"}


def test_a_folder_without_results_is_named(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "--out", str(tmp_path / "o.jsonl")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"no results/*/model_outputs.json under {tmp_path}" in result.stderr


@pytest.mark.parametrize("contents", [None, "notes.txt"])
def test_an_exclusion_folder_without_corpora_is_named(tmp_path: Path, contents: str | None) -> None:
    checkout = _checkout(tmp_path / "alpaca_eval")
    empty = tmp_path / "empty"
    empty.mkdir()
    if contents:
        (empty / contents).write_text("x")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(checkout), "--exclude-prompts-of", str(empty), "--out",
         str(tmp_path / "o.jsonl")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"no *.jsonl or *.jsonl.gz files in {empty}" in result.stderr
