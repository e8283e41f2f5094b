"""Where the project's shared data lives, if it is here at all."""

from __future__ import annotations

from pathlib import Path

import pytest

#: ../shared beside the repository root
SHARED = Path(__file__).resolve().parents[2].parent / "shared"
DATA = SHARED / "data"

needs_shared_data = pytest.mark.skipif(
    not (DATA / "sharegpt_natural.jsonl.gz").exists(),
    reason=f"the shared corpora are not at {DATA}",
)
