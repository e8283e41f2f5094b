"""Fixtures for the backend tests: real models and loopback servers, one per session."""

from tests.support.fixtures import ollama, openai_url, stop_shared_servers, tiny_llm, tiny_path

__all__ = ["ollama", "openai_url", "stop_shared_servers", "tiny_llm", "tiny_path"]
