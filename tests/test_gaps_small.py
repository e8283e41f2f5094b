"""Found by a mutation audit.

policy names, word vectors, corpus records, backend checks, bind, demo percentiles."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from sjfsched._bench._policies import policy_named
from sjfsched._demo import _percentile
from sjfsched._service import check_backend
from sjfsched.predictors._corpus import parse_record, prompt_id_of, source_of_file
from sjfsched.predictors._vectors import load_word_vectors
from sjfsched.proxy._server import bind


def test_inf_seconds_mean_no_bound_in_a_policy_name() -> None:
    assert policy_named("sjfsched@max_wait=inf").max_wait is None
    assert policy_named("sjfsched@cap=INF").cap is None


def test_glove_keeps_a_words_first_vector_only_and_lowercase_words(tmp_path: Path) -> None:
    path = tmp_path / "v.txt"
    path.write_text("poem 1 2\nÉlan 5 6\npoem 3 4\nsonnet 7 8\n", encoding="utf-8")
    vectors = load_word_vectors(path)
    assert vectors.words == ["poem", "sonnet"]
    assert vectors.matrix.tolist() == [[1.0, 2.0], [7.0, 8.0]]


def test_wink_keeps_at_most_limit_words(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    data = {"dimensions": 2, "words": ["a", "b", "c"], "vectors": {w: [1.0, 2.0] for w in "abc"}}
    path.write_text(json.dumps(data), encoding="utf-8")
    assert load_word_vectors(path, limit=2).words == ["a", "b"]


def test_a_record_with_an_empty_prompt_id_gets_the_prompts_hash(tmp_path: Path) -> None:
    record = parse_record({"prompt": " hi ", "output_tokens": 3, "prompt_id": ""}, tmp_path / "x.jsonl", 1)
    assert record.prompt_id == prompt_id_of("hi")


def test_a_boolean_output_tokens_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'output_tokens' must be a finite number, got True"):
        parse_record({"prompt": "hi", "output_tokens": True}, tmp_path / "x.jsonl", 1)


def test_a_file_named_only_by_a_suffix_keeps_its_name_as_source() -> None:
    assert source_of_file(Path(".jsonl")) == ".jsonl"
    assert source_of_file(Path(".jsonl.gz")) == ".jsonl"
    assert source_of_file(Path("logs.app1.jsonl.gz")) == "logs.app1"


class _HalfStatic:
    @staticmethod
    async def stream(request: object) -> None:
        return None

    async def aclose(self) -> None:
        return None


def test_a_class_with_one_instance_method_is_refused_as_a_backend() -> None:
    with pytest.raises(TypeError, match="pass an instance: _HalfStatic"):
        check_backend(_HalfStatic)


def test_bind_listens_on_ipv6_for_an_ipv6_host() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with bind("::1", 0) as sock:
        assert sock.family == socket.AF_INET6


def test_demo_percentiles_interpolate() -> None:
    assert _percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert _percentile([4.0, 1.0], 0.95) == pytest.approx(3.85)
