from __future__ import annotations

import asyncio
import gc

import pytest

from appgateway.auth.cache import SingleFlightCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fetcher:
    """Counts fetches; each one waits for `gate` so that tests control the overlap."""

    def __init__(self, ttl: float | None = 60.0, fail: bool = False) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.ttl = ttl
        self.fail = fail
        self.clock = FakeClock()
        self.finished = 0

    async def __call__(self) -> tuple[str, float | None]:
        self.calls += 1
        n = self.calls
        await self.gate.wait()
        self.finished += 1
        if self.fail:
            raise RuntimeError(f"fetch {n} failed")
        until = None if self.ttl is None else self.clock() + self.ttl
        return f"v{n}", until


def make(fetcher: Fetcher) -> tuple[SingleFlightCache[str, str], list[bool]]:
    lookups: list[bool] = []
    return SingleFlightCache(fetcher.clock, lookups.append), lookups


async def test_hundred_concurrent_misses_make_one_fetch() -> None:
    fetch = Fetcher()
    cache, lookups = make(fetch)
    fetch.gate.clear()
    waiters = [asyncio.create_task(cache.get("k", fetch)) for _ in range(100)]
    await asyncio.sleep(0)
    fetch.gate.set()
    results = await asyncio.gather(*waiters)
    assert fetch.calls == 1
    assert results == ["v1"] * 100
    assert lookups == [False] * 100
    assert await cache.get("k", fetch) == "v1"
    assert lookups[-1] is True
    assert fetch.calls == 1


async def test_lookup_tells_whether_the_caller_waited_for_a_fetch() -> None:
    fetch = Fetcher()
    cache, _ = make(fetch)
    assert await cache.lookup("k", fetch) == ("v1", True)
    assert await cache.lookup("k", fetch) == ("v1", False)


async def test_failure_reaches_every_waiter_and_is_not_cached() -> None:
    fetch = Fetcher(fail=True)
    cache, _ = make(fetch)
    fetch.gate.clear()
    waiters = [asyncio.create_task(cache.get("k", fetch)) for _ in range(10)]
    await asyncio.sleep(0)
    fetch.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [str(r) for r in results] == ["fetch 1 failed"] * 10
    assert fetch.calls == 1
    assert len(cache) == 0
    fetch.fail = False
    assert await cache.get("k", fetch) == "v2"
    assert fetch.calls == 2


@pytest.mark.parametrize(
    ("ttl", "advance", "fetches"),
    [
        (60.0, 59.9, 1),  # still valid
        (60.0, 60.0, 2),  # reuse-until reached: refetch
        (60.0, 3600.0, 2),
        (None, 1e9, 1),  # no expiry (CSRF entries)
    ],
)
async def test_expiry(ttl: float | None, advance: float, fetches: int) -> None:
    fetch = Fetcher(ttl=ttl)
    cache, _ = make(fetch)
    await cache.get("k", fetch)
    fetch.clock.now += advance
    assert await cache.get("k", fetch) == f"v{fetches}"
    assert fetch.calls == fetches


async def test_value_already_expired_serves_only_its_waiters() -> None:
    fetch = Fetcher(ttl=0.0)
    cache, _ = make(fetch)
    fetch.gate.clear()
    waiters = [asyncio.create_task(cache.get("k", fetch)) for _ in range(3)]
    await asyncio.sleep(0)
    fetch.gate.set()
    assert await asyncio.gather(*waiters) == ["v1"] * 3
    assert len(cache) == 0
    assert await cache.get("k", fetch) == "v2"


async def test_keys_are_independent() -> None:
    fetch = Fetcher()
    cache, _ = make(fetch)
    assert await cache.get("a", fetch) == "v1"
    assert await cache.get("b", fetch) == "v2"
    assert await cache.get("a", fetch) == "v1"


async def test_compare_and_invalidate() -> None:
    fetch = Fetcher()
    cache, _ = make(fetch)
    old = await cache.get("k", fetch)
    cache.invalidate("k", old)
    new = await cache.get("k", fetch)
    assert new == "v2"
    # Many late 401s for the old value must not evict the refreshed one.
    for _ in range(50):
        cache.invalidate("k", old)
    assert await cache.get("k", fetch) == "v2"
    assert fetch.calls == 2
    cache.invalidate("missing", "v2")  # no entry: nothing happens


async def test_retain_drops_other_keys() -> None:
    fetch = Fetcher()
    cache, _ = make(fetch)
    for key in ("a", "b", "c"):
        await cache.get(key, fetch)
    cache.retain(["a", "c"])
    assert len(cache) == 2
    assert await cache.get("a", fetch) == "v1"
    assert await cache.get("b", fetch) == "v4"
    assert fetch.calls == 4


async def test_retain_during_a_fetch_does_not_store_the_dropped_key() -> None:
    fetch = Fetcher()
    cache, _ = make(fetch)
    fetch.gate.clear()
    waiter = asyncio.create_task(cache.get("gone", fetch))
    await asyncio.sleep(0)
    cache.retain([])
    fetch.gate.set()
    assert await waiter == "v1"  # the waiter still gets its value
    assert len(cache) == 0


async def test_cancelled_requester_does_not_cancel_the_fetch() -> None:
    fetch = Fetcher()
    cache, lookups = make(fetch)
    fetch.gate.clear()
    requester = asyncio.create_task(cache.get("k", fetch))
    await asyncio.sleep(0)
    requester.cancel()
    with pytest.raises(asyncio.CancelledError):
        await requester
    fetch.gate.set()
    assert await cache.get("k", fetch) == "v1"  # joins the fetch that kept running
    assert fetch.calls == 1
    assert fetch.finished == 1
    assert await cache.get("k", fetch) == "v1"
    assert lookups == [False, False, True]


async def test_failed_fetch_without_waiters_is_silent() -> None:
    reported: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx))
    fetch = Fetcher(fail=True)
    cache, _ = make(fetch)
    fetch.gate.clear()
    requester = asyncio.create_task(cache.get("k", fetch))
    await asyncio.sleep(0)
    requester.cancel()
    fetch.gate.set()
    await asyncio.sleep(0.01)
    gc.collect()
    assert fetch.finished == 1
    assert len(cache) == 0
    assert reported == []  # no "Task exception was never retrieved"


async def test_a_bounded_cache_drops_the_least_recently_used() -> None:
    fetch = Fetcher()
    cache: SingleFlightCache[str, str] = SingleFlightCache(fetch.clock, max_entries=3)
    for key in ("a", "b", "c"):
        await cache.get(key, fetch)
    assert cache.peek("a") == "v1"  # a is now the most recently used: b goes first
    await cache.get("d", fetch)
    assert len(cache) == 3
    assert cache.peek("b") is None
    assert await cache.lookup("c", fetch) == ("v3", False)  # c used: a goes next
    await cache.get("e", fetch)
    assert cache.peek("a") is None
    assert [cache.peek(k) for k in ("c", "d", "e")] == ["v3", "v4", "v5"]
    assert fetch.calls == 5


async def test_a_bounded_cache_of_one_keeps_the_newest() -> None:
    fetch = Fetcher()
    cache: SingleFlightCache[str, str] = SingleFlightCache(fetch.clock, max_entries=1)
    await cache.get("a", fetch)
    await cache.get("b", fetch)
    assert len(cache) == 1 and cache.peek("b") == "v2" and cache.peek("a") is None


async def test_an_unbounded_cache_keeps_every_key() -> None:
    fetch = Fetcher()
    cache, _ = make(fetch)
    for n in range(50):
        await cache.get(str(n), fetch)
    assert len(cache) == 50
