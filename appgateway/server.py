"""Proxy and Compass listeners: the server Protocol (httptools request parser).

One `ClientConnection` per socket parses requests with llhttp in strict mode, hands each to
`handler` (a plain call: the handler decides whether anything needs a task), answers
pipelined requests in order, and applies back-pressure both ways. Nothing here knows about
routing or credentials: `Exchange` is the whole interface the pipeline sees.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Final

import httptools

from appgateway import http1
from appgateway.aio import Deadline, ReadBuffer, as_protocol
from appgateway.caller.bearer import Remembered
from appgateway.connections import ConnectionTracker
from appgateway.errors import BadRequest
from appgateway.exchange import ANSWERED, Exchange
from appgateway.headers import lower_name
from appgateway.model import Headers

log: Final = logging.getLogger("appgateway.server")

MAX_HEAD: Final = 64 * 1024
CLOSE_LINGER: Final = 2.0
"""Seconds a connection closed between requests keeps reading (and dropping) after its FIN."""
WRITE_HIGH_WATER: Final = 32 * 1024
"""Bytes waiting for a caller before the relay stops reading from the target. With the
reads of `aio.READ_SIZE`, a download the caller stalls holds some tens of KiB here."""


Handler = Callable[[Exchange], None]
"""Takes each exchange over; it ends it, then or later, with `exchange.done()`, and sets
`on_lost` while it holds anything the caller's leaving must release."""


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
        body_min_rate: int = 0,
        read_buffer: ReadBuffer | None = None,
        keepalive_timeout: float | None = None,
    ) -> None:
        self.loop = loop
        # Shared by the listener's connections: each read is parsed before the next one.
        self.read_buffer = ReadBuffer() if read_buffer is None else read_buffer
        self.body_min_rate = body_min_rate
        self.handler = handler
        self.request_timeout = request_timeout
        # Between requests: longer than the idle timeouts of common client pools (Go 90 s),
        # so that a client, not the gateway, closes an idle connection (see `_expired`).
        self.keepalive_timeout = request_timeout if keepalive_timeout is None else keepalive_timeout
        self.keep_alive_field = http1.keep_alive_field(self.keepalive_timeout)
        self.idle_timeout = idle_timeout
        self.tracker = tracker
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.caller_memo: Remembered | None = None  # caller/bearer.recall
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: Headers = []
        self._head_size = 0
        self._parsing: Exchange | None = None
        self._last: Exchange | None = None
        self._active: Exchange | None = None
        self._queue: deque[Exchange] = deque()
        self._deadline = Deadline(loop, self._expired)  # for the next head (or a byte of it)
        self._between = False  # keep-alive: no byte of the next request yet
        self._in_head = True  # between messages or inside a head: bytes count against MAX_HEAD
        self._head_bytes = 0
        self._heads = 0  # heads parsed, to tell whether a piece of input completed one
        self._reading_paused = False
        self._write_paused = False
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
        self._arm(self.request_timeout)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.read_buffer.whole

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.read_buffer.filled(nbytes))

    def data_received(self, data: bytes | memoryview) -> None:
        if self._broken:
            return
        if self._between:
            # The next request has begun: its head has --request-timeout, unless it is whole
            # in this very read (the common case), which then needs no timer at all.
            self._between = False
            heads = self._heads
            self._parse(data)
            if self._heads == heads and not self._broken:
                self._arm(self.request_timeout)
            return
        self._parse(data)

    def _parse(self, data: bytes | memoryview) -> None:
        try:
            # Bound the head by bytes received, not per field: llhttp buffers a field until
            # it ends, so one endless header would otherwise grow without limit. The budget
            # is per head: when a piece completed heads (pipelining), the head in progress
            # began inside it and starts afresh.
            size = len(data)
            while self._in_head and size > MAX_HEAD - self._head_bytes:
                allowance = MAX_HEAD - self._head_bytes
                heads = self._heads
                self._parser.feed_data(data[:allowance])
                data = data[allowance:]
                size -= allowance
                if self._broken:
                    return
                if self._heads == heads:
                    self._protocol_error(431, "request header fields too large")
                    return
                self._head_bytes = 0
            if self._in_head:
                self._head_bytes += size
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
        self._deadline.close()
        for exchange in (self._parsing, self._active, *self._queue):
            if exchange is not None:
                exchange._wake()
        active = self._active
        if active is not None and active.on_lost is not None:
            hook, active.on_lost = active.on_lost, None
            hook()

    def pause_writing(self) -> None:
        self._write_paused = True

    @property
    def writing_paused(self) -> bool:
        return self._write_paused

    def resume_writing(self) -> None:
        self._write_paused = False
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
        self._deadline.disarm()
        self._in_head = False
        self._head_bytes = 0
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._reject(400, "malformed request: unsupported HTTP version")
        method = parser.get_method()
        if method == b"CONNECT":
            self._reject(405, "CONNECT is not supported")
        exchange = Exchange(self, method, self._url, self._headers)
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
        try:
            self.handler(exchange)
        except Exception:
            # The handler ends what it can itself; this is the net under it.
            log.error("internal error while handling a request", exc_info=log.isEnabledFor(10))
            if not exchange.started and not self.closed:
                self.write(http1.simple_error(500, "internal error"))
            exchange._close_after = True
            if self._active is exchange:
                exchange.done()

    def done(self, exchange: Exchange) -> None:
        if self._active is exchange:
            self._finished(exchange)

    def _finished(self, exchange: Exchange) -> None:
        self._active = None
        if self.closed:
            return
        if exchange._close_after or exchange.answer != ANSWERED or not exchange.body_complete:
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
        self._between = True
        self._arm(self.keepalive_timeout)

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
        self._deadline.disarm()
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

    def _arm(self, seconds: float) -> None:
        self._deadline.arm(self.loop.time() + seconds)

    def _expired(self) -> None:
        if self.closed or self._active is not None:
            return
        if self._between or self._head_bytes == 0:
            self._close_between_requests()
        else:
            self.close()  # a head that did not arrive in time (slowloris)

    def _close_between_requests(self) -> None:
        """Close a connection no request is using, in an order a caller can tell.

        A caller may be sending its next request at this very moment. Closing the socket with
        that request unread would answer it with an RST, which clients report as an error
        even for requests they could repeat. So: a FIN first (the caller reads an orderly end
        of stream, which HTTP clients take as "retry on a new connection"), then whatever
        still arrives is read and dropped for a moment, then the socket is closed.
        """
        self._broken = True  # nothing more is parsed
        self._deadline.disarm()
        transport = self.transport
        if transport is None or not transport.can_write_eof():
            self.close()
            return
        transport.write_eof()
        self._reading_paused = False
        transport.resume_reading()  # read (and drop) what is on its way
        self.loop.call_later(CLOSE_LINGER, self.close)

    @property
    def idle(self) -> bool:
        return self._active is None and not self._queue


_TOO_MANY: Final = http1.simple_error(503, "too many connections")


class _Rejected(Exception):
    """Raised inside a parser callback to stop parsing; the reason is kept on the protocol."""


def _parser_message(exc: Exception) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.split("\n")[0][:120]


async def serve(
    loop: asyncio.AbstractEventLoop,
    handler: Handler,
    sock: socket.socket,
    *,
    request_timeout: float,
    idle_timeout: float,
    tracker: ConnectionTracker,
    body_min_rate: int = 0,
    keepalive_timeout: float | None = None,
) -> asyncio.Server:
    """Serve on an already bound socket (the app or the supervisor binds it)."""

    read_buffer = ReadBuffer()

    def factory() -> asyncio.Protocol:
        conn = ClientConnection(
            loop,
            handler,
            request_timeout=request_timeout,
            idle_timeout=idle_timeout,
            tracker=tracker,
            body_min_rate=body_min_rate,
            read_buffer=read_buffer,
            keepalive_timeout=keepalive_timeout,
        )
        return as_protocol(conn)

    return await loop.create_server(factory, sock=sock, backlog=1024)
