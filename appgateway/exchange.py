"""One request on a caller connection and the means to answer it: what the pipeline sees.

The request body arrives through `read` (with the body idle timeout and the minimum rate of
`--body-min-rate`); the response goes out through `start_response`, `send`, `end`, or
`send_error`, with the framing chosen here. `answer` says how far the response is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from appgateway import http1, transitions
from appgateway.aio import wait_idle
from appgateway.errors import BodyTooSlow, CallerGone, GatewayError
from appgateway.model import Headers

if TYPE_CHECKING:
    from appgateway.server import ClientConnection

HIGH_WATER: Final = 16 * 1024
"""Request-body bytes buffered before reading from the caller pauses."""


# How far the response of an exchange is (plain int constants: see upstream_connection.py).
UNANSWERED: Final = 0  # nothing sent yet: an error response is still possible
ANSWERING: Final = 1  # the head is composed (held back until the first body bytes)
ANSWERED: Final = 2  # the whole response is written
CUT: Final = 3  # the connection was aborted mid-response
ANSWERS: Final = ("unanswered", "answering", "answered", "cut")

LEGAL_ANSWERS: Final = transitions.pack(
    (
        (ANSWERING, ANSWERED, CUT),  # from UNANSWERED
        (ANSWERED, CUT),  # from ANSWERING
        (),  # from ANSWERED
        (CUT,),  # from CUT: cutting twice changes nothing
    )
)


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
        "answer",
        "status_sent",
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
        self.answer = UNANSWERED
        self.status_sent = 0
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
        # Set by the handler that owns the exchange: told when the caller leaves.
        self.on_lost: Callable[[], None] | None = None
        self.on_writable: Callable[[], None] | None = None  # once, when a paused write resumes

    @property
    def has_body(self) -> bool:
        return self.chunked or self.content_length is not None

    @property
    def started(self) -> bool:
        """A response (or part of one) went out: no error response is possible any more."""
        return self.answer != UNANSWERED

    def _to(self, answer: int) -> None:
        assert transitions.allowed(LEGAL_ANSWERS, self.answer, answer), (self.answer, answer)
        self.answer = answer

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
        """The next request-body bytes, b"" at the end. Raises CallerGone (the caller left
        or went silent for --idle-timeout), BodyTooSlow or BadRequest (broken framing)."""
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
                raise CallerGone("caller closed the connection during the request body")
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
            try:
                await wait_idle(waiter, conn.idle_timeout if delay is None else delay)
            except TimeoutError:
                if delay is None or delay >= conn.idle_timeout:
                    raise CallerGone("request body idle timeout") from None
            finally:
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
        self._to(ANSWERING)
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
            keep_alive=self.conn.keep_alive_field,
        )
        self.bytes_out += len(head)
        # Held back and sent with the first body bytes: one write (and one segment) for a
        # small response instead of two.
        self._head = head

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
        self._to(ANSWERED)

    def send_error(self, error: GatewayError) -> None:
        """A complete gateway-made response; the connection closes if the body was not read."""
        close = not self.keep_alive or not self.body_complete
        if close:
            self._close_after = True
        data = http1.error_response(error, close=close, keep_alive=self.conn.keep_alive_field)
        self._to(ANSWERED)
        self.status_sent = error.status
        self.bytes_out += len(data)
        self.conn.write(data)

    def abort(self) -> None:
        """Cut the response (an upstream failure after the head was sent)."""
        self._close_after = True
        self._to(CUT)
        self.conn.abort()

    def done(self) -> None:
        """The handler is through with this exchange (answered, cut, or the caller left)."""
        self.on_lost = self.on_writable = None
        self.conn.done(self)
