"""`--workers N`: port reservation, and a real supervisor with two worker subprocesses."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appgateway.app import StartupError, bind_socket
from appgateway.config import Settings
from appgateway.logs import LogControl, setup_logging
from appgateway.supervisor import (
    CRASH_WINDOW,
    RESTART_BASE,
    RESTART_CAP,
    CrashHistory,
    Supervisor,
    reserve_port,
)
from tests.conftest import ClientFactory, Response, ServerFactory, write_registry


@pytest.fixture
def log() -> Iterator[tuple[LogControl, io.StringIO]]:
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    control = setup_logging("info", stream)
    yield control, stream
    control.close()
    root.setLevel(level)


# -- reserve_port ---------------------------------------------------------------------------------


def test_reserved_port_cannot_be_taken_by_a_plain_bind() -> None:
    reserved = reserve_port("127.0.0.1", 0)
    try:
        port = reserved.getsockname()[1]
        assert port > 0
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
    finally:
        reserved.close()


def test_reserved_port_cannot_be_taken_by_a_non_reuseport_listener() -> None:
    """SO_REUSEADDR alone (what most servers set, our own single-process bind included) must
    not take a port the supervisor holds while no worker listens on it."""
    reserved = reserve_port("127.0.0.1", 0)
    try:
        with pytest.raises(StartupError):
            bind_socket("127.0.0.1", reserved.getsockname()[1]).close()
    finally:
        reserved.close()


def test_workers_share_a_reserved_port() -> None:
    reserved = reserve_port("127.0.0.1", 0)
    try:
        port = reserved.getsockname()[1]
        first = bind_socket("127.0.0.1", port, reuse_port=True)
        second = bind_socket("127.0.0.1", port, reuse_port=True)
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # accepted by one of the workers' listening sockets
        first.close()
        second.close()
    finally:
        reserved.close()


def test_reserving_a_port_in_use_is_a_startup_error() -> None:
    holder = bind_socket("127.0.0.1", 0)
    try:
        port = holder.getsockname()[1]
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port}"):
            reserve_port("127.0.0.1", port)
    finally:
        holder.close()


# -- restart back-off ------------------------------------------------------------------------------


def test_restart_back_off_constants() -> None:
    assert (RESTART_BASE, RESTART_CAP, CRASH_WINDOW) == (1.0, 30.0, 300.0)


@pytest.mark.parametrize(
    ("limit", "crashes", "delays", "exhausted"),
    [
        (5, [0, 2, 5, 10], [1, 2, 4, 8], False),
        (5, [0, 2, 5, 10, 19], [1, 2, 4, 8, 16], True),
        (3, [0, 1.5, 4], [1, 2, 4], True),
        (0, [float(t) for t in range(0, 400, 40)], [1, 2, 4, 8, 16, 30, 30, 30, 30, 30], False),
        # A crash leaves the window CRASH_WINDOW after it happened: the delay shrinks again.
        (5, [0, 10, 20, 310, 325], [1, 2, 4, 2, 2], False),
        (5, [0, 1000, 2000, 3000, 4000, 5000], [1] * 6, False),
        (2, [0, 299.9], [1, 2], True),
        (2, [0, 300], [1, 1], False),
    ],
)
def test_crash_history(
    limit: int, crashes: list[float], delays: list[float], exhausted: bool
) -> None:
    history = CrashHistory(limit)
    got = [history.crashed(now) for now in crashes]
    assert got == delays
    assert history.exhausted is exhausted


# -- a real supervisor ---------------------------------------------------------------------------


async def _get(clients: ClientFactory, port: int, path: str) -> Response:
    client = await clients(port)
    return await client.request("GET", path, [("Host", "127.0.0.1")])


async def _until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _requests_total(text: bytes) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == "appgateway_requests_total":
                total += sample.value
    return total


@pytest.mark.timeout(60)
async def test_supervisor_runs_two_workers(
    tmp_path: Path,
    log: tuple[LogControl, io.StringIO],
    servers: ServerFactory,
    clients: ClientFactory,
) -> None:
    control, stream = log
    api = await servers()
    registry = write_registry(tmp_path / "registry", api.base)
    settings = Settings(
        registry=registry,
        proxy_port=0,
        proxy_port_compass=0,
        admin_port=0,
        workers=2,
        shutdown_timeout=1.0,
    )
    supervisor = Supervisor(settings, control)
    task = asyncio.get_running_loop().create_task(supervisor.run())
    try:
        ports: dict[str, int] = {}

        async def listening() -> bool:
            for line in stream.getvalue().splitlines():
                doc = json.loads(line)
                if doc.get("msg") == "listening":
                    ports[doc["listener"]] = doc["port"]
            if task.done():
                task.result()
            return len(ports) == 3

        await _until(listening, 10, "the listening lines")
        admin, proxy = ports["admin"], ports["proxy"]

        async def ready() -> bool:
            return (await _get(clients, admin, "/v1/ready")).status == 200

        await _until(ready, 20, "both workers to be ready")
        pids = {w.process.pid for w in supervisor.workers if w.process is not None}
        assert len(pids) == 2

        for index in range(6):  # new connections: the kernel spreads them over the workers
            resp = await _get(clients, proxy, f"/shop/orders/n{index}")
            assert resp.status == 200
        compass = await _get(clients, ports["compass"], "/shop/orders/orders-entry/c")
        assert compass.status == 200
        assert len(api.requests) == 7

        merged = await _get(clients, admin, "/metrics")
        assert merged.status == 200 and _requests_total(merged.body) == 7.0
        per_worker = 0.0
        for worker in supervisor.workers:
            assert worker.admin_port is not None
            per_worker += _requests_total((await _get(clients, worker.admin_port, "/metrics")).body)
        assert per_worker == 7.0

        client = await clients(admin)
        resp = await client.request(
            "PUT",
            "/v1/loglevel",
            [("Host", "127.0.0.1"), ("Content-Type", "application/json")],
            b'{"level":"WARN"}',
        )
        assert (resp.status, resp.json()) == (200, {"level": "warn"})
        for worker in supervisor.workers:
            assert worker.admin_port is not None
            level = await _get(clients, worker.admin_port, "/v1/loglevel")
            assert level.json() == {"level": "warn"}

        # A worker that dies is restarted; readiness follows it.
        victim = supervisor.workers[0]
        assert victim.process is not None
        old_pid = victim.process.pid
        victim.process.kill()

        async def restarted() -> bool:
            process = victim.process
            return process is not None and process.pid != old_pid and await ready()

        await _until(restarted, 20, "the worker restart")
    finally:
        supervisor.stop_event.set()
        assert await asyncio.wait_for(task, 20) == 0
    assert all(
        w.process is not None and w.process.returncode is not None for w in supervisor.workers
    )
    with pytest.raises(OSError):
        await clients(proxy)


def _restart_lines(stream: io.StringIO) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if str(line.get("msg", "")).startswith("worker ")]


@pytest.mark.timeout(90)
async def test_crash_looping_workers_back_off_and_the_supervisor_gives_up(
    tmp_path: Path, log: tuple[LogControl, io.StringIO], servers: ServerFactory
) -> None:
    """Workers that crash at load are restarted after 1 s, then 2 s; the third crash of one
    worker within the window makes the supervisor unhealthy and exit 1."""
    control, stream = log
    api = await servers()
    registry = write_registry(tmp_path / "registry", api.base)
    settings = Settings(
        registry=registry,
        proxy_port=0,
        proxy_port_compass=0,
        admin_port=0,
        workers=2,
        shutdown_timeout=1.0,
        worker_crash_limit=3,
    )
    supervisor = Supervisor(settings, control)
    loop = asyncio.get_running_loop()
    task = loop.create_task(supervisor.run())
    try:

        async def ready() -> bool:
            if task.done():
                task.result()
            return supervisor.ready()

        await _until(ready, 30, "both workers to be ready")
        # From now on a worker dies at load, as with a manifest that crashes the parser.
        registry.rename(tmp_path / "gone")
        started: dict[int, list[tuple[int, float]]] = {0: [], 1: []}
        for worker in supervisor.workers:
            assert worker.process is not None
            started[worker.index].append((worker.process.pid, loop.time()))
            os.kill(worker.process.pid, signal.SIGKILL)
        code = None
        deadline = loop.time() + 60
        while code is None and loop.time() < deadline:
            for worker in supervisor.workers:
                process = worker.process
                if process is not None and process.pid != started[worker.index][-1][0]:
                    started[worker.index].append((process.pid, loop.time()))
            if task.done():
                code = task.result()
            await asyncio.sleep(0.02)
    finally:
        if not task.done():
            supervisor.stop_event.set()
            await asyncio.wait_for(task, 20)
    assert code == 1
    assert supervisor.unhealthy() == "worker crash loop"
    for index, runs in started.items():
        # killed, restarted after >= 1 s, crashed at load, restarted after >= 2 s more
        assert 2 <= len(runs) <= 3, (index, runs)
        gaps = [b[1] - a[1] for a, b in zip(runs, runs[1:], strict=False)]
        assert gaps[0] >= RESTART_BASE - 0.05, gaps
        if len(gaps) > 1:
            assert gaps[1] >= 2 * RESTART_BASE, gaps
    lines = _restart_lines(stream)
    restarts = [line for line in lines if line["msg"] == "worker exited; restarting"]
    for index in (0, 1):
        delays = [line["retry_in_s"] for line in restarts if line["worker"] == index]
        assert delays in ([1.0], [1.0, 2.0]), delays
    (gave_up,) = [line for line in lines if str(line["msg"]).startswith("worker crash loop")]
    assert gave_up["level"] == "error"
    assert (gave_up["crashes"], gave_up["limit"], gave_up["window_s"]) == (3, 3, 300.0)
    assert all(
        w.process is not None and w.process.returncode is not None for w in supervisor.workers
    )
