"""Upstream keep-alive pools and the client Protocol (httptools response parser).

Every socket, TLS and parse failure is turned into `UpstreamUnavailable` or `UpstreamTimeout`
here, so the pipeline never sees a library exception. A connection object doubles as the
response body source, which saves an allocation and a hop per chunk on the data path.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, cast

import httptools

from appgateway import http1
from appgateway.errors import GatewayError, UpstreamTimeout, UpstreamUnavailable
from appgateway.headers import lower_name
from appgateway.model import Headers, Target
from appgateway.proxy import ProxyConfig

HIGH_WATER: Final = 16 * 1024
READ_SIZE: Final = 32 * 1024
"""Most bytes one socket read hands over. uvloop's own reads take up to 256 KB at a time,
and a stalled caller then holds that whole read in its write buffer."""
MAX_RESPONSE_HEAD: Final = 1024 * 1024
POOL_IDLE_SECONDS: Final = 60.0
POOL_MAX_IDLE: Final = 256

PoolKey = tuple[str, str, int, bool, str]


def pool_key(target: Target, verify: bool, fingerprint: str) -> PoolKey:
    """Connections are shared per (scheme, host, port, verify flag, client-cert fingerprint)."""
    return (target.scheme, target.host, target.port, verify, fingerprint)


class BodySource(Protocol):
    """What a streamed request body is read from (the caller's connection)."""

    async def read(self) -> bytes: ...


@dataclass(slots=True)
class StreamedBody:
    """A request body too large (or too long unknown) to buffer for the retry."""

    prefix: bytes
    source: BodySource
    length: int | None  # None: unknown, sent chunked


@dataclass(init=False)
class OutboundRequest:
    """Built per request. (The `__init__` is written out because a generated one would run
    interpreted even when this module is compiled.)"""

    method: bytes
    target: Target
    path: bytes  # path and ?query exactly as sent
    headers: Headers  # final fields including Host, without framing fields
    body: bytes | None  # buffered body, or None for no body / a streamed one
    stream: StreamedBody | None

    def __init__(
        self,
        method: bytes,
        target: Target,
        path: bytes,
        headers: Headers,
        body: bytes | None,
        stream: StreamedBody | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.headers = headers
        self.body = body
        self.stream = stream


class Sink(Protocol):
    """Receives a response without a task: the callback mode of `Upstream.try_send`.

    `pump` is called after every chunk of bytes the connection parsed, when it is lost, and
    when its timer expires; it reads the connection's state (`head_seen`, `head_error`,
    `take()`, `complete`, `body_error`, `timed_out`) rather than being told what happened.
    """

    def pump(self, conn: UpstreamConnection) -> None: ...


def as_protocol(conn: object) -> asyncio.Protocol:
    """Our connection classes have asyncio's protocol methods without inheriting them.

    A class with a Python base class compiles to a plain Python class under mypyc; without one,
    to a native class whose attributes are C struct fields (the connections are the data path's
    most used objects).
    """
    return cast(asyncio.Protocol, conn)


def timeout_waiter(waiter: asyncio.Future[None]) -> None:
    """A timer callback that fails a pending waiter with TimeoutError."""
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Surplus(Exception):
    """Raised in a parser callback: a byte arrived after the final response was complete."""


class UpstreamConnection:
    """One client connection to a target, parsing responses with llhttp."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, pool: Pool, read_buffer: memoryview
    ) -> None:
        self._loop = loop
        self.pool = pool
        self._read_buffer = read_buffer  # shared: each read is parsed before the next one
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._eof = False
        self.idle_since = 0.0
        self.got_bytes = False
        # current exchange
        self._expecting = False
        self._head_waiter: asyncio.Future[None] | None = None
        self.sink: Sink | None = None
        self.head_error: BaseException | None = None  # callback mode, before the head
        self.timed_out = False  # callback mode, after the head: the body went idle
        self._head_request = False
        self._interim = False
        self._reset_parser = False
        self.status = 0
        self.reason = b""
        self.headers: Headers = []
        self._head_size = 0
        self.head_seen = False
        self._head_bytes = 0
        self.content_length: int | None = None
        self.transfer_codings: bytes | None = None  # other than a final chunked (gzip)
        self.body_until_eof = False
        self.keep_alive = False
        self.complete = False
        self._error: GatewayError | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._held = False  # reading paused for the caller's sake (callback mode)
        self._reader: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.body_sent = True
        # Set when the connection goes through an HTTP proxy (plain http targets only):
        # request targets are sent in absolute form, with the proxy's credentials.
        self.absolute_prefix = b""
        self.proxy_authorization: bytes | None = None
        self._head_deadline: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_timer_at = 0.0

    # -- header timeout ----------------------------------------------------------------
    # Lazy like the server's request timeout: one timer per connection that re-arms for
    # the remainder, instead of a new timer handle for every request on a pooled connection.
    def arm_head_timeout(self, deadline: float) -> None:
        self._head_deadline = deadline
        timer = self._head_timer
        if timer is not None:
            if self._head_timer_at <= deadline:
                return
            timer.cancel()
        self._head_timer_at = deadline
        self._head_timer = self._loop.call_at(deadline, self._head_expired)

    def disarm_head_timeout(self) -> None:
        self._head_deadline = None

    def _head_expired(self) -> None:
        self._head_timer = None
        deadline = self._head_deadline
        if deadline is None or self.closed:
            return
        if self._loop.time() < deadline - 0.001:
            self._head_timer_at = deadline
            self._head_timer = self._loop.call_at(deadline, self._head_expired)
            return
        self._head_deadline = None
        sink = self.sink
        if sink is not None:
            # In callback mode the same timer also watches the body (`arm_head_timeout`
            # is re-armed with the idle deadline after the head).
            if self.head_seen:
                self.timed_out = True
            else:
                self.head_error = TimeoutError()
            sink.pump(self)
            return
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())

    def _head_failed(self, error: BaseException) -> None:
        waiter = self._head_waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_exception(error)
        elif self.sink is not None and self.head_error is None:
            self.head_error = error

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self.got_bytes = True
        if not self._expecting:
            # Bytes on an idle connection: the server is confused; never reuse it.
            self.abort()
            return
        sink = self.sink  # abort() below detaches it, and it must still hear of the failure
        try:
            if not self.head_seen:
                # Bound the head by bytes received, not per field: llhttp buffers a field
                # until it ends, so one endless header would otherwise grow without limit.
                allowance = MAX_RESPONSE_HEAD - self._head_bytes
                if len(data) > allowance:
                    self._head_bytes = MAX_RESPONSE_HEAD
                    self._parser.feed_data(data[:allowance])
                    if not self.head_seen:
                        raise UpstreamUnavailable("response header too large", "protocol")
                    data = data[allowance:]
                else:
                    self._head_bytes += len(data)
            self._parser.feed_data(data)
        except (httptools.HttpParserError, UpstreamUnavailable) as exc:
            if isinstance(exc, UpstreamUnavailable):
                self._fail(exc)
            elif not self.complete:
                self._fail(UpstreamUnavailable(f"invalid response: {exc}", "protocol"))
            # else: bytes past the end of a complete response (`_Surplus`); the response
            # stands as framed, and the connection is never reused.
            self.abort()
        if self._reset_parser:
            self._reset_parser = False
            self._parser = httptools.HttpResponseParser(self)
        if sink is not None:
            sink.pump(self)

    def eof_received(self) -> bool | None:
        # Over TLS only a close_notify alert gets here; a bare TCP FIN goes straight to
        # connection_lost (uvloop's TLS protocol), so this tells a clean end from a cut.
        self._eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._expecting and not self.head_seen:
            kind = "protocol"
            if exc is not None:
                message = f"connection lost before response headers: {_reason(exc)}"
            elif self.pool.ssl_context is not None and not self.got_bytes:
                # With TLS 1.3 a rejected client certificate shows up only as the target
                # closing the connection after the handshake, before any response byte.
                kind = "tls"
                message = (
                    "TLS: connection closed by the target before response headers"
                    " (client certificate rejected?)"
                )
            else:
                message = "connection closed before response headers"
            self._head_failed(UpstreamUnavailable(message, kind))
        elif not self.complete:
            if self.body_until_eof and exc is None and self._eof:
                self.complete = True
            elif self.body_until_eof and exc is None:
                # RFC 9112 §9.8: without the closure alert the end of the body is unproven
                # (an attacker may have cut it); the caller must not see it as complete.
                self._error = UpstreamUnavailable(
                    "response body truncated: TLS connection closed without close_notify", "tls"
                )
            elif self._error is None:
                self._error = UpstreamUnavailable(
                    "connection lost during response body", "protocol"
                )
        self._wake_reader()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(UpstreamUnavailable("connection lost while sending", "protocol"))
        if self.sink is not None:
            self.sink.pump(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:
            # A byte after the end of the final response (a second response, or garbage):
            # never parse it into this exchange or the next one; the connection is dead.
            raise _Surplus()
        self.headers = []
        self._head_size = 0

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_RESPONSE_HEAD:
            raise UpstreamUnavailable("response header too large", "protocol")
        if self.head_seen:
            return  # a chunked body's trailer: never a header, and not relayed
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                raise UpstreamUnavailable("unexpected 101 Switching Protocols", "protocol")
            self._interim = True
            self.reason = b""
            return
        self.status = status
        self.head_seen = True
        self.keep_alive = bool(self._parser.should_keep_alive())
        length: int | None = None
        codings: bytes | None = None
        for name, value in self.headers:
            lower = lower_name(name)
            if lower == b"content-length":
                length = int(value)
            elif lower == b"transfer-encoding":
                codings = value if codings is None else codings + b"," + value
        chunked = False
        if codings is not None:
            # llhttp de-chunks only when chunked is the final coding; any other coding (gzip)
            # stays on the body, which the caller must then be told about.
            codings, chunked = http1.split_transfer_codings(codings)
            length = None  # Transfer-Encoding overrides Content-Length (RFC 9112 §6.3)
        self.transfer_codings = codings
        self.content_length = length
        no_body = self._head_request or status in (204, 304)
        self.body_until_eof = not no_body and not chunked and length is None
        if no_body:
            self.complete = True
            if self._head_request:
                self._reset_parser = True
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.complete:
            raise _Surplus()  # body bytes after a HEAD, 204 or 304 answer
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self._wake_reader()

    # -- exchange ---------------------------------------------------------------------
    def begin(self, method: bytes, sink: Sink | None = None) -> asyncio.Future[None] | None:
        """Start an exchange; the head arrives through the returned future, or, with a
        `sink`, through `sink.pump` (and then there is no future)."""
        self._expecting = True
        self.got_bytes = False
        self.head_seen = False
        self._head_bytes = 0
        self._head_request = method == b"HEAD"
        self.status = 0
        self.reason = b""
        self.headers = []
        self.content_length = None
        self.transfer_codings = None
        self.body_until_eof = False
        self.keep_alive = False
        self.complete = False
        self._error = None
        self._interim = False
        self.body_sent = True
        self.sink = sink
        self.head_error = None
        self.timed_out = False
        if sink is not None:
            self._head_waiter = None
            return None
        waiter = self._loop.create_future()
        self._head_waiter = waiter
        return waiter

    def detach(self) -> None:
        """Leave callback mode after the head: the rest of the body goes through `read`."""
        self.sink = None
        self._head_deadline = None

    def hold(self, held: bool) -> None:
        """Stop or restart reading while the caller cannot take more (callback mode)."""
        transport = self.transport
        if held == self._held or transport is None or self.closed:
            return
        self._held = held
        if held:
            transport.pause_reading()
        elif not self._reading_paused:
            transport.resume_reading()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self, idle_timeout: float) -> None:
        if not self._write_paused:
            return
        if self.closed:
            raise UpstreamUnavailable("connection lost while sending", "protocol")
        waiter = self._loop.create_future()
        self._drain = waiter
        timer = self._loop.call_later(idle_timeout, timeout_waiter, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._drain = None

    def take(self) -> bytes:
        """The body bytes buffered so far (b"" when none), resuming a paused read."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            if not self._held:
                self.transport.resume_reading()
        return data

    @property
    def body_error(self) -> GatewayError | None:
        """Why the body cannot complete (callback mode), or None while it still may."""
        if self._error is not None:
            return self._error
        if self.closed and not self.complete:
            return UpstreamUnavailable("connection lost during response body", "protocol")
        return None

    async def read(self, idle_timeout: float) -> bytes:
        """The next body bytes, b"" at the end; bounded by the idle timeout."""
        while True:
            if self._chunks:
                return self.take()
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            if self.closed:
                raise UpstreamUnavailable("connection lost during response body", "protocol")
            waiter = self._loop.create_future()
            self._reader = waiter
            timer = self._loop.call_later(idle_timeout, timeout_waiter, waiter)
            try:
                await waiter
            except TimeoutError:
                raise UpstreamTimeout("response body idle timeout") from None
            finally:
                timer.cancel()
                self._reader = None

    @property
    def body_buffered(self) -> bool:
        """True when `read` can answer at once (data buffered, or the body has ended)."""
        return bool(self._chunks) or self.complete

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def _fail(self, error: GatewayError) -> None:
        if not self.head_seen:
            self._head_failed(error)
        elif self._error is None and not self.complete:
            self._error = error
        self._wake_reader()

    def release(self) -> None:
        """Return the connection to its pool when the exchange ended cleanly, else close it."""
        self._head_waiter = None
        self.sink = None
        self._expecting = False
        if (
            self.complete
            and self.keep_alive
            and self.body_sent
            and not self.closed
            and not self._chunks
            and not self._held
        ):
            self.pool.release(self)
        else:
            self.abort()

    def abort(self) -> None:
        self.closed = True
        self.sink = None
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            # Nobody waits for this head any more (we gave up on the exchange): a failure
            # set later by connection_lost would only be logged as never retrieved.
            waiter.cancel()
        if self.transport is not None:
            self.transport.abort()
        self.pool.discard(self)


class Pool:
    """Idle keep-alive connections for one (scheme, host, port, verify, client cert)."""

    def __init__(
        self, key: PoolKey, ssl_context: ssl.SSLContext | None, clock: Callable[[], float]
    ) -> None:
        self.key = key
        self._clock = clock
        self.ssl_context = ssl_context
        self.idle: deque[UpstreamConnection] = deque()
        self.retired = False  # dropped by `Upstream.retain`: nothing is kept any more

    def acquire(self, now: float) -> UpstreamConnection | None:
        while self.idle:
            conn = self.idle.pop()
            if conn.closed or now - conn.idle_since > POOL_IDLE_SECONDS:
                conn.abort()
                continue
            return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        if self.retired or len(self.idle) >= POOL_MAX_IDLE:
            # A retired pool is never swept: a connection kept there (in flight when its
            # client certificate rotated or its target moved) would stay open for good.
            conn.abort()
            return
        conn.idle_since = self._clock()
        self.idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def close_idle(self, older_than: float | None = None) -> None:
        keep: deque[UpstreamConnection] = deque()
        for conn in self.idle:
            if older_than is None or conn.idle_since < older_than:
                conn.closed = True
                if conn.transport is not None:
                    conn.transport.close()
            else:
                keep.append(conn)
        self.idle = keep


UpstreamResponse = UpstreamConnection
"""A connection is also the response of its current exchange (status, headers, `read`,
`release`): one object less per request. Valid until it is released or aborted."""


class Upstream:
    """Sends requests over pooled connections; one instance per process."""

    def __init__(self, loop: asyncio.AbstractEventLoop, proxies: ProxyConfig | None = None) -> None:
        self._loop = loop
        self._proxies = proxies
        self._pools: dict[PoolKey, Pool] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        # One read buffer for every connection (asyncio's buffered-protocol reads): the
        # parser copies what it keeps, so the next read may reuse it.
        self._read_buffer = memoryview(bytearray(READ_SIZE))

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

    async def send(
        self,
        req: OutboundRequest,
        pool: Pool,
        *,
        header_timeout: float,
        idle_timeout: float,
        fresh: bool = False,
    ) -> UpstreamResponse:
        """One attempt. A stale pooled connection is replaced once, transparently.

        A keep-alive connection that the target closed while idle fails before any response
        byte arrives; that is not the target's answer, so the request (when it is buffered
        and can be replayed) goes again on a fresh connection (`fresh=True`).
        """
        conn = None if fresh else pool.acquire(self._loop.time())
        loop = self._loop
        deadline = loop.time() + header_timeout
        try:
            if conn is None:
                fresh = True
                async with asyncio.timeout_at(deadline):
                    conn = await self._connect(req.target, pool)
            head_ready = conn.begin(req.method)
            assert head_ready is not None
            conn.arm_head_timeout(deadline)
            stream = req.stream
            if stream is None:
                conn.write(_encode(req, conn))
            else:
                path, headers = _path_and_headers(req, conn)
                conn.write(
                    http1.request_head(
                        req.method,
                        path,
                        headers,
                        content_length=stream.length,
                        chunked=stream.length is None,
                    )
                )
                conn.disarm_head_timeout()  # the body streams under the idle timeout instead
                conn.body_sent = False
                await self._stream_body(conn, stream, head_ready, idle_timeout)
                conn.arm_head_timeout(loop.time() + header_timeout)
            await head_ready
            conn.disarm_head_timeout()
        except TimeoutError:
            if conn is not None:
                conn.abort()
            raise UpstreamTimeout(f"timeout after {header_timeout:g}s") from None
        except UpstreamUnavailable as exc:
            if conn is not None:
                conn.abort()
                if (
                    not fresh
                    and exc.kind != "connect"
                    and not conn.got_bytes
                    and not req.stream
                    and http1.replayable(req.method, req.headers)
                ):
                    return await self.send(
                        req,
                        pool,
                        header_timeout=header_timeout,
                        idle_timeout=idle_timeout,
                        fresh=True,
                    )
            raise
        except GatewayError:
            if conn is not None:
                conn.abort()
            raise
        except (OSError, ssl.SSLError, EOFError) as failure:
            if conn is not None:
                conn.abort()
            raise _classify(failure) from None
        except BaseException:
            if conn is not None:
                conn.abort()
            raise
        return conn

    def try_send(
        self, req: OutboundRequest, pool: Pool, *, header_timeout: float, sink: Sink
    ) -> UpstreamConnection | None:
        """Send a buffered request on an idle pooled connection, without a task.

        The answer arrives through `sink.pump`. None when no idle connection is at hand
        (connecting needs `send`). A failure of a stale connection shows up at the sink as
        `head_error` with `got_bytes` False; the caller then resends with `send(fresh=True)`.
        """
        conn = pool.acquire(self._loop.time())
        if conn is None:
            return None
        conn.begin(req.method, sink)
        conn.arm_head_timeout(self._loop.time() + header_timeout)
        conn.write(_encode(req, conn))
        return conn

    async def fetch(
        self, req: OutboundRequest, pool: Pool, *, deadline_s: float, limit: int = 1 << 20
    ) -> tuple[int, Headers, bytes]:
        """A whole small exchange (token and CSRF calls), bounded by one timeout.

        Raises UpstreamTimeout/UpstreamUnavailable like `send`; a body over `limit` bytes is
        a protocol failure, so a hostile endpoint cannot make us buffer without bound.
        """
        try:
            async with asyncio.timeout(deadline_s):
                response = await self.send(
                    req, pool, header_timeout=deadline_s, idle_timeout=deadline_s
                )
                try:
                    parts: list[bytes] = []
                    size = 0
                    while data := await response.read(deadline_s):
                        size += len(data)
                        if size > limit:
                            raise UpstreamUnavailable("response body too large", "protocol")
                        parts.append(data)
                except BaseException:
                    response.abort()
                    raise
                response.release()
                return response.status, response.headers, b"".join(parts)
        except TimeoutError:
            raise UpstreamTimeout(f"timeout after {deadline_s:g}s") from None

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
        transport, tunnel = await loop.create_connection(_Tunnel, proxy.host, proxy.port)
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

    async def _stream_body(
        self,
        conn: UpstreamConnection,
        stream: StreamedBody,
        head_ready: asyncio.Future[None],
        idle_timeout: float,
    ) -> None:
        """Pump the caller's body while watching for an early response.

        A target may answer (401, 413) before it has read the whole body; then the answer
        wins, and the rest of the body is still sent in the background when possible.
        """
        pump = self._loop.create_task(_pump(conn, stream, idle_timeout))
        try:
            done, _ = await asyncio.wait({pump, head_ready}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled: the caller left
            pump.cancel()
            pump.add_done_callback(_ignore_result)
            raise
        if pump in done:
            pump.result()  # re-raise a send failure
            return
        pump.add_done_callback(_ignore_result)


class _Tunnel(asyncio.Protocol):
    """Opens a CONNECT tunnel through an HTTP proxy; TLS to the target then runs inside it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self._done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if b"\r\n\r\n" in self._buffer and not self._done.done():
            self._done.set_result(self._buffer)
        elif len(self._buffer) > 65536 and not self._done.done():
            self._done.set_exception(UpstreamUnavailable("proxy answer too large", "connect"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(UpstreamUnavailable("proxy closed the tunnel", "connect"))

    async def open(self, target: Target, authorization: bytes | None) -> None:
        assert self.transport is not None
        authority = b"%s:%d" % (target.host.encode("idna"), target.port)
        if ":" in target.host:
            authority = b"[%s]:%d" % (target.host.encode(), target.port)
        lines = [b"CONNECT " + authority + b" HTTP/1.1", b"Host: " + authority]
        if authorization is not None:
            lines.append(b"Proxy-Authorization: " + authorization)
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")
        answer = await self._done
        status_line = answer.split(b"\r\n", 1)[0].split()
        if len(status_line) < 2 or not status_line[1].startswith(b"2"):
            code = status_line[1].decode("latin-1") if len(status_line) > 1 else "?"
            raise UpstreamUnavailable(f"proxy refused CONNECT: status {code}", "connect")


def _path_and_headers(req: OutboundRequest, conn: UpstreamConnection) -> tuple[bytes, Headers]:
    """Through an HTTP proxy the target goes in absolute form, with the proxy's credentials."""
    if not conn.absolute_prefix:
        return req.path, req.headers
    headers = req.headers
    if conn.proxy_authorization is not None:
        headers = [*headers, (b"Proxy-Authorization", conn.proxy_authorization)]
    return conn.absolute_prefix + req.path, headers


def _encode(req: OutboundRequest, conn: UpstreamConnection) -> bytes:
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


def _ignore_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


async def _pump(conn: UpstreamConnection, stream: StreamedBody, idle_timeout: float) -> None:
    chunked = stream.length is None
    data = stream.prefix
    sent = 0
    while True:
        if data:
            sent += len(data)
            conn.write(http1.chunk(data) if chunked else data)
            await conn.drain(idle_timeout)
        data = await stream.source.read()
        if not data:
            break
    if chunked:
        conn.write(http1.LAST_CHUNK)
    elif stream.length is not None and sent != stream.length:
        conn.abort()
        raise UpstreamUnavailable("request body shorter than its Content-Length", "protocol")
    conn.body_sent = True


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or 'error'}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return "host not found"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "network unreachable"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def _classify(exc: BaseException) -> UpstreamUnavailable:
    kind = "tls" if isinstance(exc, ssl.SSLError) else "connect"
    return UpstreamUnavailable(_reason(exc), kind)
