"""A tiny corpus in the ../shared/data schema, written by the tests themselves."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any


def write_corpus(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


def sharegpt_like(directory: Path, n: int = 60, seed: int = 0) -> Path:
    """``sharegpt_natural.jsonl.gz`` with ``n`` prompts answered by "chatgpt", and an
    ``oasst1.jsonl.gz`` of as many (another corpus, to train the ``unseen`` predictor on)."""
    write_corpus(directory / "sharegpt_natural.jsonl.gz", _records(n, seed, "sharegpt-natural", "chatgpt"))
    write_corpus(directory / "oasst1.jsonl.gz", _records(n, seed + 1, "oasst1", "unknown"))
    return directory


def _records(n: int, seed: int, source: str, model: str) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records = []
    for i in range(n):
        words = " ".join(
            rng.choice(["explain", "list", "why", "code", "poem", "what", "the"]) for _ in range(8)
        )
        records.append(
            {
                "source": source,
                "prompt_id": f"{seed:04x}{i:012x}",
                "prompt": f"Question {i}: {words}?",
                "model": model,
                "output_tokens": float(rng.choice([20, 60, 150, 300, 500, 900, 1200])),
                "token_count": "chars/4",
            }
        )
    return records
