"""The open caller connections of the proxy listeners: for the shutdown drain, and to cap
them (--max-connections)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Tracked(Protocol):
    """What the tracker asks of a connection (server.ClientConnection)."""

    @property
    def idle(self) -> bool: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class ConnectionTracker:
    """The open client connections of the proxy listeners: for the shutdown drain, and to
    cap them (each one holds buffers and file descriptors towards the target too)."""

    def __init__(self, limit: int = 0, on_refused: Callable[[int], None] | None = None) -> None:
        self.connections: set[Tracked] = set()
        self.draining = False
        self.limit = limit  # 0: no cap
        self.on_refused = on_refused  # told the number of open connections

    def add(self, conn: Tracked) -> bool:
        """False when the cap is reached: the connection is refused, not tracked."""
        if self.limit and len(self.connections) >= self.limit:
            if self.on_refused is not None:
                self.on_refused(len(self.connections))
            return False
        self.connections.add(conn)
        return True

    def discard(self, conn: Tracked) -> None:
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
