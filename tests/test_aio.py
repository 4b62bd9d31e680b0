from __future__ import annotations

import asyncio
import time

import pytest

from appgateway.aio import KEPT_VIEWS, READ_SIZE, ReadBuffer, as_protocol, wait_idle


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


@pytest.mark.parametrize("nbytes", [0, 1, 17, KEPT_VIEWS, KEPT_VIEWS + 1, READ_SIZE])
def test_a_filled_view_shows_exactly_the_bytes_read(nbytes: int) -> None:
    buffer = ReadBuffer()
    assert len(buffer.whole) == READ_SIZE
    data = bytes(i % 251 for i in range(nbytes))
    buffer.whole[:nbytes] = data
    assert bytes(buffer.filled(nbytes)) == data
    buffer.whole[:nbytes] = bytes(reversed(data))  # the next read, into the same buffer
    assert bytes(buffer.filled(nbytes)) == bytes(reversed(data))


def test_views_of_small_reads_are_kept_and_large_ones_are_not() -> None:
    buffer = ReadBuffer()
    assert buffer.filled(100) is buffer.filled(100)
    assert buffer.filled(100) is not buffer.filled(101)
    assert buffer.filled(KEPT_VIEWS + 1) is not buffer.filled(KEPT_VIEWS + 1)
