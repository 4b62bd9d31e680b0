"""Process lifecycle: exit statuses, workers, readiness and the SIGTERM drain."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import (
    REPO,
    Client,
    Doc,
    GatewayFactory,
    MockUpstream,
    Response,
    api,
    application,
    gateway_environment,
    request,
    service,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


def docs(u: str) -> list[Doc]:
    return [application("life", [service("svc", [api(u)])])]


def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "appgateway", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        cwd=REPO,
        env=gateway_environment(),
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--no-such-flag"],
        ["serve", "--proxy-port", "not-a-number"],
        ["serve", "--proxy-timeout", "-1"],
        ["no-such-command"],
        [],
    ],
)
def test_usage_error_exits_2(args: list[str]) -> None:
    assert run_cli(*args).returncode == 2


def test_missing_registry_folder_exits_2(tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        "--registry",
        str(tmp_path / "missing"),
        "--proxy-port",
        "0",
        "--proxy-port-compass",
        "0",
        "--admin-port",
        "0",
    )
    assert result.returncode == 2, result.stderr


def test_registry_with_kubernetes_exits_2(tmp_path: Path) -> None:
    result = run_cli("serve", "--registry", str(tmp_path), "--kubernetes")
    assert result.returncode == 2, result.stderr


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "serve",
            "--registry",
            str(tmp_path),
            "--proxy-port",
            str(port),
            "--proxy-port-compass",
            "0",
            "--admin-port",
            "0",
        )
    assert result.returncode == 1, result.stderr


def test_sigterm_exits_0(gateway_factory: GatewayFactory, upstream: MockUpstream) -> None:
    gateway = gateway_factory(docs(upstream.base))
    assert request(gateway.proxy_port, "GET", "/life/svc/x").status == 200
    assert gateway.stop() == 0


def test_admin_health_and_ready(gateway_factory: GatewayFactory, upstream: MockUpstream) -> None:
    gateway = gateway_factory(docs(upstream.base))
    health = request(gateway.admin_port, "GET", "/v1/health")
    assert (health.status, health.body) == (200, b"")
    ready = request(gateway.admin_port, "GET", "/v1/ready")
    assert (ready.status, ready.body) == (200, b"")


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_two_workers_serve_requests(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gateway = gateway_factory(docs(upstream.base), ["--workers", "2"])

    def ready() -> bool:
        return request(gateway.admin_port, "GET", "/v1/ready").status == 200

    assert wait_until(ready, 15, 0.2) is not None, gateway.stderr_text()
    workers = [
        pid
        for pid in _children(gateway.pid)
        if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(workers) == 2, workers
    statuses = [request(gateway.proxy_port, "GET", f"/life/svc/w{i}").status for i in range(40)]
    assert statuses == [200] * 40
    assert request(gateway.compass_port, "GET", "/life/svc/api/c").status == 200
    assert len(upstream.matching("/w")) == 40
    assert gateway.stop() == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)


def _workers(pid: int) -> list[int]:
    return [
        child
        for child in _children(pid)
        if b"worker" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def _merged(admin_port: int) -> dict[str, float]:
    """Sums over all label sets of the merged request counter and duration histogram count."""
    response = request(admin_port, "GET", "/metrics", timeout=20)
    assert response.status == 200
    totals = {"requests": 0.0, "durations": 0.0}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            if sample.name == "appgateway_requests_total":
                totals["requests"] += sample.value
            elif sample.name == "appgateway_request_duration_seconds_count":
                totals["durations"] += sample.value
    return totals


def test_merged_counters_survive_a_killed_and_a_silent_worker(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    """A worker killed between two scrapes, restarted from 0, and a worker too stopped to
    answer a scrape: the supervisor's merged counters stay where they were."""
    gateway = gateway_factory(docs(upstream.base), ["--workers", "2"])

    def ready() -> bool:
        return request(gateway.admin_port, "GET", "/v1/ready").status == 200

    assert wait_until(ready, 20, 0.2) is not None, gateway.stderr_text()
    first, second = _workers(gateway.pid)
    # New connections each: the kernel spreads them over both workers (all 40 on one worker
    # has a probability of 2**-39).
    statuses = [request(gateway.proxy_port, "GET", f"/life/svc/a{i}").status for i in range(40)]
    assert statuses == [200] * 40
    assert _merged(gateway.admin_port) == {"requests": 40, "durations": 40}

    os.kill(first, signal.SIGKILL)
    assert _merged(gateway.admin_port) == {"requests": 40, "durations": 40}

    def replaced() -> bool:
        workers = _workers(gateway.pid)
        return len(workers) == 2 and first not in workers and ready()

    assert wait_until(replaced, 20, 0.2) is not None, gateway.stderr_text()
    assert _merged(gateway.admin_port) == {"requests": 40, "durations": 40}
    statuses = [request(gateway.proxy_port, "GET", f"/life/svc/b{i}").status for i in range(10)]
    assert statuses == [200] * 10
    assert _merged(gateway.admin_port) == {"requests": 50, "durations": 50}

    os.kill(second, signal.SIGSTOP)  # alive but silent: its scrape times out
    try:
        assert _merged(gateway.admin_port) == {"requests": 50, "durations": 50}
    finally:
        os.kill(second, signal.SIGCONT)
    assert _merged(gateway.admin_port) == {"requests": 50, "durations": 50}
    assert gateway.stop() == 0


def test_worker_crash_loop_exits_1(
    gateway_factory: GatewayFactory, upstream: MockUpstream, tmp_path: Path
) -> None:
    """Workers that die at every start: after --worker-crash-limit crashes the supervisor
    stops restarting them and exits 1 instead of staying up, healthy and useless."""
    gateway = gateway_factory(docs(upstream.base), ["--workers", "2", "--worker-crash-limit", "2"])

    def ready() -> bool:
        return request(gateway.admin_port, "GET", "/v1/ready").status == 200

    assert wait_until(ready, 20, 0.2) is not None, gateway.stderr_text()
    gateway.registry.rename(tmp_path / "moved")  # each new worker now fails at load
    for pid in _workers(gateway.pid):
        os.kill(pid, signal.SIGKILL)
    assert gateway.wait(30) == 1, gateway.stderr_text()
    messages = [line.get("msg") for line in gateway.logs]
    assert messages.count("worker exited; restarting") >= 2
    assert any(str(m).startswith("worker crash loop: giving up") for m in messages)
    assert "stopped: a worker kept crashing" in messages


def _state(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("State:"):
            return line
    return ""


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_drains_in_flight_request(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gateway = gateway_factory(docs(upstream.base), ["--shutdown-timeout", "8"])
    results: list[Response | BaseException] = []

    def call() -> None:
        try:
            results.append(request(gateway.proxy_port, "GET", "/life/svc/delay/3", timeout=10))
        except BaseException as exc:  # reported by the assertions below
            results.append(exc)

    caller = threading.Thread(target=call)
    try:
        with Client(gateway.proxy_port) as idle:
            assert idle.request("GET", "/life/svc/idle").status == 200
            caller.start()
            assert wait_until(lambda: bool(upstream.matching("/delay/")), 5) is not None
            gateway.sigterm()
            sent = time.monotonic()

            def not_ready() -> bool:
                return request(gateway.admin_port, "GET", "/v1/ready").status == 503

            assert wait_until(not_ready, 2) is not None
            answer = request(gateway.admin_port, "GET", "/v1/ready")
            assert answer.json() == {"code": 503, "error": "not ready"}
            assert wait_until(lambda: _refused(gateway.proxy_port), 2) is not None
            assert idle.closed_within(2), "idle keep-alive connection not closed on SIGTERM"
    finally:
        if caller.ident is not None:
            caller.join(10)

    assert len(results) == 1
    response = results[0]
    assert isinstance(response, Response), response
    assert response.status == 200
    assert response.json()["target"] == "/delay/3"
    assert gateway.wait(10) == 0
    assert time.monotonic() - sent < 8
