"""`appgateway serve --kubernetes` as a process against a real kube-apiserver, and the
Application CRD of deploy/crd applied to it (the rendered overlays of deploy/ are applied in
tests/deploy/test_cluster.py).

The cluster is the session's (tests/kube.py). The gateway logs in as its ServiceAccount's
user, with exactly the RBAC of deploy/base/rbac.yaml, unless a test says otherwise.
"""

from __future__ import annotations

import base64
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Gateway, MockUpstream, request, wait_until
from tests.kube import (
    NOWATCH_TOKEN,
    REPO,
    SA_TOKEN,
    ConnectProxy,
    KubeCluster,
    Objects,
    api_service,
    application,
    free_port,
    missing_fields,
    secret,
    unique,
)

pytestmark = pytest.mark.timeout(1500)  # the first test may build kube-apiserver

APPLY_WITHIN = 2.0  # registry.md §4/§5: changes apply within 2 s


class KubeGateway(Gateway):
    """`serve --kubernetes --kubeconfig PATH` on ephemeral ports."""

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "appgateway",
            "serve",
            "--kubernetes",
            "--kubeconfig",
            str(self.registry),
            "--proxy-port",
            "0",
            "--proxy-port-compass",
            "0",
            "--admin-port",
            "0",
            *self.args,
        ]


Factory = Callable[..., KubeGateway]


@pytest.fixture
def gateways(kube: KubeCluster, tmp_path: Path) -> Iterator[Factory]:
    started: list[KubeGateway] = []

    def make(
        *,
        token: str = SA_TOKEN,
        server: str | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> KubeGateway:
        path = kube.kubeconfig(tmp_path / f"kubeconfig{len(started)}", token=token, server=server)
        gateway = KubeGateway(path, args, env)
        started.append(gateway)
        gateway.start()
        return gateway

    yield make
    for gateway in started:
        gateway.close()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def basic_app(name: str, target: str, secret_name: str, *, id: str = "o1") -> dict[str, Any]:
    creds = {"type": "Basic", "secretName": secret_name}
    return application(name, [api_service("Orders", target, id=id, credentials=creds)])


def echo(gateway: KubeGateway, path: str) -> tuple[int, str, str]:
    """(status, the target the mock API saw, the Authorization it got) for GET `path`."""
    response = request(gateway.proxy_port, "GET", path)
    if response.status != 200:
        return response.status, "", ""
    seen = response.json()
    auth = [v for n, v in seen["headers"] if n.lower() == "authorization"]
    return 200, seen["target"], auth[0] if auth else ""


def test_gateway_follows_the_cluster(
    gateways: Factory, objects: Objects, upstream: MockUpstream
) -> None:
    app, creds = unique("shop"), unique("shop-creds")
    objects.apply(secret(creds, {"username": "alice", "password": "one"}))
    objects.apply(basic_app(app, f"{upstream.base}/v1", creds))
    gateway = gateways()
    assert request(gateway.admin_port, "GET", "/v1/ready").status == 200
    assert echo(gateway, f"/{app}/orders/items?x=1") == (
        200,
        "/v1/items?x=1",
        basic("alice", "one"),
    )

    objects.apply(basic_app(app, f"{upstream.base}/v2", creds))  # the target changes
    assert wait_until(lambda: echo(gateway, f"/{app}/orders/a")[1] == "/v2/a", APPLY_WITHIN)
    objects.apply(secret(creds, {"username": "alice", "password": "two"}))  # rotated
    assert wait_until(
        lambda: echo(gateway, f"/{app}/orders/a")[2] == basic("alice", "two"), APPLY_WITHIN
    )
    objects.apply(application(unique("other"), [api_service("Other", f"{upstream.base}/o")]))
    objects.delete(basic_app(app, "", creds))  # gone
    assert wait_until(lambda: echo(gateway, f"/{app}/orders/a")[0] == 404, APPLY_WITHIN)


def test_patch_to_serving_latency(
    gateways: Factory, objects: Objects, upstream: MockUpstream, kube: KubeCluster
) -> None:
    """The time from a patch of an Application to the gateway serving the new target."""
    app = unique("latency")
    doc = application(app, [api_service("Orders", f"{upstream.base}/t0")])
    objects.apply(doc)
    gateway = gateways()
    samples: list[float] = []
    for i in range(1, 11):
        time.sleep(0.3)  # an isolated change, not one inside the previous rebuild's 100 ms
        patch = {"spec": {"services": [api_service("Orders", f"{upstream.base}/t{i}")]}}
        kube.merge_patch(doc, patch)
        expected = f"/t{i}/x"

        def served(want: str = expected) -> bool:
            return echo(gateway, f"/{app}/orders/x")[1] == want

        took = wait_until(served, 5, 0.005)
        assert took is not None
        samples.append(took)
    print(
        f"\npatch -> served: median {statistics.median(samples) * 1000:.0f} ms, "
        f"max {max(samples) * 1000:.0f} ms"
    )
    assert max(samples) < APPLY_WITHIN


@pytest.mark.parametrize("bypass", [False, True], ids=["proxied", "no-proxy"])
def test_api_server_is_reached_through_https_proxy_unless_no_proxy(
    gateways: Factory, objects: Objects, upstream: MockUpstream, kube: KubeCluster, bypass: bool
) -> None:
    """`serve --kubernetes` with HTTPS_PROXY set (as behaviour.md §5.3 says, for all outbound
    calls): the API server is reached through a CONNECT tunnel carrying the proxy's
    credentials, or directly when NO_PROXY lists it. The mock API is plain http, so only
    HTTPS_PROXY is set and target calls stay direct."""
    egress = ConnectProxy().start()
    try:
        env = {"HTTPS_PROXY": egress.url("gw:pw@")}
        if bypass:
            env["NO_PROXY"] = "127.0.0.1"
        app = unique("egress")
        objects.apply(application(app, [api_service("Orders", f"{upstream.base}/v1")]))
        gateway = gateways(env=env)
        assert request(gateway.admin_port, "GET", "/v1/ready").status == 200
        assert echo(gateway, f"/{app}/orders/x")[:2] == (200, "/v1/x")
        if bypass:
            assert egress.lines == []
        else:
            assert set(egress.lines) == {f"CONNECT 127.0.0.1:{kube.port} HTTP/1.1"}
            assert set(egress.authorizations) == {basic("gw", "pw")}
    finally:
        egress.close()


def test_api_server_outage_keeps_the_last_state(
    gateways: Factory, objects: Objects, upstream: MockUpstream, kube: KubeCluster
) -> None:
    app = unique("outage")
    doc = application(app, [api_service("Orders", f"{upstream.base}/before")])
    objects.apply(doc)
    gateway = gateways()
    try:
        kube.stop_apiserver()
        stopped = time.monotonic()
        while time.monotonic() - stopped < 3:
            assert echo(gateway, f"/{app}/orders/x")[1] == "/before/x"
            assert request(gateway.admin_port, "GET", "/v1/ready").status == 200
            time.sleep(0.2)
        assert gateway.wait_log(lambda line: line.get("msg") == "kubernetes API unreachable")
    finally:
        kube.start_apiserver()
    restarted = time.monotonic()
    kube.merge_patch(doc, {"spec": {"services": [api_service("Orders", f"{upstream.base}/after")]}})
    took = wait_until(lambda: echo(gateway, f"/{app}/orders/x")[1] == "/after/x", 35)
    assert took is not None
    relists = [
        line
        for line in gateway.logs
        if line.get("msg") == "resource version too old, listing again"
    ]
    print(
        f"\napi server down: followed again {time.monotonic() - restarted:.1f} s after it was "
        f"ready again; {len(relists)} re-LISTs"
    )


def test_without_watch_permission_the_log_says_why(gateways: Factory) -> None:
    gateway = gateways(token=NOWATCH_TOKEN)
    line = gateway.wait_log(lambda line: line.get("msg") == "kubernetes API denied watch", 10)
    assert line is not None, gateway.stderr_text()
    assert line["level"] == "error" and line["status"] == 403
    assert "applications" in line["error"] or "secrets" in line["error"]
    assert "needs get, list and watch" in line["hint"]


def test_not_ready_until_the_api_answers(gateways: Factory) -> None:
    gateway = gateways(server=f"https://127.0.0.1:{free_port()}")
    assert request(gateway.admin_port, "GET", "/v1/ready").status == 503
    assert request(gateway.admin_port, "GET", "/v1/health").status == 200
    assert request(gateway.proxy_port, "GET", "/any/service/x").status == 503
    # Nothing was loaded, so no sync is reported (the RegistryNotSynced alert relies on it).
    metrics = request(gateway.admin_port, "GET", "/metrics").body.decode().splitlines()
    assert "appgateway_registry_last_sync_timestamp_seconds 0.0" in metrics
    assert not [line for line in metrics if line.startswith("appgateway_registry_reloads_total")]


def test_unusable_kubeconfig_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "appgateway",
            "serve",
            "--kubernetes",
            "--kubeconfig",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 2
    assert "configuration error: kubeconfig" in result.stderr


# -- the Application CRD ---------------------------------------------------------------------

KYMA_APPLICATION = """
apiVersion: applicationconnector.kyma-project.io/v1alpha1
kind: Application
metadata:
  name: {name}
  labels: {{app: erp}}
spec:
  description: ERP system
  skipVerify: false
  encodeUrl: false
  labels: {{region: eu}}
  tags: [erp]
  compassMetadata: {{applicationId: 1a2b, authentication: {{clientIds: [x]}}}}
  services:
    - id: 3f1c5f2e-7a51-4f40-9a0e-4a4b7e0b6c21
      name: orders-3f1c5
      displayName: Orders API (v2)
      description: Orders
      providerDisplayName: ACME
      labels: {{connected-app: erp}}
      entries:
        - type: API
          name: Sales Orders
          targetUrl: https://erp.example.com/odata/orders?sap-client=100
          centralGatewayUrl: http://central-application-gateway.kyma-system:8082/erp/orders
          specificationUrl: https://erp.example.com/spec
          credentials:
            type: OAuth
            secretName: erp-orders-oauth
            authenticationUrl: https://erp.example.com/oauth2/token
            csrfInfo: {{tokenEndpointURL: https://erp.example.com/odata/orders}}
          requestParametersSecretName: erp-orders-params
        - type: Events
          name: Order events
"""


def test_crd_keeps_every_field_of_a_kyma_application(kube: KubeCluster) -> None:
    doc = yaml.safe_load(KYMA_APPLICATION.format(name=unique("kyma")))
    stored = kube.apply(doc, dry_run=True)
    assert missing_fields(doc, stored) == []


def test_crd_rejects_wrong_types(kube: KubeCluster) -> None:
    doc = yaml.safe_load(KYMA_APPLICATION.format(name=unique("kyma")))
    doc["spec"]["skipVerify"] = "yes"
    status, body = kube.request(
        "POST",
        kube.resource_path(doc, named=False),
        json.dumps(doc).encode(),
        params={"dryRun": "All"},
    )
    assert status == 422, body
    assert "spec.skipVerify" in body["message"]


def test_access_services_output_applies(
    kube: KubeCluster, objects: Objects, upstream: MockUpstream, tmp_path: Path
) -> None:
    app = unique("acc")
    objects.apply(application(app, [api_service("Orders", f"{upstream.base}/x", id="svc1")]))
    config = kube.kubeconfig(tmp_path / "kubeconfig", token=SA_TOKEN)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "appgateway",
            "access-services",
            "--kubernetes",
            "--kubeconfig",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    items = yaml.safe_load(result.stdout)["items"]
    names = [item["metadata"]["name"] for item in items]
    assert f"{app}-svc1" in names
    for item in items:
        stored = kube.apply(item, dry_run=True)
        assert missing_fields(item, stored) == []
