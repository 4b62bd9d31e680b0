from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from appgateway.flow import Flow, Suspended, begin, drive


def cached(value: str) -> Flow[str]:
    """A flow whose data is at hand: it never yields."""
    return value
    yield  # pragma: no cover - makes this a generator


def fetching(fetch: Awaitable[str], log: list[str]) -> Flow[str]:
    log.append("before")
    value: str = yield fetch
    log.append(f"got {value}")
    more: str = yield asyncio.sleep(0, result="!")
    return value + more


def recovering(fetch: Awaitable[str]) -> Flow[str]:
    try:
        yield fetch
    except LookupError as exc:
        return f"recovered from {exc}"
    return "no error"  # pragma: no cover - the fetch fails


async def failing() -> str:
    raise LookupError("gone")


def test_a_flow_that_needs_nothing_finishes_in_begin() -> None:
    assert begin(cached("token")) == "token"


async def test_a_flow_that_yields_is_finished_by_a_coroutine() -> None:
    log: list[str] = []
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    started = begin(fetching(future, log))
    assert isinstance(started, Suspended)
    assert log == ["before"]
    asyncio.get_running_loop().call_soon(future.set_result, "t1")
    assert await started.finish() == "t1!"
    assert log == ["before", "got t1"]


async def test_an_exception_is_thrown_into_the_flow() -> None:
    assert await drive(recovering(failing())) == "recovered from gone"


async def test_an_exception_the_flow_does_not_catch_propagates() -> None:
    with pytest.raises(LookupError):
        await drive(fetching(failing(), []))


async def test_drive_runs_either_kind() -> None:
    assert await drive(cached("a")) == "a"
    assert await drive(fetching(asyncio.sleep(0, result="b"), [])) == "b!"


async def test_cancelling_the_driver_cancels_the_awaited_step() -> None:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(drive(fetching(future, [])))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert future.cancelled()
