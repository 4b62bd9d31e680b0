from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import pytest
import yaml

from appgateway.inventory import (
    access_services_yaml,
    check,
    format_routes,
    parse_selector,
    route_rows,
)
from appgateway.registry import RegistryError
from appgateway.registry.folder import load_snapshot
from appgateway.registry.snapshot import Snapshot
from appgateway.tls import load_client_cert

EXAMPLE = Path(__file__).parent / "fixtures" / "registry" / "example"

PROBLEMS = """\
apiVersion: applicationconnector.kyma-project.io/v1alpha1
kind: Application
metadata: {name: shop}
spec:
  services:
    - id: a1
      displayName: Cart
      entries:
        - {type: API, name: one, targetUrl: "http://cart.example/v1?key=hunter2"}
        - {type: API, name: two, targetUrl: "http://cart.example/v2"}
    - id: Upper
      displayName: Certs
      entries:
        - type: API
          name: c
          targetUrl: https://certs.example
          credentials: {type: CertificateGen, secretName: pem}
---
apiVersion: v1
kind: Secret
metadata: {name: pem}
stringData: {crt: not pem, key: not pem}
---
apiVersion: applicationconnector.kyma-project.io/v1alpha1
kind: Application
metadata: {name: Bad_Name}
"""


def snapshot_of(path: Path) -> Snapshot:
    return load_snapshot(path, secrets_namespace="kyma-system", load_cert=load_client_cert)


def test_check_clean_folder() -> None:
    out = io.StringIO()
    assert check(EXAMPLE, "kyma-system", out) == 0
    assert out.getvalue() == textwrap.dedent(
        """\
        APP  PROXY PATH                 COMPASS PATH                         HOST LABEL                                AUTH               TARGET
        erp  /erp/orders-api-v2         /erp/orders-api-v2/sales-orders      erp-3f1c5f2e-7a51-4f40-9a0e-4a4b7e0b6c21  OAuth+csrf+params  https://erp.example.com/odata/orders
        erp  /erp/customer-master-data  /erp/customer-master-data/customers  erp-77aa01                                Basic              https://crm.example.com:8443/api/

        1 application, 2 APIs, 0 errors, 0 warnings
        """  # noqa: E501
    )


def test_check_reports_problems_and_ambiguity(tmp_path: Path) -> None:
    (tmp_path / "shop.yaml").write_text(PROBLEMS)
    out = io.StringIO()
    assert check(tmp_path, "kyma-system", out) == 1
    text = out.getvalue()
    assert text.splitlines()[:4] == [
        "error: shop.yaml#3: Application/Bad_Name: metadata.name: must be a DNS-1123 subdomain "
        "(lower-case letters, digits, '-' and '.')",
        "warning: shop.yaml#1: Application/shop: spec.services[0]: 2 API entries: only the "
        "Compass listener reaches them",
        "error: shop.yaml#1: Application/shop: spec.services[1].entries[0].credentials.secretName: "
        "Failed to prepare certificate, no CERTIFICATE block in crt",
        "",
    ]
    rows = [line.split() for line in text.splitlines()[5:8]]
    assert rows == [
        [
            "shop",
            "/shop/cart",
            "(ambiguous)",
            "/shop/cart/one",
            "shop-a1",
            "(ambiguous)",
            "none",
            "http://cart.example/v1",
        ],
        [
            "shop",
            "/shop/cart",
            "(ambiguous)",
            "/shop/cart/two",
            "shop-a1",
            "(ambiguous)",
            "none",
            "http://cart.example/v2",
        ],
        ["shop", "/shop/certs", "/shop/certs/c", "shop-Upper", "error", "https://certs.example"],
    ]
    assert "hunter2" not in text  # the target query is redacted
    assert text.endswith("1 application, 3 APIs, 2 errors, 1 warning\n")


def test_check_single_file_and_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "one.yaml"
    path.write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n")
    out = io.StringIO()
    assert check(path, "kyma-system", out) == 0
    assert out.getvalue() == "0 applications, 0 APIs, 0 errors, 0 warnings\n"
    with pytest.raises(RegistryError):
        check(tmp_path / "missing", "kyma-system", io.StringIO())


def test_route_rows() -> None:
    rows = route_rows(snapshot_of(EXAMPLE), "http://gw:8080/", "http://gw:8082")
    assert rows == [
        {
            "application": "erp",
            "service": "orders-api-v2",
            "entry": "sales-orders",
            "url": "http://gw:8080/erp/orders-api-v2",
            "compassUrl": "http://gw:8082/erp/orders-api-v2/sales-orders",
            "accessService": "erp-3f1c5f2e-7a51-4f40-9a0e-4a4b7e0b6c21",
            "auth": "OAuth+csrf+params",
        },
        {
            "application": "erp",
            "service": "customer-master-data",
            "entry": "customers",
            "url": "http://gw:8080/erp/customer-master-data",
            "compassUrl": "http://gw:8082/erp/customer-master-data/customers",
            "accessService": "erp-77aa01",
            "auth": "Basic",
        },
    ]


def test_route_rows_ambiguous_and_broken(tmp_path: Path) -> None:
    (tmp_path / "shop.yaml").write_text(PROBLEMS)
    rows = route_rows(snapshot_of(tmp_path), "http://a", "http://c")
    assert [(r["url"], r["compassUrl"], r["accessService"], r["auth"]) for r in rows] == [
        ("", "http://c/shop/cart/one", "", "none"),
        ("", "http://c/shop/cart/two", "", "none"),
        ("http://a/shop/certs", "http://c/shop/certs/c", "shop-Upper", "error"),
    ]


def test_format_routes() -> None:
    rows = [
        {
            "application": "a",
            "service": "s",
            "entry": "e",
            "url": "",
            "compassUrl": "http://c",
            "accessService": "",
            "auth": "none",
        },
    ]
    assert json.loads(format_routes(rows, "json")) == rows
    assert format_routes(rows, "table") == (
        "APPLICATION  SERVICE  ENTRY  URL  COMPASS URL  ACCESS SERVICE  AUTH\n"
        "a            s        e      -    http://c     -               none\n"
    )


def test_access_services(tmp_path: Path) -> None:
    (tmp_path / "shop.yaml").write_text(PROBLEMS)
    (tmp_path / "erp.yaml").write_text((EXAMPLE / "apps.yaml").read_text())
    err = io.StringIO()
    text = access_services_yaml(snapshot_of(tmp_path), "gw", "app=gw, tier=edge", 9090, err=err)
    doc = yaml.safe_load(text)
    assert doc["apiVersion"] == "v1" and doc["kind"] == "List"
    assert [item["metadata"] for item in doc["items"]] == [
        {"name": "erp-3f1c5f2e-7a51-4f40-9a0e-4a4b7e0b6c21", "namespace": "gw"},
        {"name": "erp-77aa01", "namespace": "gw"},
    ]
    assert doc["items"][0]["kind"] == "Service"
    assert doc["items"][0]["spec"] == {
        "selector": {"app": "gw", "tier": "edge"},
        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 9090}],
    }
    assert err.getvalue().splitlines() == [
        "warning: skipping shop-a1: host requests to it are ambiguous (400)",
        "warning: skipping shop-Upper: not a valid DNS-1035 label",
    ]


def test_access_services_empty() -> None:
    assert yaml.safe_load(access_services_yaml(Snapshot(), "ns", "a=b", 8080)) == {
        "apiVersion": "v1",
        "kind": "List",
        "items": [],
    }


@pytest.mark.parametrize("text", ["", "a", "=b", "a=b,", "a=b,,c=d"])
def test_bad_selectors(text: str) -> None:
    with pytest.raises(ValueError, match="invalid selector"):
        parse_selector(text)


def test_selector() -> None:
    assert parse_selector("app.kubernetes.io/name=appgateway") == {
        "app.kubernetes.io/name": "appgateway"
    }
