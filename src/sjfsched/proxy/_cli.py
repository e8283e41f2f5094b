"""``sjfsched serve``: the proxy on the command line.

Every flag has an ``SJFSCHED_*`` environment variable; a flag wins over its
variable, a variable over the default.  The settings in force, and where each
came from, are printed at start-up.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .._errors import PredictorError
from .._version import __version__
from ._app import ProxyApp
from ._predictor import make_predictor
from ._server import bind, make_server
from ._settings import OPTIONS, ProxySettings, resolve
from ._upstream import UpstreamUnavailable, detect_api_sync

__all__ = ["configure", "run"]


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__.lstrip("_")
    return convert


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "An Ollama- and OpenAI-compatible proxy that serves generation requests shortest-predicted "
        "first. Point clients at it instead of the upstream server."
    )
    parser.epilog = "Each flag can also be set by its environment variable (shown in brackets); flags win."
    for option in OPTIONS:
        help_text = f"{option.help} [{option.env}; default {option.shown_default}]"
        if option.is_flag:
            parser.add_argument(
                option.flag, dest=option.name, action="store_true", default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(
                option.flag,
                dest=option.name,
                metavar=option.metavar,
                type=_argument_type(option.parse),
                default=argparse.SUPPRESS,  # absent, not None: "--cap none" is a value that wins
                help=help_text,
                action=_OneUpstream if option.name == "upstream" else "store",
            )


class _OneUpstream(argparse.Action):
    """``--upstream`` given twice is refused: the proxy forwards to one server, not the last named."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        if hasattr(namespace, self.dest):
            parser.error(
                f"{option_string} given twice: the proxy forwards to one upstream server (to spread "
                "requests over several, see BackendPool in docs/backends/pool.md)"
            )
        setattr(namespace, self.dest, values)


def _print_settings(settings: ProxySettings, sources: dict[str, tuple[Any, str]]) -> None:
    print(f"sjfsched serve {__version__}", flush=True)
    for option in OPTIONS:
        if option.name == "listen":  # as --listen takes it: an IPv6 address in brackets
            host = f"[{settings.host}]" if ":" in settings.host else settings.host
            value: Any = f"{host}:{settings.port}"
        else:
            value = getattr(settings, option.name)
        if value is None or value == ():
            value = "none"
        elif isinstance(value, tuple):  # host names
            value = ",".join(value)
        elif value is True or value is False:
            value = "on" if value else "off"
        source = sources.get(option.name, (None, "default"))[1]
        where = {"flag": option.flag, "env": option.env}.get(source, source)
        print(f"  {option.flag[2:]:<18} {value!s:<32} ({where})", flush=True)


def settings_of(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[ProxySettings, dict[str, tuple[Any, str]]]:
    """The settings from parsed flags (only those given) and ``environ``; see :func:`resolve`."""
    return resolve(
        {option.name: getattr(args, option.name) for option in OPTIONS if hasattr(args, option.name)}, environ
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings, sources = settings_of(args, os.environ)
    except ValueError as exc:
        print(f"sjfsched serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s:     %(message)s")
    try:  # before listening: a state file that cannot be read stops the proxy here, as a bad value
        predictor = make_predictor(settings.predictor, settings.predictor_state)
    except PredictorError as exc:
        source = sources["predictor_state"][1]
        where = {"flag": "--predictor-state", "env": "SJFSCHED_PREDICTOR_STATE"}.get(source, "the predictor")
        print(f"sjfsched serve: {where}: {exc}", file=sys.stderr)
        return 2
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        print(f"sjfsched serve: cannot listen on {host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    with sock:
        if settings.upstream_api == "auto":
            try:
                api = detect_api_sync(settings.upstream, settings.connect_timeout, settings.read_timeout)
            except UpstreamUnavailable as exc:
                print(f"sjfsched serve: {exc}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print("sjfsched serve: interrupted while asking the upstream what it is", file=sys.stderr)
                return 130
            settings = attrs.evolve(settings, upstream_api=api)
            sources["upstream_api"] = (api, "detected")
        host, port = sock.getsockname()[:2]
        settings = attrs.evolve(settings, port=port)
        _print_settings(settings, sources)
        app = ProxyApp(settings, predictor=predictor)
        server = make_server(app)
        url_host = f"[{host}]" if ":" in host else host
        # uvicorn prints nothing about the address when given a socket; say it here.
        print(f"sjfsched serve: listening on http://{url_host}:{port}", flush=True)
        try:
            server.run(sockets=[sock])
        except SystemExit:  # uvicorn exits (status 3) when start-up fails; it has logged why
            if server.started:
                raise
            return 1
        except KeyboardInterrupt:  # a second Ctrl-C: uvicorn stopped at once and raises it after
            print("sjfsched serve: stopped at once (a second signal)", file=sys.stderr)
            return 130
        if not server.started:
            return 1
    return 0
