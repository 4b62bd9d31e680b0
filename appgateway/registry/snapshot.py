"""Validated documents -> an immutable Snapshot: every API entry resolved once, plus indexes.

All lookups a request needs are dictionary hits prepared here, so routing costs the same with
ten Applications or ten thousand. Resolution failures become per-API configuration errors
(registry.md §6) rather than build failures: one broken Secret must not take down the others.
A SnapshotBuilder carries each Application's resolved routes over to the next snapshot while
its inputs are unchanged, so a one-file change does not resolve ten thousand others again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from typing import TypeVar

from appgateway import names, urls
from appgateway.errors import BadRequest, ConfigError, GatewayError, NotFound
from appgateway.headers import is_ignored_parameter_header
from appgateway.model import (
    API,
    APIRef,
    BasicAuth,
    CertificateAuth,
    ClientCert,
    Credentials,
    NoAuth,
    OAuth,
    OAuthMTLS,
    ParamMap,
    RequestParameters,
)
from appgateway.registry.parse import APPLICATION, SECRET, AppDoc, EntryDoc, Issue, SecretDoc

LoadCert = Callable[[bytes, bytes], ClientCert]
"""PEM `crt`, `key` -> ClientCert; raises ValueError(short reason)."""

KNOWN_TYPES = ("Basic", "OAuth", "OAuthWithCert", "CertificateGen")

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_HEADER_VALUE = re.compile(r"[\r\n\x00]")


class APIConfigError(ConfigError):
    """A 500 for one API; `ref` lets the gateway log and count it under its app and service."""

    def __init__(self, message: str, ref: APIRef) -> None:
        super().__init__(message)
        self.ref = ref


@dataclass(frozen=True, slots=True)
class Route:
    """One API entry with everything reports need; `result()` is what a request gets."""

    ref: APIRef
    location: str
    field: str  # `spec.services[i].entries[j]`
    target_url: str
    api: API | None
    error: str | None  # the configuration error message when `api` is None
    host_label: str | None  # None: the service has no id
    path_ambiguous: bool = False
    compass_ambiguous: bool = False
    host_ambiguous: bool = False

    @property
    def service_field(self) -> str:
        return self.field.partition(".entries")[0]

    def result(self) -> API | APIConfigError:
        """A fresh error object per call, so callers may raise it without sharing tracebacks."""
        if self.api is not None:
            return self.api
        return APIConfigError(self.error or "", self.ref)


_Hit = Route | tuple[Route, ...]  # one route, or the candidates of an ambiguous name


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

    paths: dict[tuple[str, str], _Hit]
    compass: dict[tuple[str, str, str], _Hit]
    hosts: dict[str, _Hit]  # ASCII-lower-cased labels


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
        hit: _Hit | None
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


class _APIError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


_PENDING_CERT = ClientCert(b"", b"", "")  # replaced once the target URL has been checked


class _Resolver:
    """Resolves the entries of one Application, noting every input the result depends on."""

    def __init__(
        self,
        app: AppDoc,
        secrets: Mapping[str, SecretDoc],
        certs: dict[tuple[bytes, bytes], ClientCert | str],
        load_cert: LoadCert,
    ) -> None:
        self.app = app
        self.secrets = secrets
        self.certs = certs
        self.load_cert = load_cert
        self.issues: list[Issue] = []
        self.looked_up: dict[str, SecretDoc | None] = {}
        self.pems: list[tuple[bytes, bytes]] = []

    def warn(self, field: str, message: str) -> None:
        self.issues.append(_warning(self.app, field, message))

    def route(self, ref: APIRef, entry: EntryDoc) -> Route:
        app = self.app
        label = names.host_label(app.name, ref.service_id) if ref.service_id else None
        try:
            api = self._api(entry, ref)
        except _APIError as exc:
            self.issues.append(Issue(app.location, APPLICATION, app.name, exc.field, exc.message))
            return Route(ref, app.location, entry.field, entry.target_url, None, exc.message, label)
        return Route(ref, app.location, entry.field, entry.target_url, api, None, label)

    def _api(self, entry: EntryDoc, ref: APIRef) -> API:
        # Kyma's order: Secrets first, then the target URL, then the certificate.
        prefix = f"failed to read API for {ref.service_name} service, "
        doc = entry.credentials
        field = f"{entry.field}.credentials"
        credentials: Credentials = NoAuth()
        csrf_url: str | None = None
        pem: tuple[bytes, bytes] | None = None
        if not doc.empty:
            if doc.type not in KNOWN_TYPES:
                message = f"unknown type '{doc.type}': requests are sent without auth"
                self.warn(f"{field}.type", message)
                if doc.csrf_url is not None:
                    self.warn(f"{field}.csrfInfo", "ignored with an unknown credentials type")
            elif doc.csrf_url:
                csrf_url = doc.csrf_url
            if not doc.secret_name:
                raise _APIError(f"{field}.secretName", prefix + "credentials.secretName is empty")
            if doc.type in ("OAuth", "OAuthWithCert") and not doc.authentication_url:
                message = prefix + "credentials.authenticationUrl is empty"
                raise _APIError(f"{field}.authenticationUrl", message)
            secret = self._secret(doc.secret_name, f"{field}.secretName", prefix)
            credentials, pem = self._credentials(
                doc.type, doc.authentication_url, secret, f"{field}.secretName", prefix
            )
        params = RequestParameters()
        if entry.request_parameters_secret_name:
            params = self._params(entry, prefix)
        target_field = f"{entry.field}.targetUrl"
        try:
            target = urls.parse_target(entry.target_url)
        except urls.TargetURLError as exc:
            shown = urls.redact(entry.target_url)
            message = f"failed to parse target url '{shown}': '{exc.reason}'"
            raise _APIError(target_field, message) from None
        if _has_userinfo(entry.target_url):
            self.warn(target_field, "user-info is ignored")
        if pem is not None:
            credentials = self._with_cert(credentials, pem, f"{field}.secretName")
        return API(
            ref=ref,
            target_url=entry.target_url,
            target=target,
            credentials=credentials,
            csrf_url=csrf_url,
            params=params,
            skip_verify=self.app.skip_verify,
            encode_url=self.app.encode_url,
            confine_path=self.app.confine_path,
        )

    def _secret(self, name: str, field: str, prefix: str) -> SecretDoc:
        secret = self.secrets.get(name)
        self.looked_up[name] = secret
        if secret is None:
            raise _APIError(field, prefix + f"secret '{name}' not found")
        return secret

    def _credentials(
        self, kind: str, token_url: str, secret: SecretDoc, field: str, prefix: str
    ) -> tuple[Credentials, tuple[bytes, bytes] | None]:
        def value(key: str) -> bytes:
            data = secret.data.get(key)
            if data is None:
                self.warn(field, f"Secret '{secret.name}' has no key '{key}': read as empty")
                return b""
            return data

        def text(key: str) -> str:
            return value(key).decode("utf-8", "replace")

        if kind == "Basic":
            return BasicAuth(text("username"), text("password")), None
        if kind == "CertificateGen":
            return CertificateAuth(_PENDING_CERT), (value("crt"), value("key"))
        if kind not in ("OAuth", "OAuthWithCert"):
            return NoAuth(), None
        client_id = text("clientId")
        client_secret = text("clientSecret") if kind == "OAuth" else ""
        headers = _param_map(secret.data.get("headers"), "headers", field, prefix)
        _check_headers(headers, field, prefix)
        query = _param_map(secret.data.get("queryParameters"), "query parameters", field, prefix)
        if kind == "OAuth":
            return OAuth(token_url, client_id, client_secret, headers, query), None
        pem = (value("crt"), value("key"))
        return OAuthMTLS(token_url, client_id, _PENDING_CERT, headers, query), pem

    def _params(self, entry: EntryDoc, prefix: str) -> RequestParameters:
        field = f"{entry.field}.requestParametersSecretName"
        secret = self._secret(entry.request_parameters_secret_name, field, prefix)
        headers = _param_map(secret.data.get("headers"), "headers", field, prefix)
        _check_headers(headers, field, prefix)
        kept: list[tuple[str, tuple[str, ...]]] = []
        for name, values in headers:
            if is_ignored_parameter_header(name):
                self.warn(field, f"header '{name}' is set by the gateway and ignored")
            else:
                kept.append((name, values))
        query = _param_map(secret.data.get("queryParameters"), "query parameters", field, prefix)
        return RequestParameters(tuple(kept), query)

    def _with_cert(self, creds: Credentials, pem: tuple[bytes, bytes], field: str) -> Credentials:
        self.pems.append(pem)
        cached = self.certs.get(pem)
        if cached is None:
            try:
                cached = self.load_cert(*pem)
            except ValueError as exc:
                cached = str(exc)
            self.certs[pem] = cached
        if isinstance(creds, OAuthMTLS):
            if isinstance(cached, str):
                message = f"Failed to get token: Failed to prepare certificate, {cached}"
                raise _APIError(field, message)
            return replace(creds, cert=cached)
        if isinstance(cached, str):
            raise _APIError(field, f"Failed to prepare certificate, {cached}")
        return CertificateAuth(cached)


def _warning(app: AppDoc, field: str, message: str) -> Issue:
    return Issue(app.location, APPLICATION, app.name, field, message, "warning")


def _has_userinfo(url: str) -> bool:
    """The same reading of the authority as `urls.parse_target`."""
    _, sep, after = url.partition("://")
    authority = after.partition("#")[0].partition("?")[0].partition("/")[0]
    return bool(sep) and "@" in authority


def _param_map(raw: bytes | None, what: str, field: str, prefix: str) -> ParamMap:
    """A Secret's `headers`/`queryParameters` JSON: `{name: [strings]}`; absent or blank = none."""

    def bad(reason: str) -> _APIError:
        return _APIError(field, f"{prefix}Failed to unmarshal {what}, {reason}")

    if raw is None:
        return ()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("the value is not UTF-8 text") from None
    if not text.strip():
        return ()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise bad("invalid JSON: nested too deeply") from None
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise bad("want a JSON object that maps names to arrays of strings")
    out: list[tuple[str, tuple[str, ...]]] = []
    for name, values in value.items():
        if values is None:
            continue
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise bad(f"the value of '{name}' is not an array of strings")
        out.append((name, tuple(values)))
    return tuple(out)


def _check_headers(headers: ParamMap, field: str, prefix: str) -> None:
    """Reject what would corrupt the wire, before any request is made."""
    for name, values in headers:
        reason = None
        if not _HEADER_NAME.fullmatch(name):
            reason = f"invalid header name '{name}'"
        elif any(_BAD_HEADER_VALUE.search(v) for v in values):
            reason = f"header '{name}' has a value with CR, LF or NUL"
        if reason is not None:
            raise _APIError(field, f"{prefix}Failed to unmarshal headers, {reason}")


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
    path_hits: tuple[tuple[_PathKey, _Hit], ...] = ()
    compass_hits: tuple[tuple[_CompassKey, _Hit], ...] = ()
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


def _hit(routes: tuple[Route, ...], at: tuple[int, ...]) -> _Hit:
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
    resolver = _Resolver(app, secrets, certs, load_cert)
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
            path_warnings.append(_warning(app, f"{firsts[1].service_field}.displayName", message))
    compass_warnings: list[Issue] = []
    for _, at in compass_groups:
        if len(at) > 1:
            a, b = routes[at[0]].ref, routes[at[1]].ref
            message = (
                f"'{b.entry_name}' normalises to '{b.entry}' like '{a.entry_name}' in "
                f"'{a.display_name}': Compass requests get 400"
            )
            compass_warnings.append(_warning(app, f"{routes[at[1]].field}.name", message))
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


def _host_index(entries: Sequence[_Resolved], issues: list[Issue]) -> dict[str, _Hit]:
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
            issues.append(_warning(app, f"{later.service_field}.id", message))
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
    hosts: dict[str, _Hit] = {key: e.routes[i] for key, (e, i) in first.items()}
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
        paths: dict[_PathKey, _Hit] = {}
        compass: dict[_CompassKey, _Hit] = {}
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
