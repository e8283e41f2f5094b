"""The real llama.cpp run: each generation runs to its trace length, and the command works end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sjfsched import Request
from sjfsched._bench._real import TraceLengthBackend
from sjfsched._cli import main
from sjfsched.backends import CallableBackend, SimulatedBackend

from ._data import sharegpt_like

llama_cpp = pytest.importorskip("llama_cpp", reason="the real run needs llama-cpp-python")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sjfsched.testing import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("model") / "tiny.gguf", n_ctx=1024)


@pytest.mark.anyio
async def test_each_request_generates_exactly_its_trace_length(tiny_model: Path) -> None:
    from sjfsched.backends import LlamaCppBackend

    backend = TraceLengthBackend(LlamaCppBackend.from_path(str(tiny_model), n_ctx=1024), prompt_chars=20)
    try:
        for n in (1, 7, 40):
            request = Request("a long prompt " * 20, metadata={"output_tokens": n})
            tokens = 0
            prompt_tokens = None
            async for chunk in backend.stream(request):
                tokens += chunk.tokens
                prompt_tokens = chunk.prompt_tokens if chunk.prompt_tokens is not None else prompt_tokens
            assert tokens == n
            assert request.max_tokens is None  # the scheduler's request is left as it was
            assert prompt_tokens is not None and prompt_tokens <= 20 + 2  # the model read 20 characters
    finally:
        await backend.aclose()


@pytest.mark.anyio
async def test_a_paused_request_resumes_to_exactly_its_trace_length(tiny_model: Path) -> None:
    """The real run's sjfsched policy pauses answers: the wrapper resumes them through llama.cpp."""
    from sjfsched.backends import LlamaCppBackend

    backend = TraceLengthBackend(LlamaCppBackend.from_path(str(tiny_model), n_ctx=1024), prompt_chars=20)
    try:
        request = Request("a long prompt " * 20, metadata={"output_tokens": 30})
        assert backend.resumable(request)
        stream = backend.stream(request)
        text, tokens = "", 0
        async for chunk in stream:
            text, tokens = text + chunk.text, tokens + chunk.tokens
            if tokens >= 6:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        rest = [chunk async for chunk in backend.resume(request, text, tokens)]
        assert tokens + sum(c.tokens for c in rest) == 30
        assert rest[-1].finish_reason == "length"
        assert TraceLengthBackend(SimulatedBackend()).resumable(request)  # as the inner one says
        assert not TraceLengthBackend(CallableBackend(lambda r: "x")).resumable(request)
    finally:
        await backend.aclose()


@pytest.mark.slow
def test_bench_real_compares_real_and_simulated_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = sharegpt_like(tmp_path / "data")
    out = tmp_path / "real.json"
    status = main(
        [
            "bench", "real", "--data", str(data), "--trace", "sharegpt", "--requests", "8",
            "--scale", "0.05", "--preset", "small", "--results", str(out),
        ]
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert status == (0 if report["agree"] else 1)
    assert report["prefill_rate"] > 0 and report["decode_rate"] > 0
    assert set(report["stats"]["real"]) == set(report["stats"]["sim"]) == {"fcfs", "sjfsched"}
    assert report["stats"]["real"]["fcfs"]["n"] == report["stats"]["sim"]["fcfs"]["n"]
    assert report["models_sha1"]["bundled lexical"]
    for kind in ("real", "sim"):  # answers paused: none first-come-first-served, the same in the table
        assert report["stats"][kind]["fcfs"]["pauses"] == 0
        paused = report["stats"][kind]["sjfsched"]["pauses"]
        assert isinstance(paused, int) and paused >= (1 if kind == "sim" else 0)  # the replay is exact
        assert f"| sjfsched | {kind} |" in report["table"]
        row = next(line for line in report["table"].splitlines() if line.startswith(f"| sjfsched | {kind} |"))
        assert row.endswith(f"| {paused} |")
    assert "| makespan | pauses |" in report["table"]
    assert "short-request P50 gain" in capsys.readouterr().out


def test_the_replay_builds_its_policies_as_the_real_run_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clairvoyant's tau started at 3 x 1 s in the real run and at 3 x the sample's mean short
    service time in its replay, so the agreement check compared two different policies.

    The "real" run here is a simulation (no model loads); the test compares what the real run
    and the replay build each policy with.
    """
    from sjfsched._bench import _real
    from sjfsched._bench._policies import PolicyContext
    from sjfsched._bench._profiles import Profile
    from sjfsched._bench._sim import burst_arrivals, simulate

    real: dict[str, PolicyContext] = {}
    replay: dict[str, PolicyContext] = {}

    def simulated_real_run(args: Any, items: Any, policies: Any, pinned: Any, tmp: Any) -> Any:
        context = _real._real_context(pinned)  # what _run_real builds the policies with
        real.update({p.name: context for p in policies})
        batch = [(items, burst_arrivals(len(items)))]
        return {p.name: simulate(p, Profile("fixed", 2000.0, 20.0), batch, context)[0][0] for p in policies}

    def replayed(policy: Any, profile: Any, batches: Any, context: PolicyContext, **kwargs: Any) -> Any:
        replay[policy.name] = context
        return simulate(policy, profile, batches, context, **kwargs)

    monkeypatch.setattr(_real, "_run_real", simulated_real_run)
    monkeypatch.setattr(_real, "simulate", replayed)
    trace = tmp_path / "t.jsonl"
    lengths = [20, 30, 60, 150, 190, 400, 700, 900, 1200, 1500, 40, 80]
    trace.write_text(
        "".join(
            json.dumps({"prompt": f"question {i} " * (1 + 7 * i % 13), "output_tokens": n}) + "\n"
            for i, n in enumerate(lengths)
        )
    )
    main(
        ["bench", "real", "--trace", str(trace), "--requests", "12", "--scale", "1",
         "--policies", "fcfs,clairvoyant", "--results", str(tmp_path / "real.json")]
    )  # fmt: skip
    assert set(replay) == set(real) == {"fcfs", "clairvoyant"}
    for name in real:
        assert replay[name].short_latency == real[name].short_latency  # Clairvoyant's tau starts here
        assert replay[name] == real[name]


def test_the_measured_rates_leave_out_answers_that_were_paused() -> None:
    # A paused answer's time from its first token to its end holds the answers run while it
    # waited: counted, it made the decode rate of a preemptive run 30% too low (the replay's
    # times 40% too long), though the real run's gain came out right.
    from sjfsched._bench._policies import PolicyContext, policy_named
    from sjfsched._bench._profiles import Profile
    from sjfsched._bench._real import _measured_rates
    from sjfsched._bench._sim import burst_arrivals, simulate
    from sjfsched._bench._traces import TraceItem

    profile = Profile("test", prefill_rate=100.0, decode_rate=10.0)
    batch = [TraceItem(f"request {i} of {n} tokens", n, 20) for i, n in enumerate([60, 5, 8, 3, 40])]
    context = PolicyContext(short_latency=1.0)
    [(done, _)] = simulate(policy_named("oracle"), profile, [(batch, burst_arrivals(len(batch)))], context)
    assert any(c.preemptions for c in done)
    _, decode = _measured_rates(done)
    assert decode == pytest.approx(10.0)


def test_the_measured_rates_when_every_answer_was_paused_or_none_can_tell() -> None:
    # Found by a reviewer: with no answer run in one piece the measurement divided by zero,
    # after the whole real run.
    from sjfsched._bench._policies import PolicyContext, policy_named
    from sjfsched._bench._profiles import Profile
    from sjfsched._bench._real import _measured_rates
    from sjfsched._bench._sim import burst_arrivals, simulate
    from sjfsched._bench._traces import TraceItem

    profile = Profile("test", prefill_rate=100.0, decode_rate=10.0)
    batch = [TraceItem("a long one", 60, 20), TraceItem("a short one", 5, 20)]
    context = PolicyContext(short_latency=1.0)
    [(done, _)] = simulate(policy_named("oracle"), profile, [(batch, burst_arrivals(2))], context)
    paused = [c for c in done if c.preemptions]
    assert paused
    assert _measured_rates(paused)[1] < 10.0  # the paused answers' rate, for want of better
    with pytest.raises(ValueError, match="no answer of more than one token to measure the rates on"):
        _measured_rates([])
