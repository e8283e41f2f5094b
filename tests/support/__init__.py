"""Real components for tests: model files and loopback servers.

- :mod:`.models`: the tiny random-weight GGUF model (written once per test
  session) and the shared ``stories260K.gguf`` when present.
- :mod:`.ollama_server`: a server implementing Ollama's documented HTTP API
  over real llama.cpp generation.
- :mod:`.openai_server`: ``llama_cpp.server`` started in a subprocess.

Everything listens on 127.0.0.1 only.
"""
