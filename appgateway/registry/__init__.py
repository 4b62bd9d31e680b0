"""The Registry interface shared by the folder and Kubernetes sources.

This module stays import-light (no asyncio, no I/O) because importing any submodule, pure
ones included, runs it first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from appgateway.config import ConfigurationError

if TYPE_CHECKING:
    from appgateway.registry.snapshot import Snapshot


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
