"""Sending to targets: connections made (directly, through a proxy, or a CONNECT tunnel),
pools per target and TLS settings, and whole small exchanges for token and CSRF calls.

The request/response work of a connection is in upstream_connection.py; what to do with an
answer is the relay's (relay.py). Connection failures leave here as UpstreamUnavailable only.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from appgateway import failures, http1
from appgateway.aio import ReadBuffer, as_protocol
from appgateway.decide import resend_on_fresh_connection
from appgateway.errors import GatewayError, UpstreamTimeout, UpstreamUnavailable
from appgateway.model import Headers, Target
from appgateway.proxy import ProxyConfig
from appgateway.tunnel import Tunnel
from appgateway.upstream_connection import (
    DONE,
    POOL_IDLE_SECONDS,
    Pool,
    PoolKey,
    UpstreamConnection,
    pool_key,
)

__all__ = ["OutboundRequest", "Pool", "PoolKey", "Upstream", "encode", "encode_head", "pool_key"]


@dataclass(init=False)
class OutboundRequest:
    """Built per request. (The `__init__` is written out because a generated one would run
    interpreted even when this module is compiled.)"""

    method: bytes
    target: Target
    path: bytes  # path and ?query exactly as sent
    headers: Headers  # final fields including Host, without framing fields
    body: bytes | None  # buffered body, or None for no body / a streamed one

    def __init__(
        self, method: bytes, target: Target, path: bytes, headers: Headers, body: bytes | None
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.headers = headers
        self.body = body


class Upstream:
    """The pools and how connections are made; one instance per process."""

    def __init__(self, loop: asyncio.AbstractEventLoop, proxies: ProxyConfig | None = None) -> None:
        self._loop = loop
        self._proxies = proxies
        self._pools: dict[PoolKey, Pool] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        # One read buffer for every connection (asyncio's buffered-protocol reads): the
        # parser copies what it keeps, so the next read may reuse it.
        self._read_buffer = ReadBuffer()

    def pool(
        self, target: Target, verify: bool, fingerprint: str, ctx: ssl.SSLContext | None
    ) -> Pool:
        key = pool_key(target, verify, fingerprint)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(key, ctx, self._loop.time)
            if self._sweeper is None:
                self._sweeper = self._loop.call_later(POOL_IDLE_SECONDS / 4, self._sweep)
        return pool

    def _sweep(self) -> None:
        cutoff = self._loop.time() - POOL_IDLE_SECONDS
        for pool in self._pools.values():
            pool.close_idle(older_than=cutoff)
        self._sweeper = self._loop.call_later(POOL_IDLE_SECONDS / 4, self._sweep)

    def retain(self, keys: set[PoolKey]) -> None:
        """Drop pools that no API of the current snapshot uses."""
        for key in list(self._pools):
            if key not in keys:
                pool = self._pools.pop(key)
                pool.retired = True
                pool.close_idle()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self._pools.values():
            pool.close_idle()
        self._pools.clear()

    def idle(self, pool: Pool, now: float | None = None) -> UpstreamConnection | None:
        """A pooled connection, if one is at hand: no waiting. `now`: the loop's time, when
        the caller has read it already."""
        return pool.acquire(self._loop.time() if now is None else now)

    async def connect(self, target: Target, pool: Pool) -> UpstreamConnection:
        """A new connection (through the configured proxy, if any). Raises
        UpstreamUnavailable; the caller bounds the wait."""
        try:
            return await self._connect(target, pool)
        except GatewayError:
            raise
        except (OSError, ssl.SSLError, EOFError) as failure:
            raise failures.connect_failed(failure) from None

    async def _connect(self, target: Target, pool: Pool) -> UpstreamConnection:
        loop = self._loop
        ctx = pool.ssl_context
        proxy = None
        if self._proxies is not None:
            proxy = self._proxies.proxy_for(target.scheme, target.host, target.port)
        conn = UpstreamConnection(loop, pool, self._read_buffer)
        if proxy is None:
            await loop.create_connection(
                lambda: as_protocol(conn),
                target.host,
                target.port,
                ssl=ctx,
                server_hostname=target.host if ctx is not None else None,
            )
            return conn
        if ctx is None:
            await loop.create_connection(lambda: as_protocol(conn), proxy.host, proxy.port)
            conn.absolute_prefix = target.origin.encode()
            conn.proxy_authorization = proxy.authorization
            return conn
        transport, tunnel = await loop.create_connection(Tunnel, proxy.host, proxy.port)
        try:
            await tunnel.open(target, proxy.authorization)
            tls = await loop.start_tls(
                transport, as_protocol(conn), ctx, server_hostname=target.host
            )
        except BaseException:
            transport.abort()
            raise
        if tls is None:  # pragma: no cover - only when the transport closed meanwhile
            raise UpstreamUnavailable("proxy tunnel closed during the TLS handshake", "tls")
        conn.connection_made(tls)
        return conn

    async def fetch(
        self,
        req: OutboundRequest,
        pool: Pool,
        *,
        deadline_s: float,
        replayable: bool,
        limit: int = 1 << 20,
    ) -> tuple[int, Headers, bytes]:
        """A whole small exchange (token and CSRF calls), bounded by one timeout.

        Raises UpstreamTimeout/UpstreamUnavailable; a body over `limit` bytes is a protocol
        failure, so a hostile endpoint cannot make us buffer without bound. A pooled
        connection the target had closed is replaced once, when `replayable`.
        """
        conn: UpstreamConnection | None = None
        try:
            async with asyncio.timeout(deadline_s):
                conn = self.idle(pool)
                while True:
                    fresh = conn is None
                    if conn is None:
                        conn = await self.connect(req.target, pool)
                    collector = _Collector(self._loop, limit)
                    conn.begin(req.method, collector)
                    conn.write(encode(req, conn))
                    try:
                        return await collector.result
                    except GatewayError as error:
                        resend = resend_on_fresh_connection(
                            error, got_bytes=conn.got_bytes, fresh=fresh, replayable=replayable
                        )
                        conn.abort()
                        if not resend:
                            raise
                        conn = None
        except TimeoutError:
            if conn is not None:
                conn.abort()
            raise UpstreamTimeout(f"timeout after {deadline_s:g}s") from None
        except BaseException:
            if conn is not None:
                conn.abort()
            raise


class _Collector:
    """The sink of `fetch`: the whole response in memory, up to a limit."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.result: asyncio.Future[tuple[int, Headers, bytes]] = loop.create_future()
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def pump(self, conn: UpstreamConnection) -> None:
        if self.result.done():
            return
        data = conn.take()
        if data:
            self._size += len(data)
            if self._size > self._limit:
                conn.abort()
                self.result.set_exception(
                    UpstreamUnavailable("response body too large", "protocol")
                )
                return
            self._parts.append(data)
        if conn.phase == DONE:
            conn.release()
            self.result.set_result((conn.status, conn.headers, b"".join(self._parts)))
        elif conn.error is not None:
            self.result.set_exception(conn.error)


def _path_and_headers(req: OutboundRequest, conn: UpstreamConnection) -> tuple[bytes, Headers]:
    """Through an HTTP proxy the target goes in absolute form, with the proxy's credentials."""
    if not conn.absolute_prefix:
        return req.path, req.headers
    headers = req.headers
    if conn.proxy_authorization is not None:
        headers = [*headers, (b"Proxy-Authorization", conn.proxy_authorization)]
    return conn.absolute_prefix + req.path, headers


def encode(req: OutboundRequest, conn: UpstreamConnection) -> bytes:
    """Head and buffered body in one piece: one write, and one segment for small requests."""
    path, headers = _path_and_headers(req, conn)
    body = req.body
    head = http1.request_head(
        req.method,
        path,
        headers,
        content_length=None if body is None else len(body),
        chunked=False,
    )
    return head + body if body else head


def encode_head(req: OutboundRequest, conn: UpstreamConnection, length: int | None) -> bytes:
    """The head of a request whose body streams after it (chunked when `length` is None)."""
    path, headers = _path_and_headers(req, conn)
    return http1.request_head(
        req.method, path, headers, content_length=length, chunked=length is None
    )
