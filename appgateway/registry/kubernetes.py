"""The Kubernetes source (`--kubernetes`): Applications and Secrets from the API server.

Two watchers (kubewatch.py) keep the objects; this module turns them into snapshots, at most
every 100 ms so a burst of events costs one rebuild, and only once both initial LISTs are in,
so the gateway never serves a half-loaded registry (Applications without their Secrets).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from appgateway import tls
from appgateway.config import Settings, kubernetes_service_address
from appgateway.proxy import ProxyConfig
from appgateway.registry import publish
from appgateway.registry.folder import _CertCache
from appgateway.registry.kubeclient import KubeClient, load_auth
from appgateway.registry.kubewatch import APPLICATIONS, PAGE_SIZE, Watcher, secrets_resource
from appgateway.registry.parse import AppDoc, Issue, SecretDoc
from appgateway.registry.snapshot import LoadCert, Snapshot, build_snapshot

log = logging.getLogger("appgateway.registry")

MIN_REBUILD_INTERVAL = 0.1
INITIAL_WAIT = 5.0
"""How long `start` waits for the initial LISTs before letting the listeners open unready."""


class KubernetesRegistry:
    """Registry over the Kubernetes API; ready once both initial LISTs have succeeded."""

    def __init__(
        self,
        client: KubeClient,
        *,
        secrets_namespace: str,
        load_cert: LoadCert = tls.load_client_cert,
        initial_wait: float = INITIAL_WAIT,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.ready = False
        self.on_change: Callable[[Snapshot], None] | None = None
        self.client = client
        self.secrets_namespace = secrets_namespace
        self._initial_wait = initial_wait
        self._certs = _CertCache(load_cert)
        self._snapshot = Snapshot()
        self._dirty = asyncio.Event()
        self._first = asyncio.Event()
        self._logged: frozenset[Issue] = frozenset()
        self.apps = Watcher(client, APPLICATIONS, self._dirty.set, page_size=page_size)
        self.secrets = Watcher(
            client, secrets_resource(secrets_namespace), self._dirty.set, page_size=page_size
        )
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_settings(
        cls, settings: Settings, proxies: ProxyConfig | None = None
    ) -> KubernetesRegistry:
        """`proxies`: HTTPS_PROXY and NO_PROXY apply to the API server too (kubeclient.py)."""
        auth = load_auth(settings.kubeconfig, kubernetes_service_address())
        client = KubeClient(auth, proxies=proxies)
        return cls(client, secrets_namespace=settings.secrets_namespace)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    async def start(self) -> None:
        await self.client.open()
        log.info("connecting to kubernetes", extra={"fields": {"source": self.client.auth.origin}})
        self._tasks = [
            asyncio.create_task(self.apps.run(), name="kubernetes-applications"),
            asyncio.create_task(self.secrets.run(), name="kubernetes-secrets"),
            asyncio.create_task(self._rebuild_loop(), name="kubernetes-snapshots"),
        ]
        try:
            await asyncio.wait_for(self._first.wait(), timeout=self._initial_wait)
        except TimeoutError:
            log.warning("kubernetes objects not listed yet: not ready, retrying")

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.close()

    async def _rebuild_loop(self) -> None:
        await self.apps.listed.wait()
        await self.secrets.listed.wait()
        while True:
            self._dirty.clear()
            apps = [d for d in self.apps.docs.values() if isinstance(d, AppDoc)]
            secrets = [d for d in self.secrets.docs.values() if isinstance(d, SecretDoc)]
            issues = [i for found in self.apps.issues.values() for i in found]
            issues += [i for found in self.secrets.issues.values() for i in found]
            try:
                snapshot = await asyncio.to_thread(self._build, apps, secrets, issues)
            except Exception:
                log.exception("registry rebuild failed")
            else:
                self._apply(snapshot)
                self.ready = True
                self._first.set()
            await asyncio.sleep(MIN_REBUILD_INTERVAL)
            await self._dirty.wait()

    def _build(self, apps: list[AppDoc], secrets: list[SecretDoc], issues: list[Issue]) -> Snapshot:
        snapshot = build_snapshot(
            apps,
            secrets,
            secrets_namespace=self.secrets_namespace,
            load_cert=self._certs,
            issues=issues,
        )
        self._certs.prune()
        return snapshot

    def _apply(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        # Each problem is logged once, when it appears.
        new = [issue for issue in snapshot.issues if issue not in self._logged]
        self._logged = frozenset(snapshot.issues)
        publish(snapshot, new, self.on_change)
