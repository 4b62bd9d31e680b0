from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from appgateway.flow import Pending, settle


async def fetched(value: str) -> str:
    await asyncio.sleep(0)
    return value


async def failing() -> str:
    raise LookupError("gone")


def pending(work: Awaitable[str]) -> str | Pending[str]:
    """A step's result as the callers of a step see it: the value, or what to await."""
    return Pending(work)


async def test_a_result_at_hand_is_settled_as_it_is() -> None:
    step: str | Pending[str] = "cached"
    assert await settle(step) == "cached"


async def test_a_pending_step_is_awaited() -> None:
    assert await settle(pending(fetched("t1"))) == "t1"


async def test_a_pending_steps_failure_propagates() -> None:
    with pytest.raises(LookupError):
        await settle(pending(failing()))


async def test_cancelling_the_waiter_cancels_the_pending_work() -> None:
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task: asyncio.Task[str] = asyncio.ensure_future(settle(pending(future)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert future.cancelled()
