"""Authentication strategies: one interface, one factory.

A strategy is built once per API per registry snapshot. `apply` adds the credential to the
outbound headers and returns what it used (a token), so a 401/403 can invalidate exactly
that value and nothing another request has refreshed since.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol, assert_never

from appgateway.auth import flows
from appgateway.auth.basic import BasicStrategy
from appgateway.auth.certificate import CertificateStrategy, NoAuthStrategy
from appgateway.auth.csrf import CsrfStrategy
from appgateway.auth.deps import AuthDeps, make_deps
from appgateway.auth.oauth import OAuthStrategy
from appgateway.flow import Pending
from appgateway.model import (
    API,
    BasicAuth,
    CertificateAuth,
    ClientCert,
    Credentials,
    Headers,
    NoAuth,
    OAuth,
    OAuthMTLS,
)
from appgateway.upstream import PoolKey, pool_key
from appgateway.urls import TargetURLError, parse_target

__all__ = [
    "Applied",
    "AuthDeps",
    "AuthStrategy",
    "connection_cert",
    "make_deps",
    "make_strategy",
    "retain",
]

Applied = object | None
"""The credential value a strategy put on a request (None when nothing is cached)."""


class AuthStrategy(Protocol):
    def apply(self, headers: Headers, *, authenticate: bool = True) -> Applied | Pending[Applied]:
        """Add the credential (unless `authenticate` is False: an Access-Token override is
        in place) and any CSRF token; return what was used, for `invalidate`.

        With warm caches this finishes at once; otherwise it returns a `Pending` (flow.py)
        whose coroutine fetches and then applies, for the request's prelude to await.
        """
        ...

    def invalidate(self, applied: Applied) -> None:
        """Compare-and-invalidate what `apply` returned (a 401/403 answered it)."""
        ...

    @property
    def client_cert(self) -> ClientCert | None: ...


def connection_cert(credentials: Credentials) -> ClientCert | None:
    """The certificate the API's own connections present: CertificateGen only.

    Equal to `make_strategy(...).client_cert`, without building a strategy, for code that
    only needs pool keys.
    """
    return credentials.cert if isinstance(credentials, CertificateAuth) else None


def make_strategy(api: API, deps: AuthDeps) -> AuthStrategy:
    """The strategy of `api.credentials`, wrapped for CSRF when the API has an endpoint."""
    credentials = api.credentials
    basic: bytes | None = None
    oauth: OAuthStrategy | None = None
    inner: AuthStrategy
    match credentials:
        case NoAuth():
            return NoAuthStrategy()  # CSRF needs a known credentials type
        case BasicAuth():
            inner = BasicStrategy(credentials)
            basic = flows.basic_authorization(credentials.username, credentials.password)
        case CertificateAuth():
            inner = CertificateStrategy(credentials.cert)
        case OAuth() | OAuthMTLS():
            inner = oauth = OAuthStrategy(credentials, skip_verify=api.skip_verify, deps=deps)
        case _:
            assert_never(credentials)
    keys = _cache_keys(api, deps.hmac_key)
    if api.csrf_url is None or keys.csrf is None:
        return inner
    return CsrfStrategy(
        inner,
        url=api.csrf_url,
        key=keys.csrf,
        skip_verify=api.skip_verify,
        deps=deps,
        basic=basic,
        oauth=oauth,
    )


class _Keys(NamedTuple):
    token: bytes | None
    csrf: bytes | None


def _cache_keys(api: API, hmac_key: bytes) -> _Keys:
    """The token- and CSRF-cache keys `api` uses (behaviour.md §7)."""
    credentials = api.credentials
    token: bytes | None = None
    identity: bytes | None
    match credentials:
        case NoAuth():
            identity = None
        case BasicAuth():
            identity = flows.basic_identity(hmac_key, credentials.username, credentials.password)
        case CertificateAuth():
            identity = flows.cert_identity(hmac_key, credentials.cert)
        case OAuth() | OAuthMTLS():
            identity = token = flows.token_cache_key(hmac_key, credentials)
        case _:
            assert_never(credentials)
    csrf = None
    if api.csrf_url is not None and identity is not None:
        csrf = flows.csrf_cache_key(hmac_key, api.csrf_url, identity)
    return _Keys(token, csrf)


def _pool_key(url: str, verify: bool, cert: ClientCert | None) -> PoolKey | None:
    try:
        target = parse_target(url)
    except TargetURLError:
        return None
    return pool_key(target, verify, cert.fingerprint if cert is not None else "")


def retain(deps: AuthDeps, apis: Iterable[API]) -> set[PoolKey]:
    """Drop cached tokens and CSRF tokens that no API in `apis` uses (behaviour.md §7).

    A rotated secret or certificate changes the key, so its old token goes at once. Returns
    the upstream pool keys of the token and CSRF endpoints, for the caller to keep alive
    alongside the target pools.
    """
    token_keys: set[bytes] = set()
    csrf_keys: set[bytes] = set()
    pools: set[PoolKey | None] = set()
    for api in apis:
        keys = _cache_keys(api, deps.hmac_key)
        verify = not api.skip_verify
        credentials = api.credentials
        if keys.token is not None and isinstance(credentials, OAuth | OAuthMTLS):
            token_keys.add(keys.token)
            cert = credentials.cert if isinstance(credentials, OAuthMTLS) else None
            pools.add(_pool_key(credentials.token_url, verify, cert))
        if keys.csrf is not None and api.csrf_url is not None:
            csrf_keys.add(keys.csrf)
            cert = credentials.cert if isinstance(credentials, CertificateAuth) else None
            pools.add(_pool_key(api.csrf_url, verify, cert))
    deps.token_cache.retain(token_keys)
    deps.csrf_cache.retain(csrf_keys)
    return {key for key in pools if key is not None}
