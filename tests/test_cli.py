"""`main(argv)` in-process: exit statuses and the output of the report commands."""

from __future__ import annotations

import json
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
