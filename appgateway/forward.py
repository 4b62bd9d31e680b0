"""The request pipeline of behaviour.md §1: route, authenticate, send, relay, record.

`handle_proxy`/`handle_compass` route a request and hand it to a `Relay` (relay.py), the one
engine every request goes through. This module keeps what each API needs per registry
snapshot, builds what a relay sends and the response head it relays, and records every
outcome once (metrics and the access line). All socket work is behind `Exchange` (caller
side) and `Upstream` (target side).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Final

from appgateway.auth import AuthDeps, AuthStrategy, connection_cert, make_strategy, retain
from appgateway.caller import CallerAuth
from appgateway.caller.bearer import MISSING
from appgateway.config import Settings
from appgateway.errors import (
    BadRequest,
    CallerUnauthenticated,
    GatewayError,
    LoopDetected,
    NotReady,
    UpstreamUnavailable,
)
from appgateway.exchange import Exchange
from appgateway.headers import (
    add_parameter_headers,
    caller_fields,
    get_header,
    response_headers,
    set_header,
    take_access_token,
)
from appgateway.logs import AccessLog, Call
from appgateway.metrics import Histogram, Metrics, RequestSeries
from appgateway.model import API, Headers
from appgateway.registry import Registry
from appgateway.registry.snapshot import Snapshot
from appgateway.relay import Relay
from appgateway.rewrite import rewrite_location, rewrite_status, should_rewrite_location
from appgateway.routing import Destination, Router
from appgateway.tls import TlsContexts
from appgateway.upstream import OutboundRequest, Pool, PoolKey, Upstream, pool_key
from appgateway.upstream_connection import UpstreamConnection
from appgateway.urls import (
    canonical_target,
    encoded_params,
    escapes_base,
    merge_query,
    wire_path,
)

AUTHORIZATION: Final = b"Authorization"
LOCATION: Final = b"location"

_HOST: Final = 0
_PATH: Final = 1
_COMPASS: Final = 2


class PreparedAPI:
    """An API made ready for requests, once per registry snapshot: its credential strategy,
    connection pool, canonical target path and query, and its metric series and
    access-line parts, so a request looks up nothing by its labels."""

    __slots__ = (
        "api",
        "strategy",
        "pool",
        "host_header",
        "upstream_hist",
        "canonical_path",
        "query_params",
        "host_series",
        "host_static",
        "path_series",
        "path_static",
        "compass_series",
        "compass_static",
    )

    def __init__(
        self,
        api: API,
        strategy: AuthStrategy,
        pool: Pool,
        host_header: tuple[bytes, bytes],
        upstream_hist: Histogram,
        canonical_path: str,
        query_params: tuple[tuple[str, str], ...],
    ) -> None:
        self.api = api
        self.strategy = strategy
        self.pool = pool
        self.host_header = host_header
        self.upstream_hist = upstream_hist
        self.canonical_path = canonical_path  # urls.canonical_target of the target's path
        self.query_params = query_params  # urls.encoded_params of the API's parameters
        # The series and access-line part per kind of route, made on first use. Fields, not
        # lists indexed by kind: with 10,000 APIs, every object a request touches is a
        # likely cache miss, and a list is two more.
        self.host_series: RequestSeries | None = None
        self.host_static: str | None = None
        self.path_series: RequestSeries | None = None
        self.path_static: str | None = None
        self.compass_series: RequestSeries | None = None
        self.compass_static: str | None = None

    def labels(self, kind: int) -> tuple[RequestSeries | None, str | None]:
        if kind == _PATH:
            return self.path_series, self.path_static
        if kind == _HOST:
            return self.host_series, self.host_static
        return self.compass_series, self.compass_static

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
        caller_auth: CallerAuth | None = None,
    ) -> None:
        self._auth = auth
        self.caller_auth = caller_auth  # None: `--caller-auth off`, anyone may call
        self._registry = registry
        self.upstream = upstream
        self._tls = tls
        self._access = access_log
        self.metrics = metrics
        self.clock = clock  # durations (perf_counter)
        self.loop_time = asyncio.get_running_loop().time  # deadlines
        self._snapshot: object | None = None
        self._router: Router[PreparedAPI] | None = None
        self.header_timeout = settings.proxy_timeout
        self.idle_timeout = settings.idle_timeout
        self.retry_limit = settings.retry_body_limit
        self._request_prefix = os.urandom(6).hex().encode()
        self._request_count = 0
        # This process's pseudonym in Via (RFC 9110 §7.6.3), by which it knows a request
        # that comes back to it.
        self._hop = b"appgateway-" + self._request_prefix
        self._via = (b"Via", b"1.1 " + self._hop)
        self._inflight = {name: metrics.inflight(name) for name in ("proxy", "compass")}

    def handle_proxy(self, ex: Exchange) -> None:
        self._handle(ex, "proxy")

    def handle_compass(self, ex: Exchange) -> None:
        self._handle(ex, "compass")

    # -- per snapshot -------------------------------------------------------------------
    def _prepare(self, api: API) -> PreparedAPI:
        strategy = make_strategy(api, self._auth)
        cert = strategy.client_cert
        verify = not api.skip_verify
        target = api.target
        ctx = self._tls.get(verify, cert) if target.scheme == "https" else None
        fingerprint = cert.fingerprint if cert is not None else ""
        pool = self.upstream.pool(target, verify, fingerprint, ctx)
        return PreparedAPI(
            api,
            strategy,
            pool,
            (b"Host", target.authority.encode()),
            self.metrics.upstream_series(api.ref.app, api.ref.service),
            canonical_target(target.path),
            encoded_params(api.params.query),
        )

    def on_registry_change(self, snapshot: Snapshot) -> None:
        """Route the new snapshot afresh, and close pools that none of its APIs uses."""
        self._use(snapshot)
        keys: set[PoolKey] = set()
        apis = [route.api for route in snapshot.routes if route.api is not None]
        for api in apis:
            cert = connection_cert(api.credentials)
            fingerprint = cert.fingerprint if cert is not None else ""
            keys.add(pool_key(api.target, not api.skip_verify, fingerprint))
        self.upstream.retain(keys | retain(self._auth, apis))

    def _use(self, snapshot: Snapshot) -> Router[PreparedAPI]:
        self._snapshot = snapshot
        router = self._router = Router(snapshot, self._prepare)
        return router

    # -- per request --------------------------------------------------------------------
    def _handle(self, ex: Exchange, listener: str) -> None:
        target = ex.target.decode("latin-1")
        if "#" in target:  # (on str: `bytes in bytes` pays for a TypeError first)
            target = target.partition("#")[0]  # a fragment is the caller's own; never sent on
        call = Call(listener, self.clock(), ex.method.decode("latin-1"), target.partition("?")[0])
        self._inflight[listener].value += 1
        fields, host, ex.request_id, proxy_authorization, looped = caller_fields(
            ex.headers, self._hop
        )
        try:
            if looped:
                raise LoopDetected("request loop: this gateway already forwarded the request")
            if not self._registry.ready:
                raise NotReady("registry not loaded yet")
            snapshot = self._registry.snapshot()
            router = self._router
            if snapshot is not self._snapshot or router is None:
                router = self._use(snapshot)
            api, dest, call.path, query = router.route(
                target, None if host is None else host.decode("latin-1"), listener == "compass"
            )
        except GatewayError as failed:
            error = failed
            if self.caller_auth is not None and proxy_authorization is None:
                # An anonymous caller learns nothing, not even which Applications exist.
                error = CallerUnauthenticated(MISSING)
            call.error = error
            ex.send_error(error)
            self.record(ex, call, None, None)
            ex.done()
            return
        token = take_access_token(fields)
        if token is not None:
            set_header(fields, AUTHORIZATION, token)
        Relay(self, ex, call, api, dest, query, fields, token is None).start(proxy_authorization)

    def build(self, relay: Relay, body: bytes | None) -> OutboundRequest:
        """The request a relay sends; raises GatewayError (a path the API confines, an
        unusable parameter)."""
        ex = relay.ex
        prepared = relay.api
        dest = relay.dest
        api = prepared.api
        target = api.target
        headers = relay.headers
        if ex.request_id is None:
            # Correlate the access line with the target's logs: one id per request, made
            # from a per-process random prefix and a counter (cheaper than a UUID).
            self._request_count += 1
            ex.request_id = b"%s-%d" % (self._request_prefix, self._request_count)
            headers.append((b"X-Request-Id", ex.request_id))
        headers.append(self._via)
        relay.own_fields = len(headers)
        if api.confine_path and escapes_base(dest.rest):
            raise BadRequest("request path leaves the API's base path")
        path = wire_path(target.path, dest.rest, api.encode_url, prepared.canonical_path)
        q = merge_query(target.query, relay.query, api.params.query, prepared.query_params)
        path_qs = path + "?" + q if q else path
        return OutboundRequest(
            ex.method,
            target,
            path_qs.encode("latin-1"),
            self.finish_headers(prepared, headers),
            body,
        )

    @staticmethod
    def finish_headers(prepared: PreparedAPI, headers: Headers) -> Headers:
        """After the credentials: the request-parameter headers, then Host."""
        add_parameter_headers(headers, prepared.api.params.headers)
        headers.append(prepared.host_header)
        return headers

    def start_response(
        self,
        ex: Exchange,
        dest: Destination,
        response: UpstreamConnection,
        request: OutboundRequest,
    ) -> None:
        original = response.status
        headers = response_headers(response.headers)
        status = rewrite_status(original, headers)
        if should_rewrite_location(original):
            location = get_header(headers, LOCATION)
            if location is not None:
                text = location.decode("latin-1")
                sent_url = request.target.origin + request.path.decode("latin-1")
                new = rewrite_location(text, sent_url, dest.api.target, dest.base)
                if new != text:
                    set_header(headers, b"Location", new.encode("latin-1"))
        reason = response.reason if status == original else b""
        codings = response.transfer_codings
        if codings is not None and not ex.http11:
            raise UpstreamUnavailable(
                "response transfer coding cannot be relayed to an HTTP/1.0 caller", "protocol"
            )
        ex.start_response(status, reason, headers, response.content_length, codings)

    # -- observation --------------------------------------------------------------------
    def record(
        self, ex: Exchange, call: Call, prepared: PreparedAPI | None, dest: Destination | None
    ) -> None:
        """The outcome, once per request: the request series and the access line."""
        listener = call.listener
        self._inflight[listener].value -= 1
        call.duration_s = self.clock() - call.start
        error = call.error
        if ex.started:
            call.status = ex.status_sent
        else:
            call.status = error.status if error is not None else 0
        call.bytes_in = ex.bytes_in
        call.bytes_out = ex.bytes_out
        request_id = ex.request_id
        call.request_id = request_id.decode("latin-1") if request_id else None
        access = self._access
        if prepared is not None and dest is not None:
            kind = _COMPASS if listener == "compass" else _HOST if dest.mode == "host" else _PATH
            series, static = prepared.labels(kind)
            if series is None or static is None:
                ref = dest.api.ref
                series = self.metrics.series(listener, ref.app, ref.service)
                static = access.static_part(listener, dest.mode, ref.app, ref.service, ref.entry)
                prepared.keep_labels(kind, series, static)
        else:
            app = service = entry = ""
            ref_holder = getattr(error, "ref", None)
            if ref_holder is not None:
                app, service, entry = ref_holder.app, ref_holder.service, ref_holder.entry
            series = self.metrics.series(listener, app, service)
            static = access.static_part(listener, "path", app, service, entry)
        series.observe_request(ex.method, call.status, call.duration_s)
        access.request(static, call)
