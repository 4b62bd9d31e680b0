"""Immutable domain objects shared by routing, the pipeline and the registry.

Header blocks are kept as raw byte pairs because that is what the HTTP parser hands us
and what we write back; converting to str per request would cost more than any lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[bytes, bytes]]
"""Header fields in wire order, duplicates kept. Names keep the caller's case."""

ParamMap = tuple[tuple[str, tuple[str, ...]], ...]
"""A JSON `{name: [values]}` object from a Secret, in the order the JSON listed it."""


@dataclass(frozen=True, slots=True)
class ClientCert:
    """PEM key material presented in a TLS handshake.

    `fingerprint` is a digest of both PEM blocks; pools and SSL contexts are keyed by it so
    that the raw key never becomes part of a dictionary key or a log line.
    """

    crt_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    fingerprint: str


@dataclass(frozen=True, slots=True)
class NoAuth:
    pass


@dataclass(frozen=True, slots=True)
class BasicAuth:
    username: str = field(repr=False)
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class OAuth:
    token_url: str
    client_id: str = field(repr=False)
    client_secret: str = field(repr=False)
    headers: ParamMap = ()
    query: ParamMap = ()


@dataclass(frozen=True, slots=True)
class OAuthMTLS:
    token_url: str
    client_id: str = field(repr=False)
    cert: ClientCert
    headers: ParamMap = ()
    query: ParamMap = ()


@dataclass(frozen=True, slots=True)
class CertificateAuth:
    cert: ClientCert


Credentials = NoAuth | BasicAuth | OAuth | OAuthMTLS | CertificateAuth


@dataclass(frozen=True, slots=True)
class RequestParameters:
    """Extra headers and query parameters added to every API request."""

    headers: ParamMap = ()
    query: ParamMap = ()


@dataclass(frozen=True, slots=True)
class Target:
    """The parsed `targetUrl` of an API entry.

    `path` is the raw (escaped) path as written in the manifest, `query` the raw query
    without `?`. `authority` is the `Host` header value: host plus `:port` only when the
    URL names a port. `port` is always filled in (80/443 by default).
    """

    scheme: str
    host: str
    port: int
    authority: str
    path: str
    query: str

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.authority}"


@dataclass(frozen=True, slots=True)
class APIRef:
    """Names of one routable entry, used in logs, metrics and error messages."""

    app: str
    service: str  # normalised displayName: the path segment
    entry: str  # normalised entry name: the Compass segment
    service_name: str  # services[].name, falling back to displayName (error messages)
    service_id: str
    display_name: str
    entry_name: str


@dataclass(frozen=True, slots=True)
class API:
    """One routable entry, fully resolved against its Secrets for one registry snapshot."""

    ref: APIRef
    target_url: str
    target: Target
    credentials: Credentials
    csrf_url: str | None
    params: RequestParameters
    skip_verify: bool
    encode_url: bool
    confine_path: bool = False  # the Application's CONFINE_PATH annotation
