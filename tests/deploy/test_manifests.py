"""deploy/ rendered by kubectl's kustomize and checked offline: the Kubernetes 1.30 and 1.37
schemas (kubernetes-validate --strict, every warning a failure), and the rules the files must
keep: what each overlay holds, what the Services publish, what the NetworkPolicy admits, how
the kyma overlays fit Kyma's own objects, and that monitoring scrapes what the alerts select.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.kustomize import (
    CUSTOM_KINDS,
    DEPLOY,
    FOLDERS,
    KUBERNETES_VALIDATE,
    KYMA_OWNED,
    KYMA_POD_LABELS,
    KYMA_SELECTOR,
    KYMA_SERVICE,
    NAMESPACE,
    REPO,
    Json,
    container_ports,
    dashboard,
    find,
    pod_template,
    render,
    render_warnings,
    rendered_text,
    selects,
)

VALIDATED_VERSIONS = ("1.30.0", "1.37.0")
USER_FOLDERS = [f for f in FOLDERS if f.startswith("overlays/")] + [
    "crd",
    "monitoring",
    "caller-auth",
    "caller-auth/example",
]
ADMIN_PORT = 8081


@pytest.mark.parametrize("folder", FOLDERS)
def test_renders_without_warnings(folder: str) -> None:
    docs = render(folder)
    assert docs
    assert render_warnings(folder) == ""
    keys = [(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "an object twice"


@pytest.mark.parametrize("folder", FOLDERS)
def test_valid_for_current_kubernetes(folder: str, tmp_path: Path) -> None:
    """Every object passes the strict schema (no unknown field) of each version; the only
    warning allowed is the missing schema of another project's custom resource."""
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered_text(folder))
    args = [str(KUBERNETES_VALIDATE), "--strict"]
    for version in VALIDATED_VERSIONS:
        args += ["-k", version]
    result = subprocess.run(
        [*args, str(path)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    allowed = {
        f"WARN {path} Couldn't find schema for kind {kind} with api version {api} "
        f"for kubernetes version {version.rsplit('.', 1)[0]}"
        for api, kind in CUSTOM_KINDS
        for version in VALIDATED_VERSIONS
    }
    problems = [line for line in lines if not line.startswith("INFO ") and line not in allowed]
    assert problems == []
    docs = render(folder)
    builtin = [d for d in docs if (d["apiVersion"], d["kind"]) not in CUSTOM_KINDS]
    passed = [line for line in lines if line.startswith("INFO ") and " passed " in line]
    assert len(passed) == len(builtin) * len(VALIDATED_VERSIONS)


def test_validation_catches_what_failed_before(tmp_path: Path) -> None:
    """The old PodDisruptionBudget (policy/v1beta1, gone since 1.25) and a misspelt field are
    both reported: the check above can fail."""
    old = {
        "apiVersion": "policy/v1beta1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "x"},
        "spec": {"minAvailable": 1},
    }
    typo = find(render("base"), "Service", "appgateway")
    typo["spec"]["selectr"] = {"a": "b"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all([old, typo]))
    result = subprocess.run(
        [str(KUBERNETES_VALIDATE), "--strict", "-k", "1.30.0", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "Couldn't find schema for kind PodDisruptionBudget" in result.stdout
    assert "ERROR" in result.stdout and "selectr" in result.stdout
    assert result.returncode != 0


BASE_KINDS = [
    "ClusterRole",
    "ClusterRoleBinding",
    "Deployment",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "PriorityClass",
    "Role",
    "RoleBinding",
    "Service",
    "ServiceAccount",
]


@pytest.mark.parametrize(
    ("folder", "kinds"),
    [
        ("crd", ["CustomResourceDefinition"]),
        ("base", BASE_KINDS),
        ("overlays/standalone", sorted([*BASE_KINDS, "CustomResourceDefinition"])),
        ("overlays/kyma", BASE_KINDS),
        ("overlays/kyma-all-traffic", sorted([*BASE_KINDS, "VirtualService"])),
        ("overlays/kyma-module-removed", sorted([*BASE_KINDS, "CustomResourceDefinition"])),
        ("monitoring", ["ConfigMap", "PrometheusRule", "Service", "ServiceMonitor"]),
    ],
)
def test_what_each_folder_holds(folder: str, kinds: list[str]) -> None:
    assert sorted({d["kind"] for d in render(folder)}) == kinds


CURRENT_API_VERSIONS = {
    "v1",
    "apps/v1",
    "policy/v1",
    "autoscaling/v2",
    "networking.k8s.io/v1",
    "rbac.authorization.k8s.io/v1",
    "scheduling.k8s.io/v1",
    "apiextensions.k8s.io/v1",
    "monitoring.coreos.com/v1",
    "networking.istio.io/v1",
}


@pytest.mark.parametrize("folder", FOLDERS)
def test_only_ga_api_versions(folder: str) -> None:
    assert {d["apiVersion"] for d in render(folder)} <= CURRENT_API_VERSIONS


@pytest.mark.parametrize("folder", FOLDERS)
def test_namespaced_objects_in_kyma_system(folder: str) -> None:
    cluster_scoped = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    cluster_scoped.add("PriorityClass")
    for doc in render(folder):
        expected = None if doc["kind"] in cluster_scoped else NAMESPACE
        assert doc["metadata"].get("namespace") == expected, doc["metadata"]["name"]


# -- the gateway's pods ------------------------------------------------------------------------

OVERLAYS = [f for f in FOLDERS if f.startswith("overlays/")]


@pytest.mark.parametrize("folder", OVERLAYS)
def test_deployment_for_availability(folder: str) -> None:
    docs = render(folder)
    deployment = find(docs, "Deployment", "appgateway")
    spec = deployment["spec"]
    assert "replicas" not in spec, "the autoscaler owns the replica count"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    template = spec["template"]
    pod = template["spec"]
    own = spec["selector"]["matchLabels"]
    assert selects(own, template["metadata"]["labels"])
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert set(spread) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in spread.values():
        assert constraint["labelSelector"]["matchLabels"] == own
    priority = find(docs, "PriorityClass", pod["priorityClassName"])
    assert 0 < priority["value"] <= 1_000_000_000 and not priority.get("globalDefault")
    hpa = find(docs, "HorizontalPodAutoscaler", "appgateway")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "appgateway",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = find(docs, "PodDisruptionBudget", "appgateway")
    assert pdb["spec"]["selector"]["matchLabels"] == own
    assert pdb["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("folder", OVERLAYS)
def test_pod_is_locked_down(folder: str) -> None:
    docs = render(folder)
    pod = pod_template(docs)["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["serviceAccountName"] == "appgateway"
    # SIGTERM drain (--shutdown-timeout 10 s) after the preStop pause fits the grace period.
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pause + 10 < pod["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("folder", OVERLAYS)
def test_probes_and_scrapes_use_the_admin_port(folder: str) -> None:
    docs = render(folder)
    template = pod_template(docs)
    (container,) = template["spec"]["containers"]
    ports = container_ports(docs)
    assert ports == {"http-proxy": 8080, "http-admin": ADMIN_PORT, "http-compass": 8082}
    for probe, path in (("livenessProbe", "/v1/health"), ("readinessProbe", "/v1/ready")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http-admin"}
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ADMIN_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def _published(service: Json, ports: dict[str, int]) -> set[int]:
    """The pod ports a Service sends traffic to."""
    out = set()
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        out.add(ports[target] if isinstance(target, str) else target)
    return out


@pytest.mark.parametrize("folder", OVERLAYS)
def test_services_never_publish_the_admin_port(folder: str) -> None:
    docs = render(folder)
    ports = container_ports(docs)
    services = [d for d in docs if d["kind"] == "Service"]
    assert services
    for service in services:
        assert ADMIN_PORT not in _published(service, ports), service["metadata"]["name"]
        assert "prometheus.io/scrape" not in service["metadata"].get("annotations", {})
    callers = find(docs, "Service", "appgateway")
    assert _published(callers, ports) == {8080, 8082}


def _peers_for(policy: Json, port: int) -> list[Json]:
    peers: list[Json] = []
    for rule in policy["spec"]["ingress"]:
        if any(p["port"] == port for p in rule["ports"]):
            peers += rule["from"]
    return peers


@pytest.mark.parametrize("folder", OVERLAYS)
def test_network_policy(folder: str) -> None:
    docs = render(folder)
    policy = find(docs, "NetworkPolicy", "appgateway")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "appgateway"}
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    for rule in spec["ingress"]:
        assert rule["from"], "a rule without peers admits everyone"
    for port in (8080, 8082):
        assert _peers_for(policy, port) == [{"namespaceSelector": {}}]
    # The admin port: only named Prometheus pods (probes come from the node).
    admin = _peers_for(policy, ADMIN_PORT)
    assert admin
    for peer in admin:
        assert peer["podSelector"]["matchLabels"], peer
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    assert monitoring in admin
    egress = {(p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (443, "TCP"), (80, "TCP"), (6443, "TCP")} <= egress
    kyma = folder.startswith("overlays/kyma")
    agent = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "telemetry-metric-agent"}}}
    assert (agent in admin) is kyma
    assert ((15012, "TCP") in egress) is kyma


# -- Kyma, side by side ------------------------------------------------------------------------

KYMA_OVERLAYS = [f for f in OVERLAYS if f.startswith("overlays/kyma")]


@pytest.mark.parametrize("folder", KYMA_OVERLAYS)
def test_kyma_service_selects_appgateway_pods(folder: str) -> None:
    """Kyma's unchanged Service balances over appgateway's pods too: its selector matches the
    pod labels, and each of its ports (no targetPort: the same number) is a container port."""
    docs = render(folder)
    template = pod_template(docs)
    assert selects(KYMA_SERVICE["spec"]["selector"], template["metadata"]["labels"])
    numbers = set(container_ports(docs).values())
    assert {p["port"] for p in KYMA_SERVICE["spec"]["ports"]} <= numbers
    annotations = template["metadata"]["annotations"]
    assert annotations["sidecar.istio.io/inject"] == "true"
    assert annotations["traffic.sidecar.istio.io/excludeInboundPorts"] == str(ADMIN_PORT)


@pytest.mark.parametrize("folder", KYMA_OVERLAYS)
def test_kyma_pods_stay_outside_appgateway_selectors(folder: str) -> None:
    """Kyma's gateway pods count neither for appgateway's autoscaler, disruption budget and
    NetworkPolicy, nor for its own Service."""
    docs = render(folder)
    selectors = [
        find(docs, "Deployment", "appgateway")["spec"]["selector"]["matchLabels"],
        find(docs, "PodDisruptionBudget", "appgateway")["spec"]["selector"]["matchLabels"],
        find(docs, "NetworkPolicy", "appgateway")["spec"]["podSelector"]["matchLabels"],
        find(docs, "Service", "appgateway")["spec"]["selector"],
    ]
    for selector in selectors:
        assert not selects(selector, KYMA_POD_LABELS)


@pytest.mark.parametrize("folder", ["overlays/kyma", "overlays/kyma-all-traffic"])
def test_side_by_side_overlays_leave_kyma_objects_alone(folder: str) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in render(folder)}
    assert names & KYMA_OWNED == set()


def test_all_traffic_routes_to_existing_ports() -> None:
    docs = render("overlays/kyma-all-traffic")
    service = find(docs, "VirtualService", "central-application-gateway-to-appgateway")
    fqdn = "{}.kyma-system.svc.cluster.local"
    assert service["spec"]["hosts"] == [fqdn.format("central-application-gateway")]
    services = {fqdn.format("appgateway"): find(docs, "Service", "appgateway")}
    services[fqdn.format("central-application-gateway")] = KYMA_SERVICE
    matched = []
    for route in service["spec"]["http"]:
        (match,) = route["match"]
        matched.append(match["port"])
        weights = {}
        for leg in route["route"]:
            host, port = leg["destination"]["host"], leg["destination"]["port"]["number"]
            assert port == match["port"]
            assert port in {p["port"] for p in services[host]["spec"]["ports"]}, (host, port)
            weights[host] = leg["weight"]
        assert weights == {
            fqdn.format("appgateway"): 100,
            fqdn.format("central-application-gateway"): 0,
        }
    assert sorted(matched) == [8080, 8082]


def test_module_removed_service_keeps_kyma_urls() -> None:
    docs = render("overlays/kyma-module-removed")
    service = find(docs, "Service", "central-application-gateway")
    assert service["spec"]["selector"] == KYMA_SELECTOR
    assert selects(service["spec"]["selector"], pod_template(docs)["metadata"]["labels"])
    kyma = {(p["name"], p["port"]) for p in KYMA_SERVICE["spec"]["ports"]}
    ours = {(p["name"], p["port"]) for p in service["spec"]["ports"]}
    assert ours == kyma - {("http-api-port", ADMIN_PORT)}
    ports = container_ports(docs)
    assert _published(service, ports) == {8080, 8082}


# -- monitoring --------------------------------------------------------------------------------


def test_service_monitor_scrapes_the_admin_port_as_job_appgateway() -> None:
    docs = render("monitoring")
    metrics = find(docs, "Service", "appgateway-metrics")
    assert metrics["spec"]["clusterIP"] == "None"
    pod_labels = pod_template(render("overlays/standalone"))["metadata"]["labels"]
    assert selects(metrics["spec"]["selector"], pod_labels)
    assert [(p["port"], p["targetPort"]) for p in metrics["spec"]["ports"]] == [
        (ADMIN_PORT, "http-admin")
    ]
    monitor = find(docs, "ServiceMonitor", "appgateway")["spec"]
    assert selects(monitor["selector"]["matchLabels"], metrics["metadata"]["labels"])
    assert monitor["namespaceSelector"]["matchNames"] == [NAMESPACE]
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in {p["name"] for p in metrics["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The alert rules select job="appgateway": the job is the value of jobLabel on the Service.
    assert metrics["metadata"]["labels"][monitor["jobLabel"]] == "appgateway"
    rules = find(docs, "PrometheusRule", "appgateway")["spec"]["groups"]
    for rule in (r for group in rules for r in group["rules"]):
        assert 'job="appgateway"' in rule["expr"], rule["alert"]


def test_dashboard_config_map_holds_the_dashboard() -> None:
    config_map = find(render("monitoring"), "ConfigMap", "appgateway-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    text = (DEPLOY / "monitoring" / "dashboard.json").read_text()
    assert config_map["data"] == {"appgateway.json": text}


def test_dashboard_structure() -> None:
    data = dashboard()
    panels = data["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in data["templating"]["list"]}
    assert variables == {"datasource", "namespace", "app"}
    titles = []
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        titles.append(panel["title"])
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets)
        for target in targets:
            assert target["expr"].strip()
            used = set(re.findall(r"\$(\w+)", target["expr"]))
            assert used <= variables | {"__rate_interval"}, used
    # What an operator looks for first, each in a panel of its own.
    for needle in (
        "Requests",
        "Request duration",
        "Upstream errors",
        "Token",
        "CSRF",
        "Cache hit",
        "In-flight",
        "Registry size",
        "Registry age",
    ):
        assert any(needle in title for title in titles), needle


# -- documentation -----------------------------------------------------------------------------


def test_documented_apply_commands_name_tested_folders() -> None:
    """Every `kubectl apply -k deploy/...` in the READMEs is a folder these tests render."""
    found = set()
    for readme in (REPO / "README.md", DEPLOY / "README.md"):
        found |= set(re.findall(r"kubectl apply -k (deploy/[\w/.-]+)", readme.read_text()))
    assert found
    assert {f.removeprefix("deploy/").rstrip("/") for f in found} <= set(USER_FOLDERS)
