from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from appgateway.config import MANIFEST_SIZE_LIMIT
from appgateway.errors import NotFound
from appgateway.model import API, BasicAuth
from appgateway.registry import RegistryError
from appgateway.registry.folder import (
    FolderLoader,
    FolderRegistry,
    _read_manifest,
    _Skipped,
    load_snapshot,
)
from appgateway.registry.snapshot import Snapshot
from appgateway.tls import load_client_cert

FIXTURES = Path(__file__).parent.parent / "fixtures" / "registry"
APPLY_WITHIN = 2.0  # registry.md §4: changes apply within 2 s


def app_yaml(name: str = "erp", service: str = "Orders", secret: str = "creds") -> str:
    return f"""\
apiVersion: applicationconnector.kyma-project.io/v1alpha1
kind: Application
metadata: {{name: {name}}}
spec:
  services:
    - id: "1"
      displayName: {service}
      entries:
        - type: API
          targetUrl: https://{name}.example/api
          credentials: {{type: Basic, secretName: {secret}}}
"""


def secret_yaml(name: str = "creds", user: str = "alice") -> str:
    return f"""\
apiVersion: v1
kind: Secret
metadata: {{name: {name}}}
stringData: {{username: {user}, password: pw}}
"""


Factory = Callable[[Path], Awaitable[FolderRegistry]]


@pytest.fixture
async def started() -> AsyncIterator[Factory]:
    registries: list[FolderRegistry] = []

    async def start(path: Path) -> FolderRegistry:
        registry = FolderRegistry(path, secrets_namespace="kyma-system")
        registries.append(registry)
        await registry.start()
        return registry

    yield start
    for registry in registries:
        await registry.stop()


async def eventually(check: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + APPLY_WITHIN
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"not applied within {APPLY_WITHIN} s")
        await asyncio.sleep(0.02)


def user(snapshot: Snapshot, app: str = "erp", service: str = "orders") -> str | None:
    result = snapshot.by_path(app, service, None)
    if not isinstance(result, API) or not isinstance(result.credentials, BasicAuth):
        return None
    return result.credentials.username


def issue_texts(snapshot: Snapshot) -> list[str]:
    return [str(i) for i in snapshot.issues]


async def test_initial_load_logs_and_ready(
    started: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appgateway.registry")
    (tmp_path / "apps.yaml").write_text(app_yaml())
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "secrets.yml").write_text(secret_yaml())
    (tmp_path / "notes.txt").write_text("not a manifest: [")
    (tmp_path / ".hidden.yaml").write_text("broken: [")
    registry = await started(tmp_path)
    assert registry.ready
    assert user(registry.snapshot()) == "alice"
    assert registry.parse_count == 2
    updated = [r for r in caplog.records if r.getMessage() == "registry updated"]
    assert [r.fields for r in updated] == [{"apis": 1, "applications": 1, "errors": 0}]  # type: ignore[attr-defined]


async def test_missing_folder_is_a_registry_error(tmp_path: Path) -> None:
    registry = FolderRegistry(tmp_path / "nope", secrets_namespace="kyma-system")
    with pytest.raises(RegistryError, match="does not exist"):
        await registry.start()
    assert not registry.ready


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
async def test_unreadable_folder_is_a_registry_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0)
    try:
        with pytest.raises(RegistryError, match="not readable"):
            await FolderRegistry(locked, secrets_namespace="kyma-system").start()
    finally:
        locked.chmod(0o700)


async def test_empty_folder_warns_and_is_ready(
    started: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appgateway.registry")
    registry = await started(tmp_path)
    assert registry.ready and registry.snapshot().routes == ()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["registry folder has no manifests"]


async def test_add_change_delete_apply_quickly(started: Factory, tmp_path: Path) -> None:
    (tmp_path / "secrets.yaml").write_text(secret_yaml())
    registry = await started(tmp_path)
    changes: list[Snapshot] = []
    registry.on_change = changes.append
    (tmp_path / "apps.yaml").write_text(app_yaml())
    await eventually(lambda: user(registry.snapshot()) == "alice")
    (tmp_path / "secrets.yaml").write_text(secret_yaml(user="bob"))
    await eventually(lambda: user(registry.snapshot()) == "bob")
    (tmp_path / "apps.yaml").unlink()
    await eventually(lambda: registry.snapshot().routes == ())
    assert changes[-1] is registry.snapshot()
    assert len(changes) >= 3


async def test_same_size_rewrite_is_seen(started: Factory, tmp_path: Path) -> None:
    (tmp_path / "apps.yaml").write_text(app_yaml())
    (tmp_path / "secrets.yaml").write_text(secret_yaml(user="aaaa"))
    registry = await started(tmp_path)
    for name in ("bbbb", "cccc", "dddd"):
        (tmp_path / "secrets.yaml").write_text(secret_yaml(user=name))
        await eventually(lambda name=name: user(registry.snapshot()) == name)  # type: ignore[misc]


async def test_broken_yaml_keeps_previous_state(
    started: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appgateway.registry")
    (tmp_path / "apps.yaml").write_text(app_yaml())
    (tmp_path / "secrets.yaml").write_text(secret_yaml())
    registry = await started(tmp_path)
    (tmp_path / "apps.yaml").write_text(app_yaml() + "  oops: [\n")
    await eventually(lambda: registry.snapshot().error_count == 1)
    snapshot = registry.snapshot()
    assert user(snapshot) == "alice"
    assert issue_texts(snapshot)[0].startswith("apps.yaml: invalid YAML at line")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["registry error"]
    assert errors[0].fields["issue"].startswith("apps.yaml: invalid YAML")  # type: ignore[attr-defined]
    # Fixing the file clears the problem.
    (tmp_path / "apps.yaml").write_text(app_yaml(service="Orders2"))
    await eventually(lambda: user(registry.snapshot(), service="orders2") == "alice")
    assert registry.snapshot().issues == ()


async def test_invalid_document_keeps_previous_version(started: Factory, tmp_path: Path) -> None:
    (tmp_path / "apps.yaml").write_text(app_yaml())
    (tmp_path / "secrets.yaml").write_text(secret_yaml())
    registry = await started(tmp_path)
    broken = secret_yaml(user="bob") + "data: {extra: '***'}\n---\n" + secret_yaml("new", "x")
    (tmp_path / "secrets.yaml").write_text(broken)
    await eventually(lambda: registry.snapshot().error_count == 1)
    assert user(registry.snapshot()) == "alice"  # the previous valid version stays
    assert issue_texts(registry.snapshot()) == [
        "secrets.yaml#1: Secret/creds: data.extra: invalid base64"
    ]
    # An object that never had a valid version is absent.
    (tmp_path / "more.yaml").write_text(app_yaml("other", secret="never") + "  bad: 1\n")
    (tmp_path / "secrets.yaml").write_text(secret_yaml("never") + "data: [x]\n")
    await eventually(lambda: any("Secret/never" in t for t in issue_texts(registry.snapshot())))
    assert user(registry.snapshot(), app="other") is None
    assert user(registry.snapshot()) is None  # `creds` is gone: its file no longer defines it


async def test_rename_replace(started: Factory, tmp_path: Path) -> None:
    (tmp_path / "apps.yaml").write_text(app_yaml())
    (tmp_path / "secrets.yaml").write_text(secret_yaml())
    registry = await started(tmp_path)
    temp = tmp_path / ".secrets.yaml.tmp"
    temp.write_text(secret_yaml(user="carol"))
    os.replace(temp, tmp_path / "secrets.yaml")
    await eventually(lambda: user(registry.snapshot()) == "carol")


async def test_configmap_style_symlink_swap(started: Factory, tmp_path: Path) -> None:
    """A mounted ConfigMap: files are links into `..data`, which is swapped atomically."""
    first = tmp_path / "..2024_01_01"
    first.mkdir()
    (first / "apps.yaml").write_text(app_yaml())
    (first / "secrets.yaml").write_text(secret_yaml())
    (tmp_path / "..data").symlink_to(first.name)
    for name in ("apps.yaml", "secrets.yaml"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    registry = await started(tmp_path)
    assert user(registry.snapshot()) == "alice"
    assert registry.snapshot().issues == ()  # each file read once, no duplicates

    second = tmp_path / "..2024_01_02"
    second.mkdir()
    (second / "apps.yaml").write_text(app_yaml())
    (second / "secrets.yaml").write_text(secret_yaml(user="dave"))
    (tmp_path / "..data_tmp").symlink_to(second.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    shutil.rmtree(first)
    await eventually(lambda: user(registry.snapshot()) == "dave")


async def test_duplicate_names_first_file_wins(started: Factory, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(app_yaml() + "---\n" + secret_yaml())
    (tmp_path / "b.yaml").write_text(secret_yaml(user="second"))
    registry = await started(tmp_path)
    assert user(registry.snapshot()) == "alice"
    assert issue_texts(registry.snapshot()) == [
        "b.yaml#1: Secret/creds: metadata.name: duplicate name, first defined in a.yaml#2"
    ]


async def test_only_the_changed_file_is_parsed_again(started: Factory, tmp_path: Path) -> None:
    (tmp_path / "apps.yaml").write_text(app_yaml())
    (tmp_path / "secrets.yaml").write_text(secret_yaml())
    for i in range(5):
        (tmp_path / f"other{i}.yaml").write_text(app_yaml(f"app{i}"))
    registry = await started(tmp_path)
    assert registry.parse_count == 7
    (tmp_path / "secrets.yaml").write_text(secret_yaml(user="erin"))
    await eventually(lambda: user(registry.snapshot()) == "erin")
    await asyncio.sleep(0.3)  # let any further events settle
    assert registry.parse_count == 8


async def test_single_file(started: Factory, tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    path.write_text(app_yaml() + "---\n" + secret_yaml())
    (tmp_path / "other.yaml").write_text(secret_yaml("x"))
    registry = await started(path)
    assert user(registry.snapshot()) == "alice"
    assert registry.parse_count == 1
    path.write_text(app_yaml() + "---\n" + secret_yaml(user="frank"))
    await eventually(lambda: user(registry.snapshot()) == "frank")


async def test_stop_is_prompt(started: Factory, tmp_path: Path) -> None:
    registry = await started(tmp_path)
    loop = asyncio.get_running_loop()
    begin = loop.time()
    await registry.stop()
    assert loop.time() - begin < 1.0
    await registry.stop()  # idempotent


def test_load_snapshot_of_fixture() -> None:
    snapshot = load_snapshot(
        FIXTURES / "example", secrets_namespace="kyma-system", load_cert=load_client_cert
    )
    assert snapshot.issues == ()
    assert (snapshot.application_count, snapshot.api_count) == (1, 2)


async def test_polling_mode_applies_within_two_seconds(
    started: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where inotify is unavailable the folder is polled every second."""
    monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "1")
    (tmp_path / "apps.yaml").write_text(app_yaml())
    registry = await started(tmp_path)
    (tmp_path / "secrets.yaml").write_text(secret_yaml(user="gina"))
    await eventually(lambda: user(registry.snapshot()) == "gina")


async def test_warnings_are_logged_once_per_change(
    started: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appgateway.registry")
    (tmp_path / "apps.yaml").write_text(app_yaml().replace("Basic", "Custom"))
    (tmp_path / "secrets.yaml").write_text(secret_yaml())
    registry = await started(tmp_path)
    await registry.stop()  # no further reloads
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [(r.getMessage(), r.fields) for r in warnings] == [  # type: ignore[attr-defined]
        (
            "registry warning",
            {
                "issue": "apps.yaml#1: Application/erp: spec.services[0].entries[0]"
                ".credentials.type: unknown type 'Custom': requests are sent without auth"
            },
        )
    ]


def loader_for(path: Path) -> FolderLoader:
    return FolderLoader(path, secrets_namespace="kyma-system", load_cert=load_client_cert)


def fresh(path: Path) -> Snapshot:
    return load_snapshot(path, secrets_namespace="kyma-system", load_cert=load_client_cert)


async def test_a_changed_manifest_is_read_without_a_rescan(
    started: Factory, tmp_path: Path
) -> None:
    (tmp_path / "apps.yaml").write_text(app_yaml())
    (tmp_path / "secrets.yaml").write_text(secret_yaml())
    (tmp_path / "sub").mkdir()
    for i in range(3):
        (tmp_path / "sub" / f"other{i}.yaml").write_text(app_yaml(f"app{i}", secret="none"))
    registry = await started(tmp_path)
    before = registry.snapshot()
    scans, parses = registry.scan_count, registry.parse_count
    (tmp_path / "sub" / "other1.yaml").write_text(app_yaml("app1", service="Items"))
    await eventually(lambda: isinstance(registry.snapshot().by_path("app1", "items", None), API))
    await asyncio.sleep(0.3)  # let any further events settle
    assert (registry.scan_count, registry.parse_count) == (scans, parses + 1)
    after = registry.snapshot()
    kept = [r for r in after.routes if r.ref.app != "app1"]
    assert len(kept) == 3
    assert all(any(r is old for old in before.routes) for r in kept)
    assert after.issues == fresh(tmp_path).issues


async def test_new_files_and_dot_named_entries_are_found_by_a_rescan(
    started: Factory, tmp_path: Path
) -> None:
    (tmp_path / "apps.yaml").write_text(app_yaml())
    registry = await started(tmp_path)
    scans = registry.scan_count
    (tmp_path / "secrets.yaml").write_text(secret_yaml())
    await eventually(lambda: user(registry.snapshot()) == "alice")
    assert registry.scan_count > scans
    scans = registry.scan_count
    temp = tmp_path / ".secrets.yaml.tmp"
    temp.write_text(secret_yaml(user="bob"))
    os.replace(temp, tmp_path / "secrets.yaml")
    await eventually(lambda: user(registry.snapshot()) == "bob")
    assert registry.scan_count > scans


async def test_rescans_keep_running_while_events_arrive(started: Factory, tmp_path: Path) -> None:
    """The safety rescan is due by time, not only after a quiet period."""
    (tmp_path / "apps.yaml").write_text(app_yaml())
    (tmp_path / "secrets.yaml").write_text(secret_yaml())
    registry = await started(tmp_path)
    registry._rescan_due = 0.0  # as if the last rescan was RESCAN_MS ago
    scans = registry.scan_count
    (tmp_path / "secrets.yaml").write_text(secret_yaml(user="carol"))
    await eventually(lambda: user(registry.snapshot()) == "carol")
    assert registry.scan_count == scans + 1
    (tmp_path / "secrets.yaml").write_text(secret_yaml(user="dave"))
    await eventually(lambda: user(registry.snapshot()) == "dave")
    assert registry.scan_count == scans + 1


async def test_duplicates_through_a_changed_file_match_a_full_load(
    started: Factory, tmp_path: Path
) -> None:
    (tmp_path / "a.yaml").write_text(app_yaml() + "---\n" + secret_yaml())
    (tmp_path / "b.yaml").write_text(app_yaml("shop"))
    registry = await started(tmp_path)
    scans = registry.scan_count
    (tmp_path / "b.yaml").write_text(app_yaml(service="Items") + "---\n" + secret_yaml(user="x"))
    expected = [
        "b.yaml#1: Application/erp: metadata.name: duplicate name, first defined in a.yaml#1",
        "b.yaml#2: Secret/creds: metadata.name: duplicate name, first defined in a.yaml#2",
    ]
    await eventually(lambda: issue_texts(registry.snapshot()) == expected)
    assert registry.snapshot().issues == fresh(tmp_path).issues
    assert isinstance(registry.snapshot().by_path("shop", "orders", None), NotFound)
    (tmp_path / "a.yaml").write_text(secret_yaml(user="first"))  # b.yaml's erp takes over
    await eventually(lambda: user(registry.snapshot(), service="items") == "first")
    assert issue_texts(registry.snapshot()) == [expected[1].replace("a.yaml#2", "a.yaml#1")]
    assert registry.snapshot().issues == fresh(tmp_path).issues
    assert registry.scan_count == scans


def test_loader_reads_only_named_manifests(tmp_path: Path) -> None:
    (tmp_path / "apps.yaml").write_text(app_yaml())
    (tmp_path / "secrets.yaml").write_text(secret_yaml())
    loader = loader_for(tmp_path)
    assert loader.load() is not None
    (tmp_path / "apps.yaml").write_text(app_yaml(service="Items"))
    (tmp_path / "secrets.yaml").write_text(secret_yaml(user="bob"))  # its event got lost
    snapshot = loader.load([tmp_path / "apps.yaml"], rescan=False)
    assert snapshot is not None and user(snapshot, service="items") == "alice"
    assert (loader.scan_count, loader.parse_count) == (1, 3)
    snapshot = loader.load()  # the safety rescan
    assert snapshot is not None and user(snapshot, service="items") == "bob"
    assert (loader.scan_count, loader.parse_count) == (2, 4)


def test_loader_ignores_what_cannot_be_a_manifest(tmp_path: Path) -> None:
    (tmp_path / "apps.yaml").write_text(app_yaml())
    loader = loader_for(tmp_path)
    loader.load()
    (tmp_path / "4913").write_text("")  # editors' probe and backup files
    (tmp_path / "apps.yaml~").write_text("")
    named = [tmp_path / "4913", tmp_path / "apps.yaml~", tmp_path / "gone.txt"]
    assert loader.load(named, rescan=False) is None
    assert loader.scan_count == 1


@pytest.mark.parametrize(
    "event",
    ["new.yaml", "..data", ".apps.yaml.swp", "sub", "sub/x.yaml", "../elsewhere.yaml", "."],
)
def test_loader_rescans_for_anything_else(tmp_path: Path, event: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "apps.yaml").write_text(app_yaml())
    loader = loader_for(root)
    loader.load()
    (root / "sub").mkdir()
    (root / "sub" / "x.yaml").write_text(secret_yaml())
    (root / "new.yaml").write_text(secret_yaml("new"))
    snapshot = loader.load([root / event], rescan=False)
    assert loader.scan_count == 2
    assert snapshot is not None and user(snapshot) == "alice"


def test_loader_rescans_when_a_known_manifest_vanishes(tmp_path: Path) -> None:
    (tmp_path / "apps.yaml").write_text(app_yaml())
    (tmp_path / "secrets.yaml").write_text(secret_yaml())
    loader = loader_for(tmp_path)
    loader.load()
    (tmp_path / "secrets.yaml").unlink()
    snapshot = loader.load([tmp_path / "secrets.yaml"], rescan=False)
    assert loader.scan_count == 2
    assert snapshot is not None and user(snapshot) is None
    assert issue_texts(snapshot) == issue_texts(fresh(tmp_path))


def test_loader_of_one_file_always_rescans(tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    path.write_text(app_yaml() + "---\n" + secret_yaml())
    loader = loader_for(path)
    loader.load()
    path.write_text(app_yaml() + "---\n" + secret_yaml(user="bob"))
    snapshot = loader.load([path], rescan=False)
    assert snapshot is not None and user(snapshot) == "bob"
    assert loader.scan_count == 2


def test_loading_leaves_the_garbage_collector_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "apps.yaml").write_text(app_yaml())
    assert gc.isenabled()
    fresh(tmp_path)
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        fresh(tmp_path)
        assert not gc.isenabled()
    finally:
        gc.enable()
    gc.freeze()  # as a pre-forking server might: a load must not release these
    try:
        frozen = gc.get_freeze_count()
        fresh(tmp_path)
        assert gc.get_freeze_count() >= frozen > 0
    finally:
        gc.unfreeze()


# -- Hostile files: what any writer to the folder can drop there (issue 13, items 3, 4, 17, 18) --


@contextlib.contextmanager
def fifo(path: Path) -> Iterator[Path]:
    """A FIFO renamed onto `path`. On exit a writer comes and goes, so that a reader stuck on it
    (the loader before FIFOs were skipped) gets end-of-file instead of blocking for ever."""
    temporary = path.with_name(f".{path.name}.fifo")
    os.mkfifo(temporary)
    os.replace(temporary, path)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):  # ENXIO: no reader, nobody to release
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def loader_limited(path: Path, limit: int) -> FolderLoader:
    return FolderLoader(
        path, secrets_namespace="kyma-system", load_cert=load_client_cert, max_file_size=limit
    )


async def test_a_fifo_is_reported_and_never_opened(started: Factory, tmp_path: Path) -> None:
    (tmp_path / "apps.yaml").write_text(app_yaml())
    (tmp_path / "secrets.yaml").write_text(secret_yaml())
    with fifo(tmp_path / "pipe.yaml"):
        registry = await asyncio.wait_for(started(tmp_path), 5)
        assert user(registry.snapshot()) == "alice"
        assert issue_texts(registry.snapshot()) == [
            "pipe.yaml: not a regular file but a FIFO: not read"
        ]


async def test_a_manifest_swapped_for_a_fifo_keeps_its_objects(
    started: Factory, tmp_path: Path
) -> None:
    """Reading it stalled the reload thread for ever, silently: no later change applied."""
    (tmp_path / "apps.yaml").write_text(app_yaml())
    (tmp_path / "secrets.yaml").write_text(secret_yaml())
    registry = await started(tmp_path)
    with fifo(tmp_path / "secrets.yaml"):
        expected = ["secrets.yaml: not a regular file but a FIFO: not read"]
        await eventually(lambda: issue_texts(registry.snapshot()) == expected)
        assert user(registry.snapshot()) == "alice"  # the Secret's last valid version
        (tmp_path / "apps.yaml").write_text(app_yaml(service="Orders2"))
        await eventually(lambda: user(registry.snapshot(), service="orders2") == "alice")


def _socket_at(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


def _bad_apps(tmp_path: Path, kind: str) -> None:
    """Replaces apps.yaml with a hostile `kind` of file."""
    path = tmp_path / "apps.yaml"
    path.unlink()
    if kind == "dev-null":
        path.symlink_to(os.devnull)
    elif kind == "socket":
        _socket_at(path)
    elif kind == "too-large":
        path.write_text(app_yaml() + "#" * 2000 + "\n")
    elif kind == "nested":
        path.write_text(app_yaml() + "  x: " + "[" * 150 + "]" * 150 + "\n")
    elif kind == "aliases":
        path.write_text(app_yaml() + "---\n" + "apiVersion: v1\nkind: List\nitems: [&a {}, *a]\n")


HOSTILE = [
    ("dev-null", "apps.yaml: not a regular file but a character device: not read"),
    ("socket", "apps.yaml: not a regular file but a socket: not read"),
    (
        "too-large",
        "apps.yaml: too large: 2293 bytes, the limit is 2000 (--manifest-size-limit): not read",
    ),
    ("nested", "apps.yaml: invalid YAML at line 12, column 104: nested more than 100 levels deep"),
    (
        "aliases",
        "apps.yaml: invalid YAML at line 15, column 9: anchors and aliases are not allowed "
        "(the node anchored here is used again)",
    ),
]


@pytest.mark.parametrize(("kind", "issue"), HOSTILE, ids=[k for k, _ in HOSTILE])
def test_a_hostile_file_is_reported_and_its_last_valid_state_kept(
    tmp_path: Path, kind: str, issue: str
) -> None:
    (tmp_path / "apps.yaml").write_text(app_yaml())
    (tmp_path / "secrets.yaml").write_text(secret_yaml())
    loader = loader_limited(tmp_path, 2000)
    first = loader.load()
    assert first is not None and user(first) == "alice" and first.issues == ()
    _bad_apps(tmp_path, kind)
    snapshot = loader.load()
    assert snapshot is not None
    assert issue_texts(snapshot) == [issue]
    assert user(snapshot) == "alice"  # the Application of apps.yaml's last valid version
    assert fresh_limited(tmp_path, 2000).routes == ()  # nothing valid to fall back on
    assert issue_texts(fresh_limited(tmp_path, 2000)) == [issue]


def fresh_limited(path: Path, limit: int) -> Snapshot:
    return load_snapshot(
        path, secrets_namespace="kyma-system", load_cert=load_client_cert, max_file_size=limit
    )


@pytest.mark.parametrize(("size", "read"), [(1000, True), (1001, False)])
def test_the_size_limit_is_inclusive(tmp_path: Path, size: int, read: bool) -> None:
    text = secret_yaml()
    (tmp_path / "s.yaml").write_text(text + "#" * (size - len(text) - 1) + "\n")
    loader = loader_limited(tmp_path, 1000)
    snapshot = loader.load()
    assert snapshot is not None
    assert loader.parse_count == int(read)
    if read:
        assert snapshot.issues == ()
    else:
        assert issue_texts(snapshot) == [
            "s.yaml: too large: 1001 bytes, the limit is 1000 (--manifest-size-limit): not read"
        ]


def test_a_huge_file_is_refused_unread(tmp_path: Path) -> None:
    """Parsing took up to 200 times a file's size (30 MB: 905 MB); by default 1 MiB is the most."""
    with (tmp_path / "huge.yaml").open("wb") as file:
        file.truncate(30 * 1024 * 1024)  # sparse: its zeros are never read
    loader = loader_for(tmp_path)
    snapshot = loader.load()
    assert snapshot is not None and loader.parse_count == 0
    assert issue_texts(snapshot) == [
        "huge.yaml: too large: 31457280 bytes, the limit is 1048576 (--manifest-size-limit): "
        "not read"
    ]


@pytest.mark.parametrize("swap", ["fifo", "grown"])
def test_a_file_changed_after_its_stat_is_checked_again(tmp_path: Path, swap: str) -> None:
    """Between the loader's stat and its open, the file may be replaced or grow."""
    path = tmp_path / "apps.yaml"
    path.write_text(app_yaml())
    st = path.stat()
    if swap == "fifo":
        path.unlink()
        with fifo(path), pytest.raises(_Skipped, match="^not a regular file but a FIFO"):
            _read_manifest(path, st, MANIFEST_SIZE_LIMIT)
    else:
        path.write_text(app_yaml() * 10)
        with pytest.raises(_Skipped, match="^too large"):
            _read_manifest(path, st, st.st_size)


@pytest.mark.parametrize("kind", ["fifo", "dev-null"])
def test_a_registry_path_that_is_no_file_or_folder_is_a_registry_error(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "registry"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(os.devnull)
    with pytest.raises(RegistryError, match="is neither a folder nor a regular file"):
        fresh(path)
