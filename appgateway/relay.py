"""One request from its route to its end: the data path's only engine.

A `Relay` first prepares what the request needs. When that means waiting (a token or CSRF
fetch, buffering a body for the retry, a new connection, a streamed upload) it waits in a
coroutine, the prelude; when everything is at hand (credentials cached, no body, an idle
pooled connection) it sends at once, with no task. Either way the target's answer comes back
through `pump`, the connection's callback: the relay looks at what the connection has and
moves the response on as far as it can. The turns it takes (resend on a fresh connection,
retry with fresh credentials, whose fault an idle body is) are decide.py's named decisions.

Who holds what: until the hand-over the relay owns the caller's exchange and no target
connection; from `_send` on it owns one connection too, as that connection's sink; at the end
(`_end`) it releases the connection (pooled or closed), records the outcome once and hands
the exchange back to the server (`done`). See docs/request-lifecycle.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final

from appgateway import decide, http1, transitions
from appgateway.auth import Applied
from appgateway.errors import CallerGone, GatewayError, UpstreamTimeout, UpstreamUnavailable
from appgateway.exchange import Exchange
from appgateway.flow import Pending, settle
from appgateway.http1 import replayable
from appgateway.logs import Call
from appgateway.model import Headers
from appgateway.routing import Destination
from appgateway.upstream import OutboundRequest, encode, encode_head
from appgateway.upstream_connection import DONE, WAITING, UpstreamConnection

if TYPE_CHECKING:
    from appgateway.forward import Forwarder, PreparedAPI

log: Final = logging.getLogger("appgateway.forward")


# Where a request is (plain int constants: see upstream_connection.py).
PREPARING: Final = 0  # credentials, body, connection: possibly awaited in the prelude
SENDING: Final = 1  # the request is on a connection; no response head yet
RELAYING: Final = 2  # the head is relayed; the body flows
ENDED: Final = 3
STAGES: Final = ("preparing", "sending", "relaying", "ended")

LEGAL_MOVES: Final = transitions.pack(
    (
        (SENDING, ENDED),  # from PREPARING
        (PREPARING, RELAYING, ENDED),  # from SENDING (back: a resend, a retry)
        (ENDED,),  # from RELAYING
        (),  # from ENDED
    )
)
"""Every move a request may make, by the stage it is in."""


class StreamedBody:
    """A request body too large (or too long unknown) to buffer for the retry."""

    __slots__ = ("length", "prefix")

    def __init__(self, prefix: bytes, length: int | None) -> None:
        self.prefix = prefix
        self.length = length  # None: unknown, sent chunked


class Relay:
    __slots__ = (
        "fwd",
        "ex",
        "call",
        "api",
        "dest",
        "query",
        "headers",
        "authenticate",
        "own_fields",
        "applied",
        "request",
        "stream",
        "conn",
        "fresh",
        "stage",
        "task",
        "sent_at",
    )

    def __init__(
        self,
        fwd: Forwarder,
        ex: Exchange,
        call: Call,
        api: PreparedAPI,
        dest: Destination,
        query: str,
        headers: Headers,
        authenticate: bool,
    ) -> None:
        self.fwd = fwd
        self.ex = ex
        self.call = call
        self.api = api
        self.dest = dest
        self.query = query
        self.headers = headers  # the caller's fields that travel (Access-Token applied)
        self.authenticate = authenticate
        self.own_fields = 0  # the request's fields before the parameters and Host
        self.applied: Applied = None
        self.request: OutboundRequest | None = None
        self.stream: StreamedBody | None = None
        self.conn: UpstreamConnection | None = None
        self.fresh = False  # `conn` was made for this request (not taken from the pool)
        self.stage = PREPARING
        self.task: asyncio.Task[None] | None = None
        self.sent_at = 0.0

    def _to(self, stage: int) -> None:
        assert transitions.allowed(LEGAL_MOVES, self.stage, stage), (self.stage, stage)
        self.stage = stage

    # -- preparing -------------------------------------------------------------------------
    def start(self, proxy_authorization: bytes | None = None) -> None:
        """Send now if nothing must be waited for; else prepare in the prelude.

        With `--caller-auth`, the caller's right to this Application comes first: nothing is
        fetched or sent for a caller who may not use it.
        """
        ex = self.ex
        ex.on_lost = self.caller_lost
        try:
            caller_auth = self.fwd.caller_auth
            if caller_auth is not None:
                who = caller_auth.authorize(proxy_authorization, self.api.api.ref.app, ex.conn)
                if isinstance(who, Pending):
                    self._prelude(self._prepare(None, who))
                    return
                self.call.caller = who
            credentials = self.api.strategy.apply(self.headers, authenticate=self.authenticate)
            if isinstance(credentials, Pending) or ex.has_body:
                self._prelude(self._prepare(credentials))
                return
            self.applied = credentials
            fwd = self.fwd
            self.request = fwd.build(self, None)
            now = fwd.loop_time()
            conn = fwd.upstream.idle(self.api.pool, now)
            if conn is None:
                self._prelude(self._connect_and_send())
                return
            self._send(conn, False, now)
        except GatewayError as error:
            self._fail(error)
        except Exception:
            log.error("internal error while preparing a request", exc_info=log.isEnabledFor(10))
            self._fail(GatewayError("internal error"))

    def _prelude(self, work: Coroutine[Any, Any, None]) -> None:
        self.task = asyncio.get_running_loop().create_task(self._guard(work))

    async def _guard(self, work: Coroutine[Any, Any, None]) -> None:
        """The one place a prelude's failure turns into the caller's answer."""
        try:
            await work
        except GatewayError as error:
            self._fail(error)
        except asyncio.CancelledError:
            pass  # the relay ended meanwhile (caller gone, or the answer came first)
        except Exception:
            log.error("internal error while preparing a request", exc_info=log.isEnabledFor(10))
            self._fail(GatewayError("internal error"))

    async def _prepare(
        self, credentials: Applied | Pending[Applied], who: Pending[str] | None = None
    ) -> None:
        if who is not None:  # the caller's review first; then the credentials, from the start
            self.call.caller = await who.work
            credentials = self.api.strategy.apply(self.headers, authenticate=self.authenticate)
        self.applied = await settle(credentials)
        body = await self._read_body() if self.ex.has_body else None
        self.request = self.fwd.build(self, body)
        await self._connect_and_send()

    async def _read_body(self) -> bytes | None:
        """Buffer bodies up to --retry-body-limit (retryable); stream the rest (§8)."""
        ex = self.ex
        limit = decide.buffer_limit(ex.content_length, self.fwd.retry_limit)
        if limit is None:
            self.stream = StreamedBody(b"", ex.content_length)
            return None
        data, complete = await ex.read_up_to(limit)
        if complete:
            return data
        self.stream = StreamedBody(data, ex.content_length)
        return None

    async def _connect_and_send(self, fresh: bool = False) -> None:
        fwd = self.fwd
        pool = self.api.pool
        conn = None if fresh else fwd.upstream.idle(pool)
        if conn is None:
            request = self.request
            assert request is not None
            try:
                async with asyncio.timeout(fwd.header_timeout):
                    conn = await fwd.upstream.connect(request.target, pool)
            except TimeoutError:
                raise decide.head_timeout(fwd.header_timeout) from None
            if self.stage == ENDED:  # the caller left while we connected
                conn.abort()
                return
            fresh = True
        self._send(conn, fresh, fwd.loop_time())
        if self.stream is not None:
            await self._upload(conn, self.stream)

    async def _again(self, *, fresh: bool, reapply: bool) -> None:
        """Send once more: on a fresh connection (the pooled one was stale), or with fresh
        credentials (a 401/403)."""
        if reapply:
            request = self.request
            assert request is not None
            headers = request.headers[: self.own_fields]
            self.applied = await settle(self.api.strategy.apply(headers))
            self.own_fields = len(headers)
            request.headers = self.fwd.finish_headers(self.api, headers)
        await self._connect_and_send(fresh)

    # -- sending ---------------------------------------------------------------------------
    def _send(self, conn: UpstreamConnection, fresh: bool, now: float) -> None:
        """The hand-over: from here on the target's answer arrives through `pump`. `now`:
        the loop's time (one read serves the pool and the head timeout)."""
        request = self.request
        assert request is not None
        self._to(SENDING)
        self.conn = conn
        self.fresh = fresh
        fwd = self.fwd
        self.sent_at = fwd.clock()
        conn.begin(request.method, self)
        stream = self.stream
        if stream is None:
            conn.arm(now + fwd.header_timeout)
            conn.write(encode(request, conn))
        else:
            # The body streams under the idle timeout; the head timeout starts after it.
            conn.body_sent = False
            conn.write(encode_head(request, conn, stream.length))

    async def _upload(self, conn: UpstreamConnection, stream: StreamedBody) -> None:
        """Pump the caller's body to the target. The target may answer first (a 401, a
        413): the relay then relays that while this goes on, and an upload failure after
        the head no longer matters (the connection is not reused)."""
        fwd = self.fwd
        ex = self.ex
        chunked = stream.length is None
        data = stream.prefix
        sent = 0
        try:
            while True:
                if data:
                    sent += len(data)
                    conn.write(http1.chunk(data) if chunked else data)
                    await conn.drain(fwd.idle_timeout)
                data = await ex.read()
                if not data:
                    break
            if chunked:
                conn.write(http1.LAST_CHUNK)
            elif sent != stream.length:
                raise UpstreamUnavailable("request body shorter than its Content-Length")
        except GatewayError:
            if self.stage != SENDING:
                return
            raise
        conn.body_sent = True
        if self.stage == SENDING and conn.phase == WAITING:
            conn.arm(fwd.loop_time() + fwd.header_timeout)

    # -- the answer, from the connection's callbacks -------------------------------------
    def pump(self, conn: UpstreamConnection) -> None:
        """Level-triggered: act on whatever the connection has now. Never raises into the
        event loop: an unexpected error ends the exchange here."""
        try:
            if self.stage == SENDING and not self._head(conn):
                return
            if self.stage == RELAYING:
                self._relay(conn)
        except GatewayError as error:
            self._fail(error)
        except Exception:
            log.error("internal error while relaying a response", exc_info=log.isEnabledFor(10))
            self._fail(GatewayError("internal error"))

    def _head(self, conn: UpstreamConnection) -> bool:
        """Act on the response head once it is there; False when there is nothing to
        relay (yet, or any more)."""
        error = conn.error
        if error is not None:
            request = self.request
            assert request is not None
            if decide.resend_on_fresh_connection(
                error,
                got_bytes=conn.got_bytes,
                fresh=self.fresh,
                replayable=self.stream is None and replayable(request.method, request.headers),
            ):
                conn.abort()
                self._back(fresh=True, reapply=False)
                return False
            raise error
        if conn.phase == WAITING:
            if conn.timed_out:
                raise decide.head_timeout(self.fwd.header_timeout)
            return False
        fwd = self.fwd
        call = self.call
        seconds = fwd.clock() - self.sent_at
        call.upstream_s = seconds
        self.api.upstream_hist.observe(seconds)
        status = conn.status
        if decide.retry_with_fresh_credentials(
            status, retried=call.retried, replayable_body=self.stream is None
        ):
            self.api.strategy.invalidate(self.applied)
            conn.abort()
            call.retried = True
            ref = self.api.api.ref
            fwd.metrics.retry(ref.app, ref.service)
            self._back(fresh=False, reapply=True)
            return False
        if status in decide.RETRY_STATUSES:
            self.api.strategy.invalidate(self.applied)  # behaviour.md §8 step 1, always
        call.upstream_status = status
        request = self.request
        assert request is not None
        fwd.start_response(self.ex, self.dest, conn, request)
        self._to(RELAYING)
        return True

    def _back(self, *, fresh: bool, reapply: bool) -> None:
        self.conn = None
        self._to(PREPARING)
        self._prelude(self._again(fresh=fresh, reapply=reapply))

    def _relay(self, conn: UpstreamConnection) -> None:
        ex = self.ex
        data = conn.take()
        if data:
            ex.send(data)
        if conn.phase == DONE:
            ex.end()
            self._end()
            return
        error = conn.error
        if error is None and conn.timed_out:
            error = decide.on_idle(ex.conn.writing_paused)
        if error is not None:
            raise error
        if not data:
            ex.flush_head()
        fwd = self.fwd
        if ex.conn.writing_paused:
            # Back-pressure: read from the target again once the caller has taken this.
            conn.hold(True)
            ex.on_writable = self.writable
        conn.arm(fwd.loop_time() + fwd.idle_timeout)

    def writable(self) -> None:
        conn = self.conn
        if conn is not None and self.stage == RELAYING:
            conn.hold(False)
            conn.arm(self.fwd.loop_time() + self.fwd.idle_timeout)

    # -- the end ---------------------------------------------------------------------------
    def caller_lost(self) -> None:
        self.call.error = CallerGone("caller disconnected")
        self._end()

    def _fail(self, error: GatewayError) -> None:
        if self.stage == ENDED:
            return
        self.call.error = error
        ex = self.ex
        if isinstance(error, UpstreamUnavailable | UpstreamTimeout):
            ref = self.api.api.ref
            self.fwd.metrics.upstream_error(ref.app, ref.service, error.kind)
        if isinstance(error, CallerGone):
            ex.abort()
        elif not ex.started:
            ex.send_error(error)
        else:
            ex.abort()
        self._end()

    def _end(self) -> None:
        if self.stage == ENDED:
            return
        self._to(ENDED)
        conn = self.conn
        if conn is not None:
            conn.release()  # pooled only when the response was complete, else closed
        task = self.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self.fwd.record(self.ex, self.call, self.api, self.dest)
        self.ex.done()
