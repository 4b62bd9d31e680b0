"""Authentication strategies: one interface, one factory.

A strategy is built once per API per registry snapshot. `apply` adds the credential to the
outbound headers and returns what it used (a token), so a 401/403 can invalidate exactly
that value and nothing another request has refreshed since.
"""

from __future__ import annotations

from typing import Protocol, assert_never

from appgateway.auth.basic import BasicStrategy
from appgateway.auth.certificate import CertificateStrategy, NoAuthStrategy
from appgateway.model import (
    BasicAuth,
    CertificateAuth,
    ClientCert,
    Credentials,
    Headers,
    NoAuth,
    OAuth,
    OAuthMTLS,
)

Applied = object | None
"""The credential value a strategy put on a request (None when nothing is cached)."""


class AuthStrategy(Protocol):
    async def apply(self, headers: Headers, *, authenticate: bool = True) -> Applied:
        """Add the credential (unless `authenticate` is False: an Access-Token override is
        in place) and any CSRF token; return what was used, for `invalidate`."""
        ...

    async def invalidate(self, applied: Applied) -> None: ...

    @property
    def client_cert(self) -> ClientCert | None: ...


class Unsupported:
    """OAuth flavours until the token client lands: a clear 500, never a silent bypass."""

    def __init__(self, kind: str) -> None:
        self._kind = kind

    async def apply(self, headers: Headers, *, authenticate: bool = True) -> Applied:
        from appgateway.errors import ConfigError

        raise ConfigError(f"credentials type {self._kind} is not supported yet")

    async def invalidate(self, applied: Applied) -> None:
        return None

    @property
    def client_cert(self) -> ClientCert | None:
        return None


def make_strategy(credentials: Credentials) -> AuthStrategy:
    match credentials:
        case NoAuth():
            return NoAuthStrategy()
        case BasicAuth():
            return BasicStrategy(credentials)
        case CertificateAuth():
            return CertificateStrategy(credentials.cert)
        case OAuth():
            return Unsupported("OAuth")
        case OAuthMTLS():
            return Unsupported("OAuthWithCert")
        case _:
            assert_never(credentials)
