"""The bundled demo API: one small aiohttp server with every kind of protection the gateway
can satisfy, so `appgateway demo` shows each auth type working end to end.

Every successful answer is the echo document (method, raw path, raw query, headers in wire
order) so a user sees exactly what the gateway sent, credentials included. Issued tokens and
CSRF sessions live in the application instance, never in module state.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from aiohttp import web

from appgateway.demo import (
    CLIENT_ID,
    CLIENT_SECRET,
    PASSWORD,
    USERNAME,
    default_registry_text,
    demo_commands,
    demo_registry,
)

__all__ = [
    "default_registry_text",
    "demo_commands",
    "demo_registry",
    "make_demo_app",
    "start_demo_api",
]

TOKEN_TTL = 3600
CSRF_COOKIE = "demo-csrf-session"
_MAX_SESSIONS = 1000
_SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


@dataclass
class _State:
    tokens: dict[str, float] = field(default_factory=dict)  # token -> monotonic expiry
    sessions: OrderedDict[str, str] = field(default_factory=OrderedDict)  # cookie -> CSRF token


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _basic_pair(request: web.Request) -> tuple[str, str] | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _denied(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


async def _echo(request: web.Request, endpoint: str) -> web.Response:
    body = await request.read()
    path, _, query = request.raw_path.partition("?")
    return web.json_response(
        {
            "endpoint": endpoint,
            "method": request.method,
            "path": path,
            "query": query,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
            "body_length": len(body),
        }
    )


def make_demo_app() -> web.Application:
    state = _State()

    def basic_ok(request: web.Request) -> bool:
        pair = _basic_pair(request)
        return pair is not None and _same(pair[0], USERNAME) and _same(pair[1], PASSWORD)

    def basic_denied() -> web.Response:
        return _denied(
            401, "basic authentication required", {"WWW-Authenticate": 'Basic realm="demo"'}
        )

    async def open_endpoint(request: web.Request) -> web.StreamResponse:
        return await _echo(request, "open")

    async def echo(request: web.Request) -> web.StreamResponse:
        return await _echo(request, "echo")

    async def basic(request: web.Request) -> web.StreamResponse:
        if not basic_ok(request):
            return basic_denied()
        return await _echo(request, "basic")

    async def bearer(request: web.Request) -> web.StreamResponse:
        token = _bearer(request)
        expiry = state.tokens.get(token) if token is not None else None
        if expiry is None or expiry <= time.monotonic():
            return _denied(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
        return await _echo(request, "bearer")

    async def token(request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return _denied(405, "use POST", {"Allow": "POST"})
        form = await request.post()
        pair = _basic_pair(request)
        form_id, form_secret = form.get("client_id"), form.get("client_secret")
        sources: list[tuple[object, object]] = []
        if pair is not None:
            sources.append(pair)
        if form_id is not None or form_secret is not None:
            sources.append((form_id, form_secret))
        valid = bool(sources) and all(
            isinstance(i, str)
            and isinstance(s, str)
            and _same(i, CLIENT_ID)
            and _same(s, CLIENT_SECRET)
            for i, s in sources
        )
        if not valid:
            return _denied(401, "invalid_client")
        if form.get("grant_type") != "client_credentials":
            return _denied(400, "unsupported_grant_type")
        now = time.monotonic()
        for old in [t for t, expiry in state.tokens.items() if expiry <= now]:
            del state.tokens[old]
        issued = secrets.token_urlsafe(24)
        state.tokens[issued] = now + TOKEN_TTL
        return web.json_response(
            {"access_token": issued, "token_type": "bearer", "expires_in": TOKEN_TTL}
        )

    async def csrf(request: web.Request) -> web.StreamResponse:
        if not basic_ok(request):
            return basic_denied()
        sent = request.headers.get("X-Csrf-Token")
        if request.method in _SAFE_METHODS:
            if sent is None or sent.lower() != "fetch":
                return await _echo(request, "csrf")
            session, issued = secrets.token_urlsafe(16), secrets.token_urlsafe(24)
            state.sessions[session] = issued
            while len(state.sessions) > _MAX_SESSIONS:
                state.sessions.popitem(last=False)
            response = await _echo(request, "csrf")
            response.headers["X-Csrf-Token"] = issued
            response.set_cookie(CSRF_COOKIE, session, path="/", httponly=True)
            return response
        expected = state.sessions.get(request.cookies.get(CSRF_COOKIE, ""))
        if sent is None or expected is None or not _same(sent, expected):
            return _denied(403, "CSRF token validation failed", {"X-Csrf-Token": "Required"})
        return await _echo(request, "csrf")

    app = web.Application()
    for prefix, handler in (
        ("/open", open_endpoint),
        ("/echo", echo),
        ("/basic", basic),
        ("/bearer", bearer),
        ("/csrf", csrf),
    ):
        app.router.add_route("*", prefix, handler)
        app.router.add_route("*", prefix + "/{tail:.*}", handler)
    app.router.add_route("*", "/oauth/token", token)
    return app


async def start_demo_api(host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the demo API on host:port (0 picks a port); the caller owns `runner.cleanup()`."""
    runner = web.AppRunner(make_demo_app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])
