"""The caller-side Protocol driven over real loopback sockets with small handlers.

The handlers here stand in for the pipeline: they echo, stream, stall or fail on purpose, so
each test isolates one duty of the HTTP layer (architecture.md "HTTP layer requirements").
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

import pytest

from appgateway.errors import GatewayError, NotFound
from appgateway.exchange import HIGH_WATER, Exchange
from appgateway.server import CLOSE_LINGER, ClientConnection
from tests.conftest import Client, ClientFactory, Listen, read_response, request_bytes, write

pytestmark = pytest.mark.timeout(30)


async def read_all(ex: Exchange) -> bytes:
    parts = []
    while data := await ex.read():
        parts.append(data)
    return b"".join(parts)


async def echo(ex: Exchange) -> None:
    body = await read_all(ex)
    doc = {
        "method": ex.method.decode(),
        "target": ex.target.decode("latin-1"),
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in ex.headers],
        "body": body.decode("latin-1"),
        "chunked": ex.chunked,
        "content_length": ex.content_length,
    }
    payload = json.dumps(doc).encode()
    ex.start_response(200, b"", [(b"Content-Type", b"application/json")], len(payload))
    await write(ex, payload)
    ex.end()


def reset(client: Client) -> None:
    """Close with RST: unlike a FIN, which may be a half-close, this is a caller gone."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


def closes(response_head: bytes) -> bool:
    return b"\r\nconnection: close\r\n" in response_head.lower()


# -- keep-alive and pipelining ------------------------------------------------------------------


async def test_keep_alive_serves_several_requests_on_one_connection(
    listen: Listen, clients: ClientFactory
) -> None:
    seen: list[object] = []

    async def handler(ex: Exchange) -> None:
        seen.append(ex.conn)
        await echo(ex)

    server = await listen(handler)
    client = await clients(server.port)
    for index in range(3):
        resp = await client.request("POST", f"/r{index}", body=b"x" * index)
        doc = resp.json()
        assert resp.status == 200 and not closes(resp.head)
        assert doc == {
            "method": "POST",
            "target": f"/r{index}",
            "headers": [["Host", "gateway"], ["Content-Length", str(index)]],
            "body": "x" * index,
            "chunked": False,
            "content_length": index,
        }
    assert len(seen) == 3 and len(set(map(id, seen))) == 1


async def test_pipelined_requests_are_answered_in_order(
    listen: Listen, clients: ClientFactory
) -> None:
    events: list[str] = []

    async def handler(ex: Exchange) -> None:
        target = ex.target.decode()
        events.append("start " + target)
        if target == "/slow":
            await asyncio.sleep(0.2)
        body = target.encode()
        ex.start_response(200, b"", [], len(body))
        await write(ex, body)
        ex.end()
        events.append("end " + target)

    server = await listen(handler)
    client = await clients(server.port)
    await client.send(request_bytes("GET", "/slow") + request_bytes("GET", "/fast"))
    first = await client.response()
    second = await client.response()
    assert (first.body, second.body) == (b"/slow", b"/fast")
    assert events == ["start /slow", "end /slow", "start /fast", "end /fast"]


async def test_malformed_request_after_a_good_one_is_answered_after_it(
    listen: Listen, clients: ClientFactory
) -> None:
    server = await listen(echo)
    client = await clients(server.port)
    await client.send(request_bytes("GET", "/ok") + b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    first = await client.response()
    second = await client.response()
    assert first.status == 200 and json.loads(first.body)["target"] == "/ok"
    assert second.status == 400 and closes(second.head)
    assert await client.eof() == b""


# -- what the handler sees --------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/a%2Fb/c'(x)?q=%7C&r=a+b",
        "/app/svc/x|y",
        "http://shop-o1.ns.svc:8080/p?q",
        "//double//slash/",
    ],
)
async def test_raw_target_and_headers_reach_the_handler_unchanged(
    target: str, listen: Listen, clients: ClientFactory
) -> None:
    server = await listen(echo)
    client = await clients(server.port)
    headers = [("Host", "h"), ("X-Dup", "1"), ("x-dup", "2"), ("user-agent", "UA/1")]
    resp = await client.request("PATCH", target, headers)
    doc = resp.json()
    assert isinstance(doc, dict)
    assert doc["method"] == "PATCH" and doc["target"] == target
    assert doc["headers"] == [list(h) for h in headers]


async def test_chunked_request_body_is_decoded(listen: Listen, clients: ClientFactory) -> None:
    server = await listen(echo)
    client = await clients(server.port)
    await client.send(b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    for part in (b"5\r\nhello\r\n", b"1;ext=1\r\n \r\n", b"5\r\nworld\r\n0\r\n\r\n"):
        await asyncio.sleep(0.02)
        await client.send(part)
    doc = (await client.response()).json()
    assert isinstance(doc, dict)
    assert doc["body"] == "hello world" and doc["chunked"] and doc["content_length"] is None


async def test_read_up_to_reports_whether_the_body_fit(
    listen: Listen, clients: ClientFactory
) -> None:
    results: list[tuple[bytes, bool, bytes]] = []

    async def handler(ex: Exchange) -> None:
        data, complete = await ex.read_up_to(10)
        rest = await read_all(ex)
        results.append((data, complete, rest))
        ex.start_response(204, b"", [], None)
        ex.end()

    server = await listen(handler)
    client = await clients(server.port)
    assert (await client.request("POST", "/", body=b"0123456789")).status == 204
    await client.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    for part in (b"8\r\nabcdefgh\r\n", b"8\r\nijklmnop\r\n", b"4\r\nqrst\r\n0\r\n\r\n"):
        await asyncio.sleep(0.02)
        await client.send(part)
    assert (await client.response()).status == 204
    assert results[0] == (b"0123456789", True, b"")
    data, complete, rest = results[1]
    assert not complete and len(data) > 10 and data + rest == b"abcdefghijklmnopqrst"


# -- response framing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "length_header"),
    [("HEAD", 200, True), ("GET", 204, False), ("GET", 304, True), ("HEAD", 404, True)],
)
async def test_bodyless_responses_carry_no_body(
    method: str, status: int, length_header: bool, listen: Listen, clients: ClientFactory
) -> None:
    async def handler(ex: Exchange) -> None:
        if ex.target == b"/next":
            await echo(ex)
            return
        ex.start_response(status, b"", [(b"X-S", b"1")], 5)
        await write(ex, b"hello")
        ex.end()

    server = await listen(handler)
    client = await clients(server.port)
    first = await client.request(method, "/first")
    assert first.status == status and first.value("X-S") == "1"
    assert first.value("Content-Length") == ("5" if length_header else None)
    assert first.value("Transfer-Encoding") is None and not closes(first.head)
    # Any body byte written after the head would now be read as the next status line.
    second = await client.request("GET", "/next")
    assert second.status == 200 and b'"target": "/next"' in second.body


async def stream_without_length(ex: Exchange) -> None:
    ex.start_response(200, b"", [(b"Content-Type", b"text/plain")], None)
    await write(ex, b"hello ")
    await write(ex, b"")  # an empty write must not end a chunked body
    await write(ex, b"world")
    ex.end()


async def test_unknown_length_is_chunked_for_http11(listen: Listen, clients: ClientFactory) -> None:
    server = await listen(stream_without_length)
    client = await clients(server.port)
    await client.send(request_bytes("GET", "/"))
    head = await client.reader.readuntil(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked\r\n" in head and b"Content-Length" not in head
    raw = await client.reader.readuntil(b"0\r\n\r\n")
    assert raw == b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
    # The connection stays usable.
    resp = await client.request("GET", "/again")
    assert resp.body == b"hello world"


async def test_unknown_length_is_close_delimited_for_http10(
    listen: Listen, clients: ClientFactory
) -> None:
    server = await listen(stream_without_length)
    client = await clients(server.port)
    await client.send(b"GET / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
    resp = await client.response()
    assert resp.status == 200 and resp.body == b"hello world"
    assert resp.value("Transfer-Encoding") is None and resp.value("Content-Length") is None
    assert closes(resp.head)
    assert await client.eof() == b""


async def test_http10_caller_gets_close_after_a_sized_response(
    listen: Listen, clients: ClientFactory
) -> None:
    server = await listen(echo)
    client = await clients(server.port)
    await client.send(b"GET /old HTTP/1.0\r\n\r\n")
    resp = await client.response()
    assert resp.status == 200 and closes(resp.head)
    assert await client.eof() == b""


# -- Expect: 100-continue -----------------------------------------------------------------------


async def test_100_continue_is_sent_when_the_handler_reads(
    listen: Listen, clients: ClientFactory
) -> None:
    server = await listen(echo)
    client = await clients(server.port)
    headers = [("Host", "h"), ("Expect", "100-continue"), ("Content-Length", "5")]
    await client.send(request_bytes("POST", "/", headers))
    interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await client.send(b"hello")
    resp = await client.response()
    doc = resp.json()
    assert isinstance(doc, dict)
    assert resp.status == 200 and doc["body"] == "hello"


async def test_100_continue_is_not_sent_when_the_handler_answers_first(
    listen: Listen, clients: ClientFactory
) -> None:
    async def refuse(ex: Exchange) -> None:
        ex.start_response(401, b"", [], 2)
        await write(ex, b"no")
        ex.end()

    server = await listen(refuse)
    client = await clients(server.port)
    headers = [("Host", "h"), ("Expect", "100-continue"), ("Content-Length", "5")]
    await client.send(request_bytes("POST", "/", headers))
    resp = await client.response()
    assert resp.status == 401 and resp.body == b"no"
    # The body was never read, so the connection cannot carry another request.
    assert closes(resp.head)
    assert await client.eof() == b""


# -- back-pressure ------------------------------------------------------------------------------


async def test_unread_upload_pauses_reading(listen: Listen, clients: ClientFactory) -> None:
    total = 32 * 1024 * 1024
    release = asyncio.Event()
    exchanges: list[Exchange] = []

    async def slow_reader(ex: Exchange) -> None:
        exchanges.append(ex)
        await release.wait()
        size = len(await read_all(ex))
        body = str(size).encode()
        ex.start_response(200, b"", [], len(body))
        await write(ex, body)
        ex.end()

    server = await listen(slow_reader)
    client = await clients(server.port)
    client.writer.write(
        request_bytes("PUT", "/up", [("Host", "h"), ("Content-Length", str(total))])
    )
    client.writer.write(b"u" * total)  # buffered by the client transport, not awaited
    await asyncio.sleep(0.3)
    assert exchanges, "the handler did not start"
    ex = exchanges[0]
    # The server stopped reading at about one high-water mark plus one socket read...
    assert 0 < ex.bytes_in < HIGH_WATER + 1024 * 1024
    # ... so most of the upload is still queued on the caller's side.
    assert client.writer.transport.get_write_buffer_size() > total // 2
    release.set()
    resp = await client.response(within=20)
    assert resp.body == str(total).encode()
    assert ex.bytes_in == total


async def test_unread_response_pauses_the_handler(listen: Listen, clients: ClientFactory) -> None:
    """`write` awaits the caller: a handler cannot queue an unbounded response."""
    progress: list[int] = []
    chunk = b"d" * 65536

    async def producer(ex: Exchange) -> None:
        ex.start_response(200, b"", [], None)
        for index in range(1024):  # 64 MiB if nothing pushed back
            await write(ex, chunk)
            progress.append(index)
        ex.end()

    server = await listen(producer)
    client = await clients(server.port)
    await client.send(request_bytes("GET", "/big"))
    await asyncio.sleep(0.3)
    stalled_at = len(progress)
    assert stalled_at < 512  # well under 32 MiB queued while nobody reads
    await asyncio.sleep(0.1)
    assert len(progress) == stalled_at
    resp = await client.response(within=20)
    assert len(resp.body) == 1024 * 65536


# -- timeouts ---------------------------------------------------------------------------------


async def test_request_timeout_closes_a_silent_connection(
    listen: Listen, clients: ClientFactory
) -> None:
    server = await listen(echo, request_timeout=0.2)
    started = time.monotonic()  # before connecting: the server's timer starts after this
    client = await clients(server.port)
    assert await client.eof() == b""
    assert 0.15 <= time.monotonic() - started < 2


async def test_request_timeout_closes_an_idle_keep_alive_connection(
    listen: Listen, clients: ClientFactory
) -> None:
    server = await listen(echo, request_timeout=0.2)
    client = await clients(server.port)
    assert (await client.request("GET", "/")).status == 200
    started = time.monotonic()
    assert await client.eof() == b""
    assert 0.15 <= time.monotonic() - started < 2


async def test_request_timeout_does_not_cut_a_slow_handler(
    listen: Listen, clients: ClientFactory
) -> None:
    async def slow(ex: Exchange) -> None:
        await asyncio.sleep(0.5)
        await echo(ex)

    server = await listen(slow, request_timeout=0.2)
    client = await clients(server.port)
    assert (await client.request("GET", "/")).status == 200


async def test_idle_timeout_ends_a_stalled_request_body(
    listen: Listen, clients: ClientFactory
) -> None:
    outcome: list[str] = []

    async def reader(ex: Exchange) -> None:
        try:
            await read_all(ex)
        except Exception as exc:
            outcome.append(type(exc).__name__)
            raise
        outcome.append("complete")

    server = await listen(reader, idle_timeout=0.2)
    client = await clients(server.port)
    await client.send(request_bytes("POST", "/", [("Host", "h"), ("Content-Length", "10")]))
    await client.send(b"12345")
    assert await client.eof() == b""  # closed without an answer
    assert outcome == ["CallerGone"]


# -- protocol errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    ],
)
async def test_malformed_request_is_400_json_and_closed(
    raw: bytes, listen: Listen, clients: ClientFactory
) -> None:
    called: list[Exchange] = []

    async def handler(ex: Exchange) -> None:
        called.append(ex)
        await echo(ex)

    server = await listen(handler)
    client = await clients(server.port)
    await client.send(raw)
    resp = await client.response()
    assert resp.status == 400 and closes(resp.head)
    assert resp.value("Content-Type") == "application/json;charset=UTF-8"
    doc = resp.json()
    assert isinstance(doc, dict) and doc["code"] == 400
    assert doc["error"].startswith("malformed request")
    assert await client.eof() == b""
    assert called == []


async def test_malformed_chunked_body_is_not_passed_on_as_complete(
    listen: Listen, clients: ClientFactory
) -> None:
    """A body whose chunk framing breaks mid-way must not reach the handler as a whole body."""
    bodies: list[bytes] = []

    async def handler(ex: Exchange) -> None:
        try:
            body = await read_all(ex)
        except GatewayError as exc:  # as the pipeline does
            ex.send_error(exc)
            return
        bodies.append(body)
        await echo(ex)

    server = await listen(handler)
    client = await clients(server.port)
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    await client.send(head + b"5\r\nhello\r\n")
    await asyncio.sleep(0.05)
    await client.send(b"zz\r\nbroken\r\n0\r\n\r\n")
    data = await client.eof()
    assert bodies == [], "the handler saw a truncated body as complete"
    assert data.startswith(b"HTTP/1.1 400 "), data[:60]


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
        b"GET /" + b"p" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 60) for i in range(1200)),
    ],
    ids=["one-header", "long-target", "many-headers"],
)
async def test_head_over_64k_is_431(raw: bytes, listen: Listen, clients: ClientFactory) -> None:
    called: list[Exchange] = []

    async def handler(ex: Exchange) -> None:
        called.append(ex)
        await echo(ex)

    server = await listen(handler)
    client = await clients(server.port)
    await client.send(raw)
    resp = await client.response()
    assert resp.status == 431 and closes(resp.head)
    assert resp.json() == {"code": 431, "error": "request header fields too large"}
    assert await client.eof() == b""
    assert called == []


async def test_connect_is_405_and_never_reaches_the_handler(
    listen: Listen, clients: ClientFactory
) -> None:
    called: list[Exchange] = []

    async def handler(ex: Exchange) -> None:
        called.append(ex)
        await echo(ex)

    server = await listen(handler)
    client = await clients(server.port)
    await client.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    resp = await client.response()
    assert resp.status == 405 and closes(resp.head)
    assert resp.json() == {"code": 405, "error": "CONNECT is not supported"}
    assert await client.eof() == b""
    assert called == []


async def test_upgrade_is_answered_as_a_plain_request_then_closed(
    listen: Listen, clients: ClientFactory
) -> None:
    server = await listen(echo)
    client = await clients(server.port)
    headers = [("Host", "h"), ("Connection", "Upgrade"), ("Upgrade", "websocket")]
    await client.send(request_bytes("GET", "/ws", headers) + b"\x81\x05hello")
    resp = await client.response()
    doc = resp.json()
    assert isinstance(doc, dict)
    assert resp.status == 200 and doc["target"] == "/ws" and closes(resp.head)
    assert await client.eof() == b""


async def test_handler_failure_is_500_and_closed(listen: Listen, clients: ClientFactory) -> None:
    def broken(ex: Exchange) -> None:
        raise RuntimeError("bug")

    server = await listen(broken, plain=True)
    client = await clients(server.port)
    resp = await client.request("GET", "/")
    assert resp.status == 500 and closes(resp.head)
    assert resp.json() == {"code": 500, "error": "internal error"}
    assert await client.eof() == b""


async def test_send_error_keeps_alive_only_when_the_body_was_received(
    listen: Listen, clients: ClientFactory
) -> None:
    async def not_found(ex: Exchange) -> None:
        ex.send_error(NotFound("service with name x not found"))

    server = await listen(not_found)
    client = await clients(server.port)
    resp = await client.request("GET", "/a")
    assert resp.status == 404 and not closes(resp.head)
    assert resp.json() == {"code": 404, "error": "service with name x not found"}
    resp = await client.request("POST", "/b", body=b"whole body")  # arrives with the head
    assert resp.status == 404 and not closes(resp.head)
    # A body still on its way cannot be skipped: the answer closes the connection.
    await client.send(request_bytes("POST", "/c", [("Host", "h"), ("Content-Length", "10")]))
    resp = await client.response()
    assert resp.status == 404 and closes(resp.head)
    assert await client.eof() == b""


# -- caller disconnects and draining --------------------------------------------------------------


async def test_caller_disconnect_cancels_the_handler(
    listen: Listen, clients: ClientFactory
) -> None:
    started = asyncio.Event()
    finished = asyncio.Event()
    outcome: list[str] = []

    async def hang(ex: Exchange) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        finally:
            finished.set()

    server = await listen(hang)
    client = await clients(server.port)
    await client.send(request_bytes("GET", "/"))
    await asyncio.wait_for(started.wait(), 5)
    reset(client)
    await asyncio.wait_for(finished.wait(), 5)
    assert outcome == ["cancelled"]
    await asyncio.sleep(0.01)
    assert server.tracker.connections == set()


async def test_half_closed_caller_still_gets_its_answer(
    listen: Listen, clients: ClientFactory
) -> None:
    async def slow(ex: Exchange) -> None:
        await asyncio.sleep(0.1)
        await echo(ex)

    server = await listen(slow)
    client = await clients(server.port)
    await client.send(request_bytes("GET", "/half"))
    client.writer.write_eof()
    resp = await client.response()
    assert resp.status == 200
    assert await client.eof() == b""


async def test_tracker_closes_idle_connections_only(listen: Listen, clients: ClientFactory) -> None:
    release = asyncio.Event()

    async def handler(ex: Exchange) -> None:
        if ex.target == b"/wait":
            await release.wait()
        await echo(ex)

    server = await listen(handler)
    idle: Client = await clients(server.port)
    busy: Client = await clients(server.port)
    assert (await idle.request("GET", "/quick")).status == 200
    await busy.send(request_bytes("GET", "/wait"))
    await asyncio.sleep(0.05)
    tracker = server.tracker
    assert len(tracker.connections) == 2 and tracker.busy
    tracker.draining = True
    tracker.close_idle()
    assert await idle.eof() == b""
    release.set()
    resp = await read_response(busy.reader)
    assert resp.status == 200  # in flight requests finish, then the connection closes
    assert await busy.eof() == b""
    await asyncio.sleep(0.01)
    assert not tracker.busy and tracker.connections == set()


# -- closing idle keep-alive connections ------------------------------------------------------


async def unread_request(listen: Listen, clients: ClientFactory) -> tuple[Client, ClientConnection]:
    """A keep-alive connection whose next request is in the gateway's socket, unread: the
    state in which an idle timer that fires now meets a caller reusing the connection."""
    server = await listen(echo)
    client = await clients(server.port)
    assert (await client.request("GET", "/first")).status == 200
    (conn,) = server.tracker.connections
    assert isinstance(conn, ClientConnection) and conn.transport is not None
    conn.transport.pause_reading()
    await client.send(request_bytes("GET", "/second"))
    await asyncio.sleep(0.05)
    return client, conn


async def test_closing_over_an_unread_request_resets_it(
    listen: Listen, clients: ClientFactory
) -> None:
    """The cause of the lost requests: a socket closed with unread data sends an RST, and the
    caller loses its request with a reset (it cannot tell whether to retry)."""
    client, conn = await unread_request(listen, clients)
    conn.close()
    with pytest.raises(ConnectionResetError):
        await client.eof()


async def test_idle_timeout_closes_in_an_order_the_caller_can_tell(
    listen: Listen, clients: ClientFactory
) -> None:
    """The idle close as the gateway does it: a FIN first, then what still arrives is read
    and dropped; the caller reads an orderly end of stream, never an RST."""
    client, conn = await unread_request(listen, clients)
    conn._expired()  # the keep-alive deadline passes now
    assert await client.eof() == b""  # no response, no reset
    await asyncio.sleep(CLOSE_LINGER + 0.2)
    assert conn.closed


async def test_keep_alive_is_advertised_and_outlasts_the_request_timeout(
    listen: Listen, clients: ClientFactory
) -> None:
    server = await listen(echo, request_timeout=0.2, keepalive_timeout=1.0)
    client = await clients(server.port)
    resp = await client.request("GET", "/a")
    assert b"\r\nkeep-alive: timeout=1\r\n" in resp.head.lower()
    await asyncio.sleep(0.5)  # past the request timeout, within the keep-alive timeout
    assert (await client.request("GET", "/b")).status == 200
    started = time.monotonic()
    assert await client.eof() == b""
    assert 0.8 <= time.monotonic() - started < 3


async def test_a_head_begun_after_an_idle_wait_gets_the_request_timeout(
    listen: Listen, clients: ClientFactory
) -> None:
    """Slow heads stay bounded by --request-timeout, however long the keep-alive."""
    server = await listen(echo, request_timeout=0.3, keepalive_timeout=30)
    client = await clients(server.port)
    assert (await client.request("GET", "/a")).status == 200
    await client.send(b"GET /b HTTP/1.1\r\nHost: h\r\n")  # and the rest never comes
    started = time.monotonic()
    assert await client.eof() == b""
    assert 0.25 <= time.monotonic() - started < 3
