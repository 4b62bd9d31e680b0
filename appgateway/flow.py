"""A step that finishes at once when its data is at hand, and says what to await when not.

Applying credentials (auth/) and deciding about a caller (caller/) usually find what they
need in a cache. Such a step returns its result directly, so the request goes on from the
protocol callbacks with no task. When it must fetch first, it returns a `Pending` holding
the coroutine that fetches and finishes the step, and the request's prelude (relay.py)
awaits it. One method per step, one place for its logic: the coroutine is the same step's
slow half, not a second implementation.

(A generator driven by two drivers reads well too, but each call then allocates a
generator and ends in a StopIteration: some 5,000 instructions, a sixth of a request.)
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Generic, TypeVar

T = TypeVar("T")


class Pending(Generic[T]):
    """What is left of a step that must wait: await `work` for its result."""

    __slots__ = ("work",)

    def __init__(self, work: Awaitable[T]) -> None:
        self.work = work


async def settle(step: T | Pending[T]) -> T:
    """The step's result, awaiting it if it is pending (for code that awaits anyway)."""
    if isinstance(step, Pending):
        return await step.work
    return step
