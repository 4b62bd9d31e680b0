from __future__ import annotations

import asyncio
import time

import pytest

from appgateway.aio import (
    KEPT_VIEWS,
    READ_SIZE,
    Deadline,
    ReadBuffer,
    as_protocol,
    wait_idle,
)


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


class Expiries:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.at: list[float] = []
        self.deadline = Deadline(self.loop, lambda: self.at.append(self.loop.time()))

    def arm(self, seconds: float) -> float:
        at = self.loop.time() + seconds
        self.deadline.arm(at)
        return at


async def test_a_deadline_fires_once_when_it_has_passed() -> None:
    e = Expiries()
    at = e.arm(0.05)
    await asyncio.sleep(0.2)
    assert len(e.at) == 1 and e.at[0] >= at - 0.002
    assert e.deadline.at is None


async def test_a_later_deadline_reuses_the_timer_and_fires_at_the_later_time() -> None:
    e = Expiries()
    e.arm(0.05)
    later = e.arm(0.2)
    await asyncio.sleep(0.1)
    assert e.at == []  # the first timer fired early and set itself again
    await asyncio.sleep(0.25)
    assert len(e.at) == 1 and e.at[0] >= later - 0.002


async def test_an_earlier_deadline_fires_at_the_earlier_time() -> None:
    e = Expiries()
    e.arm(5)
    earlier = e.arm(0.05)
    await asyncio.sleep(0.2)
    assert len(e.at) == 1 and earlier - 0.002 <= e.at[0] < earlier + 1


async def test_a_disarmed_or_closed_deadline_never_fires() -> None:
    e = Expiries()
    e.arm(0.05)
    e.deadline.disarm()
    other = Expiries()
    other.arm(0.05)
    other.deadline.close()
    await asyncio.sleep(0.2)
    assert e.at == [] and other.at == []
    e.arm(0.05)  # armed again after a disarm: fires
    await asyncio.sleep(0.2)
    assert len(e.at) == 1
