"""Helpers for testing code that uses sjfsched with a real model.

- :func:`write_tiny_llama`: write a tiny random-weight Llama GGUF file that
  llama.cpp loads and runs (needs the ``gguf`` package: ``sjfsched[llama]``);
  :data:`PRESETS` are named sizes for it.
- ``python -m sjfsched.testing write|speed``: write one from the command line,
  or measure what a token costs with each preset.
"""

from ._tiny_llama import PRESETS as PRESETS
from ._tiny_llama import TINY_CHAT_TEMPLATE as TINY_CHAT_TEMPLATE
from ._tiny_llama import VOCAB_SIZE as VOCAB_SIZE
from ._tiny_llama import write_tiny_llama as write_tiny_llama

__all__ = ["PRESETS", "TINY_CHAT_TEMPLATE", "VOCAB_SIZE", "write_tiny_llama"]
