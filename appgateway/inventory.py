"""Reports over a snapshot: `check`, `routes` and `access-services` (README.md "Commands").

They read the same snapshot the gateway serves from, so what they print is what requests get.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TextIO

import yaml

from appgateway import tls, urls
from appgateway.config import MANIFEST_SIZE_LIMIT
from appgateway.model import API, BasicAuth, CertificateAuth, Credentials, NoAuth, OAuth, OAuthMTLS
from appgateway.registry.folder import load_snapshot
from appgateway.registry.snapshot import Route, Snapshot

ROUTE_KEYS = ("application", "service", "entry", "url", "compassUrl", "accessService", "auth")
_TABLE_HEADINGS = (
    "APPLICATION",
    "SERVICE",
    "ENTRY",
    "URL",
    "COMPASS URL",
    "ACCESS SERVICE",
    "AUTH",
)
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
AMBIGUOUS = " (ambiguous)"
_AUTH_NAMES: dict[type[Credentials], str] = {
    NoAuth: "none",
    BasicAuth: "Basic",
    OAuth: "OAuth",
    OAuthMTLS: "OAuthWithCert",
    CertificateAuth: "CertificateGen",
}


def auth_name(api: API) -> str:
    """`OAuth+csrf+params`: the credentials type as written in the Application, plus extras."""
    name = _AUTH_NAMES[type(api.credentials)]
    if api.csrf_url:
        name += "+csrf"
    if api.params.headers or api.params.query:
        name += "+params"
    return name


def _auth(route: Route) -> str:
    return auth_name(route.api) if route.api is not None else "error"


def _table(headings: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headings)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (headings, *rows)
    ]
    return "\n".join(lines) + "\n"


def check(
    path: Path, secrets_namespace: str, out: TextIO, *, max_file_size: int = MANIFEST_SIZE_LIMIT
) -> int:
    """Load `path` as `serve --registry` would and print problems, then the routing table.

    Returns 0 without errors and 1 with errors; raises RegistryError if `path` is unusable.
    """
    snapshot = load_snapshot(
        path,
        secrets_namespace=secrets_namespace,
        load_cert=tls.load_client_cert,
        max_file_size=max_file_size,
    )
    for issue in snapshot.issues:
        out.write(f"{issue.severity}: {issue}\n")
    if snapshot.issues:
        out.write("\n")
    rows: list[tuple[str, ...]] = []
    for r in snapshot.routes:
        proxy = f"/{r.ref.app}/{r.ref.service}" + (AMBIGUOUS if r.path_ambiguous else "")
        compass = f"/{r.ref.app}/{r.ref.service}/{r.ref.entry}"
        compass += AMBIGUOUS if r.compass_ambiguous else ""
        label = (r.host_label or "-") + (AMBIGUOUS if r.host_ambiguous else "")
        rows.append((r.ref.app, proxy, compass, label, _auth(r), urls.redact(r.target_url) or "-"))
    if rows:
        headings = ("APP", "PROXY PATH", "COMPASS PATH", "HOST LABEL", "AUTH", "TARGET")
        out.write(_table(headings, rows) + "\n")
    counts = (
        (snapshot.application_count, "application"),
        (len(snapshot.routes), "API"),
        (snapshot.error_count, "error"),
        (snapshot.warning_count, "warning"),
    )
    out.write(", ".join(f"{n} {word}{'' if n == 1 else 's'}" for n, word in counts) + "\n")
    return 1 if snapshot.error_count else 0


def route_rows(snapshot: Snapshot, base_url: str, compass_base_url: str) -> list[dict[str, str]]:
    """One row per API entry; `url` is empty when the proxy path is ambiguous (400)."""
    base, compass_base = base_url.rstrip("/"), compass_base_url.rstrip("/")
    rows: list[dict[str, str]] = []
    for r in snapshot.routes:
        path = f"/{r.ref.app}/{r.ref.service}"
        routable_by_host = r.host_label is not None and not r.host_ambiguous
        rows.append(
            {
                "application": r.ref.app,
                "service": r.ref.service,
                "entry": r.ref.entry,
                "url": "" if r.path_ambiguous else base + path,
                "compassUrl": "" if r.compass_ambiguous else f"{compass_base}{path}/{r.ref.entry}",
                "accessService": r.host_label or "" if routable_by_host else "",
                "auth": _auth(r),
            }
        )
    return rows


def format_routes(rows: Sequence[dict[str, str]], output: Literal["table", "json"]) -> str:
    if output == "json":
        return json.dumps(list(rows), indent=2) + "\n"
    return _table(_TABLE_HEADINGS, [tuple(row[k] or "-" for k in ROUTE_KEYS) for row in rows])


def parse_selector(text: str) -> dict[str, str]:
    """`k=v[,k=v…]` as in `kubectl -l`; raises ValueError on anything else."""
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not key.strip():
            raise ValueError(f"invalid selector {text!r}: want key=value[,key=value]")
        out[key.strip()] = value.strip()
    return out


def access_services_yaml(
    snapshot: Snapshot,
    namespace: str,
    selector: str,
    target_port: int,
    *,
    err: TextIO | None = None,
) -> str:
    """A v1 List with one Service per host-routable service, named by its host label."""
    warn = err if err is not None else sys.stderr
    labels = parse_selector(selector)
    items: list[dict[str, object]] = []
    done: set[str] = set()
    for r in snapshot.routes:
        label = r.host_label
        if label is None or label in done:
            continue
        done.add(label)
        if r.host_ambiguous:
            warn.write(f"warning: skipping {label}: host requests to it are ambiguous (400)\n")
            continue
        if len(label) > 63 or not _DNS1035_LABEL.fullmatch(label):
            warn.write(f"warning: skipping {label}: not a valid DNS-1035 label\n")
            continue
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": label, "namespace": namespace},
                "spec": {
                    "selector": dict(labels),
                    "ports": [
                        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": target_port}
                    ],
                },
            }
        )
    document = {"apiVersion": "v1", "kind": "List", "items": items}
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
