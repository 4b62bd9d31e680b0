"""The rendered overlays of deploy/ on the suite's real kube-apiserver (1.20, tests/kube.py),
and the side-by-side migration next to Kyma's gateway as the module and a user would do it.

1.20 lacks policy/v1 and autoscaling/v2 (GA in 1.21 and 1.23): those two objects are sent as
policy/v1beta1 and autoscaling/v2beta2, whose fields are the same, and the server must keep
every field sent. The schemas of current versions are checked in test_manifests.py.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.deploy.kustomize import (
    CUSTOM_KINDS,
    KUBECTL,
    KYMA_MANAGER,
    KYMA_POD_LABELS,
    KYMA_SELECTOR,
    KYMA_SERVICE,
    NAMESPACE,
    Json,
    for_kubernetes_1_20,
    pod_template,
    render,
)
from tests.kube import (
    ADMIN_TOKEN,
    KubeCluster,
    api_service,
    application,
    missing_fields,
    unique,
)

pytestmark = pytest.mark.timeout(1500)  # the first test may build kube-apiserver


@pytest.mark.parametrize(
    "folder",
    ["base", "overlays/standalone", "overlays/kyma", "overlays/kyma-module-removed"],
)
def test_overlay_applies_server_side(kube: KubeCluster, folder: str) -> None:
    applied = 0
    for doc in render(folder):
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        sent = for_kubernetes_1_20(doc)
        stored = kube.apply(sent, dry_run=True)
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        assert missing_fields(sent, stored) == [], f"{name}: fields the API server dropped"
        applied += 1
    assert applied >= 11  # base: 11 objects


def test_conversion_touches_only_the_two_missing_versions() -> None:
    changed = {
        (doc["apiVersion"], doc["kind"], for_kubernetes_1_20(doc)["apiVersion"])
        for doc in render("overlays/standalone")
        if for_kubernetes_1_20(doc) != doc
    }
    assert changed == {
        ("policy/v1", "PodDisruptionBudget", "policy/v1beta1"),
        ("autoscaling/v2", "HorizontalPodAutoscaler", "autoscaling/v2beta2"),
    }


# -- side by side with Kyma's gateway ----------------------------------------------------------


def server_side_apply(kube: KubeCluster, doc: Json, manager: str, *, force: bool) -> Json:
    params = {"fieldManager": manager}
    if force:
        params["force"] = "true"
    return kube.call(
        "PATCH",
        kube.resource_path(doc),
        json.dumps(doc).encode(),
        content_type="application/apply-patch+yaml",
        params=params,
    )


def kubectl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def pod_from(template: Json, name: str) -> Json:
    """The pod a ReplicaSet would create from `template`. Without a token volume: in 1.20 that
    needs a token Secret, which only the controller manager (not run here) creates."""
    spec = copy.deepcopy(template["spec"])
    spec["automountServiceAccountToken"] = False
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": dict(template["metadata"]["labels"]),
            "annotations": dict(template["metadata"].get("annotations", {})),
        },
        "spec": spec,
    }


def selected(kube: KubeCluster, selector: dict[str, str]) -> set[str]:
    """Pod names the API server itself selects with `selector`."""
    query = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    found = kube.call(
        "GET", f"/api/v1/namespaces/{NAMESPACE}/pods", params={"labelSelector": query}
    )
    return {item["metadata"]["name"] for item in found["items"]}


SHARED_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
"""What the suite's cluster set up from deploy/base (tests/kube.py) and other tests log in with."""
SHARED_PLURALS = {"serviceaccounts", "clusterroles", "clusterrolebindings", "roles", "rolebindings"}


@pytest.fixture
def cleanup(kube: KubeCluster) -> Iterator[list[Json]]:
    """Objects to delete after the test (the ServiceAccount and RBAC stay: the suite's
    cluster set them up and other tests log in with them)."""
    docs: list[Json] = []
    yield docs
    for doc in reversed(docs):
        kube.delete(doc)


def test_side_by_side_with_kyma(kube: KubeCluster, tmp_path: Path, cleanup: list[Json]) -> None:
    """The module creates its Service (server-side apply, its field manager); the user applies
    the kyma overlay as the README says (`kubectl apply`, client-side); the module re-applies
    its Service with force, as it does on every reconcile. Kyma's selector is untouched, no
    field of it belongs to anyone else, and the API server selects appgateway's pods with it."""
    service = copy.deepcopy(KYMA_SERVICE)
    cleanup.append(service)
    created = server_side_apply(kube, service, KYMA_MANAGER, force=False)
    assert created["spec"]["selector"] == KYMA_SELECTOR

    docs = render("overlays/kyma")
    cleanup += [for_kubernetes_1_20(d) for d in docs if d["kind"] not in SHARED_KINDS]
    manifest = tmp_path / "kyma.yaml"
    manifest.write_text(yaml.safe_dump_all([for_kubernetes_1_20(d) for d in docs]))
    config = kube.kubeconfig(tmp_path / "kubeconfig", token=ADMIN_TOKEN)
    result = kubectl(config, "apply", "-f", str(manifest))
    assert result.returncode == 0, result.stderr
    # The only warnings: the suite's own ServiceAccount and RBAC were created without kubectl.
    for line in result.stderr.splitlines():
        kind = line.removeprefix("Warning: resource ").split("/", 1)[0]
        assert kind in SHARED_PLURALS and "last-applied-configuration" in line, line
    assert "deployment.apps/appgateway created" in result.stdout
    assert "central-application-gateway" not in result.stdout

    reapplied = server_side_apply(kube, service, KYMA_MANAGER, force=True)
    stored = kube.call("GET", kube.resource_path(service))
    for doc in (reapplied, stored):
        assert doc["spec"]["selector"] == KYMA_SELECTOR
        ports = [(p["name"], p["port"], p["targetPort"]) for p in doc["spec"]["ports"]]
        assert ports == [(p["name"], p["port"], p["port"]) for p in KYMA_SERVICE["spec"]["ports"]]
    managers = {entry["manager"] for entry in stored["metadata"]["managedFields"]}
    assert managers == {KYMA_MANAGER}

    ours, theirs = unique("appgateway-pod"), unique("kyma-gateway-pod")
    template = pod_template(docs)
    kyma_template = {
        "metadata": {"labels": KYMA_POD_LABELS},
        "spec": {
            "serviceAccountName": "appgateway",
            "containers": [{"name": "gateway", "image": "kyma-gateway"}],
        },
    }
    for pod in (pod_from(template, ours), pod_from(kyma_template, theirs)):
        cleanup.append(pod)
        kube.call("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", pod)
    assert selected(kube, KYMA_SELECTOR) == {ours, theirs}
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert selected(kube, deployment["spec"]["selector"]["matchLabels"]) == {ours}


def test_module_removed_overlay_after_the_module(
    kube: KubeCluster, tmp_path: Path, cleanup: list[Json]
) -> None:
    """Once the module (and its Service) are gone, kyma-module-removed brings back a Service
    with the old name and Kyma's selector, which selects appgateway's pods."""
    docs = render("overlays/kyma-module-removed")
    service = next(
        d
        for d in docs
        if d["kind"] == "Service" and d["metadata"]["name"] == KYMA_SERVICE["metadata"]["name"]
    )
    cleanup.append(service)
    manifest = tmp_path / "service.yaml"
    manifest.write_text(yaml.safe_dump(service))
    config = kube.kubeconfig(tmp_path / "kubeconfig", token=ADMIN_TOKEN)
    result = kubectl(config, "apply", "-f", str(manifest))
    assert result.returncode == 0, result.stderr
    stored = kube.call("GET", kube.resource_path(service))
    assert stored["spec"]["selector"] == KYMA_SELECTOR
    assert sorted(p["port"] for p in stored["spec"]["ports"]) == [8080, 8082]


def test_applications_backup_restores(
    kube: KubeCluster, tmp_path: Path, cleanup: list[Json]
) -> None:
    """deploy/README.md's backup before any module removal, and its restore: every
    Application comes back with its spec (kubectl apply creates them afresh)."""
    docs = [
        application(unique("backup"), [api_service("Orders", "https://erp.example.com/o")]),
        application(unique("backup"), [api_service("Stock", "https://erp.example.com/s")]),
    ]
    for doc in docs:
        cleanup.append(doc)
        kube.apply(doc)
    config = kube.kubeconfig(tmp_path / "kubeconfig", token=ADMIN_TOKEN)
    backup = kubectl(
        config, "get", "applications.applicationconnector.kyma-project.io", "-o", "yaml"
    )
    assert backup.returncode == 0, backup.stderr
    path = tmp_path / "applications-backup.yaml"
    path.write_text(backup.stdout)
    for doc in docs:
        kube.delete(doc)
    for doc in docs:
        assert kube.request("GET", kube.resource_path(doc))[0] == 404
    restored = kubectl(config, "apply", "-f", str(path))
    assert restored.returncode == 0, restored.stderr
    for doc in docs:
        stored = kube.call("GET", kube.resource_path(doc))
        assert stored["spec"] == doc["spec"]
