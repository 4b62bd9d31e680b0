"""Fixtures for the caller authorization tests: the session's real API server (tests/kube.py)
with a fault-injecting proxy in front, per-test objects, and the log lines as JSON text."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from appgateway.logs import JsonFormatter
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


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record as the JSON line the gateway would write, fields included."""
    formatter = JsonFormatter(logging.getLogger("appgateway"))
    return "\n".join(formatter.format(record) for record in caplog.records)


def lines(caplog: pytest.LogCaptureFixture, msg: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == msg]
