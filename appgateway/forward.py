"""The request pipeline of behaviour.md §1, with the retry-once loop kept in plain sight.

`Forwarder.handle` is called once per request by the server; it routes, builds the outbound
request, sends it, relays the answer and then writes the access-log line and metrics. All
socket work is behind `Exchange` (caller side) and `Upstream` (target side).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from appgateway.auth import Applied, AuthDeps, AuthStrategy, connection_cert, make_strategy, retain
from appgateway.config import Settings
from appgateway.errors import GatewayError, NotReady, UpstreamTimeout, UpstreamUnavailable
from appgateway.headers import (
    add_parameter_headers,
    get_header,
    outbound_headers,
    response_headers,
    set_header,
    take_access_token,
)
from appgateway.logs import AccessLog
from appgateway.metrics import Metrics
from appgateway.model import API
from appgateway.registry import Registry
from appgateway.registry.snapshot import Snapshot
from appgateway.rewrite import rewrite_location, rewrite_status, should_rewrite_location
from appgateway.routing import Route, route_compass, route_proxy, split_absolute_form
from appgateway.server import ClientGone, Exchange
from appgateway.tls import TlsContexts
from appgateway.upstream import (
    OutboundRequest,
    Pool,
    PoolKey,
    StreamedBody,
    Upstream,
    UpstreamResponse,
    pool_key,
)
from appgateway.urls import merge_query, wire_path

log = logging.getLogger("appgateway.forward")

AUTHORIZATION = b"Authorization"
HOST = b"host"
LOCATION = b"location"
REQUEST_ID = b"x-request-id"


@dataclass(slots=True)
class Resolved:
    """What one API needs per request, built once per registry snapshot."""

    api: API
    strategy: AuthStrategy
    pool: Pool
    host_header: tuple[bytes, bytes]


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
        self._header_timeout = settings.proxy_timeout
        self._idle_timeout = settings.idle_timeout
        self._retry_limit = settings.retry_body_limit
        self._request_prefix = os.urandom(6).hex().encode()
        self._request_count = 0

    async def handle_proxy(self, ex: Exchange) -> None:
        await self._handle(ex, "proxy")

    async def handle_compass(self, ex: Exchange) -> None:
        await self._handle(ex, "compass")

    # -- per snapshot -----------------------------------------------------------------
    def _resolve(self, api: API, snapshot: object) -> Resolved:
        if snapshot is not self._snapshot:
            self._snapshot = snapshot
            self._resolved = {}
        resolved = self._resolved.get(id(api))
        if resolved is None:
            strategy = make_strategy(api, self._auth)
            cert = strategy.client_cert
            verify = not api.skip_verify
            target = api.target
            ctx = self._tls.get(verify, cert) if target.scheme == "https" else None
            fingerprint = cert.fingerprint if cert is not None else ""
            pool = self._upstream.pool(target, verify, fingerprint, ctx)
            resolved = Resolved(api, strategy, pool, (b"Host", target.authority.encode()))
            self._resolved[id(api)] = resolved
        return resolved

    def on_registry_change(self, snapshot: Snapshot) -> None:
        """Re-resolve lazily, and close pools that no API of the new snapshot uses."""
        self._snapshot = snapshot
        self._resolved = {}
        keys: set[PoolKey] = set()
        apis = [route.api for route in snapshot.routes if route.api is not None]
        for api in apis:
            cert = connection_cert(api.credentials)
            fingerprint = cert.fingerprint if cert is not None else ""
            keys.add(pool_key(api.target, not api.skip_verify, fingerprint))
        self._upstream.retain(keys | retain(self._auth, apis))

    # -- pipeline ---------------------------------------------------------------------
    async def _handle(self, ex: Exchange, listener: str) -> None:
        start = self._clock()
        inflight = self._metrics.inflight(listener)
        inflight.inc()
        route: Route | None = None
        error: GatewayError | None = None
        upstream_status: int | None = None
        upstream_s: float | None = None
        retried = False
        target = ex.target.decode("latin-1")
        path = target
        ex.request_id = get_header(ex.headers, REQUEST_ID)
        try:
            if not self._registry.ready:
                raise NotReady("registry not loaded yet")
            snapshot = self._registry.snapshot()
            host: str | None = None
            if not target.startswith("/"):
                authority, target = split_absolute_form(target)
                if authority is not None:
                    host = authority
            path, _, query = target.partition("?")
            if listener == "compass":
                route = route_compass(snapshot, path)
            else:
                if host is None:
                    value = get_header(ex.headers, HOST)
                    host = value.decode("latin-1") if value is not None else None
                route = route_proxy(snapshot, host, path)
            resolved = self._resolve(route.api, snapshot)
            upstream_status, retried, upstream_s = await self._forward(ex, route, resolved, query)
        except GatewayError as exc:
            error = exc
            if isinstance(exc, UpstreamUnavailable | UpstreamTimeout) and route is not None:
                ref = route.api.ref
                self._metrics.upstream_error(ref.app, ref.service, exc.kind)
            if not ex.started:
                ex.send_error(exc)
            else:
                ex.abort()
        except ClientGone as exc:
            error = _CallerGone(str(exc))
            ex.abort()
        except asyncio.CancelledError:
            error = _CallerGone("caller disconnected")
            raise
        finally:
            inflight.dec()
            self._record(
                ex, listener, route, path, start, upstream_status, upstream_s, retried, error
            )

    async def _forward(
        self, ex: Exchange, route: Route, resolved: Resolved, query: str
    ) -> tuple[int | None, bool, float]:
        api = route.api
        target = api.target
        headers = outbound_headers(ex.headers)
        if ex.request_id is None:
            # Correlate the access line with the target's logs: one id per request, made
            # from a per-process random prefix and a counter (cheaper than a UUID).
            self._request_count += 1
            ex.request_id = b"%s-%d" % (self._request_prefix, self._request_count)
            headers.append((b"X-Request-Id", ex.request_id))
        strategy = resolved.strategy
        token = take_access_token(headers)
        if token is not None:
            set_header(headers, AUTHORIZATION, token)
        applied: Applied = await strategy.apply(headers, authenticate=token is None)
        first_headers = list(headers)
        add_parameter_headers(headers, api.params.headers)
        headers.append(resolved.host_header)
        path = wire_path(target.path, route.rest, api.encode_url)
        q = merge_query(target.query, query, api.params.query)
        path_qs = path + "?" + q if q else path
        body, stream = await self._read_body(ex)
        request = OutboundRequest(
            ex.method, target, path_qs.encode("latin-1"), headers, body, stream
        )
        upstream = self._upstream
        clock = self._clock
        sent = clock()
        response = await upstream.send(
            request,
            resolved.pool,
            header_timeout=self._header_timeout,
            idle_timeout=self._idle_timeout,
        )
        upstream_s = clock() - sent
        self._metrics.observe_upstream(api.ref.app, api.ref.service, upstream_s)
        retried = False
        if response.status in (401, 403):
            await strategy.invalidate(applied)
            if stream is None:
                response.abort()
                headers = list(first_headers)
                await strategy.apply(headers)
                add_parameter_headers(headers, api.params.headers)
                headers.append(resolved.host_header)
                request.headers = headers
                retried = True
                self._metrics.retry(api.ref.app, api.ref.service)
                sent = clock()
                response = await upstream.send(
                    request,
                    resolved.pool,
                    header_timeout=self._header_timeout,
                    idle_timeout=self._idle_timeout,
                )
                upstream_s = clock() - sent
                self._metrics.observe_upstream(api.ref.app, api.ref.service, upstream_s)
        await self._relay(ex, route, response, target.origin + path_qs)
        return response.status, retried, upstream_s

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

    async def _relay(
        self, ex: Exchange, route: Route, response: UpstreamResponse, sent_url: str
    ) -> None:
        try:
            original = response.status
            headers = response_headers(response.headers)
            status = rewrite_status(original, headers)
            if should_rewrite_location(original):
                location = get_header(headers, LOCATION)
                if location is not None:
                    text = location.decode("latin-1")
                    new = rewrite_location(text, sent_url, route.api.target, route.base)
                    if new != text:
                        set_header(headers, b"Location", new.encode("latin-1"))
            reason = response.reason if status == original else b""
            ex.start_response(status, reason, headers, response.content_length)
            connection = response.connection
            if not connection.body_buffered:
                ex.flush_head()
            idle = self._idle_timeout
            while True:
                data = await connection.read(idle)
                if not data:
                    break
                await ex.write(data)
            ex.end()
        except BaseException:
            response.abort()
            raise
        response.release()

    # -- observation ------------------------------------------------------------------
    def _record(
        self,
        ex: Exchange,
        listener: str,
        route: Route | None,
        path: str,
        start: float,
        upstream_status: int | None,
        upstream_s: float | None,
        retried: bool,
        error: GatewayError | None,
    ) -> None:
        duration = self._clock() - start
        if ex.started:
            status = ex.status_sent
        else:
            status = error.status if error is not None else 0
        if route is not None:
            ref = route.api.ref
            app, service, entry = ref.app, ref.service, ref.entry
            mode = route.mode
        else:
            app = service = entry = ""
            mode = "path"
            ref_holder = getattr(error, "ref", None)
            if ref_holder is not None:
                app, service, entry = ref_holder.app, ref_holder.service, ref_holder.entry
        self._metrics.observe_request(listener, app, service, status, duration)
        request_id = ex.request_id
        access = self._access
        access.request(
            access.static_part(listener, mode, app, service, entry),
            ex.method.decode("latin-1"),
            path,
            status,
            upstream_status,
            retried,
            round(duration * 1000, 3),
            None if upstream_s is None else round(upstream_s * 1000, 3),
            ex.bytes_in,
            ex.bytes_out,
            error.message if error is not None else None,
            error.classify() if error is not None else None,
            request_id.decode("latin-1") if request_id else None,
        )


class _CallerGone(GatewayError):
    """Not sent to anyone: the caller left. Logged with the conventional 499."""

    status = 499
    error_class = "caller_gone"
