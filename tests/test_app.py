"""The composition root in-process: listeners on port 0, readiness, stop, and socket binding."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from appgateway.app import Gateway, Listeners, StartupError, bind_socket, make_registry
from appgateway.config import ConfigurationError, Settings
from appgateway.logs import LogControl, setup_logging
from appgateway.registry import RegistryError
from appgateway.registry.folder import FolderRegistry
from tests.conftest import ClientFactory, ServerFactory, write_registry

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def log() -> Iterator[tuple[LogControl, io.StringIO]]:
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    control = setup_logging("info", stream)
    yield control, stream
    control.close()
    root.setLevel(level)


def settings_for(registry: Path | None, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "registry": registry,
        "proxy_port": 0,
        "proxy_port_compass": 0,
        "admin_port": 0,
        "shutdown_timeout": 1.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class Running:
    """A Gateway.run() task plus what its `on_listening` callback reported."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.ports: dict[str, int] = {}
        self.calls: list[tuple[str, int]] = []
        self.all_listening = asyncio.Event()
        gateway.on_listening = self._listening
        self.task = asyncio.get_running_loop().create_task(gateway.run())

    def _listening(self, name: str, port: int) -> None:
        self.calls.append((name, port))
        self.ports[name] = port
        if len(self.ports) == 3:
            self.all_listening.set()

    async def started(self) -> None:
        waiter = asyncio.ensure_future(self.all_listening.wait())
        done, _ = await asyncio.wait({waiter, self.task}, timeout=10, return_when="FIRST_COMPLETED")
        if self.task in done:
            waiter.cancel()
            self.task.result()  # re-raise the startup failure
        assert waiter in done, "the gateway did not start listening"


@pytest.fixture
async def running() -> AsyncIterator[list[Running]]:
    """Started gateways, stopped at teardown if a test left one running."""
    started: list[Running] = []
    yield started
    for run in started:
        if not run.task.done():
            run.gateway.stop_event.set()
            await asyncio.wait_for(run.task, 10)


async def http_get(port: int, path: str, clients: ClientFactory) -> tuple[int, bytes]:
    client = await clients(port)
    resp = await client.request("GET", path, [("Host", "127.0.0.1")])
    return resp.status, resp.body


async def test_run_serves_and_stops(
    tmp_path: Path,
    log: tuple[LogControl, io.StringIO],
    servers: ServerFactory,
    clients: ClientFactory,
    running: list[Running],
) -> None:
    control, stream = log
    api = await servers()
    write_registry(tmp_path, api.base)
    gateway = Gateway(settings_for(tmp_path), control)
    run = Running(gateway)
    running.append(run)
    await run.started()
    assert [name for name, _ in run.calls] == ["admin", "proxy", "compass"]
    assert all(port > 0 for _, port in run.calls) and len(set(run.ports.values())) == 3
    assert gateway.ports == run.ports
    assert gateway.ready()

    assert await http_get(run.ports["admin"], "/v1/ready", clients) == (200, b"")
    assert (await http_get(run.ports["proxy"], "/shop/orders/x", clients))[0] == 200
    compass = await http_get(run.ports["compass"], "/shop/orders/orders-entry/y", clients)
    assert compass[0] == 200
    assert [r.target for r in api.requests] == ["/api/x", "/api/y"]
    status, metrics = await http_get(run.ports["admin"], "/metrics", clients)
    assert status == 200 and b"appgateway_requests_total" in metrics
    # The registry gauges describe the loaded snapshot (one Application, its APIs).
    assert b"\nappgateway_registry_applications 1.0\n" in metrics
    assert b"\nappgateway_registry_apis 0.0\n" not in metrics
    assert b'appgateway_registry_reloads_total{result="ok"}' in metrics

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    listening = [line for line in lines if line["msg"] == "listening"]
    assert {(line["listener"], line["port"]) for line in listening} == set(run.calls)

    gateway.request_stop()
    assert await asyncio.wait_for(run.task, 10) == 0
    assert not gateway.ready() and gateway.shutting_down
    for port in run.ports.values():
        with pytest.raises(OSError):
            await clients(port)


async def test_ready_drops_while_draining(
    tmp_path: Path,
    log: tuple[LogControl, io.StringIO],
    servers: ServerFactory,
    clients: ClientFactory,
    running: list[Running],
) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(seen: object) -> bytes:
        arrived.set()
        await release.wait()
        return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow"

    api = await servers(slow)
    write_registry(tmp_path, api.base)
    gateway = Gateway(settings_for(tmp_path, shutdown_timeout=5.0), log[0])
    run = Running(gateway)
    running.append(run)
    await run.started()
    caller = await clients(run.ports["proxy"])
    await caller.send(b"GET /shop/orders/slow HTTP/1.1\r\nHost: gw\r\n\r\n")
    await asyncio.wait_for(arrived.wait(), 5)
    gateway.request_stop()
    await asyncio.sleep(0.1)
    assert not gateway.ready()
    status, body = await http_get(run.ports["admin"], "/v1/ready", clients)
    assert status == 503 and json.loads(body) == {"code": 503, "error": "not ready"}
    assert not run.task.done()  # the in-flight request holds the drain
    release.set()
    resp = await caller.response()
    assert (resp.status, resp.body) == (200, b"slow")
    assert await asyncio.wait_for(run.task, 10) == 0


async def test_handed_in_listeners_are_used(
    tmp_path: Path, log: tuple[LogControl, io.StringIO], running: list[Running]
) -> None:
    write_registry(tmp_path, "http://127.0.0.1:9")
    proxy = bind_socket("127.0.0.1", 0, reuse_port=True)
    compass = bind_socket("127.0.0.1", 0, reuse_port=True)
    expected = {"proxy": proxy.getsockname()[1], "compass": compass.getsockname()[1]}
    settings = settings_for(tmp_path, proxy_port=1, proxy_port_compass=2)  # must be ignored
    gateway = Gateway(settings, log[0], listeners=Listeners(proxy=proxy, compass=compass))
    run = Running(gateway)
    running.append(run)
    await run.started()
    assert {k: run.ports[k] for k in ("proxy", "compass")} == expected
    gateway.request_stop()
    assert await asyncio.wait_for(run.task, 10) == 0


async def test_admin_host_binds_only_the_admin_listener(
    tmp_path: Path,
    log: tuple[LogControl, io.StringIO],
    clients: ClientFactory,
    running: list[Running],
) -> None:
    """--admin-host moves the admin listener off --host; the proxy listeners stay."""
    control, stream = log
    write_registry(tmp_path, "http://127.0.0.1:9")
    gateway = Gateway(settings_for(tmp_path, admin_host="127.0.0.2"), control)
    run = Running(gateway)
    running.append(run)
    await run.started()
    admin = run.ports["admin"]
    reader, writer = await asyncio.open_connection("127.0.0.2", admin)
    writer.write(b"GET /v1/health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200 ")
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", admin)
    assert (await http_get(run.ports["proxy"], "/nowhere/x", clients))[0] == 404
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    addresses = {line["listener"]: line["address"] for line in lines if line["msg"] == "listening"}
    assert addresses == {"admin": "127.0.0.2", "proxy": "127.0.0.1", "compass": "127.0.0.1"}
    gateway.request_stop()
    assert await asyncio.wait_for(run.task, 10) == 0


async def test_admin_listener_closes_silent_connections_after_request_timeout(
    tmp_path: Path,
    log: tuple[LogControl, io.StringIO],
    clients: ClientFactory,
    running: list[Running],
) -> None:
    write_registry(tmp_path, "http://127.0.0.1:9")
    gateway = Gateway(settings_for(tmp_path, request_timeout=0.5), log[0])
    run = Running(gateway)
    running.append(run)
    await run.started()
    silent = await clients(run.ports["admin"])
    start = asyncio.get_running_loop().time()
    assert await silent.eof(5) == b""
    assert 0.4 <= asyncio.get_running_loop().time() - start <= 1.5
    gateway.request_stop()
    assert await asyncio.wait_for(run.task, 10) == 0


async def test_missing_registry_folder_fails_before_listening(
    tmp_path: Path, log: tuple[LogControl, io.StringIO]
) -> None:
    calls: list[tuple[str, int]] = []
    gateway = Gateway(
        settings_for(tmp_path / "missing"), log[0], on_listening=lambda n, p: calls.append((n, p))
    )
    with pytest.raises(RegistryError):
        await gateway.run()
    assert calls == [] and not gateway.ready()


async def test_proxy_port_in_use_is_a_startup_error(
    tmp_path: Path, log: tuple[LogControl, io.StringIO]
) -> None:
    write_registry(tmp_path, "http://127.0.0.1:9")
    taken = bind_socket("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        gateway = Gateway(settings_for(tmp_path, proxy_port=port), log[0])
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port}"):
            await gateway.run()
    finally:
        taken.close()


# -- bind_socket and make_registry ---------------------------------------------------------------


def test_bind_socket_listens_on_an_ephemeral_port() -> None:
    sock = bind_socket("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        assert port > 0 and not sock.getblocking()
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # accepted into the backlog: the socket listens
    finally:
        sock.close()


def test_bind_socket_on_a_port_in_use_raises_startup_error() -> None:
    first = bind_socket("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(StartupError) as info:
            bind_socket("127.0.0.1", port)
        assert str(info.value).startswith(f"cannot listen on 127.0.0.1:{port}: ")
        with pytest.raises(StartupError):
            bind_socket("127.0.0.1", port, reuse_port=True)  # the holder did not share
    finally:
        first.close()


def test_bind_socket_reuse_port_shares_a_port() -> None:
    first = bind_socket("127.0.0.1", 0, reuse_port=True)
    try:
        second = bind_socket("127.0.0.1", first.getsockname()[1], reuse_port=True)
        second.close()
    finally:
        first.close()


def test_make_registry(tmp_path: Path) -> None:
    cleanup: list[Callable[[], None]] = []
    registry = make_registry(settings_for(tmp_path), cleanup)
    assert isinstance(registry, FolderRegistry) and cleanup == []
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("appgateway-demo-*"))
    demo = make_registry(settings_for(None), cleanup)
    (folder,) = set(temp.glob("appgateway-demo-*")) - before
    assert isinstance(demo, FolderRegistry) and len(cleanup) == 1
    assert "kind: Application" in (folder / "demo.yaml").read_text()
    for fn in cleanup:
        fn()
    assert not folder.exists()
    with pytest.raises(ConfigurationError):
        make_registry(Settings(kubernetes=True), [])
