"""--caller-auth kubernetes against the real kube-apiserver of the test suite (tests/kube.py).

Callers hold ServiceAccount tokens from the TokenRequest API; access is plain RBAC (a
ClusterRole with `verbs: [use]` and `resourceNames`, bound to the ServiceAccount). The gateway
authenticates as its own ServiceAccount, bound to system:auth-delegator by
deploy/caller-auth. A FaultProxy in front of the real server counts the reviews and plays a
stopped API server without stopping the one the other tests share.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from appgateway import flow
from appgateway.caller.bearer import jwt_expiry
from appgateway.caller.kubernetes import KubernetesCallerAuth
from appgateway.caller.reviews import ACCESS_REVIEWS, TOKEN_REVIEWS
from appgateway.errors import CallerAuthUnavailable, CallerForbidden, CallerUnauthenticated
from appgateway.flow import Pending
from appgateway.metrics import Metrics
from appgateway.registry.kubeclient import KubeClient, load_auth
from tests.caller.conftest import Connection, lines, log_text
from tests.kube import (
    DEPLOY,
    NAMESPACE,
    NOWATCH_TOKEN,
    SA_TOKEN,
    SA_USER,
    FaultProxy,
    Json,
    KubeCluster,
    Objects,
    load_manifests,
    unique,
)

RBAC = "rbac.authorization.k8s.io/v1"
GROUP = "applicationconnector.kyma-project.io"
RESULTS = ("allowed", "denied", "unauthenticated", "unavailable")


def review_access(kube: KubeCluster, user: str, app: str, verb: str = "use") -> bool:
    """What the API server itself answers (as `kubectl auth can-i` would)."""
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "resourceAttributes": {
                "group": GROUP,
                "resource": "applications",
                "name": app,
                "verb": verb,
            },
        },
    }
    answer = kube.call("POST", ACCESS_REVIEWS, body)
    return answer["status"].get("allowed") is True


async def settle(check: Callable[[], bool], within: float = 15.0) -> None:
    """RBAC changes reach the authorizer through an informer: wait until it has them."""
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, "RBAC change not in effect"
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def delegated(kube: KubeCluster) -> None:
    """The gateway's extra RBAC from deploy/caller-auth, as an operator would apply it."""
    for doc in load_manifests(DEPLOY / "caller-auth" / "auth-delegator.yaml"):
        kube.apply(doc)
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": SA_USER,
            "resourceAttributes": {
                "group": "authentication.k8s.io",
                "resource": "tokenreviews",
                "verb": "create",
            },
        },
    }
    KubeCluster.wait_for(
        lambda: kube.call("POST", ACCESS_REVIEWS, body)["status"].get("allowed") is True, 15
    )


class Caller:
    """A ServiceAccount in kyma-system, made for one test, and its RBAC grants."""

    def __init__(self, kube: KubeCluster, objects: Objects) -> None:
        self.kube = kube
        self.objects = objects
        self.name = unique("orders")
        self.user = f"system:serviceaccount:{NAMESPACE}:{self.name}"
        self.account: Json = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": self.name, "namespace": NAMESPACE},
        }
        objects.apply(self.account)

    def token(self, *audiences: str, seconds: int = 3600) -> bytes:
        token = self.kube.service_account_token(
            self.name, seconds, namespace=NAMESPACE, audiences=audiences
        )
        return b"Bearer " + token.encode()

    async def grant(self, *apps: str, verbs: tuple[str, ...] = ("use",)) -> Json:
        """A ClusterRole for `apps` and its binding; returns the binding (to delete)."""
        name = unique("use-apps")
        self.objects.apply(
            {
                "apiVersion": RBAC,
                "kind": "ClusterRole",
                "metadata": {"name": name},
                "rules": [
                    {
                        "apiGroups": [GROUP],
                        "resources": ["applications"],
                        "resourceNames": list(apps),
                        "verbs": list(verbs),
                    }
                ],
            }
        )
        binding = {
            "apiVersion": RBAC,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": self.name, "namespace": NAMESPACE}],
        }
        self.objects.apply(binding)
        await settle(lambda: review_access(self.kube, self.user, apps[0], verbs[0]))
        return binding


Start = Callable[..., Awaitable[KubernetesCallerAuth]]


@pytest.fixture
async def gateway(
    kube: KubeCluster, proxy: FaultProxy, tmp_path: Path, delegated: None
) -> AsyncIterator[Start]:
    """`await gateway(ttl=..., token=...)`: a started KubernetesCallerAuth that reaches the
    API server through `proxy`, as the gateway's ServiceAccount (or as `token`'s user)."""
    running: list[KubernetesCallerAuth] = []

    async def start(
        ttl: float = 300.0, token: str = SA_TOKEN, metrics: Metrics | None = None, **kw: Any
    ) -> KubernetesCallerAuth:
        config = kube.kubeconfig(
            tmp_path / f"kubeconfig-{len(running)}", token=token, server=proxy.server
        )
        client = KubeClient(load_auth(config, ("", "")))
        auth = KubernetesCallerAuth(
            client, audience="appgateway", ttl=ttl, metrics=metrics or Metrics(), **kw
        )
        await auth.start()
        running.append(auth)
        return auth

    yield start
    for auth in running:
        await auth.stop()


def reviews(proxy: FaultProxy, path: str) -> int:
    return sum(1 for seen in proxy.seen if seen.method == "POST" and seen.path == path)


def counts(metrics: Metrics) -> dict[str, int]:
    return {r: metrics.caller_decisions(r).value for r in RESULTS}


async def test_granted_callers_get_their_applications_only(
    gateway: Start, kube: KubeCluster, objects: Objects, proxy: FaultProxy
) -> None:
    metrics = Metrics()
    auth = await gateway(metrics=metrics)
    caller = Caller(kube, objects)
    erp, crm = unique("erp"), unique("crm")
    await caller.grant(erp)
    token = caller.token("appgateway")
    assert await flow.settle(auth.authorize(token, erp)) == caller.user
    with pytest.raises(CallerForbidden) as info:
        await flow.settle(auth.authorize(token, crm))
    assert (
        info.value.message
        == f"caller {caller.user} may not use the credentials of application {crm}"
    )
    assert (reviews(proxy, TOKEN_REVIEWS), reviews(proxy, ACCESS_REVIEWS)) == (1, 2)
    # Cached: both decisions again without a review, and the allowed one without yielding.
    assert auth.authorize(token, erp) == caller.user
    with pytest.raises(CallerForbidden):
        auth.authorize(token, crm)
    assert (reviews(proxy, TOKEN_REVIEWS), reviews(proxy, ACCESS_REVIEWS)) == (1, 2)
    assert counts(metrics) == {"allowed": 2, "denied": 2, "unauthenticated": 0, "unavailable": 0}


async def test_grants_are_per_application_and_verb(
    gateway: Start, kube: KubeCluster, objects: Objects
) -> None:
    auth = await gateway()
    reader, user = Caller(kube, objects), Caller(kube, objects)
    erp, crm, hr = unique("erp"), unique("crm"), unique("hr")
    await reader.grant(erp, verbs=("get",))  # reading the Application is not using it
    await user.grant(erp, crm)
    with pytest.raises(CallerForbidden):
        await flow.settle(auth.authorize(reader.token("appgateway"), erp))
    token = user.token("appgateway")
    assert await flow.settle(auth.authorize(token, erp)) == user.user
    assert await flow.settle(auth.authorize(token, crm)) == user.user
    with pytest.raises(CallerForbidden):
        await flow.settle(auth.authorize(token, hr))


async def test_tokens_for_another_audience_are_407(
    gateway: Start,
    kube: KubeCluster,
    objects: Objects,
    proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="appgateway.caller")
    metrics = Metrics()
    auth = await gateway(metrics=metrics)
    caller = Caller(kube, objects)
    erp = unique("erp")
    await caller.grant(erp)
    other = caller.token("some-other-service")
    default = caller.token()  # the API server's own audience
    static = b"Bearer " + SA_TOKEN.encode()  # audience-less token of the gateway itself
    for token in (other, default, static, b"Bearer not-a-token"):
        with pytest.raises(CallerUnauthenticated) as info:
            await flow.settle(auth.authorize(token, erp))
        assert info.value.message == "Proxy-Authorization: the Bearer token was not accepted"
        assert info.value.status == 407
        assert info.value.response_headers == (
            (b"Proxy-Authenticate", b'Bearer realm="appgateway"'),
        )
    assert reviews(proxy, TOKEN_REVIEWS) == 4
    assert reviews(proxy, ACCESS_REVIEWS) == 0
    # A rejected token is remembered (10 s): no second review.
    with pytest.raises(CallerUnauthenticated):
        auth.authorize(other, erp)
    assert reviews(proxy, TOKEN_REVIEWS) == 4
    # Malformed or missing: 407 without asking anyone.
    for value in (None, b"Basic YWxpY2U6czNjcmV0", b"Bearer a,b", b"Bearer " + b"x" * 9000):
        with pytest.raises(CallerUnauthenticated):
            auth.authorize(value, erp)
    assert reviews(proxy, TOKEN_REVIEWS) == 4
    assert counts(metrics)["unauthenticated"] == 9
    rejected = lines(caplog, "caller token rejected")
    assert len(rejected) == 4
    assert any("audience" in r.fields["reason"] for r in rejected)  # type: ignore[attr-defined]
    text = log_text(caplog)
    for token in (other, default, static):
        assert token.split(b" ")[1].decode() not in text


def accepted(kube: KubeCluster, token: bytes) -> bool:
    """Does the API server itself (asked as admin) still accept `token` for our audience?"""
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token.split(b" ")[1].decode(), "audiences": ["appgateway"]},
    }
    return kube.call("POST", TOKEN_REVIEWS, body)["status"].get("authenticated") is True


async def test_a_deleted_service_account_stops_access_within_the_ttl(
    gateway: Start, kube: KubeCluster, objects: Objects
) -> None:
    """kube-apiserver itself caches accepted tokens for 10 s (TokenSuccessCacheTTL, not a
    flag), so the gateway's TTL counts from when the API server stops accepting the token.
    All on one connection: the decision it remembers must end with the cached ones."""
    ttl = 1.0
    auth = await gateway(ttl=ttl)
    caller = Caller(kube, objects)
    erp = unique("erp")
    await caller.grant(erp)
    token = caller.token("appgateway")
    conn = Connection()
    assert await flow.settle(auth.authorize(token, erp, conn)) == caller.user
    objects.delete(caller.account)
    deleted = time.monotonic()
    await settle(lambda: not accepted(kube, token), within=20)
    rejected = time.monotonic()
    while True:
        try:
            await flow.settle(auth.authorize(token, erp, conn))
        except CallerUnauthenticated:
            break
        assert time.monotonic() - rejected < ttl + 1.0, "still allowed after the TTL"
        await asyncio.sleep(0.05)
    took = time.monotonic() - rejected
    print(
        f"\nServiceAccount deleted -> API server rejects after {(rejected - deleted):.1f} s "
        f"-> gateway 407 {took * 1000:.0f} ms later (TTL {ttl:g} s)"
    )


@pytest.mark.parametrize("keep_alive", [False, True], ids=["new-connections", "one-connection"])
async def test_a_deleted_binding_stops_access_within_the_ttl(
    gateway: Start, kube: KubeCluster, objects: Objects, keep_alive: bool
) -> None:
    ttl = 1.0
    auth = await gateway(ttl=ttl)
    caller = Caller(kube, objects)
    erp = unique("erp")
    binding = await caller.grant(erp)
    token = caller.token("appgateway")
    conn = Connection() if keep_alive else None
    assert await flow.settle(auth.authorize(token, erp, conn)) == caller.user
    objects.delete(binding)
    deleted = time.monotonic()
    while True:
        try:
            await flow.settle(auth.authorize(token, erp, conn))
        except CallerForbidden:
            break
        assert time.monotonic() - deleted < ttl + 2.0, "still allowed after the TTL"
        await asyncio.sleep(0.05)
    took = time.monotonic() - deleted
    print(f"\nbinding deleted -> 403 after {took * 1000:.0f} ms (TTL {ttl:g} s)")


@pytest.mark.parametrize("keep_alive", [False, True], ids=["new-connections", "one-connection"])
async def test_a_decision_is_not_reused_past_the_token_expiry(
    gateway: Start, kube: KubeCluster, objects: Objects, proxy: FaultProxy, keep_alive: bool
) -> None:
    """The TokenRequest API makes tokens of 10 minutes at least: the gateway's wall clock is
    set ahead instead, so that the token's `exp` comes 1.5 s after the review."""
    ahead = [0.0]
    auth = await gateway(wall=lambda: time.time() + ahead[0])
    caller = Caller(kube, objects)
    erp = unique("erp")
    await caller.grant(erp)
    token = caller.token("appgateway", seconds=600)
    expiry = jwt_expiry(token.split(b" ")[1])
    assert expiry is not None
    ahead[0] = expiry - time.time() - 1.5
    conn = Connection() if keep_alive else None
    assert await flow.settle(auth.authorize(token, erp, conn)) == caller.user
    assert auth.authorize(token, erp, conn) == caller.user  # cached for now
    assert auth.authorize(token, erp, conn) == caller.user  # (one-connection: remembered)
    await asyncio.sleep(1.6)
    started = auth.authorize(token, erp, conn)
    assert isinstance(started, Pending)  # expired: reviewed again
    assert await started.work == caller.user
    assert reviews(proxy, TOKEN_REVIEWS) == 2


async def test_an_unreachable_api_server_keeps_cached_decisions_and_fails_closed(
    gateway: Start,
    kube: KubeCluster,
    objects: Objects,
    proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="appgateway.caller")
    metrics = Metrics()
    auth = await gateway(metrics=metrics)
    known, unknown = Caller(kube, objects), Caller(kube, objects)
    erp, crm, hr = unique("erp"), unique("crm"), unique("hr")
    await known.grant(erp)
    await unknown.grant(erp)
    token, other = known.token("appgateway"), unknown.token("appgateway")
    assert await flow.settle(auth.authorize(token, erp)) == known.user
    with pytest.raises(CallerForbidden):
        await flow.settle(auth.authorize(token, crm))
    await proxy.down()
    # Cached decisions keep working, without a task...
    conn = Connection()
    for _ in range(3):
        assert auth.authorize(token, erp, conn) == known.user
        with pytest.raises(CallerForbidden):
            auth.authorize(token, crm)
    # ...and whatever needs the API server is a 503: an unknown token, an unasked Application.
    for value, app in ((other, erp), (token, hr)):
        with pytest.raises(CallerAuthUnavailable) as info:
            await flow.settle(auth.authorize(value, app))
        assert info.value.status == 503
        assert info.value.message == (
            "caller authorization is unavailable: the Kubernetes API did not answer"
        )
    # Failures are not remembered: the next call asks again (and fails again).
    with pytest.raises(CallerAuthUnavailable):
        await flow.settle(auth.authorize(other, erp))
    assert counts(metrics) == {"allowed": 4, "denied": 4, "unauthenticated": 0, "unavailable": 3}
    (line,) = lines(caplog, "caller authorization unavailable")  # one line per 10 s
    assert line.levelno == logging.WARNING
    assert other.split(b" ")[1].decode() not in log_text(caplog)


async def test_concurrent_first_calls_share_one_review_each(
    gateway: Start, kube: KubeCluster, objects: Objects, proxy: FaultProxy
) -> None:
    metrics = Metrics()
    auth = await gateway(metrics=metrics)
    caller = Caller(kube, objects)
    erp = unique("erp")
    await caller.grant(erp)
    token = caller.token("appgateway")
    started = time.monotonic()
    results = await asyncio.gather(*(flow.settle(auth.authorize(token, erp)) for _ in range(500)))
    took = time.monotonic() - started
    assert results == [caller.user] * 500
    assert reviews(proxy, TOKEN_REVIEWS) == 1
    assert reviews(proxy, ACCESS_REVIEWS) == 1
    assert counts(metrics)["allowed"] == 500
    print(
        f"\n500 concurrent first calls: {took * 1000:.0f} ms, 1 TokenReview, 1 SubjectAccessReview"
    )
    text = metrics.render().decode()
    assert 'appgateway_cache_lookups_total{cache="caller_token",result="miss"} 500.0' in text
    assert auth.authorize(token, erp) == caller.user
    text = metrics.render().decode()
    assert 'appgateway_cache_lookups_total{cache="caller_token",result="hit"} 1.0' in text
    assert 'appgateway_cache_lookups_total{cache="caller_access",result="hit"} 1.0' in text
    conn = Connection()  # the first call remembers, the next two recall: still hits of both
    assert [auth.authorize(token, erp, conn) for _ in range(3)] == [caller.user] * 3
    text = metrics.render().decode()
    assert 'appgateway_cache_lookups_total{cache="caller_token",result="hit"} 4.0' in text
    assert 'appgateway_cache_lookups_total{cache="caller_access",result="hit"} 4.0' in text
    assert counts(metrics)["allowed"] == 504


async def test_the_cold_path_takes_two_reviews(
    gateway: Start, kube: KubeCluster, objects: Objects, proxy: FaultProxy
) -> None:
    auth = await gateway()
    caller = Caller(kube, objects)
    apps = [unique("erp") for _ in range(5)]
    await caller.grant(*apps)
    samples = []
    for n, app in enumerate(apps):  # a new token and a new Application: nothing cached
        token = caller.token("appgateway", seconds=3600 + n)  # (same second, same claims)
        started = time.perf_counter()
        assert await flow.settle(auth.authorize(token, app)) == caller.user
        samples.append(time.perf_counter() - started)
    assert (reviews(proxy, TOKEN_REVIEWS), reviews(proxy, ACCESS_REVIEWS)) == (5, 5)
    samples.sort()
    print(f"\ncold decision (TokenReview + SubjectAccessReview): median {samples[2] * 1000:.1f} ms")


async def test_a_gateway_without_auth_delegator_is_told_why(
    gateway: Start, kube: KubeCluster, objects: Objects, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appgateway.caller")
    auth = await gateway(token=NOWATCH_TOKEN)
    assert await auth.check_permissions() == [
        "tokenreviews.authentication.k8s.io",
        "subjectaccessreviews.authorization.k8s.io",
    ]
    errors = lines(caplog, "the gateway may not review callers")
    assert errors and "system:auth-delegator" in errors[0].fields["fix"]  # type: ignore[attr-defined]
    caller = Caller(kube, objects)
    with pytest.raises(CallerAuthUnavailable):
        await flow.settle(auth.authorize(caller.token("appgateway"), "erp"))
    (line,) = lines(caplog, "caller authorization unavailable")
    assert line.fields["error"].startswith("403 Forbidden")  # type: ignore[attr-defined]
    assert line.fields["review"] == "tokenreviews"  # type: ignore[attr-defined]


async def test_the_gateway_with_auth_delegator_has_no_complaint(gateway: Start) -> None:
    auth = await gateway()
    assert await auth.check_permissions() == []
