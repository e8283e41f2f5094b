"""Turn AlpacaEval's published model answers into a corpus to evaluate predictors on.

AlpacaEval (github.com/tatsu-lab/alpaca_eval; code Apache-2.0, data CC BY-NC
4.0) publishes, for each of some 200 models, its answers to the same 805
instructions (self-instruct, OASST, Koala, Anthropic helpful-base, Vicuna) in
``results/<model>/model_outputs.json``. None of these corpora trained the
bundled model, so they test it on prompts and answering models it never saw.
The data is for evaluation only: nothing of it is in this repository.

    git clone --depth 1 https://github.com/tatsu-lab/alpaca_eval
    python scripts/alpaca_eval_corpus.py alpaca_eval --exclude-prompts-of ../shared/data \\
        --out alpaca_eval.jsonl.gz
    sjfsched evaluate alpaca_eval.jsonl.gz --corpora-only

Each record follows the shared data's schema: ``source`` ``alpaca-eval/<part>``,
``prompt_id`` (the first 16 hex digits of sha1 of the stripped prompt),
``prompt``, ``model``, ``output_tokens`` (the answer's characters / 4, rounded,
at least 1) and ``token_count`` ``chars/4``.  Empty answers (a model that
failed) and the repository's ``NullModel`` are left out.  With
``--exclude-prompts-of DIR``, prompts that also occur in DIR's corpora are left
out, so that the corpus is one the predictor never saw.  It prints what it
wrote and left out.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from pathlib import Path


def prompt_id(prompt: str) -> str:
    return hashlib.sha1(prompt.strip().encode("utf-8")).hexdigest()[:16]


def known_prompts(folder: Path) -> set[str]:
    """The prompt ids of every record in ``folder``'s ``*.jsonl`` and ``*.jsonl.gz`` files."""
    ids: set[str] = set()
    files = sorted(folder.glob("*.jsonl")) + sorted(folder.glob("*.jsonl.gz"))
    if not files:
        raise SystemExit(f"alpaca_eval_corpus: no *.jsonl or *.jsonl.gz files in {folder}")
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    record = json.loads(line)
                    ids.add(record.get("prompt_id") or prompt_id(record["prompt"]))
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a checkout of github.com/tatsu-lab/alpaca_eval")
    parser.add_argument("--out", type=Path, required=True, help="the JSON-lines file to write (.gz: gzipped)")
    parser.add_argument(
        "--exclude-prompts-of", type=Path, metavar="DIR", help="leave out prompts found in DIR's corpora"
    )
    args = parser.parse_args(argv)
    files = sorted((args.checkout / "results").glob("*/model_outputs.json"))
    if not files:
        raise SystemExit(f"alpaca_eval_corpus: no results/*/model_outputs.json under {args.checkout}")
    excluded = known_prompts(args.exclude_prompts_of) if args.exclude_prompts_of else set()
    records: list[dict[str, object]] = []
    seen_excluded: set[str] = set()
    empty = 0
    models = 0
    for path in files:
        model = path.parent.name
        if model == "NullModel":
            continue
        models += 1
        for answer in json.loads(path.read_text(encoding="utf-8")):
            prompt, output = answer.get("instruction"), answer.get("output")
            if not isinstance(prompt, str) or not prompt.strip():
                continue
            if not isinstance(output, str) or not output.strip():
                empty += 1
                continue
            pid = prompt_id(prompt)
            if pid in excluded:
                seen_excluded.add(pid)
                continue
            records.append(
                {
                    "source": f"alpaca-eval/{answer.get('dataset', 'unknown')}",
                    "prompt_id": pid,
                    "prompt": prompt,
                    "model": model,
                    "output_tokens": max(1, round(len(output) / 4)),
                    "token_count": "chars/4",
                }
            )
    opener = gzip.open if args.out.suffix == ".gz" else open
    with opener(args.out, "wt", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    prompts = len({r["prompt_id"] for r in records})
    print(
        f"wrote {args.out}: {len(records)} answers to {prompts} prompts by {models} models; left out "
        f"{empty} empty answers and {len(seen_excluded)} prompts found in {args.exclude_prompts_of}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
