"""RequestLog writes what `sjfsched train` reads."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from sjfsched import Request, RequestLog, Scheduler
from sjfsched._cli import main
from sjfsched.backends import CallableBackend
from sjfsched.predictors import LexicalPredictor
from sjfsched.predictors._corpus import load_records, prompt_id_of

pytestmark = pytest.mark.anyio


def _answer(request: Request) -> list[str]:
    n = 5 if "short" in request.text else 60
    return [f"w{i} " for i in range(n)]


@pytest.mark.parametrize("name", ["requests.jsonl", "requests.jsonl.gz"])
async def test_scheduler_logs_completions_in_the_training_schema(tmp_path: Path, name: str) -> None:
    path = tmp_path / "logs" / name
    log = RequestLog(path, model="tiny-model")
    prompts = [f"please give a short answer {i}" for i in range(6)] + [
        f"write a long text {i}" for i in range(6)
    ]
    async with Scheduler(CallableBackend(_answer), on_complete=log) as sched:
        for p in prompts:
            await sched.complete(p)
        await sched.complete(
            Request(messages=[{"role": "user", "content": "short chat"}], options={"model": "x"})
        )
    log.close()
    assert log.written == len(prompts) + 1
    data = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    lines = [json.loads(line) for line in data.decode().splitlines()]
    first = lines[0]
    assert first["prompt"] == prompts[0] and first["prompt_id"] == prompt_id_of(prompts[0])
    assert first["model"] == "tiny-model" and first["output_tokens"] == 5 and first["source"] == "requestlog"
    assert lines[-1]["prompt"] == "short chat"
    records = load_records([path])
    assert [r.output_tokens for r in records[:7]] == [5] * 6 + [60]
    # and it trains: the user's own "Model D"
    out = tmp_path / "model-d.onnx"
    assert main(["train", str(path), "--out", str(out), "--fit-all", "--test-fraction", "0"]) == 0
    mine = LexicalPredictor(out, calibrate=False)
    assert (
        mine.predict(Request("write a long text 99")).tokens
        > mine.predict(Request("a short answer 99")).tokens
    )


async def test_model_name_from_request_options(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with RequestLog(path, source="app1", skip_truncated=True) as log:
        async with Scheduler(CallableBackend(_answer), on_complete=log) as sched:
            await sched.complete("short one", options={"model": "llama3.2:1b"})
            await sched.complete("short two")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(x["model"], x["source"]) for x in lines] == [("llama3.2:1b", "app1"), ("unknown", "app1")]


async def test_truncated_and_empty_answers_are_left_out(tmp_path: Path) -> None:
    from sjfsched import Chunk

    def answer(request: Request) -> list[Chunk]:
        if "empty" in request.text:
            return []
        reason = "length" if "cut" in request.text else "stop"
        return [Chunk("w ", tokens=3, finish_reason=reason)]

    for skip, expected in [(True, ["whole"]), (False, ["whole", "cut off"])]:
        path = tmp_path / f"r{skip}.jsonl"
        with RequestLog(path, skip_truncated=skip) as log:
            async with Scheduler(CallableBackend(answer), on_complete=log) as sched:
                for prompt in ["whole", "cut off", "empty"]:
                    await sched.complete(prompt)
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert [x["prompt"] for x in lines] == expected
        assert all(x["output_tokens"] == 3 for x in lines)
