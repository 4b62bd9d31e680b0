"""One target connection under hostile or odd answers: what its sink may see, and when it is
reused. Scripted loopback servers send the exact bytes."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from appgateway import transitions
from appgateway.upstream import Upstream
from appgateway.upstream_connection import (
    BODY,
    CLOSED,
    CONNECTING,
    DONE,
    IDLE,
    LEGAL_MOVES,
    PHASES,
    WAITING,
)
from tests.conftest import Connection, Seen, ServerFactory, response
from tests.test_upstream import exchange, outbound, pool_for, send

pytestmark = pytest.mark.timeout(30)

MOVES = {
    (CONNECTING, IDLE),
    (CONNECTING, CLOSED),
    (IDLE, WAITING),
    (IDLE, CLOSED),
    (WAITING, BODY),
    (WAITING, DONE),
    (WAITING, CLOSED),
    (BODY, DONE),
    (BODY, CLOSED),
    (DONE, IDLE),
    (DONE, CLOSED),
}


@pytest.mark.parametrize(
    ("old", "new"), list(itertools.product(range(len(PHASES)), range(len(PHASES))))
)
def test_every_allowed_move_is_listed(old: int, new: int) -> None:
    assert transitions.allowed(LEGAL_MOVES, old, new) is ((old, new) in MOVES)


FORGED = response(200, b"FORGED", [("X-Forged", "1")])


@pytest.mark.parametrize(
    ("method", "answer", "body"),
    [
        ("GET", response(200, b"first", [("X-First", "1")]) + FORGED, b"first"),
        ("HEAD", response(200, b"first", [("X-First", "1")]) + FORGED, b""),
        ("GET", response(200, b"first", [("X-First", "1")]) + b"\x00garbage\r\n\r\n", b"first"),
        ("GET", b"HTTP/1.1 204 No Content\r\nX-First: 1\r\n\r\nsurplus" + FORGED, b""),
    ],
    ids=["second-response", "head-with-body", "garbage", "204-with-body"],
)
async def test_bytes_after_a_complete_response_never_reach_anyone(
    servers: ServerFactory, upstream: Upstream, method: str, answer: bytes, body: bytes
) -> None:
    """The answer stands as framed; the surplus kills the connection instead of being read
    as the next exchange's answer."""

    async def glue(conn: Connection) -> None:
        while (seen := await conn.request()) is not None:
            await conn.send(answer if seen.target == "/glued" else response(200, b"ok"))

    server = await servers(handler=glue)
    pool = pool_for(upstream, server)
    conn, got = await exchange(upstream, pool, outbound(server, b"/glued", method=method.encode()))
    assert (got, (b"X-First", b"1") in conn.headers) == (body, True)
    assert all(name != b"X-Forged" for name, _ in conn.headers)
    assert not conn.keep_alive and conn.phase == CLOSED and len(pool.idle) == 0
    after, got = await exchange(upstream, pool, outbound(server, b"/next"))
    assert (after.status, got) == (200, b"ok")
    assert [(r.conn, r.target) for r in server.requests] == [(1, "/glued"), (2, "/next")]


async def test_surplus_in_a_later_read_also_kills_the_connection(
    servers: ServerFactory, upstream: Upstream
) -> None:
    async def late(conn: Connection) -> None:
        await conn.request()
        await conn.send(response(200, b"first"))
        await asyncio.sleep(0.05)
        await conn.send(FORGED)
        await conn.until_eof()

    server = await servers(handler=late)
    pool = pool_for(upstream, server)
    conn, capture = await send(upstream, pool, outbound(server))
    assert await capture.end == b"first"
    await asyncio.sleep(0.1)  # FORGED arrives before we release
    conn.release()
    assert len(pool.idle) == 0


async def test_trailer_fields_never_become_headers(
    servers: ServerFactory, upstream: Upstream
) -> None:
    async def trailers(seen: Seen) -> bytes:
        body = b"5\r\nhello\r\n0\r\nX-Trailer-Secret: t\r\nSet-Cookie: evil=1\r\n\r\n"
        return response(200, body, [("Transfer-Encoding", "chunked")], length=False)

    server = await servers(trailers)
    conn, body = await exchange(upstream, pool_for(upstream, server), outbound(server))
    assert body == b"hello"
    assert conn.headers == [(b"Transfer-Encoding", b"chunked")]
    assert conn.transfer_codings is None


@pytest.mark.parametrize(
    ("encoding", "codings", "length"),
    [("gzip", b"gzip", None), ("gzip, chunked", b"gzip", None), ("chunked", None, None)],
)
async def test_transfer_codings_other_than_chunked_stay_on_the_body(
    servers: ServerFactory, upstream: Upstream, encoding: str, codings: bytes | None, length: None
) -> None:
    payload = b"\x1f\x8b0\r\n\r\nnot framing"

    async def coded(conn: Connection) -> None:
        await conn.request()
        body = payload
        if encoding.endswith("chunked"):
            body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(payload), payload)
        await conn.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n%b" % (encoding.encode(), body)
        )
        conn.writer.close()  # gzip alone: the body ends with the connection

    server = await servers(handler=coded)
    conn, body = await exchange(upstream, pool_for(upstream, server), outbound(server))
    assert body == payload
    assert (conn.transfer_codings, conn.content_length) == (codings, length)


async def test_bytes_on_an_idle_pooled_connection_drop_it(
    servers: ServerFactory, upstream: Upstream
) -> None:
    async def chatty(conn: Connection) -> None:
        await conn.request()
        await conn.send(response(200, b"ok"))
        await asyncio.sleep(0.05)
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nFORGED")
        await conn.until_eof()

    server = await servers(handler=chatty)
    pool = pool_for(upstream, server)
    await exchange(upstream, pool, outbound(server))
    assert len(pool.idle) == 1
    await asyncio.sleep(0.15)
    assert len(pool.idle) == 0
