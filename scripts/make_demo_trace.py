"""Build the small trace bundled for ``sjfsched demo`` (src/sjfsched/data/demo_trace.jsonl).

Real prompts with the real lengths of real answers, from the Apache-2.0
corpora in ../shared/data only: 70 OpenAssistant OASST1 prompts and 50
Arena-Hard v0.1 prompts answered by llama-3.1-8b-instruct.  Run from the
repository root:

    python scripts/make_demo_trace.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

OUT = Path("src/sjfsched/data/demo_trace.jsonl")
MAX_PROMPT_CHARS = 6000


def load(path: Path) -> list[dict[str, object]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    rng = random.Random(20261126)
    oasst = [r for r in load(args.data / "oasst1.jsonl.gz") if len(str(r["prompt"])) <= MAX_PROMPT_CHARS]
    arena = [
        r
        for r in load(args.data / "arena_hard_v01.jsonl.gz")
        if r["model"] == "llama-3.1-8b-instruct" and len(str(r["prompt"])) <= MAX_PROMPT_CHARS
    ]
    picked = rng.sample(oasst, 70) + rng.sample(arena, 50)
    rng.shuffle(picked)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8") as f:
        for r in picked:
            record = {
                "source": r["source"],
                "model": r["model"],
                "prompt": r["prompt"],
                "output_tokens": round(float(str(r["output_tokens"]))),
                "license": "Apache-2.0",
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    lengths = sorted(int(str(r["output_tokens"]).split(".")[0]) for r in picked)
    short = sum(n < 200 for n in lengths)
    long = sum(n >= 800 for n in lengths)
    print(f"wrote {len(picked)} records to {OUT}: {short} short (<200), {long} long (>=800)")


if __name__ == "__main__":
    main()
