"""Composition root: builds every part of a gateway process and runs its lifespan.

Order matters and is kept here only: the registry's first load finishes before any listener
opens; on SIGTERM readiness drops first, the proxy listeners stop accepting, in-flight
requests drain for `--shutdown-timeout`, and the admin listener closes last.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from appgateway.admin import make_admin_app, start_admin
from appgateway.auth import make_deps
from appgateway.caller import make_caller_auth
from appgateway.config import ConfigurationError, Settings, environ_proxies
from appgateway.connections import ConnectionTracker
from appgateway.demo.api import default_registry_text
from appgateway.forward import Forwarder
from appgateway.logs import AccessLog, LogControl
from appgateway.metrics import Metrics
from appgateway.proxy import ProxyConfig
from appgateway.registry import Registry
from appgateway.registry.folder import FolderRegistry
from appgateway.registry.snapshot import Snapshot
from appgateway.server import serve
from appgateway.tls import TlsContexts
from appgateway.upstream import Upstream

log = logging.getLogger("appgateway")


class StartupError(Exception):
    """A failure to start that is not a usage error (port in use): exit status 1."""


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket; `reuse_port` lets several workers share one port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve listen address {host!r}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@dataclass
class Listeners:
    """Proxy sockets handed in by the supervisor (workers), or bound here."""

    proxy: socket.socket | None = None
    compass: socket.socket | None = None
    extra: list[Callable[[], None]] = field(default_factory=list)


def outbound_proxies() -> ProxyConfig:
    """HTTP_PROXY, HTTPS_PROXY and NO_PROXY, for every outbound call (the API server's too)."""
    try:
        return ProxyConfig.from_environment(environ_proxies())
    except ValueError as exc:
        raise ConfigurationError(f"HTTP_PROXY/HTTPS_PROXY: {exc}") from None


def make_registry(
    settings: Settings,
    stack_cleanup: list[Callable[[], None]],
    proxies: ProxyConfig | None = None,
) -> Registry:
    if settings.kubernetes:
        from appgateway.registry.kubernetes import KubernetesRegistry

        return KubernetesRegistry.from_settings(settings, proxies)
    path = settings.registry
    if path is None:
        folder = tempfile.TemporaryDirectory(prefix="appgateway-demo-")
        Path(folder.name, "demo.yaml").write_text(default_registry_text())
        stack_cleanup.append(folder.cleanup)
        path = Path(folder.name)
    return FolderRegistry(
        path,
        secrets_namespace=settings.secrets_namespace,
        max_file_size=settings.manifest_size_limit,
    )


class Gateway:
    """One gateway process (or one worker)."""

    def __init__(
        self,
        settings: Settings,
        log_control: LogControl,
        *,
        listeners: Listeners | None = None,
        admin_host: str | None = None,
        on_listening: Callable[[str, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.log_control = log_control
        self.listeners = listeners or Listeners()
        self.admin_host = admin_host or settings.admin_address
        self.on_listening = on_listening
        self.metrics = Metrics()
        self.shutting_down = False
        self.stop_event = asyncio.Event()
        self.registry: Registry | None = None
        self.ports: dict[str, int] = {}
        self._refused_logged_at = -1e9
        self._refused_since_log = 0

    def ready(self) -> bool:
        return not self.shutting_down and self.registry is not None and self.registry.ready

    def request_stop(self) -> None:
        if self.shutting_down:
            log.warning("second signal: exiting at once")
            os._exit(1)
        self.stop_event.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        settings = self.settings
        cleanup: list[Callable[[], None]] = []
        async with AsyncExitStack() as stack:
            stack.callback(lambda: [fn() for fn in reversed(cleanup)])
            proxies = outbound_proxies()
            registry = make_registry(settings, cleanup, proxies)
            self.registry = registry
            await registry.start()
            stack.push_async_callback(registry.stop)

            tls = TlsContexts()
            upstream = Upstream(loop, proxies)
            stack.callback(upstream.close)
            access = AccessLog(sys.stderr.fileno(), self.log_control, loop)
            stack.callback(access.flush)
            auth = make_deps(
                upstream=upstream,
                tls=tls,
                metrics=self.metrics,
                clock=time.monotonic,
                proxy_timeout=settings.proxy_timeout,
                token_default_ttl=settings.token_default_ttl,
            )
            caller_auth = make_caller_auth(settings, self.metrics)
            if caller_auth is not None:
                await caller_auth.start()
                stack.push_async_callback(caller_auth.stop)
            forwarder = Forwarder(
                registry=registry,
                upstream=upstream,
                tls=tls,
                settings=settings,
                access_log=access,
                metrics=self.metrics,
                auth=auth,
                clock=time.perf_counter,
                caller_auth=caller_auth,
            )

            def on_change(snapshot: Snapshot) -> None:
                self._observe_registry(snapshot)
                forwarder.on_registry_change(snapshot)
                tls.retain([cert.fingerprint for cert in snapshot.client_certs()])

            registry.on_change = on_change
            if registry.ready:  # else the first load is still to come, through on_change
                self._observe_registry(registry.snapshot())

            admin_app = make_admin_app(
                ready=self.ready,
                log_control=self.log_control,
                metrics_text=self.metrics.render,
            )
            runner, admin_port = await start_admin(
                admin_app,
                self.admin_host,
                settings.admin_port,
                phase_timeout=settings.request_timeout,
            )
            stack.push_async_callback(runner.cleanup)
            self._listening("admin", self.admin_host, admin_port)

            # One tracker for both proxy listeners: --max-connections caps them together.
            tracker = ConnectionTracker(settings.max_connections, self._refused)
            self.metrics.open_connections.set_function(lambda: len(tracker.connections))
            trackers = [tracker]
            servers: list[asyncio.Server] = []
            for name, sock, port, handler in (
                ("proxy", self.listeners.proxy, settings.proxy_port, forwarder.handle_proxy),
                (
                    "compass",
                    self.listeners.compass,
                    settings.proxy_port_compass,
                    forwarder.handle_compass,
                ),
            ):
                if sock is None:
                    sock = bind_socket(settings.host, port)
                server = await serve(
                    loop,
                    handler,
                    sock,
                    request_timeout=settings.request_timeout,
                    idle_timeout=settings.idle_timeout,
                    tracker=tracker,
                    body_min_rate=settings.body_min_rate,
                    keepalive_timeout=settings.keepalive_timeout,
                )
                servers.append(server)
                self._listening(name, settings.host, sock.getsockname()[1])

            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.request_stop)
            await self.stop_event.wait()
            self.shutting_down = True
            log.info("shutting down", extra={"fields": {"timeout_s": settings.shutdown_timeout}})
            for server in servers:
                server.close()
            await self._drain(trackers, settings.shutdown_timeout)
            for server in servers:
                await server.wait_closed()
        log.info("stopped")
        return 0

    async def _drain(self, trackers: list[ConnectionTracker], grace: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        for tracker in trackers:
            tracker.draining = True
        while loop.time() < deadline:
            for tracker in trackers:
                tracker.close_idle()
            if not any(t.busy for t in trackers):
                break
            await asyncio.sleep(0.05)
        for tracker in trackers:
            tracker.abort_all()

    def _refused(self, open_connections: int) -> None:
        """At --max-connections: count every refusal, log at most one line per 10 s."""
        self.metrics.connections_refused.inc()
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._refused_logged_at >= 10.0:
            log.warning(
                "connection limit reached: refusing new caller connections",
                extra={
                    "fields": {
                        "max_connections": self.settings.max_connections,
                        "open": open_connections,
                        "refused": self._refused_since_log,
                    }
                },
            )
            self._refused_logged_at = now
            self._refused_since_log = 0

    def _observe_registry(self, snapshot: Snapshot) -> None:
        self.metrics.set_registry(
            apis=snapshot.api_count,
            applications=snapshot.application_count,
            errors=snapshot.error_count,
        )
        self.metrics.registry_reload("ok")

    def _listening(self, listener: str, host: str, port: int) -> None:
        self.ports[listener] = port
        log.info(
            "listening",
            extra={"fields": {"listener": listener, "address": host, "port": port}},
        )
        if self.on_listening is not None:
            self.on_listening(listener, port)
