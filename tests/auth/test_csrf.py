from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from appgateway.auth import AuthStrategy, make_strategy
from appgateway.auth.csrf import CsrfApplied, CsrfStrategy
from appgateway.auth.deps import AuthDeps
from appgateway.auth.flows import CsrfToken
from appgateway.auth.oauth import BearerToken
from appgateway.errors import GatewayError, TokenError, TokenErrorMTLS
from appgateway.flow import settle
from appgateway.model import BasicAuth, CertificateAuth, Credentials, Headers, OAuth, OAuthMTLS
from tests.auth.conftest import Pki, Seen, Server, TokenIssuer, header_values, make_api

ALICE = BasicAuth("alice", "s3cret")
BASIC_ALICE = b"Basic YWxpY2U6czNjcmV0"


class CsrfEndpoint:
    """Issues c1, c2, ... with two cookies; rejects the Authorization values in `reject`."""

    def __init__(self) -> None:
        self.issued = 0
        self.reject: set[bytes] = set()
        self.status = 200
        self.delay = 0.0
        self.token_header = True

    async def __call__(self, seen: Seen) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        authorization = header_values(seen.headers, b"authorization")
        if self.status != 200 or (authorization and authorization[0] in self.reject):
            return web.Response(status=self.status if self.status != 200 else 401)
        self.issued += 1
        n = self.issued
        response = web.Response(status=200)
        if self.token_header:
            response.headers["x-csrf-token"] = f"c{n}"
        response.headers.add("Set-Cookie", f"sap-XSRF=x{n}; Path=/; Secure")
        response.headers.add("set-cookie", f"SAP_SESSIONID=s{n}; HttpOnly")
        return response


@pytest.fixture
def endpoints(server: Server) -> tuple[TokenIssuer, CsrfEndpoint]:
    issuer, csrf = TokenIssuer(), CsrfEndpoint()
    server.routes["/token"] = issuer
    server.routes["/csrf"] = csrf
    return issuer, csrf


def strategy(deps: AuthDeps, credentials: Credentials, url: str) -> AuthStrategy:
    result = make_strategy(make_api(credentials, url), deps)
    assert isinstance(result, CsrfStrategy)
    return result


def oauth(server: Server, secret: str = "sec") -> OAuth:
    return OAuth(server.url("/token"), "client", secret)


def auth_of(seen: Seen) -> list[bytes]:
    return header_values(seen.headers, b"authorization")


def count(deps: AuthDeps, metric: str, **labels: str) -> float:
    value = deps.metrics.registry.get_sample_value(metric, labels)
    return 0.0 if value is None else value


async def test_basic_exact_fetch_and_api_headers(
    server: Server, deps: AuthDeps, endpoints: tuple[TokenIssuer, CsrfEndpoint]
) -> None:
    s = strategy(deps, ALICE, server.url("/csrf?sap-client=100"))
    headers: Headers = [
        (b"cookie", b"a=1; sap-XSRF=old"),
        (b"x-csrf-token", b"fetch"),
        (b"X-Other", b"o"),
        (b"Cookie", b"b=2"),
    ]
    applied = await settle(s.apply(headers))
    assert headers == [
        (b"Cookie", b"sap-XSRF=x1; SAP_SESSIONID=s1; a=1; b=2"),
        (b"X-Csrf-Token", b"c1"),
        (b"X-Other", b"o"),
        (b"Authorization", BASIC_ALICE),
    ]
    assert applied == CsrfApplied(None, CsrfToken(b"c1", (b"sap-XSRF=x1", b"SAP_SESSIONID=s1")))
    [seen] = server.seen
    assert (seen.method, seen.path, seen.body) == ("GET", "/csrf?sap-client=100", b"")
    assert seen.headers == [
        (b"Host", server.authority),
        (b"X-Csrf-Token", b"fetch"),
        (b"Accept", b"*/*"),
        (b"Cache-Control", b"no-cache"),
        (b"Authorization", BASIC_ALICE),
    ]
    assert s.client_cert is None
    assert count(deps, "appgateway_csrf_fetches_total", result="ok") == 1


async def test_csrf_token_is_reused_and_fetched_once_when_cold(
    server: Server, deps: AuthDeps, endpoints: tuple[TokenIssuer, CsrfEndpoint]
) -> None:
    endpoints[1].delay = 0.05
    s = strategy(deps, ALICE, server.url("/csrf"))
    lists: list[Headers] = [[] for _ in range(20)]
    await asyncio.gather(*(settle(s.apply(h)) for h in lists))
    for _ in range(10):
        lists.append([])
        await settle(s.apply(lists[-1]))
    assert server.paths() == ["/csrf"]
    assert all(header_values(h, b"x-csrf-token") == [b"c1"] for h in lists)
    assert count(deps, "appgateway_cache_lookups_total", cache="csrf", result="hit") == 10
    assert count(deps, "appgateway_cache_lookups_total", cache="csrf", result="miss") == 20


async def test_no_cookies_means_no_cookie_header(
    server: Server, deps: AuthDeps, endpoints: tuple[TokenIssuer, CsrfEndpoint]
) -> None:
    async def bare(seen: Seen) -> web.StreamResponse:
        return web.Response(status=200)  # no token header either: an empty token

    server.routes["/csrf"] = bare
    s = strategy(deps, ALICE, server.url("/csrf"))
    headers: Headers = [(b"Cookie", b""), (b"X-CSRF-Token", b"mine")]
    await settle(s.apply(headers))
    assert headers == [(b"X-Csrf-Token", b""), (b"Authorization", BASIC_ALICE)]


async def test_oauth_token_then_csrf(
    server: Server, deps: AuthDeps, endpoints: tuple[TokenIssuer, CsrfEndpoint]
) -> None:
    s = strategy(deps, oauth(server), server.url("/csrf"))
    headers: Headers = []
    applied = await settle(s.apply(headers))
    assert server.paths() == ["/token", "/csrf"]
    assert auth_of(server.seen[1]) == [b"Bearer t1"]
    assert headers == [
        (b"Authorization", b"Bearer t1"),
        (b"X-Csrf-Token", b"c1"),
        (b"Cookie", b"sap-XSRF=x1; SAP_SESSIONID=s1"),
    ]
    assert isinstance(applied, CsrfApplied)
    assert applied.inner == BearerToken("t1", True)


async def test_csrf_401_with_cached_token_refreshes_it_once(
    server: Server, deps: AuthDeps, endpoints: tuple[TokenIssuer, CsrfEndpoint]
) -> None:
    _, csrf = endpoints
    plain = make_strategy(make_api(oauth(server)), deps)  # same credentials, no CSRF
    assert await settle(plain.apply([])) == BearerToken("t1", True)
    csrf.reject.add(b"Bearer t1")  # the CSRF endpoint no longer accepts the cached token
    s = strategy(deps, oauth(server), server.url("/csrf"))
    headers: Headers = []
    applied = await settle(s.apply(headers))
    assert server.paths() == ["/token", "/csrf", "/token", "/csrf"]
    assert auth_of(server.seen[1]) == [b"Bearer t1"]
    assert auth_of(server.seen[3]) == [b"Bearer t2"]
    assert header_values(headers, b"authorization") == [b"Bearer t2"]
    assert header_values(headers, b"x-csrf-token") == [b"c1"]
    assert isinstance(applied, CsrfApplied)
    assert isinstance(applied.inner, BearerToken) and applied.inner.value == "t2"
    assert await settle(plain.apply([])) == BearerToken(
        "t2", False
    )  # the refreshed token is shared
    assert len(server.seen) == 4


async def test_csrf_401_with_fresh_token_is_not_retried(
    server: Server, deps: AuthDeps, endpoints: tuple[TokenIssuer, CsrfEndpoint]
) -> None:
    endpoints[1].status = 401
    s = strategy(deps, oauth(server), server.url("/csrf?q=secret"))
    with pytest.raises(TokenError) as info:
        await settle(s.apply([]))
    assert info.value.status == 502
    assert info.value.message == (
        f"incorrect response code '401' while getting token from {server.url('/csrf')}"
    )
    assert server.paths() == ["/token", "/csrf?q=secret"]


async def test_csrf_403_twice_with_cached_token(
    server: Server, deps: AuthDeps, endpoints: tuple[TokenIssuer, CsrfEndpoint]
) -> None:
    await settle(make_strategy(make_api(oauth(server)), deps).apply([]))
    endpoints[1].status = 403
    s = strategy(deps, oauth(server), server.url("/csrf"))
    with pytest.raises(TokenError) as info:
        await settle(s.apply([]))
    assert info.value.message == (
        f"incorrect response code '403' while getting token from {server.url('/csrf')}"
    )
    assert server.paths() == ["/token", "/csrf", "/token", "/csrf"]  # fetched once more only


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("kind", ["status", "refused", "timeout"])
@pytest.mark.parametrize("mtls", [False, True], ids=["oauth", "oauth-mtls"])
async def test_csrf_failures_are_502(
    server: Server,
    deps: AuthDeps,
    pki: Pki,
    endpoints: tuple[TokenIssuer, CsrfEndpoint],
    kind: str,
    mtls: bool,
) -> None:
    _, csrf = endpoints
    url = server.url("/csrf")
    if kind == "status":
        csrf.status = 500
        reason = f"incorrect response code '500' while getting token from {url}"
    elif kind == "refused":
        url = f"http://127.0.0.1:{closed_port()}/csrf"
        reason = f"failed to make a request to '{url}': connection refused"
    else:
        csrf.delay = 3.0
        reason = f"failed to make a request to '{url}': timeout after 1s"
    credentials: OAuth | OAuthMTLS = oauth(server)
    if mtls:
        credentials = OAuthMTLS(server.url("/token"), "client", pki.client.client_cert())
    s = strategy(deps, credentials, url)
    with pytest.raises(TokenError) as info:
        await settle(s.apply([]))
    assert (info.value.status, info.value.message) == (502, reason)
    assert count(deps, "appgateway_csrf_fetches_total", result="error") == 1
    # Not cached: the next request tries again.
    csrf.status, csrf.delay = 200, 0.0
    if kind != "refused":
        await settle(s.apply([]))
        assert count(deps, "appgateway_csrf_fetches_total", result="ok") == 1


@pytest.mark.parametrize("mtls", [False, True], ids=["oauth", "oauth-mtls"])
async def test_token_failure_skips_the_csrf_endpoint(
    server: Server,
    deps: AuthDeps,
    pki: Pki,
    endpoints: tuple[TokenIssuer, CsrfEndpoint],
    mtls: bool,
) -> None:
    endpoints[0].status = 400
    credentials: OAuth | OAuthMTLS = oauth(server)
    if mtls:
        credentials = OAuthMTLS(server.url("/token"), "client", pki.client.client_cert())
    s = strategy(deps, credentials, server.url("/csrf"))
    with pytest.raises(GatewayError) as info:
        await settle(s.apply([]))
    expected = f"incorrect response code '400' while getting token from {server.url('/token')}"
    if mtls:
        assert isinstance(info.value, TokenErrorMTLS)
        assert info.value.message == "Failed to get token: " + expected
    else:
        assert isinstance(info.value, TokenError)
        assert info.value.message == expected
    assert server.paths() == ["/token"]
    assert count(deps, "appgateway_csrf_fetches_total", result="error") == 0


async def test_access_token_override_still_authenticates_the_fetch(
    server: Server, deps: AuthDeps, endpoints: tuple[TokenIssuer, CsrfEndpoint]
) -> None:
    for credentials, expected in ((oauth(server), b"Bearer t1"), (ALICE, BASIC_ALICE)):
        s = strategy(deps, credentials, server.url("/csrf"))
        headers: Headers = [(b"Authorization", b"Bearer caller")]
        applied = await settle(s.apply(headers, authenticate=False))
        assert headers[0] == (b"Authorization", b"Bearer caller")
        assert header_values(headers, b"authorization") == [b"Bearer caller"]
        assert isinstance(applied, CsrfApplied) and applied.inner is None
        assert auth_of(server.seen[-1]) == [expected]
    assert server.paths() == ["/token", "/csrf", "/csrf"]


async def test_invalidate_drops_both_compare_and_invalidate(
    server: Server, deps: AuthDeps, endpoints: tuple[TokenIssuer, CsrfEndpoint]
) -> None:
    s = strategy(deps, oauth(server), server.url("/csrf"))
    caller: Headers = [(b"Cookie", b"a=1")]
    first = list(caller)
    applied = await settle(s.apply(first))
    s.invalidate(applied)
    # The retry of behaviour.md §8: the first attempt's headers, authenticated again.
    second = list(first)
    again = await settle(s.apply(second))
    assert second == [
        (b"Cookie", b"sap-XSRF=x2; SAP_SESSIONID=s2; a=1"),
        (b"Authorization", b"Bearer t2"),
        (b"X-Csrf-Token", b"c2"),
    ]
    s.invalidate(applied)  # late 401s for the old values change nothing
    s.invalidate(None)
    await settle(s.apply([]))
    assert server.paths() == ["/token", "/csrf", "/token", "/csrf"]
    assert again != applied


async def test_csrf_entries_belong_to_one_credential(
    server: Server, deps: AuthDeps, endpoints: tuple[TokenIssuer, CsrfEndpoint]
) -> None:
    url = server.url("/csrf")
    await settle(strategy(deps, ALICE, url).apply([]))
    await settle(strategy(deps, BasicAuth("bob", "pw"), url).apply([]))
    await settle(strategy(deps, ALICE, url).apply([]))
    await settle(strategy(deps, ALICE, server.url("/csrf?other")).apply([]))
    assert [auth_of(seen)[0] for seen in server.seen] == [
        BASIC_ALICE,
        b"Basic Ym9iOnB3",
        BASIC_ALICE,
    ]


async def test_certificate_csrf_fetch_presents_the_certificate(
    mtls_server: Server, deps: AuthDeps, pki: Pki
) -> None:
    mtls_server.routes["/csrf"] = CsrfEndpoint()
    cert = pki.client.client_cert()
    api = make_api(CertificateAuth(cert), mtls_server.url("/csrf"), skip_verify=True)
    s = make_strategy(api, deps)
    assert isinstance(s, CsrfStrategy)
    assert s.client_cert == cert
    headers: Headers = [(b"Authorization", b"Bearer caller")]
    await settle(s.apply(headers))
    assert headers[:2] == [(b"Authorization", b"Bearer caller"), (b"X-Csrf-Token", b"c1")]
    [seen] = mtls_server.seen
    assert seen.peer_cn == "client"
    assert auth_of(seen) == []


async def test_certificate_csrf_rejected_without_matching_certificate(
    mtls_server: Server, deps: AuthDeps, pki: Pki
) -> None:
    mtls_server.routes["/csrf"] = CsrfEndpoint()
    api = make_api(
        CertificateAuth(pki.stranger.client_cert()), mtls_server.url("/csrf"), skip_verify=True
    )
    with pytest.raises(TokenError) as info:
        await settle(make_strategy(api, deps).apply([]))
    assert info.value.message.startswith(
        f"failed to make a request to '{mtls_server.url('/csrf')}': "
    )
    assert mtls_server.seen == []
