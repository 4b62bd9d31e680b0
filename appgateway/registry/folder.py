"""The folder source (`--registry DIR`): scan, parse, keep the last valid state, and watch.

Parse results are cached per file by (mtime_ns, size, inode), and every file a watch event
names is re-read, so one edited file costs one parse however big the folder is. When the events
name only manifests already known, just those are read again; anything else (a new or vanished
file, a directory, a dot-named entry) triggers a rescan rather than trusting event details:
ConfigMap mounts change files by swapping a `..data` symlink, which shows up only as events on
dot-named entries. A rescan also runs at least every RESCAN_MS, in case events were lost.

Anyone who can write to the folder can drop anything there, so a manifest is read only if it is
a regular file (a FIFO would block the reload thread forever, a symlink to /dev/zero would never
end) of at most `max_file_size` bytes; anything else is reported as a file error and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import stat
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from appgateway import filewatch, tls
from appgateway.config import MANIFEST_SIZE_LIMIT
from appgateway.model import ClientCert
from appgateway.registry import RegistryError, publish
from appgateway.registry.parse import (
    AppDoc,
    Document,
    ObjectKey,
    ParseResult,
    SecretDoc,
    file_error,
    merge,
    parse_file,
)
from appgateway.registry.snapshot import LoadCert, Snapshot, SnapshotBuilder

log = logging.getLogger("appgateway.registry")

SUFFIXES = (".yaml", ".yml", ".json")
POLL_MS = 1000
RESCAN_MS = 10_000  # safety net for lost inotify events
_FILE_TYPES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@dataclass(slots=True)
class _File:
    stamp: tuple[int, int, int]
    latest: ParseResult
    last_good: ParseResult | None  # the last result that was not a whole-file failure


def _list_files(root: Path) -> tuple[list[tuple[str, Path]], set[Path]]:
    """(display name, path) of every manifest under `root`, in sorted display-name order, and
    the directories walked."""
    if root.is_file():
        return [(root.name, root)], set()
    out: list[tuple[str, Path]] = []
    dirs: set[Path] = set()
    seen_dirs: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        folder = Path(dirpath)
        dirs.add(folder)
        shown = folder.relative_to(root).as_posix() + "/" if folder != root else ""
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(SUFFIXES):
                out.append((shown + name, folder / name))
    out.sort()
    return out, dirs


def _check_root(root: Path) -> None:
    try:
        if root.is_file():
            with root.open("rb"):
                return
        if not root.is_dir():
            if root.exists():
                raise RegistryError(f"registry path {root} is neither a folder nor a regular file")
            raise RegistryError(f"registry folder {root} does not exist or is not a directory")
        with os.scandir(root):
            return
    except OSError as exc:
        raise RegistryError(f"registry folder {root} is not readable: {exc.strerror}") from None


class _CertCache:
    """Keeps loaded certificates across snapshots, so a reload does not re-verify them all.

    For sources that build every snapshot from scratch; SnapshotBuilder keeps its own.
    """

    def __init__(self, load_cert: LoadCert) -> None:
        self._load = load_cert
        self._cache: dict[tuple[bytes, bytes], ClientCert | ValueError] = {}
        self._used: set[tuple[bytes, bytes]] = set()

    def __call__(self, crt: bytes, key: bytes) -> ClientCert:
        self._used.add((crt, key))
        hit = self._cache.get((crt, key))
        if hit is None:
            try:
                hit = self._load(crt, key)
            except ValueError as exc:
                hit = exc
            self._cache[(crt, key)] = hit
        if isinstance(hit, ValueError):
            raise ValueError(str(hit))
        return hit

    def prune(self) -> None:
        self._cache = {k: v for k, v in self._cache.items() if k in self._used}
        self._used = set()


class FolderLoader:
    """The synchronous part: scan, parse what changed, merge, build. Also used by `check`."""

    def __init__(
        self,
        root: Path,
        *,
        secrets_namespace: str,
        load_cert: LoadCert,
        max_file_size: int = MANIFEST_SIZE_LIMIT,
    ) -> None:
        self.root = root.absolute()  # watch events name absolute paths
        self.secrets_namespace = secrets_namespace
        self.max_file_size = max_file_size
        self.parse_count = 0
        self.scan_count = 0
        self.file_count = 0
        self._builder = SnapshotBuilder(secrets_namespace=secrets_namespace, load_cert=load_cert)
        self._files: dict[Path, _File] = {}
        self._dirs: set[Path] = set()
        self._current: dict[ObjectKey, Document] = {}

    def load(self, forced: Collection[Path] = (), *, rescan: bool = True) -> Snapshot | None:
        """Rescan; return a new snapshot if any file changed, else None.

        `forced` paths are re-read even if their stamp looks unchanged (writes within one
        timestamp tick keep mtime and maybe size). With `rescan` False they are taken to be
        all that changed, if they name only known manifests; otherwise it rescans anyway.
        Raises RegistryError if the root is gone.
        """
        with _collector_paused():
            return self._load(forced, rescan)

    def _load(self, forced: Collection[Path], rescan: bool) -> Snapshot | None:
        known = None if rescan else self._known(forced)
        if known is None:
            rescanned = self._rescan(forced)
            if rescanned is None:
                return None
            files = rescanned
        elif not known:
            return None
        else:
            files = self._files.copy()
            for path in known:
                name = path.relative_to(self.root).as_posix()
                files[path] = self._read(name, path, files[path], force=True)
        self._files = files
        results: list[ParseResult] = []
        for entry in files.values():
            result = entry.latest
            if result.failed and entry.last_good is not None:
                good = entry.last_good
                result = ParseResult(good.objects, result.issues, good.rejected, failed=True)
            results.append(result)
        merged = merge(results, self._current)
        self._current = merged.by_key
        return self._builder.build(
            [d for d in merged.objects if isinstance(d, AppDoc)],
            [d for d in merged.objects if isinstance(d, SecretDoc)],
            merged.issues,
        )

    def _rescan(self, forced: Collection[Path]) -> dict[Path, _File] | None:
        """Every manifest's entry, or None if none changed."""
        _check_root(self.root)
        listed, self._dirs = _list_files(self.root)
        self.scan_count += 1
        self.file_count = len(listed)
        changed = len(listed) != len(self._files)
        files: dict[Path, _File] = {}
        for name, path in listed:
            old = self._files.get(path)
            entry = self._read(name, path, old, force=path in forced)
            changed = changed or entry is not old
            files[path] = entry
        return files if changed else None

    def _known(self, paths: Collection[Path]) -> list[Path] | None:
        """The known manifests among `paths`, or None if only a rescan can tell what changed.

        Paths that cannot be manifests and never held any (temporary files of editors) are
        left out; a new or vanished manifest, a directory, a symlink swap all need a rescan.
        """
        if not paths or not self._dirs:  # a single file: rescanning costs the same
            return None
        out: list[Path] = []
        for path in paths:
            if path.parent not in self._dirs or path.name.startswith("."):
                return None
            if path in self._files:
                try:
                    mode = os.stat(path).st_mode
                except OSError:
                    return None
                if not stat.S_ISREG(mode):
                    return None
                out.append(path)
                continue
            if path in self._dirs or path.name.lower().endswith(SUFFIXES):
                return None
            try:
                mode = os.stat(path).st_mode
            except OSError:
                continue  # not a manifest, and gone
            if stat.S_ISDIR(mode):
                return None
        return out

    def _read(self, name: str, path: Path, old: _File | None, *, force: bool) -> _File:
        try:
            st = path.stat()
        except OSError as exc:  # vanished or a dangling symlink
            if old is not None and old.stamp == (0, 0, 0) and not force:
                return old
            return _File((0, 0, 0), file_error(name, f"cannot read: {exc.strerror}"), _good(old))
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if old is not None and old.stamp == stamp and not force:
            return old
        try:
            data = _read_manifest(path, st, self.max_file_size)
        except _Skipped as exc:
            return _File(stamp, file_error(name, str(exc)), _good(old))
        except OSError as exc:
            return _File(stamp, file_error(name, f"cannot read: {exc.strerror}"), _good(old))
        self.parse_count += 1
        result = parse_file(name, data)
        return _File(stamp, result, _good(old) if result.failed else result)


class _Skipped(Exception):
    """A manifest that is not read at all; the message says why."""


def _read_manifest(path: Path, st: os.stat_result, limit: int) -> bytes:
    """The bytes of `path` (whose stat is `st`), if it is a regular file of at most `limit`.

    Only a regular file is opened: opening a FIFO blocks until a writer comes, and opening a
    device can act on it. The file may be swapped between the stat and the open, so the open
    does not block either, and the opened file is checked again.
    """
    _check_regular(st, limit)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        _check_regular(st, limit)
        parts: list[bytes] = []
        total = 0
        want = st.st_size + 1  # it may still grow (or a read may be short): read to the end
        while total <= limit:
            chunk = os.read(fd, min(want, limit + 1 - total))
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
            want = 65536
    finally:
        os.close(fd)
    if total > limit:
        raise _Skipped(_too_large(total, limit))
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _check_regular(st: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_TYPES if test(st.st_mode)), "something else")
        raise _Skipped(f"not a regular file but {kind}: not read")
    if st.st_size > limit:
        raise _Skipped(_too_large(st.st_size, limit))


def _too_large(size: int, limit: int) -> str:
    return f"too large: {size} bytes, the limit is {limit} (--manifest-size-limit): not read"


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while loading.

    A load creates hundreds of thousands of long-lived objects and almost no cycles, so each
    collection it triggers walks the whole growing heap to free nothing: about a quarter of
    the time of a first load of 10,000 Applications. (Freezing and unfreezing the new objects
    into the oldest generation would save a little more, but it leaves the collector's
    long-lived accounting behind, and full collections then walk the whole heap far more
    often: that cost every request about 40% more instructions.)
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _good(old: _File | None) -> ParseResult | None:
    return old.last_good if old is not None else None


def load_snapshot(
    path: Path,
    *,
    secrets_namespace: str,
    load_cert: LoadCert,
    max_file_size: int = MANIFEST_SIZE_LIMIT,
) -> Snapshot:
    """One load, as `serve --registry` would do it first (used by `check`)."""
    loader = FolderLoader(
        path, secrets_namespace=secrets_namespace, load_cert=load_cert, max_file_size=max_file_size
    )
    snapshot = loader.load()
    return snapshot if snapshot is not None else Snapshot()


class FolderRegistry:
    """Registry over a folder (or one file), applying changes within about 2 s."""

    def __init__(
        self,
        path: Path,
        *,
        secrets_namespace: str,
        load_cert: LoadCert = tls.load_client_cert,
        max_file_size: int = MANIFEST_SIZE_LIMIT,
    ) -> None:
        self.ready = False
        self.on_change: Callable[[Snapshot], None] | None = None
        self._loader = FolderLoader(
            path,
            secrets_namespace=secrets_namespace,
            load_cert=load_cert,
            max_file_size=max_file_size,
        )
        self._snapshot = Snapshot()
        self._lock = asyncio.Lock()  # one load at a time: the loader is not thread-safe
        self._watcher = filewatch.Watcher("registry")
        self._rescan_due = 0.0  # time.monotonic() of the next full rescan

    @property
    def parse_count(self) -> int:
        """Files parsed so far; tests use it to prove unchanged files are not re-read."""
        return self._loader.parse_count

    @property
    def scan_count(self) -> int:
        """Full rescans so far; tests use it to tell them from reading just the named files."""
        return self._loader.scan_count

    def snapshot(self) -> Snapshot:
        return self._snapshot

    async def start(self) -> None:
        snapshot = await asyncio.to_thread(self._loader.load)
        if self._loader.file_count == 0:
            fields = {"path": str(self._loader.root)}
            log.warning("registry folder has no manifests", extra={"fields": fields})
        self._apply(snapshot or Snapshot())
        self.ready = True
        root = self._loader.root
        recursive = root.is_dir()
        await self._watcher.start(
            root if recursive else root.parent,  # a file: watch its folder, not below
            self._reload,
            recursive=recursive,
            rescan_ms=RESCAN_MS,
            poll_ms=POLL_MS,
        )
        await self._reload(())  # what changed before the watch existed

    async def stop(self) -> None:
        await self._watcher.stop()

    async def _reload(self, changed: Collection[Path]) -> None:
        """Never raises: a failed reload keeps the last snapshot serving.

        `changed` are the paths watch events named (none: a timeout or a watch failure).
        """
        try:
            async with self._lock:
                now = time.monotonic()
                rescan = not changed or now >= self._rescan_due
                if rescan:
                    self._rescan_due = now + RESCAN_MS / 1000
                snapshot = await asyncio.to_thread(self._loader.load, changed, rescan=rescan)
        except RegistryError as exc:
            log.error("registry error", extra={"fields": {"issue": str(exc)}})
            return
        except Exception as exc:
            log.exception("registry reload failed", extra={"fields": {"error": repr(exc)}})
            return
        if snapshot is not None:
            self._apply(snapshot)

    def _apply(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        publish(snapshot, snapshot.issues, self.on_change)
