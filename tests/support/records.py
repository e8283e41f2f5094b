"""Made-up records in the training schema, for tests that need a data file."""

from __future__ import annotations

import json
from pathlib import Path


def write_records(path: Path, n: int) -> Path:
    """``n`` records, one JSON line each: a prompt and its answer's length."""
    with path.open("w") as f:
        for i in range(n):
            f.write(
                json.dumps({"prompt": f"question {i} about {i % 7}", "output_tokens": 10 + 37 * i}) + "\n"
            )
    return path
