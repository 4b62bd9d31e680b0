"""HTTP/1.1 framing on the proxy listener, one raw-socket test per message shape.

Each malformed request must be refused before anything reaches the target: request smuggling
lives in the gap between how two parsers read the same bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    JSON_CONTENT_TYPE,
    Client,
    Gateway,
    MockUpstream,
    api,
    application,
    error_body,
    gateway_factory_for,
    service,
)

pytestmark = pytest.mark.timeout(30)

ECHO = "/conf/echo"


@pytest.fixture(scope="module")
def gateway(
    upstream_server: MockUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    folder: Path = tmp_path_factory.mktemp("conformance")
    docs = [application("conf", [service("echo", [api(upstream_server.base)])])]
    with gateway_factory_for(folder) as make:
        yield make(docs, ["--request-timeout", "1", "--keepalive-timeout", "2"])


@pytest.fixture
def client(gateway: Gateway) -> Iterator[Client]:
    with Client(gateway.proxy_port, timeout=5) as conn:
        yield conn


def _refused(client: Client, raw: bytes, status: int = 400) -> None:
    client.send(raw)
    response = client.read_response()
    assert response.status == status, (response.status, response.body)
    assert client.closed_within(3), "connection left open after a framing error"


MALFORMED = {
    "content-length-and-transfer-encoding": (
        b"POST /conf/echo/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two-different-content-lengths": (
        b"POST /conf/echo/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
        b"Content-Length: 6\r\n\r\nhello!"
    ),
    "bad-chunk-size": (
        b"POST /conf/echo/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n"
    ),
    "obs-fold": b"GET /conf/echo/x HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n",
    "bare-lf": b"GET /conf/echo/x HTTP/1.1\nHost: h\nX-A: 1\n\n",
    "nul-in-header-value": b"GET /conf/echo/x HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
    "cr-in-header-value": b"GET /conf/echo/x HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n",
    "malformed-request-line": b"GARBAGE\r\n\r\n",
    "request-line-without-version": b"GET /conf/echo/x\r\nHost: h\r\n\r\n",
    "space-in-header-name": b"GET /conf/echo/x HTTP/1.1\r\nHost: h\r\nX A: 1\r\n\r\n",
    # RFC 9112 §3.2: exactly one Host in HTTP/1.1 (two parsers could pick different APIs).
    "two-hosts": b"GET /conf/echo/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "same-host-twice": b"GET /conf/echo/x HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    "no-host": b"GET /conf/echo/x HTTP/1.1\r\nX-A: 1\r\n\r\n",
    "two-hosts-http10": b"GET /conf/echo/x HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_request_is_400_and_closed(
    client: Client, upstream: MockUpstream, raw: bytes
) -> None:
    _refused(client, raw)
    time.sleep(0.1)
    assert upstream.requests == []


def test_header_block_over_64k_is_431(client: Client, upstream: MockUpstream) -> None:
    raw = b"GET /conf/echo/x HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n"
    _refused(client, raw, 431)
    assert upstream.requests == []


def test_header_block_just_under_64k_is_accepted(client: Client, upstream: MockUpstream) -> None:
    response = client.request("GET", ECHO + "/big", [("X-Big", "a" * (60 * 1024))])
    assert response.status == 200
    assert upstream.only("/big").value("x-big") == "a" * (60 * 1024)


def test_bad_percent_escape_is_400_json(client: Client, upstream: MockUpstream) -> None:
    for path in ("/conf/echo/%zz", "/conf/echo/a%2", "/conf/ec%G0ho/x"):
        response = client.request("GET", path)
        assert response.status == 400
        assert response.header("content-type") == JSON_CONTENT_TYPE
        assert response.body == error_body(400, "invalid URL escape in request path")
    assert upstream.requests == []


def test_head_gets_headers_but_no_body(client: Client, upstream: MockUpstream) -> None:
    head = client.request("HEAD", "/conf/echo/download/1000")
    assert head.status == 200
    assert head.header("content-length") == "1000"
    assert head.body == b""
    follow = client.request("GET", ECHO + "/after-head")  # a stray body would corrupt this
    assert follow.status == 200
    assert follow.json()["target"] == "/after-head"
    assert upstream.matching("download")[0].method == "HEAD"


@pytest.mark.parametrize("code", [204, 304])
def test_bodyless_statuses_relayed_without_body(
    client: Client, upstream: MockUpstream, code: int
) -> None:
    response = client.request("GET", f"/conf/echo/status/{code}")
    assert response.status == code
    assert response.header("x-mock") == "1"
    assert response.values("transfer-encoding") == []
    assert response.header("content-length") in (None, "0")
    client.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        client.sock.recv(1)  # nothing after the head
    client.sock.settimeout(5)
    assert client.request("GET", ECHO + "/after").status == 200


def test_expect_100_continue(client: Client, upstream: MockUpstream) -> None:
    client.send(
        b"POST /conf/echo/expect HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    status, _, _ = client.read_head()
    assert status == 100
    assert upstream.requests == []
    client.send(b"hello")
    response = client.read_response("POST")
    assert response.status == 200
    got = upstream.only("/expect")
    assert got.body == b"hello"
    assert got.values("expect") == []


def test_pipelined_requests_answered_in_order(client: Client, upstream: MockUpstream) -> None:
    client.send(
        b"GET /conf/echo/first HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /conf/echo/second HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /conf/echo/third HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    targets = [client.read_response().json()["target"] for _ in range(3)]
    assert targets == ["/first", "/second", "/third"]
    assert upstream.only("/second").body == b"abc"


def test_thousands_of_pipelined_requests_are_all_answered(
    gateway: Gateway, upstream: MockUpstream
) -> None:
    """3,000 small GETs in one burst (135 KB): the 64 KiB head limit is per head, not per
    read, so none of them gets a 431."""
    count = 3000
    raw = b"".join(
        b"GET /conf/echo/p%05d HTTP/1.1\r\nHost: h\r\nX-N: 1\r\n\r\n" % i for i in range(count)
    )
    assert len(raw) > 2 * 64 * 1024
    with Client(gateway.proxy_port, timeout=30) as conn:
        conn.send(raw)
        targets = [conn.read_response().json()["target"] for _ in range(count)]
    assert targets == [f"/p{i:05d}" for i in range(count)]


def test_http10_body_with_transfer_encoding_closes_after_the_answer(
    client: Client, upstream: MockUpstream
) -> None:
    """RFC 9112 §6.1: a server that gets Transfer-Encoding in an HTTP/1.0 request must
    close the connection after its answer, keep-alive or not."""
    client.send(
        b"POST /conf/echo/te10 HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    response = client.read_response("POST")
    assert response.status == 200
    assert response.header("connection") == "close"
    assert client.closed_within(2)


def test_http10_without_host_is_accepted(client: Client, upstream: MockUpstream) -> None:
    client.send(b"GET /conf/echo/nohost10 HTTP/1.0\r\n\r\n")
    assert client.read_response().status == 200
    assert upstream.only("/nohost10").method == "GET"


def test_fragment_is_never_forwarded(client: Client, upstream: MockUpstream) -> None:
    response = client.request("GET", ECHO + "/frag?q=1#private-part")
    assert response.status == 200
    assert upstream.only("/frag").target == "/frag?q=1"


def test_interim_responses_are_not_relayed(client: Client, upstream: MockUpstream) -> None:
    response = client.request("GET", "/conf/echo/interim/100/123/102")
    assert response.interim == []
    assert response.status == 200
    assert response.body == b"after interim"
    assert response.values("x-interim") == []
    assert len(upstream.matching("interim")) == 1


def test_upgrade_is_not_tunnelled(client: Client, upstream: MockUpstream) -> None:
    response = client.request(
        "GET",
        ECHO + "/ws",
        [
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
    )
    assert response.status != 101
    assert response.values("upgrade") == []
    for got in upstream.matching("/ws"):
        assert got.values("upgrade") == []
        assert all("upgrade" not in v.lower() for v in got.values("connection"))


def test_keep_alive_serves_several_requests(client: Client, upstream: MockUpstream) -> None:
    for index in range(5):
        response = client.request("GET", f"{ECHO}/ka{index}")
        assert response.status == 200
        assert response.json()["target"] == f"/ka{index}"
    assert len(upstream.matching("/ka")) == 5


def test_chunked_request_body_forwarded_intact(client: Client, upstream: MockUpstream) -> None:
    pieces = [b"hello", b" ", b"chunked ", b"world" * 1000]
    body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces)
    client.send(
        b"PUT /conf/echo/chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        + body
        + b"0\r\n\r\n"
    )
    response = client.read_response("PUT")
    assert response.status == 200
    assert upstream.only("/chunked").body == b"".join(pieces)
    assert json.loads(response.body)["body_len"] == sum(map(len, pieces))


def test_idle_connection_closed_after_keepalive_timeout(client: Client) -> None:
    response = client.request("GET", ECHO + "/idle")
    assert response.status == 200
    assert response.header("keep-alive") == "timeout=1"  # a second short of the real limit
    start = time.monotonic()
    assert client.closed_within(6)
    assert 1.5 <= time.monotonic() - start < 5


def test_keep_alive_outlasts_the_request_timeout(client: Client) -> None:
    """--request-timeout bounds a head; between requests --keepalive-timeout applies."""
    assert client.request("GET", ECHO + "/first").status == 200
    time.sleep(1.4)  # past --request-timeout (1 s), within --keepalive-timeout (2 s)
    assert client.request("GET", ECHO + "/second").status == 200


def test_silent_connection_closed_after_request_timeout(gateway: Gateway) -> None:
    with Client(gateway.proxy_port, timeout=5) as conn:
        start = time.monotonic()
        assert conn.closed_within(5)
        assert 0.5 <= time.monotonic() - start < 4


def test_partial_head_closed_after_request_timeout(gateway: Gateway) -> None:
    with Client(gateway.proxy_port, timeout=5) as conn:
        start = time.monotonic()
        conn.send(b"GET /conf/echo/slow HTTP/1.1\r\nHost: h\r\n")
        assert conn.closed_within(5)
        assert 0.5 <= time.monotonic() - start < 4
