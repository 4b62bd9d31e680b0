from __future__ import annotations

import asyncio
import base64
import logging
import socket

import pytest

from appgateway.auth.deps import AuthDeps
from appgateway.auth.oauth import BearerToken, OAuthStrategy
from appgateway.errors import GatewayError, TokenError, TokenErrorMTLS
from appgateway.flow import settle
from appgateway.model import Headers, OAuth, OAuthMTLS
from tests.auth.conftest import FakeClock, Pki, Seen, Server, TokenIssuer


def oauth(server: Server, path: str = "/token", **kw: object) -> OAuth:
    return OAuth(server.url(path), "orders-client", "s&cret", **kw)  # type: ignore[arg-type]


def count(deps: AuthDeps, metric: str, **labels: str) -> float:
    value = deps.metrics.registry.get_sample_value(metric, labels)
    return 0.0 if value is None else value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_exact_token_request_and_bearer(server: Server, deps: AuthDeps) -> None:
    server.routes["/token"] = TokenIssuer()
    credentials = oauth(
        server,
        "/token?tenant=1",
        headers=(("X-Tenant", ("acme",)), ("Content-Type", ("text/plain",))),
        query=(("resource", ("urn:erp",)), ("tenant", ("2",))),
    )
    strategy = OAuthStrategy(credentials, skip_verify=False, deps=deps)
    headers: Headers = [(b"X-Request-Id", b"r1"), (b"authorization", b"Basic caller")]
    applied = await settle(strategy.apply(headers))
    assert headers == [(b"X-Request-Id", b"r1"), (b"Authorization", b"Bearer t1")]
    assert applied == BearerToken("t1", fetched=True)
    body = b"client_id=orders-client&client_secret=s%26cret&grant_type=client_credentials"
    [seen] = server.seen
    assert (seen.method, seen.path, seen.body) == (
        "POST",
        "/token?tenant=1&resource=urn%3Aerp",
        body,
    )
    assert seen.headers == [
        (b"Host", server.authority),
        (b"Authorization", b"Basic " + base64.b64encode(b"orders-client:s&cret")),
        (b"Content-Type", b"application/x-www-form-urlencoded"),
        (b"X-Tenant", b"acme"),
        (b"Content-Length", str(len(body)).encode()),
    ]
    assert not any(name.lower() == b"user-agent" for name, _ in seen.headers)
    assert strategy.client_cert is None


async def test_token_is_reused(server: Server, deps: AuthDeps) -> None:
    server.routes["/token"] = TokenIssuer()
    strategy = OAuthStrategy(oauth(server), skip_verify=False, deps=deps)
    results = []
    for _ in range(10):
        headers: Headers = []
        results.append(await settle(strategy.apply(headers)))
        assert headers == [(b"Authorization", b"Bearer t1")]
    assert len(server.seen) == 1  # measured: 10 applies -> 1 token request
    assert results[0] == BearerToken("t1", fetched=True)
    assert results[1:] == [BearerToken("t1", fetched=False)] * 9
    assert count(deps, "appgateway_cache_lookups_total", cache="token", result="miss") == 1
    assert count(deps, "appgateway_cache_lookups_total", cache="token", result="hit") == 9
    assert count(deps, "appgateway_token_fetches_total", flavour="oauth", result="ok") == 1


async def test_concurrent_cold_applies_make_one_request(server: Server, deps: AuthDeps) -> None:
    issuer = server.routes["/token"] = TokenIssuer()
    issuer.delay = 0.05
    strategy = OAuthStrategy(oauth(server), skip_verify=False, deps=deps)
    header_lists: list[Headers] = [[] for _ in range(50)]
    applied = await asyncio.gather(*(settle(strategy.apply(h)) for h in header_lists))
    assert len(server.seen) == 1  # measured: 50 concurrent cold applies -> 1 token request
    assert applied == [BearerToken("t1", fetched=True)] * 50
    assert all(h == [(b"Authorization", b"Bearer t1")] for h in header_lists)


async def test_strategies_with_equal_credentials_share_tokens(
    server: Server, deps: AuthDeps
) -> None:
    server.routes["/token"] = TokenIssuer()
    first = OAuthStrategy(oauth(server), skip_verify=False, deps=deps)
    second = OAuthStrategy(oauth(server), skip_verify=True, deps=deps)
    rotated = OAuthStrategy(
        OAuth(server.url("/token"), "orders-client", "rotated"), skip_verify=False, deps=deps
    )
    assert await settle(first.apply([])) == BearerToken("t1", True)
    assert await settle(second.apply([])) == BearerToken("t1", False)
    assert await settle(rotated.apply([])) == BearerToken("t2", True)
    assert len(server.seen) == 2


@pytest.mark.parametrize(
    ("expires_in", "still_valid", "renewed"),
    [
        (5, 2.9, 3.0),  # behaviour.md §7: 5 -> 3 s
        (3600, 3239.0, 3240.0),  # 3600 -> 3240 s
        (None, 269.0, 270.0),  # absent: --token-default-ttl (300 s in the fixture) -> 270 s
    ],
)
async def test_renewal_after_expiry(
    server: Server,
    deps: AuthDeps,
    clock: FakeClock,
    expires_in: int | None,
    still_valid: float,
    renewed: float,
) -> None:
    server.routes["/token"] = TokenIssuer(expires_in)
    strategy = OAuthStrategy(oauth(server), skip_verify=False, deps=deps)
    start = clock.now
    assert await settle(strategy.apply([])) == BearerToken("t1", True)
    clock.now = start + still_valid
    assert await settle(strategy.apply([])) == BearerToken("t1", False)
    clock.now = start + renewed
    assert await settle(strategy.apply([])) == BearerToken("t2", True)
    assert len(server.seen) == 2


async def test_short_lifetime_serves_only_its_request(server: Server, deps: AuthDeps) -> None:
    server.routes["/token"] = TokenIssuer(expires_in=2)  # 2 - max(2, 0.2) = 0
    strategy = OAuthStrategy(oauth(server), skip_verify=False, deps=deps)
    assert await settle(strategy.apply([])) == BearerToken("t1", True)
    assert await settle(strategy.apply([])) == BearerToken("t2", True)


async def test_invalidate_then_refetch(server: Server, deps: AuthDeps) -> None:
    server.routes["/token"] = TokenIssuer()
    strategy = OAuthStrategy(oauth(server), skip_verify=False, deps=deps)
    old = await settle(strategy.apply([]))
    # Twenty concurrent 401s for the same token: one refetch.
    for _ in range(20):
        strategy.invalidate(old)
    headers: Headers = [(b"Authorization", b"Bearer t1")]
    assert await settle(strategy.apply(headers)) == BearerToken("t2", True)
    assert headers == [(b"Authorization", b"Bearer t2")]
    strategy.invalidate(old)  # a late 401 for t1 leaves t2 alone
    strategy.invalidate(None)
    assert await settle(strategy.apply([])) == BearerToken("t2", False)
    assert len(server.seen) == 2


async def test_access_token_override_fetches_nothing(server: Server, deps: AuthDeps) -> None:
    server.routes["/token"] = TokenIssuer()
    strategy = OAuthStrategy(oauth(server), skip_verify=False, deps=deps)
    headers: Headers = [(b"Authorization", b"Bearer from-caller")]
    assert await settle(strategy.apply(headers, authenticate=False)) is None
    assert headers == [(b"Authorization", b"Bearer from-caller")]
    assert server.seen == []


async def _failure(
    server: Server, deps: AuthDeps, mtls: bool, pki: Pki, url: str | None = None
) -> GatewayError:
    token_url = url or server.url("/token?secret=q")
    credentials: OAuth | OAuthMTLS
    if mtls:
        credentials = OAuthMTLS(token_url, "orders-client", pki.client.client_cert())
    else:
        credentials = OAuth(token_url, "orders-client", "s&cret")
    strategy = OAuthStrategy(credentials, skip_verify=False, deps=deps)
    with pytest.raises(GatewayError) as info:
        await settle(strategy.apply([]))
    return info.value


def _status(body: bytes) -> TokenIssuer:
    issuer = TokenIssuer()
    issuer.body = body
    return issuer


@pytest.mark.parametrize("mtls", [False, True], ids=["oauth", "oauth-mtls"])
@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (401, b"", "incorrect response code '401' while getting token from {url}"),
        (500, b"oops", "incorrect response code '500' while getting token from {url}"),
        (302, b"", "incorrect response code '302' while getting token from {url}"),
        (
            200,
            b"not json",
            "failed to unmarshal token response body: invalid JSON: Expecting value at offset 0",
        ),
        (
            200,
            b'{"access_token":""}',
            "failed to unmarshal token response body: access_token is empty",
        ),
        (
            200,
            b'{"access_token":"a","expires_in":"60"}',
            "failed to unmarshal token response body: expires_in is not an integer",
        ),
    ],
)
async def test_failures(
    server: Server, deps: AuthDeps, pki: Pki, mtls: bool, status: int, body: bytes, message: str
) -> None:
    issuer = server.routes["/token"] = TokenIssuer()
    issuer.status, issuer.body = status, body
    error = await _failure(server, deps, mtls, pki)
    expected = message.format(url=server.url("/token"))
    if mtls:
        assert isinstance(error, TokenErrorMTLS)
        assert (error.status, error.message) == (500, "Failed to get token: " + expected)
    else:
        assert isinstance(error, TokenError)
        assert (error.status, error.message) == (502, expected)
    assert len(server.seen) == 1  # a redirect is not followed
    flavour = "oauth-mtls" if mtls else "oauth"
    assert count(deps, "appgateway_token_fetches_total", flavour=flavour, result="error") == 1


@pytest.mark.parametrize("mtls", [False, True], ids=["oauth", "oauth-mtls"])
async def test_connection_refused(server: Server, deps: AuthDeps, pki: Pki, mtls: bool) -> None:
    url = f"http://127.0.0.1:{closed_port()}/token?x=secret"
    error = await _failure(server, deps, mtls, pki, url)
    message = f"failed to make a request to '{url.partition('?')[0]}': connection refused"
    assert error.message == ("Failed to get token: " + message if mtls else message)
    assert error.status == (500 if mtls else 502)


async def test_timeout(server: Server, deps: AuthDeps, pki: Pki) -> None:
    issuer = server.routes["/token"] = TokenIssuer()
    issuer.delay = 5.0
    error = await _failure(server, deps, False, pki)
    assert error.message == (
        f"failed to make a request to '{server.url('/token')}': timeout after 1s"
    )
    assert error.status == 502


async def test_failure_is_not_cached(server: Server, deps: AuthDeps) -> None:
    issuer = server.routes["/token"] = TokenIssuer()
    issuer.status = 503
    strategy = OAuthStrategy(oauth(server), skip_verify=False, deps=deps)
    with pytest.raises(TokenError):
        await settle(strategy.apply([]))
    issuer.status = 200
    assert await settle(strategy.apply([])) == BearerToken("t1", True)
    assert len(server.seen) == 2


async def test_bad_token_url_is_a_request_failure(deps: AuthDeps) -> None:
    strategy = OAuthStrategy(OAuth("ftp://h/token", "i", "s"), skip_verify=False, deps=deps)
    with pytest.raises(TokenError) as info:
        await settle(strategy.apply([]))
    assert (
        info.value.message
        == "failed to make a request to 'ftp://h/token': unsupported scheme \"ftp\""
    )


async def _mtls_token(server: Server, deps: AuthDeps, pki: Pki, verify: bool) -> Seen:
    server.routes["/token"] = TokenIssuer()
    credentials = OAuthMTLS(server.url("/token"), "orders client", pki.client.client_cert())
    strategy = OAuthStrategy(credentials, skip_verify=not verify, deps=deps)
    headers: Headers = []
    assert await settle(strategy.apply(headers)) == BearerToken("t1", True)
    assert headers == [(b"Authorization", b"Bearer t1")]
    assert strategy.client_cert is None  # the API request gets no client certificate
    [seen] = server.seen
    return seen


async def test_mtls_token_request_presents_the_certificate(
    mtls_server: Server, deps: AuthDeps, pki: Pki
) -> None:
    seen = await _mtls_token(mtls_server, deps, pki, verify=False)
    assert seen.peer_cn == "client"
    body = b"client_id=orders+client&grant_type=client_credentials"
    assert seen.body == body
    assert seen.headers == [
        (b"Host", mtls_server.authority),
        (b"Content-Type", b"application/x-www-form-urlencoded"),
        (b"Content-Length", str(len(body)).encode()),
    ]


async def test_mtls_with_server_verification(
    mtls_server: Server, deps: AuthDeps, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    seen = await _mtls_token(mtls_server, deps, pki, verify=True)
    assert seen.peer_cn == "client"


async def test_mtls_untrusted_server(mtls_server: Server, deps: AuthDeps, pki: Pki) -> None:
    mtls_server.routes["/token"] = TokenIssuer()
    error = await _failure(mtls_server, deps, True, pki)
    assert isinstance(error, TokenErrorMTLS)
    assert error.message.startswith(
        f"Failed to get token: failed to make a request to '{mtls_server.url('/token')}': "
        "TLS handshake failed: certificate verify failed"
    )
    assert mtls_server.seen == []


async def test_mtls_rejected_client_certificate(
    mtls_server: Server, deps: AuthDeps, pki: Pki
) -> None:
    mtls_server.routes["/token"] = TokenIssuer()
    credentials = OAuthMTLS(mtls_server.url("/token"), "c", pki.stranger.client_cert())
    strategy = OAuthStrategy(credentials, skip_verify=True, deps=deps)
    with pytest.raises(TokenErrorMTLS) as info:
        await settle(strategy.apply([]))
    prefix = f"Failed to get token: failed to make a request to '{mtls_server.url('/token')}': "
    assert info.value.message.startswith(prefix)
    assert len(info.value.message) > len(prefix)
    assert info.value.status == 500
    assert mtls_server.seen == []


async def test_oauth_over_https_follows_skip_verify(tls_server: Server, deps: AuthDeps) -> None:
    tls_server.routes["/token"] = TokenIssuer()
    verified = OAuthStrategy(oauth(tls_server), skip_verify=False, deps=deps)
    with pytest.raises(TokenError) as info:
        await settle(verified.apply([]))
    assert "TLS handshake failed: certificate verify failed" in info.value.message
    skipped = OAuthStrategy(oauth(tls_server), skip_verify=True, deps=deps)
    assert await settle(skipped.apply([])) == BearerToken("t1", True)


async def test_logs_hold_no_secret_token_or_query(
    server: Server, deps: AuthDeps, caplog: pytest.LogCaptureFixture
) -> None:
    issuer = server.routes["/token"] = TokenIssuer()
    strategy = OAuthStrategy(oauth(server, "/token?q=hidden"), skip_verify=False, deps=deps)
    with caplog.at_level(logging.DEBUG, logger="appgateway.auth"):
        await settle(strategy.apply([]))
        issuer.status = 400
        strategy.invalidate(BearerToken("t1", True))
        with pytest.raises(TokenError):
            await settle(strategy.apply([]))
    records = [r for r in caplog.records if r.name == "appgateway.auth"]
    assert [r.levelname for r in records] == ["DEBUG", "WARNING"]
    text = " ".join(f"{r.getMessage()} {r.__dict__.get('fields')}" for r in records)
    assert server.url("/token") in text
    for secret in ("s&cret", "t1", "hidden", "orders-client"):
        assert secret not in text
