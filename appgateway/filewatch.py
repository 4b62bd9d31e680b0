"""Watching a folder for the registry and the caller tokens file: one loop, one fallback.

inotify can fail (no watches left, a filesystem without it, the folder removed), and events
can be lost or never sent (a change behind a symlink). So the callback also runs with no
paths at least every `rescan_ms`, and a failed watch falls back to polling; if even polling
fails (the folder is gone), it is retried every RETRY_MS until the folder is back or `stop`
is set. The callback must not raise: it decides itself what a change means.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import watchfiles

log = logging.getLogger("appgateway.watch")

DEBOUNCE_MS: Final = 200
RETRY_MS: Final = 10_000


async def watch(
    where: Path,
    on_changes: Callable[[set[Path]], Awaitable[None]],
    *,
    what: str,
    stop: asyncio.Event,
    recursive: bool,
    rescan_ms: int,
    poll_ms: int,
) -> None:
    """Call `on_changes` with the paths events name, or none on a rescan, until `stop`."""
    # watchfiles logs every batch of changes at info; the callers log what a change meant.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    polling: bool | None = None  # None: watchfiles decides (inotify where it can)
    while not stop.is_set():
        try:
            async for changes in watchfiles.awatch(
                where,
                watch_filter=None,
                debounce=DEBOUNCE_MS,
                stop_event=stop,
                rust_timeout=rescan_ms,
                yield_on_timeout=True,
                force_polling=polling,
                poll_delay_ms=poll_ms,
                recursive=recursive,
                ignore_permission_denied=True,
            ):
                await on_changes({Path(p) for _, p in changes})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            fields = {"fields": {"error": str(exc), "path": str(where)}}
            if polling:
                log.error(f"{what} watch failed", extra=fields)
                pause = RETRY_MS
            else:
                log.warning(f"{what} watch failed, polling instead", extra=fields)
                polling, pause = True, poll_ms
            try:
                await asyncio.wait_for(stop.wait(), timeout=pause / 1000)
            except TimeoutError:
                await on_changes(set())


class Watcher:
    """`watch` in a task of its own: what an owner (the folder registry, the tokens file)
    starts once and must stop within 2 s on shutdown."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(
        self,
        where: Path,
        on_changes: Callable[[set[Path]], Awaitable[None]],
        *,
        recursive: bool,
        rescan_ms: int,
        poll_ms: int,
    ) -> None:
        """Returns once the task has set up its watch: a read by the owner after this catches
        whatever changed before the watch existed."""
        self.task = asyncio.create_task(
            watch(
                where,
                on_changes,
                what=self.what,
                stop=self._stop,
                recursive=recursive,
                rescan_ms=rescan_ms,
                poll_ms=poll_ms,
            ),
            name=f"{self.what} watch",
        )
        await asyncio.sleep(0)

    async def stop(self) -> None:
        self._stop.set()
        task, self.task = self.task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(task, timeout=2)
        except TimeoutError:
            pass  # wait_for has cancelled it
