"""The one engine, in-process (tests/pipeline.py): every request ends in the same relay.

A request goes straight to the relay when nothing must be waited for (credentials cached, no
body, an idle pooled connection); otherwise it passes through the prelude first (a cold token,
a body, a new connection). `test_both_ways_give_the_same_outcome` runs each scenario both
ways on fresh pipelines and requires the same requests at the target, the same response at
the caller and the same access line. The tests after it drive the relay's other turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from appgateway import transitions
from appgateway.relay import ENDED, LEGAL_MOVES, PREPARING, RELAYING, SENDING, STAGES
from tests.conftest import (
    BASIC_ALICE,
    Connection,
    Seen,
    request_bytes,
    response,
)
from tests.pipeline import MakeRig, access_for, after_warmup, warm

pytestmark = pytest.mark.timeout(30)

MOVES = {
    (PREPARING, SENDING),
    (PREPARING, ENDED),
    (SENDING, PREPARING),
    (SENDING, RELAYING),
    (SENDING, ENDED),
    (RELAYING, ENDED),
}


@pytest.mark.parametrize(
    ("old", "new"), list(itertools.product(range(len(STAGES)), range(len(STAGES))))
)
def test_every_allowed_move_is_listed(old: int, new: int) -> None:
    assert transitions.allowed(LEGAL_MOVES, old, new) is ((old, new) in MOVES)


# -- each scenario both ways ------------------------------------------------------------------


@dataclass
class Scenario:
    method: str
    target: str
    warm: str  # a request to the same API that leaves its connection and token cached
    headers: list[tuple[str, str]] = field(default_factory=lambda: [("Host", "gw")])
    body: bytes | None = None
    listener: str = "proxy"
    settings: dict[str, Any] = field(default_factory=dict)


SCENARIOS = {
    "basic": Scenario("GET", "/shop/basic/echo?q=1", "/shop/basic/warm"),
    "params": Scenario("GET", "/shop/params/x?a=1", "/shop/params/warm"),
    "oauth": Scenario("GET", "/shop-oauth/oauth/x", "/shop-oauth/oauth/warm"),
    "5xx": Scenario("GET", "/shop/orders/status/503", "/shop/orders/warm"),
    "redirect": Scenario(
        "GET", "/shop/orders/redirect?location=/api/elsewhere%3Fx%3D1", "/shop/orders/warm"
    ),
    "head": Scenario("HEAD", "/shop/orders/h", "/shop/orders/warm"),
    "204": Scenario("GET", "/shop/orders/status/204", "/shop/orders/warm"),
    "chunked": Scenario("GET", "/shop/orders/chunked", "/shop/orders/warm"),
    "401-then-200": Scenario("GET", "/shop/basic/auth401/k", "/shop/basic/warm"),
    "always-401": Scenario("GET", "/shop/basic/always401", "/shop/basic/warm"),
    "oauth-401": Scenario("GET", "/shop-oauth/oauth/auth401/k", "/shop-oauth/oauth/warm"),
    "big": Scenario("GET", "/shop/orders/big/4000000", "/shop/orders/warm"),
    "post": Scenario("POST", "/shop/basic/echo", "/shop/basic/warm", body=b"payload"),
    "post-401": Scenario("POST", "/shop/basic/auth401/p", "/shop/basic/warm", body=b"again"),
    "access-token": Scenario(
        "GET",
        "/shop-oauth/oauth/x",
        "/shop-oauth/oauth/warm",
        headers=[("Host", "gw"), ("Access-Token", "Bearer mine")],
    ),
    "compass": Scenario("GET", "/shop/basic/basic/x", "/shop/basic/basic/w", listener="compass"),
    "host-route": Scenario("GET", "/any/path?z=2", "/warm", headers=[("Host", "shop-b1.ns.svc")]),
    "header-timeout": Scenario(
        "GET", "/shop/orders/hang/2", "/shop/orders/warm", settings={"proxy_timeout": 0.3}
    ),
}

VARYING_FIELDS = {"host", "x-request-id", "via"}
"""Differ between two pipelines whatever the way: the upstream's port, the random id prefix."""


def normalized(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(n, "*" if n.lower() in VARYING_FIELDS else v) for n, v in fields]


def normalized_body(body: bytes) -> bytes:
    """The mock's echo repeats the request's fields: those that vary anyway are masked."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if isinstance(doc, dict) and isinstance(doc.get("headers"), list):
        doc["headers"] = normalized([(n, v) for n, v in doc["headers"]])
    return json.dumps(doc).encode()


@dataclass
class Outcome:
    target_side: list[tuple[str, str, list[tuple[str, str]], bytes]]
    caller_side: tuple[int, list[tuple[str, str]], bytes]
    access: dict[str, Any]
    new_connections: int
    token_fetches: int


async def run(make_rig: MakeRig, scenario: Scenario, way: str) -> Outcome:
    rig = await make_rig(**scenario.settings)
    headers = scenario.headers
    if way == "direct":
        warmed = await rig.call("GET", scenario.warm, headers, listener=scenario.listener)
        assert warmed.status == 200
    seen_before = len(rig.api.requests)
    connections_before = rig.api.connections
    resp = await rig.call(
        scenario.method, scenario.target, headers, scenario.body, listener=scenario.listener
    )
    sent = [r for r in rig.api.requests[seen_before:] if r.path != "/token"]
    path = scenario.target.partition("?")[0]
    access = dict(access_for(rig, path))
    for varying in ("ts", "duration_ms", "upstream_ms", "request_id"):
        access.pop(varying)
    return Outcome(
        [(r.method, r.target, normalized(r.headers), r.body) for r in sent],
        (resp.status, normalized(resp.headers), normalized_body(resp.body)),
        access,
        rig.api.connections - connections_before,
        len([r for r in rig.api.requests[seen_before:] if r.path == "/token"]),
    )


@pytest.mark.parametrize("name", SCENARIOS)
async def test_both_ways_give_the_same_outcome(make_rig: MakeRig, name: str) -> None:
    scenario = SCENARIOS[name]
    direct = await run(make_rig, scenario, "direct")
    prelude = await run(make_rig, scenario, "prelude")
    assert direct.target_side == prelude.target_side
    assert direct.caller_side == prelude.caller_side
    assert direct.access == prelude.access
    # The two ways did differ: the prelude connected (and fetched the token), the direct way
    # used what the warm-up left (a retry after 401 connects anew either way).
    assert prelude.new_connections >= 1
    retried = direct.access["retried"]
    assert direct.new_connections == (1 if retried else 0)
    if name.startswith("oauth"):
        assert (direct.token_fetches, prelude.token_fetches) == (int(retried), 1 + int(retried))


# -- the relay's turns, on a pooled connection ---------------------------------------------


async def test_direct_relay_on_the_pooled_connection(make_rig: MakeRig) -> None:
    async def answer(conn: Connection, seen: Seen) -> None:
        await conn.send(response(503, b"busy"))

    rig = await make_rig(handler=after_warmup(answer))
    await warm(rig, "/shop/basic/warm")
    resp = await rig.call("GET", "/shop/basic/x?q=1", [("Host", "gw"), ("X-Request-Id", "r1")])
    assert (resp.status, resp.body) == (502, b"busy")
    assert resp.value("Target-System-Status") == "503"
    assert rig.api.connections == 1
    second = rig.api.requests[1]
    assert second.target == "/basic-api/x?q=1"
    assert second.value("Authorization") == BASIC_ALICE
    assert second.value("X-Request-Id") == "r1"
    line = access_for(rig, "/shop/basic/x")
    assert line["status"] == 502 and line["upstream_status"] == 503
    assert line["request_id"] == "r1" and line["upstream_ms"] is not None


async def test_401_on_a_pooled_connection_is_retried_with_fresh_credentials(
    make_rig: MakeRig,
) -> None:
    async def deny(conn: Connection, seen: Seen) -> None:
        await conn.send(response(401, b"denied"))

    rig = await make_rig(handler=after_warmup(deny))
    await warm(rig, "/shop/basic/warm")
    resp = await rig.call("GET", "/shop/basic/again")
    # The rejected connection is dropped; the retry opens a new one, whose first answer is 200.
    assert (resp.status, resp.body) == (200, b"warm")
    assert [r.target for r in rig.api.requests] == ["/basic-api/warm", *["/basic-api/again"] * 2]
    assert all(r.value("Authorization") == BASIC_ALICE for r in rig.api.requests)
    line = access_for(rig, "/shop/basic/again")
    assert line["retried"] is True and line["upstream_status"] == 200


async def test_stale_pooled_connection_is_replaced_for_a_get(make_rig: MakeRig) -> None:
    async def close_unanswered(conn: Connection, seen: Seen) -> None:
        conn.writer.close()

    rig = await make_rig(handler=after_warmup(close_unanswered))
    await warm(rig)
    resp = await rig.call("GET", "/shop/orders/next")
    assert (resp.status, resp.body) == (200, b"warm")
    assert rig.api.connections == 2
    assert [r.target for r in rig.api.requests][1:] == ["/api/next", "/api/next"]


async def test_header_timeout_on_a_pooled_connection_is_504(make_rig: MakeRig) -> None:
    async def silent(conn: Connection, seen: Seen) -> None:
        await conn.until_eof()

    rig = await make_rig(handler=after_warmup(silent), proxy_timeout=0.3)
    await warm(rig)
    resp = await rig.call("GET", "/shop/orders/slow")
    assert resp.status == 504 and resp.body == b""
    assert rig.api.connections == 1
    assert (
        rig.sample("appgateway_upstream_errors_total", app="shop", service="orders", kind="timeout")
        == 1.0
    )
    assert access_for(rig, "/shop/orders/slow")["error_class"] == "upstream_timeout"


@pytest.mark.parametrize("stall", [False, True])
async def test_a_response_whose_body_fails_is_cut(stall: bool, make_rig: MakeRig) -> None:
    async def partial(conn: Connection, seen: Seen) -> None:
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        if stall:
            await conn.until_eof()
        else:
            conn.writer.transport.abort()

    rig = await make_rig(handler=after_warmup(partial), idle_timeout=0.3)
    await warm(rig)
    client = await rig.clients(rig.proxy_port)
    await client.send(request_bytes("GET", "/shop/orders/partial", [("Host", "gw")]))
    received = await client.eof()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 100" in head.lower()
    assert body == b"x" * 10  # cut short: the caller can tell from the length
    line = access_for(rig, "/shop/orders/partial")
    expected = "response body idle timeout" if stall else "connection lost during response body"
    assert line["error"] == expected


async def test_caller_leaving_closes_the_target_connection(make_rig: MakeRig) -> None:
    closed = asyncio.Event()

    async def hang(conn: Connection, seen: Seen) -> None:
        await conn.until_eof()
        closed.set()

    rig = await make_rig(handler=after_warmup(hang), proxy_timeout=10.0)
    await warm(rig)
    client = await rig.clients(rig.proxy_port)
    await client.send(request_bytes("GET", "/shop/orders/hang", [("Host", "gw")]))
    for _ in range(200):
        if len(rig.api.requests) == 2:
            break
        await asyncio.sleep(0.01)
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
    client.close()
    await asyncio.wait_for(closed.wait(), 5)
    assert access_for(rig, "/shop/orders/hang")["status"] == 499
    assert rig.sample("appgateway_inflight_requests", listener="proxy") == 0.0


async def test_relay_waits_for_a_slow_reader(make_rig: MakeRig) -> None:
    size = 8 * 1024 * 1024
    payload = bytes(range(256)) * (size // 256)

    async def big(conn: Connection, seen: Seen) -> None:
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + payload)

    rig = await make_rig(handler=after_warmup(big))
    await warm(rig)
    client = await rig.clients(rig.proxy_port)
    await client.send(request_bytes("GET", "/shop/orders/big", [("Host", "gw")]))
    await asyncio.sleep(0.3)  # the gateway fills the socket buffers and must wait for us
    resp = await client.response(within=20)
    assert resp.status == 200 and resp.body == payload
    assert rig.api.connections == 1
    assert access_for(rig, "/shop/orders/big")["bytes_out"] > size


async def test_relay_gives_up_on_a_caller_that_stops_reading(make_rig: MakeRig) -> None:
    size = 32 * 1024 * 1024
    sent = asyncio.Event()

    async def big(conn: Connection, seen: Seen) -> None:
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        with contextlib.suppress(ConnectionError):
            for _ in range(size // 65536):
                conn.writer.write(b"z" * 65536)
                await conn.writer.drain()
        sent.set()

    rig = await make_rig(handler=after_warmup(big), idle_timeout=0.3)
    await warm(rig)
    client = await rig.clients(rig.proxy_port)
    cast(asyncio.ReadTransport, client.writer.transport).pause_reading()
    await client.send(request_bytes("GET", "/shop/orders/stuck", [("Host", "gw")]))
    await asyncio.wait_for(sent.wait(), 10)  # the gateway closed the target connection
    line = access_for(rig, "/shop/orders/stuck")
    assert line["error"] == "response body idle timeout (caller not reading)"
    assert rig.sample("appgateway_inflight_requests", listener="proxy") == 0.0


@pytest.mark.parametrize(
    ("headers", "replayed"),
    [([("Host", "gw")], False), ([("Host", "gw"), ("Idempotency-Key", "k-1")], True)],
    ids=["plain", "idempotency-key"],
)
async def test_post_on_a_stale_pooled_connection_is_not_replayed(
    make_rig: MakeRig, headers: list[tuple[str, str]], replayed: bool
) -> None:
    """RFC 9110 §9.2.2: the target may have processed the POST before it closed; only a
    request the caller marked with an idempotency key goes out again."""

    async def close_unanswered(conn: Connection, seen: Seen) -> None:
        conn.writer.close()

    rig = await make_rig(handler=after_warmup(close_unanswered))
    await warm(rig)
    resp = await rig.call("POST", "/shop/orders/once", headers, b"payload")
    sent = [r.target for r in rig.api.requests][1:]
    if replayed:
        assert (resp.status, resp.body) == (200, b"warm")
        assert sent == ["/api/once", "/api/once"]
    else:
        assert (resp.status, resp.body) == (502, b"")
        assert sent == ["/api/once"]


async def test_early_answer_while_uploading_is_relayed(make_rig: MakeRig) -> None:
    """A target may refuse (401, 413) before it read the body: the answer is relayed at once
    (a streamed body is not retried), and the connection is not reused."""

    async def refuse_before_reading(conn: Connection) -> None:
        await conn.head()
        await conn.send(response(401, b"no", [("WWW-Authenticate", "Basic")]))
        await conn.until_eof()

    rig = await make_rig(handler=refuse_before_reading, retry_body_limit=16)
    client = await rig.clients(rig.proxy_port)
    head = request_bytes("PUT", "/shop/basic/up", [("Host", "gw"), ("Content-Length", "400000")])
    await client.send(head + b"u" * 1000)  # the rest never comes
    resp = await client.response(within=5)
    assert (resp.status, resp.body) == (401, b"no")
    line = access_for(rig, "/shop/basic/up")
    assert line["retried"] is False and line["upstream_status"] == 401


async def test_header_and_idle_timeouts_are_separate(make_rig: MakeRig) -> None:
    """--proxy-timeout bounds the head only; a body may take longer while it keeps moving."""

    async def trickle(conn: Connection) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(4):
            await asyncio.sleep(0.15)
            await conn.send(b"1\r\nx\r\n")
        await conn.send(b"0\r\n\r\n")

    rig = await make_rig(handler=trickle, proxy_timeout=0.3, idle_timeout=1.0)
    resp = await rig.call("GET", "/shop/orders/trickle")
    assert (resp.status, resp.body) == (200, b"xxxx")
    assert access_for(rig, "/shop/orders/trickle")["duration_ms"] > 500
