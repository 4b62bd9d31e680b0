from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any

import pytest
import yaml

from appgateway.registry.kubeconfig import ClusterAuth, Material, from_kubeconfig, in_cluster

CONFIG = PurePath("/home/me/.kube/config")


def kubeconfig(
    cluster: dict[str, Any] | None = None,
    user: dict[str, Any] | None = None,
    *,
    current: str = "b",
    extra_contexts: bool = True,
) -> str:
    contexts = [{"name": "b", "context": {"cluster": "c2", "user": "u2"}}]
    if extra_contexts:
        contexts.insert(0, {"name": "a", "context": {"cluster": "c1", "user": "u1"}})
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": current,
        "contexts": contexts,
        "clusters": [
            {"name": "c1", "cluster": {"server": "https://other:6443"}},
            {"name": "c2", "cluster": cluster or {"server": "https://api.example:6443/"}},
        ],
        "users": [
            {"name": "u1", "user": {"token": "other-token"}},
            {"name": "u2", "user": user or {}},
        ],
    }
    return yaml.safe_dump(doc)


def test_current_context_picks_cluster_and_user() -> None:
    auth = from_kubeconfig(kubeconfig(user={"token": "t0k"}), CONFIG)
    assert auth == ClusterAuth(
        server="https://api.example:6443",
        ca=None,
        insecure=False,
        tls_server_name=None,
        token=Material(data=b"t0k"),
        client_cert=None,
        client_key=None,
        origin="kubeconfig /home/me/.kube/config (context b)",
    )


@pytest.mark.parametrize(
    ("cluster", "user", "field", "expected"),
    [
        (
            {"server": "https://x", "certificate-authority-data": "Q0E="},
            {},
            "ca",
            Material(data=b"CA"),
        ),
        (
            {"server": "https://x", "certificate-authority": "ca.crt"},
            {},
            "ca",
            Material(path=Path("/home/me/.kube/ca.crt")),
        ),
        (
            {"server": "https://x", "certificate-authority": "/etc/k8s/ca.crt"},
            {},
            "ca",
            Material(path=Path("/etc/k8s/ca.crt")),
        ),
        (  # inline data wins over a file, as in kubectl
            {
                "server": "https://x",
                "certificate-authority": "ca.crt",
                "certificate-authority-data": "Q0E=",
            },
            {},
            "ca",
            Material(data=b"CA"),
        ),
        (
            {"server": "https://x"},
            {"tokenFile": "tok"},
            "token",
            Material(path=Path("/home/me/.kube/tok")),
        ),
        ({"server": "https://x"}, {"token": "a", "tokenFile": "f"}, "token", Material(data=b"a")),
        ({"server": "https://x"}, {}, "token", None),
        (
            {"server": "https://x"},
            {"client-certificate": "c.pem", "client-key-data": "S0VZ"},
            "client_cert",
            Material(path=Path("/home/me/.kube/c.pem")),
        ),
        (
            {"server": "https://x"},
            {"client-certificate": "c.pem", "client-key-data": "S0VZ"},
            "client_key",
            Material(data=b"KEY"),
        ),
        ({"server": "https://x", "insecure-skip-tls-verify": True}, {}, "insecure", True),
        ({"server": "https://x", "tls-server-name": "api"}, {}, "tls_server_name", "api"),
        ({"server": "http://127.0.0.1:8001"}, {}, "server", "http://127.0.0.1:8001"),
    ],
)
def test_fields(
    cluster: dict[str, Any], user: dict[str, Any], field: str, expected: object
) -> None:
    auth = from_kubeconfig(kubeconfig(cluster, user), CONFIG)
    assert getattr(auth, field) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [", "invalid YAML"),
        ("- 1", "not a kubeconfig"),
        (kubeconfig(current=""), "no current-context"),
        (kubeconfig(current="zz"), "contexts: no entry named 'zz'"),
        (kubeconfig({"server": "ftp://x"}), "cluster 'c2': server must be an http(s) URL"),
        (kubeconfig({"server": "https://x", "proxy-url": "http://p"}), "proxy-url"),
        (kubeconfig(user={"exec": {"command": "aws"}}), "user 'u2': exec is not supported"),
        (kubeconfig(user={"auth-provider": {"name": "gcp"}}), "auth-provider is not supported"),
        (kubeconfig(user={"username": "a", "password": "b"}), "username is not supported"),
        (kubeconfig(user={"token": 5}), "user 'u2': token must be a string"),
        (kubeconfig(user={"client-certificate": "c.pem"}), "go together"),
        (
            kubeconfig({"server": "https://x", "certificate-authority-data": "!!"}),
            "certificate-authority-data is not valid base64",
        ),
        (
            kubeconfig({"server": "https://x", "insecure-skip-tls-verify": "yes"}),
            "insecure-skip-tls-verify must be a boolean",
        ),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_kubeconfig(text, CONFIG)


def test_context_without_cluster() -> None:
    text = yaml.safe_dump(
        {"current-context": "x", "contexts": [{"name": "x", "context": {"user": "u"}}]}
    )
    with pytest.raises(ValueError, match="context 'x' names no cluster"):
        from_kubeconfig(text, CONFIG)


@pytest.mark.parametrize(
    ("host", "port", "server"),
    [
        ("10.96.0.1", "443", "https://10.96.0.1:443"),
        ("fd00::1", "6443", "https://[fd00::1]:6443"),
        ("10.0.0.1", "", "https://10.0.0.1:443"),
    ],
)
def test_in_cluster(host: str, port: str, server: str) -> None:
    auth = in_cluster(host, port, Path("/sa"))
    assert auth.server == server
    assert auth.token == Material(path=Path("/sa/token"))
    assert auth.ca == Material(path=Path("/sa/ca.crt"))
    assert auth.origin == "in-cluster service account"


def test_in_cluster_needs_the_service_host() -> None:
    with pytest.raises(ValueError, match="not running in a cluster"):
        in_cluster("", "")
