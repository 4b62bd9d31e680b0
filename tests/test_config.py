"""Settings: flag > APPGATEWAY_* > default, value checks, Kyma aliases (README "Commands")."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from appgateway.config import (
    KYMA_ALIASES,
    ConfigurationError,
    Settings,
    add_check_arguments,
    add_serve_arguments,
    add_source_arguments,
    build_settings,
    environ_proxies,
    expand_aliases,
    parse_bool,
    settings_environment,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve", exit_on_error=False)
    add_source_arguments(parser)
    add_serve_arguments(parser)
    return parser


def settings(argv: Sequence[str] = (), env: Mapping[str, str] | None = None) -> Settings:
    args = _parser().parse_args(expand_aliases(argv))
    return build_settings(args, environ={} if env is None else env)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("yes", True),
        ("on", True),
        ("TRUE", True),
        (" On ", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
        ("False", False),
    ],
)
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["", "2", "y", "maybe", "truthy", "o"])
def test_parse_bool_rejects(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_bool(text)


def test_defaults() -> None:
    assert settings() == Settings()
    assert Settings().proxy_port == 8080 and Settings().admin_port == 8081
    assert Settings().proxy_port_compass == 8082 and Settings().registry is None


@pytest.mark.parametrize(
    ("argv", "env", "field", "value"),
    [
        ([], {}, "proxy_port", 8080),
        ([], {"APPGATEWAY_PROXY_PORT": "9100"}, "proxy_port", 9100),
        (["--proxy-port", "9000"], {"APPGATEWAY_PROXY_PORT": "9100"}, "proxy_port", 9000),
        (["--proxy-port", "0"], {"APPGATEWAY_PROXY_PORT": "9100"}, "proxy_port", 0),
        ([], {"APPGATEWAY_PROXY_PORT": ""}, "proxy_port", 8080),  # empty means unset
        ([], {"APPGATEWAY_LOG_LEVEL": "WARN"}, "log_level", "warn"),
        (["--log-level", "error"], {"APPGATEWAY_LOG_LEVEL": "debug"}, "log_level", "error"),
        ([], {"APPGATEWAY_SECRETS_NAMESPACE": "ns1"}, "secrets_namespace", "ns1"),
        ([], {"APPGATEWAY_REGISTRY": "/srv/reg"}, "registry", Path("/srv/reg")),
        (["--registry", "/a"], {"APPGATEWAY_REGISTRY": "/b"}, "registry", Path("/a")),
        ([], {"APPGATEWAY_WORKERS": "4"}, "workers", 4),
        ([], {}, "worker_crash_limit", 5),
        ([], {"APPGATEWAY_WORKER_CRASH_LIMIT": "0"}, "worker_crash_limit", 0),
        (["--worker-crash-limit", "3"], {}, "worker_crash_limit", 3),
        ([], {"APPGATEWAY_RETRY_BODY_LIMIT": "0"}, "retry_body_limit", 0),
        ([], {"APPGATEWAY_HOST": "0.0.0.0"}, "host", "0.0.0.0"),
        ([], {}, "admin_host", None),
        ([], {"APPGATEWAY_ADMIN_HOST": "10.0.0.5"}, "admin_host", "10.0.0.5"),
        (
            ["--admin-host", "127.0.0.2"],
            {"APPGATEWAY_ADMIN_HOST": "10.9.9.9"},
            "admin_host",
            "127.0.0.2",
        ),
        ([], {"APPGATEWAY_ADMIN_HOST": ""}, "admin_host", None),
        ([], {}, "manifest_size_limit", 1024 * 1024),
        ([], {"APPGATEWAY_MANIFEST_SIZE_LIMIT": "1000"}, "manifest_size_limit", 1000),
        (
            ["--manifest-size-limit", "9"],
            {"APPGATEWAY_MANIFEST_SIZE_LIMIT": "8"},
            "manifest_size_limit",
            9,
        ),
        # durations are seconds and may have decimals
        (["--proxy-timeout", "0.5"], {}, "proxy_timeout", 0.5),
        ([], {"APPGATEWAY_IDLE_TIMEOUT": "2.25"}, "idle_timeout", 2.25),
        ([], {"APPGATEWAY_REQUEST_TIMEOUT": "3"}, "request_timeout", 3.0),
        # idle between requests: longer than Go's 90 s and nginx's 75 s client pools
        ([], {}, "keepalive_timeout", 120.0),
        ([], {"APPGATEWAY_KEEPALIVE_TIMEOUT": "30"}, "keepalive_timeout", 30.0),
        (
            ["--keepalive-timeout", "5"],
            {"APPGATEWAY_KEEPALIVE_TIMEOUT": "30"},
            "keepalive_timeout",
            5.0,
        ),
        ([], {"APPGATEWAY_SHUTDOWN_TIMEOUT": ".5"}, "shutdown_timeout", 0.5),
        (["--token-default-ttl", "1e2"], {}, "token_default_ttl", 100.0),
        # booleans
        ([], {"APPGATEWAY_KUBERNETES": "yes"}, "kubernetes", True),
        ([], {"APPGATEWAY_KUBERNETES": "on"}, "kubernetes", True),
        ([], {"APPGATEWAY_KUBERNETES": "1"}, "kubernetes", True),
        ([], {"APPGATEWAY_KUBERNETES": "off"}, "kubernetes", False),
        (["--kubernetes"], {"APPGATEWAY_KUBERNETES": "false"}, "kubernetes", True),
        (["--kubernetes", "no"], {"APPGATEWAY_KUBERNETES": "true"}, "kubernetes", False),
        (["--kubernetes=0"], {}, "kubernetes", False),
        # caller authorization
        ([], {}, "caller_auth", "off"),
        ([], {}, "caller_audience", "appgateway"),
        ([], {}, "caller_tokens", None),
        ([], {}, "caller_cache_ttl", 300.0),
        (["--caller-auth", "Tokens", "--caller-tokens", "/t"], {}, "caller_auth", "tokens"),
        (
            [],
            {"APPGATEWAY_CALLER_AUTH": "tokens", "APPGATEWAY_CALLER_TOKENS": "/t"},
            "caller_tokens",
            Path("/t"),
        ),
        (["--kubernetes", "--caller-auth=kubernetes"], {}, "caller_auth", "kubernetes"),
        (
            [],
            {"APPGATEWAY_KUBERNETES": "1", "APPGATEWAY_CALLER_AUTH": "kubernetes"},
            "caller_auth",
            "kubernetes",
        ),
        (["--caller-auth", "off"], {"APPGATEWAY_CALLER_AUTH": "tokens"}, "caller_auth", "off"),
        (
            [],
            {"APPGATEWAY_CALLER_AUDIENCE": "https://gw.example"},
            "caller_audience",
            "https://gw.example",
        ),
        (["--caller-audience", "a"], {"APPGATEWAY_CALLER_AUDIENCE": "b"}, "caller_audience", "a"),
        ([], {"APPGATEWAY_CALLER_CACHE_TTL": "0.5"}, "caller_cache_ttl", 0.5),
        (["--caller-cache-ttl", "60"], {}, "caller_cache_ttl", 60.0),
    ],
)
def test_precedence_and_conversion(
    argv: list[str], env: dict[str, str], field: str, value: object
) -> None:
    assert getattr(settings(argv, env), field) == value


@pytest.mark.parametrize(
    ("argv", "env", "address"),
    [
        ([], {}, "127.0.0.1"),
        (["--host", "0.0.0.0"], {}, "0.0.0.0"),  # the admin listener follows --host ...
        (["--host", "0.0.0.0", "--admin-host", "10.0.0.7"], {}, "10.0.0.7"),  # ... unless told
        ([], {"APPGATEWAY_HOST": "0.0.0.0", "APPGATEWAY_ADMIN_HOST": "127.0.0.1"}, "127.0.0.1"),
    ],
)
def test_admin_address(argv: list[str], env: dict[str, str], address: str) -> None:
    assert settings(argv, env).admin_address == address


def test_process_environment_is_read_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPGATEWAY_ADMIN_PORT", "9191")
    assert build_settings(_parser().parse_args([])).admin_port == 9191
    assert build_settings(_parser().parse_args([]), environ={}).admin_port == 8081


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("APPGATEWAY_PROXY_PORT", "abc"),
        ("APPGATEWAY_PROXY_PORT", "70000"),
        ("APPGATEWAY_ADMIN_PORT", "-1"),
        ("APPGATEWAY_PROXY_TIMEOUT", "0"),
        ("APPGATEWAY_PROXY_TIMEOUT", "-2"),
        ("APPGATEWAY_IDLE_TIMEOUT", "ten"),
        ("APPGATEWAY_IDLE_TIMEOUT", "inf"),
        ("APPGATEWAY_REQUEST_TIMEOUT", "nan"),
        ("APPGATEWAY_KEEPALIVE_TIMEOUT", "0"),
        ("APPGATEWAY_WORKERS", "0"),
        ("APPGATEWAY_WORKERS", "1.5"),
        ("APPGATEWAY_RETRY_BODY_LIMIT", "-1"),
        ("APPGATEWAY_WORKER_CRASH_LIMIT", "-1"),
        ("APPGATEWAY_MANIFEST_SIZE_LIMIT", "0"),
        ("APPGATEWAY_MANIFEST_SIZE_LIMIT", "4MiB"),
        ("APPGATEWAY_LOG_LEVEL", "verbose"),
        ("APPGATEWAY_KUBERNETES", "maybe"),
        ("APPGATEWAY_CALLER_AUTH", "basic"),
        ("APPGATEWAY_CALLER_AUTH", "on"),
        ("APPGATEWAY_CALLER_AUDIENCE", "two words"),
        ("APPGATEWAY_CALLER_AUDIENCE", "tab\there"),
        ("APPGATEWAY_CALLER_CACHE_TTL", "0"),
        ("APPGATEWAY_CALLER_CACHE_TTL", "5m"),
    ],
)
def test_invalid_variable_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        settings([], {variable: value})
    assert variable in str(info.value)
    assert repr(value) in str(info.value) or value in str(info.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["--proxy-port", "abc"],
        ["--proxy-port", "65536"],
        ["--proxy-timeout", "0"],
        ["--idle-timeout", "-1"],
        ["--workers", "0"],
        ["--log-level", "loud"],
        ["--kubernetes", "sometimes"],
        ["--retry-body-limit", "1k"],
        ["--manifest-size-limit", "0"],
        ["--caller-auth", "yes"],
        ["--caller-audience", ""],
        ["--caller-cache-ttl", "-1"],
    ],
)
def test_invalid_flag_is_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(argparse.ArgumentError):
        _parser().parse_args(argv)


@pytest.mark.parametrize(("kyma", "ours"), sorted(KYMA_ALIASES.items()))
def test_kyma_aliases_both_forms(kyma: str, ours: str) -> None:
    assert expand_aliases([kyma, "9"]) == [ours, "9"]
    assert expand_aliases([f"{kyma}=9"]) == [f"{ours}=9"]


@pytest.mark.parametrize(
    "argv",
    [["--proxyPort", "9"], ["--proxyPort=9"], ["--proxy-port", "9"], ["--proxy-port=9"]],
)
def test_kyma_alias_parses_like_the_flag(argv: list[str]) -> None:
    assert settings(argv).proxy_port == 9


def test_aliased_flags_set_their_settings() -> None:
    got = settings(
        [
            "--proxyPortCompass=1",
            "--externalAPIPort",
            "2",
            "--applicationSecretsNamespace",
            "apps",
            "--logLevel=debug",
            "--proxyTimeout",
            "1.5",
            "--requestTimeout=2.5",
            "--proxyCacheTTL",
            "7",
            "--kubeConfig=/k",
        ]
    )
    assert got == replace(
        Settings(),
        proxy_port_compass=1,
        admin_port=2,
        secrets_namespace="apps",
        log_level="debug",
        proxy_timeout=1.5,
        request_timeout=2.5,
        proxy_cache_ttl=7.0,
        kubeconfig=Path("/k"),
    )


def test_other_arguments_are_not_rewritten() -> None:
    argv = ["serve", "--proxyport", "1", "-proxyPort", "--registry=/x", "--proxyPortX=2"]
    assert expand_aliases(argv) == argv


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--registry", "/r", "--kubernetes"], {}),
        (["--registry", "/r"], {"APPGATEWAY_KUBERNETES": "true"}),
        (["--kubernetes", "yes"], {"APPGATEWAY_REGISTRY": "/r"}),
    ],
)
def test_registry_with_kubernetes_is_rejected(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="--registry is not allowed with --kubernetes"):
        settings(argv, env)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--caller-auth", "kubernetes"], {}, "--caller-auth kubernetes needs --kubernetes"),
        (
            ["--caller-auth", "kubernetes", "--kubernetes", "false"],
            {"APPGATEWAY_KUBERNETES": "true"},
            "--caller-auth kubernetes needs --kubernetes",
        ),
        ([], {"APPGATEWAY_CALLER_AUTH": "kubernetes"}, "--caller-auth kubernetes needs"),
        (["--caller-auth", "tokens"], {}, "--caller-auth tokens needs --caller-tokens FILE"),
        ([], {"APPGATEWAY_CALLER_AUTH": "tokens"}, "--caller-auth tokens needs --caller-tokens"),
        (["--caller-tokens", "/t"], {}, "--caller-tokens is only read with --caller-auth tokens"),
        (
            ["--kubernetes", "--caller-auth", "kubernetes", "--caller-tokens", "/t"],
            {},
            "--caller-tokens is only read with --caller-auth tokens",
        ),
        ([], {"APPGATEWAY_CALLER_TOKENS": "/t"}, "--caller-tokens is only read with"),
    ],
)
def test_caller_auth_needs_its_inputs(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        settings(argv, env)
    assert str(info.value).startswith(message)


def test_registry_with_kubernetes_off_is_fine() -> None:
    got = settings(["--registry", "/r", "--kubernetes", "false"])
    assert got.registry == Path("/r") and not got.kubernetes


@pytest.mark.parametrize(
    "original",
    [
        Settings(),
        Settings(
            registry=Path("/srv/registry"),
            secrets_namespace="ns",
            host="0.0.0.0",
            admin_host="10.1.2.3",
            proxy_port=0,
            proxy_port_compass=1,
            admin_port=2,
            proxy_timeout=0.25,
            request_timeout=1.5,
            idle_timeout=3.125,
            proxy_cache_ttl=4.0,
            token_default_ttl=5.5,
            retry_body_limit=0,
            manifest_size_limit=123,
            shutdown_timeout=0.1,
            log_level="warn",
            workers=3,
        ),
        Settings(kubernetes=True, kubeconfig=Path("/k/config")),
        Settings(
            kubernetes=True,
            caller_auth="kubernetes",
            caller_audience="gw",
            caller_cache_ttl=2.5,
        ),
        Settings(caller_auth="tokens", caller_tokens=Path("/etc/appgateway/callers.yaml")),
    ],
)
def test_settings_environment_round_trips(
    original: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stale variable in this process must not leak into a worker whose setting is None.
    monkeypatch.setenv("APPGATEWAY_KUBECONFIG", "/stale")
    monkeypatch.setenv("UNRELATED_VARIABLE", "kept")
    env = settings_environment(original)
    assert env["UNRELATED_VARIABLE"] == "kept"
    assert build_settings(argparse.Namespace(), environ=env) == original
    assert build_settings(_parser().parse_args([]), environ=env) == original


def test_settings_environment_overrides() -> None:
    env = settings_environment(Settings(workers=4, proxy_port=0), proxy_port=4321, workers=1)
    assert env["APPGATEWAY_PROXY_PORT"] == "4321" and env["APPGATEWAY_WORKERS"] == "1"
    assert env["APPGATEWAY_KUBERNETES"] == "false"
    got = build_settings(argparse.Namespace(), environ=env)
    assert got == Settings(proxy_port=4321, workers=1)


def test_environ_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    assert environ_proxies() == {}
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    monkeypatch.setenv("no_proxy", "localhost")
    assert environ_proxies() == {"https_proxy": "http://proxy:3128", "no_proxy": "localhost"}


def test_check_takes_the_source_flags_that_apply_to_a_folder() -> None:
    parser = argparse.ArgumentParser(prog="check", exit_on_error=False)
    add_check_arguments(parser)
    args = parser.parse_args(["--secrets-namespace", "ns", "--manifest-size-limit", "77"])
    assert vars(args) == {"secrets_namespace": "ns", "manifest_size_limit": 77}
    env = {"APPGATEWAY_MANIFEST_SIZE_LIMIT": "5", "APPGATEWAY_SECRETS_NAMESPACE": "other"}
    assert build_settings(parser.parse_args([]), environ=env) == Settings(
        secrets_namespace="other", manifest_size_limit=5
    )
    assert parser.parse_known_args(["--registry", "x"])[1] == ["--registry", "x"]
