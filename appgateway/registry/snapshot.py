"""Validated documents -> an immutable Snapshot: every API entry resolved once, plus indexes.

All lookups a request needs are dictionary hits prepared here, so routing costs the same with
ten Applications or ten thousand. Resolution failures become per-API configuration errors
(registry.md §6) rather than build failures: one broken Secret must not take down the others.
A SnapshotBuilder carries each Application's resolved routes over to the next snapshot while
its inputs are unchanged, so a one-file change does not resolve ten thousand others again.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from typing import TypeVar

from appgateway import names
from appgateway.errors import BadRequest, GatewayError, NotFound
from appgateway.model import (
    API,
    APIRef,
    CertificateAuth,
    ClientCert,
    OAuthMTLS,
)
from appgateway.registry.parse import APPLICATION, SECRET, AppDoc, Issue, SecretDoc
from appgateway.registry.resolve import (
    APIConfigError,
    Hit,
    LoadCert,
    Resolver,
    Route,
    warning,
)

__all__ = ["APIConfigError", "LoadCert", "Route", "Snapshot", "SnapshotBuilder", "build_snapshot"]


def _ascii_lower(s: str) -> str:
    if s.isascii():
        return s.lower()
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in s)


def _multiple(name: str, hit: tuple[Route, ...]) -> BadRequest:
    candidates = " | ".join(
        f"service.ID: '{r.ref.service_id}', service.DisplayName: '{r.ref.display_name}', "
        f"entry.Name: '{r.ref.entry_name}'"
        for r in hit
    )
    return BadRequest(
        f"failed to get service with name {name}: multiple services found: {candidates}"
    )


@dataclass(frozen=True, slots=True)
class _Index:
    """Never mutated once built. Plain dicts, not read-only views: mypyc compiles `dict.get`
    to a C call, where a mapping proxy's `get` is a generic method call (1.4k instructions
    per routed request)."""

    paths: dict[tuple[str, str], Hit]
    compass: dict[tuple[str, str, str], Hit]
    hosts: dict[str, Hit]  # ASCII-lower-cased labels


_EMPTY_INDEX = _Index({}, {}, {})


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """One consistent view of the registry; never mutated after `build_snapshot`."""

    issues: tuple[Issue, ...] = ()
    routes: tuple[Route, ...] = ()
    application_count: int = 0
    _index: _Index = _EMPTY_INDEX

    def by_host_label(self, label: str) -> API | GatewayError | None:
        """None when no service has this label: the caller falls back to path routing."""
        hit = self._index.hosts.get(_ascii_lower(label))
        if hit is None:
            return None
        if isinstance(hit, tuple):
            return _multiple(f"'{label}'", hit)
        return hit.result()

    def by_path(self, app: str, service: str, entry: str | None) -> API | GatewayError:
        """`entry` None is the proxy listener; a str is the Compass listener."""
        hit: Hit | None
        if entry is None:
            hit = self._index.paths.get((app, service))
            if hit is None:
                return NotFound(f"service with name {service} not found")
            if isinstance(hit, tuple):
                return _multiple(f"'{service}'", hit)
            return hit.result()
        hit = self._index.compass.get((app, service, entry))
        if hit is None:
            return NotFound(f"service with name {service} and entry name {entry} not found")
        if isinstance(hit, tuple):
            return _multiple(f"'{service}' and entry name '{entry}'", hit)
        return hit.result()

    def entries(self) -> tuple[Route, ...]:
        return self.routes

    @property
    def api_count(self) -> int:
        """Routable entries that resolved without a configuration error."""
        return sum(1 for r in self.routes if r.api is not None)

    @property
    def error_count(self) -> int:
        return sum(1 for i in self.issues if i.severity == "error")

    @property
    def warning_count(self) -> int:
        return sum(1 for i in self.issues if i.severity == "warning")

    def client_certs(self) -> tuple[ClientCert, ...]:
        """Certificates in use, so TLS contexts and pools of rotated ones can be dropped."""
        out: dict[str, ClientCert] = {}
        for r in self.routes:
            creds = r.api.credentials if r.api is not None else None
            if isinstance(creds, CertificateAuth | OAuthMTLS):
                out[creds.cert.fingerprint] = creds.cert
        return tuple(out.values())


_PathKey = tuple[str, str]
_CompassKey = tuple[str, str, str]
_K = TypeVar("_K", bound=Hashable)


@dataclass(slots=True, eq=False)
class _Resolved:
    """One Application's share of a snapshot, reusable while its inputs are the same objects.

    Its routes depend only on its document, the Secrets it looked up (found or not) and their
    certificates, which are cached by PEM. Path and Compass names include the Application's
    name, so their ambiguities are its own as well; host labels are the one thing shared across
    Applications, so `host_ambiguous` is the only flag a later build may change.
    """

    app: AppDoc
    secrets: tuple[tuple[str, SecretDoc | None], ...]
    pems: tuple[tuple[bytes, bytes], ...]
    issues: tuple[Issue, ...]  # from resolution, in entry order
    path_warnings: tuple[Issue, ...]
    compass_warnings: tuple[Issue, ...]
    path_groups: tuple[tuple[_PathKey, tuple[int, ...]], ...]  # key -> route positions
    compass_groups: tuple[tuple[_CompassKey, tuple[int, ...]], ...]
    host_keys: tuple[tuple[str, int], ...]  # (ASCII-lower-cased label, route position)
    routes: tuple[Route, ...] = ()
    path_hits: tuple[tuple[_PathKey, Hit], ...] = ()
    compass_hits: tuple[tuple[_CompassKey, Hit], ...] = ()
    host_flagged: bool = False

    def publish(self, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        self.path_hits = tuple((key, _hit(routes, at)) for key, at in self.path_groups)
        self.compass_hits = tuple((key, _hit(routes, at)) for key, at in self.compass_groups)
        self.host_flagged = any(r.host_ambiguous for r in routes)

    def valid(self, app: AppDoc, secrets: Mapping[str, SecretDoc]) -> bool:
        if self.app is not app:
            return False
        return all(secrets.get(name) is doc for name, doc in self.secrets)


def _hit(routes: tuple[Route, ...], at: tuple[int, ...]) -> Hit:
    if len(at) == 1:
        return routes[at[0]]
    return tuple(routes[i] for i in at)


def _positions(keys: Iterable[_K]) -> tuple[tuple[_K, tuple[int, ...]], ...]:
    groups: dict[_K, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return tuple((key, tuple(at)) for key, at in groups.items())


def _services(group: Iterable[Route]) -> list[Route]:
    """The first route of each distinct service in `group`."""
    firsts: dict[tuple[str, str], Route] = {}
    for r in group:
        firsts.setdefault((r.ref.app, r.service_field), r)
    return list(firsts.values())


def _resolve(
    app: AppDoc,
    secrets: Mapping[str, SecretDoc],
    certs: dict[tuple[bytes, bytes], ClientCert | str],
    load_cert: LoadCert,
) -> _Resolved:
    resolver = Resolver(app, secrets, certs, load_cert)
    routes: list[Route] = []
    for service in app.services:
        api_entries = [e for e in service.entries if e.type == "API"]
        normalised = names.normalize(service.display_name)
        if api_entries and not normalised:
            message = "normalises to an empty name: not reachable by path"
            resolver.warn(f"{service.field}.displayName", message)
        if len(api_entries) > 1:
            message = f"{len(api_entries)} API entries: only the Compass listener reaches them"
            resolver.warn(service.field, message)
        for entry in api_entries:
            ref = APIRef(
                app=app.name,
                service=normalised,
                entry=names.normalize(entry.name),
                service_name=service.name or service.display_name,
                service_id=service.id,
                display_name=service.display_name,
                entry_name=entry.name,
            )
            routes.append(resolver.route(ref, entry))
    path_groups = _positions((r.ref.app, r.ref.service) for r in routes)
    compass_groups = _positions((r.ref.app, r.ref.service, r.ref.entry) for r in routes)
    path_warnings: list[Issue] = []
    for _, at in path_groups:
        firsts = _services(routes[i] for i in at)
        if len(firsts) > 1:
            a, b = firsts[0].ref, firsts[1].ref
            message = (
                f"'{b.display_name}' normalises to '{b.service}' like '{a.display_name}': "
                "proxy requests get 400"
            )
            path_warnings.append(warning(app, f"{firsts[1].service_field}.displayName", message))
    compass_warnings: list[Issue] = []
    for _, at in compass_groups:
        if len(at) > 1:
            a, b = routes[at[0]].ref, routes[at[1]].ref
            message = (
                f"'{b.entry_name}' normalises to '{b.entry}' like '{a.entry_name}' in "
                f"'{a.display_name}': Compass requests get 400"
            )
            compass_warnings.append(warning(app, f"{routes[at[1]].field}.name", message))
    by_path = {i for _, at in path_groups if len(at) > 1 for i in at}
    by_compass = {i for _, at in compass_groups if len(at) > 1 for i in at}
    for i in sorted(by_path | by_compass):
        routes[i] = replace(
            routes[i], path_ambiguous=i in by_path, compass_ambiguous=i in by_compass
        )
    resolved = _Resolved(
        app=app,
        secrets=tuple(resolver.looked_up.items()),
        pems=tuple(resolver.pems),
        issues=tuple(resolver.issues),
        path_warnings=tuple(path_warnings),
        compass_warnings=tuple(compass_warnings),
        path_groups=path_groups,
        compass_groups=compass_groups,
        host_keys=tuple(
            (_ascii_lower(r.host_label), i) for i, r in enumerate(routes) if r.host_label
        ),
    )
    resolved.publish(tuple(routes))
    return resolved


def _host_index(entries: Sequence[_Resolved], issues: list[Issue]) -> dict[str, Hit]:
    """Host labels across all Applications: warns about shared ones and flags their routes."""
    first: dict[str, tuple[_Resolved, int]] = {}
    shared: dict[str, list[tuple[_Resolved, int]]] = {}
    for entry in entries:
        for key, i in entry.host_keys:
            seen = first.get(key)
            if seen is None:
                first[key] = (entry, i)
            elif key in shared:
                shared[key].append((entry, i))
            else:
                shared[key] = [seen, (entry, i)]
    marked: dict[int, set[int]] = {}
    for key in [k for k in first if k in shared] if shared else ():  # in order of appearance
        group = shared[key]
        firsts: dict[tuple[str, str], tuple[AppDoc, Route]] = {}  # per distinct service
        for e, i in group:
            r = e.routes[i]
            firsts.setdefault((r.ref.app, r.service_field), (e.app, r))
        if len(firsts) > 1:
            (_, one), (app, later) = list(firsts.values())[:2]
            message = (
                f"host label '{later.host_label}' is also the label of Application/"
                f"{one.ref.app} service '{one.ref.display_name}': host requests get 400"
            )
            issues.append(warning(app, f"{later.service_field}.id", message))
        for e, i in group:
            marked.setdefault(id(e), set()).add(i)
    for entry in entries:
        want = marked.get(id(entry))
        if want is None and not entry.host_flagged:
            continue
        want = want or set()
        routes = tuple(
            r if r.host_ambiguous == (i in want) else replace(r, host_ambiguous=i in want)
            for i, r in enumerate(entry.routes)
        )
        if any(a is not b for a, b in zip(routes, entry.routes, strict=True)):
            entry.publish(routes)
    hosts: dict[str, Hit] = {key: e.routes[i] for key, (e, i) in first.items()}
    for key, group in shared.items():
        hosts[key] = tuple(e.routes[i] for e, i in group)
    return hosts


class SnapshotBuilder:
    """Builds successive snapshots of one source, re-resolving only what changed.

    An Application is resolved again only when its document or a Secret it looked up is no
    longer the same object, so a change to one file costs that file's Applications plus a pass
    over the indexes. Duplicates, namespaces and shared host labels are checked anew each time.
    """

    def __init__(self, *, secrets_namespace: str, load_cert: LoadCert) -> None:
        self.secrets_namespace = secrets_namespace
        self.resolved_count = 0
        """Applications resolved so far; tests use it to prove reuse."""
        self._load_cert = load_cert
        self._apps: dict[str, _Resolved] = {}
        self._certs: dict[tuple[bytes, bytes], ClientCert | str] = {}

    def build(
        self, apps: Iterable[AppDoc], secrets: Iterable[SecretDoc], issues: Sequence[Issue] = ()
    ) -> Snapshot:
        """Resolve every API entry against the Secrets; `issues` (from parsing) come first."""
        out = list(issues)
        counted: dict[str, SecretDoc] = {}
        namespace = self.secrets_namespace
        for secret in secrets:
            if secret.namespace is not None and secret.namespace != namespace:
                message = f"outside the secrets namespace '{namespace}', ignored"
                out.append(
                    Issue(
                        secret.location,
                        SECRET,
                        secret.name,
                        "metadata.namespace",
                        message,
                        "warning",
                    )
                )
            elif secret.name in counted:
                message = f"duplicate name, first defined in {counted[secret.name].location}"
                out.append(Issue(secret.location, SECRET, secret.name, "metadata.name", message))
            else:
                counted[secret.name] = secret
        previous = self._apps
        current: dict[str, _Resolved] = {}
        for app in apps:
            first = current.get(app.name)
            if first is not None:
                message = f"duplicate name, first defined in {first.app.location}"
                out.append(Issue(app.location, APPLICATION, app.name, "metadata.name", message))
                continue
            entry = previous.get(app.name)
            if entry is None or not entry.valid(app, counted):
                entry = _resolve(app, counted, self._certs, self._load_cert)
                self.resolved_count += 1
            current[app.name] = entry
            out += entry.issues
        entries = list(current.values())
        for entry in entries:
            out += entry.path_warnings
        for entry in entries:
            out += entry.compass_warnings
        hosts = _host_index(entries, out)
        paths: dict[_PathKey, Hit] = {}
        compass: dict[_CompassKey, Hit] = {}
        for entry in entries:
            paths.update(entry.path_hits)
            compass.update(entry.compass_hits)
        self._apps = current
        self._certs = {pem: self._certs[pem] for e in entries for pem in e.pems}
        index = _Index(paths, compass, hosts)
        routes = tuple(chain.from_iterable(e.routes for e in entries))
        return Snapshot(tuple(out), routes, len(entries), index)


def build_snapshot(
    apps: Iterable[AppDoc],
    secrets: Iterable[SecretDoc],
    *,
    secrets_namespace: str,
    load_cert: LoadCert,
    issues: Sequence[Issue] = (),
) -> Snapshot:
    """One snapshot from scratch (sources that keep no state between builds)."""
    builder = SnapshotBuilder(secrets_namespace=secrets_namespace, load_cert=load_cert)
    return builder.build(apps, secrets, issues)
