"""The folder registry is watched: changes apply within 2 s, and mistakes never remove an API."""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.conftest import (
    GatewayFactory,
    MockUpstream,
    api,
    application,
    request,
    secret,
    service,
    wait_until,
    write_manifest,
)

pytestmark = pytest.mark.timeout(60)

APPLY_WITHIN = 2.0
SLACK = 0.5  # polling interval and request time on top of the spec's 2 s


def _status(port: int, path: str) -> int:
    return request(port, "GET", path).status


def test_added_file_routes_within_2s(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gateway = gateway_factory()
    port = gateway.proxy_port
    assert _status(port, "/fresh/svc/x") == 404
    write_manifest(
        gateway.registry,
        "fresh.yaml",
        [application("fresh", [service("svc", [api(upstream.base)])])],
    )
    took = wait_until(lambda: _status(port, "/fresh/svc/x") == 200, APPLY_WITHIN + SLACK)
    assert took is not None, gateway.stderr_text()
    assert upstream.only("/x").target == "/x"


def test_changed_target_used_within_2s(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    one = [application("moving", [service("svc", [api(upstream.base + "/one")])])]
    gateway = gateway_factory(one)
    port = gateway.proxy_port
    assert request(port, "GET", "/moving/svc/x").json()["target"] == "/one/x"
    two = [application("moving", [service("svc", [api(upstream.base + "/two")])])]
    write_manifest(gateway.registry, "apps.yaml", two)

    def moved() -> bool:
        return bool(request(port, "GET", "/moving/svc/x").json()["target"] == "/two/x")

    assert wait_until(moved, APPLY_WITHIN + SLACK) is not None, gateway.stderr_text()


def test_deleted_file_gives_404_within_2s(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gateway = gateway_factory([application("gone", [service("svc", [api(upstream.base)])])])
    port = gateway.proxy_port
    assert _status(port, "/gone/svc/x") == 200
    (gateway.registry / "apps.yaml").unlink()
    took = wait_until(lambda: _status(port, "/gone/svc/x") == 404, APPLY_WITHIN + SLACK)
    assert took is not None, gateway.stderr_text()
    response = request(port, "GET", "/gone/svc/x")
    assert response.json() == {"code": 404, "error": "service with name svc not found"}


def test_broken_yaml_keeps_previous_state(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gateway = gateway_factory([application("kept", [service("svc", [api(upstream.base)])])])
    port = gateway.proxy_port
    assert _status(port, "/kept/svc/x") == 200
    write_manifest(gateway.registry, "apps.yaml", "apiVersion: v1\nkind: [unclosed\n  - : :\n")
    line = gateway.wait_log(
        lambda x: x.get("level") == "error" and "apps.yaml" in json.dumps(x),
        APPLY_WITHIN + SLACK,
    )
    assert line is not None, gateway.stderr_text()
    assert _status(port, "/kept/svc/x") == 200
    time.sleep(0.5)
    assert _status(port, "/kept/svc/x") == 200


def test_secret_with_invalid_base64_is_logged_and_rest_serves(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gateway = gateway_factory([application("other", [service("svc", [api(upstream.base)])])])
    port = gateway.proxy_port
    basic = {"type": "Basic", "secretName": "bad-b64"}
    write_manifest(
        gateway.registry,
        "bad.yaml",
        [
            application("badsecret", [service("svc", [api(upstream.base, credentials=basic)])]),
            secret("bad-b64", data={"username": "!!!not base64!!!", "password": "cGFzcw=="}),
        ],
    )
    line = gateway.wait_log(
        lambda x: x.get("level") == "error" and "bad.yaml" in json.dumps(x),
        APPLY_WITHIN + SLACK,
    )
    assert line is not None, gateway.stderr_text()
    assert _status(port, "/other/svc/x") == 200
    # The Application in the same file loaded; its Secret was rejected, so it is a config error.
    response = request(port, "GET", "/badsecret/svc/x")
    assert response.status == 500
    assert response.json()["error"] == (
        "failed to read API for svc service, secret 'bad-b64' not found"
    )
