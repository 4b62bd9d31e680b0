"""The supervisor's merged /metrics: sums of the workers, and counters that never fall."""

from __future__ import annotations

import pytest

from appgateway.metrics import Metrics
from appgateway.metrics_merge import MetricsMerger, merge_texts
from tests.test_metrics import (
    APIS,
    COUNT,
    FAST,
    INF,
    INFLIGHT,
    RETRIES,
    SUM,
    Key,
    Worker,
    _answer,
    key,
    samples,
    types,
)


def test_merge_sums_two_workers() -> None:
    one, two = Metrics(), Metrics()
    one.series("proxy", "demo", "open-api").observe_request(b"GET", 200, 0.003)
    one.series("proxy", "demo", "open-api").observe_request(b"GET", 200, 0.3)
    two.series("proxy", "demo", "open-api").observe_request(b"GET", 200, 0.02)
    two.series("compass", "demo", "open-api").observe_request(b"GET", 502, 0.02)
    one.inflight("proxy").inc()
    two.inflight("proxy").inc()
    two.inflight("compass").inc()
    one.token_fetch("oauth", "ok")
    two.token_fetch("oauth", "ok")
    one.set_registry(apis=5, applications=1, errors=0)
    two.set_registry(apis=7, applications=2, errors=3)
    one.registry_reload("ok", now=1700000000.0)
    two.registry_reload("ok", now=1800000000.0)
    merged_text = merge_texts([one.render(), two.render()])
    merged = samples(merged_text)
    req = {"listener": "proxy", "app": "demo", "service": "open-api"}
    compass = {"listener": "compass", "app": "demo", "service": "open-api"}
    ok = {**req, "method": "GET", "class": "2xx"}
    bad = {**compass, "method": "GET", "class": "5xx"}
    assert merged[key("appgateway_requests_total", code="200", **ok)] == 3
    assert merged[key("appgateway_requests_total", code="502", **bad)] == 1
    assert merged[key("appgateway_request_duration_seconds_count", **req)] == 3
    assert merged[key("appgateway_request_duration_seconds_sum", **req)] == pytest.approx(0.323)
    assert merged[key("appgateway_request_duration_seconds_bucket", le="0.005", **req)] == 1
    assert merged[key("appgateway_request_duration_seconds_bucket", le="0.025", **req)] == 2
    assert merged[key("appgateway_request_duration_seconds_bucket", le="+Inf", **req)] == 3
    assert merged[key("appgateway_request_duration_seconds_count", **compass)] == 1
    assert merged[key("appgateway_inflight_requests", listener="proxy")] == 2
    assert merged[key("appgateway_inflight_requests", listener="compass")] == 1
    assert merged[key("appgateway_token_fetches_total", flavour="oauth", result="ok")] == 2
    assert merged[key("appgateway_registry_reloads_total", result="ok")] == 2
    assert merged[key("appgateway_registry_apis")] == 5
    assert merged[key("appgateway_registry_applications")] == 1
    assert merged[key("appgateway_registry_errors")] == 0
    assert merged[key("appgateway_registry_last_sync_timestamp_seconds")] == 1700000000.0
    assert types(merged_text) == types(one.render())


def test_merge_single_worker_is_identity() -> None:
    m = Metrics()
    m.series("proxy", "a", "s").observe_request(b"GET", 201, 0.5)
    m.set_registry(apis=1, applications=1, errors=0)
    assert samples(merge_texts([m.render()])) == samples(m.render())


def test_merge_skips_unparsable_worker_output() -> None:
    m = Metrics()
    m.retry("a", "s")
    merged = samples(merge_texts([b"\xff\xfe not text", m.render(), b"metric{ 1 2 3"]))
    assert merged[key("appgateway_retries_total", app="a", service="s")] == 1


def test_merge_nothing() -> None:
    assert merge_texts([]) == b""


@pytest.mark.parametrize(
    ("scrapes", "expected"),
    [
        pytest.param(  # slot 0 restarts between the scrapes: its 3 stay counted
            [
                [(0, 100, (3, (), 0, 5)), (1, 200, (2, (), 0, 5))],
                [(0, 101, (1, (), 0, 5)), (1, 200, (2, (), 0, 5))],
            ],
            [{RETRIES: 5}, {RETRIES: 6}],
            id="restarted-worker-carried",
        ),
        pytest.param(  # slot 0 misses a scrape: its last values stand in
            [
                [(0, 100, (3, (), 1, 5)), (1, 200, (2, (), 1, 5))],
                [(0, 100, None), (1, 200, (4, (), 1, 5))],
                [(0, 100, (5, (), 0, 5)), (1, 200, (4, (), 0, 5))],
            ],
            [{RETRIES: 5, INFLIGHT: 2}, {RETRIES: 7, INFLIGHT: 1}, {RETRIES: 9, INFLIGHT: 0}],
            id="silent-worker-kept-gauge-not",
        ),
        pytest.param(  # dead (silent), then its successor answers from 0
            [
                [(0, 100, (3, (), 0, 5))],
                [(0, 101, None)],
                [(0, 101, (0, (), 0, 5))],
                [(0, 101, (2, (), 0, 5))],
            ],
            [{RETRIES: 3}, {RETRIES: 3}, {RETRIES: 3}, {RETRIES: 5}],
            id="restart-seen-late",
        ),
        pytest.param(  # the same process id with a lower counter: a restart all the same
            [[(0, 100, (3, (), 0, 5))], [(0, 100, (1, (), 0, 5))], [(0, 100, (2, (), 0, 5))]],
            [{RETRIES: 3}, {RETRIES: 4}, {RETRIES: 5}],
            id="decrease-means-restart",
        ),
        pytest.param(
            [[(0, 100, (3, (), 0, 5))], [(0, 100, b"metric{ 1 2 3")], [(0, 100, b"\xff")]],
            [{RETRIES: 3}, {RETRIES: 3}, {RETRIES: 3}],
            id="unparsable-is-silent",
        ),
        pytest.param(
            [[(0, 100, (3, (), 0, 5))], [(0, 101, (2, (), 0, 5))], [(0, 102, (4, (), 0, 5))]],
            [{RETRIES: 3}, {RETRIES: 5}, {RETRIES: 9}],
            id="restarts-accumulate",
        ),
        pytest.param(  # buckets, sum and count are carried together
            [
                [(0, 100, (0, (0.001, 0.2), 0, 5)), (1, 200, (0, (0.003,), 0, 5))],
                [(0, 101, (0, (0.5,), 0, 5)), (1, 200, (0, (0.003,), 0, 5))],
            ],
            [
                {COUNT: 3, FAST: 2, INF: 3, SUM: 0.204},
                {COUNT: 4, FAST: 2, INF: 4, SUM: 0.704},
            ],
            id="histogram-carried",
        ),
        pytest.param(  # registry gauges: the first worker that answers, never carried
            [
                [(0, 100, (0, (), 0, 5)), (1, 200, (0, (), 0, 6))],
                [(0, 100, None), (1, 200, (0, (), 0, 6))],
                [(0, 100, None), (1, 200, None)],
            ],
            [{APIS: 5}, {APIS: 6}, {}],
            id="gauges-from-answers",
        ),
    ],
)
def test_merger_never_lets_a_counter_fall(
    scrapes: list[list[Worker]], expected: list[dict[Key, float]]
) -> None:
    merger = MetricsMerger()
    previous: dict[Key, float] = {}
    for scrape, want in zip(scrapes, expected, strict=True):
        got = samples(merger.merge((slot, pid, _answer(state)) for slot, pid, state in scrape))
        assert {k: got.get(k) for k in want} == pytest.approx(want)
        if not want:
            assert APIS not in got and INFLIGHT not in got
        for k in (RETRIES, COUNT, SUM, FAST, INF):
            assert got.get(k, 0.0) >= previous.get(k, 0.0), k
        previous = got


def test_merger_keeps_a_series_of_a_replaced_worker() -> None:
    """A label set only the old process had stays in the exposition, at its last value."""
    old, new = Metrics(), Metrics()
    old.csrf_fetch("error")
    new.csrf_fetch("ok")
    merger = MetricsMerger()
    merger.merge([(0, 100, old.render())])
    got = samples(merger.merge([(0, 101, new.render())]))
    assert got[key("appgateway_csrf_fetches_total", result="error")] == 1
    assert got[key("appgateway_csrf_fetches_total", result="ok")] == 1
    assert types(merger.merge([])) == types(old.render())


def test_caller_decisions_merge_across_workers() -> None:
    one, two = Metrics(), Metrics()
    one.caller_decisions("allowed").inc()
    two.caller_decisions("allowed").inc()
    two.caller_decisions("unauthenticated").inc()
    got = samples(merge_texts([one.render(), two.render()]))
    assert got[key("appgateway_caller_decisions_total", result="allowed")] == 2
    assert got[key("appgateway_caller_decisions_total", result="unauthenticated")] == 1
