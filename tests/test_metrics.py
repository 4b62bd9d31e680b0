from __future__ import annotations

import bisect
import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appgateway.metrics import (
    BUCKETS,
    CALLER_RESULTS,
    Histogram,
    Metrics,
    RequestSeries,
    code_class,
)

NAMES = [
    "appgateway_requests_total",
    "appgateway_request_duration_seconds",
    "appgateway_upstream_duration_seconds",
    "appgateway_upstream_errors_total",
    "appgateway_retries_total",
    "appgateway_token_fetches_total",
    "appgateway_csrf_fetches_total",
    "appgateway_cache_lookups_total",
    "appgateway_inflight_requests",
    "appgateway_registry_apis",
    "appgateway_registry_applications",
    "appgateway_registry_errors",
    "appgateway_registry_reloads_total",
    "appgateway_registry_last_sync_timestamp_seconds",
]

Key = tuple[str, tuple[tuple[str, str], ...]]


def samples(text: bytes) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def types(text: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            out[name] = kind
    return out


def key(name: str, **labels: str) -> Key:
    return (name, tuple(sorted(labels.items())))


@pytest.mark.parametrize("name", NAMES)
def test_every_metric_is_exposed_before_use(name: str) -> None:
    assert name in types(Metrics().render())


def test_types() -> None:
    kinds = types(Metrics().render())
    assert kinds["appgateway_request_duration_seconds"] == "histogram"
    assert kinds["appgateway_upstream_duration_seconds"] == "histogram"
    assert kinds["appgateway_inflight_requests"] == "gauge"
    assert kinds["appgateway_requests_total"] == "counter"
    assert kinds["appgateway_registry_last_sync_timestamp_seconds"] == "gauge"


def test_no_created_series() -> None:
    m = Metrics()
    m.series("proxy", "a", "s").observe_request(b"GET", 200, 0.1)
    m.retry("a", "s")
    assert b"_created" not in m.render()


def test_hot_path_methods_record_labels() -> None:
    m = Metrics()
    m.series("proxy", "demo", "open-api").observe_request(b"GET", 200, 0.003)
    m.series("proxy", "demo", "open-api").observe_request(b"GET", 200, 0.3)
    m.series("compass", "", "").observe_request(b"GET", 404, 0.001)
    m.upstream_series("demo", "open-api").observe(0.002)
    m.upstream_error("demo", "open-api", "timeout")
    m.retry("demo", "open-api")
    m.retry("demo", "open-api")
    m.token_fetch("oauth", "ok")
    m.csrf_fetch("error")
    m.cache_lookup("token", hit=True)
    m.cache_lookup("csrf", hit=False)
    m.inflight("proxy").inc()
    m.inflight("proxy").inc()
    m.inflight("proxy").dec()
    m.set_registry(apis=6, applications=1, errors=2)
    m.registry_reload("ok", now=1700000000.0)
    m.registry_reload("error", now=1800000000.0)
    got = samples(m.render())
    req = {"listener": "proxy", "app": "demo", "service": "open-api"}
    ok = {**req, "method": "GET", "class": "2xx"}
    assert got[key("appgateway_requests_total", code="200", **ok)] == 2
    not_found = {"listener": "compass", "app": "", "service": "", "method": "GET", "class": "4xx"}
    assert got[key("appgateway_requests_total", code="404", **not_found)] == 1
    assert got[key("appgateway_request_duration_seconds_count", **req)] == 2
    assert got[key("appgateway_request_duration_seconds_sum", **req)] == pytest.approx(0.303)
    assert got[key("appgateway_request_duration_seconds_bucket", le="0.005", **req)] == 1
    assert got[key("appgateway_request_duration_seconds_bucket", le="+Inf", **req)] == 2
    assert got[key("appgateway_upstream_duration_seconds_count", app="demo", service="open-api")]
    errors = key("appgateway_upstream_errors_total", app="demo", service="open-api", kind="timeout")
    assert got[errors] == 1
    assert got[key("appgateway_retries_total", app="demo", service="open-api")] == 2
    assert got[key("appgateway_token_fetches_total", flavour="oauth", result="ok")] == 1
    assert got[key("appgateway_csrf_fetches_total", result="error")] == 1
    assert got[key("appgateway_cache_lookups_total", cache="token", result="hit")] == 1
    assert got[key("appgateway_cache_lookups_total", cache="csrf", result="miss")] == 1
    assert got[key("appgateway_inflight_requests", listener="proxy")] == 1
    assert got[key("appgateway_registry_apis")] == 6
    assert got[key("appgateway_registry_applications")] == 1
    assert got[key("appgateway_registry_errors")] == 2
    assert got[key("appgateway_registry_reloads_total", result="ok")] == 1
    assert got[key("appgateway_registry_reloads_total", result="error")] == 1
    assert got[key("appgateway_registry_last_sync_timestamp_seconds")] == 1700000000.0


def test_instances_do_not_share_state() -> None:
    a, b = Metrics(), Metrics()
    a.retry("x", "y")
    assert key("appgateway_retries_total", app="x", service="y") not in samples(b.render())


# -- merging across worker restarts --------------------------------------------------------------

Worker = tuple[int, int, tuple[int, tuple[float, ...], int, int] | None | bytes]
"""(slot, process id, answer): (retries, upstream latencies, in flight, APIs), None for no
answer, or raw bytes."""


def _answer(state: tuple[int, tuple[float, ...], int, int] | None | bytes) -> bytes | None:
    if state is None or isinstance(state, bytes):
        return state
    retries, latencies, inflight, apis = state
    m = Metrics()
    for _ in range(retries):
        m.retry("a", "s")
    for latency in latencies:
        m.upstream_series("a", "s").observe(latency)
    gauge = m.inflight("proxy")
    for _ in range(inflight):
        gauge.inc()
    m.set_registry(apis=apis, applications=1, errors=0)
    return m.render()


RETRIES = key("appgateway_retries_total", app="a", service="s")
UP = {"app": "a", "service": "s"}
COUNT = key("appgateway_upstream_duration_seconds_count", **UP)
SUM = key("appgateway_upstream_duration_seconds_sum", **UP)
FAST = key("appgateway_upstream_duration_seconds_bucket", le="0.005", **UP)
INF = key("appgateway_upstream_duration_seconds_bucket", le="+Inf", **UP)
INFLIGHT = key("appgateway_inflight_requests", listener="proxy")
APIS = key("appgateway_registry_apis")


def test_request_labels_are_bounded() -> None:
    m = Metrics()
    for method in (b"GET", b"PROPFIND", b"MKCOL", b"DELETE"):
        m.series("proxy", "a", "s").observe_request(method, 499, 0.1)
    m.series("proxy", "a", "s").observe_request(b"GET", 0, 0.1)
    got = samples(m.render())

    def count(method: str, code: str, code_class: str) -> float:
        labels = {"listener": "proxy", "app": "a", "service": "s", "class": code_class}
        return got[key("appgateway_requests_total", method=method, code=code, **labels)]

    assert count("other", "499", "4xx") == 2
    assert count("GET", "499", "4xx") == count("DELETE", "499", "4xx") == 1
    assert count("GET", "0", "other") == 1


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (100, "1xx"),
        (204, "2xx"),
        (399, "3xx"),
        (499, "4xx"),
        (599, "5xx"),
        (0, "other"),
        (600, "other"),
    ],
)
def test_code_class(code: int, expected: str) -> None:
    assert code_class(code) == expected


@pytest.mark.parametrize(
    ("value", "slot"),
    [
        (0.0, 0),
        (0.005, 0),  # a bound belongs to its own bucket (le)
        (0.0050001, 1),
        (0.3, 6),
        (60.0, len(BUCKETS) - 1),
        (60.5, len(BUCKETS)),  # +Inf
        (math.inf, len(BUCKETS)),
        (math.nan, len(BUCKETS)),  # as Go's client does (bisect_left would say 0)
        (-1.0, 0),
    ],
)
def test_histogram_bucket_is_the_first_bound_not_below(value: float, slot: int) -> None:
    hist = Histogram()
    hist.observe(value)
    assert hist.counts.index(1) == slot
    if not math.isnan(value):
        assert slot == bisect.bisect_left(BUCKETS, value)
    assert sum(hist.counts) == 1


@pytest.mark.parametrize("slot", range(len(BUCKETS)))
def test_histogram_fields_follow_buckets(slot: int) -> None:
    """Histogram.observe spells the bounds out: each bound, and the next float above it."""
    bound = BUCKETS[slot]
    hist = Histogram()
    hist.observe(bound)
    hist.observe(math.nextafter(bound, math.inf))
    expected = [0] * (len(BUCKETS) + 1)
    expected[slot] += 1
    expected[slot + 1] += 1
    assert hist.counts == expected
    assert hist.total == bound + math.nextafter(bound, math.inf)


REQUESTS = [
    [],
    [(b"GET", 200)] * 3,
    [(b"GET", 200), (b"GET", 404), (b"GET", 200), (b"POST", 200), (b"POST", 201)],
    [(b"GET", 0), (b"GET", 0), (b"HEAD", 0), (b"GET", 200), (b"GET", 200), (b"GET", 0)],
]


@pytest.mark.parametrize("requests", REQUESTS)
@pytest.mark.parametrize("read_after", [None, 0, 1, 2])
def test_request_series_counts_every_request(
    requests: list[tuple[bytes, int]], read_after: int | None
) -> None:
    """The latest pair's count lives in fields until another pair comes; reading the counts
    in between (a scrape) must neither lose nor double any request."""
    series = RequestSeries()
    expected: dict[bytes, dict[int, int]] = {}
    for index, (method, code) in enumerate(requests):
        series.observe_request(method, code, 0.001)
        codes = expected.setdefault(method, {})
        codes[code] = codes.get(code, 0) + 1
        if index == read_after:
            series.request_counts()
    assert series.request_counts() == expected
    assert series.request_counts() == expected  # reading twice changes nothing
    assert sum(series.counts) == len(requests)


def test_caller_decisions_exist_once_asked_for_and_count() -> None:
    m = Metrics()
    assert "appgateway_caller_decisions_total" not in types(m.render())  # --caller-auth off
    counts = {result: m.caller_decisions(result) for result in CALLER_RESULTS}
    got = samples(m.render())
    for result in CALLER_RESULTS:
        assert got[key("appgateway_caller_decisions_total", result=result)] == 0
    counts["allowed"].inc()
    counts["allowed"].inc()
    m.caller_decisions("denied").inc()
    m.cache_counter("caller_token")(True)
    count = m.cache_counter("caller_access")
    count(False)
    m.cache_lookup("caller_access", hit=False)  # the same series either way
    got = samples(m.render())
    assert got[key("appgateway_caller_decisions_total", result="allowed")] == 2
    assert got[key("appgateway_caller_decisions_total", result="denied")] == 1
    assert got[key("appgateway_caller_decisions_total", result="unavailable")] == 0
    assert got[key("appgateway_cache_lookups_total", cache="caller_token", result="hit")] == 1
    assert got[key("appgateway_cache_lookups_total", cache="caller_access", result="miss")] == 2
    assert got[key("appgateway_cache_lookups_total", cache="caller_access", result="hit")] == 0
    assert types(m.render())["appgateway_caller_decisions_total"] == "counter"
