"""The one watch loop of the folder registry and the caller tokens file, on a real folder."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from appgateway import filewatch


class Calls:
    """What the watch loop passed to its callback, with a way to wait for a call."""

    def __init__(self) -> None:
        self.seen: list[set[Path]] = []
        self._called = asyncio.Event()

    async def __call__(self, changes: set[Path]) -> None:
        self.seen.append(changes)
        self._called.set()

    async def until(self, check: Callable[[list[set[Path]]], bool]) -> None:
        async with asyncio.timeout(5):
            while not check(self.seen):
                self._called.clear()
                await self._called.wait()


def _start(where: Path, calls: Calls, stop: asyncio.Event) -> asyncio.Task[None]:
    return asyncio.create_task(
        filewatch.watch(
            where, calls, what="test", stop=stop, recursive=True, rescan_ms=300, poll_ms=100
        )
    )


async def test_events_name_the_changed_file_and_rescans_name_none(tmp_path: Path) -> None:
    calls, stop = Calls(), asyncio.Event()
    task = _start(tmp_path, calls, stop)
    await calls.until(lambda seen: set() in seen)  # the periodic rescan: the watch is up
    (tmp_path / "a.yaml").write_text("x: 1\n")
    await calls.until(lambda seen: any(tmp_path / "a.yaml" in changes for changes in seen))
    stop.set()
    await asyncio.wait_for(task, timeout=2)


async def test_a_failed_watch_falls_back_to_polling_then_retries_until_stopped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inotify ignores a missing folder (the rescans cover it); polling, which users choose
    with watchfiles' WATCHFILES_FORCE_POLLING on filesystems without inotify, raises."""
    monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "1")
    caplog.set_level(logging.WARNING, "appgateway.watch")
    calls, stop = Calls(), asyncio.Event()
    task = _start(tmp_path / "gone", calls, stop)
    await calls.until(bool)  # called once, after the polling pause
    await asyncio.sleep(0.3)  # polling fails too: now the 10 s retry pause
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "test watch failed, polling instead"),
        ("ERROR", "test watch failed"),
    ]
    assert calls.seen == [set()]
    stop.set()  # ends the retry pause at once
    await asyncio.wait_for(task, timeout=1)


async def test_a_watcher_runs_the_loop_in_its_task_until_stopped(tmp_path: Path) -> None:
    calls = Calls()
    await filewatch.Watcher("test").stop()  # never started: nothing to wait for
    watcher = filewatch.Watcher("test")
    await watcher.start(tmp_path, calls, recursive=False, rescan_ms=300, poll_ms=100)
    task = watcher.task
    assert task is not None and task.get_name() == "test watch" and not task.done()
    (tmp_path / "a.yaml").write_text("x: 1\n")
    await calls.until(lambda seen: any(tmp_path / "a.yaml" in changes for changes in seen))
    await watcher.stop()
    assert task.done() and not task.cancelled() and watcher.task is None
