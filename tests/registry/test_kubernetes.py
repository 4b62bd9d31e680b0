"""The Kubernetes registry against a real kube-apiserver: snapshots follow the cluster."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from appgateway.config import Settings
from appgateway.errors import NotFound
from appgateway.model import API, BasicAuth
from appgateway.proxy import ProxyConfig
from appgateway.registry import RegistryError
from appgateway.registry.kubeclient import KubeClient, load_auth
from appgateway.registry.kubeconfig import in_cluster
from appgateway.registry.kubernetes import KubernetesRegistry
from appgateway.registry.snapshot import Snapshot
from tests.kube import (
    ADMIN_TOKEN,
    APPS_PATH,
    SECRETS_PATH,
    ConnectProxy,
    FaultProxy,
    KubeCluster,
    Objects,
    api_service,
    application,
    secret,
    unique,
)

pytestmark = pytest.mark.timeout(1500)  # the first test may build kube-apiserver


async def until(check: Callable[[], bool], within: float = 5.0) -> float:
    """Seconds until `check()` held."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not check():
        if loop.time() - start > within:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
    return loop.time() - start


Start = Callable[..., Awaitable[KubernetesRegistry]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """`await start(client, initial_wait=...)`: a started registry, stopped afterwards."""
    started: list[KubernetesRegistry] = []

    async def run(client: KubeClient, **kw: Any) -> KubernetesRegistry:
        registry = KubernetesRegistry(client, secrets_namespace="kyma-system", **kw)
        started.append(registry)
        await registry.start()
        return registry

    yield run
    for registry in started:
        await registry.stop()


def kubeconfig_client(kube: KubeCluster, tmp_path: Path, **kw: Any) -> KubeClient:
    path = kube.kubeconfig(tmp_path / "kubeconfig", **kw)
    return KubeClient(load_auth(path, ("", "")))


def basic_app(name: str, secret_name: str, target: str = "https://erp.example/api") -> Any:
    creds = {"type": "Basic", "secretName": secret_name}
    return application(name, [api_service("Orders", target, id="o1", credentials=creds)])


def api_of(snapshot: Snapshot, app: str) -> API | None:
    found = snapshot.by_path(app, "orders", None)
    return found if isinstance(found, API) else None


async def test_snapshots_follow_applications_and_secrets(
    kube: KubeCluster, objects: Objects, start: Start, tmp_path: Path
) -> None:
    app, creds = unique("erp"), unique("creds")
    objects.apply(secret(creds, {"username": "alice", "password": "one"}))
    objects.apply(basic_app(app, creds))
    changes: list[Snapshot] = []
    registry = await start(kubeconfig_client(kube, tmp_path, token=ADMIN_TOKEN))
    registry.on_change = changes.append
    assert registry.ready
    api = api_of(registry.snapshot(), app)
    assert api is not None and api.target_url == "https://erp.example/api"
    assert api.credentials == BasicAuth(username="alice", password="one")

    objects.apply(basic_app(app, creds, "https://erp.example/v2"))
    await until(
        lambda: getattr(api_of(registry.snapshot(), app), "target_url", "")
        == "https://erp.example/v2"
    )
    objects.apply(secret(creds, {"username": "alice", "password": "two"}))
    await until(
        lambda: getattr(api_of(registry.snapshot(), app), "credentials", None)
        == BasicAuth(username="alice", password="two")
    )
    objects.delete(secret(creds, {}))
    await until(lambda: api_of(registry.snapshot(), app) is None)
    message = str(registry.snapshot().by_path(app, "orders", None))
    assert f"secret '{creds}' not found" in message
    objects.delete(basic_app(app, creds))
    await until(lambda: isinstance(registry.snapshot().by_path(app, "orders", None), NotFound))
    assert changes and changes[-1] is registry.snapshot()


async def test_bursts_are_coalesced(
    kube: KubeCluster, objects: Objects, start: Start, tmp_path: Path
) -> None:
    registry = await start(kubeconfig_client(kube, tmp_path, token=ADMIN_TOKEN))
    changes: list[Snapshot] = []
    registry.on_change = changes.append
    app = unique("burst")
    for i in range(20):
        objects.apply(application(app, [api_service("Orders", f"https://e.example/{i}")]))
    await until(
        lambda: getattr(api_of(registry.snapshot(), app), "target_url", "")
        == "https://e.example/19"
    )
    await asyncio.sleep(0.3)
    assert 1 <= len(changes) < 20


async def test_not_ready_until_both_initial_lists(
    kube: KubeCluster, proxy: FaultProxy, start: Start, tmp_path: Path
) -> None:
    proxy.fail(lambda s: not s.watch and s.path == SECRETS_PATH, 403, "Forbidden", times=3)
    client = kubeconfig_client(kube, tmp_path, token=ADMIN_TOKEN, server=proxy.server)
    registry = await start(client, initial_wait=0.1)
    assert not registry.ready
    assert registry.snapshot().application_count == 0
    assert proxy.lists(APPS_PATH)  # Applications were listed, but that is not enough
    waited = await until(lambda: registry.ready, within=10)
    assert waited > 0.5  # three backoffs: 0.25..0.5 + 0.5..1 + 1..2 s
    assert registry.snapshot().application_count >= 0


async def test_invalid_objects_are_logged_once_with_the_cluster_location(
    kube: KubeCluster,
    objects: Objects,
    start: Start,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = await start(kubeconfig_client(kube, tmp_path, token=ADMIN_TOKEN))
    app = unique("bad")
    doc = application(app, [api_service("Orders", "https://x.example/")])
    doc["spec"]["services"][0]["entries"][0]["type"] = "Bogus"
    objects.apply(doc)
    expected = (
        f"cluster: Application/{app}: spec.services[0].entries[0].type: must be API or Events"
    )
    await until(lambda: expected in [str(i) for i in registry.snapshot().issues])
    other = unique("other")
    objects.apply(application(other, [api_service("Orders", "https://y.example/")]))
    await until(lambda: api_of(registry.snapshot(), other) is not None)
    logged = [r for r in caplog.records if getattr(r, "fields", {}).get("issue") == expected]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR


async def test_in_cluster_token_is_reread(
    kube: KubeCluster, proxy: FaultProxy, start: Start, tmp_path: Path
) -> None:
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    (folder / "ca.crt").write_bytes(kube.pki.ca_pem)
    token = folder / "token"
    token.write_text("not-a-valid-token")
    now = [0.0]
    auth = in_cluster("127.0.0.1", str(proxy.port), folder)
    registry = await start(KubeClient(auth, clock=lambda: now[0]), initial_wait=0.1)
    assert not registry.ready  # 401: the token is read again before each retry
    first = kube.service_account_token()
    token.write_text(first)
    await until(lambda: registry.ready, within=10)
    assert proxy.seen[0].authorization == "Bearer not-a-valid-token"
    assert proxy.watches(APPS_PATH)[-1].authorization == f"Bearer {first}"
    # Rotation: the file changes; the next request after a minute uses the new token.
    second = kube.service_account_token(seconds=7200)
    assert second != first
    token.write_text(second)
    proxy.end_watches()
    await until(lambda: len(proxy.watches(APPS_PATH)) >= 2)
    assert proxy.watches(APPS_PATH)[-1].authorization == f"Bearer {first}"
    now[0] = 61.0
    proxy.end_watches()
    await until(lambda: proxy.watches(APPS_PATH)[-1].authorization == f"Bearer {second}")


async def test_kubeconfig_with_client_certificate_and_ca_file(
    kube: KubeCluster, start: Start, tmp_path: Path
) -> None:
    client = kubeconfig_client(kube, tmp_path, client_cert=True, ca_inline=False)
    registry = await start(client)
    assert registry.ready


async def test_untrusted_server_is_retried(
    kube: KubeCluster, start: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = kube.kubeconfig(tmp_path / "kubeconfig", token=ADMIN_TOKEN)
    auth = load_auth(path, ("", ""))
    registry = await start(KubeClient(replace(auth, ca=None)), initial_wait=0.3)
    assert not registry.ready
    errors = [str(getattr(r, "fields", {}).get("error")) for r in caplog.records]
    assert any("certificate verify failed" in e for e in errors), errors


def test_from_settings_needs_a_usable_source(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no such file|No such file"):
        KubernetesRegistry.from_settings(Settings(kubernetes=True, kubeconfig=tmp_path / "nope"))


@pytest.mark.parametrize("bypass", [False, True], ids=["proxied", "no-proxy"])
async def test_api_server_calls_follow_https_proxy_and_no_proxy(
    kube: KubeCluster,
    proxy: FaultProxy,
    objects: Objects,
    start: Start,
    tmp_path: Path,
    bypass: bool,
) -> None:
    """HTTPS_PROXY applies to the API server as to every outbound call: LIST and WATCH go
    through a CONNECT tunnel, the proxy's user-info only on the CONNECT; a NO_PROXY match
    connects directly (FaultProxy stands in for the API server, to see what reached it)."""
    egress = ConnectProxy().start()
    try:
        env = {"https_proxy": egress.url("gw:s%40cret@")}
        if bypass:
            env["no_proxy"] = "localhost, 127.0.0.0/8"
        path = kube.kubeconfig(tmp_path / "kubeconfig", token=ADMIN_TOKEN, server=proxy.server)
        client = KubeClient(load_auth(path, ("", "")), proxies=ProxyConfig.from_environment(env))
        registry = await start(client)
        assert registry.ready
        name = unique("proxied")
        objects.apply(application(name, [api_service("Orders", "https://erp.example/")]))
        await until(lambda: api_of(registry.snapshot(), name) is not None)  # a watch event
        assert {s.path for s in proxy.seen} == {APPS_PATH, SECRETS_PATH}
        assert len(proxy.watches(APPS_PATH)) == 1
        assert all(s.authorization == f"Bearer {ADMIN_TOKEN}" for s in proxy.seen)
        assert all(s.proxy_authorization is None for s in proxy.seen)
        if bypass:
            assert egress.lines == []
        else:
            assert set(egress.lines) == {f"CONNECT 127.0.0.1:{proxy.port} HTTP/1.1"}
            basic = "Basic " + base64.b64encode(b"gw:s@cret").decode()
            assert set(egress.authorizations) == {basic}
    finally:
        egress.close()
