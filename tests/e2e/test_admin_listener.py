"""The admin listener under hostile callers (issue 13, items 8 and 9), against a real process.

Silent and half-sent connections are closed after `--request-timeout`; a flood of them under
a low file-descriptor limit keeps at most the cap open, so proxy traffic and health checks
(new and already open) go on; `--admin-host` moves only the admin listener; every level change
is logged at warn with the caller's address, with one process and with `--workers`.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from appgateway.admin import MAX_CONNECTIONS
from tests.e2e.conftest import (
    Client,
    Doc,
    Gateway,
    GatewayFactory,
    MockUpstream,
    api,
    application,
    request,
    service,
    wait_until,
    write_manifest,
)

pytestmark = pytest.mark.timeout(90)

FD_LIMIT = 256
"""The limit the review's flood broke the gateway at (300 silent connections)."""


def docs(base: str) -> list[Doc]:
    return [application("adm", [service("svc", [api(base)])])]


class LimitedGateway(Gateway):
    """The gateway with RLIMIT_NOFILE lowered before it starts (set, then exec)."""

    def command(self) -> list[str]:
        setup = (
            "import os, resource, sys; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, {FD_LIMIT})); "
            "os.execv(sys.argv[1], sys.argv[1:])"
        )
        return [sys.executable, "-c", setup, *super().command()]


@contextlib.contextmanager
def limited_gateway(folder: Path, base: str, args: Sequence[str]) -> Iterator[Gateway]:
    folder.mkdir()
    write_manifest(folder, "apps.yaml", docs(base))
    gateway = LimitedGateway(folder, args)
    try:
        yield gateway.start()
    finally:
        gateway.close()


def connect(port: int, host: str = "127.0.0.1", source: str | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(5)
        if source is not None:
            sock.bind((source, 0))
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def open_at_peer(sock: socket.socket) -> bool:
    """Whether the gateway still holds this connection (no FIN or RST has arrived)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return True
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except ConnectionError:
        return False


def closed_after(sock: socket.socket, within: float) -> float | None:
    """Seconds until the gateway closed `sock`, or None if it stayed open `within` seconds."""
    start = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return time.monotonic() - start


def raw_exchange(sock: socket.socket, data: bytes) -> bytes:
    """Send one request with `Connection: close` and read to EOF."""
    sock.sendall(data)
    out = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            out += chunk
    return bytes(out)


def put_level(level: str) -> bytes:
    body = b'{"level":"%s"}' % level.encode()
    return (
        b"PUT /v1/loglevel HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- item 8: deadlines ---------------------------------------------------------------------------


def test_silent_and_half_sent_admin_connections_are_closed(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gateway = gateway_factory(docs(upstream.base), ["--request-timeout", "1"])
    silent = connect(gateway.admin_port)
    half = connect(gateway.admin_port)
    half.sendall(b"GET /v1/health HTTP/1.1\r\nHost: admin\r\n")  # the head never ends
    trickle = connect(gateway.admin_port)
    trickle.sendall(b"GET /v1/health HTTP/1.1\r\nHost: admin\r\nX-Slow: ")
    start = time.monotonic()
    trickle_closed: float | None = None
    while time.monotonic() - start < 4:  # a byte every 0.1 s does not extend the deadline
        try:
            trickle.sendall(b"a")
        except ConnectionError:
            pass
        if not open_at_peer(trickle):
            trickle_closed = time.monotonic() - start
            break
        time.sleep(0.1)
    assert trickle_closed is not None and trickle_closed < 2.0
    for sock in (silent, half):
        waited = closed_after(sock, 4)
        assert waited is not None, "the gateway kept a silent admin connection"
        assert time.monotonic() - start >= 0.8  # the deadline, not an instant close
        sock.close()
    trickle.close()
    # A keep-alive health check that keeps asking is not cut.
    with Client(gateway.admin_port) as checker:
        for _ in range(8):
            assert checker.request("GET", "/v1/health").status == 200
            time.sleep(0.25)


class HealthChecker(threading.Thread):
    """A keep-alive health check every 0.25 s on one connection, as a monitor would run it."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.client = Client(port, timeout=5)
        self.statuses: list[int | str] = []
        self.stop = threading.Event()
        self.answered = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.statuses.append(self.client.request("GET", "/v1/health").status)
            except (OSError, ConnectionError, AssertionError) as exc:
                self.statuses.append(type(exc).__name__)
                return
            finally:
                self.answered.set()
            self.stop.wait(0.25)

    def finish(self) -> list[int | str]:
        self.stop.set()
        self.join(10)
        self.client.close()
        return self.statuses


def test_admin_flood_under_a_low_fd_limit_spares_proxy_and_health(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    with limited_gateway(tmp_path / "registry", upstream.base, ["--request-timeout", "3"]) as gw:
        assert f"Max open files            {FD_LIMIT}" in Path(f"/proc/{gw.pid}/limits").read_text()
        baseline = fd_count(gw.pid)
        checker = HealthChecker(gw.admin_port)  # a keep-alive health check already running
        checker.start()
        assert checker.answered.wait(5)
        flood: list[socket.socket] = []
        try:
            started = time.monotonic()
            peak = baseline
            for _ in range(300):
                flood.append(connect(gw.admin_port))
                peak = max(peak, fd_count(gw.pid))
            flooding = time.monotonic() - started
            proxied = request(gw.proxy_port, "GET", "/adm/svc/during-flood", timeout=5)
            assert proxied.status == 200
            assert upstream.only("/during-flood").method == "GET"
            assert request(gw.admin_port, "GET", "/v1/health", timeout=5).status == 200
            assert request(gw.admin_port, "GET", "/v1/ready", timeout=5).status == 200
            # Beyond the cap the longest-silent connections were closed at once.
            settled = wait_until(
                lambda: sum(open_at_peer(s) for s in flood) <= MAX_CONNECTIONS, 3, 0.05
            )
            assert settled is not None, sum(open_at_peer(s) for s in flood)
            assert peak <= baseline + MAX_CONNECTIONS + 8, (baseline, peak)
            # The rest are closed by the deadline.
            cleared = wait_until(lambda: not any(open_at_peer(s) for s in flood), 6, 0.1)
            assert cleared is not None
        finally:
            for sock in flood:
                sock.close()
            statuses = checker.finish()
        assert len(statuses) >= 4 and set(statuses) == {200}, statuses
        assert request(gw.proxy_port, "GET", "/adm/svc/after", timeout=5).status == 200
        print(
            f"\nadmin flood: 300 silent connections in {flooding:.2f} s; gateway fds "
            f"{baseline} before, at most {peak} during; {len(statuses)} health checks all 200"
        )


# -- item 9: --admin-host and the audit line ----------------------------------------------------


def _audit(gateway: Gateway, peer: str) -> dict[str, object] | None:
    return gateway.wait_log(
        lambda line: line.get("msg") == "log level changed" and line.get("peer") == peer, 5
    )


def test_level_change_is_logged_with_the_peer(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gateway = gateway_factory(docs(upstream.base))
    sock = connect(gateway.admin_port, source="127.0.0.3")
    port = sock.getsockname()[1]
    answer = raw_exchange(sock, put_level("error"))
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"level":"error"}\n')
    line = _audit(gateway, "127.0.0.3")
    assert line is not None, gateway.stderr_text()
    assert (line["level"], line["old_level"], line["new_level"], line["peer_port"]) == (
        "warn",
        "info",
        "error",
        port,
    )


def test_workers_admin_host_and_audit(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gateway = gateway_factory(
        docs(upstream.base),
        ["--workers", "2", "--admin-host", "127.0.0.2", "--request-timeout", "2"],
    )
    listening = {
        line["listener"]: line["address"]
        for line in gateway.logs
        if line.get("msg") == "listening" and line.get("port") == gateway.ports[line["listener"]]
    }
    assert listening == {"admin": "127.0.0.2", "proxy": "127.0.0.1", "compass": "127.0.0.1"}
    with pytest.raises(ConnectionRefusedError):
        connect(gateway.admin_port).close()

    def ready() -> bool:
        with connect(gateway.admin_port, "127.0.0.2") as sock:
            reply = raw_exchange(
                sock, b"GET /v1/ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
        return reply.startswith(b"HTTP/1.1 200 ")

    assert wait_until(ready, 20, 0.2) is not None, gateway.stderr_text()
    sock = connect(gateway.admin_port, "127.0.0.2", source="127.0.0.3")
    port = sock.getsockname()[1]
    assert raw_exchange(sock, put_level("warn")).endswith(b'{"level":"warn"}\n')
    sock.close()
    line = _audit(gateway, "127.0.0.3")
    assert line is not None, gateway.stderr_text()
    assert (line["level"], line["old_level"], line["new_level"], line["peer_port"]) == (
        "warn",
        "info",
        "warn",
        port,
    )
    assert request(gateway.proxy_port, "GET", "/adm/svc/w").status == 200
    # The supervisor's admin listener has the same deadline.
    silent = connect(gateway.admin_port, "127.0.0.2")
    waited = closed_after(silent, 5)
    silent.close()
    assert waited is not None and 1.5 <= waited <= 4
