"""A keyed cache with single flight, used for OAuth tokens and CSRF tokens.

A burst of requests after start-up, an expiry or a 401 must cost one upstream fetch, not one
per request: token endpoints rate-limit, and a storm of fetches can lock a client out. So a
miss joins the fetch already running for its key, and a 401 removes an entry only if it still
holds the value that was rejected (compare-and-invalidate).

With `max_entries` the cache is also bounded, least recently used first out: for keys that
callers choose (the caller authorization caches are keyed by callers' tokens), where an
unbounded cache would grow with every token anyone sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Fetch = Callable[[], Awaitable[tuple[V, float | None]]]
"""Returns the value and its absolute reuse-until time on the cache clock (None: no expiry)."""


class SingleFlightCache(Generic[K, V]):
    """Values per key with an optional expiry; concurrent misses share one fetch.

    The fetch runs in its own task, so a requester that is cancelled (the caller hung up)
    does not cancel it: the other waiters, and the next request, still get its result.
    Failures are handed to every waiter of that fetch and are never stored.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        on_lookup: Callable[[bool], None] | None = None,
        *,
        max_entries: int | None = None,
    ) -> None:
        self._clock = clock
        self._on_lookup = on_lookup
        self._max_entries = max_entries
        self._entries: dict[K, tuple[V, float | None]] = {}
        self._inflight: dict[K, asyncio.Task[tuple[V, float | None]]] = {}
        self._tasks: set[asyncio.Task[tuple[V, float | None]]] = set()

    async def get(self, key: K, fetch: Fetch[V]) -> V:
        value, _ = await self.lookup(key, fetch)
        return value

    def peek(self, key: K) -> V | None:
        """The fresh cached value (counted as a hit), or None without counting: the caller
        then does a `lookup`, which counts the miss."""
        entry = self.peek_entry(key)
        return None if entry is None else entry[0]

    def peek_entry(self, key: K) -> tuple[V, float | None] | None:
        """`peek`, with the value's reuse-until time: for a caller that keeps the value
        elsewhere too and must not keep it longer."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        until = entry[1]
        if until is not None and self._clock() >= until:
            return None
        if self._max_entries is not None:
            self._touch(key, entry)
        self._report(True)
        return entry

    async def lookup(self, key: K, fetch: Fetch[V]) -> tuple[V, bool]:
        """Like `get`, and also tell whether this call waited for a fetch (a miss)."""
        entry = self._entries.get(key)
        if entry is not None:
            value, until = entry
            if until is None or self._clock() < until:
                if self._max_entries is not None:
                    self._touch(key, entry)
                self._report(True)
                return value, False
            del self._entries[key]
        self._report(False)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._run(key, fetch))
            self._inflight[key] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # shield() also marks a failure as retrieved when every waiter was cancelled.
        value, _ = await asyncio.shield(task)
        return value, True

    async def _run(self, key: K, fetch: Fetch[V]) -> tuple[V, float | None]:
        try:
            value, until = await fetch()
        finally:
            # `retain` may have dropped the key, or a newer fetch replaced this one.
            current = self._inflight.get(key) is asyncio.current_task()
            if current:
                del self._inflight[key]
        # A value already past its reuse-until time serves only the waiters of this fetch.
        if current and (until is None or self._clock() < until):
            self._entries[key] = (value, until)
            if self._max_entries is not None:
                self._bound(self._max_entries)
        return value, until

    def _touch(self, key: K, entry: tuple[V, float | None]) -> None:
        """Most recently used goes last (dicts keep insertion order)."""
        del self._entries[key]
        self._entries[key] = entry

    def _bound(self, limit: int) -> None:
        entries = self._entries
        while len(entries) > limit:
            del entries[next(iter(entries))]

    def invalidate(self, key: K, value: V) -> None:
        """Remove the entry only if it still holds `value` (the one that was rejected)."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] == value:
            del self._entries[key]

    def retain(self, keys: Collection[K]) -> None:
        """Forget every key not in `keys`; a running fetch for such a key is not stored."""
        keep = set(keys)
        for key in [k for k in self._entries if k not in keep]:
            del self._entries[key]
        for key in [k for k in self._inflight if k not in keep]:
            del self._inflight[key]

    def __len__(self) -> int:
        return len(self._entries)

    def _report(self, hit: bool) -> None:
        if self._on_lookup is not None:
            self._on_lookup(hit)
