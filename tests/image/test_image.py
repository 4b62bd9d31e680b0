"""The image built by `make image`, run the way deploy/base runs it: podman with runc and
cgroupfs, a read-only root filesystem, every capability dropped, user 10001, /tmp in memory.
It serves a mounted registry folder, proxies to an upstream on loopback, and stops cleanly on
SIGTERM within the pod's grace period.

`make image-test` runs these (marker `image`); `make test` leaves them out.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    MockUpstream,
    api,
    application,
    request,
    service,
    wait_until,
    write_manifest,
)
from tests.kube import free_port, unique

pytestmark = [pytest.mark.image, pytest.mark.timeout(600)]

IMAGE = os.environ.get("IMAGE", "localhost/appgateway:0.1.0")
PODMAN = [
    "podman",
    "--storage-driver",
    os.environ.get("STORAGE_DRIVER", "vfs"),
    "--runtime",
    "runc",
    "--cgroup-manager",
    "cgroupfs",
    "--events-backend",
    "file",
]
GRACE_PERIOD = 30.0
"""terminationGracePeriodSeconds of deploy/base/deployment.yaml."""
UID = 10001


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass
class Container:
    name: str
    proxy_port: int
    admin_port: int

    def inspect(self) -> dict[str, object]:
        result = podman("inspect", self.name)
        assert result.returncode == 0, result.stderr
        data: list[dict[str, object]] = json.loads(result.stdout)
        return data[0]

    def pid(self) -> int:
        state = self.inspect()["State"]
        assert isinstance(state, dict)
        pid: int = state["Pid"]
        return pid

    def logs(self) -> str:
        result = podman("logs", self.name)
        return result.stdout + result.stderr


@pytest.fixture
def upstream() -> Iterator[MockUpstream]:
    server = MockUpstream().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def container(upstream: MockUpstream, tmp_path: Path) -> Iterator[Container]:
    registry = tmp_path / "registry"
    registry.mkdir()
    registry.chmod(0o755)
    docs = [application("shop", [service("Orders", [api(f"{upstream.base}/v1")])])]
    write_manifest(registry, "apps.yaml", docs).chmod(0o644)
    ports = {name: free_port() for name in ("proxy", "compass", "admin")}
    name = unique("appgateway-image-test")
    # runc cannot raise a limit without CAP_SYS_RESOURCE, which this machine's root may lack:
    # keep the open-files limit and ask for a process limit below any hard one.
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    result = podman(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--user",
        f"{UID}:{UID}",
        "--tmpfs",
        "/tmp:rw,size=16m,mode=1777",
        "--ulimit",
        f"nofile={nofile}:{nofile}",
        "--ulimit",
        "nproc=4096:4096",
        "--volume",
        f"{registry}:/registry:ro",
        IMAGE,
        "serve",
        "--registry",
        "/registry",
        "--host",
        "127.0.0.1",
        "--proxy-port",
        str(ports["proxy"]),
        "--proxy-port-compass",
        str(ports["compass"]),
        "--admin-port",
        str(ports["admin"]),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    box = Container(name, ports["proxy"], ports["admin"])
    try:
        yield box
    finally:
        podman("rm", "--force", "--time", "0", name, timeout=120)


def ready(port: int) -> bool:
    try:
        return request(port, "GET", "/v1/ready", timeout=2).status == 200
    except OSError:
        return False


def test_image_runs_locked_down_serves_and_stops_on_sigterm(
    container: Container, upstream: MockUpstream
) -> None:
    assert wait_until(lambda: ready(container.admin_port), 120, 0.2) is not None, container.logs()

    response = request(container.proxy_port, "GET", "/shop/orders/items?page=2")
    assert response.status == 200, container.logs()
    assert upstream.only("/v1/items").target == "/v1/items?page=2"

    # The process as the kernel sees it: user 10001, no capability at all, no way to gain one,
    # and a read-only root filesystem.
    pid = container.pid()
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    assert status["Uid"].split() == [str(UID)] * 4
    assert status["Gid"].split() == [str(UID)] * 4
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[capabilities], 16) == 0, capabilities
    assert status["NoNewPrivs"].strip() == "1"
    mounts = [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]
    (root,) = [m for m in mounts if m[4] == "/"]
    assert "ro" in root[5].split(","), root
    (tmp,) = [m for m in mounts if m[4] == "/tmp"]
    assert "rw" in tmp[5].split(",") and tmp[tmp.index("-") + 1] == "tmpfs"

    started = time.monotonic()
    result = podman("kill", "--signal", "TERM", container.name)
    assert result.returncode == 0, result.stderr
    result = podman("wait", container.name, timeout=GRACE_PERIOD + 30)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0", container.logs()
    assert took < GRACE_PERIOD
    lines = [json.loads(line) for line in container.logs().splitlines() if line.startswith("{")]
    assert [line["msg"] for line in lines][-2:] == ["shutting down", "stopped"]
    print(f"\nSIGTERM -> exit 0 in {took:.1f} s")


def test_image_configuration() -> None:
    result = podman("image", "inspect", IMAGE)
    assert result.returncode == 0, result.stderr
    (image,) = json.loads(result.stdout)
    config = image["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["appgateway"]
    assert config["Cmd"] == ["serve", "--kubernetes", "--host", "0.0.0.0"]
    assert {"8080/tcp", "8081/tcp", "8082/tcp"} <= set(config["ExposedPorts"])
    size_mb = image["Size"] / 1e6
    print(f"\n{IMAGE}: {size_mb:.0f} MB")
