"""The pipeline in-process: real listeners (`serve`) in front of a `Forwarder`, a real folder
registry, and a recording upstream server. Multi-step exchanges are checked as the ordered
list of requests the upstream received (architecture.md "Tests")."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import struct
from urllib.parse import quote

import pytest

from tests.conftest import (
    BASIC_ALICE,
    Client,
    Connection,
    Response,
    Seen,
    request_bytes,
)
from tests.pipeline import JSON, MakeRig, Rig, access_for

pytestmark = pytest.mark.timeout(30)


def upstream_headers(seen: Seen) -> list[tuple[str, str]]:
    return [(n, v) for n, v in seen.headers if n.lower() != "host"]


def via_of(seen: Seen) -> str:
    """The gateway's own Via entry: one per request, naming this process."""
    (via,) = seen.values("Via")
    assert re.fullmatch(r"1\.1 appgateway-[0-9a-f]{12}", via), via
    return via


def error_of(resp: Response) -> object:
    assert resp.value("Content-Type") == JSON
    return resp.json()


# -- routing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listener", "target", "host", "upstream_target"),
    [
        ("proxy", "/shop/orders/items/1?x=1", "gw", "/api/items/1?x=1"),
        ("proxy", "/shop/orders", "gw", "/api"),
        ("proxy", "/shop/orders/", "gw", "/api/"),
        ("proxy", "/items/1?x=1", "shop-o1.kyma-system.svc.cluster.local:80", "/api/items/1?x=1"),
        ("proxy", "/items", "SHOP-O1", "/api/items"),
        ("proxy", "http://shop-o1.svc/items?q", "ignored", "/api/items?q"),
        ("proxy", "/shop/orders/x", "unknown-label.svc", "/api/x"),
        ("proxy", "/shop/params/p?lang=DE", "gw", "/params-api/p?fixed=1&lang=DE"),
        ("proxy", "/shop/params/p?z=1", "gw", "/params-api/p?fixed=1&z=1&lang=EN"),
        ("compass", "/shop/orders/orders-entry/x?y", "gw", "/api/x?y"),
        ("compass", "/shop/basic/basic", "shop-o1", "/basic-api"),
    ],
)
async def test_routed_requests_reach_the_target(
    listener: str, target: str, host: str, upstream_target: str, rig: Rig
) -> None:
    resp = await rig.call("GET", target, [("Host", host)], listener=listener)
    assert resp.status == 200
    assert [r.target for r in rig.api.requests] == [upstream_target]
    assert rig.api.requests[0].value("Host") == f"127.0.0.1:{rig.api.port}"


@pytest.mark.parametrize(
    ("listener", "target", "host", "status", "message"),
    [
        ("proxy", "/shop/nope/x", "gw", 404, "service with name nope not found"),
        ("proxy", "/other/orders", "gw", 404, "service with name orders not found"),
        ("proxy", "/", "gw", 400, "failed to extract API Identifier from path"),
        ("proxy", "/shop", "gw", 400, "failed to extract API Identifier from path"),
        ("proxy", "/shop/orders/%zz", "gw", 400, "invalid URL escape in request path"),
        (
            "compass",
            "/shop/orders/wrong/x",
            "gw",
            404,
            "service with name orders and entry name wrong not found",
        ),
        ("compass", "/items", "shop-o1", 400, "failed to extract API Identifier from path"),
    ],
)
async def test_routing_errors(
    listener: str, target: str, host: str, status: int, message: str, rig: Rig
) -> None:
    resp = await rig.call("GET", target, [("Host", host)], listener=listener)
    assert resp.status == status
    assert error_of(resp) == {"code": status, "error": message}
    assert rig.api.requests == []


async def test_registry_not_ready_is_503(make_rig: MakeRig) -> None:
    rig = await make_rig(start_registry=False)
    resp = await rig.call("GET", "/shop/orders/x")
    assert resp.status == 503
    assert error_of(resp) == {"code": 503, "error": "registry not loaded yet"}


# -- headers and credentials ----------------------------------------------------------------------


async def test_headers_are_forwarded_as_received(rig: Rig) -> None:
    caller = [
        ("Host", "gw"),
        ("X-Dup", "1"),
        ("x-dup", "2"),
        ("User-Agent", "ua/1"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "named in Connection"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Forwarded", "for=10.0.0.1"),
        ("X-Request-Id", "rid-1"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("Authorization", "Bearer caller"),
    ]
    resp = await rig.call("GET", "/shop/orders/h", caller)
    assert resp.status == 200
    (seen,) = rig.api.requests
    assert upstream_headers(seen) == [
        ("X-Dup", "1"),
        ("x-dup", "2"),
        ("User-Agent", "ua/1"),
        ("Forwarded", "for=10.0.0.1"),
        ("X-Request-Id", "rid-1"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("Authorization", "Bearer caller"),
        ("Via", via_of(seen)),
    ]
    assert seen.values("Host") == [f"127.0.0.1:{rig.api.port}"]


async def test_no_default_headers_are_added(rig: Rig) -> None:
    await rig.call("GET", "/shop/orders/bare", [("Host", "gw")])
    (seen,) = rig.api.requests
    # Only the generated request id (issue: operability), the gateway's Via (loop detection)
    # and Host; no User-Agent, Accept...
    assert [name for name, _ in seen.headers] == ["X-Request-Id", "Via", "Host"]
    assert re.fullmatch(r"[0-9a-f]{12}-\d+", seen.value("X-Request-Id") or "")
    assert seen.value("Host") == f"127.0.0.1:{rig.api.port}"


async def test_callers_request_id_is_kept_and_logged(rig: Rig) -> None:
    await rig.call("GET", "/shop/orders/rid", [("Host", "gw"), ("X-Request-Id", "abc-1")])
    (seen,) = rig.api.requests
    assert seen.values("X-Request-Id") == ["abc-1"]
    (line,) = rig.access()
    assert line["request_id"] == "abc-1"


async def test_basic_replaces_the_callers_authorization(rig: Rig) -> None:
    headers = [("Host", "gw"), ("authorization", "Bearer mine")]
    assert (await rig.call("GET", "/shop/basic/x", headers)).status == 200
    (seen,) = rig.api.requests
    assert seen.values("Authorization") == [BASIC_ALICE]


@pytest.mark.parametrize("path", ["/shop/basic/x", "/shop/orders/x"])
async def test_access_token_overrides_authorization(path: str, rig: Rig) -> None:
    headers = [("Host", "gw"), ("Authorization", "Basic other"), ("Access-Token", "Bearer abc")]
    assert (await rig.call("GET", path, headers)).status == 200
    (seen,) = rig.api.requests
    assert seen.values("Authorization") == ["Bearer abc"]
    assert seen.values("Access-Token") == []


async def test_empty_access_token_is_ignored(rig: Rig) -> None:
    headers = [("Host", "gw"), ("Access-Token", "")]
    assert (await rig.call("GET", "/shop/basic/x", headers)).status == 200
    (seen,) = rig.api.requests
    assert seen.values("Authorization") == [BASIC_ALICE]
    assert seen.values("Access-Token") == [""]


async def test_request_parameters_are_added_when_absent(rig: Rig) -> None:
    headers = [("Host", "gw"), ("x-api-key", "mine")]
    assert (await rig.call("GET", "/shop/params/x?a=1", headers)).status == 200
    (seen,) = rig.api.requests
    assert seen.target == "/params-api/x?fixed=1&a=1&lang=EN"
    added = [(n, v) for n, v in upstream_headers(seen) if n not in ("X-Request-Id", "Via")]
    assert added == [("x-api-key", "mine"), ("X-Multi", "a"), ("X-Multi", "b")]


# -- bodies and the retry -------------------------------------------------------------------------


async def test_body_is_sent_with_its_length(rig: Rig) -> None:
    resp = await rig.call("POST", "/shop/orders/p", body=b"payload")
    assert resp.status == 200
    (seen,) = rig.api.requests
    assert seen.body == b"payload" and seen.value("Content-Length") == "7"


async def test_401_is_retried_once_with_the_body_resent(rig: Rig) -> None:
    resp = await rig.call("POST", "/shop/basic/auth401/k1", body=b"payload")
    assert resp.status == 200
    assert [(r.method, r.target, r.body, r.value("Authorization")) for r in rig.api.requests] == [
        ("POST", "/basic-api/auth401/k1", b"payload", BASIC_ALICE),
        ("POST", "/basic-api/auth401/k1", b"payload", BASIC_ALICE),
    ]
    (line,) = rig.access()
    assert line["retried"] is True and line["status"] == 200 and line["upstream_status"] == 200
    assert rig.sample("appgateway_retries_total", app="shop", service="basic") == 1.0


async def test_chunked_body_within_the_limit_is_buffered_and_retried(rig: Rig) -> None:
    client = await rig.clients(rig.proxy_port)
    await client.send(
        b"PUT /shop/orders/auth401/k2 HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"
    )
    assert (await client.response()).status == 200
    sent = [
        (r.body, r.value("Content-Length"), r.value("Transfer-Encoding")) for r in rig.api.requests
    ]
    assert sent == [(b"abcdef", "6", None), (b"abcdef", "6", None)]


async def test_persistent_401_is_relayed_after_one_retry(rig: Rig) -> None:
    resp = await rig.call("GET", "/shop/orders/always401")
    assert (resp.status, resp.body) == (401, b"denied")
    assert len(rig.api.requests) == 2


async def test_body_over_the_retry_limit_is_streamed_and_not_retried(rig: Rig) -> None:
    body = bytes(range(256)) * 16  # 4096 bytes, limit 1024
    resp = await rig.call("POST", "/shop/orders/auth401/k3", body=body)
    assert (resp.status, resp.body) == (401, b"denied")
    (seen,) = rig.api.requests
    assert seen.body == body and seen.value("Content-Length") == "4096"
    (line,) = rig.access()
    assert line["retried"] is False and line["bytes_in"] == 4096


async def test_chunked_body_over_the_retry_limit_streams_chunked(rig: Rig) -> None:
    client = await rig.clients(rig.proxy_port)
    await client.send(
        b"POST /shop/orders/auth401/k4 HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    for _ in range(4):
        await client.send(b"400\r\n" + b"c" * 1024 + b"\r\n")
        await asyncio.sleep(0.01)
    await client.send(b"0\r\n\r\n")
    resp = await client.response()
    assert resp.status == 401
    (seen,) = rig.api.requests
    assert seen.value("Transfer-Encoding") == "chunked" and seen.body == b"c" * 4096


# -- responses ------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [500, 503, 599])
async def test_5xx_becomes_502_with_target_system_status(code: int, rig: Rig) -> None:
    resp = await rig.call("GET", f"/shop/orders/status/{code}")
    assert resp.status == 502
    assert resp.values("Target-System-Status") == [str(code)]
    assert resp.value("X-Mock") == "1" and resp.body == f"upstream says {code}".encode()
    (line,) = rig.access()
    assert line["status"] == 502 and line["upstream_status"] == code and line["error"] is None


@pytest.mark.parametrize("code", [201, 400, 404, 418])
async def test_other_statuses_are_relayed_unchanged(code: int, rig: Rig) -> None:
    resp = await rig.call("GET", f"/shop/orders/status/{code}")
    assert resp.status == code and resp.body == f"upstream says {code}".encode()
    assert resp.values("Target-System-Status") == ["stale"]


@pytest.mark.parametrize(
    ("listener", "target", "host", "location", "expected"),
    [
        (
            "proxy",
            "/shop/orders/redirect",
            "gw",
            "{base}/api/next/7?x=1#f",
            "/shop/orders/next/7?x=1#f",
        ),
        ("proxy", "/shop/orders/redirect", "gw", "/api/a%2Fb", "/shop/orders/a%2Fb"),
        ("proxy", "/redirect", "shop-o1", "{base}/api/next", "/next"),
        (
            "compass",
            "/shop/orders/orders-entry/redirect",
            "gw",
            "{base}/api/next",
            "/shop/orders/orders-entry/next",
        ),
        (
            "proxy",
            "/shop/orders/redirect",
            "gw",
            "http://other.example/api/x",
            "http://other.example/api/x",
        ),
        ("proxy", "/shop/orders/redirect", "gw", "{base}/apix/y", "{base}/apix/y"),
    ],
)
async def test_location_rewrite(
    listener: str, target: str, host: str, location: str, expected: str, rig: Rig
) -> None:
    base = rig.api.base
    query = "?location=" + quote(location.format(base=base), safe="")
    resp = await rig.call("GET", target + query, [("Host", host)], listener=listener)
    assert resp.status == 302
    assert resp.values("Location") == [expected.format(base=base)]


async def test_chunked_upstream_response_is_relayed(rig: Rig) -> None:
    client = await rig.clients(rig.proxy_port)
    await client.send(request_bytes("GET", "/shop/orders/chunked"))
    resp = await client.response()
    assert resp.body == b"hello world" and resp.value("Transfer-Encoding") == "chunked"
    # the connection stays open for the next request
    assert (await client.request("GET", "/shop/orders/again")).status == 200


async def test_unreachable_target_is_502_empty(rig: Rig) -> None:
    resp = await rig.call("GET", "/dead/gone/x")
    assert resp.status == 502 and resp.body == b""
    assert (
        rig.sample("appgateway_upstream_errors_total", app="dead", service="gone", kind="connect")
        == 1.0
    )
    (line,) = rig.access()
    assert line["error"] == "connection refused" and line["upstream_status"] is None


async def test_target_timeout_is_504_empty(make_rig: MakeRig) -> None:
    async def silent(conn: Connection) -> None:
        await conn.request()
        await conn.until_eof()

    rig = await make_rig(handler=silent, proxy_timeout=0.2)
    resp = await rig.call("GET", "/shop/orders/x")
    assert resp.status == 504 and resp.body == b""
    assert (
        rig.sample("appgateway_upstream_errors_total", app="shop", service="orders", kind="timeout")
        == 1.0
    )


async def test_caller_disconnect_cancels_the_upstream_request(make_rig: MakeRig) -> None:
    closed = asyncio.Event()

    async def hang(conn: Connection) -> None:
        await conn.request()
        await conn.until_eof()
        closed.set()

    rig = await make_rig(handler=hang, proxy_timeout=10.0)
    client: Client = await rig.clients(rig.proxy_port)
    await client.send(request_bytes("GET", "/shop/orders/hang"))
    for _ in range(200):
        if rig.api.requests:
            break
        await asyncio.sleep(0.01)
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    await asyncio.wait_for(closed.wait(), 5)
    for _ in range(100):
        if rig.access():
            break
        await asyncio.sleep(0.01)
    (line,) = rig.access()
    assert line["status"] == 499 and line["upstream_status"] is None


# -- observation ---------------------------------------------------------------------------------


async def test_access_log_line(rig: Rig) -> None:
    headers = [("Host", "gw"), ("X-Request-Id", "rid-7"), ("Cookie", "secret=1")]
    resp = await rig.call("POST", "/shop/orders/items?token=secret", headers, b"12345")
    assert resp.status == 200
    (line,) = rig.access()
    assert line.pop("ts").endswith("Z")
    duration = line.pop("duration_ms")
    assert isinstance(duration, float | int) and duration >= 0
    bytes_out = line.pop("bytes_out")
    assert bytes_out >= len(resp.body)
    upstream_ms = line.pop("upstream_ms")
    assert isinstance(upstream_ms, float | int) and 0 <= upstream_ms <= duration
    assert line == {
        "level": "info",
        "logger": "access",
        "msg": "request",
        "listener": "proxy",
        "route": "path",
        "app": "shop",
        "service": "orders",
        "entry": "orders-entry",
        "method": "POST",
        "path": "/shop/orders/items",
        "status": 200,
        "upstream_status": 200,
        "retried": False,
        "bytes_in": 5,
        "error": None,
        "error_class": None,
        "request_id": "rid-7",
        "caller": None,  # --caller-auth off
    }
    assert "secret" not in rig.log.getvalue()


async def test_access_log_line_for_host_route_and_errors(rig: Rig) -> None:
    await rig.call("GET", "/x", [("Host", "shop-o1")])
    await rig.call("GET", "/shop/nope", listener="compass")
    host, error = rig.access()
    assert (host["route"], host["service"], host["path"]) == ("host", "orders", "/x")
    assert re.fullmatch(r"[0-9a-f]{12}-\d+", host["request_id"])  # generated
    assert error["listener"] == "compass" and error["status"] == 400
    assert error["app"] == "" and error["upstream_status"] is None
    assert error["error"] == "failed to extract API Identifier from path"
    assert error["error_class"] == "bad_request" and error["upstream_ms"] is None


async def test_each_kind_of_route_to_one_api_keeps_its_own_labels(rig: Rig) -> None:
    """The forwarder keeps an API's series and access-line part per kind of route."""
    await rig.call("GET", "/shop/orders/a")
    await rig.call("GET", "/x", [("Host", "shop-o1")])
    await rig.call("GET", "/shop/orders/orders-entry/b", listener="compass")
    await rig.call("GET", "/y", [("Host", "shop-o1")])
    await rig.call("GET", "/shop/orders/c")
    lines = [(a["listener"], a["route"], a["service"], a["entry"], a["path"]) for a in rig.access()]
    assert lines == [
        ("proxy", "path", "orders", "orders-entry", "/shop/orders/a"),
        ("proxy", "host", "orders", "orders-entry", "/x"),
        ("compass", "path", "orders", "orders-entry", "/shop/orders/orders-entry/b"),
        ("proxy", "host", "orders", "orders-entry", "/y"),
        ("proxy", "path", "orders", "orders-entry", "/shop/orders/c"),
    ]
    labels = {"app": "shop", "service": "orders", "code": "200"}
    assert rig.sample("appgateway_requests_total", listener="proxy", **labels) == 4.0
    assert rig.sample("appgateway_requests_total", listener="compass", **labels) == 1.0


async def test_metrics_count_requests(rig: Rig) -> None:
    for _ in range(2):
        assert (await rig.call("GET", "/shop/orders/m")).status == 200
    await rig.call("GET", "/shop/nope/m")
    await rig.call("GET", "/shop/orders/orders-entry/m", listener="compass")
    labels = {"listener": "proxy", "app": "shop", "service": "orders"}
    assert rig.sample("appgateway_requests_total", code="200", **labels) == 2.0
    assert (
        rig.sample("appgateway_requests_total", listener="proxy", app="", service="", code="404")
        == 1.0
    )
    assert (
        rig.sample(
            "appgateway_requests_total",
            listener="compass",
            app="shop",
            service="orders",
            code="200",
        )
        == 1.0
    )
    assert rig.sample("appgateway_request_duration_seconds_count", **labels) == 2.0
    assert (
        rig.sample("appgateway_upstream_duration_seconds_count", app="shop", service="orders")
        == 3.0
    )
    assert rig.sample("appgateway_inflight_requests", listener="proxy") == 0.0
    assert b'appgateway_requests_total{app="shop"' in rig.metrics.render()


# -- caller authorization (--caller-auth tokens; the kubernetes mode in tests/e2e) -----------

ORDERS_TOKEN = "orders-team-token"
ALL_TOKEN = "platform-token"
TOKENS_FILE = "".join(
    f"- {{name: {name}, sha256: {hashlib.sha256(token.encode()).hexdigest()}, "
    f"applications: {apps}}}\n"
    for name, token, apps in (
        ("orders-team", ORDERS_TOKEN, "[shop]"),
        ("platform", ALL_TOKEN, '["*"]'),
    )
)


def proxy_auth(token: str) -> list[tuple[str, str]]:
    return [("Host", "gw"), ("Proxy-Authorization", f"Bearer {token}")]


@pytest.mark.parametrize(
    ("headers", "target", "status", "message"),
    [
        ([("Host", "gw")], "/shop/basic/x", 407, "Proxy-Authorization is missing"),
        (proxy_auth("guess"), "/shop/basic/x", 407, "not accepted"),
        ([("Host", "gw"), ("Proxy-Authorization", "Basic eDp5")], "/shop/basic/x", 407, "Bearer"),
        (proxy_auth(ORDERS_TOKEN), "/shop-oauth/oauth/x", 403, "orders-team"),
        # An anonymous caller learns nothing, not even which Applications exist.
        ([("Host", "gw")], "/nope/nothing/x", 407, "Proxy-Authorization is missing"),
    ],
    ids=["missing", "unknown", "not-bearer", "other-application", "anonymous-404"],
)
async def test_refused_callers_reach_nothing(
    make_rig: MakeRig, headers: list[tuple[str, str]], target: str, status: int, message: str
) -> None:
    rig = await make_rig(caller_tokens=TOKENS_FILE)
    resp = await rig.call("GET", target, headers)
    assert resp.status == status
    assert message in str(error_of(resp))
    if status == 407:
        assert resp.value("Proxy-Authenticate") == 'Bearer realm="appgateway"'
    assert rig.api.requests == []  # no target call and no token fetch
    assert access_for(rig, target.partition("?")[0])["caller"] is None


async def test_allowed_caller_is_named_and_its_token_never_travels(make_rig: MakeRig) -> None:
    rig = await make_rig(caller_tokens=TOKENS_FILE)
    for token, target in ((ORDERS_TOKEN, "/shop/basic/a"), (ALL_TOKEN, "/shop-oauth/oauth/b")):
        resp = await rig.call("GET", target, proxy_auth(token))
        assert resp.status == 200, resp.body
    seen = [r for r in rig.api.requests if r.path != "/token"]
    assert [r.target for r in seen] == ["/basic-api/a", "/oauth-api/b"]
    assert all(r.value("Proxy-Authorization") is None for r in rig.api.requests)
    assert seen[0].value("Authorization") == BASIC_ALICE  # the API's own credentials
    assert access_for(rig, "/shop/basic/a")["caller"] == "orders-team"
    assert access_for(rig, "/shop-oauth/oauth/b")["caller"] == "platform"
    assert all(ORDERS_TOKEN not in line and ALL_TOKEN not in line for line in rig.log_lines())
    assert rig.sample("appgateway_caller_decisions_total", result="allowed") == 2.0


async def test_without_caller_auth_proxy_authorization_is_still_removed(rig: Rig) -> None:
    resp = await rig.call("GET", "/shop/orders/p", proxy_auth("anything"))
    assert resp.status == 200
    assert rig.api.requests[0].value("Proxy-Authorization") is None
    assert access_for(rig, "/shop/orders/p")["caller"] is None
