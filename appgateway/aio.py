"""asyncio glue both sides of the data path share: protocol typing and the one bounded wait."""

from __future__ import annotations

import asyncio
from typing import Final, cast

READ_SIZE: Final = 32 * 1024
"""Most bytes one socket read hands over (asyncio's buffered-protocol reads, into one buffer
per listener or per upstream). uvloop's own reads take up to 256 KB at a time, and a stalled
caller then holds that whole read in its write buffer."""


def as_protocol(conn: object) -> asyncio.Protocol:
    """Our connection classes have asyncio's protocol methods without inheriting them.

    A class with a Python base class compiles to a plain Python class under mypyc; without one,
    to a native class whose attributes are C struct fields (the connections are the data path's
    most used objects). uvloop recognises `get_buffer`/`buffer_updated` by name.
    """
    return cast(asyncio.Protocol, conn)


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
