"""Where the Kubernetes API is and how to authenticate: a kubeconfig file, or in-cluster.

Only the decisions live here (which context, which cluster and user, inline data or a file
path relative to the kubeconfig); reading the files is left to the client, which must re-read
the service-account token as it rotates. Unsupported ways to log in (exec plugins, auth
providers, passwords) are refused by name, so an operator sees why instead of a 401 loop.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True, slots=True)
class Material:
    """Key material given inline (`data`) or as a file to read (`path`)."""

    data: bytes | None = None
    path: Path | None = None


@dataclass(frozen=True, slots=True)
class ClusterAuth:
    server: str
    """Base URL of the API server, without a trailing slash."""
    ca: Material | None
    """Trusted CA certificates (PEM); None: the system trust store."""
    insecure: bool
    tls_server_name: str | None
    token: Material | None
    """A bearer token; a file is re-read as it rotates."""
    client_cert: Material | None
    client_key: Material | None
    origin: str
    """For log lines: which file and context, or the service account."""


def in_cluster(host: str, port: str, directory: Path = SERVICE_ACCOUNT_DIR) -> ClusterAuth:
    """The pod's service account, as the kubelet mounts it, and the API server's address."""
    if not host:
        raise ValueError(
            "not running in a cluster (KUBERNETES_SERVICE_HOST is not set): use --kubeconfig"
        )
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return ClusterAuth(
        server=f"https://{host}:{port or '443'}",
        ca=Material(path=directory / "ca.crt"),
        insecure=False,
        tls_server_name=None,
        token=Material(path=directory / "token"),
        client_cert=None,
        client_key=None,
        origin="in-cluster service account",
    )


def from_kubeconfig(text: str, path: PurePath) -> ClusterAuth:
    """The current context of a kubeconfig; relative file names are relative to `path`'s folder.

    Raises ValueError naming the problem.
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("not a kubeconfig (expected a mapping)")
    current = doc.get("current-context")
    if not isinstance(current, str) or not current:
        raise ValueError("no current-context")
    context = _named(doc, "contexts", "context", current)
    cluster_name = context.get("cluster")
    user_name = context.get("user")
    if not isinstance(cluster_name, str) or not cluster_name:
        raise ValueError(f"context {current!r} names no cluster")
    cluster = _named(doc, "clusters", "cluster", cluster_name)
    user = _named(doc, "users", "user", user_name) if isinstance(user_name, str) else {}
    base = Path(path).parent
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise ValueError(f"cluster {cluster_name!r}: server must be an http(s) URL")
    if cluster.get("proxy-url"):
        raise ValueError(f"cluster {cluster_name!r}: proxy-url is not supported")
    for unsupported in ("exec", "auth-provider", "username", "password"):
        if user.get(unsupported):
            raise ValueError(
                f"user {user_name!r}: {unsupported} is not supported; use a token, a token "
                "file or a client certificate"
            )
    insecure = cluster.get("insecure-skip-tls-verify", False)
    if not isinstance(insecure, bool):
        raise ValueError(f"cluster {cluster_name!r}: insecure-skip-tls-verify must be a boolean")
    server_name = _string(cluster, "tls-server-name", f"cluster {cluster_name!r}")
    token: Material | None = None
    token_text = _string(user, "token", f"user {user_name!r}")
    token_file = _string(user, "tokenFile", f"user {user_name!r}")
    if token_text:
        token = Material(data=token_text.encode())
    elif token_file:
        token = Material(path=base / token_file)
    cert = _material(user, "client-certificate", base, f"user {user_name!r}")
    key = _material(user, "client-key", base, f"user {user_name!r}")
    if (cert is None) != (key is None):
        raise ValueError(f"user {user_name!r}: client-certificate and client-key go together")
    return ClusterAuth(
        server=server.rstrip("/"),
        ca=_material(cluster, "certificate-authority", base, f"cluster {cluster_name!r}"),
        insecure=insecure,
        tls_server_name=server_name or None,
        token=token,
        client_cert=cert,
        client_key=key,
        origin=f"kubeconfig {path} (context {current})",
    )


def _named(doc: Mapping[object, object], section: str, key: str, name: str) -> dict[str, object]:
    items = doc.get(section)
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict) and item.get("name") == name:
                value = item.get(key)
                if value is None:
                    return {}
                if isinstance(value, dict):
                    return value
                raise ValueError(f"{section}: {name!r}: {key} must be a mapping")
    raise ValueError(f"{section}: no entry named {name!r}")


def _string(m: Mapping[str, object], key: str, owner: str) -> str:
    value = m.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{owner}: {key} must be a string")
    return value


def _material(m: Mapping[str, object], key: str, base: Path, owner: str) -> Material | None:
    """`{key}-data` (base64, wins as in kubectl) or `{key}` (a file name)."""
    data = _string(m, f"{key}-data", owner)
    if data:
        try:
            return Material(data=base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError):
            raise ValueError(f"{owner}: {key}-data is not valid base64") from None
    name = _string(m, key, owner)
    return Material(path=base / name) if name else None
