"""``sjfsched serve``: an Ollama- and OpenAI-compatible proxy that schedules shortest-job-first.

Clients keep their code and change only the port: the proxy exposes the API
of the server behind it (Ollama's ``/api/*`` or an OpenAI-compatible
``/v1/*``), holds generation requests in a :class:`~sjfsched.Scheduler` and
sends them on shortest predicted first, streaming the answers back as they
are produced.  Everything else passes through unchanged.  Needs the ``proxy``
extra: ``pip install "sjfsched[proxy]"``.

- :class:`ProxySettings`: what the command line and ``SJFSCHED_*`` variables set.
- :class:`ProxyApp`: the ASGI application (for running it on your own server).
- :class:`ProxyServer` / :func:`make_server`: uvicorn with a graceful drain.
"""

try:
    from ._app import ProxyApp as ProxyApp
    from ._server import ProxyServer as ProxyServer
    from ._server import make_server as make_server
    from ._settings import ProxySettings as ProxySettings
except ModuleNotFoundError as exc:  # uvicorn or httptools: the proxy extra
    if exc.name not in ("uvicorn", "httptools"):
        raise
    raise ImportError(
        f"sjfsched.proxy needs the proxy extra ({exc.name} is missing): pip install 'sjfsched[proxy]'",
        name=exc.name,
    ) from exc

__all__ = ["ProxyApp", "ProxyServer", "ProxySettings", "make_server"]
