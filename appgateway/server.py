"""Proxy and Compass listeners: the server Protocol (httptools request parser).

One `ClientConnection` per socket parses requests with llhttp in strict mode, runs one task
per request through `handler`, answers pipelined requests in order, and streams bodies in
both directions with pause/resume_reading back-pressure. Nothing here knows about routing
or credentials: `Exchange` is the whole interface the pipeline sees.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

import httptools

from appgateway import http1
from appgateway.errors import BadRequest, BodyTooSlow, GatewayError
from appgateway.headers import lower_name
from appgateway.model import Headers
from appgateway.upstream import READ_SIZE, as_protocol, timeout_waiter

log: Final = logging.getLogger("appgateway.server")

MAX_HEAD: Final = 64 * 1024
HIGH_WATER: Final = 16 * 1024
"""Request-body bytes buffered before reading from the caller pauses."""
WRITE_HIGH_WATER: Final = 32 * 1024
"""Bytes waiting for a caller before the relay stops reading from the target. With the
reads of `READ_SIZE`, a download the caller stalls holds some tens of KiB here."""


class ClientGone(Exception):
    """The caller closed its connection or stalled past the idle timeout."""


class Exchange:
    """One request on a client connection and the means to answer it."""

    __slots__ = (
        "conn",
        "method",
        "target",
        "headers",
        "http11",
        "keep_alive",
        "content_length",
        "chunked",
        "expect_continue",
        "bytes_in",
        "bytes_out",
        "started",
        "status_sent",
        "finished",
        "_chunks",
        "_buffered",
        "body_complete",
        "_body_error",
        "_waiter",
        "_continue_sent",
        "_body_allowed",
        "_chunked_out",
        "_close_after",
        "_head",
        "_waited",
        "_waited_from",
        "request_id",
        "on_lost",
        "on_writable",
    )

    def __init__(
        self, conn: ClientConnection, method: bytes, target: bytes, headers: Headers
    ) -> None:
        self.conn = conn
        self.method = method
        self.target = target
        self.headers = headers
        self.http11 = True
        self.keep_alive = True
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = False
        self.status_sent = 0
        self.finished = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self.body_complete = False
        self._body_error: GatewayError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._continue_sent = False
        self._body_allowed = True
        self._chunked_out = False
        self._close_after = False
        self._head = b""
        # The body's minimum rate: how long a read has waited for the caller in the current
        # window (request-timeout seconds of waiting), and `bytes_in` when the window began.
        self._waited = 0.0
        self._waited_from = 0
        self.request_id: bytes | None = None
        # Set while a fast handler (no task) owns the exchange: told when the caller leaves.
        self.on_lost: Callable[[], None] | None = None
        self.on_writable: Callable[[], None] | None = None  # once, when a paused write resumes

    @property
    def has_body(self) -> bool:
        return self.chunked or self.content_length is not None

    # -- request body ----------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self.bytes_in += len(data)
        if self._buffered > HIGH_WATER:
            self.conn.pause_reading()
        self._wake()

    def _feed_eof(self) -> None:
        self.body_complete = True
        self._wake()

    def _fail(self, error: GatewayError) -> None:
        self._body_error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes:
        """The next request-body bytes, b"" at the end. Raises ClientGone."""
        conn = self.conn
        while True:
            if self._chunks:
                data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
                self._chunks.clear()
                self._buffered = 0
                conn.resume_reading()
                return data
            if self.body_complete:
                return b""
            if self._body_error is not None:
                raise self._body_error
            if conn.closed:
                raise ClientGone("caller closed the connection during the request body")
            if self.expect_continue and not self._continue_sent:
                self._continue_sent = True
                conn.write(http1.CONTINUE_100)
            conn.resume_reading()
            loop = conn.loop
            window = conn.request_timeout
            waiter = loop.create_future()
            self._waiter = waiter
            # Wake at the idle timeout, or when the rate window is used up if that is sooner.
            delay = min(conn.idle_timeout, window - self._waited) if conn.body_min_rate else None
            started = loop.time()
            timer = loop.call_later(
                conn.idle_timeout if delay is None else delay, timeout_waiter, waiter
            )
            try:
                await waiter
            except TimeoutError:
                if delay is None or delay >= conn.idle_timeout:
                    raise ClientGone("request body idle timeout") from None
            finally:
                timer.cancel()
                self._waiter = None
            if delay is not None:
                self._check_rate(loop.time() - started, window, conn.body_min_rate)

    def _check_rate(self, waited: float, window: float, min_rate: int) -> None:
        """Counts only the time the gateway waited for the caller: a body held back by our
        own back-pressure (a slow target) is not the caller's fault."""
        self._waited += waited
        if self._waited < window:
            return
        if self.bytes_in - self._waited_from < min_rate * window:
            raise BodyTooSlow(f"request body slower than {min_rate} bytes/s")
        self._waited = 0.0
        self._waited_from = self.bytes_in

    async def read_up_to(self, limit: int) -> tuple[bytes, bool]:
        """Buffer the body up to `limit` bytes: (data, complete)."""
        parts: list[bytes] = []
        size = 0
        while size <= limit:
            data = await self.read()
            if not data:
                return b"".join(parts), True
            parts.append(data)
            size += len(data)
        return b"".join(parts), False

    # -- response --------------------------------------------------------------------
    def start_response(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        content_length: int | None,
        codings: bytes | None = None,
    ) -> None:
        """Write the response head, choosing the framing towards the caller. `codings`
        (transfer codings the body still carries, such as gzip) need chunked framing, so
        an HTTP/1.1 caller (forward.py refuses them to HTTP/1.0 callers)."""
        self.started = True
        self.status_sent = status
        allowed = http1.body_allowed(status, self.method)
        self._body_allowed = allowed
        chunked = False
        length = content_length
        if not allowed:
            if status == 204 or status < 200:
                length = None
        elif codings is not None:
            chunked = True
            length = None
        elif length is None:
            if self.http11:
                chunked = True
            else:
                self._close_after = True
        self._chunked_out = chunked
        close = self._close_after or not self.keep_alive or not self.body_complete
        if close:
            self._close_after = True
        head = http1.response_head(
            status,
            reason,
            headers,
            content_length=length,
            chunked=chunked,
            close=close,
            codings=codings,
        )
        self.bytes_out += len(head)
        # Held back and sent with the first body bytes: one write (and one segment) for a
        # small response instead of two.
        self._head = head

    async def write(self, data: bytes) -> None:
        self.send(data)
        await self.conn.drain()

    def send(self, data: bytes) -> None:
        """Write body bytes without waiting; the caller checks `conn.writing_paused`."""
        if not self._body_allowed or not data:
            return
        self.bytes_out += len(data)
        if self._chunked_out:
            data = http1.chunk(data)
        head = self._head
        if head:
            self._head = b""
            data = head + data
        self.conn.write(data)

    def flush_head(self) -> None:
        """Send a held-back head now (the body will be slow to come)."""
        if self._head:
            self.conn.write(self._head)
            self._head = b""

    def end(self) -> None:
        tail = http1.LAST_CHUNK if self._chunked_out else b""
        head = self._head
        if head or tail:
            self._head = b""
            self.conn.write(head + tail)
        self.finished = True

    def send_error(self, error: GatewayError) -> None:
        """A complete gateway-made response; the connection closes if the body was not read."""
        close = not self.keep_alive or not self.body_complete
        if close:
            self._close_after = True
        data = http1.error_response(error, close=close)
        self.started = True
        self.status_sent = error.status
        self.finished = True
        self.bytes_out += len(data)
        self.conn.write(data)

    def abort(self) -> None:
        """Cut the response (an upstream failure after the head was sent)."""
        self._close_after = True
        self.conn.abort()


Handler = Callable[[Exchange], Awaitable[None]]
FastHandler = Callable[[Exchange], bool]
"""Takes an exchange over without a task when it can (True). It then ends it with
`conn.done(exchange)`, or hands the rest to a task with `conn.run(exchange, coro)`."""


class ClientConnection:
    """One caller connection."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handler: Handler,
        *,
        request_timeout: float,
        idle_timeout: float,
        tracker: ConnectionTracker,
        fast: FastHandler | None = None,
        body_min_rate: int = 0,
        read_buffer: memoryview | None = None,
    ) -> None:
        self.loop = loop
        # Shared by the listener's connections: each read is parsed before the next one.
        self.read_buffer = memoryview(bytearray(READ_SIZE)) if read_buffer is None else read_buffer
        self.body_min_rate = body_min_rate
        self.handler = handler
        self.fast = fast
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.tracker = tracker
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: Headers = []
        self._head_size = 0
        self._parsing: Exchange | None = None
        self._last: Exchange | None = None
        self._active: Exchange | None = None
        self._task: asyncio.Task[None] | None = None
        self._queue: deque[Exchange] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None
        self._in_head = True  # between messages or inside a head: bytes count against MAX_HEAD
        self._head_bytes = 0
        self._heads = 0  # heads parsed, to tell whether a piece of input completed one
        self._reading_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._pending_error: bytes | None = None
        self._rejected: tuple[int, str] | None = None
        self._broken = False
        self._eof = False

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.tracker.add(self):
            self._broken = True
            self.closed = True
            transport.write(_TOO_MANY)  # type: ignore[attr-defined]
            transport.close()
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]
        self._arm_head_timer()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        if self._broken:
            return
        try:
            # Bound the head by bytes received, not per field: llhttp buffers a field until
            # it ends, so one endless header would otherwise grow without limit. The budget
            # is per head: when a piece completed heads (pipelining), the head in progress
            # began inside it and starts afresh.
            while self._in_head and len(data) > MAX_HEAD - self._head_bytes:
                allowance = MAX_HEAD - self._head_bytes
                heads = self._heads
                self._parser.feed_data(data[:allowance])
                data = data[allowance:]
                if self._broken:
                    return
                if self._heads == heads:
                    self._protocol_error(431, "request header fields too large")
                    return
                self._head_bytes = 0
            if self._in_head:
                self._head_bytes += len(data)
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade()
        except httptools.HttpParserError as exc:
            # httptools wraps exceptions raised in callbacks; ours leave their reason here.
            rejected = self._rejected
            if rejected is not None:
                self._protocol_error(*rejected)
            else:
                self._protocol_error(400, f"malformed request: {_parser_message(exc)}")

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._active is None and not self._queue:
            return None
        # A half-closed caller still gets its answer; close afterwards.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.tracker.discard(self)
        self._waiting_since = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for exchange in (self._parsing, self._active, *self._queue):
            if exchange is not None:
                exchange._wake()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ClientGone("caller closed the connection"))
        if self._task is not None and not self._task.done():
            self._task.cancel()
        elif self._active is not None and self._active.on_lost is not None:
            self._active.on_lost()

    def pause_writing(self) -> None:
        self._write_paused = True

    @property
    def writing_paused(self) -> bool:
        return self._write_paused

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        active = self._active
        if active is not None and active.on_writable is not None:
            hook, active.on_writable = active.on_writable, None
            hook()

    # -- httptools callbacks ----------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            self._reject(431, "request header fields too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD:
            self._reject(431, "request header fields too large")
        if not self._in_head:
            return  # a chunked body's trailer: never a header (a filter in front saw none)
        self._headers.append((name, value))

    def _reject(self, status: int, message: str) -> None:
        self._rejected = (status, message)
        raise _Rejected(message)

    def on_headers_complete(self) -> None:
        self._heads += 1
        self._cancel_head_timer()
        self._in_head = False
        self._head_bytes = 0
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._reject(400, "malformed request: unsupported HTTP version")
        method = parser.get_method()
        if method == b"CONNECT":
            self._reject(405, "CONNECT is not supported")
        url = self._url
        if b"#" in url:
            url = url.partition(b"#")[0]  # a fragment is the caller's own; never sent on
        exchange = Exchange(self, method, url, self._headers)
        http11 = version == "1.1"
        exchange.http11 = http11
        exchange.keep_alive = bool(parser.should_keep_alive()) and not self._eof
        hosts = 0
        for name, value in self._headers:
            lower = lower_name(name)
            if lower == b"content-length":
                exchange.content_length = int(value)
            elif lower == b"transfer-encoding":
                exchange.chunked = True
                if not http11:
                    exchange.keep_alive = False  # RFC 9112 §6.1: close after it
            elif lower == b"host":
                hosts += 1
            elif lower == b"expect" and value.lower() == b"100-continue":
                exchange.expect_continue = True
        if hosts != 1 and (hosts > 1 or http11):
            # RFC 9112 §3.2: exactly one Host in HTTP/1.1; two would let two parsers pick
            # different APIs from the same request.
            self._reject(400, "malformed request: missing or repeated Host")
        if exchange.content_length == 0 or not exchange.has_body:
            # No body (RFC 9112 §6.3): complete already, so a handler that answers before
            # on_message_complete still keeps the connection alive.
            exchange.body_complete = True
        self._parsing = exchange
        self._last = exchange
        if self._active is None:
            self._start(exchange)
        else:
            self._queue.append(exchange)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        if exchange is not None:
            exchange._feed(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        exchange = self._parsing
        if exchange is not None:
            exchange._feed_eof()
            self._parsing = None

    # -- request lifecycle ------------------------------------------------------------
    def _start(self, exchange: Exchange) -> None:
        self._active = exchange
        fast = self.fast
        if fast is not None:
            try:
                if fast(exchange):
                    return
            except Exception:
                # The fast handler sends nothing before it is sure to own the exchange, so
                # the task path can still answer (and log) whatever went wrong.
                log.error("internal error in the fast path", exc_info=log.isEnabledFor(10))
        self.run(exchange, self.handler(exchange))

    def run(self, exchange: Exchange, work: Awaitable[None]) -> None:
        """Handle `exchange` (or the rest of it) in a task."""
        exchange.on_lost = exchange.on_writable = None
        self._task = self.loop.create_task(self._run(exchange, work))

    def done(self, exchange: Exchange) -> None:
        """A fast handler ended `exchange`."""
        exchange.on_lost = exchange.on_writable = None
        if self._active is exchange:
            self._finished(exchange)

    async def _run(self, exchange: Exchange, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            exchange._close_after = True
        except ClientGone:
            exchange._close_after = True
        except Exception:
            log.error("internal error while handling a request", exc_info=log.isEnabledFor(10))
            if not exchange.started and not self.closed:
                self.write(http1.simple_error(500, "internal error"))
            exchange._close_after = True
        finally:
            self._finished(exchange)

    def _finished(self, exchange: Exchange) -> None:
        self._active = None
        self._task = None
        if self.closed:
            return
        if exchange._close_after or not exchange.finished or not exchange.body_complete:
            self.close()
            return
        if self._queue:
            self._start(self._queue.popleft())
            if not self._queue:
                self.resume_reading()
            return
        if self._pending_error is not None:
            self.write(self._pending_error)
            self.close()
            return
        if self._eof or self.tracker.draining:
            self.close()
            return
        self.resume_reading()
        self._arm_head_timer()

    def _upgrade(self) -> None:
        """Upgrade and CONNECT are refused: no tunnels.

        An `Upgrade` GET is proxied as a plain request (the header is hop-by-hop and is
        removed), and the connection closes after the answer. CONNECT gets 405.
        """
        exchange = self._last
        if exchange is None:
            self._protocol_error(400, "malformed request: unexpected upgrade")
            return
        exchange.keep_alive = False
        if exchange.has_body and not exchange.body_complete:
            self._protocol_error(400, "malformed request: body with Upgrade is not supported")
            return
        exchange.body_complete = True
        self._parsing = None
        self.pause_reading()

    def _protocol_error(self, status: int, message: str) -> None:
        """A malformed request: answer after the requests already accepted, then close.

        When the head was accepted but its body framing is broken, that exchange's body
        reader fails instead, so its handler answers 400 (or cuts a started response) and
        nothing half-read is ever forwarded as if it were complete.
        """
        self._broken = True
        self.pause_reading()
        self._cancel_head_timer()
        parsing = self._parsing
        self._parsing = None
        if parsing is not None:
            parsing._fail(BadRequest(message))
            return
        data = http1.simple_error(status, message)
        if self._active is None and not self._queue:
            self.write(data)
            self.close()
        else:
            self._pending_error = data

    # -- transport helpers ------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        if not self._write_paused:
            return
        if self.closed:
            raise ClientGone("caller closed the connection")
        waiter = self.loop.create_future()
        self._drain = waiter
        timer = self.loop.call_later(self.idle_timeout, timeout_waiter, waiter)
        try:
            await waiter
        except TimeoutError:
            raise ClientGone("response body idle timeout (caller not reading)") from None
        finally:
            timer.cancel()
            self._drain = None

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            if self._queue or self._pending_error is not None:
                return
            self._reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # The request-timeout timer is lazy: arming only stamps the time, and one timer per
    # connection re-arms itself for the remainder, so a busy keep-alive connection does not
    # create and cancel a timer for every request.
    def _arm_head_timer(self) -> None:
        self._waiting_since = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_later(self.request_timeout, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        self._waiting_since = None

    def _head_timeout(self) -> None:
        self._timer = None
        since = self._waiting_since
        if since is None or self.closed:
            return
        remaining = since + self.request_timeout - self.loop.time()
        if remaining > 0.001:
            self._timer = self.loop.call_later(remaining, self._head_timeout)
        elif self._active is None:
            self.close()

    @property
    def idle(self) -> bool:
        return self._active is None and not self._queue


_TOO_MANY: Final = http1.simple_error(503, "too many connections")


class _Rejected(Exception):
    """Raised inside a parser callback to stop parsing; the reason is kept on the protocol."""


def _parser_message(exc: Exception) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.split("\n")[0][:120]


class ConnectionTracker:
    """The open client connections of the proxy listeners: for the shutdown drain, and to
    cap them (each one holds buffers and file descriptors towards the target too)."""

    def __init__(self, limit: int = 0, on_refused: Callable[[int], None] | None = None) -> None:
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.limit = limit  # 0: no cap
        self.on_refused = on_refused  # told the number of open connections

    def add(self, conn: ClientConnection) -> bool:
        """False when the cap is reached: the connection is refused, not tracked."""
        if self.limit and len(self.connections) >= self.limit:
            if self.on_refused is not None:
                self.on_refused(len(self.connections))
            return False
        self.connections.add(conn)
        return True

    def discard(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)

    def close_idle(self) -> None:
        for conn in list(self.connections):
            if conn.idle:
                conn.close()

    @property
    def busy(self) -> bool:
        return any(not conn.idle for conn in self.connections)

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()


async def serve(
    loop: asyncio.AbstractEventLoop,
    handler: Handler,
    sock: socket.socket,
    *,
    request_timeout: float,
    idle_timeout: float,
    tracker: ConnectionTracker,
    fast: FastHandler | None = None,
    body_min_rate: int = 0,
) -> asyncio.Server:
    """Serve on an already bound socket (the app or the supervisor binds it)."""

    read_buffer = memoryview(bytearray(READ_SIZE))

    def factory() -> asyncio.Protocol:
        conn = ClientConnection(
            loop,
            handler,
            request_timeout=request_timeout,
            idle_timeout=idle_timeout,
            tracker=tracker,
            fast=fast,
            body_min_rate=body_min_rate,
            read_buffer=read_buffer,
        )
        return as_protocol(conn)

    return await loop.create_server(factory, sock=sock, backlog=1024)
