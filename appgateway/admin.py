"""The admin listener of behaviour.md §12: health, readiness, log level and metrics.

Paths are matched exactly on the raw path (no trailing-slash or escape leniency) by one
catch-all handler, because aiohttp's router would answer unknown methods and paths with its
own plain-text bodies, while Kyma's clients expect the JSON 404/405 texts.

aiohttp has no deadline for a request head and keeps a connection for as long as its peer
stays silent, so the listener wraps each connection in a deadline per phase and caps the open
connections (see `_Connections`). Without them a few hundred silent connections once used up
the process's file descriptors, and with them the proxy listeners and the health checks.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, cast

from aiohttp import web

from appgateway.errors import JSON_CONTENT_TYPE, render_json
from appgateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

log = logging.getLogger("appgateway.admin")

MAX_CONNECTIONS: Final = 16
"""Open admin connections per listener: probes, a few scrapers and an operator need a handful."""

_JSON = JSON_CONTENT_TYPE.decode()
_NOT_FOUND = render_json(404, "Requested resource could not be found.")
_NOT_ALLOWED = render_json(405, "Method not allowed.")
_NOT_READY = render_json(503, "not ready")
_FORM = "application/x-www-form-urlencoded"
_BUSY_BODY = render_json(503, "too many admin connections")
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
    + JSON_CONTENT_TYPE
    + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(_BUSY_BODY)
    + _BUSY_BODY
)
_LIMIT_LOG_INTERVAL: Final = 10.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LogControlLike(Protocol):
    """What the admin listener needs from `logs.LogControl`."""

    @property
    def level(self) -> str: ...

    def set_level(self, name: str) -> str: ...


def _json(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": _JSON})


def _level_json(status: int, doc: dict[str, str]) -> web.Response:
    return _json(status, json.dumps(doc, separators=(",", ":")).encode() + b"\n")


async def _requested_level(request: web.Request) -> str:
    """The `level` of a JSON body, or of a form body (falling back to the query)."""
    if request.content_type == _FORM:
        form = await request.post()
        value = form.get("level", request.query.get("level"))
        if not isinstance(value, str) or not value:
            raise ValueError("the form must set level")
        return value
    try:
        doc = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: deeply nested arrays or objects, still just a bad body.
        raise ValueError('the body must be JSON like {"level":"info"}') from None
    value = doc.get("level") if isinstance(doc, dict) else None
    if not isinstance(value, str) or not value:
        raise ValueError("the JSON body must set level to a string")
    return value


def _audit_level_change(request: web.Request, previous: str, level: str) -> None:
    """Log a level change at warn even when the level filters warn out: the change can
    silence the access log, so it must leave a trace of who made it."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    fields: dict[str, object] = {"old_level": previous, "new_level": level}
    if isinstance(peer, tuple) and len(peer) >= 2:
        fields["peer"] = str(peer[0])
        fields["peer_port"] = peer[1]
    else:
        fields["peer"] = request.remote or "unknown"
    record = log.makeRecord(
        log.name,
        logging.WARNING,
        __file__,
        0,
        "log level changed",
        (),
        None,
        extra={"fields": fields},
    )
    log.handle(record)


async def _drop_server_header(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers.popall("Server", None)


def make_admin_app(
    *,
    ready: Callable[[], bool],
    log_control: LogControlLike,
    metrics_text: Callable[[], Awaitable[bytes]] | Callable[[], bytes],
    set_level: Callable[[str], Awaitable[str]] | None = None,
    unhealthy: Callable[[], str | None] | None = None,
) -> web.Application:
    """Build the admin application.

    `set_level`, when given, replaces `log_control.set_level` for `PUT /v1/loglevel` so the
    supervisor can fan the change out to its workers; it must raise `ValueError` for an
    unknown level and return the normalised name. `GET` always reads `log_control.level`.
    `unhealthy`, when given, names why the process should be restarted (None: healthy), so
    that `/v1/health` answers 503 and the liveness probe fails.
    """

    async def health(_request: web.Request) -> web.StreamResponse:
        reason = unhealthy() if unhealthy is not None else None
        if reason is not None:
            return _json(503, render_json(503, reason))
        return web.Response(status=200)

    async def readiness(_request: web.Request) -> web.StreamResponse:
        if ready():
            return web.Response(status=200)
        return _json(503, _NOT_READY)

    async def get_level(_request: web.Request) -> web.StreamResponse:
        return _level_json(200, {"level": log_control.level})

    async def put_level(request: web.Request) -> web.StreamResponse:
        previous = log_control.level
        try:
            name = await _requested_level(request)
            if set_level is None:
                applied = log_control.set_level(name)
            else:
                applied = await set_level(name)
        except ValueError as exc:
            return _level_json(400, {"error": str(exc)})
        _audit_level_change(request, previous, applied)
        return _level_json(200, {"level": applied})

    async def metrics(_request: web.Request) -> web.StreamResponse:
        result = metrics_text()
        body = result if isinstance(result, bytes) else await result
        return web.Response(status=200, body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    routes: dict[str, dict[str, Handler]] = {
        "/v1/health": {"GET": health},
        "/v1/ready": {"GET": readiness},
        "/v1/loglevel": {"GET": get_level, "PUT": put_level},
        "/metrics": {"GET": metrics},
    }

    async def dispatch(request: web.Request) -> web.StreamResponse:
        methods = routes.get(request.raw_path.partition("?")[0])
        if methods is None:
            return _json(404, _NOT_FOUND)
        handler = methods.get(request.method)
        if handler is None:
            response = _json(405, _NOT_ALLOWED)
            response.headers["Allow"] = ", ".join(methods)
            return response
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", dispatch)
    app.on_response_prepare.append(_drop_server_header)
    return app


class _Connections:
    """The open connections of one admin listener: each one's deadline, and the cap.

    Each phase of a connection must end within `timeout` seconds: from opening (or from the
    end of the previous answer) until a request head has arrived, which bounds silent, idle
    keep-alive and half-sent connections alike, as arriving bytes do not extend it; then
    reading the body and answering. A connection that misses it is closed.

    A new connection beyond `limit` closes the connection that has waited longest for a
    head, preferring one that never completed a request. Refusing the newcomer instead would
    let a handful of silent connections fail every kubelet probe (a fresh connection each
    time) until the pod is restarted; this way probes, scrapes and a keep-alive connection in
    use keep working. Only when every connection is inside a request is the newcomer refused.
    """

    def __init__(self, timeout: float, limit: int) -> None:
        self.server: Callable[[], asyncio.Protocol] | None = None
        """aiohttp's protocol factory, known once the runner is set up."""
        self.timeout = timeout
        self.limit = limit
        self.open: dict[asyncio.BaseTransport, _Guard] = {}
        self.evicted = 0
        self.refused = 0
        self._last_log = -_LIMIT_LOG_INTERVAL

    def __call__(self) -> asyncio.Protocol:
        return _Guard(self)

    def admit(self, transport: asyncio.Transport) -> bool:
        """Make room for a new connection, or answer it 503 and close it."""
        if len(self.open) < self.limit:
            return True
        idle = [guard for guard in self.open.values() if not guard.busy]
        if idle:
            min(idle, key=lambda guard: (guard.proven, guard.since)).close()
            self.evicted += 1
            admitted = True
        else:
            transport.write(_BUSY)
            transport.close()
            self.refused += 1
            admitted = False
        now = asyncio.get_running_loop().time()
        if now - self._last_log >= _LIMIT_LOG_INTERVAL:
            self._last_log = now
            log.warning(
                "admin connection limit reached",
                extra={
                    "fields": {
                        "limit": self.limit,
                        "idle_closed_total": self.evicted,
                        "refused_total": self.refused,
                    }
                },
            )
        return admitted

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        guard = self.open.get(request.transport) if request.transport else None
        if guard is None:
            return await handler(request)
        guard.busy = True
        guard.arm()
        try:
            return await handler(request)
        finally:
            guard.busy = False
            guard.proven = True
            guard.arm()


class _Guard(asyncio.Protocol):
    """Stands between the transport and aiohttp's protocol to count and time the connection."""

    def __init__(self, owner: _Connections) -> None:
        self.owner = owner
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.since = 0.0
        """When the current phase began."""
        self.busy = False
        """Inside a request: reading its body or answering."""
        self.proven = False
        """A request has been answered on this connection."""

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's is not an asyncio.Transport subclass
        if not self.owner.admit(transport):
            return
        self.transport = transport
        self.owner.open[transport] = self
        assert self.owner.server is not None
        self.inner = self.owner.server()
        self.inner.connection_made(transport)
        self.arm()

    def arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            loop = asyncio.get_running_loop()
            self.since = loop.time()
            self.timer = loop.call_at(self.since + self.owner.timeout, self.close)

    def close(self) -> None:
        """Close at once: the deadline passed or the connection makes room for a newer one."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transport = self.transport
        if transport is None:
            return
        self.owner.open.pop(transport, None)  # no longer counted: its socket closes now
        # close() would wait for a peer that does not read to take the buffered answer.
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.owner.open.pop(self.transport, None)
            self.transport = None
        if self.inner is not None:
            self.inner.connection_lost(exc)


class _AdminSite(web.BaseSite):
    """A TCP site whose connections go through `_Connections` rather than straight to aiohttp."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, connections: _Connections):
        super().__init__(runner)
        self._host = host
        self._port = port
        self._connections = connections

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._connections, self._host, self._port, backlog=128, reuse_address=True
        )


async def start_admin(
    app: web.Application,
    host: str,
    port: int,
    *,
    phase_timeout: float = 10.0,
    max_connections: int = MAX_CONNECTIONS,
) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0 picks a port); the caller owns `runner.cleanup()`.

    `phase_timeout` bounds each phase of a connection and `max_connections` the open
    connections (see `_Connections`).
    """
    connections = _Connections(phase_timeout, max_connections)
    app.middlewares.append(connections.middleware)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        connections.server = runner.server
        site = _AdminSite(runner, host, port, connections)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return runner, int(bound)
