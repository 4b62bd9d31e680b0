from __future__ import annotations

import pytest

from appgateway.names import host_label, normalize


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("DisplayName", "displayname"),
        ("display_!@#$%^&*()name", "display-name"),
        ("-----displayname", "displayname"),
        ("My CSRF Service", "my-csrf-service"),
        ("Orders API (v2)", "orders-api-v2"),
        ("Café Menü", "caf-men"),
        ("_" + "a" * 60, "a" * 56),
        ("x" * 56 + " y", "x" * 56 + "-"),
        # Further edges of the step order.
        ("", ""),
        ("-", ""),
        ("--", ""),
        ("a--b", "a-b"),
        ("a-", "a"),
        ("-a-", "a"),
        ("Customer master data", "customer-master-data"),
        ("Sales Orders", "sales-orders"),
        ("a" * 57, "a" * 57),
        ("a" * 58, "a" * 57),
        ("ÄÖÜ", ""),
        ("v1.2", "v1-2"),
        ("ABC123", "abc123"),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    ("app", "service_id", "expected"),
    [
        ("erp", "77aa01", "erp-77aa01"),
        (
            "erp",
            "3f1c5f2e-7a51-4f40-9a0e-4a4b7e0b6c21",
            "erp-3f1c5f2e-7a51-4f40-9a0e-4a4b7e0b6c21",
        ),
        ("a" * 30, "id", "a" * 26 + "-id"),
        ("b" * 26, "x", "b" * 26 + "-x"),
    ],
)
def test_host_label(app: str, service_id: str, expected: str) -> None:
    assert host_label(app, service_id) == expected
