from __future__ import annotations

import pytest

from appgateway.auth import AuthStrategy, connection_cert, make_strategy, retain
from appgateway.auth.basic import BasicStrategy
from appgateway.auth.certificate import CertificateStrategy, NoAuthStrategy
from appgateway.auth.csrf import CsrfStrategy
from appgateway.auth.deps import AuthDeps
from appgateway.auth.flows import CsrfToken
from appgateway.auth.oauth import OAuthStrategy
from appgateway.model import (
    API,
    BasicAuth,
    CertificateAuth,
    ClientCert,
    Credentials,
    NoAuth,
    OAuth,
    OAuthMTLS,
)
from tests.auth.conftest import make_api

CERT = ClientCert(crt_pem=b"crt", key_pem=b"key", fingerprint="fp")
OAUTH = OAuth("https://auth.example/token", "id", "secret")
MTLS = OAuthMTLS("https://auth.example:8443/token", "id", CERT)
CSRF = "https://erp.example/csrf"


@pytest.mark.parametrize(
    ("credentials", "csrf_url", "kind", "inner", "cert"),
    [
        (NoAuth(), None, NoAuthStrategy, None, None),
        (NoAuth(), CSRF, NoAuthStrategy, None, None),  # CSRF needs a known type
        (BasicAuth("a", "b"), None, BasicStrategy, None, None),
        (BasicAuth("a", "b"), CSRF, CsrfStrategy, BasicStrategy, None),
        (CertificateAuth(CERT), None, CertificateStrategy, None, CERT),
        (CertificateAuth(CERT), CSRF, CsrfStrategy, CertificateStrategy, CERT),
        (OAUTH, None, OAuthStrategy, None, None),
        (OAUTH, CSRF, CsrfStrategy, OAuthStrategy, None),
        (MTLS, None, OAuthStrategy, None, None),  # the API request gets no certificate
        (MTLS, CSRF, CsrfStrategy, OAuthStrategy, None),
    ],
)
def test_make_strategy(
    deps: AuthDeps,
    credentials: Credentials,
    csrf_url: str | None,
    kind: type[AuthStrategy],
    inner: type[AuthStrategy] | None,
    cert: ClientCert | None,
) -> None:
    strategy = make_strategy(make_api(credentials, csrf_url), deps)
    assert type(strategy) is kind
    if inner is not None:
        assert isinstance(strategy, CsrfStrategy)
        assert type(strategy.inner) is inner
    assert strategy.client_cert == cert
    assert connection_cert(credentials) == cert


def cache_keys(api: API, deps: AuthDeps) -> tuple[bytes | None, bytes | None]:
    strategy = make_strategy(api, deps)
    csrf = strategy.key if isinstance(strategy, CsrfStrategy) else None
    inner = strategy.inner if isinstance(strategy, CsrfStrategy) else strategy
    token = inner.key if isinstance(inner, OAuthStrategy) else None
    return token, csrf


def hits(deps: AuthDeps, cache: str) -> float:
    labels = {"cache": cache, "result": "hit"}
    return deps.metrics.registry.get_sample_value("appgateway_cache_lookups_total", labels) or 0.0


async def fill(deps: AuthDeps, apis: list[API]) -> None:
    async def token() -> tuple[str, float | None]:
        return "t", None

    async def csrf() -> tuple[CsrfToken, float | None]:
        return CsrfToken(b"c", ()), None

    for api in apis:
        token_key, csrf_key = cache_keys(api, deps)
        if token_key is not None:
            await deps.token_cache.get(token_key, token)
        if csrf_key is not None:
            await deps.csrf_cache.get(csrf_key, csrf)


async def test_retain_drops_entries_no_api_uses(deps: AuthDeps) -> None:
    kept = [
        make_api(OAUTH, CSRF),
        make_api(MTLS, skip_verify=True),
        make_api(BasicAuth("a", "b"), "http://erp.example/csrf"),
        make_api(CertificateAuth(CERT), CSRF),
        make_api(NoAuth(), CSRF),
        make_api(OAuth("not a url", "id", "secret")),
    ]
    gone = [
        make_api(OAuth(OAUTH.token_url, "id", "rotated"), CSRF),
        make_api(BasicAuth("a", "old"), "http://erp.example/csrf"),
    ]
    await fill(deps, kept + gone)
    assert (len(deps.token_cache), len(deps.csrf_cache)) == (4, 5)

    pools = retain(deps, kept)
    assert (len(deps.token_cache), len(deps.csrf_cache)) == (3, 3)
    assert pools == {
        ("https", "auth.example", 443, True, ""),
        ("https", "auth.example", 8443, False, "fp"),
        ("https", "erp.example", 443, True, ""),
        ("http", "erp.example", 80, True, ""),
        ("https", "erp.example", 443, True, "fp"),
    }
    await fill(deps, kept)  # every kept entry is still there: all hits
    assert hits(deps, "token") == 3
    assert hits(deps, "csrf") == 3
    retain(deps, [])
    assert (len(deps.token_cache), len(deps.csrf_cache)) == (0, 0)
