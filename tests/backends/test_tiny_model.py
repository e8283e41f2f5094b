"""sjfsched.testing.write_tiny_llama writes a model llama.cpp really runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import pytest
from llama_cpp import Llama

from sjfsched.testing import TINY_CHAT_TEMPLATE, VOCAB_SIZE, write_tiny_llama
from tests.support.models import STORIES_SKIP_REASON, stories_model


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = write_tiny_llama(tmp_path / "a.gguf", seed=3)
    b = write_tiny_llama(tmp_path / "b.gguf", seed=3)
    c = write_tiny_llama(tmp_path / "c.gguf", seed=4)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_metadata_describes_the_requested_shape(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf", n_layer=3, n_embd=96, n_head=6, n_head_kv=2, n_ff=160)
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tok")}
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == 3
    assert fields["llama.embedding_length"] == 96
    assert fields["llama.attention.head_count"] == 6
    assert fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.feed_forward_length"] == 160
    assert reader.fields["tokenizer.chat_template"].contents() == TINY_CHAT_TEMPLATE
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    assert shapes["token_embd.weight"] == (96, VOCAB_SIZE)
    assert shapes["blk.2.attn_k.weight"] == (96, 2 * 96 // 6)
    assert shapes["blk.0.ffn_down.weight"] == (160, 96)


def test_llama_cpp_loads_tokenizes_and_generates_to_length(tiny_llm: Llama) -> None:
    text = "Hello, world! 42 ~"
    tokens = tiny_llm.tokenize(text.encode())
    assert tokens[0] == tiny_llm.token_bos()
    assert len(tokens) == 1 + len(text)  # one token per character
    assert tiny_llm.detokenize(tokens[1:]).decode() == text
    # Text outside the printable ASCII range falls back to byte tokens.
    assert tiny_llm.detokenize(tiny_llm.tokenize("é\n".encode(), add_bos=False)).decode() == "é\n"
    for temperature in (0.0, 0.8, 1.5):
        out: Any = tiny_llm.create_completion("Once", max_tokens=64, temperature=temperature, seed=1)
        assert out["choices"][0]["finish_reason"] == "length"  # EOS is never sampled
        assert out["usage"]["completion_tokens"] == 64
        assert out["choices"][0]["text"].isprintable()


def test_chat_template_is_used(tiny_llm: Llama) -> None:
    out: Any = tiny_llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=3)
    # "user: hi\nassistant:" is 19 characters, plus BOS.
    assert out["usage"]["prompt_tokens"] == 20
    assert out["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_layer": 0}, "n_layer"),
        ({"n_embd": 65, "n_head": 4}, "multiple of n_head"),
        ({"n_head": 4, "n_head_kv": 3}, "n_head_kv"),
        ({"n_embd": 12, "n_head": 4}, "even"),
        ({"dtype": "int4"}, "dtype"),
        ({"dtype": "q8_0", "n_embd": 48, "n_head": 4}, "multiples of 32"),
        ({"logit_scale": 0.0}, "logit_scale"),
        ({"n_ctx": 2**32}, "n_ctx must be an int from 1 to 2\\*\\*32 - 1"),
        ({"seed": -1}, "seed must be an int >= 0, got -1"),
        ({"seed": "7"}, "seed must be an int >= 0, got '7'"),
        ({"n_head_kv": "2"}, "n_head_kv must be an int >= 1 or None, got '2'"),
    ],
)
def test_bad_shapes_are_refused_by_name(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_tiny_llama(tmp_path / "x.gguf", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_smaller_weight_types_load_and_run(tmp_path: Path, dtype: str) -> None:
    path = write_tiny_llama(tmp_path / f"{dtype}.gguf", n_embd=64, n_ff=128, dtype=dtype)  # type: ignore[arg-type]
    llm = Llama(str(path), n_ctx=128, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        out: Any = llm.create_completion("abc", max_tokens=8)
        assert out["usage"]["completion_tokens"] == 8
    finally:
        llm.close()


def test_the_shared_stories_model_loads_when_present() -> None:
    path = stories_model()
    if path is None:
        pytest.skip(STORIES_SKIP_REASON)
    llm = Llama(str(path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        out: Any = llm.create_completion("Once upon a time", max_tokens=16, temperature=0)
        assert out["usage"]["completion_tokens"] == 16
        assert "Once" not in out["choices"][0]["text"]  # it continues, it does not echo
    finally:
        llm.close()


def test_command_line_writes_and_measures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sjfsched.testing.__main__ import main

    assert main(["write", str(tmp_path / "m.gguf"), "--preset", "tiny", "--n-layer", "1"]) == 0
    assert "m.gguf" in capsys.readouterr().out
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["llama.block_count"].contents() == 1
    assert main(["speed", "--preset", "tiny", "--tokens", "8", "--repeat", "1"]) == 0
    machine, *table = capsys.readouterr().out.splitlines()
    assert machine.startswith("machine: ") and " CPUs, " in machine and "GiB" in machine
    assert table[0].split()[:3] == ["preset", "size", "MB"]
    name, size, per_token, cpu, per_prompt_token = table[1].split()
    assert float(size) > 0
    assert name == "tiny"
    assert float(per_token) > 0 and float(cpu) > 0 and float(per_prompt_token) > 0


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["write", "{tmp}/m.gguf", "--n-head", "3"], 1, "n_embd (64) must be a multiple of n_head (3)"),
        (["write", "{tmp}/no/such/dir/m.gguf"], 1, "No such file or directory"),
        (["speed", "--preset", "tiny", "--repeat", "0"], 2, "--repeat must be at least 1"),
        (["speed", "--preset", "tiny", "--tokens", "1"], 2, "--tokens must be at least 2"),
        (["write", "{tmp}/m.gguf", "--n-ctx", "5000000000"], 1, "n_ctx must be an int from 1 to 2**32 - 1"),
        # a numpy MemoryError traceback; a segfault in llama.cpp; silently fewer tokens than asked
        (["write", "{tmp}/m.gguf", "--n-embd", "2147483644", "--n-head", "2"], 1, "not enough memory for it"),
        (["speed", "--threads", "100000"], 2, "--threads must be at most 1024"),
        (["speed", "--threads-batch", "100000"], 2, "--threads-batch must be at most 1024"),
        (["speed", "--tokens", "1000"], 2, "--tokens must be at most 400"),
    ],
)
def test_command_line_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    from sjfsched.testing.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert exited.value.code == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "m.gguf").exists()  # nothing half-written left behind
