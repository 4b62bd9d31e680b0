"""The connection cap and the drain's view of open caller connections (the cap end to end is in
tests/e2e/test_faults.py)."""

from __future__ import annotations

from appgateway.connections import ConnectionTracker


class FakeConnection:
    """What the tracker asks of a connection: whether it is idle, and to close."""

    def __init__(self, idle: bool) -> None:
        self.idle = idle
        self.closed = False
        self.aborted = False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def conn(idle: bool = True) -> FakeConnection:
    return FakeConnection(idle)


def test_the_cap_refuses_and_reports_the_open_count() -> None:
    refused: list[int] = []
    tracker = ConnectionTracker(2, refused.append)
    first, second, third = conn(), conn(), conn()
    assert tracker.add(first) and tracker.add(second)
    assert not tracker.add(third)
    assert refused == [2] and third not in tracker.connections
    tracker.discard(first)
    assert tracker.add(third)


def test_no_cap_by_default() -> None:
    tracker = ConnectionTracker()
    assert all(tracker.add(conn()) for _ in range(1000))


def test_drain_closes_idle_connections_and_waits_for_busy_ones() -> None:
    tracker = ConnectionTracker()
    idle, busy = conn(True), conn(False)
    tracker.add(idle)
    tracker.add(busy)
    assert tracker.busy
    tracker.close_idle()
    assert idle.closed and not busy.closed
    tracker.abort_all()
    assert busy.aborted
