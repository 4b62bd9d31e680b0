"""The factory: one implementation per --caller-auth mode, None for off."""

from __future__ import annotations

from pathlib import Path

import pytest

from appgateway.caller import make_caller_auth
from appgateway.caller.kubernetes import KubernetesCallerAuth
from appgateway.caller.tokens import TokensCallerAuth
from appgateway.config import ConfigurationError, Settings
from appgateway.metrics import Metrics

KUBECONFIG = """\
apiVersion: v1
kind: Config
current-context: c
contexts: [{name: c, context: {cluster: k, user: u}}]
clusters: [{name: k, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: gw}}]
"""


def test_off_is_no_step_at_all() -> None:
    assert make_caller_auth(Settings(), Metrics()) is None


def test_tokens(tmp_path: Path) -> None:
    path = tmp_path / "callers.yaml"
    auth = make_caller_auth(Settings(caller_auth="tokens", caller_tokens=path), Metrics())
    assert isinstance(auth, TokensCallerAuth)
    assert auth.path == path


def test_tokens_without_a_file_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="needs --caller-tokens"):
        make_caller_auth(Settings(caller_auth="tokens"), Metrics())


def test_kubernetes(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(KUBECONFIG)
    settings = Settings(
        kubernetes=True,
        kubeconfig=config,
        caller_auth="kubernetes",
        caller_audience="gw-aud",
        caller_cache_ttl=42.0,
    )
    auth = make_caller_auth(settings, Metrics())
    assert isinstance(auth, KubernetesCallerAuth)
    assert auth.client.auth.server == "https://127.0.0.1:6443"
    assert (auth.audience, auth.ttl) == ("gw-aud", 42.0)


def test_kubernetes_with_an_unusable_kubeconfig_exits_2(tmp_path: Path) -> None:
    settings = Settings(kubernetes=True, kubeconfig=tmp_path / "missing", caller_auth="kubernetes")
    with pytest.raises(ConfigurationError, match="cannot read"):
        make_caller_auth(settings, Metrics())
