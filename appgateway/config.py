"""Settings for `serve` (and the source flags of `routes`/`access-services`).

This is the only module that reads the environment. Precedence: flag > APPGATEWAY_* > default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Final, Literal

LOG_LEVELS = ("debug", "info", "warn", "error", "dpanic", "panic", "fatal")

KYMA_ALIASES = {
    "--proxyPort": "--proxy-port",
    "--proxyPortCompass": "--proxy-port-compass",
    "--externalAPIPort": "--admin-port",
    "--applicationSecretsNamespace": "--secrets-namespace",
    "--logLevel": "--log-level",
    "--proxyTimeout": "--proxy-timeout",
    "--requestTimeout": "--request-timeout",
    "--proxyCacheTTL": "--proxy-cache-ttl",
    "--kubeConfig": "--kubeconfig",
}


MANIFEST_SIZE_LIMIT = 1024 * 1024
"""Default of `--manifest-size-limit`, as much as a mounted ConfigMap or Secret can hold. Parsing
takes up to about 200 times a file's size in memory at its peak: 1 MiB of Applications about
8 MB, 1 MiB of flow integers (`[1,1,…]`, a node each) about 190 MB."""


class ConfigurationError(Exception):
    """A bad flag or variable value: exit status 2."""


CallerAuthMode = Literal["off", "kubernetes", "tokens"]
CALLER_AUTH_MODES: Final[tuple[CallerAuthMode, ...]] = ("off", "kubernetes", "tokens")


@dataclass(frozen=True, slots=True)
class Settings:
    registry: Path | None = None  # None: the embedded demo registry
    kubernetes: bool = False
    kubeconfig: Path | None = None
    secrets_namespace: str = "kyma-system"
    manifest_size_limit: int = MANIFEST_SIZE_LIMIT
    host: str = "127.0.0.1"
    admin_host: str | None = None  # None: the same as `host`
    proxy_port: int = 8080
    proxy_port_compass: int = 8082
    admin_port: int = 8081
    proxy_timeout: float = 10.0
    request_timeout: float = 10.0
    keepalive_timeout: float = 120.0
    idle_timeout: float = 60.0
    proxy_cache_ttl: float = 120.0
    token_default_ttl: float = 300.0
    retry_body_limit: int = 1048576
    shutdown_timeout: float = 10.0
    log_level: str = "info"
    workers: int = 1
    body_min_rate: int = 1024
    max_connections: int = 4096
    worker_crash_limit: int = 5
    caller_auth: CallerAuthMode = "off"
    caller_audience: str = "appgateway"
    caller_tokens: Path | None = None
    caller_cache_ttl: float = 300.0

    @property
    def admin_address(self) -> str:
        """The admin listener's bind address."""
        return self.admin_host or self.host


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"invalid boolean {text!r}")


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (seconds)") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be > 0")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: must be 0..65535")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: must be >= 1")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: must be >= 0")
    return value


def _level(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"invalid log level {text!r}")
    return value


def _caller_mode(text: str) -> CallerAuthMode:
    value = text.strip().lower()
    for mode in CALLER_AUTH_MODES:
        if value == mode:
            return mode
    raise argparse.ArgumentTypeError(
        f"invalid caller auth mode {text!r}: must be off, kubernetes or tokens"
    )


def _audience(text: str) -> str:
    """A token audience is one word: TokenReview compares it exactly."""
    if not text or any(c.isspace() or not c.isprintable() for c in text):
        raise argparse.ArgumentTypeError(
            f"invalid audience {text!r}: must be non-empty, without spaces or control characters"
        )
    return text


def _bool_arg(text: str) -> bool:
    try:
        return parse_bool(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_SOURCE_OPTIONS: tuple[tuple[str, object, str], ...] = (
    ("--registry", Path, "folder of YAML manifests (default: the embedded demo registry)"),
    ("--kubeconfig", Path, "kubeconfig used with --kubernetes (default: in-cluster)"),
    ("--secrets-namespace", str, "the only namespace Secrets are read from"),
    ("--manifest-size-limit", _positive_int, "largest manifest file read, in bytes"),
)
_CHECK_OPTIONS = ("--secrets-namespace", "--manifest-size-limit")

_SERVE_OPTIONS: tuple[tuple[str, object, str], ...] = (
    ("--host", str, "bind address of the proxy listeners (and of the admin one by default)"),
    ("--admin-host", str, "bind address of the admin listener (default: --host)"),
    ("--proxy-port", _port, "proxy listener port (0 picks a free port)"),
    ("--proxy-port-compass", _port, "Compass listener port"),
    ("--admin-port", _port, "admin listener port"),
    ("--proxy-timeout", _duration, "seconds to wait for upstream response headers"),
    ("--request-timeout", _duration, "seconds to receive a request head"),
    (
        "--keepalive-timeout",
        _duration,
        "seconds a caller connection may wait idle between requests",
    ),
    ("--idle-timeout", _duration, "longest silence while a body streams"),
    ("--proxy-cache-ttl", _duration, "accepted for compatibility; no effect"),
    ("--token-default-ttl", _duration, "token lifetime when expires_in is absent"),
    ("--retry-body-limit", _non_negative_int, "largest body buffered for the 401/403 retry"),
    ("--shutdown-timeout", _duration, "drain time after SIGTERM"),
    ("--log-level", _level, "debug, info, warn or error"),
    ("--workers", _positive_int, "worker processes sharing the proxy listeners"),
    (
        "--body-min-rate",
        _non_negative_int,
        "least bytes/s a request body must average per request-timeout of waiting (0: off)",
    ),
    (
        "--max-connections",
        _positive_int,
        "open caller connections per process on the proxy listeners; more are refused",
    ),
    (
        "--worker-crash-limit",
        _non_negative_int,
        "with --workers: exit 1 when a worker crashes this often within 5 minutes (0: never)",
    ),
    (
        "--caller-auth",
        _caller_mode,
        "who may use an API's credentials: off (anyone who reaches the proxy ports), "
        "kubernetes (TokenReview + SubjectAccessReview) or tokens (--caller-tokens)",
    ),
    ("--caller-audience", _audience, "the audience callers' Kubernetes tokens must be made for"),
    ("--caller-tokens", Path, "YAML list of caller tokens (name, sha256, applications)"),
    ("--caller-cache-ttl", _duration, "longest time a caller decision is reused (kubernetes)"),
)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, kind, text in _SOURCE_OPTIONS:
        parser.add_argument(flag, type=kind, default=None, help=text)  # type: ignore[arg-type]
    parser.add_argument(
        "--kubernetes",
        nargs="?",
        const=True,
        default=None,
        type=_bool_arg,
        metavar=_SWITCH,
        help="read Applications and Secrets from the Kubernetes API (--kubernetes=false: off)",
    )


_SWITCH = "BOOL"


class HelpFormatter(argparse.HelpFormatter):
    """Prints `--kubernetes` as the switch it is.

    Its optional value (`--kubernetes=false`, for scripts and Kyma's flag style) would
    otherwise read as `--kubernetes [KUBERNETES]`, as if a value were expected.
    """

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        if action.metavar == _SWITCH and action.nargs == "?":
            return ""
        return super()._format_args(action, default_metavar)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if action.metavar == _SWITCH and action.nargs == "?":
            return ", ".join(action.option_strings)
        return super()._format_action_invocation(action)


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The source flags that apply to `check PATH` (its folder is a positional argument)."""
    for flag, kind, text in _SOURCE_OPTIONS:
        if flag in _CHECK_OPTIONS:
            parser.add_argument(flag, type=kind, default=None, help=text)  # type: ignore[arg-type]


def add_serve_arguments(parser: argparse.ArgumentParser, *, ports_only: bool = False) -> None:
    for flag, kind, text in _SERVE_OPTIONS:
        if ports_only and flag not in ("--proxy-port", "--proxy-port-compass"):
            continue
        parser.add_argument(flag, type=kind, default=None, help=text)  # type: ignore[arg-type]


def expand_aliases(argv: Sequence[str]) -> list[str]:
    """Rewrite Kyma's camelCase flags (`--proxyPort 8080` or `--proxyPort=8080`)."""
    out: list[str] = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if name in KYMA_ALIASES:
            out.append(KYMA_ALIASES[name] + sep + value)
        else:
            out.append(arg)
    return out


def build_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Merge parsed flags over `APPGATEWAY_*` variables over defaults."""
    env = os.environ if environ is None else environ
    converters: dict[str, object] = {
        flag[2:].replace("-", "_"): kind for flag, kind, _ in _SOURCE_OPTIONS + _SERVE_OPTIONS
    }
    converters["kubernetes"] = _bool_arg
    values: dict[str, object] = {}
    for f in fields(Settings):
        flag_value = getattr(args, f.name, None)
        if flag_value is not None:
            values[f.name] = flag_value
            continue
        raw = env.get("APPGATEWAY_" + f.name.upper())
        if raw is None or raw == "":
            continue
        convert = converters[f.name]
        try:
            values[f.name] = convert(raw)  # type: ignore[operator]
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise ConfigurationError(f"APPGATEWAY_{f.name.upper()}: {exc}") from None
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.kubernetes and settings.registry is not None:
        raise ConfigurationError("--registry is not allowed with --kubernetes")
    _check_caller_auth(settings)
    return settings


def _check_caller_auth(settings: Settings) -> None:
    """Each mode's inputs must be there, and an input no mode reads is refused: a tokens
    file given without `--caller-auth tokens` would look protected and let everyone in."""
    mode = settings.caller_auth
    if mode == "kubernetes" and not settings.kubernetes:
        raise ConfigurationError(
            "--caller-auth kubernetes needs --kubernetes (callers' tokens are reviewed by the "
            "API server)"
        )
    if mode == "tokens" and settings.caller_tokens is None:
        raise ConfigurationError("--caller-auth tokens needs --caller-tokens FILE")
    if mode != "tokens" and settings.caller_tokens is not None:
        raise ConfigurationError("--caller-tokens is only read with --caller-auth tokens")


def environ_proxies() -> dict[str, str]:
    """HTTP_PROXY/HTTPS_PROXY/NO_PROXY (either case), read here so no other module reads env."""
    out: dict[str, str] = {}
    for name in ("http_proxy", "https_proxy", "no_proxy"):
        value = os.environ.get(name) or os.environ.get(name.upper())
        if value:
            out[name] = value
    return out


def settings_environment(settings: Settings, **overrides: object) -> dict[str, str]:
    """This process's environment plus `settings` as APPGATEWAY_* variables (for workers)."""
    env = dict(os.environ)
    for name, value in asdict(replace(settings, **overrides)).items():  # type: ignore[arg-type]
        key = "APPGATEWAY_" + name.upper()
        if value is None:
            env.pop(key, None)
        elif isinstance(value, bool):
            env[key] = "true" if value else "false"
        else:
            env[key] = str(value)
    return env


def kubernetes_service_address() -> tuple[str, str]:
    """KUBERNETES_SERVICE_HOST and _PORT: the kubelet sets them in every pod, and the in-cluster
    Kubernetes source connects there. Empty strings outside a cluster."""
    return (
        os.environ.get("KUBERNETES_SERVICE_HOST", ""),
        os.environ.get("KUBERNETES_SERVICE_PORT", ""),
    )
