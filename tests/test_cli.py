"""`main(argv)` in-process: exit statuses and the output of the report commands."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from appgateway import __version__, cli
from appgateway.inventory import ROUTE_KEYS
from tests.conftest import write_registry

BASE = "http://127.0.0.1:9"


def main(argv: list[str]) -> int:
    """`cli.main` on a worker thread.

    `routes` and `access-services` call asyncio.run, which on the main thread would clear the
    event loop pytest-asyncio keeps there and leave it to the garbage collector unclosed (a
    ResourceWarning that then fails whichever test is running).
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(cli.main, argv).result()


BROKEN_YAML = """\
apiVersion: applicationconnector.kyma-project.io/v1alpha1
kind: Application
metadata:
  name: broken
spec:
  services:
    - id: x1
      displayName: Broken
      entries:
        - type: API
          name: b
          targetUrl: http://127.0.0.1:9/x
          credentials: {type: Basic, secretName: missing}
"""


@pytest.fixture
def clean(registry_dir: Path) -> Path:
    return write_registry(registry_dir, BASE)


@pytest.fixture
def broken(clean: Path) -> Path:
    (clean / "broken.yaml").write_text(BROKEN_YAML)
    return clean


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["--bogus"],
        ["serve", "--proxy-port", "x"],
        ["serve", "--proxy-timeout", "0"],
        ["serve", "--unknown-flag"],
        ["check"],
        ["routes", "--output", "xml"],
        ["routes", "--admin-port", "1"],  # routes takes only the proxy ports
    ],
)
def test_usage_error_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"appgateway {__version__}"


def test_check_clean_folder(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(clean)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("APP"))
    assert header.split() == ["APP", "PROXY", "PATH", "COMPASS", "PATH", "HOST", "LABEL"] + [
        "AUTH",
        "TARGET",
    ]
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.startswith("shop")}
    assert rows["/shop/orders"] == [
        "shop",
        "/shop/orders",
        "/shop/orders/orders-entry",
        "shop-o1",
        "none",
        f"{BASE}/api",
    ]
    assert rows["/shop/basic"][4] == "Basic"
    assert rows["/shop/params"][4] == "none+params"
    assert rows["/shop/params"][5] == f"{BASE}/params-api"  # query redacted
    assert "0 errors" in out and "3 APIs" in out


def test_check_folder_with_errors(broken: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(broken)]) == 1
    out = capsys.readouterr().out
    assert (
        "error: broken.yaml#1: Application/broken: spec.services[0].entries[0]"
        ".credentials.secretName: failed to read API for Broken service, "
        "secret 'missing' not found"
    ) in out
    assert "/broken/broken" in out and "/shop/orders" in out  # the table still follows
    assert "1 error" in out


def test_check_single_file(broken: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(broken / "shop.yaml")]) == 0
    assert main(["check", str(broken / "broken.yaml")]) == 1


def test_check_secrets_namespace(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # shop-basic lives in kyma-system: from another namespace it is missing (an API error).
    assert main(["check", str(clean), "--secrets-namespace", "other"]) == 1
    assert "secret 'shop-basic' not found" in capsys.readouterr().out


def test_check_missing_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "nope")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_routes_json(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["routes", "--registry", str(clean), "--output", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(list(row) == list(ROUTE_KEYS) for row in rows)
    assert set(ROUTE_KEYS) == {
        "application",
        "service",
        "entry",
        "url",
        "compassUrl",
        "accessService",
        "auth",
    }
    orders = next(row for row in rows if row["service"] == "orders")
    assert orders == {
        "application": "shop",
        "service": "orders",
        "entry": "orders-entry",
        "url": "http://127.0.0.1:8080/shop/orders",
        "compassUrl": "http://127.0.0.1:8082/shop/orders/orders-entry",
        "accessService": "shop-o1",
        "auth": "none",
    }
    assert sorted(row["service"] for row in rows) == ["basic", "orders", "params"]


def test_routes_base_urls_and_ports(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["routes", "--registry", str(clean), "--output", "json", "--proxyPort", "7000"]
    assert main([*argv, "--proxy-port-compass=7002"]) == 0
    orders = next(r for r in json.loads(capsys.readouterr().out) if r["service"] == "orders")
    assert orders["url"] == "http://127.0.0.1:7000/shop/orders"
    assert orders["compassUrl"] == "http://127.0.0.1:7002/shop/orders/orders-entry"
    argv = ["routes", "--registry", str(clean), "--output", "json"]
    argv += ["--base-url", "http://gw.example/", "--compass-base-url", "http://ucl.example"]
    assert main(argv) == 0
    orders = next(r for r in json.loads(capsys.readouterr().out) if r["service"] == "orders")
    assert orders["url"] == "http://gw.example/shop/orders"
    assert orders["compassUrl"] == "http://ucl.example/shop/orders/orders-entry"


def test_routes_table(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["routes", "--registry", str(clean)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["APPLICATION", "SERVICE", "ENTRY"]
    assert len(lines) == 4


def test_routes_reads_the_registry_variable(
    clean: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPGATEWAY_REGISTRY", str(clean))
    assert main(["routes", "--output", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_routes_missing_registry_folder_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["routes", "--registry", str(tmp_path / "missing")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "configuration error" in captured.err and "missing" in captured.err


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["routes", "--registry", "REG", "--kubernetes"], {}),
        (["access-services", "--registry", "REG"], {"APPGATEWAY_KUBERNETES": "true"}),
        (["routes", "--registry", "REG"], {"APPGATEWAY_PROXY_PORT": "http"}),
        (["serve", "--registry", "REG", "--caller-auth", "kubernetes"], {}),
        (["serve", "--registry", "REG", "--caller-auth", "tokens"], {}),
        (["serve", "--registry", "REG"], {"APPGATEWAY_CALLER_TOKENS": "/t"}),
    ],
)
def test_configuration_error_exits_2(
    argv: list[str],
    env: dict[str, str],
    clean: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main([str(clean) if arg == "REG" else arg for arg in argv]) == 2
    assert "configuration error" in capsys.readouterr().err


def test_access_services_yaml_list(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["access-services", "--registry", str(clean)]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["apiVersion"] == "v1" and doc["kind"] == "List"
    by_name = {item["metadata"]["name"]: item for item in doc["items"]}
    assert sorted(by_name) == ["shop-b1", "shop-o1", "shop-p1"]
    service = by_name["shop-o1"]
    assert service["kind"] == "Service"
    assert service["metadata"]["namespace"] == "kyma-system"
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "appgateway"}
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}
    ]


def test_access_services_options(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["access-services", "--registry", str(clean), "--namespace", "gw"]
    argv += ["--selector", "app=gw,tier=edge", "--target-port", "9090"]
    assert main(argv) == 0
    items = yaml.safe_load(capsys.readouterr().out)["items"]
    assert {item["metadata"]["namespace"] for item in items} == {"gw"}
    assert items[0]["spec"]["selector"] == {"app": "gw", "tier": "edge"}
    assert items[0]["spec"]["ports"][0]["targetPort"] == 9090


def test_access_services_bad_selector_exits_2(
    clean: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["access-services", "--registry", str(clean), "--selector", "nonsense"]) == 2
    assert "--selector" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["serve", "routes", "access-services"])
def test_help_shows_kubernetes_as_a_switch(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "KUBERNETES" not in out and "[BOOL]" not in out
    assert "[--kubernetes]" in " ".join(out.split())  # the usage line, however it wraps
    assert any(line.split()[:1] == ["--kubernetes"] for line in out.splitlines())


def test_serve_help_lists_admin_host(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "--admin-host ADMIN_HOST" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "status"),
    [
        (["--kubernetes=false"], 0),
        (["--kubernetes", "no"], 0),
        (["--kubernetes=0"], 0),
        (["--kubernetes=true"], 2),  # on, and --registry is given: a configuration error
        (["--kubernetes"], 2),
    ],
)
def test_kubernetes_switch_still_takes_a_value(
    flags: list[str], status: int, clean: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["routes", "--registry", str(clean), *flags]) == status
    if status == 2:
        assert "--registry is not allowed with --kubernetes" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["routes", "access-services"])
def test_report_commands_print_registry_problems_as_check_does(
    broken: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """They printed bare `registry error` lines, without saying which file or what."""
    (broken / "bad.yaml").write_text("a: [\n")
    (broken / "odd.yaml").write_text(
        BROKEN_YAML.replace("name: broken", "name: odd").replace("type: Basic", "type: Odd")
        + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: missing}\n"
        + "stringData: {username: u, password: p}\n"
    )
    assert main(["check", str(broken)]) == 1
    out = capsys.readouterr().out
    problems = out[: out.index("\n\n")].splitlines()
    assert [line.split(": ")[:2] for line in problems] == [
        ["error", "bad.yaml"],
        ["warning", "odd.yaml#1"],
    ]
    assert main([command, "--registry", str(broken)]) == 0
    assert capsys.readouterr().err.splitlines() == problems


def _check_in_child(path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`appgateway check` in its own process, its address space capped at 2 GiB: so a crash,
    a read that never ends or a runaway expansion fails this test, not the test run."""

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    return subprocess.run(
        [sys.executable, "-m", "appgateway", "check", str(path), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=cap_memory,
        env={k: v for k, v in os.environ.items() if not k.startswith("APPGATEWAY_")},
    )


def _nested(path: Path) -> str:
    path.write_text("[" * 60_000)
    return "invalid YAML at line 1, column 101: nested more than 100 levels deep"


def _alias_bomb(path: Path) -> str:
    lines = ["apiVersion: v1", "kind: List", "items:", "- &l0 {apiVersion: v1, kind: List}"]
    for level in range(1, 10):
        refs = ", ".join([f"*l{level - 1}"] * 10)
        lines.append(f"- &l{level} {{apiVersion: v1, kind: List, items: [{refs}]}}")
    path.write_text("\n".join(lines) + "\n")
    return (
        "invalid YAML at line 4, column 3: "
        "anchors and aliases are not allowed (the node anchored here is used again)"
    )


def _huge(path: Path) -> str:
    with path.open("wb") as file:
        file.truncate(30 << 20)
    return "too large: 31457280 bytes, the limit is 1048576 (--manifest-size-limit): not read"


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return "not a regular file but a FIFO: not read"


def _dev_zero(path: Path) -> str:
    path.symlink_to("/dev/zero")
    return "not a regular file but a character device: not read"


@pytest.mark.parametrize(
    "hostile", [_nested, _alias_bomb, _huge, _fifo, _dev_zero], ids=lambda f: f.__name__[1:]
)
def test_check_reports_a_hostile_file_and_exits_1(
    clean: Path, hostile: Callable[[Path], str]
) -> None:
    """The nested file crashed `check` (exit 139), the FIFO and /dev/zero made it read for
    ever, the alias bomb expanded without end, the huge file took 30 times its size."""
    problem = hostile(clean / "hostile.yaml")
    done = _check_in_child(clean)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[0] == f"error: hostile.yaml: {problem}"
    assert "3 APIs, 1 error" in done.stdout  # the rest is checked as ever


def test_check_manifest_size_limit(
    clean: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    size = (clean / "shop.yaml").stat().st_size
    assert main(["check", str(clean), "--manifest-size-limit", str(size - 1)]) == 1
    out = capsys.readouterr().out
    assert f"error: shop.yaml: too large: {size} bytes, the limit is {size - 1}" in out
    monkeypatch.setenv("APPGATEWAY_MANIFEST_SIZE_LIMIT", str(size - 1))
    assert main(["check", str(clean)]) == 1
    assert main(["check", str(clean), "--manifest-size-limit", str(size)]) == 0
