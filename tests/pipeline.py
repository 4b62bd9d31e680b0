"""The pipeline in-process, for test_forward.py and test_relay.py: real listeners (`serve`)
in front of a `Forwarder`, a real folder registry, and a recording upstream server whose
behaviour a path segment chooses (`MockAPI`). Registered as a pytest plugin by conftest.py."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appgateway.auth import make_deps
from appgateway.caller.tokens import TokensCallerAuth
from appgateway.config import Settings
from appgateway.connections import ConnectionTracker
from appgateway.forward import Forwarder
from appgateway.logs import AccessLog, setup_logging
from appgateway.metrics import Metrics
from appgateway.registry.folder import FolderRegistry
from appgateway.server import serve
from appgateway.tls import TlsContexts
from appgateway.upstream import Upstream
from tests.conftest import (
    ClientFactory,
    Connection,
    Handler,
    RawServer,
    Response,
    Seen,
    ServerFactory,
    echo_body,
    response,
    write_registry,
)

JSON = "application/json;charset=UTF-8"


class MockAPI:
    """The external API's behaviour, chosen by a path segment below the target path."""

    def __init__(self) -> None:
        self.auth401: dict[str, int] = {}

    async def __call__(self, seen: Seen) -> bytes | None:
        segments = seen.path.split("/")
        if "status" in segments:
            code = int(segments[segments.index("status") + 1])
            extra = [("X-Mock", "1"), ("Target-System-Status", "stale")]
            return response(code, f"upstream says {code}".encode(), extra)
        if "redirect" in segments:
            location = parse_qs(urlsplit(seen.target).query)["location"][0]
            return response(302, b"moved", [("Location", location)])
        if "auth401" in segments:
            key = segments[segments.index("auth401") + 1]
            self.auth401[key] = self.auth401.get(key, 0) + 1
            if self.auth401[key] == 1:
                return response(401, b"denied", [("WWW-Authenticate", "Basic")])
        if "always401" in segments:
            return response(401, b"denied")
        if "chunked" in segments:
            body = b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
            return response(200, body, [("Transfer-Encoding", "chunked")], length=False)
        if "token" in segments:
            token = b'{"access_token":"tok-1","token_type":"bearer","expires_in":3600}'
            return response(200, token, [("Content-Type", "application/json")])
        if "big" in segments:
            size = int(segments[segments.index("big") + 1])
            return response(200, bytes(range(256)) * (size // 256))
        if "hang" in segments:
            await asyncio.sleep(float(segments[segments.index("hang") + 1]))
        return response(200, echo_body(seen), [("Content-Type", "application/json")])


@dataclass
class Rig:
    """One gateway pipeline and its upstream, all on the test's loop."""

    api: RawServer
    proxy_port: int
    compass_port: int
    metrics: Metrics
    log: io.StringIO
    clients: ClientFactory
    forwarder: Forwarder

    async def call(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        *,
        listener: str = "proxy",
    ) -> Response:
        client = await self.clients(self.port(listener))
        return await client.request(method, target, headers or [("Host", "gw")], body)

    def port(self, listener: str) -> int:
        return self.proxy_port if listener == "proxy" else self.compass_port

    def log_lines(self) -> list[str]:
        return self.log.getvalue().splitlines()

    def access(self) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.log.getvalue().splitlines() if line]
        return [line for line in lines if line.get("logger") == "access"]

    def sample(self, name: str, **labels: str) -> float | None:
        text = self.metrics.render().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return None


MakeRig = Callable[..., Awaitable[Rig]]


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    return sock


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


OAUTH_APP = """\
apiVersion: applicationconnector.kyma-project.io/v1alpha1
kind: Application
metadata: {{name: shop-oauth}}
spec:
  services:
    - displayName: OAuth
      entries:
        - type: API
          name: oauth
          targetUrl: {base}/oauth-api
          credentials: {{type: OAuth, secretName: shop-oauth, authenticationUrl: "{base}/token"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: shop-oauth, namespace: kyma-system}}
stringData: {{clientId: shop-client, clientSecret: shop-secret}}
"""
"""Application `shop-oauth`: one API whose Bearer token comes from the mock's `/token`."""

DEAD_APP = """\
apiVersion: applicationconnector.kyma-project.io/v1alpha1
kind: Application
metadata: {{name: dead}}
spec:
  services:
    - displayName: gone
      entries: [{{type: API, name: gone, targetUrl: "http://127.0.0.1:{port}/x"}}]
"""


@pytest.fixture
async def make_rig(
    servers: ServerFactory, clients: ClientFactory, registry_dir: Path
) -> AsyncIterator[MakeRig]:
    """The whole set-up of the pipeline, in one place: a constructor change is fixed here.

    `await make_rig(handler=..., start_registry=..., **settings)`.
    """
    cleanups: list[Callable[[], Awaitable[None]]] = []
    root = logging.getLogger()
    level = root.level

    async def make(
        *,
        handler: Handler | None = None,
        start_registry: bool = True,
        caller_tokens: str | None = None,
        **overrides: Any,
    ) -> Rig:
        """`caller_tokens`: the text of a `--caller-auth tokens` file, which turns it on."""
        api = await servers(MockAPI(), handler=handler)
        write_registry(registry_dir, api.base)
        (registry_dir / "oauth.yaml").write_text(OAUTH_APP.format(base=api.base))
        (registry_dir / "dead.yaml").write_text(DEAD_APP.format(port=_free_port()))
        values: dict[str, Any] = {
            "registry": registry_dir,
            "proxy_timeout": 2.0,
            "idle_timeout": 2.0,
            "request_timeout": 5.0,
            "retry_body_limit": 1024,
        }
        values.update(overrides)
        settings = Settings(**values)
        loop = asyncio.get_running_loop()
        registry = FolderRegistry(registry_dir, secrets_namespace=settings.secrets_namespace)
        if start_registry:
            await registry.start()
        cleanups.append(registry.stop)
        log = io.StringIO()
        control = setup_logging("info", log)
        upstream = Upstream(loop)
        tls = TlsContexts()
        metrics = Metrics()
        caller_auth = None
        if caller_tokens is not None:
            tokens_file = registry_dir.parent / "caller-tokens.yaml"
            tokens_file.write_text(caller_tokens)
            caller_auth = TokensCallerAuth(tokens_file, metrics=metrics)
            await caller_auth.start()
            cleanups.append(caller_auth.stop)
        forwarder = Forwarder(
            registry=registry,
            upstream=upstream,
            tls=tls,
            settings=settings,
            access_log=AccessLog(log, control),
            metrics=metrics,
            auth=make_deps(
                upstream=upstream,
                tls=tls,
                metrics=metrics,
                clock=time.monotonic,
                proxy_timeout=settings.proxy_timeout,
                token_default_ttl=settings.token_default_ttl,
            ),
            clock=time.perf_counter,
            caller_auth=caller_auth,
        )
        registry.on_change = forwarder.on_registry_change
        ports: list[int] = []
        for handle in (forwarder.handle_proxy, forwarder.handle_compass):
            sock = _listening_socket()
            tracker = ConnectionTracker()
            server = await serve(
                loop,
                handle,
                sock,
                request_timeout=settings.request_timeout,
                idle_timeout=settings.idle_timeout,
                tracker=tracker,
            )
            ports.append(sock.getsockname()[1])

            async def stop(
                server: asyncio.Server = server, tracker: ConnectionTracker = tracker
            ) -> None:
                server.close()
                tracker.abort_all()
                await server.wait_closed()

            cleanups.append(stop)

        async def close_rest() -> None:
            upstream.close()
            control.close()

        cleanups.append(close_rest)
        return Rig(api, ports[0], ports[1], metrics, log, clients, forwarder)

    yield make
    for cleanup in reversed(cleanups):
        await cleanup()
    await asyncio.sleep(0.01)
    root.setLevel(level)


@pytest.fixture
async def rig(make_rig: MakeRig) -> Rig:
    return await make_rig()


# -- the fast path (a pooled connection at hand: no task until something is unusual) -------------

Second = Callable[[Connection, Seen], Awaitable[None]]


def after_warmup(second: Second) -> Handler:
    """Answer a connection's first request normally, then play `second` on its next one.

    The first call of a test warms the gateway's pool, so the call after it is sent on that
    pooled connection, which is the fast path's precondition; `rig.api.connections` tells.
    """

    async def handler(conn: Connection) -> None:
        if await conn.request() is None:
            return
        await conn.send(response(200, b"warm"))
        seen = await conn.request()
        if seen is not None:
            await second(conn, seen)

    return handler


async def warm(rig: Rig, target: str = "/shop/orders/warm") -> None:
    first = await rig.call("GET", target)
    assert (first.status, first.body) == (200, b"warm")


def access_for(rig: Rig, path: str) -> dict[str, Any]:
    (line,) = [line for line in rig.access() if line["path"] == path]
    return line
