"""The admin listener of behaviour.md §12: health, readiness, log level and metrics.

Paths are matched exactly on the raw path (no trailing-slash or escape leniency) by one
catch-all handler, because aiohttp's router would answer unknown methods and paths with its
own plain-text bodies, while Kyma's clients expect the JSON 404/405 texts.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from appgateway.errors import JSON_CONTENT_TYPE, render_json
from appgateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

_JSON = JSON_CONTENT_TYPE.decode()
_NOT_FOUND = render_json(404, "Requested resource could not be found.")
_NOT_ALLOWED = render_json(405, "Method not allowed.")
_NOT_READY = render_json(503, "not ready")
_FORM = "application/x-www-form-urlencoded"

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
    except (ValueError, UnicodeDecodeError):
        raise ValueError('the body must be JSON like {"level":"info"}') from None
    value = doc.get("level") if isinstance(doc, dict) else None
    if not isinstance(value, str) or not value:
        raise ValueError("the JSON body must set level to a string")
    return value


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
        try:
            name = await _requested_level(request)
            if set_level is None:
                applied = log_control.set_level(name)
            else:
                applied = await set_level(name)
        except ValueError as exc:
            return _level_json(400, {"error": str(exc)})
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


async def start_admin(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0 picks a port); the caller owns `runner.cleanup()`."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return runner, int(bound)
