"""``--predictor-state``: what the default predictor learnt survives a restart of the proxy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from sjfsched.predictors import LexicalPredictor
from sjfsched.proxy._settings import ProxySettings, resolve
from tests.support.ollama_server import OllamaServer

from .harness import running_proxy

pytestmark = pytest.mark.slow

MODEL = "tiny"


def _ask(url: str, prompts: list[str], num_predict: int = 300) -> None:
    """Ask each prompt; a cap above the predictions (~180-240 tokens): capped below, none is learnt from."""
    with httpx.Client(timeout=60) as client:
        for prompt in prompts:
            reply = client.post(
                f"{url}/api/generate",
                json={
                    "model": MODEL,
                    "prompt": prompt,
                    "stream": False,
                    "options": {"num_predict": num_predict},
                },
            )
            assert reply.status_code == 200, reply.text


def test_predictor_state_is_saved_at_shutdown_and_loaded_at_start(
    ollama: OllamaServer, tmp_path: Path
) -> None:
    state = tmp_path / "predictor.json"
    with running_proxy(ollama.url, predictor_state=str(state)) as proxy:
        _ask(proxy.url, ["Hi", "Name a colour.", "Say yes."])
        assert not state.exists()  # saved every 100 completions, and at shutdown
    ollama.wait_idle()
    saved = json.loads(state.read_text())
    assert saved["state"]["n"] == 3 and saved["correction"]["observations"] == 3
    with running_proxy(ollama.url, predictor_state=str(state)) as proxy:
        learner = proxy.app._learner
        assert isinstance(learner, LexicalPredictor)
        assert learner.calibration.observations == 3
        assert learner.correction is not None and learner.correction.observations == 3
        _ask(proxy.url, ["Hello again"])
    ollama.wait_idle()
    assert json.loads(state.read_text())["correction"]["observations"] == 4


def test_a_bad_state_file_stops_the_proxy_at_start(ollama: OllamaServer, tmp_path: Path) -> None:
    state = tmp_path / "predictor.json"
    state.write_text("{not json")
    with (
        pytest.raises(RuntimeError, match=r"did not start"),
        running_proxy(ollama.url, predictor_state=str(state)),
    ):
        pass


def test_predictor_state_settings(tmp_path: Path) -> None:
    path = str(tmp_path / "s.json")
    assert resolve({"upstream": "http://h:1"}, {"SJFSCHED_PREDICTOR_STATE": path})[0].predictor_state == path
    assert resolve({"upstream": "http://h:1"}, {})[0].predictor_state is None
    with pytest.raises(ValueError, match=re.escape("predictor_state is for the default predictor")):
        ProxySettings(upstream="http://h:1", predictor="heuristic", predictor_state=path)
    with pytest.raises(ValueError, match=r"its directory .* does not exist"):
        ProxySettings(upstream="http://h:1", predictor_state=str(tmp_path / "no" / "s.json"))


def test_a_state_that_cannot_be_saved_at_shutdown_is_logged(
    ollama: OllamaServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The folder gone while the proxy ran: the failed save is logged and shutdown goes on.

    The predictor's save raises PredictorError now, not OSError, which went
    past the proxy's handler and out of its shutdown.
    """
    folder = tmp_path / "states"
    folder.mkdir()
    state = folder / "predictor.json"
    with running_proxy(ollama.url, predictor_state=str(state)) as proxy:
        _ask(proxy.url, ["Hi"])
        folder.rmdir()
        proxy.app.save_predictor_state()  # what shutdown does
    assert "could not save the predictor's state to" in caplog.text
    assert "cannot save calibration (No such file or directory)" in caplog.text
