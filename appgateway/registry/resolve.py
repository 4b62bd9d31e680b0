"""One Application's API entries resolved against the Secrets: an API, or the per-API
configuration error a caller of that API gets (registry.md §6). [pure]

Everything a request will need from a Secret is decoded and checked here, once per snapshot:
credentials, client certificates (through the injected PEM loader), request parameters and
the CSRF endpoint; a problem names the field and the Secret, never a secret value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from appgateway import names, urls
from appgateway.errors import ConfigError
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
from appgateway.registry.parse import APPLICATION, AppDoc, EntryDoc, Issue, SecretDoc

LoadCert = Callable[[bytes, bytes], ClientCert]
"""PEM `crt`, `key` -> ClientCert; raises ValueError(short reason)."""


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


Hit = Route | tuple[Route, ...]  # one route, or the candidates of an ambiguous name


KNOWN_TYPES = ("Basic", "OAuth", "OAuthWithCert", "CertificateGen")

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_HEADER_VALUE = re.compile(r"[\r\n\x00]")


class _APIError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


_PENDING_CERT = ClientCert(b"", b"", "")  # replaced once the target URL has been checked


class Resolver:
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
        self.issues.append(warning(self.app, field, message))

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


def warning(app: AppDoc, field: str, message: str) -> Issue:
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
