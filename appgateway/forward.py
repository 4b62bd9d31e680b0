"""The request pipeline of behaviour.md §1, with the retry-once loop kept in plain sight.

The server offers every request to `Forwarder.fast_*` first. When nothing has to be waited
for before sending (no request body, credentials cached, an idle pooled connection), the
request is sent at once and the answer relayed from the upstream connection's callbacks
(`_Flight`): no task and no future per request, which is most of the gateway's cost on a
small request. Anything else, and whatever turns unusual midway (401/403, a stale connection,
a caller that reads slowly), continues in the task-based pipeline, `_pipeline` and the
coroutines after it. Both paths share the steps that build the request and the response head,
and `_failed`/`_record` for the outcome. All socket work is behind `Exchange` (caller side)
and `Upstream` (target side).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from appgateway.auth import Applied, AuthDeps, AuthStrategy, connection_cert, make_strategy, retain
from appgateway.config import Settings
from appgateway.errors import (
    BadRequest,
    GatewayError,
    LoopDetected,
    NotReady,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from appgateway.headers import (
    add_parameter_headers,
    caller_fields,
    get_header,
    response_headers,
    set_header,
    take_access_token,
)
from appgateway.http1 import replayable
from appgateway.logs import AccessLog
from appgateway.metrics import Histogram, Metrics, RequestSeries
from appgateway.model import API, Headers
from appgateway.registry import Registry
from appgateway.registry.snapshot import Snapshot
from appgateway.rewrite import rewrite_location, rewrite_status, should_rewrite_location
from appgateway.routing import (
    Route,
    host_lookup,
    lookup_address,
    path_address,
    route_proxy_after,
    split_absolute_form,
)
from appgateway.server import ClientGone, Exchange
from appgateway.tls import TlsContexts
from appgateway.upstream import (
    OutboundRequest,
    Pool,
    PoolKey,
    StreamedBody,
    Upstream,
    UpstreamConnection,
    UpstreamResponse,
    pool_key,
)
from appgateway.urls import (
    canonical_target,
    encoded_params,
    escapes_base,
    merge_query,
    pre_normalize,
    wire_path,
)

log: Final = logging.getLogger("appgateway.forward")

AUTHORIZATION: Final = b"Authorization"
LOCATION: Final = b"location"
MAX_REMEMBERED_HOSTS: Final = 1024


@dataclass(slots=True)
class Resolved:
    """What one API needs per request, built once per registry snapshot: also its metric
    series and access-line parts, so a request looks up nothing by its labels."""

    api: API
    strategy: AuthStrategy
    pool: Pool
    host_header: tuple[bytes, bytes]
    upstream_hist: Histogram
    canonical_path: str  # urls.canonical_target of the target's path
    query_params: tuple[tuple[str, str], ...]  # urls.encoded_params of the API's parameters
    # The metric series and access-line part per kind of route (`_kind`), made on first use.
    # Fields, not lists indexed by kind: with 10,000 APIs, every object a request touches is
    # a likely cache miss, and a list is two more.
    host_series: RequestSeries | None = None
    host_static: str | None = None
    path_series: RequestSeries | None = None
    path_static: str | None = None
    compass_series: RequestSeries | None = None
    compass_static: str | None = None

    def keep_labels(self, kind: int, series: RequestSeries, static: str) -> None:
        if kind == _HOST:
            self.host_series = series
            self.host_static = static
        elif kind == _PATH:
            self.path_series = series
            self.path_static = static
        else:
            self.compass_series = series
            self.compass_static = static


_HOST: Final = 0
_PATH: Final = 1
_COMPASS: Final = 2


def _kind(listener: str, mode: str) -> int:
    """Proxy listener by host, by path, or the Compass listener."""
    if listener == "compass":
        return _COMPASS
    return _HOST if mode == "host" else _PATH


class _Call:
    """What one request gathers for its access line and metrics, on either path."""

    __slots__ = (
        "listener",
        "start",
        "target",
        "path",
        "route",
        "upstream_status",
        "upstream_s",
        "retried",
        "error",
        "id_generated",
        "fields",
        "host",
        "resolved",
        "looped",
    )

    def __init__(self, listener: str, start: float, target: str) -> None:
        self.listener = listener
        self.start = start
        self.target = target  # as received, decoded once
        self.path = target.partition("?")[0]  # never the query, not even in logs
        self.route: Route | None = None
        self.upstream_status: int | None = None
        self.upstream_s: float | None = None
        self.retried = False
        self.error: GatewayError | None = None
        self.id_generated = False
        self.fields: Headers | None = None  # the caller's fields that may travel, once
        self.host: bytes | None = None
        self.resolved: Resolved | None = None
        self.looped = False


class Forwarder:
    def __init__(
        self,
        *,
        registry: Registry,
        upstream: Upstream,
        tls: TlsContexts,
        settings: Settings,
        access_log: AccessLog,
        metrics: Metrics,
        auth: AuthDeps,
        clock: Callable[[], float],
    ) -> None:
        self._auth = auth
        self._registry = registry
        self._upstream = upstream
        self._tls = tls
        self._settings = settings
        self._access = access_log
        self._metrics = metrics
        self._clock = clock
        self._snapshot: object | None = None
        self._resolved: dict[int, Resolved] = {}
        # Host routing per Host value, for the current snapshot (callers use a few names).
        self._hosts: dict[str | None, API | GatewayError | None] = {}
        # Path routing per identifier part (`app/service`, `app/service/entry`), likewise.
        self._addresses: dict[str, Resolved] = {}
        self._header_timeout = settings.proxy_timeout
        self._idle_timeout = settings.idle_timeout
        self._retry_limit = settings.retry_body_limit
        self._request_prefix = os.urandom(6).hex().encode()
        # This process's pseudonym in Via (RFC 9110 §7.6.3), by which it knows a request
        # that comes back to it.
        self._hop = b"appgateway-" + self._request_prefix
        self._via = (b"Via", b"1.1 " + self._hop)
        self._request_count = 0
        self._inflight = {name: metrics.inflight(name) for name in ("proxy", "compass")}

    async def handle_proxy(self, ex: Exchange) -> None:
        await self._handle(ex, "proxy")

    async def handle_compass(self, ex: Exchange) -> None:
        await self._handle(ex, "compass")

    def fast_proxy(self, ex: Exchange) -> bool:
        return self._fast(ex, "proxy")

    def fast_compass(self, ex: Exchange) -> bool:
        return self._fast(ex, "compass")

    # -- per snapshot -----------------------------------------------------------------
    def _resolve(self, api: API) -> Resolved:
        resolved = self._resolved.get(id(api))
        if resolved is None:
            strategy = make_strategy(api, self._auth)
            cert = strategy.client_cert
            verify = not api.skip_verify
            target = api.target
            ctx = self._tls.get(verify, cert) if target.scheme == "https" else None
            fingerprint = cert.fingerprint if cert is not None else ""
            pool = self._upstream.pool(target, verify, fingerprint, ctx)
            host = (b"Host", target.authority.encode())
            upstream_hist = self._metrics.upstream_series(api.ref.app, api.ref.service)
            canonical = canonical_target(target.path)
            params = encoded_params(api.params.query)
            resolved = Resolved(api, strategy, pool, host, upstream_hist, canonical, params)
            self._resolved[id(api)] = resolved
        return resolved

    def on_registry_change(self, snapshot: Snapshot) -> None:
        """Re-resolve lazily, and close pools that no API of the new snapshot uses."""
        self._use(snapshot)
        keys: set[PoolKey] = set()
        apis = [route.api for route in snapshot.routes if route.api is not None]
        for api in apis:
            cert = connection_cert(api.credentials)
            fingerprint = cert.fingerprint if cert is not None else ""
            keys.add(pool_key(api.target, not api.skip_verify, fingerprint))
        self._upstream.retain(keys | retain(self._auth, apis))

    def _use(self, snapshot: object) -> None:
        self._snapshot = snapshot
        self._resolved = {}
        self._hosts = {}
        self._addresses = {}

    # -- steps shared by both paths ---------------------------------------------------
    def _begin(self, ex: Exchange, listener: str) -> _Call:
        call = _Call(listener, self._clock(), ex.target.decode("latin-1"))
        call.fields, call.host, ex.request_id, call.looped = caller_fields(ex.headers, self._hop)
        self._inflight[listener].value += 1
        return call

    def _route(self, ex: Exchange, call: _Call) -> tuple[Resolved, Route, str]:
        """Raises GatewayError (not ready, no such API, a bad request target)."""
        if call.looped:
            raise LoopDetected("request loop: this gateway already forwarded the request")
        if not self._registry.ready:
            raise NotReady("registry not loaded yet")
        snapshot = self._registry.snapshot()
        if snapshot is not self._snapshot:
            self._use(snapshot)
        target = call.target
        host: str | None = None
        if not target.startswith("/"):
            authority, target = split_absolute_form(target)
            if authority is not None:
                host = authority
        path, _, query = target.partition("?")
        call.path = path
        if call.listener == "compass":
            resolved, route = self._path_route(snapshot, path, 3)
        else:
            if host is None and call.host is not None:
                host = call.host.decode("latin-1")
            hosts = self._hosts
            try:
                found = hosts[host]
            except KeyError:
                found = host_lookup(snapshot, host)
                if len(hosts) < MAX_REMEMBERED_HOSTS:
                    hosts[host] = found
            if found is None:
                resolved, route = self._path_route(snapshot, path, 2)
            else:
                route = route_proxy_after(snapshot, found, path)
                resolved = self._resolve(route.api)
        call.route = route
        call.resolved = resolved
        return resolved, route, query

    def _path_route(self, snapshot: Snapshot, raw_path: str, n: int) -> tuple[Resolved, Route]:
        """Path routing with the result remembered by the path's identifier part.

        A request then makes one dict lookup by a string where it made two (the snapshot's
        route index, then this API's state by its id). With 10,000 Applications both miss the
        CPU caches, and the route index alone cost 8 misses to main memory per request.
        Only found APIs are kept, so the dict never outgrows the snapshot's routes.
        """
        address, rest = path_address(pre_normalize(raw_path), n)
        resolved = self._addresses.get(address)
        if resolved is None:
            resolved = self._resolve(lookup_address(snapshot, address))
            self._addresses[address] = resolved
        return resolved, Route(resolved.api, rest, "path", "/" + address)

    @staticmethod
    def _caller_headers(ex: Exchange, call: _Call) -> tuple[Headers, bool]:
        """The caller's fields that travel, and whether the gateway authenticates (no
        Access-Token override). A second call (the fast path gave up) starts afresh."""
        headers = call.fields
        call.fields = None
        if headers is None:
            headers = caller_fields(ex.headers)[0]
        token = take_access_token(headers)
        if token is not None:
            set_header(headers, AUTHORIZATION, token)
        return headers, token is None

    def _request(
        self,
        ex: Exchange,
        call: _Call,
        route: Route,
        resolved: Resolved,
        query: str,
        headers: Headers,
        body: bytes | None,
        stream: StreamedBody | None,
    ) -> tuple[OutboundRequest, Headers]:
        """The outbound request, and its fields before the parameters (for the retry)."""
        api = route.api
        target = api.target
        if ex.request_id is None:
            # Correlate the access line with the target's logs: one id per request, made
            # from a per-process random prefix and a counter (cheaper than a UUID).
            self._request_count += 1
            ex.request_id = b"%s-%d" % (self._request_prefix, self._request_count)
            call.id_generated = True
        if call.id_generated:
            headers.append((b"X-Request-Id", ex.request_id))
        headers.append(self._via)
        first = list(headers)
        add_parameter_headers(headers, api.params.headers)
        headers.append(resolved.host_header)
        if api.confine_path and escapes_base(route.rest):
            raise BadRequest("request path leaves the API's base path")
        path = wire_path(target.path, route.rest, api.encode_url, resolved.canonical_path)
        q = merge_query(target.query, query, api.params.query, resolved.query_params)
        path_qs = path + "?" + q if q else path
        request = OutboundRequest(
            ex.method, target, path_qs.encode("latin-1"), headers, body, stream
        )
        return request, first

    def _start_response(
        self, ex: Exchange, route: Route, response: UpstreamResponse, request: OutboundRequest
    ) -> None:
        original = response.status
        headers = response_headers(response.headers)
        status = rewrite_status(original, headers)
        if should_rewrite_location(original):
            location = get_header(headers, LOCATION)
            if location is not None:
                text = location.decode("latin-1")
                sent_url = request.target.origin + request.path.decode("latin-1")
                new = rewrite_location(text, sent_url, route.api.target, route.base)
                if new != text:
                    set_header(headers, b"Location", new.encode("latin-1"))
        reason = response.reason if status == original else b""
        codings = response.transfer_codings
        if codings is not None and not ex.http11:
            raise UpstreamUnavailable(
                "response transfer coding cannot be relayed to an HTTP/1.0 caller", "protocol"
            )
        ex.start_response(status, reason, headers, response.content_length, codings)

    @staticmethod
    def _upstream_done(call: _Call, resolved: Resolved, seconds: float) -> None:
        call.upstream_s = seconds
        resolved.upstream_hist.observe(seconds)

    def _failed(self, ex: Exchange, call: _Call, error: GatewayError) -> None:
        call.error = error
        route = call.route
        if isinstance(error, UpstreamUnavailable | UpstreamTimeout) and route is not None:
            ref = route.api.ref
            self._metrics.upstream_error(ref.app, ref.service, error.kind)
        if not ex.started:
            ex.send_error(error)
        else:
            ex.abort()

    # -- the fast path ----------------------------------------------------------------
    def _fast(self, ex: Exchange, listener: str) -> bool:
        if ex.has_body:
            return False
        call = self._begin(ex, listener)
        try:
            resolved, route, query = self._route(ex, call)
            headers, authenticate = self._caller_headers(ex, call)
            ok, applied = resolved.strategy.try_apply(headers, authenticate=authenticate)
            if not ok:
                ex.conn.run(ex, self._guarded(ex, call, self._pipeline(ex, call)))
                return True
            request, first = self._request(ex, call, route, resolved, query, headers, None, None)
        except Exception as exc:
            if not isinstance(exc, GatewayError):
                log.error("internal error while preparing a request", exc_info=log.isEnabledFor(10))
                exc = GatewayError("internal error")
            self._failed(ex, call, exc)
            self._record(ex, call)
            ex.conn.done(ex)
            return True
        flight = _Flight(self, ex, call, route, resolved, request, first, applied)
        conn = self._upstream.try_send(
            request, resolved.pool, header_timeout=self._header_timeout, sink=flight
        )
        if conn is None:
            ex.conn.run(ex, self._guarded(ex, call, flight.resend(fresh=False)))
            return True
        flight.conn = conn
        ex.on_lost = flight.caller_lost
        return True

    # -- the task path ----------------------------------------------------------------
    async def _handle(self, ex: Exchange, listener: str) -> None:
        call = self._begin(ex, listener)
        await self._guarded(ex, call, self._pipeline(ex, call))

    async def _guarded(self, ex: Exchange, call: _Call, work: Awaitable[None]) -> None:
        try:
            await work
        except GatewayError as exc:
            self._failed(ex, call, exc)
        except ClientGone as gone:
            call.error = _CallerGone(str(gone))
            ex.abort()
        except asyncio.CancelledError:
            call.error = _CallerGone("caller disconnected")
            raise
        finally:
            self._record(ex, call)

    async def _pipeline(self, ex: Exchange, call: _Call) -> None:
        resolved, route, query = self._route(ex, call)
        headers, authenticate = self._caller_headers(ex, call)
        applied: Applied = await resolved.strategy.apply(headers, authenticate=authenticate)
        body, stream = await self._read_body(ex)
        request, first = self._request(ex, call, route, resolved, query, headers, body, stream)
        response = await self._send(call, resolved, request)
        await self._answer(ex, call, route, resolved, request, first, applied, response)

    async def _send(
        self, call: _Call, resolved: Resolved, request: OutboundRequest, fresh: bool = False
    ) -> UpstreamResponse:
        sent = self._clock()
        response = await self._upstream.send(
            request,
            resolved.pool,
            header_timeout=self._header_timeout,
            idle_timeout=self._idle_timeout,
            fresh=fresh,
        )
        self._upstream_done(call, resolved, self._clock() - sent)
        return response

    async def _answer(
        self,
        ex: Exchange,
        call: _Call,
        route: Route,
        resolved: Resolved,
        request: OutboundRequest,
        first: Headers,
        applied: Applied,
        response: UpstreamResponse,
    ) -> None:
        """Retry once on 401/403 with fresh credentials (behaviour.md §8), then relay."""
        api = route.api
        if response.status in (401, 403):
            strategy = resolved.strategy
            await strategy.invalidate(applied)
            if request.stream is None:
                response.abort()
                headers = list(first)
                await strategy.apply(headers)
                add_parameter_headers(headers, api.params.headers)
                headers.append(resolved.host_header)
                request.headers = headers
                call.retried = True
                self._metrics.retry(api.ref.app, api.ref.service)
                response = await self._send(call, resolved, request)
        call.upstream_status = response.status
        try:
            self._start_response(ex, route, response, request)
            if not response.body_buffered:
                ex.flush_head()
        except BaseException:
            response.abort()
            raise
        await self._relay_body(ex, response)

    async def _read_body(self, ex: Exchange) -> tuple[bytes | None, StreamedBody | None]:
        """Buffer bodies up to --retry-body-limit (retryable); stream the rest (behaviour.md §8)."""
        if not ex.has_body:
            return None, None
        limit = self._retry_limit
        length = ex.content_length
        if length is not None and length > limit:
            return None, StreamedBody(b"", ex, length)
        data, complete = await ex.read_up_to(limit if length is None else length)
        if complete:
            return data, None
        return None, StreamedBody(data, ex, length)

    async def _relay_body(self, ex: Exchange, response: UpstreamResponse) -> None:
        try:
            idle = self._idle_timeout
            conn = ex.conn
            while True:
                data = await response.read(idle)
                if not data:
                    break
                ex.send(data)
                if conn.writing_paused:
                    # Read no more from the target while the caller is not taking what it
                    # has: a stalled download then holds a bounded amount of memory.
                    response.hold(True)
                    await conn.drain()
                    response.hold(False)
            ex.end()
        except BaseException:
            response.abort()
            raise
        response.release()

    # -- observation ------------------------------------------------------------------
    def _record(self, ex: Exchange, call: _Call) -> None:
        self._inflight[call.listener].value -= 1
        duration = self._clock() - call.start
        error = call.error
        if ex.started:
            status = ex.status_sent
        else:
            status = error.status if error is not None else 0
        listener = call.listener
        route = call.route
        resolved = call.resolved
        access = self._access
        if route is not None and resolved is not None:
            kind = _kind(listener, route.mode)
            if kind == _PATH:
                series = resolved.path_series
                static = resolved.path_static
            elif kind == _HOST:
                series = resolved.host_series
                static = resolved.host_static
            else:
                series = resolved.compass_series
                static = resolved.compass_static
            if series is None or static is None:
                ref = route.api.ref
                series = self._metrics.series(listener, ref.app, ref.service)
                static = access.static_part(listener, route.mode, ref.app, ref.service, ref.entry)
                resolved.keep_labels(kind, series, static)
        else:
            app = service = entry = ""
            ref_holder = getattr(error, "ref", None)
            if ref_holder is not None:
                app, service, entry = ref_holder.app, ref_holder.service, ref_holder.entry
            series = self._metrics.series(listener, app, service)
            static = access.static_part(listener, "path", app, service, entry)
        series.observe_request(ex.method, status, duration)
        request_id = ex.request_id
        access.request(
            static,
            ex.method.decode("latin-1"),
            call.path,
            status,
            call.upstream_status,
            call.retried,
            duration,
            call.upstream_s,
            ex.bytes_in,
            ex.bytes_out,
            error.message if error is not None else None,
            error.classify() if error is not None else None,
            request_id.decode("latin-1") if request_id else None,
        )


class _Flight:
    """One request on the fast path: the upstream connection's `Sink` until it ends.

    `pump` runs from the connection's callbacks and is level-triggered: it looks at what the
    connection has (a head, body bytes, the end, an error) and moves the response on as far
    as it can. It must never raise into the event loop, so it ends the exchange itself on
    an unexpected error.
    """

    __slots__ = (
        "fwd",
        "ex",
        "call",
        "route",
        "resolved",
        "request",
        "first",
        "applied",
        "sent",
        "conn",
        "head_done",
    )

    def __init__(
        self,
        fwd: Forwarder,
        ex: Exchange,
        call: _Call,
        route: Route,
        resolved: Resolved,
        request: OutboundRequest,
        first: Headers,
        applied: Applied,
    ) -> None:
        self.fwd = fwd
        self.ex = ex
        self.call = call
        self.route = route
        self.resolved = resolved
        self.request = request
        self.first = first
        self.applied = applied
        self.sent = fwd._clock()
        self.conn: UpstreamConnection | None = None
        self.head_done = False

    def pump(self, conn: UpstreamConnection) -> None:
        try:
            self.conn = conn
            if not self.head_done and not self._head(conn):
                return
            ex = self.ex
            data = conn.take()
            if data:
                ex.send(data)
            if conn.complete:
                ex.end()
                conn.release()
                self._end()
                return
            error = conn.body_error
            if error is None and conn.timed_out:
                if ex.conn.writing_paused:
                    conn.abort()
                    self.call.error = _CallerGone("response body idle timeout (caller not reading)")
                    ex.abort()
                    self._end()
                    return
                error = UpstreamTimeout("response body idle timeout")
            if error is not None:
                conn.abort()
                self._fail(error)
                return
            if not data:
                ex.flush_head()
            if ex.conn.writing_paused:
                # Back-pressure: read from the target again once the caller has taken this.
                conn.hold(True)
                ex.on_writable = self.writable
            conn.arm_head_timeout(self.fwd._clock() + self.fwd._idle_timeout)
        except GatewayError as error:
            conn.abort()
            self._fail(error)
        except Exception:
            log.error("internal error while relaying a response", exc_info=log.isEnabledFor(10))
            conn.abort()
            self._fail(GatewayError("internal error"))

    def _head(self, conn: UpstreamConnection) -> bool:
        """Act on the response head once it is there; False when there is nothing to relay
        (yet, or any more: the exchange moved on)."""
        error = conn.head_error
        fwd = self.fwd
        if error is not None:
            conn.abort()
            if isinstance(error, TimeoutError):
                error = UpstreamTimeout(f"timeout after {fwd._header_timeout:g}s")
            elif not isinstance(error, GatewayError):
                error = UpstreamUnavailable("connection failed", "protocol")
            elif (
                isinstance(error, UpstreamUnavailable)
                and not conn.got_bytes
                and replayable(self.request.method, self.request.headers)
            ):
                # A keep-alive connection the target had closed: not its answer (see
                # Upstream.send); the same request goes again on a fresh connection.
                self._handoff(self.resend(fresh=True))
                return False
            self._fail(error)
            return False
        if not conn.head_seen:
            return False
        self.head_done = True
        conn.disarm_head_timeout()
        call = self.call
        fwd._upstream_done(call, self.resolved, fwd._clock() - self.sent)
        response = conn
        if response.status in (401, 403):
            conn.detach()
            self._handoff(self._answer(response))
            return False
        call.upstream_status = response.status
        fwd._start_response(self.ex, self.route, response, self.request)
        return True

    async def resend(self, *, fresh: bool) -> None:
        """The request again through the task path, from the send on."""
        fwd = self.fwd
        response = await fwd._send(self.call, self.resolved, self.request, fresh=fresh)
        await self._answer(response)

    def _answer(self, response: UpstreamResponse) -> Awaitable[None]:
        return self.fwd._answer(
            self.ex,
            self.call,
            self.route,
            self.resolved,
            self.request,
            self.first,
            self.applied,
            response,
        )

    def _handoff(self, work: Awaitable[None]) -> None:
        self.ex.conn.run(self.ex, self.fwd._guarded(self.ex, self.call, work))

    def _fail(self, error: GatewayError) -> None:
        self.fwd._failed(self.ex, self.call, error)
        self._end()

    def _end(self) -> None:
        self.fwd._record(self.ex, self.call)
        self.ex.conn.done(self.ex)

    def writable(self) -> None:
        conn = self.conn
        if conn is not None and conn.sink is self:
            conn.hold(False)
            conn.arm_head_timeout(self.fwd._clock() + self.fwd._idle_timeout)

    def caller_lost(self) -> None:
        if self.conn is not None:
            self.conn.abort()
        self.call.error = _CallerGone("caller disconnected")
        self._end()


class _CallerGone(GatewayError):
    """Not sent to anyone: the caller left. Logged with the conventional 499."""

    status = 499
    error_class = "caller_gone"
