"""deploy/caller-auth applied to the real API server: the gateway may review callers, and the
example grant lets exactly team-a/orders use exactly the Application erp."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from appgateway.caller.reviews import ACCESS_REVIEWS
from tests.kube import DEPLOY, SA_USER, Json, KubeCluster, Objects, load_manifests, missing_fields

FOLDER = DEPLOY / "caller-auth"
ORDERS = "system:serviceaccount:team-a:orders"


def kustomized(folder: Path) -> list[Json]:
    """The objects of a kustomization's `resources` (files only, as these are)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    return [doc for name in kustomization["resources"] for doc in load_manifests(folder / name)]


def can(
    kube: KubeCluster,
    user: str,
    verb: str,
    group: str,
    resource: str,
    name: str = "",
    groups: tuple[str, ...] = (),
) -> bool:
    """`kubectl auth can-i VERB RESOURCE/NAME --as USER`, asked with a SubjectAccessReview."""
    attributes = {"group": group, "resource": resource, "verb": verb}
    if name:
        attributes["name"] = name
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": list(groups), "resourceAttributes": attributes},
    }
    return kube.call("POST", ACCESS_REVIEWS, body)["status"].get("allowed") is True


def apply_all(kube: KubeCluster, objects: Objects | None, docs: list[Json]) -> None:
    for doc in docs:
        stored = objects.apply(doc) if objects is not None else kube.apply(doc)
        assert missing_fields(doc, stored) == [], doc["metadata"]["name"]


def test_the_gateway_may_review_callers(kube: KubeCluster) -> None:
    docs = kustomized(FOLDER)
    assert [(d["kind"], d["roleRef"]["name"]) for d in docs] == [
        ("ClusterRoleBinding", "system:auth-delegator")
    ]
    apply_all(kube, None, docs)  # kept: the caller tests rely on it like on deploy/rbac.yaml
    KubeCluster.wait_for(
        lambda: can(kube, SA_USER, "create", "authentication.k8s.io", "tokenreviews"), 15
    )
    assert can(kube, SA_USER, "create", "authorization.k8s.io", "subjectaccessreviews")
    # Nothing more than reviewing: no Application use, no Secrets beyond deploy/rbac.yaml.
    assert not can(
        kube, SA_USER, "use", "applicationconnector.kyma-project.io", "applications", "erp"
    )
    assert not can(kube, SA_USER, "create", "", "serviceaccounts/token")


@pytest.mark.parametrize(
    ("user", "verb", "group", "resource", "name", "allowed"),
    [
        (ORDERS, "use", "applicationconnector.kyma-project.io", "applications", "erp", True),
        (ORDERS, "use", "applicationconnector.kyma-project.io", "applications", "crm", False),
        (ORDERS, "use", "applicationconnector.kyma-project.io", "applications", "", False),
        (ORDERS, "get", "applicationconnector.kyma-project.io", "applications", "erp", False),
        (ORDERS, "update", "applicationconnector.kyma-project.io", "applications", "erp", False),
        (ORDERS, "use", "", "secrets", "erp", False),
        (ORDERS, "use", "other.example.com", "applications", "erp", False),
        (
            "system:serviceaccount:team-a:billing",
            "use",
            "applicationconnector.kyma-project.io",
            "applications",
            "erp",
            False,
        ),
        (
            "system:serviceaccount:team-b:orders",
            "use",
            "applicationconnector.kyma-project.io",
            "applications",
            "erp",
            False,
        ),
        ("orders", "use", "applicationconnector.kyma-project.io", "applications", "erp", False),
    ],
)
def test_the_example_grants_exactly_orders_use_erp(
    kube: KubeCluster,
    objects: Objects,
    user: str,
    verb: str,
    group: str,
    resource: str,
    name: str,
    allowed: bool,
) -> None:
    docs = kustomized(FOLDER / "example")
    assert sorted(d["kind"] for d in docs) == ["ClusterRole", "ClusterRoleBinding"]
    apply_all(kube, objects, docs)
    KubeCluster.wait_for(
        lambda: can(
            kube, ORDERS, "use", "applicationconnector.kyma-project.io", "applications", "erp"
        ),
        15,
    )
    assert can(kube, user, verb, group, resource, name) is allowed
    # The ServiceAccount's groups grant nothing by themselves.
    groups = ("system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated")
    assert not can(
        kube,
        "someone",
        "use",
        "applicationconnector.kyma-project.io",
        "applications",
        "erp",
        groups,
    )
