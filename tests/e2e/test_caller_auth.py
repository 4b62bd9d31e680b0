"""`--caller-auth` through a gateway process: tokens mode on a folder registry (with the tokens
file hot-reloaded), and kubernetes mode against the real kube-apiserver of the suite.

What a caller gets (407, 403, 200), that a refused caller reaches nothing, that the caller's
identity is in the access line, and that `Proxy-Authorization` never reaches a target.
"""

from __future__ import annotations

import hashlib
import http.client
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    Gateway,
    GatewayFactory,
    MockUpstream,
    Response,
    api,
    application,
    request,
    service,
    wait_until,
)
from tests.e2e.test_kubernetes_e2e import Factory
from tests.e2e.test_kubernetes_e2e import gateways as gateways  # the fixture
from tests.kube import (
    DEPLOY,
    NAMESPACE,
    KubeCluster,
    Objects,
    api_service,
    load_manifests,
    shared_cluster,
    unique,
)
from tests.kube import application as kube_application

pytestmark = pytest.mark.timeout(120)

REALM = 'Bearer realm="appgateway"'


def call(port: int, path: str, token: str | None) -> Response:
    headers = [] if token is None else [("Proxy-Authorization", f"Bearer {token}")]
    return request(port, "GET", path, headers)


def access_line(gateway: Gateway, path: str, status: int) -> dict[str, Any]:
    """The access line of a request (lines are batched: wait for it)."""
    line = gateway.wait_log(
        lambda doc: doc.get("msg") == "request"
        and doc.get("path") == path
        and doc.get("status") == status
    )
    assert line is not None, (path, status)
    return line


def seen_proxy_authorization(response: Response) -> list[str]:
    """The Proxy-Authorization fields the mock API's echo received."""
    doc = response.json()
    return [v for n, v in doc["headers"] if n.lower() == "proxy-authorization"]


# -- tokens mode ------------------------------------------------------------------------------


def tokens_file(path: Path, entries: list[tuple[str, str, str]]) -> None:
    text = "".join(
        f"- {{name: {name}, sha256: {hashlib.sha256(token.encode()).hexdigest()}, "
        f"applications: {apps}}}\n"
        for name, token, apps in entries
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # one atomic change, as an editor or a ConfigMap update makes


def tokens_gateway(factory: GatewayFactory, upstream: MockUpstream, tokens: Path) -> Gateway:
    """Applications erp and crm; callers orders-team (t-orders: erp) and ops (t-ops: all)."""
    tokens_file(tokens, [("orders-team", "t-orders", "[erp]"), ("ops", "t-ops", '["*"]')])
    docs = [
        application("erp", [service("orders", [api(upstream.base + "/erp")])]),
        application("crm", [service("leads", [api(upstream.base + "/crm")])]),
    ]
    return factory(docs, ["--caller-auth", "tokens", "--caller-tokens", str(tokens)])


def test_tokens_mode_on_a_folder_registry(
    gateway_factory: GatewayFactory, upstream: MockUpstream, tmp_path: Path
) -> None:
    tokens = tmp_path / "callers.yaml"
    gateway = tokens_gateway(gateway_factory, upstream, tokens)
    port = gateway.proxy_port

    missing = call(port, "/erp/orders/x", None)
    assert (missing.status, missing.header("proxy-authenticate")) == (407, REALM)
    assert call(port, "/erp/orders/x", "guess").status == 407
    assert call(port, "/crm/leads/x", "t-orders").status == 403
    assert upstream.requests == []  # nothing refused reached a target

    allowed = call(port, "/erp/orders/x", "t-orders")
    assert allowed.status == 200 and seen_proxy_authorization(allowed) == []
    assert call(port, "/crm/leads/y", "t-ops").status == 200
    assert access_line(gateway, "/erp/orders/x", 200)["caller"] == "orders-team"
    assert access_line(gateway, "/crm/leads/y", 200)["caller"] == "ops"
    assert access_line(gateway, "/crm/leads/x", 403)["caller"] is None
    assert not any("t-orders" in line or "t-ops" in line for line in gateway.raw_lines)

    # The file is watched: a new grant and a withdrawn token apply within 2 s.
    tokens_file(tokens, [("orders-team", "t-orders", "[erp, crm]")])
    started = time.monotonic()
    assert wait_until(lambda: call(port, "/crm/leads/z", "t-orders").status == 200, 5)
    assert wait_until(lambda: call(port, "/crm/leads/z", "t-ops").status == 407, 5)
    assert time.monotonic() - started < 3
    # A broken file keeps the last valid state.
    tokens.write_text("- {name: broken")
    time.sleep(1.5)
    assert call(port, "/crm/leads/z", "t-orders").status == 200
    assert gateway.wait_log(lambda doc: "caller" in str(doc.get("logger"))) is not None


def test_caller_auth_off_still_removes_proxy_authorization(
    gateway_factory: GatewayFactory, upstream: MockUpstream
) -> None:
    gateway = gateway_factory([application("erp", [service("orders", [api(upstream.base)])])])
    response = call(gateway.proxy_port, "/erp/orders/x", "anything")
    assert response.status == 200 and seen_proxy_authorization(response) == []


# -- kubernetes mode --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kube() -> KubeCluster:
    cluster = shared_cluster()
    for doc in load_manifests(DEPLOY / "caller-auth" / "auth-delegator.yaml"):
        cluster.apply(doc)
    return cluster


@pytest.fixture
def objects(kube: KubeCluster) -> Iterator[Objects]:
    tracker = Objects(kube)
    yield tracker
    tracker.cleanup()


def test_kubernetes_mode_through_the_gateway(
    kube: KubeCluster,
    objects: Objects,
    gateways: Factory,  # noqa: F811 (the fixture imported above)
    upstream: MockUpstream,
) -> None:
    erp, crm = unique("erp"), unique("crm")
    for name in (erp, crm):
        objects.apply(kube_application(name, [api_service("Orders", upstream.base + "/" + name)]))
    account = unique("orders")
    user = f"system:serviceaccount:{NAMESPACE}:{account}"
    objects.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": NAMESPACE},
        }
    )
    role = unique("use-erp")
    rbac = "rbac.authorization.k8s.io/v1"
    objects.apply(
        {
            "apiVersion": rbac,
            "kind": "ClusterRole",
            "metadata": {"name": role},
            "rules": [
                {
                    "apiGroups": ["applicationconnector.kyma-project.io"],
                    "resources": ["applications"],
                    "resourceNames": [erp],
                    "verbs": ["use"],
                }
            ],
        }
    )
    objects.apply(
        {
            "apiVersion": rbac,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": role},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}],
        }
    )
    token = kube.service_account_token(account, audiences=["appgateway"])
    elsewhere = kube.service_account_token(account, audiences=["another-service"])
    gateway = gateways(args=["--caller-auth", "kubernetes", "--caller-cache-ttl", "1"])
    port = gateway.proxy_port

    # Until the Application is read and the binding reaches the authorizer, keep asking.
    assert wait_until(lambda: call(port, f"/{erp}/orders/x", token).status == 200, 20)
    allowed = call(port, f"/{erp}/orders/y", token)
    assert allowed.status == 200 and seen_proxy_authorization(allowed) == []
    assert call(port, f"/{crm}/orders/x", token).status == 403
    other = call(port, f"/{erp}/orders/x", elsewhere)
    assert (other.status, other.header("proxy-authenticate")) == (407, REALM)
    assert call(port, f"/{erp}/orders/x", None).status == 407
    assert access_line(gateway, f"/{erp}/orders/y", 200)["caller"] == user
    assert not any(token in line for line in gateway.raw_lines)


def test_one_keep_alive_connection_with_changing_tokens(
    gateway_factory: GatewayFactory, upstream: MockUpstream, tmp_path: Path
) -> None:
    """A connection remembers its last allowed decision (caller/bearer.Remembered): another
    token or Application on the same connection is judged as itself, and a token withdrawn
    from the file stops working on a connection that used it a moment ago."""
    tokens = tmp_path / "callers.yaml"
    gateway = tokens_gateway(gateway_factory, upstream, tokens)
    conn = http.client.HTTPConnection("127.0.0.1", gateway.proxy_port, timeout=10)

    def status(path: str, token: str) -> int:
        conn.request("GET", path, headers={"Proxy-Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        response.read()
        assert not response.will_close  # all on one connection
        return response.status

    sequence = [
        ("/erp/orders/1", "t-orders", 200),
        ("/crm/leads/2", "t-orders", 403),
        ("/crm/leads/3", "t-ops", 200),
        ("/crm/leads/4", "guess", 407),
        ("/crm/leads/5", "t-orders", 403),
        ("/erp/orders/6", "t-orders", 200),
        ("/erp/orders/6", "t-orders", 200),  # recalled
        ("/crm/leads/6", "t-orders", 403),
    ]
    assert [status(path, token) for path, token, _ in sequence] == [s for _, _, s in sequence]
    assert access_line(gateway, "/crm/leads/3", 200)["caller"] == "ops"
    assert access_line(gateway, "/erp/orders/6", 200)["caller"] == "orders-team"

    tokens_file(tokens, [("ops", "t-ops", '["*"]')])  # t-orders withdrawn
    assert wait_until(lambda: status("/erp/orders/7", "t-orders") == 407, 5)
    assert status("/erp/orders/8", "t-ops") == 200
    conn.close()
