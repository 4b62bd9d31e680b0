"""The LIST + WATCH loop against a real kube-apiserver, with faults added by a proxy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from appgateway.registry.kubeclient import Backoff, KubeClient
from appgateway.registry.kubeconfig import ClusterAuth, Material
from appgateway.registry.kubewatch import (
    APPLICATIONS,
    LOCATION,
    STEADY_WATCH,
    WATCH_TIMEOUT,
    Watcher,
    parse_object,
    secrets_resource,
)
from appgateway.registry.parse import AppDoc, Issue, SecretDoc
from tests.kube import (
    ADMIN_TOKEN,
    APPS_PATH,
    NAMESPACE,
    FaultProxy,
    KubeCluster,
    Objects,
    Seen,
    api_service,
    application,
    free_port,
    secret,
    unique,
)

pytestmark = pytest.mark.timeout(1500)  # the first test may build kube-apiserver


def client_for(kube: KubeCluster, server: str, token: str = ADMIN_TOKEN) -> KubeClient:
    return KubeClient(
        ClusterAuth(
            server=server,
            ca=Material(data=kube.pki.ca_pem),
            insecure=False,
            tls_server_name=None,
            token=Material(data=token.encode()),
            client_cert=None,
            client_key=None,
            origin="test",
        )
    )


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


Start = Callable[..., Awaitable[Watcher]]


@pytest.fixture
async def watch(kube: KubeCluster, proxy: FaultProxy) -> AsyncIterator[Start]:
    """`await watch(page_size=..., server=...)`: a running Applications watcher, listed."""
    tasks: list[asyncio.Task[None]] = []
    clients: list[KubeClient] = []

    async def start(
        *,
        page_size: int = 500,
        server: str | None = None,
        listed: bool = True,
        resource: Any = APPLICATIONS,
        backoff: Backoff | None = None,
        steady: float = STEADY_WATCH,
    ) -> Watcher:
        client = client_for(kube, server or proxy.server)
        await client.open()
        clients.append(client)
        watcher = Watcher(
            client, resource, lambda: None, page_size=page_size, backoff=backoff, steady=steady
        )
        tasks.append(asyncio.create_task(watcher.run()))
        if listed:
            await asyncio.wait_for(watcher.listed.wait(), 10)
        return watcher

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        await client.close()


def app(name: str, target: str = "https://a.example/x") -> dict[str, Any]:
    return application(name, [api_service("Orders", target, id="o1")])


def target(watcher: Watcher, name: str) -> str | None:
    doc = watcher.docs.get(name)
    if not isinstance(doc, AppDoc):
        return None
    return doc.services[0].entries[0].target_url


def is_watch(path: str) -> Callable[[Seen], bool]:
    return lambda s: s.watch and s.path == path


def is_list(path: str) -> Callable[[Seen], bool]:
    return lambda s: not s.watch and s.path == path


# -- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "name", "valid", "issues"),
    [
        (  # LIST items of core kinds carry no apiVersion/kind
            {"metadata": {"name": "s", "namespace": "ns"}, "data": {"k": "dg=="}},
            "s",
            True,
            [],
        ),
        (
            {"metadata": {"name": "s", "namespace": "ns"}, "data": {"k": "%%"}},
            "s",
            False,
            ["cluster: Secret/s: data.k: invalid base64"],
        ),
    ],
)
def test_parse_secret_object(
    obj: dict[str, Any], name: str, valid: bool, issues: list[str]
) -> None:
    got_name, doc, found = parse_object(obj, secrets_resource("ns"))
    assert got_name == name
    assert (doc is not None) == valid
    assert [str(i) for i in found] == issues
    if isinstance(doc, SecretDoc):
        assert doc.location == LOCATION and doc.data == {"k": b"v"} and doc.namespace == "ns"


def test_parse_application_object_uses_the_cluster_location() -> None:
    obj = app("erp")
    obj["spec"]["services"][0]["entries"][0]["type"] = "Bogus"
    name, doc, found = parse_object(obj, APPLICATIONS)
    assert (name, doc) == ("erp", None)
    assert found == (
        Issue(
            "cluster",
            "Application",
            "erp",
            "spec.services[0].entries[0].type",
            "must be API or Events",
        ),
    )
    _, doc, found = parse_object(app("erp"), APPLICATIONS)
    assert isinstance(doc, AppDoc) and doc.location == "cluster" and found == ()


# -- the loop against the real server ----------------------------------------------------------


async def test_paginated_list_then_watch_from_its_version(
    watch: Start, objects: Objects, proxy: FaultProxy
) -> None:
    names = [unique("page") for _ in range(5)]
    for name in names:
        objects.apply(app(name))
    watcher = await watch(page_size=2)
    assert set(names) <= watcher.docs.keys()
    lists = proxy.lists(APPS_PATH)
    assert len(lists) >= 3
    assert lists[0].query == {"limit": "2"}
    assert all(s.query["limit"] == "2" and s.query["continue"] for s in lists[1:])
    await until(lambda: bool(proxy.watches(APPS_PATH)))
    first = proxy.watches(APPS_PATH)[0].query
    assert first["allowWatchBookmarks"] == "true"
    assert first["resourceVersion"]
    assert WATCH_TIMEOUT[0] <= int(first["timeoutSeconds"]) <= WATCH_TIMEOUT[1]


async def test_events_add_modify_delete(watch: Start, objects: Objects) -> None:
    watcher = await watch()
    name = unique("events")
    objects.apply(app(name, "https://one.example/"))
    await until(lambda: target(watcher, name) == "https://one.example/")
    objects.apply(app(name, "https://two.example/"))
    await until(lambda: target(watcher, name) == "https://two.example/")
    objects.delete(app(name))
    await until(lambda: name not in watcher.docs)


async def test_invalid_change_keeps_the_previous_version(watch: Start, objects: Objects) -> None:
    watcher = await watch()
    name = unique("invalid")
    objects.apply(app(name, "https://good.example/"))
    await until(lambda: target(watcher, name) == "https://good.example/")
    bad = app(name, "https://bad.example/")
    bad["spec"]["services"][0]["entries"][0]["type"] = "Bogus"
    objects.apply(bad)
    await until(lambda: bool(watcher.issues.get(name)))
    assert target(watcher, name) == "https://good.example/"
    assert [str(i) for i in watcher.issues[name]] == [
        f"cluster: Application/{name}: spec.services[0].entries[0].type: must be API or Events"
    ]
    objects.apply(app(name, "https://fixed.example/"))
    await until(lambda: target(watcher, name) == "https://fixed.example/")
    assert watcher.issues[name] == ()
    # A new object that is invalid from the start is absent.
    other = unique("invalid")
    broken = app(other)
    del broken["spec"]["services"][0]["displayName"]
    objects.apply(broken)
    await until(lambda: bool(watcher.issues.get(other)))
    assert other not in watcher.docs


async def test_watch_ended_by_the_server_resumes_without_a_list(
    watch: Start, objects: Objects, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = await watch()
    await until(lambda: len(proxy.watches(APPS_PATH)) == 1)
    lists = len(proxy.lists(APPS_PATH))
    name = unique("resume")
    objects.apply(app(name))
    await until(lambda: name in watcher.docs)
    version = watcher.version
    assert proxy.end_watches() == 1
    await until(lambda: len(proxy.watches(APPS_PATH)) == 2)
    assert proxy.watches(APPS_PATH)[1].query["resourceVersion"] == version
    assert len(proxy.lists(APPS_PATH)) == lists
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_dropped_watch_resumes_and_catches_up(
    watch: Start, objects: Objects, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = await watch()
    await until(lambda: len(proxy.watches(APPS_PATH)) == 1)
    lists = len(proxy.lists(APPS_PATH))
    name = unique("dropped")
    objects.apply(app(name, "https://before.example/"))
    await until(lambda: target(watcher, name) == "https://before.example/")
    version = watcher.version
    # Keep the watcher away while the object changes, then let it back in.
    proxy.fail(is_watch(APPS_PATH), 503, "ServiceUnavailable", times=2)
    assert proxy.drop_watches() == 1
    objects.apply(app(name, "https://after.example/"))
    await until(lambda: target(watcher, name) == "https://after.example/", within=10)
    resumed = proxy.watches(APPS_PATH)
    assert len(resumed) == 4
    assert {s.query["resourceVersion"] for s in resumed[1:]} == {version}
    assert len(proxy.lists(APPS_PATH)) == lists  # no LIST: the events came from the watch
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "kubernetes API unreachable" in warnings  # the cut stream
    assert warnings.count("kubernetes watch failed") == 2  # the two 503s
    gaps = [b.at - a.at for a, b in zip(resumed[1:], resumed[2:], strict=False)]
    assert all(gap >= 0.2 for gap in gaps), gaps  # backoff between attempts


@pytest.mark.parametrize("as_event", [False, True], ids=["status", "error-event"])
async def test_gone_lists_again(
    watch: Start, objects: Objects, proxy: FaultProxy, as_event: bool
) -> None:
    watcher = await watch()
    kept, deleted = unique("gone"), unique("gone")
    objects.apply(app(kept))
    objects.apply(app(deleted))
    await until(lambda: {kept, deleted} <= watcher.docs.keys())
    lists = len(proxy.lists(APPS_PATH))
    # While the watcher is away, one object is deleted and one created; then its version is
    # reported expired, so only a new LIST can tell it about the deletion.
    proxy.fail(is_watch(APPS_PATH), 503, "ServiceUnavailable", times=1)
    proxy.drop_watches()
    objects.delete(app(deleted))
    created = unique("gone")
    objects.apply(app(created))
    proxy.fail(is_watch(APPS_PATH), 410, "Expired", "too old resource version", as_event=as_event)
    await until(lambda: len(proxy.lists(APPS_PATH)) > lists, within=10)
    await until(lambda: created in watcher.docs and deleted not in watcher.docs)
    assert kept in watcher.docs
    await until(lambda: len(proxy.watches(APPS_PATH)) >= 4)
    last = proxy.watches(APPS_PATH)[-1]
    assert last.query["resourceVersion"] != proxy.watches(APPS_PATH)[0].query["resourceVersion"]


GONE_AGAIN = "resource version too old right after a list; listing again later"


def gone_forever(proxy: FaultProxy, as_event: bool) -> None:
    """Every watch of Applications answers 410 until `proxy.clear_faults()`."""
    proxy.fail(
        is_watch(APPS_PATH),
        410,
        "Expired",
        "too old resource version",
        times=10**6,
        as_event=as_event,
    )


def storm_delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [
        r.fields["retry_in_s"]  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == GONE_AGAIN
    ]


@pytest.mark.parametrize("as_event", [False, True], ids=["status", "error-event"])
async def test_persistent_gone_is_listed_with_growing_delays(
    watch: Start, proxy: FaultProxy, caplog: pytest.LogCaptureFixture, as_event: bool
) -> None:
    """With the real backoff (0.5 s doubling, jittered to [d/2, d]): a LIST that succeeds does
    not reset it, so 4 s of 410s cost at most 5 LISTs and 5 WATCHes (b0cd6fb: 35-39 each in
    8 s, one pair every ~0.45 s)."""
    gone_forever(proxy, as_event)
    await watch(listed=False)
    await asyncio.sleep(4.0)
    lists, watches = proxy.lists(APPS_PATH), proxy.watches(APPS_PATH)
    assert 3 <= len(lists) <= 5, [s.at for s in lists]
    assert len(watches) in (len(lists), len(lists) - 1)
    delays = storm_delays(caplog)
    assert len(delays) == len(watches)  # one line per attempt
    for step, delay in enumerate(delays):
        nominal = 0.5 * 2**step
        assert nominal / 2 <= delay <= nominal, delays
    gaps = [b.at - a.at for a, b in zip(lists, lists[1:], strict=False)]
    assert all(gap >= delay for gap, delay in zip(gaps, delays, strict=False)), (gaps, delays)


@pytest.mark.parametrize("as_event", [False, True], ids=["status", "error-event"])
async def test_persistent_gone_settles_at_the_maximum_backoff(
    watch: Start, proxy: FaultProxy, caplog: pytest.LogCaptureFixture, as_event: bool
) -> None:
    """A smaller, unjittered backoff (0.05 s doubling to 0.4 s) shows where it ends: at the
    cap, one LIST and one WATCH per step, each step logged once (and nothing else logged)."""
    gone_forever(proxy, as_event)
    watcher = await watch(backoff=Backoff(0.05, 0.4, rand=lambda: 1.0), listed=False)
    await asyncio.sleep(3.0)
    delays = storm_delays(caplog)
    assert delays[:5] == [0.05, 0.1, 0.2, 0.4, 0.4], delays
    assert set(delays[3:]) == {0.4} and 6 <= len(delays) <= 10, delays
    lists = proxy.lists(APPS_PATH)
    assert len(lists) in (len(delays), len(delays) + 1)  # one LIST per logged step
    gaps = [b.at - a.at for a, b in zip(lists, lists[1:], strict=False)]
    assert all(gap >= delay for gap, delay in zip(gaps, delays, strict=False)), (gaps, delays)
    assert all(gap >= 0.4 for gap in gaps[3:]), gaps
    assert len([r for r in caplog.records if "too old" in r.getMessage()]) == len(delays)
    assert watcher.listed.is_set()  # every LIST succeeded; the objects stay current


async def test_backoff_resets_only_after_a_healthy_watch(
    watch: Start, objects: Objects, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """After a 410 storm, a watch that delivers an event, or one that stays open `steady`
    seconds, makes the next failure wait the first step again; a LIST alone does not."""
    watcher = await watch(backoff=Backoff(0.05, 0.4, rand=lambda: 1.0), steady=1.5)
    await until(lambda: len(proxy.watches(APPS_PATH)) == 1)
    gone_forever(proxy, as_event=False)
    proxy.drop_watches()
    await until(lambda: storm_delays(caplog)[-1:] == [0.4], within=10)
    proxy.clear_faults()
    # The watch after the next LIST stays open; an object change reaches it.
    await until(lambda: proxy.open_watches() == 1, within=5)
    name = unique("reset")
    objects.apply(app(name))
    await until(lambda: name in watcher.docs, within=5)

    def retries() -> list[float]:
        """retry_in_s of every retry line so far: storm, cut stream and failed watch."""
        return [r.fields["retry_in_s"] for r in caplog.records if "retry_in_s" in r.fields]  # type: ignore[attr-defined]

    async def cut(failing: int, lines: int) -> list[float]:
        """Drop the open watch and fail the next `failing` watches: the new retry delays."""
        mark = len(retries())
        proxy.fail(is_watch(APPS_PATH), 503, "ServiceUnavailable", times=failing)
        assert proxy.drop_watches() == 1
        await until(lambda: len(retries()) >= mark + lines)
        await until(lambda: proxy.open_watches() == 1)
        return retries()[mark:]

    # The cut stream and two 503s: from the first step, as the dropped watch had an event.
    assert await cut(2, 3) == [0.05, 0.1, 0.2]
    await asyncio.sleep(0.2)
    assert await cut(1, 2) == [0.4, 0.4]  # open 0.2 s, no event: the backoff went on
    await asyncio.sleep(1.8)
    assert await cut(1, 2) == [0.05, 0.1]  # open 1.8 s: healthy, so from the first step


@pytest.mark.parametrize(
    ("status", "reason", "message", "hint"),
    [
        (403, "Forbidden", "kubernetes API denied list", "needs get, list and watch on"),
        (401, "Unauthorized", "kubernetes API denied list", "was rejected"),
        (404, "NotFound", "kubernetes resource not found", "CRD"),
        (500, "InternalError", "kubernetes list failed", None),
    ],
)
async def test_errors_are_logged_and_retried_with_backoff(
    watch: Start,
    proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
    status: int,
    reason: str,
    message: str,
    hint: str | None,
) -> None:
    proxy.fail(is_list(APPS_PATH), status, reason, "injected", times=2)
    watcher = await watch(listed=False)
    await asyncio.wait_for(watcher.listed.wait(), 10)
    records = [r for r in caplog.records if r.getMessage() == message]
    assert len(records) == 2
    fields = records[0].fields  # type: ignore[attr-defined]
    assert fields["status"] == status and fields["verb"] == "list"
    assert fields["resource"] == APPLICATIONS.label
    assert f"{status} {reason}: injected" == fields["error"]
    assert fields.get("hint") is None if hint is None else hint in fields["hint"]
    assert 0.25 <= fields["retry_in_s"] <= 0.5
    assert records[1].fields["retry_in_s"] >= 0.5  # type: ignore[attr-defined]
    lists = proxy.lists(APPS_PATH)
    assert lists[1].at - lists[0].at >= 0.25 and lists[2].at - lists[1].at >= 0.5


async def test_unreachable_server_is_retried_with_growing_delays(
    watch: Start, caplog: pytest.LogCaptureFixture
) -> None:
    await watch(server=f"https://127.0.0.1:{free_port()}", listed=False)
    await asyncio.sleep(2.0)
    records = [r for r in caplog.records if r.getMessage() == "kubernetes API unreachable"]
    delays = [r.fields["retry_in_s"] for r in records]  # type: ignore[attr-defined]
    assert 2 <= len(delays) <= 4, delays
    assert delays == sorted(delays)
    assert records[0].levelno == logging.WARNING


async def test_secrets_of_the_namespace_only(
    watch: Start, objects: Objects, kube: KubeCluster
) -> None:
    name = unique("sec")
    objects.apply(secret(name, {"username": "alice"}))
    other_ns: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": unique("other")},
    }
    objects.apply(other_ns)
    elsewhere = secret(name, {"username": "mallory"})
    elsewhere["metadata"]["namespace"] = other_ns["metadata"]["name"]
    objects.apply(elsewhere)
    watcher = await watch(resource=secrets_resource(NAMESPACE))
    doc = watcher.docs[name]
    assert isinstance(doc, SecretDoc)
    assert doc.data["username"] == b"alice" and doc.namespace == NAMESPACE
