"""The upstream client against scripted loopback servers: pools, framing, failures, TLS.

Every failure a target can cause must reach the connection's sink as an UpstreamUnavailable
(502) with a short reason; the scripted servers produce each cause for real. `Capture` is a
sink that turns the callbacks into awaitables, reading the connection as the relay does.
What the relay then decides (timeouts' messages, resends, uploads) is tested in
test_forward.py and test_relay.py.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appgateway.errors import UpstreamTimeout, UpstreamUnavailable
from appgateway.model import ClientCert, Headers, Target
from appgateway.tls import TlsContexts, load_client_cert
from appgateway.upstream import OutboundRequest, Pool, Upstream, encode
from appgateway.upstream_connection import BODY, DONE, UpstreamConnection
from appgateway.urls import parse_target
from tests.conftest import (
    Connection,
    RawServer,
    Seen,
    ServerFactory,
    echo,
    response,
    serve_requests,
)

pytestmark = pytest.mark.timeout(30)


def target_of(server: RawServer, path: str = "/") -> Target:
    return parse_target(server.base + path)


def pool_for(upstream: Upstream, server: RawServer, ctx: ssl.SSLContext | None = None) -> Pool:
    return upstream.pool(target_of(server), True, "", ctx)


def outbound(
    server: RawServer,
    path: bytes = b"/",
    *,
    method: bytes = b"GET",
    headers: Headers | None = None,
    body: bytes | None = None,
) -> OutboundRequest:
    target = target_of(server)
    fields = headers if headers is not None else [(b"Host", target.authority.encode())]
    return OutboundRequest(method, target, path, fields, body)


class Capture:
    """A sink that exposes the response as awaitables: the head, then the whole body.

    `stalled`: read nothing once the head is in, as when the caller stops reading (the relay
    then holds the connection too).
    """

    def __init__(self, stalled: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.head: asyncio.Future[None] = loop.create_future()
        self.end: asyncio.Future[bytes] = loop.create_future()
        self.parts: list[bytes] = []
        self.stalled = stalled
        self.pumps = 0

    def pump(self, conn: UpstreamConnection) -> None:
        self.pumps += 1
        if self.stalled and conn.phase == BODY:
            if not self.head.done():
                self.head.set_result(None)
            conn.hold(True)
            return
        self.parts.append(conn.take())
        failure: Exception | None = conn.error
        if failure is None and conn.timed_out:
            failure = TimeoutError()
        if not self.head.done():
            if conn.phase in (BODY, DONE):
                self.head.set_result(None)
            elif failure is not None:
                self.head.set_exception(failure)
                self.end.cancel()  # there will be no body
                return
        if not self.end.done():
            if conn.phase == DONE:
                self.end.set_result(b"".join(self.parts))
            elif failure is not None:
                self.end.set_exception(failure)


async def send(
    upstream: Upstream, pool: Pool, req: OutboundRequest, capture: Capture | None = None
) -> tuple[UpstreamConnection, Capture]:
    """The request on a pooled or new connection, once its head is in."""
    conn = upstream.idle(pool) or await upstream.connect(req.target, pool)
    capture = capture or Capture()
    conn.begin(req.method, capture)
    conn.write(encode(req, conn))
    await capture.head
    return conn, capture


async def exchange(
    upstream: Upstream, pool: Pool, req: OutboundRequest
) -> tuple[UpstreamConnection, bytes]:
    """Send, take the whole body and release the connection (to the pool, if it can)."""
    conn, capture = await send(upstream, pool, req)
    body = await capture.end
    conn.release()
    return conn, body


async def fetch(
    upstream: Upstream, pool: Pool, req: OutboundRequest, replayable: bool = True
) -> tuple[int, Headers, bytes]:
    return await upstream.fetch(req, pool, deadline_s=5, replayable=replayable)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- what goes on the wire ----------------------------------------------------------------------


async def test_sends_exactly_the_given_path_and_headers(
    servers: ServerFactory, upstream: Upstream
) -> None:
    async def answer(seen: Seen) -> bytes:
        fields = [("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("X-Mixed-Case", "v")]
        return response(200, b"ok", fields)

    server = await servers(answer)
    host = f"127.0.0.1:{server.port}".encode()
    headers = [(b"Host", host), (b"X-A", b"1"), (b"x-a", b"2"), (b"Cookie", b"c=3")]
    path = b"/p/a%2Fb/c'(x)//d?q=%7C&r=a+b"
    pool = pool_for(upstream, server)
    resp, body = await exchange(upstream, pool, outbound(server, path, headers=headers))
    resp2, _ = await exchange(upstream, pool, outbound(server, b"/post", method=b"POST", body=b""))
    resp3, _ = await exchange(
        upstream, pool, outbound(server, b"/put", method=b"PUT", body=b"data")
    )
    first, second, third = server.requests
    assert (first.method, first.target) == ("GET", path.decode())
    assert first.headers == [("Host", host.decode()), ("X-A", "1"), ("x-a", "2"), ("Cookie", "c=3")]
    assert second.headers == [("Host", host.decode()), ("Content-Length", "0")]
    assert third.headers[-1] == ("Content-Length", "4") and third.body == b"data"
    assert resp.status == 200 and resp.reason == b"OK" and body == b"ok"
    assert resp.headers == [
        (b"Set-Cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"X-Mixed-Case", b"v"),
        (b"Content-Length", b"2"),
    ]
    assert resp.content_length == 2


async def test_chunked_response_is_decoded(servers: ServerFactory, upstream: Upstream) -> None:
    async def chunked(seen: Seen) -> bytes:
        body = b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
        return response(200, body, [("Transfer-Encoding", "chunked")], length=False)

    server = await servers(chunked)
    pool = pool_for(upstream, server)
    resp, body = await exchange(upstream, pool, outbound(server))
    assert body == b"hello world" and resp.content_length is None
    resp, body = await exchange(upstream, pool, outbound(server))
    assert body == b"hello world" and server.connections == 1


# -- pooling ------------------------------------------------------------------------------------


async def test_pool_reuses_a_connection(servers: ServerFactory, upstream: Upstream) -> None:
    server = await servers()
    pool = pool_for(upstream, server)
    for path in (b"/one", b"/two", b"/three"):
        resp, _ = await exchange(upstream, pool, outbound(server, path))
        assert resp.status == 200
    assert server.connections == 1
    assert [(r.conn, r.target) for r in server.requests] == [
        (1, "/one"),
        (1, "/two"),
        (1, "/three"),
    ]
    assert len(pool.idle) == 1
    assert upstream.pool(target_of(server), True, "", None) is pool
    assert upstream.pool(target_of(server), False, "", None) is not pool


async def _answer_once_then_drop_the_next(conn: Connection) -> None:
    """Connection 1 answers one request and closes on reading the next, as a server whose
    keep-alive timer fired just as the request arrived; later connections behave."""
    if conn.index > 1:
        await serve_requests(conn, echo)
        return
    seen = await conn.request()
    assert seen is not None
    await conn.send(await echo(seen))
    await conn.head()  # the next request: closed without an answer


async def test_stale_pooled_connection_is_replaced_when_the_request_may_repeat(
    servers: ServerFactory, upstream: Upstream
) -> None:
    server = await servers(handler=_answer_once_then_drop_the_next)
    pool = pool_for(upstream, server)
    await fetch(upstream, pool, outbound(server, b"/a"))
    status, _, body = await fetch(
        upstream, pool, outbound(server, b"/b", method=b"POST", body=b"payload")
    )
    assert status == 200 and b'"body": "payload"' in body
    assert [(r.conn, r.method, r.target) for r in server.requests] == [
        (1, "GET", "/a"),
        (1, "POST", "/b"),
        (2, "POST", "/b"),
    ]
    assert server.requests[2].body == b"payload"


async def test_stale_pooled_connection_is_not_replaced_when_the_request_may_not_repeat(
    servers: ServerFactory, upstream: Upstream
) -> None:
    """The target may have processed the request before it closed (RFC 9110 §9.2.2)."""
    server = await servers(handler=_answer_once_then_drop_the_next)
    pool = pool_for(upstream, server)
    await fetch(upstream, pool, outbound(server, b"/a"))
    with pytest.raises(UpstreamUnavailable) as info:
        await fetch(upstream, pool, outbound(server, b"/b", method=b"POST"), replayable=False)
    assert info.value.kind == "protocol"
    assert [(r.conn, r.target) for r in server.requests] == [(1, "/a"), (1, "/b")]


async def test_fresh_connection_closed_before_an_answer_is_not_retried(
    servers: ServerFactory, upstream: Upstream
) -> None:
    async def drop(seen: Seen) -> bytes | None:
        return None

    server = await servers(drop)
    with pytest.raises(UpstreamUnavailable) as info:
        await fetch(upstream, pool_for(upstream, server), outbound(server, body=b"x"))
    assert info.value.kind == "protocol"
    assert info.value.message == "connection closed before response headers"
    assert len(server.requests) == 1


async def test_connection_closed_while_idle_is_not_reused(
    servers: ServerFactory, upstream: Upstream
) -> None:
    async def answer_and_close(conn: Connection) -> None:
        seen = await conn.request()
        assert seen is not None
        await conn.send(await echo(seen))  # keep-alive promised, then closed anyway

    server = await servers(handler=answer_and_close)
    pool = pool_for(upstream, server)
    await exchange(upstream, pool, outbound(server, b"/a"))
    await asyncio.sleep(0.05)
    assert pool.idle == type(pool.idle)()  # dropped when the close arrived
    resp, _ = await exchange(upstream, pool, outbound(server, b"/b"))
    assert resp.status == 200
    assert [(r.conn, r.target) for r in server.requests] == [(1, "/a"), (2, "/b")]


async def test_connection_close_answer_is_not_pooled(
    servers: ServerFactory, upstream: Upstream
) -> None:
    async def closing(seen: Seen) -> bytes:
        return response(200, b"bye", [("Connection", "close")])

    server = await servers(closing)
    pool = pool_for(upstream, server)
    resp, body = await exchange(upstream, pool, outbound(server))
    assert body == b"bye" and len(pool.idle) == 0
    await exchange(upstream, pool, outbound(server))
    assert server.connections == 2


async def test_retain_closes_pools_no_api_uses(servers: ServerFactory, upstream: Upstream) -> None:
    server = await servers()
    pool = pool_for(upstream, server)
    await exchange(upstream, pool, outbound(server))
    upstream.retain({pool.key})
    assert len(pool.idle) == 1
    upstream.retain(set())
    assert len(pool.idle) == 0
    await asyncio.sleep(0.05)
    assert server.closed_connections == 1
    assert pool_for(upstream, server) is not pool


async def test_connection_in_flight_when_its_pool_is_dropped_is_closed_after(
    servers: ServerFactory, upstream: Upstream
) -> None:
    """A registry change (rotated client certificate, moved target) drops a pool while a
    request is on one of its connections: released afterwards, that connection is closed,
    not kept in a pool nobody sweeps."""
    server = await servers()
    pool = pool_for(upstream, server)
    conn, capture = await send(upstream, pool, outbound(server))
    upstream.retain(set())
    await capture.end
    conn.release()
    assert pool.idle == deque()
    await asyncio.sleep(0.05)
    assert server.closed_connections == 1


# -- responses ----------------------------------------------------------------------------------


@pytest.mark.parametrize("interim", [[100], [123], [100, 123, 102]], ids=str)
@pytest.mark.parametrize("together", [True, False], ids=["one-write", "separate-writes"])
async def test_interim_responses_are_skipped(
    interim: list[int], together: bool, servers: ServerFactory, upstream: Upstream
) -> None:
    async def handler(conn: Connection) -> None:
        while await conn.request() is not None:
            parts = [
                response(code, headers=[("X-Interim", str(code))], length=False) for code in interim
            ]
            parts.append(response(200, b"final", [("X-Final", "1")]))
            if together:
                await conn.send(b"".join(parts))
                continue
            for part in parts:
                await conn.send(part)
                await asyncio.sleep(0.02)

    server = await servers(handler=handler)
    pool = pool_for(upstream, server)
    for _ in range(2):  # and the connection is reusable afterwards
        resp, body = await exchange(upstream, pool, outbound(server))
        assert (resp.status, resp.reason, body) == (200, b"OK", b"final")
        assert resp.headers == [(b"X-Final", b"1"), (b"Content-Length", b"5")]
    assert server.connections == 1


async def test_101_is_a_protocol_error(servers: ServerFactory, upstream: Upstream) -> None:
    async def switch(seen: Seen) -> bytes:
        return response(101, headers=[("Upgrade", "websocket")], length=False)

    server = await servers(switch)
    with pytest.raises(UpstreamUnavailable) as info:
        await send(upstream, pool_for(upstream, server), outbound(server))
    assert info.value.kind == "protocol" and info.value.status == 502


async def test_body_without_length_is_read_until_eof(
    servers: ServerFactory, upstream: Upstream
) -> None:
    async def unframed(conn: Connection) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhello ")
        await asyncio.sleep(0.05)
        await conn.send(b"world")

    server = await servers(handler=unframed)
    pool = pool_for(upstream, server)
    conn, capture = await send(upstream, pool, outbound(server))
    assert conn.content_length is None
    assert await capture.end == b"hello world"
    conn.release()
    assert len(pool.idle) == 0


async def test_body_cut_short_is_a_protocol_error(
    servers: ServerFactory, upstream: Upstream
) -> None:
    async def short(conn: Connection) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")

    server = await servers(handler=short)
    conn, capture = await send(upstream, pool_for(upstream, server), outbound(server))
    with pytest.raises(UpstreamUnavailable) as info:
        await capture.end
    conn.release()
    assert info.value.kind == "protocol"
    assert info.value.message == "connection lost during response body"


@pytest.mark.parametrize(("method", "status"), [(b"HEAD", 200), (b"GET", 204), (b"GET", 304)])
async def test_bodyless_response_with_length_keeps_the_connection(
    method: bytes, status: int, servers: ServerFactory, upstream: Upstream
) -> None:
    async def answer(seen: Seen) -> bytes:
        if seen.target == "/next":
            return response(200, b"next")
        return response(status, headers=[("Content-Length", "100")], length=False)

    server = await servers(answer)
    pool = pool_for(upstream, server)
    resp, body = await exchange(upstream, pool, outbound(server, method=method))
    assert resp.status == status and body == b""
    resp, body = await exchange(upstream, pool, outbound(server, b"/next"))
    assert (resp.status, body) == (200, b"next")
    assert server.connections == 1


@pytest.mark.parametrize(
    "garbage",
    [b"SSH-2.0-OpenSSH_9.2\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n", b"\x00\x01\x02\x03\r\n\r\n"],
)
async def test_garbage_response_is_a_protocol_error(
    garbage: bytes, servers: ServerFactory, upstream: Upstream
) -> None:
    async def answer(seen: Seen) -> bytes:
        return garbage

    server = await servers(answer)
    with pytest.raises(UpstreamUnavailable) as info:
        await send(upstream, pool_for(upstream, server), outbound(server))
    assert info.value.kind == "protocol" and info.value.status == 502
    assert info.value.message.startswith("invalid response")


async def test_unread_response_body_pauses_reading(
    servers: ServerFactory, upstream: Upstream
) -> None:
    total = 16 * 1024 * 1024

    async def big(seen: Seen) -> bytes:
        return response(200, b"b" * total)

    server = await servers(big)
    capture = Capture(stalled=True)
    conn, _ = await send(upstream, pool_for(upstream, server), outbound(server), capture)
    await asyncio.sleep(0.2)
    pumps = capture.pumps
    transport = conn.transport
    assert transport is not None and not transport.is_reading()
    await asyncio.sleep(0.1)
    assert capture.pumps == pumps  # held: nothing more is read
    capture.stalled = False
    conn.hold(False)
    assert len(await capture.end) == total
    conn.release()


# -- timeouts and failures ------------------------------------------------------------------------


async def _never_answer(conn: Connection) -> None:
    await conn.request()
    await conn.until_eof()


async def test_the_deadline_tells_the_sink_once(servers: ServerFactory, upstream: Upstream) -> None:
    """One lazy timer per connection: re-arming moves the deadline, and at the deadline the
    sink is pumped with `timed_out` (it decides what that means: a 504, an idle body)."""
    server = await servers(handler=_never_answer)
    pool = pool_for(upstream, server)
    req = outbound(server)
    conn = await upstream.connect(req.target, pool)
    capture = Capture()
    conn.begin(req.method, capture)
    conn.write(encode(req, conn))
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    conn.arm(loop.time() + 0.1)
    conn.arm(loop.time() + 0.3)  # later: the timer re-arms for the rest
    with pytest.raises(TimeoutError):
        await capture.head
    assert 0.25 <= time.monotonic() - started < 2
    assert conn.timed_out and capture.pumps == 1
    conn.release()
    await asyncio.sleep(0.05)
    assert server.closed_connections == 1  # an unfinished exchange is never pooled


async def test_connection_refused(upstream: Upstream) -> None:
    target = parse_target(f"http://127.0.0.1:{free_port()}/")
    pool = upstream.pool(target, True, "", None)
    with pytest.raises(UpstreamUnavailable) as info:
        await upstream.connect(target, pool)
    assert info.value.message == "connection refused"
    assert info.value.kind == "connect" and info.value.status == 502
    assert info.value.body() == b""


# -- fetch (token and CSRF calls) -----------------------------------------------------------------


async def test_fetch_collects_the_whole_body(servers: ServerFactory, upstream: Upstream) -> None:
    async def chunked(conn: Connection) -> None:
        while await conn.request() is not None:
            await conn.send(
                b"HTTP/1.1 200 OK\r\nX-Csrf-Token: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for part in (b'{"access_', b'token":', b'"abc"}'):
                await asyncio.sleep(0.01)
                await conn.send(b"%x\r\n%b\r\n" % (len(part), part))
            await conn.send(b"0\r\n\r\n")

    server = await servers(handler=chunked)
    pool = pool_for(upstream, server)
    status, headers, body = await upstream.fetch(
        outbound(server), pool, deadline_s=2, replayable=False
    )
    assert (status, body) == (200, b'{"access_token":"abc"}')
    assert (b"X-Csrf-Token", b"t") in headers
    assert len(pool.idle) == 1
    await upstream.fetch(outbound(server), pool, deadline_s=2, replayable=False)
    assert server.connections == 1


async def test_fetch_enforces_its_limit(servers: ServerFactory, upstream: Upstream) -> None:
    async def big(seen: Seen) -> bytes:
        return response(200, b"x" * 2000)

    server = await servers(big)
    pool = pool_for(upstream, server)
    status, _, body = await upstream.fetch(
        outbound(server), pool, deadline_s=2, limit=2000, replayable=False
    )
    assert status == 200 and len(body) == 2000
    with pytest.raises(UpstreamUnavailable) as info:
        await upstream.fetch(outbound(server), pool, deadline_s=2, limit=1000, replayable=False)
    assert info.value.message == "response body too large" and info.value.kind == "protocol"


async def test_fetch_deadline_covers_the_whole_exchange(
    servers: ServerFactory, upstream: Upstream
) -> None:
    async def trickle(conn: Connection) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        for _ in range(10):
            await asyncio.sleep(0.1)
            await conn.send(b"x")

    server = await servers(handler=trickle)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        await upstream.fetch(
            outbound(server), pool_for(upstream, server), deadline_s=0.3, replayable=False
        )
    assert info.value.message == "timeout after 0.3s"
    assert time.monotonic() - started < 0.9


async def test_fetch_without_an_answer_times_out(
    servers: ServerFactory, upstream: Upstream
) -> None:
    server = await servers(handler=_never_answer)
    with pytest.raises(UpstreamTimeout) as info:
        await upstream.fetch(
            outbound(server), pool_for(upstream, server), deadline_s=0.2, replayable=False
        )
    assert info.value.status == 504


# -- TLS ------------------------------------------------------------------------------------------


@dataclass
class Pair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def crt_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def issue(cn: str, issuer: Pair | None = None, *, ca: bool = False, server: bool = False) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Pair(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


@dataclass
class Pki:
    ca_file: Path
    server_ctx: ssl.SSLContext
    client: ClientCert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = issue("upstream test CA", ca=True)
    server = issue("server", ca, server=True)
    client = issue("client", ca)
    (folder / "ca.pem").write_bytes(ca.crt_pem)
    (folder / "server.pem").write_bytes(server.crt_pem + server.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(folder / "server.pem")
    ctx.load_verify_locations(folder / "ca.pem")
    return Pki(folder / "ca.pem", ctx, load_client_cert(client.crt_pem, client.key_pem))


def require_client_cert(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.ca_file.parent / "server.pem")
    ctx.load_verify_locations(pki.ca_file)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def _record_peer(conn: Connection) -> None:
    peer = conn.writer.get_extra_info("peercert")
    subject = dict(item[0] for item in peer["subject"]) if peer else {}

    async def answer(seen: Seen) -> bytes:
        return response(200, f"peer={subject.get('commonName')}".encode())

    await serve_requests(conn, answer)


async def test_tls_verified_against_the_trust_store(
    pki: Pki, servers: ServerFactory, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    server = await servers(ssl_context=pki.server_ctx)
    ctx = TlsContexts().get(True, None)
    pool = pool_for(upstream, server, ctx)
    for path in (b"/one", b"/two"):
        resp, body = await exchange(upstream, pool, outbound(server, path))
        assert resp.status == 200 and path in body
    assert server.connections == 1


async def test_tls_untrusted_server_fails_verification(
    pki: Pki, servers: ServerFactory, upstream: Upstream
) -> None:
    server = await servers(ssl_context=pki.server_ctx)
    pool = pool_for(upstream, server, TlsContexts().get(True, None))
    with pytest.raises(UpstreamUnavailable) as info:
        await upstream.connect(target_of(server), pool)
    assert info.value.kind == "tls"
    assert info.value.message.startswith("TLS handshake failed: certificate verify failed")
    assert server.requests == []


async def test_tls_skip_verify(pki: Pki, servers: ServerFactory, upstream: Upstream) -> None:
    server = await servers(ssl_context=pki.server_ctx)
    target = target_of(server)
    pool = upstream.pool(target, False, "", TlsContexts().get(False, None))
    resp, _ = await exchange(upstream, pool, outbound(server))
    assert resp.status == 200


async def test_tls_client_certificate(
    pki: Pki, servers: ServerFactory, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    server = await servers(handler=_record_peer, ssl_context=require_client_cert(pki))
    tls = TlsContexts()
    target = target_of(server)
    cert = pki.client
    with_cert = upstream.pool(target, True, cert.fingerprint, tls.get(True, cert))
    resp, body = await exchange(upstream, with_cert, outbound(server))
    assert (resp.status, body) == (200, b"peer=client")
    without = upstream.pool(target, True, "", tls.get(True, None))
    assert without is not with_cert
    with pytest.raises(UpstreamUnavailable) as info:
        await send(upstream, without, outbound(server))
    assert info.value.status == 502
