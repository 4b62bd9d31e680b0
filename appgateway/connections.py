"""The open caller connections of the proxy listeners: for the shutdown drain, and to cap
them (--max-connections)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appgateway.server import ClientConnection


class ConnectionTracker:
    """The open client connections of the proxy listeners: for the shutdown drain, and to
    cap them (each one holds buffers and file descriptors towards the target too)."""

    def __init__(self, limit: int = 0, on_refused: Callable[[int], None] | None = None) -> None:
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.limit = limit  # 0: no cap
        self.on_refused = on_refused  # told the number of open connections

    def add(self, conn: ClientConnection) -> bool:
        """False when the cap is reached: the connection is refused, not tracked."""
        if self.limit and len(self.connections) >= self.limit:
            if self.on_refused is not None:
                self.on_refused(len(self.connections))
            return False
        self.connections.add(conn)
        return True

    def discard(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)

    def close_idle(self) -> None:
        for conn in list(self.connections):
            if conn.idle:
                conn.close()

    @property
    def busy(self) -> bool:
        return any(not conn.idle for conn in self.connections)

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()
