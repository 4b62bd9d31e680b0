"""One connection to a target: the client Protocol (httptools response parser) and the pool
that keeps it between requests.

A connection serves one exchange at a time, in callback mode: `begin(method, sink)`, then the
request bytes, then `sink.pump(conn)` after every event (bytes parsed, the connection lost,
its timer expired). The sink reads the connection's state: `phase`, `error`, `timed_out`,
the head fields and `take()`. Every socket, TLS and parse failure reaches the sink as an
UpstreamUnavailable in `error` (wording in failures.py); nothing here raises into a callback.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

import httptools

from appgateway import failures, http1, transitions
from appgateway.aio import Deadline, ReadBuffer, wait_idle
from appgateway.errors import GatewayError, UpstreamTimeout, UpstreamUnavailable
from appgateway.headers import lower_name
from appgateway.model import Headers, Target

MAX_RESPONSE_HEAD: Final = 1024 * 1024
POOL_IDLE_SECONDS: Final = 60.0
POOL_MAX_IDLE: Final = 256

PoolKey = tuple[str, str, int, bool, str]


def pool_key(target: Target, verify: bool, fingerprint: str) -> PoolKey:
    """Connections are shared per (scheme, host, port, verify flag, client-cert fingerprint)."""
    return (target.scheme, target.host, target.port, verify, fingerprint)


# Where a connection is. Plain int constants, not an Enum: mypyc compares them as C ints,
# where an Enum member is an attribute lookup on a class (a measurable share of a request).
CONNECTING: Final = 0  # the socket (and TLS) is being set up
IDLE: Final = 1  # no exchange: fresh, or kept in its pool
WAITING: Final = 2  # a request is (being) sent; no response head yet
BODY: Final = 3  # the head is in; the body is arriving
DONE: Final = 4  # the response is complete; nothing more may arrive
CLOSED: Final = 5
PHASES: Final = ("connecting", "idle", "waiting", "body", "done", "closed")

LEGAL_MOVES: Final = transitions.pack(
    (
        (IDLE, CLOSED),  # from CONNECTING
        (WAITING, CLOSED),  # from IDLE
        (BODY, DONE, CLOSED),  # from WAITING
        (DONE, CLOSED),  # from BODY
        (IDLE, CLOSED),  # from DONE
        (),  # from CLOSED
    )
)
"""Every move a connection may make, by the phase it is in."""


class Sink(Protocol):
    """Follows one exchange: `pump` is called after every event and looks at the state."""

    def pump(self, conn: UpstreamConnection) -> None: ...


class UpstreamConnection:
    """One client connection to a target, parsing responses with llhttp."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, pool: Pool, read_buffer: ReadBuffer
    ) -> None:
        self._loop = loop
        self.pool = pool
        self._read_buffer = read_buffer  # shared: each read is parsed before the next one
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.phase = CONNECTING
        self.idle_since = 0.0
        # Set when the connection goes through an HTTP proxy (plain http targets only):
        # request targets are sent in absolute form, with the proxy's credentials.
        self.absolute_prefix = b""
        self.proxy_authorization: bytes | None = None
        self._eof = False  # the target's FIN (over TLS: its close_notify)
        # the current exchange
        self.sink: Sink | None = None
        self.error: GatewayError | None = None
        self.timed_out = False  # the deadline passed (head or body: the sink knows which)
        self.got_bytes = False
        self.body_sent = True  # False while a streamed request body is still going out
        self.status = 0
        self.reason = b""
        self.headers: Headers = []
        self.content_length: int | None = None
        self.transfer_codings: bytes | None = None  # other than a final chunked (gzip)
        self.keep_alive = False
        self._until_eof = False
        self._head_request = False
        self._interim = False
        self._reset_parser = False
        self._head_size = 0
        self._head_bytes = 0
        self._chunks: deque[bytes] = deque()
        # flow control
        self._held = False  # reading paused while the caller cannot take more
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        # The head and idle deadlines, set by the sink (one timer handle for them all).
        self._deadline = Deadline(loop, self._expired)

    def _move(self, phase: int) -> None:
        assert transitions.allowed(LEGAL_MOVES, self.phase, phase), (self.phase, phase)
        self.phase = phase

    # -- the deadline --------------------------------------------------------------------
    def arm(self, deadline: float) -> None:
        self._deadline.arm(deadline)

    def disarm(self) -> None:
        self._deadline.disarm()

    def _expired(self) -> None:
        if self.phase == CLOSED:
            return
        self.timed_out = True
        self._pump()

    # -- asyncio.Protocol (buffered) --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._move(IDLE)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer.whole

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read_buffer.filled(nbytes))

    def data_received(self, data: bytes | memoryview) -> None:
        self.got_bytes = True
        phase = self.phase
        if phase == DONE:
            self.keep_alive = False  # a byte after the end of the response: never reuse
            return
        if phase == IDLE or phase == CLOSED:
            # Bytes on an idle connection: the server is confused; never reuse it.
            self.abort()
            return
        try:
            if phase == WAITING:
                # Bound the head by bytes received, not per field: llhttp buffers a field
                # until it ends, so one endless header would otherwise grow without limit.
                allowance = MAX_RESPONSE_HEAD - self._head_bytes
                size = len(data)
                if size > allowance:
                    self._head_bytes = MAX_RESPONSE_HEAD
                    self._parser.feed_data(data[:allowance])
                    if self.phase == WAITING:
                        raise UpstreamUnavailable("response header too large", "protocol")
                    data = data[allowance:]
                else:
                    self._head_bytes += size
            self._parser.feed_data(data)
        except UpstreamUnavailable as refused:
            self._fail(refused)
        except httptools.HttpParserError as exc:  # (another name: mypyc types each once)
            reason = exc.__cause__ or exc.__context__  # what a callback of ours raised
            if isinstance(reason, UpstreamUnavailable):
                self._fail(reason)
            elif self.phase == DONE:
                # Bytes past the end of a complete response (`_Surplus`): the response
                # stands as framed, and the connection is never reused.
                self.keep_alive = False
            else:
                self._fail(failures.invalid_response(exc))
        if self._reset_parser:
            self._reset_parser = False
            self._parser = httptools.HttpResponseParser(self)
        self._pump()

    def eof_received(self) -> bool | None:
        # Over TLS only a close_notify alert gets here; a bare TCP FIN goes straight to
        # connection_lost (uvloop's TLS protocol), so this tells a clean end from a cut.
        self._eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.close()
        self.keep_alive = False
        phase = self.phase
        if phase == BODY and self._until_eof and exc is None and self._eof:
            self._move(DONE)  # a close-delimited body ends here (the sink releases)
        elif phase != DONE:
            if self.error is None and phase == WAITING:
                self.error = failures.lost_before_head(
                    exc, self.pool.ssl_context is not None, self.got_bytes
                )
            elif self.error is None and phase == BODY:
                self.error = failures.lost_in_body(exc, self._until_eof)
            self.phase = CLOSED
        self.pool.discard(self)
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(UpstreamUnavailable("connection lost while sending", "protocol"))
        self._pump()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.phase == DONE:
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
        if self.phase != WAITING:
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
        self._until_eof = not no_body and not chunked and length is None
        if no_body:
            self._move(DONE)
            if self._head_request:
                self._reset_parser = True  # llhttp cannot know the answer was to a HEAD
        else:
            self._move(BODY)

    def on_body(self, body: bytes) -> None:
        if self.phase == DONE:
            raise _Surplus()  # body bytes after a HEAD, 204 or 304 answer
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.phase == BODY:
            self._move(DONE)

    # -- the exchange ---------------------------------------------------------------------
    def begin(self, method: bytes, sink: Sink) -> None:
        """Start an exchange on an idle connection; its events go to `sink.pump`."""
        self._move(WAITING)
        self.sink = sink
        self.error = None
        self.timed_out = False
        self.got_bytes = False
        self.body_sent = True
        self._head_bytes = 0
        self._head_request = method == b"HEAD"
        self.status = 0
        self.reason = b""
        self.headers = []
        self.content_length = None
        self.transfer_codings = None
        self.keep_alive = False
        self._until_eof = False
        self._interim = False

    def _pump(self) -> None:
        sink = self.sink
        if sink is not None:
            sink.pump(self)

    def _fail(self, error: GatewayError) -> None:
        """A failure the sink must still hear of (it is pumped next)."""
        if self.error is None:
            self.error = error
        self._close()

    def take(self) -> bytes:
        """The body bytes parsed so far (b"" when none)."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return data

    def hold(self, held: bool) -> None:
        """Stop or restart reading while the caller cannot take more."""
        transport = self.transport
        if held == self._held or transport is None or self.phase == CLOSED:
            return
        self._held = held
        if held:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self, idle_timeout: float) -> None:
        """Wait until the target takes more of our upload; raises UpstreamUnavailable or
        UpstreamTimeout (it stopped reading for `idle_timeout`)."""
        if not self._write_paused:
            return
        if self.phase == CLOSED:
            raise UpstreamUnavailable("connection lost while sending", "protocol")
        waiter = self._loop.create_future()
        self._drain = waiter
        try:
            await wait_idle(waiter, idle_timeout)
        except TimeoutError:
            raise UpstreamTimeout("request body idle timeout (target not reading)") from None
        finally:
            self._drain = None

    def release(self) -> None:
        """End the exchange: back to the pool when the response was complete, the target
        offered keep-alive and our request went out whole; closed otherwise."""
        self.sink = None
        self._deadline.disarm()
        if (
            self.phase == DONE
            and self.keep_alive
            and self.body_sent
            and not self._held
            and not self._chunks
        ):
            self._move(IDLE)
            self.pool.release(self)
        else:
            self.abort()

    def abort(self) -> None:
        """Give up the connection; its sink hears no more of it."""
        self.sink = None
        self._close()

    def _close(self) -> None:
        self.phase = CLOSED
        if self.transport is not None:
            self.transport.abort()
        self.pool.discard(self)


class _Surplus(Exception):
    """Raised in a parser callback: a byte arrived after the final response was complete."""


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
            if conn.phase != IDLE or now - conn.idle_since > POOL_IDLE_SECONDS:
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
                conn.phase = CLOSED
                if conn.transport is not None:
                    conn.transport.close()
            else:
                keep.append(conn)
        self.idle = keep
