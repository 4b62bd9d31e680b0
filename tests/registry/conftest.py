"""Fixtures for the Kubernetes source tests: the session's real API server (tests/kube.py),
a fault-injecting proxy in front of it, and per-test objects removed afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.kube import FaultProxy, KubeCluster, Objects, shared_cluster


@pytest.fixture(scope="session")
def kube() -> KubeCluster:
    return shared_cluster()


@pytest.fixture
def objects(kube: KubeCluster) -> Iterator[Objects]:
    tracker = Objects(kube)
    yield tracker
    tracker.cleanup()


@pytest.fixture
async def proxy(kube: KubeCluster) -> AsyncIterator[FaultProxy]:
    server = await FaultProxy(kube).start()
    yield server
    await server.close()
