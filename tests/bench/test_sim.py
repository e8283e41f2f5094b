"""Tiny virtual-time runs of the real Scheduler whose every time is computable by hand."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sjfsched._bench._policies import PolicyContext, policy_named
from sjfsched._bench._profiles import Profile
from sjfsched._bench._sim import BURST_STAGGER, Scenario, burst_arrivals, poisson_arrivals, simulate
from sjfsched._bench._traces import TraceItem

# 10 output tokens per second, prompts free: a request of n tokens takes n / 10 seconds.
PROFILE = Profile("test", prefill_rate=1e9, decode_rate=10.0)
CONTEXT = PolicyContext(short_latency=1.0)


def items(*tokens: int) -> list[TraceItem]:
    return [TraceItem(f"request {i} of {n} tokens", n, 1) for i, n in enumerate(tokens)]


def run(policy: str, tokens: list[int]) -> list[tuple[int, float, float]]:
    batch = items(*tokens)
    [(completions, _)] = simulate(
        policy_named(policy), PROFILE, [(batch, burst_arrivals(len(batch)))], CONTEXT
    )
    return [(c.output_tokens, c.started - c.submitted, c.latency) for c in completions]


def test_fcfs_serves_a_burst_in_arrival_order() -> None:
    done = run("fcfs", [30, 20, 10, 5])
    waits = [w for _, w, _ in done]
    # 3 s, then 2 s, then 1 s: each waits for everyone before it.
    expected = [0.0, 3.0, 5.0, 6.0]
    for i, (got, want) in enumerate(zip(waits, expected, strict=True)):
        assert got == pytest.approx(want - i * BURST_STAGGER, abs=1e-6)
    assert [lat for *_, lat in done] == pytest.approx([3.0, 5.0, 6.0, 6.5], abs=1e-5)


def test_sjf_with_true_lengths_serves_shortest_first() -> None:
    done = run("oracle@preempt=0", [30, 20, 10, 5])
    # The first runs at once (the server was idle); then 5, 10, 20 tokens.
    starts = {n: w for n, w, _ in done}
    assert starts[30] == pytest.approx(0.0, abs=1e-6)
    assert starts[5] == pytest.approx(3.0, abs=1e-5)
    assert starts[10] == pytest.approx(3.5, abs=1e-5)
    assert starts[20] == pytest.approx(4.5, abs=1e-5)


def test_sjf_with_preemption_pauses_the_first_for_the_shorter_ones() -> None:
    done = run("oracle", [30, 20, 10, 5])
    # The first runs at once and is paused after its first token (0.1 s: the others are
    # waiting); 5 and 10 tokens run.  Then the rest of the first (29 tokens, ~0.97 s at the
    # scheduler's starting 30 tokens/s), capped now at the median estimate of the four
    # (0.5 s), ranks before the 20-token one (0.67 s, capped as it arrived at 0.83 s): it
    # goes on at 1.6 s and ends at 4.5 s.
    starts = {n: w for n, w, _ in done}
    latencies = {n: lat for n, _, lat in done}
    assert starts[30] == pytest.approx(0.0, abs=1e-6)
    assert starts[5] == pytest.approx(0.1, abs=1e-5)
    assert starts[10] == pytest.approx(0.6, abs=1e-5)
    assert latencies[30] == pytest.approx(1.6 + 2.9, abs=1e-5)
    assert starts[20] == pytest.approx(4.5, abs=1e-5)


def test_batches_run_back_to_back_through_one_scheduler() -> None:
    first, second = items(10, 20), items(5, 5)
    runs = simulate(
        policy_named("fcfs"),
        PROFILE,
        [(first, burst_arrivals(2)), (second, burst_arrivals(2))],
        CONTEXT,
    )
    assert [len(c) for c, _ in runs] == [2, 2]
    end_first = max(c.finished for c in runs[0][0])
    assert min(c.submitted for c in runs[1][0]) == pytest.approx(end_first + 1.0)


def test_poisson_arrivals_have_the_asked_rate_and_repeat_with_the_seed() -> None:
    times = poisson_arrivals(20000, 2.0, random.Random(1))
    assert times == sorted(times)
    assert len(times) / times[-1] == pytest.approx(2.0, rel=0.03)
    assert poisson_arrivals(5, 2.0, random.Random(1)) == times[:5]


def test_scenario_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="rho"):
        Scenario("poisson", 10, 1, rho=1.5)
    with pytest.raises(ValueError, match="kind"):
        Scenario("wave", 10, 1)


def test_the_first_token_comes_a_prefill_and_one_decode_step_after_the_start_as_the_docs_say() -> None:
    # Found by a reviewer with a reproducer: docs/benchmarks.md said "after the prefill".
    profile = Profile("test", prefill_rate=100.0, decode_rate=10.0)
    batch = [TraceItem("a lone request", 30, 50)]  # 0.5 s of prefill, 3 s of decoding
    [([done], _)] = simulate(policy_named("fcfs"), profile, [(batch, burst_arrivals(1))], CONTEXT)
    assert done.first_token is not None
    assert done.first_token - done.started == pytest.approx(50 / 100 + 1 / 10)
    assert done.finished - done.started == pytest.approx(50 / 100 + 30 / 10)
    docs = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
    if not docs.is_file():
        pytest.skip("docs/benchmarks.md is not in this tree")
    backends = " ".join(docs.read_text(encoding="utf-8").split("### Backends", 1)[1][:800].split())
    assert "streams its first token after the prefill and one decode step" in backends
    assert "`prompt_tokens / prefill_rate + 1 / decode_rate`" in backends


def test_a_chunk_at_each_arrival_pauses_as_streaming_every_token_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The simulated server streams a chunk at the first token after each arrival and at
    # least every CHUNK_SECONDS.  With true lengths no answer runs past its prediction, so the
    # running answer's rank only changes when a request arrives: every pause comes when it
    # would if every token were streamed, and each request starts and ends at the same times.
    from sjfsched._bench import _profiles

    profile = Profile("test", prefill_rate=200.0, decode_rate=10.0)
    rng = random.Random(3)
    batch = [TraceItem(f"request {i}", rng.choice([3, 8, 20, 45, 90]), rng.randint(1, 60)) for i in range(60)]
    arrivals = poisson_arrivals(len(batch), 0.9 / 3.5, rng)

    def timeline() -> list[tuple[float, float, int]]:
        [(done, _)] = simulate(policy_named("oracle"), profile, [(batch, arrivals)], CONTEXT)
        return [(c.started - c.submitted, c.finished - c.submitted, c.preemptions) for c in done]

    chunked = timeline()
    monkeypatch.setattr(_profiles, "CHUNK_SECONDS", 1e-9)  # a chunk every token
    every_token = timeline()
    assert sum(p for *_, p in every_token) >= 5  # answers were paused
    assert [p for *_, p in chunked] == [p for *_, p in every_token]
    for (s1, f1, _), (s2, f2, _) in zip(chunked, every_token, strict=True):
        assert s1 == pytest.approx(s2, abs=1e-6)
        assert f1 == pytest.approx(f2, abs=1e-6)
