"""The proxy's settings: one frozen record, filled from flags, ``SJFSCHED_*`` variables and defaults."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, final
from urllib.parse import urlsplit

import attrs

from .._scheduler import DEFAULT_AGING, DEFAULT_CAP, DEFAULT_MAX_WAIT

__all__ = ["OPTIONS", "Option", "ProxySettings", "normalize_upstream"]

UpstreamApi = Literal["auto", "ollama", "openai"]
PredictorName = Literal["default", "heuristic", "fcfs"]

#: Ollama's own default for OLLAMA_MAX_QUEUE.
DEFAULT_MAX_QUEUE = 512
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
#: Seconds a client may keep the proxy waiting: sending its request, or reading its answer.
DEFAULT_CLIENT_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 5.0


def _finite(value: object, *, positive: bool = False) -> bool:
    """A real number (not a bool), finite, and >= 0 (or > 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value > 0 if positive else value >= 0


def _positive_int(name: str) -> Callable[[Any, Any, Any], None]:
    def check(instance: object, attribute: object, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    return check


def _number(
    name: str, *, positive: bool = False, optional: bool = False, unit: str = ""
) -> Callable[[Any, Any, Any], None]:
    """A validator: a finite number >= 0 (> 0 if ``positive``), or None if ``optional``."""
    wanted = f"a finite number{unit} {'> 0' if positive else '>= 0'}{' or none' if optional else ''}"

    def check(instance: object, attribute: object, value: object) -> None:
        if not ((optional and value is None) or _finite(value, positive=positive)):
            raise ValueError(f"{name} must be {wanted}, got {value!r}")

    return check


def _check_max_queue(instance: object, attribute: object, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"max_queue must be an integer >= 0 or none, got {value!r}")


def _check_max_wait(instance: object, attribute: object, value: Any) -> None:
    if value is not None and not (_finite(value) or value == math.inf):
        raise ValueError(f"max_wait must be a number of seconds >= 0 or none, got {value!r}")


def _check_predictor_state(instance: Any, attribute: object, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"predictor_state must be a file path or none, got {value!r}")
    if instance.predictor != "default":
        raise ValueError(
            f"predictor_state is for the default predictor (it learns); predictor is {instance.predictor!r}"
        )
    parent = Path(value).expanduser().resolve().parent
    if not parent.is_dir():
        raise ValueError(f"predictor_state {value!r}: its directory {str(parent)!r} does not exist")


def _check_host(instance: object, attribute: object, value: object) -> None:
    # An empty host makes the server listen on every interface: say 0.0.0.0 if that is meant.
    if not isinstance(value, str) or not value or value != value.strip():
        raise ValueError(
            f"listen host must be an address or host name (0.0.0.0 for every interface), got {value!r}"
        )


def _check_port(instance: object, attribute: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"listen port must be an integer from 0 to 65535, got {value!r}")


def _one_of(name: str, choices: tuple[str, ...]) -> Callable[[Any, Any, Any], None]:
    def check(instance: object, attribute: object, value: object) -> None:
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")

    return check


def normalize_upstream(url: object) -> str:
    """The upstream's root URL: ``http(s)://host:port[/prefix]``, no trailing ``/`` or ``/v1``.

    Clients' OpenAI base URLs end in ``/v1``; the proxy forwards the client's
    own path (``/v1/...``), so a pasted ``.../v1`` is dropped.
    """
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"upstream must be an http:// or https:// URL, got {url!r}")
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"upstream must name a host, got {url!r}")
    if "@" in parts.netloc:  # never echo the password back
        raise ValueError("upstream must not carry credentials (user:password@): the proxy does not send them")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError(
            f"upstream must be a root URL with an optional path, without ?query or #fragment, got {url!r}"
        )
    if not parts.path.isascii() or any(c.isspace() or not c.isprintable() for c in parts.path):
        raise ValueError(
            f"upstream path must be ASCII without spaces (percent-encode other characters), got {url!r}"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError(f"upstream has a bad port, got {url!r}") from None
    return url


def _host_names(value: object) -> tuple[str, ...]:
    """Host names for ``allowed_hosts``: a comma-separated string or a sequence, lowercased."""
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"allowed_hosts must be host names, got {value!r}")
    return tuple(n.strip().lower() for n in names if n.strip())


@final
@attrs.frozen
class ProxySettings:
    """Everything ``sjfsched serve`` can be told; every field has a default but ``upstream``.

    See ``docs/proxy.md`` for the meaning of each; the command line flag and
    environment variable of a field are listed in ``sjfsched serve --help`` and docs/proxy.md.
    """

    upstream: str = attrs.field(converter=normalize_upstream)
    host: str = attrs.field(default="127.0.0.1", validator=_check_host)
    port: int = attrs.field(default=8080, validator=_check_port)
    upstream_api: UpstreamApi = attrs.field(
        default="auto", validator=_one_of("upstream_api", ("auto", "ollama", "openai"))
    )
    concurrency: int = attrs.field(default=1, validator=_positive_int("concurrency"))
    max_queue: int | None = attrs.field(default=DEFAULT_MAX_QUEUE, validator=_check_max_queue)
    max_body_bytes: int = attrs.field(
        default=DEFAULT_MAX_BODY_BYTES, validator=_positive_int("max_body_bytes")
    )
    aging: float = attrs.field(default=DEFAULT_AGING, validator=_number("aging"))
    cap: float | None = attrs.field(
        default=DEFAULT_CAP, validator=_number("cap", positive=True, optional=True)
    )
    max_wait: float | None = attrs.field(default=DEFAULT_MAX_WAIT, validator=_check_max_wait)
    predictor: PredictorName = attrs.field(
        default="default", validator=_one_of("predictor", ("default", "heuristic", "fcfs"))
    )
    predictor_state: str | None = attrs.field(default=None, validator=_check_predictor_state)
    connect_timeout: float | None = attrs.field(
        default=DEFAULT_CONNECT_TIMEOUT,
        validator=_number("connect_timeout", positive=True, optional=True, unit=" of seconds"),
    )
    read_timeout: float | None = attrs.field(
        default=None, validator=_number("read_timeout", positive=True, optional=True, unit=" of seconds")
    )
    shutdown_timeout: float = attrs.field(
        default=DEFAULT_SHUTDOWN_TIMEOUT, validator=_number("shutdown_timeout", unit=" of seconds")
    )
    allowed_hosts: tuple[str, ...] = attrs.field(default=(), converter=_host_names)
    client_timeout: float | None = attrs.field(
        default=DEFAULT_CLIENT_TIMEOUT,
        validator=_number("client_timeout", positive=True, optional=True, unit=" of seconds"),
    )
    log_level: str = attrs.field(
        default="info", validator=_one_of("log_level", ("critical", "error", "warning", "info", "debug"))
    )
    access_log: bool = False


# ----------------------------------------------------------------- parsing


def _parse_path(text: str) -> str:
    path = text.strip()
    if not path:
        raise ValueError("expected a file path")
    return path


def _parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if math.isnan(value):
        raise ValueError(f"expected a number, got {text!r}")
    return value


def _none_or(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(text: str) -> Any:
        if text.strip().lower() in ("none", "off", "unbounded", ""):
            return None
        return parse(text)

    return parse_optional


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):  # ::1 read as ":" port 1
        raise ValueError(f"an IPv6 address goes in brackets, before the port (e.g. [::1]:8080), got {text!r}")
    host = host.strip("[]")
    if not sep or not host:  # no port, no host ("[]:8080" too)
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:8080), got {text!r}")
    return host, _parse_int(port)


def _parse_bytes(text: str) -> int:
    value = text.strip().upper()
    factor = 1
    for suffix, size in (("KIB", 1024), ("MIB", 1024**2), ("GIB", 1024**3), ("K", 1024), ("M", 1024**2)):
        if value.endswith(suffix):
            value, factor = value[: -len(suffix)], size
            break
    try:
        return int(value) * factor
    except ValueError:
        raise ValueError(f"expected a number of bytes (e.g. 10485760, 10MiB), got {text!r}") from None


def _str(text: str) -> str:
    return text.strip()


def _lower(text: str) -> str:
    return text.strip().lower()


@final
@attrs.frozen
class Option:
    """One setting as the command line and the environment spell it."""

    #: The ProxySettings field(s) it fills (``listen`` fills host and port).
    name: str
    flag: str
    env: str
    parse: Callable[[str], Any]
    metavar: str
    help: str
    #: How the default reads in --help and the start-up table.
    shown_default: str
    is_flag: bool = False  # a switch without a value (--access-log)


OPTIONS: tuple[Option, ...] = (
    Option(
        "upstream", "--upstream", "SJFSCHED_UPSTREAM", _str, "URL",
        "the Ollama or OpenAI-compatible server to put the queue in front of "
        "(e.g. http://127.0.0.1:11434)", "(required)",
    ),
    Option(
        "listen", "--listen", "SJFSCHED_LISTEN", _parse_listen, "HOST:PORT",
        "where the proxy listens (port 0: any free port)", "127.0.0.1:8080",
    ),
    Option(
        "upstream_api", "--upstream-api", "SJFSCHED_UPSTREAM_API", _lower, "auto|ollama|openai",
        "the upstream's API; auto asks GET /api/tags (Ollama), then GET /v1/models (OpenAI-compatible)",
        "auto",
    ),
    Option(
        "concurrency", "--concurrency", "SJFSCHED_CONCURRENCY", _parse_int, "N",
        "requests sent to the upstream at once: 1 for a default Ollama or llama.cpp server, "
        "N for OLLAMA_NUM_PARALLEL=N", "1",
    ),
    Option(
        "max_queue", "--max-queue", "SJFSCHED_MAX_QUEUE", _none_or(_parse_int), "N|none",
        "most requests waiting; beyond it 503 (Ollama API) or 429 (OpenAI API)", str(DEFAULT_MAX_QUEUE),
    ),
    Option(
        "max_body_bytes", "--max-body-bytes", "SJFSCHED_MAX_BODY_BYTES", _parse_bytes, "BYTES",
        "largest body of a scheduled request (suffixes K, M, KiB, MiB, GiB); larger: 413", "10MiB",
    ),
    Option(
        "aging", "--aging", "SJFSCHED_AGING", _parse_float, "SECONDS_PER_SECOND",
        "seconds of estimated service time forgiven per second waited", str(DEFAULT_AGING),
    ),
    Option(
        "cap", "--cap", "SJFSCHED_CAP", _none_or(_parse_float), "MULTIPLE|none",
        "estimates above this multiple of the median recent estimate count as that value "
        "(none: plain shortest-first)", str(DEFAULT_CAP),
    ),
    Option(
        "max_wait", "--max-wait", "SJFSCHED_MAX_WAIT", _none_or(_parse_float), "SECONDS|none",
        "a request that waited this long runs next",
        "none" if DEFAULT_MAX_WAIT is None else str(DEFAULT_MAX_WAIT),
    ),
    Option(
        "predictor", "--predictor", "SJFSCHED_PREDICTOR", _lower, "default|heuristic|fcfs",
        "the length predictor: the library's default, prompt length, or none (first-come-first-served)",
        "default",
    ),
    Option(
        "predictor_state", "--predictor-state", "SJFSCHED_PREDICTOR_STATE", _none_or(_parse_path), "PATH",
        "a JSON file the default predictor loads what it learnt (calibration and ranking correction) "
        "from at start, and saves to every 100 completed requests and at shutdown", "none",
    ),
    Option(
        "connect_timeout", "--connect-timeout", "SJFSCHED_CONNECT_TIMEOUT", _none_or(_parse_float),
        "SECONDS|none", "bound on connecting to the upstream", str(DEFAULT_CONNECT_TIMEOUT),
    ),
    Option(
        "read_timeout", "--read-timeout", "SJFSCHED_READ_TIMEOUT", _none_or(_parse_float), "SECONDS|none",
        "bound on the upstream's silence (model loading, a long non-streamed answer)", "none",
    ),
    Option(
        "shutdown_timeout", "--shutdown-timeout", "SJFSCHED_SHUTDOWN_TIMEOUT", _parse_float, "SECONDS",
        "on SIGTERM/SIGINT, how long running requests may take to finish", str(DEFAULT_SHUTDOWN_TIMEOUT),
    ),
    Option(
        "allowed_hosts", "--allowed-hosts", "SJFSCHED_ALLOWED_HOSTS", _host_names, "NAMES",
        "more host names a request's Host may give, comma-separated (a reverse proxy's name), "
        "when the proxy listens on a loopback address; * turns the Host check off", "none",
    ),
    Option(
        "client_timeout", "--client-timeout", "SJFSCHED_CLIENT_TIMEOUT", _none_or(_parse_float),
        "SECONDS|none", "bound on the time a client takes to send a request's head, on its silence "
        "as it sends the body, and on its not reading its answer; then its connection is closed",
        str(DEFAULT_CLIENT_TIMEOUT),
    ),
    Option(
        "log_level", "--log-level", "SJFSCHED_LOG_LEVEL", _lower, "LEVEL",
        "critical, error, warning, info or debug", "info",
    ),
    Option(
        "access_log", "--access-log", "SJFSCHED_ACCESS_LOG", _parse_bool, "",
        "log every request (uvicorn's access log)", "off", is_flag=True,
    ),
)  # fmt: skip


def resolve(
    flags: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[ProxySettings, dict[str, tuple[Any, str]]]:
    """Settings from flag values (a name absent from ``flags``: not given), then variables, then defaults.

    A flag given as ``none`` (value ``None``) wins over its variable like any
    other value: ``--max-wait none`` clears ``SJFSCHED_MAX_WAIT``.

    Returns the settings and, per option name, ``(value, source)`` where the
    source is ``flag``, ``env`` or ``default``.  Raises ``ValueError`` naming
    the flag or variable at fault.
    """
    values: dict[str, Any] = {}
    sources: dict[str, tuple[Any, str]] = {}
    for option in OPTIONS:
        if option.name in flags:
            value = flags[option.name]
            source = "flag"
        elif environ.get(option.env, "").strip():
            try:
                value = option.parse(environ[option.env])
            except ValueError as exc:
                raise ValueError(f"{option.env}: {exc}") from None
            source = "env"
        else:
            sources[option.name] = (option.shown_default, "default")
            continue
        if option.name == "listen":
            values["host"], values["port"] = value
        else:
            values[option.name] = value
        sources[option.name] = (value, source)
    if "upstream" not in values:
        raise ValueError("an upstream is required: pass --upstream URL or set SJFSCHED_UPSTREAM")
    try:
        settings = ProxySettings(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(_blame(str(exc), sources)) from None
    return settings, sources


def _blame(message: str, sources: Mapping[str, tuple[Any, str]]) -> str:
    """Prefix a validation message with the flag or variable that set the field."""
    for option in OPTIONS:
        prefix = "listen port" if option.name == "listen" else option.name
        if message.startswith(prefix + " "):
            source = sources.get(option.name, (None, "default"))[1]
            where = {"flag": option.flag, "env": option.env}.get(source)
            return message if where is None else f"{where}: {message}"
    return message
