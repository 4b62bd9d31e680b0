"""Steps written once, run without a task when nothing has to be waited for.

A flow is a generator: it yields an awaitable whenever it needs I/O (a token fetch, a
TokenReview) and is sent the result back. When everything it needs is cached it returns
without yielding, so `begin` finishes it on the spot, and the request goes on from the
protocol callbacks. Only a flow that yielded is driven on by `finish` in a coroutine: the same
code, two drivers (as httpx drives one auth flow from sync and async clients).
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

Flow = Generator[Awaitable[Any], Any, T]


class Suspended(Generic[T]):
    """A flow that yielded `awaitable`: what is left of it needs a coroutine."""

    __slots__ = ("awaitable", "flow")

    def __init__(self, flow: Flow[T], awaitable: Awaitable[Any]) -> None:
        self.flow = flow
        self.awaitable = awaitable

    async def finish(self) -> T:
        """Await each yielded awaitable and hand its result (or exception) back."""
        flow = self.flow
        awaitable = self.awaitable
        while True:
            try:
                result = await awaitable
            except BaseException as exc:  # the flow decides: it may catch and go on
                try:
                    awaitable = flow.throw(exc)
                except StopIteration as done:
                    value: T = done.value
                    return value
                continue
            try:
                awaitable = flow.send(result)
            except StopIteration as done:
                finished: T = done.value
                return finished


def begin(flow: Flow[T]) -> T | Suspended[T]:
    """Run `flow` up to its first await: its result, or what remains to be awaited."""
    try:
        awaitable = next(flow)
    except StopIteration as done:
        value: T = done.value
        return value
    return Suspended(flow, awaitable)


async def drive(flow: Flow[T]) -> T:
    """The whole flow in a coroutine (for callers that await anyway)."""
    started = begin(flow)
    if isinstance(started, Suspended):
        return await started.finish()
    return started
