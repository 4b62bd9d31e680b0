from __future__ import annotations

import asyncio
import time

import pytest

from appgateway.aio import READ_SIZE, as_protocol, wait_idle


async def test_wait_idle_returns_when_woken() -> None:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    loop.call_later(0.01, waiter.set_result, None)
    await wait_idle(waiter, 5)
    assert waiter.done()


async def test_wait_idle_raises_timeout_error_after_the_silence() -> None:
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await wait_idle(waiter, 0.05)
    assert 0.04 <= time.monotonic() - started < 1


async def test_wait_idle_passes_the_wakers_error_on() -> None:
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiter.set_exception(ConnectionResetError())
    with pytest.raises(ConnectionResetError):
        await wait_idle(waiter, 5)


def test_as_protocol_is_the_object_itself() -> None:
    thing = object()
    assert as_protocol(thing) is thing
    assert READ_SIZE == 32 * 1024
