"""Write a tiny random-weight Llama model in GGUF, for tests and benchmarks.

The model is a real ``llama`` architecture that llama.cpp (and so
llama-cpp-python, its server, or anything else built on llama.cpp) loads and
runs; only its weights are random.  It exists so that tests can exercise real
generation, streaming, token counting and cancellation without downloading a
model.

Its vocabulary is a SentencePiece-style (``tokenizer.ggml.model = "llama"``)
byte vocabulary:

- ``0`` ``<unk>``, ``1`` ``<s>`` (BOS), ``2`` ``</s>`` (EOS);
- ``3 ... 258``: the 256 byte tokens ``<0x00> ... <0xFF>`` (byte fallback, so
  any text can be tokenized);
- ``▁`` (the SentencePiece space) and the 94 printable ASCII characters
  ``!`` to ``~``, one token each.

The output layer gives a logit of exactly zero to the special and byte tokens
and a large random logit to the printable ones, so with the default samplers
(top-k 40, min-p 0.05) the model only ever writes printable ASCII and never
samples EOS: generation always runs to ``max_tokens``, which is what tests of
token accounting need.  The metadata carries a small plain-text chat template
(BOS, ``role: content`` lines, then ``assistant:``), so chat completions work too.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["PRESETS", "TINY_CHAT_TEMPLATE", "VOCAB_SIZE", "write_tiny_llama"]

_SPECIAL = ["<unk>", "<s>", "</s>"]
_BYTES = [f"<0x{b:02X}>" for b in range(256)]
_PRINTABLE = ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]
_TOKENS = _SPECIAL + _BYTES + _PRINTABLE

#: Tokens in the tiny model's vocabulary.
VOCAB_SIZE = len(_TOKENS)

#: The chat template written into the model's metadata (Jinja, as in Hugging Face).
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

# gguf TokenType values (gguf.TokenType): NORMAL=1, UNKNOWN=2, CONTROL=3, BYTE=6.
_TOKEN_TYPES = [2, 3, 3] + [6] * 256 + [1] * len(_PRINTABLE)

Dtype = Literal["f32", "f16", "q8_0"]

#: Named sizes (keyword arguments of :func:`write_tiny_llama`), smallest first.
#: ``python -m sjfsched.testing speed`` measures what a token costs with each.
PRESETS: dict[str, dict[str, Any]] = {
    # The test model: a fraction of a millisecond per token.
    "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_ff": 128},
    # About a millisecond per token on one core.
    "small": {"n_layer": 4, "n_embd": 256, "n_head": 8, "n_ff": 768},
    # About 10 ms per token on one idle core (40 on a busy one): a slow local model, for benchmarks.
    "medium": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_ff": 2048, "dtype": "f16"},
}


def write_tiny_llama(
    path: str | os.PathLike[str],
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int | None = None,
    n_ff: int = 128,
    n_ctx: int = 512,
    seed: int = 0,
    dtype: Dtype = "f32",
    logit_scale: float = 12.0,
) -> Path:
    """Write a random-weight Llama model to ``path`` (a ``.gguf`` file) and return the path.

    ``n_layer`` blocks of width ``n_embd`` with ``n_head`` attention heads
    (``n_head_kv`` key/value heads, default ``n_head``; ``n_embd`` must divide
    by ``n_head``), a feed-forward width of ``n_ff`` and a training context of
    ``n_ctx`` tokens.  The same ``seed`` gives the same file, byte for byte.

    ``dtype`` is the storage type of the weight matrices: ``"f32"``,
    ``"f16"`` or ``"q8_0"`` (norms stay f32).  A bigger model costs more per
    token; the defaults give a model of about 0.5 MB that generates a token
    in a fraction of a millisecond on one CPU core.  :data:`PRESETS` holds
    bigger shapes (under 1 ms and about 10 ms per token on an idle core); ``python -m
    sjfsched.testing speed`` measures them on your machine.

    ``logit_scale`` is the standard deviation of the logits of the printable
    tokens; the special and byte tokens always get zero, so a large scale
    keeps them (and EOS) out of every sample.

    Needs the ``gguf`` package (``pip install sjfsched[llama]``).
    """
    try:
        import gguf  # optional dependency: only this helper needs it
    except ImportError as exc:
        if exc.name not in (None, "gguf"):  # gguf is there and fails (0.10 without sentencepiece)
            raise ImportError(
                f"write_tiny_llama could not import the gguf package ({exc}): "
                "pip install --upgrade 'sjfsched[llama]'",
                name="gguf",
            ) from exc
        raise ImportError(
            "write_tiny_llama needs the gguf package: pip install 'sjfsched[llama]'", name="gguf"
        ) from exc

    for name, value in (
        ("n_layer", n_layer),
        ("n_embd", n_embd),
        ("n_head", n_head),
        ("n_ff", n_ff),
        ("n_ctx", n_ctx),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**32:
            raise ValueError(
                f"{name} must be an int from 1 to 2**32 - 1 (GGUF stores a uint32), got {value!r}"
            )
    kv_heads = n_head if n_head_kv is None else n_head_kv
    if isinstance(kv_heads, bool) or not isinstance(kv_heads, int) or kv_heads < 1:
        raise ValueError(f"n_head_kv must be an int >= 1 or None, got {n_head_kv!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    if n_head % kv_heads:
        raise ValueError(f"n_head ({n_head}) must be a multiple of n_head_kv ({kv_heads})")
    head_dim = n_embd // n_head
    if head_dim % 2:
        raise ValueError(f"the head size n_embd / n_head must be even for RoPE, got {head_dim}")
    if dtype not in ("f32", "f16", "q8_0"):
        raise ValueError(f"dtype must be 'f32', 'f16' or 'q8_0', got {dtype!r}")
    if dtype == "q8_0" and (n_embd % 32 or n_ff % 32):
        raise ValueError("dtype 'q8_0' needs n_embd and n_ff to be multiples of 32")
    if not (math.isfinite(logit_scale) and logit_scale > 0):
        raise ValueError(f"logit_scale must be a positive number, got {logit_scale!r}")

    out = Path(path)
    rng = np.random.default_rng(seed)
    qtype = {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[dtype]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16}.get(
        dtype, gguf.LlamaFileType.MOSTLY_Q8_0
    )

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("sjfsched tiny random llama")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB_SIZE)
    writer.add_file_type(int(file_type))

    writer.add_tokenizer_model("llama")
    writer.add_token_list(_TOKENS)
    # SentencePiece scores: higher merges first.  Only single characters exist,
    # so they matter little; give the printable ones a uniform score.
    writer.add_token_scores([0.0] * len(_SPECIAL) + [0.0] * 256 + [-1.0] * len(_PRINTABLE))
    writer.add_token_types(_TOKEN_TYPES)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(TINY_CHAT_TEMPLATE)

    def matrix(rows: int, cols: int) -> np.ndarray:
        # (rows, cols) in numpy is ggml's [cols, rows]: cols is the input size.
        w = rng.standard_normal((rows, cols), dtype=np.float32) / np.float32(math.sqrt(cols))
        return gguf.quants.quantize(w, qtype) if dtype != "f32" else w

    def add(name: str, value: np.ndarray) -> None:
        if value.dtype == np.uint8:  # quantized blocks: give the logical shape
            writer.add_tensor(name, value, raw_dtype=qtype)
        else:
            writer.add_tensor(name, value)

    embd = rng.standard_normal((VOCAB_SIZE, n_embd), dtype=np.float32)
    add("token_embd.weight", embd)
    kv_dim = kv_heads * head_dim
    for i in range(n_layer):
        add(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        add(f"blk.{i}.attn_q.weight", matrix(n_embd, n_embd))
        add(f"blk.{i}.attn_k.weight", matrix(kv_dim, n_embd))
        add(f"blk.{i}.attn_v.weight", matrix(kv_dim, n_embd))
        add(f"blk.{i}.attn_output.weight", matrix(n_embd, n_embd))
        add(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        add(f"blk.{i}.ffn_gate.weight", matrix(n_ff, n_embd))
        add(f"blk.{i}.ffn_up.weight", matrix(n_ff, n_embd))
        add(f"blk.{i}.ffn_down.weight", matrix(n_embd, n_ff))
    add("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    # The final hidden state is RMS-normalised (each component ~1), so a row of
    # N(0, (scale / sqrt(n_embd))^2) gives logits of standard deviation ~scale.
    head = rng.standard_normal((VOCAB_SIZE, n_embd), dtype=np.float32) * np.float32(
        logit_scale / math.sqrt(n_embd)
    )
    head[: len(_SPECIAL) + 256] = 0.0  # special and byte tokens: logit exactly 0
    add("output.weight", head)

    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        out.unlink(missing_ok=True)  # no half-written model left behind
        raise
    writer.close()
    return out
