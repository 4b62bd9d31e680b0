"""asyncio glue both sides of the data path share: protocol typing and the one bounded wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, cast

READ_SIZE: Final = 32 * 1024
"""Most bytes one socket read hands over (asyncio's buffered-protocol reads, into one buffer
per listener or per upstream). uvloop's own reads take up to 256 KB at a time, and a stalled
caller then holds that whole read in its write buffer."""

KEPT_VIEWS: Final = 4096
"""Reads up to this size get a view made once and kept (see ReadBuffer)."""


class ReadBuffer:
    """The buffer a listener's (or the upstream's) connections read into, by turns: each read
    is parsed before the next one lands, and nothing keeps a view past its callback.

    `filled(n)` is the view of the first n bytes. Making one costs a slice object and a buffer
    export, a few hundred instructions, twice per proxied request; so the views of small reads
    (the size of most requests and responses) are made once and kept: at most KEPT_VIEWS of
    them, some 200 bytes each, and only as many as there are distinct sizes.
    """

    def __init__(self, size: int = READ_SIZE) -> None:
        self.whole = memoryview(bytearray(size))
        self._views: list[memoryview | None] = [None] * (KEPT_VIEWS + 1)

    def filled(self, nbytes: int) -> memoryview:
        if nbytes > KEPT_VIEWS:
            return self.whole[:nbytes]
        view = self._views[nbytes]
        if view is None:
            view = self._views[nbytes] = self.whole[:nbytes]
        return view


def as_protocol(conn: object) -> asyncio.Protocol:
    """Our connection classes have asyncio's protocol methods without inheriting them.

    A class with a Python base class compiles to a plain Python class under mypyc; without one,
    to a native class whose attributes are C struct fields (the connections are the data path's
    most used objects). uvloop recognises `get_buffer`/`buffer_updated` by name.
    """
    return cast(asyncio.Protocol, conn)


class Deadline:
    """A connection's deadline, which moves on every request for the price of a float store.

    One timer handle serves all the deadlines of a connection: a later deadline is only
    recorded, and the timer, when it fires early, sets itself again for the rest. Only an
    earlier deadline needs a new handle. (A handle made and cancelled per request is a
    measurable share of a keep-alive request.) `on_expiry` runs once the deadline has passed
    unmoved; the deadline is then unset.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_expiry: Callable[[], None]) -> None:
        self._loop = loop
        self._on_expiry = on_expiry
        self.at: float | None = None  # loop time; None: no deadline
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def arm(self, at: float) -> None:
        self.at = at
        timer = self._timer
        if timer is not None:
            if self._timer_at <= at:
                return
            timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._fired)

    def disarm(self) -> None:
        self.at = None

    def close(self) -> None:
        """No deadline, and no timer left behind (the connection is gone)."""
        self.at = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fired(self) -> None:
        self._timer = None
        at = self.at
        if at is None:
            return
        if self._loop.time() < at - 0.001:
            self._timer_at = at
            self._timer = self._loop.call_at(at, self._fired)
            return
        self.at = None
        self._on_expiry()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def wait_idle(waiter: asyncio.Future[None], seconds: float) -> None:
    """Wait for `waiter` (set by a protocol callback) at most `seconds`.

    Raises TimeoutError when the time is up, so each caller turns silence into its own error
    (a caller's stalled body, a target that stopped reading our upload).
    """
    timer = asyncio.get_running_loop().call_later(seconds, _expire, waiter)
    try:
        await waiter
    finally:
        timer.cancel()
