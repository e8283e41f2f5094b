"""`sjfsched train` and `sjfsched evaluate` check what they are asked before the work: a missing
extra, an empty training or test set, an output path that is a directory or one of the inputs,
an option the chosen report would not use; and prompts that share a prompt_id are trained on
each with its own text. Found by a reviewer with reproducers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from sjfsched import Request
from sjfsched._cli import main
from sjfsched.predictors import LexicalPredictor
from sjfsched.predictors._corpus import LengthRecord, group_by_prompt, load_records, prompt_id_of
from sjfsched.predictors._train import split_records

TOPICS = [
    "the Roman empire", "photosynthesis", "black holes", "the French revolution", "machine learning",
    "jazz music", "the stock market", "climate change", "ancient Egypt", "quantum computing",
]  # fmt: skip


def _write_log(path: Path, *, source: str = "support", models: tuple[str, ...] = ("small", "large")) -> Path:
    """Prompts whose answer length follows what they ask for, answered by ``models``."""
    rng = random.Random(0)
    lines = []
    for i, topic in enumerate(TOPICS * 3):
        for prompt, typical in (
            (f"Write a detailed {1000 + 100 * i}-word essay about {topic}, with sections.", 1300),
            (f"What is {topic}? Answer in one sentence, number {i}.", 40),
            (f"Explain {topic} to a child, take {i}.", 350),
        ):
            for model in models:
                tokens = round(typical * rng.uniform(0.8, 1.25))
                lines.append(
                    json.dumps({"source": source, "prompt": prompt, "model": model, "output_tokens": tokens})
                )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_log(tmp_path_factory.mktemp("logs") / "requests.jsonl")


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a command refuses ``argv`` with (exit status 2, or an exit message)."""
    code: object
    try:
        code = main(argv)
    except SystemExit as exc:  # parser.exit, or the command line's one-line error
        code = exc.code
        if isinstance(exc.code, str):
            message = exc.code
            assert "\n" not in message, message
            return message
    message = capsys.readouterr().err.strip()
    assert code not in (0, None), message
    assert "\n" not in message and "Traceback" not in message, message
    return message


# ------------------------------------------------------ prompts sharing a prompt_id


def test_prompts_sharing_a_prompt_id_are_trained_on_each_with_its_own_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An export with one id per conversation: greeting, then a long or a short request.
    rng = random.Random(0)
    rows = []
    for conv in range(100):
        for text, tokens in (
            (f"hello there number {conv}", 20 + rng.randint(0, 10)),
            (f"write a zebra essay please {conv}", 1500 + rng.randint(0, 100)),
            (f"quick yes or no {conv}", 5 + rng.randint(0, 3)),
        ):
            rows.append({"prompt_id": f"conv-{conv}", "prompt": text, "output_tokens": tokens})
    data = tmp_path / "conversations.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "m.onnx"
    assert main(["train", str(data), "--out", str(out), "--test-fraction", "0"]) == 0
    capsys.readouterr()
    predictor = LexicalPredictor(out, adapt=False)
    essay = predictor.predict(Request("write a zebra essay please 999")).tokens
    quick = predictor.predict(Request("quick yes or no 999")).tokens
    assert essay > 20 * quick  # the first text of each id alone was trained on: these were equal
    assert "| `conversations` | 300 | 300 |" in out.with_suffix(".md").read_text()  # answers, prompts
    # the split stays grouped by prompt_id: a conversation is on one side
    train, test = split_records(load_records([data]), 0.3)
    assert test and {r.prompt_id for r in train}.isdisjoint({r.prompt_id for r in test})


def test_group_by_prompt_keys_on_corpus_id_and_text() -> None:
    records = [
        LengthRecord("a question", 10.0, "id-1", "s", "m"),
        LengthRecord("another question", 20.0, "id-1", "s", "m"),
        LengthRecord("a question  \n", 30.0, "id-1", "s", "n"),  # the same prompt (what its id hashes)
        LengthRecord("a question", 40.0, "id-1", "other", "m"),  # another corpus
        LengthRecord("a question", 50.0, "id-2", "s", "m"),
    ]
    prompts, members = group_by_prompt(records)
    assert prompts == ["a question", "another question", "a question", "a question"]
    assert members == [[0, 2], [1], [3], [4]]
    assert prompt_id_of("a question  \n") == prompt_id_of("a question")
