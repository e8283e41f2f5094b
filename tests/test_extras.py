"""Without an optional extra, what needs it says so at once, in one line naming the extra
to install, before doing any work; an option named as another server names it says what
to use instead. Found by a newcomer's walkthrough in a fresh venv."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from sjfsched import BackendError, Request
from sjfsched._cli import TRAIN_MODULES, main
from tests.support.records import write_records

ROOT = Path(__file__).resolve().parents[1]

_records = write_records


def _exit_message(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a command ends with (as the exit message or on stderr)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    code = info.value.code
    message = code if isinstance(code, str) else capsys.readouterr().err.strip()
    assert code != 0
    assert "\n" not in message and "Traceback" not in message, message
    return message


@pytest.mark.parametrize(("features", "missing"), [("lexical", "sklearn"), ("clairvoyant", "xgboost")])
def test_train_names_its_extra_before_loading_any_data(
    features: str,
    missing: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    argv = ["train", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "m.onnx"), "--features", features]
    # The data is not even looked at: a missing file is not what it reports.
    assert _exit_message(argv, capsys) == (
        f"sjfsched train: not available (No module named {missing!r}); "
        "it needs its extra: pip install 'sjfsched[train]'"
    )


def test_bench_names_its_extra_before_training_the_unseen_predictor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    extra = "(No module named 'sklearn'); it needs its extra: pip install 'sjfsched[bench]'"
    data = ["--data", str(tmp_path), "--no-progress"]  # no corpora in it: the check comes first
    sim = [
        "bench",
        "sim",
        *data,
        "--traces",
        "castillo-llama1b",
        "--profiles",
        "gpu",
        "--scenarios",
        "burst10",
    ]
    assert _exit_message([*sim, "--policies", "fcfs,unseen"], capsys) == (
        f"sjfsched bench sim: cannot train the unseen predictor {extra}, or leave unseen out of --policies"
    )
    assert _exit_message([*sim], capsys).startswith("sjfsched bench sim: cannot train the unseen predictor")
    assert _exit_message(["bench", "all", *data], capsys) == (
        f"sjfsched bench all: cannot train the unseen predictor {extra}"
    )
    ranking = ["bench", "ranking", "--data", str(tmp_path), "--predictors", "sjfsched,unseen"]
    assert _exit_message(ranking, capsys) == (
        f"sjfsched bench ranking: cannot train the unseen predictor {extra}, "
        "or leave unseen out of --predictors"
    )


def test_bench_sim_on_a_log_runs_without_the_training_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    log = _records(tmp_path / "requests.jsonl", 12)
    argv = ["bench", "sim", "--traces", str(log), "--profiles", "gpu", "--scenarios", "burst10"]
    argv += ["--policies", "fcfs,sjfsched,unseen", "--repetitions", "2", "--no-progress"]
    assert main(argv) == 0  # unseen is left out on a file (it is trained on built-in traces only)
    assert "unseen left out" in capsys.readouterr().err


def test_the_bench_extra_brings_what_training_the_unseen_predictor_imports() -> None:
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    bench = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in extras["bench"]}
    distribution = {"sklearn": "scikit-learn", "scipy": "scipy", "onnx": "onnx"}
    assert {distribution[m] for m in TRAIN_MODULES["lexical"]} <= bench


def test_writing_a_tiny_model_without_gguf_names_the_llama_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sjfsched.testing import write_tiny_llama
    from sjfsched.testing.__main__ import main as testing_main

    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(
        ImportError, match=r"^write_tiny_llama needs the gguf package: pip install 'sjfsched\[llama\]'$"
    ):
        write_tiny_llama(tmp_path / "tiny.gguf")
    with pytest.raises(SystemExit) as info:
        testing_main(["write", str(tmp_path / "tiny.gguf")])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "python -m sjfsched.testing write: write_tiny_llama needs the gguf package: "
        "pip install 'sjfsched[llama]'\n"
    )
    assert not (tmp_path / "tiny.gguf").exists()


def test_a_gguf_that_fails_to_import_is_not_said_to_be_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gguf 0.10 imports sentencepiece without declaring it: "needs the gguf package" was wrong.
    from sjfsched.testing import write_tiny_llama

    broken = tmp_path / "site" / "gguf"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("import sentencepiece_not_installed_here\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "gguf", raising=False)
    with pytest.raises(ImportError, match=r"^write_tiny_llama could not import the gguf package \(No module"):
        write_tiny_llama(tmp_path / "tiny.gguf")
    assert not (tmp_path / "tiny.gguf").exists()


def test_measuring_tokens_without_llama_cpp_names_the_llama_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("gguf")
    from sjfsched.testing.__main__ import main as testing_main

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(SystemExit) as info:
        testing_main(["speed", "--preset", "tiny", "--repeat", "1", "--tokens", "2"])
    assert info.value.code == 2
    assert capsys.readouterr().err.endswith(
        "python -m sjfsched.testing speed: measuring needs llama-cpp-python: pip install 'sjfsched[llama]'\n"
    )


@pytest.mark.parametrize(
    ("construct", "message"),
    [
        ('OllamaBackend("llama3.2")', "OllamaBackend needs httpx: pip install 'sjfsched[ollama]'"),
        (
            'OpenAIBackend("http://127.0.0.1:8080")',
            "OpenAIBackend needs httpx: pip install 'sjfsched[openai]'",
        ),
    ],
)
def test_an_http_backend_without_httpx_fails_when_made_naming_its_extra(construct: str, message: str) -> None:
    # It used to be made, and then every request failed with a BackendError in an ExceptionGroup.
    setup = "import sjfsched\nfrom sjfsched.backends import OllamaBackend, OpenAIBackend\n"
    assert _import_error_without("httpx", setup, construct) == f"ImportError: {message}"


@pytest.mark.parametrize("missing", ["httptools", "uvicorn"])
def test_the_proxy_without_its_extra_names_it(missing: str) -> None:
    # It raised a bare ModuleNotFoundError for httptools.
    needs = f"sjfsched.proxy needs the proxy extra ({missing} is missing)"
    assert _import_error_without(missing, "", "import sjfsched.proxy") == (
        f"ImportError: {needs}: pip install 'sjfsched[proxy]'"
    )


def _import_error_without(module: str, setup: str, statement: str) -> str:
    """What ``statement`` raises (``Type: message``; ``made`` if nothing) in a fresh interpreter
    where ``module`` cannot be imported, after ``setup``."""
    script = (
        f"import sys\nsys.modules[{module!r}] = None  # as if not installed\n{setup}"
        f"try:\n    {statement}\nexcept ImportError as exc:\n    print(f'{{type(exc).__name__}}: {{exc}}')\n"
        "else:\n    print('made')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.rstrip("\n")


def test_the_default_predictor_says_why_it_fell_back_even_for_a_blank_error(tmp_path: Path) -> None:
    # onnxruntime built for numpy 1 under numpy 2 raises an ImportError with no message: "()".
    (tmp_path / "onnxruntime.py").write_text("raise ImportError()\n")
    script = (
        "import logging, sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format='%(message)s')\n"
        "from sjfsched.predictors import default_predictor\n"
        "print(type(default_predictor()).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "the bundled LexicalPredictor could not be loaded (ImportError); falling back" in done.stdout
    assert done.stdout.endswith("HeuristicPredictor\n")


class _SignatureOnlyLlama:
    """Enough of a ``llama_cpp.Llama`` for LlamaCppBackend to read which options it takes."""

    def create_completion(self, prompt: str, max_tokens: int | None = 16, temperature: float = 0.8) -> None:
        raise AssertionError("a refused option must fail before generating")

    def create_chat_completion(self, messages: object, max_tokens: int | None = None) -> None:
        raise AssertionError("a refused option must fail before generating")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"num_predict": None},
            "llama_cpp.Llama.create_completion takes no option(s) 'num_predict' "
            "(num_predict: use Request.max_tokens)",
        ),
        (
            {"num_ctx": 4096, "top_q": 1},
            "llama_cpp.Llama.create_completion takes no option(s) 'num_ctx', 'top_q' "
            "(num_ctx: the context size is the Llama's own: Llama(..., n_ctx=N))",
        ),
        ({"top_q": 1}, "llama_cpp.Llama.create_completion takes no option(s) 'top_q'"),
    ],
)
def test_an_option_another_server_names_says_what_llama_cpp_takes_instead(
    options: dict[str, object], message: str
) -> None:
    # Found by a newcomer used to Ollama: options={"num_predict": 5} said nothing of max_tokens.
    from sjfsched.backends import LlamaCppBackend

    backend = LlamaCppBackend(_SignatureOnlyLlama())  # type: ignore[arg-type]

    async def first_chunk() -> None:
        async for _ in backend.stream(Request("x", options=options)):
            break

    with pytest.raises(BackendError) as info:
        anyio.run(first_chunk)
    assert str(info.value) == message


def test_serve_without_its_extra_says_what_to_install_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m == "sjfsched.proxy" or m.startswith("sjfsched.proxy.")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, without httptools
    monkeypatch.setitem(sys.modules, "httptools", None)
    message = _exit_message(["serve", "--help"], capsys)
    assert message.startswith("sjfsched serve: not available: "), message
    assert message.count("pip install 'sjfsched[proxy]'") == 1, message


def test_bench_help_needs_no_extra_and_a_bench_run_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m == "sjfsched._bench" or m.startswith("sjfsched._bench.")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, without the extra
    for missing in ("trio", "trio.testing", "tqdm", "matplotlib"):
        monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "sim", "--help"])
    assert exit_info.value.code == 0
    assert "--scenarios" in capsys.readouterr().out
    log = _records(tmp_path / "requests.jsonl", 12)
    argv = ["bench", "sim", "--traces", str(log), "--profiles", "gpu", "--scenarios", "burst10"]
    assert _exit_message(argv, capsys) == (
        "sjfsched bench: not available (No module named 'trio'); "
        "it needs its extra: pip install 'sjfsched[bench]'"
    )
