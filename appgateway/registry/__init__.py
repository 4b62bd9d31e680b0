"""The Registry interface shared by the folder and Kubernetes sources.

This module stays import-light (no asyncio, no I/O) because importing any submodule, pure
ones included, runs it first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from appgateway.config import ConfigurationError

if TYPE_CHECKING:
    from appgateway.registry.parse import Issue
    from appgateway.registry.snapshot import Snapshot

log = logging.getLogger("appgateway.registry")


class RegistryError(ConfigurationError):
    """The source cannot be used at all (missing or unreadable folder): exit status 2."""


class Registry(Protocol):
    ready: bool
    """True once the first full load has finished."""

    on_change: Callable[[Snapshot], None] | None
    """Set by the app; called on the event loop after each swap with the new snapshot, so
    caches and pools that no API uses any more can be dropped."""

    async def start(self) -> None:
        """Load everything once (raises RegistryError if the source is unusable), then watch."""

    async def stop(self) -> None: ...

    def snapshot(self) -> Snapshot:
        """The current snapshot: immutable, swapped atomically."""
        ...


def publish(
    snapshot: Snapshot, issues: Iterable[Issue], on_change: Callable[[Snapshot], None] | None
) -> None:
    """What every source does after a swap: log `issues` and the snapshot's size, then call
    the app's hook (a failing hook is logged, never raised into the source)."""
    for issue in issues:
        fields = {"fields": {"issue": str(issue)}}
        if issue.severity == "error":
            log.error("registry error", extra=fields)
        else:
            log.warning("registry warning", extra=fields)
    counts = {
        "apis": snapshot.api_count,
        "applications": snapshot.application_count,
        "errors": snapshot.error_count,
    }
    log.info("registry updated", extra={"fields": counts})
    if on_change is not None:
        try:
            on_change(snapshot)
        except Exception:
            log.exception("registry change hook failed")
