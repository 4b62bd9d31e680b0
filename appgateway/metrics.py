"""Prometheus metrics of behaviour.md §13, owned per process, and the multi-worker merge.

Each `Metrics` has its own `CollectorRegistry` so tests and workers never share counters
through prometheus_client's global default registry. `labels()` hashes and locks on every
call, so the hot-path methods cache the labelled children by their label tuple; the label
values are bounded by the registry's APIs, so the caches are too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

INFLIGHT = "appgateway_inflight_requests"
OPEN_CONNECTIONS = "appgateway_open_connections"
_SUMMED_GAUGES = frozenset((INFLIGHT, OPEN_CONNECTIONS))

# Request methods keep their name as a label; any other method counts as "other", so the
# label stays bounded whatever callers send.
_METHOD_LABELS = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}


def code_class(code: int) -> str:
    """`2xx` for 200..299 and so on; `other` outside 100..599 (no status was sent)."""
    return f"{code // 100}xx" if 100 <= code <= 599 else "other"


_SUMMED_TYPES = frozenset(("counter", "histogram"))


class _Families(Collector):
    """Adapts a function returning metric families to what `generate_latest` renders."""

    def __init__(self, produce: Callable[[], Iterable[Metric]]) -> None:
        self._produce = produce

    def collect(self) -> Iterable[Metric]:
        return self._produce()


def _render(produce: Callable[[], Iterable[Metric]]) -> bytes:
    out = CollectorRegistry(auto_describe=False)
    out.register(_Families(produce))
    return generate_latest(out)


def _without_created(families: Iterable[Metric]) -> Iterable[Metric]:
    """Drop the `_created` series: they are noise for scrapers and cannot be summed."""
    for family in families:
        suffix = family.name + "_created"
        family.samples = [s for s in family.samples if s.name != suffix]
        yield family


class Histogram:
    """Histogram data: per-bucket (not cumulative) counts, the last being +Inf.

    One field per bucket rather than a list: compiled, an observation then touches this
    object alone, with no boxed count to replace. With 10,000 APIs, each request meets
    another API's histograms, and every object it touches is a likely cache miss.
    """

    def __init__(self) -> None:
        self.b0 = self.b1 = self.b2 = self.b3 = self.b4 = self.b5 = self.b6 = 0
        self.b7 = self.b8 = self.b9 = self.b10 = self.b11 = self.b12 = self.inf = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        # The first bound not below the value (BUCKETS, in order; a table test holds the two
        # together). NaN ends in +Inf, as in Go's client.
        if value <= 0.005:
            self.b0 += 1
        elif value <= 0.01:
            self.b1 += 1
        elif value <= 0.025:
            self.b2 += 1
        elif value <= 0.05:
            self.b3 += 1
        elif value <= 0.1:
            self.b4 += 1
        elif value <= 0.25:
            self.b5 += 1
        elif value <= 0.5:
            self.b6 += 1
        elif value <= 1.0:
            self.b7 += 1
        elif value <= 2.5:
            self.b8 += 1
        elif value <= 5.0:
            self.b9 += 1
        elif value <= 10.0:
            self.b10 += 1
        elif value <= 30.0:
            self.b11 += 1
        elif value <= 60.0:
            self.b12 += 1
        else:
            self.inf += 1
        self.total += value

    @property
    def counts(self) -> list[int]:
        return [
            self.b0,
            self.b1,
            self.b2,
            self.b3,
            self.b4,
            self.b5,
            self.b6,
            self.b7,
            self.b8,
            self.b9,
            self.b10,
            self.b11,
            self.b12,
            self.inf,
        ]


K = TypeVar("K")


def _increment(counts: dict[K, list[float]], key: K) -> None:
    """A plain per-request counter: one boxed float per label set, read when scraped."""
    count = counts.get(key)
    if count is None:
        count = counts[key] = [0.0]
    count[0] += 1


class RequestSeries(Histogram):
    """The request counts and duration histogram of one (listener, app, service).

    The pipeline keeps a reference per API, so a request costs no label tuple and no lookup
    of its labels in a large dict. The count of the latest (method, code) is a field, moved
    into the dicts when another pair comes: an API's requests are mostly alike, and then a
    request touches this one object (see Histogram).
    """

    def __init__(self) -> None:
        super().__init__()
        self.method = b""
        self.code = -1
        self.latest = 0  # requests with (self.method, self.code) not yet in _earlier
        self._earlier: dict[bytes, dict[int, int]] = {}  # method -> code -> count

    def observe_request(self, method: bytes, code: int, duration_s: float) -> None:
        if code == self.code and method == self.method:
            self.latest += 1
        else:
            self._settle()
            self.method = method
            self.code = code
            self.latest = 1
        self.observe(duration_s)

    def _settle(self) -> None:
        if self.latest:
            codes = self._earlier.get(self.method)
            if codes is None:
                codes = self._earlier[self.method] = {}
            codes[self.code] = codes.get(self.code, 0) + self.latest
            self.latest = 0

    def request_counts(self) -> dict[bytes, dict[int, int]]:
        """method -> code -> count, so far."""
        self._settle()
        return self._earlier


class Count:
    """A plain counter a component keeps a reference to, so counting costs one addition."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


CALLER_RESULTS: Final = ("allowed", "denied", "unauthenticated", "unavailable")


class InFlight:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


def _histogram_family(
    name: str, doc: str, labels: tuple[str, ...], data: Iterable[tuple[tuple[str, ...], Histogram]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, hist in data:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*map(floatToGoString, BUCKETS), "+Inf"), hist.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric(list(values), buckets, hist.total)
    return family


class Metrics:
    """All gateway metrics of one process."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=False)
        self.upstream_errors = Counter(
            "appgateway_upstream_errors",
            "Upstream attempts that failed without a response.",
            ("app", "service", "kind"),
            registry=r,
        )
        self.retries = Counter(
            "appgateway_retries",
            "Requests resent after a 401 or 403.",
            ("app", "service"),
            registry=r,
        )
        self.token_fetches = Counter(
            "appgateway_token_fetches",
            "OAuth token requests.",
            ("flavour", "result"),
            registry=r,
        )
        self.csrf_fetches = Counter(
            "appgateway_csrf_fetches", "CSRF token requests.", ("result",), registry=r
        )
        self.registry_apis = Gauge(
            "appgateway_registry_apis", "Routable APIs in the current snapshot.", registry=r
        )
        self.registry_applications = Gauge(
            "appgateway_registry_applications", "Applications in the current snapshot.", registry=r
        )
        self.registry_errors = Gauge(
            "appgateway_registry_errors",
            "Configuration errors in the current snapshot.",
            registry=r,
        )
        self.registry_reloads = Counter(
            "appgateway_registry_reloads", "Registry rebuilds.", ("result",), registry=r
        )
        self.registry_last_sync = Gauge(
            "appgateway_registry_last_sync_timestamp_seconds",
            "Unix time of the last successful registry rebuild.",
            registry=r,
        )
        self.connections_refused = Counter(
            "appgateway_connections_refused",
            "Caller connections refused because --max-connections were open.",
            registry=r,
        )
        self.open_connections = Gauge(
            OPEN_CONNECTIONS, "Open caller connections on the proxy listeners.", registry=r
        )
        self._counter_children: dict[tuple[Counter, tuple[str, ...]], Counter] = {}
        # Per-request series are plain accumulators (no locks, no label hashing per call),
        # turned into metric families only when scraped.
        self._series: dict[tuple[str, str, str], RequestSeries] = {}
        self._upstream_hist: dict[tuple[str, str], Histogram] = {}
        self._inflight: dict[str, InFlight] = {}
        self._lookups: dict[tuple[str, str], list[float]] = {}
        self._caller_decisions: dict[str, Count] = {}
        r.register(_Families(self._hot_families))

    def _count(self, counter: Counter, labels: tuple[str, ...]) -> None:
        key = (counter, labels)
        child = self._counter_children.get(key)
        if child is None:
            child = self._counter_children[key] = counter.labels(*labels)
        child.inc()

    def series(self, listener: str, app: str, service: str) -> RequestSeries:
        key = (listener, app, service)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = RequestSeries()
        return series

    def upstream_series(self, app: str, service: str) -> Histogram:
        key = (app, service)
        hist = self._upstream_hist.get(key)
        if hist is None:
            hist = self._upstream_hist[key] = Histogram()
        return hist

    def upstream_error(self, app: str, service: str, kind: str) -> None:
        """`kind` is one of `timeout`, `connect`, `tls`, `protocol`."""
        self._count(self.upstream_errors, (app, service, kind))

    def retry(self, app: str, service: str) -> None:
        self._count(self.retries, (app, service))

    def token_fetch(self, flavour: str, result: str) -> None:
        """`flavour` is `oauth` or `oauth-mtls`; `result` e.g. `ok` or `error`."""
        self._count(self.token_fetches, (flavour, result))

    def csrf_fetch(self, result: str) -> None:
        self._count(self.csrf_fetches, (result,))

    def cache_lookup(self, cache: str, hit: bool) -> None:
        """`cache` is `token`, `csrf`, or `caller_token`/`caller_access` (--caller-auth)."""
        _increment(self._lookups, (cache, "hit" if hit else "miss"))

    def cache_counter(self, cache: str) -> Callable[[bool], None]:
        """`cache_lookup` for one cache, with its two counts looked up once: for caches
        consulted on every request (`caller_token`, `caller_access`)."""
        hits = self._lookups.setdefault((cache, "hit"), [0.0])
        misses = self._lookups.setdefault((cache, "miss"), [0.0])

        def count(hit: bool) -> None:
            if hit:
                hits[0] += 1
            else:
                misses[0] += 1

        return count

    def caller_decisions(self, result: str) -> Count:
        """The counter of one `--caller-auth` result (one of CALLER_RESULTS); asking for it
        makes the series exist at 0, so a dashboard sees "no denials" rather than nothing."""
        count = self._caller_decisions.get(result)
        if count is None:
            count = self._caller_decisions[result] = Count()
        return count

    def inflight(self, listener: str) -> InFlight:
        """The listener's in-flight gauge; call `.inc()`/`.dec()` around each request."""
        gauge = self._inflight.get(listener)
        if gauge is None:
            gauge = self._inflight[listener] = InFlight()
        return gauge

    def _hot_families(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "appgateway_requests",
            "Requests answered on the proxy listeners, by method and status code (and its class).",
            labels=("listener", "app", "service", "method", "code", "class"),
        )
        totals: dict[tuple[str, str, str, str, int], float] = {}
        for (listener, app, service), series in self._series.items():
            for method, codes in series.request_counts().items():
                label = _METHOD_LABELS.get(method, "other")
                for code, n in codes.items():
                    total_key = (listener, app, service, label, code)
                    totals[total_key] = totals.get(total_key, 0.0) + n
        for (listener, app, service, label, code), total in totals.items():
            labels = (listener, app, service, label, str(code), code_class(code))
            requests.add_metric(labels, total)
        yield requests
        yield _histogram_family(
            "appgateway_request_duration_seconds",
            "Time from request head to the end of the response.",
            ("listener", "app", "service"),
            self._series.items(),
        )
        yield _histogram_family(
            "appgateway_upstream_duration_seconds",
            "Time from sending upstream to the response headers.",
            ("app", "service"),
            self._upstream_hist.items(),
        )
        lookups = CounterMetricFamily(
            "appgateway_cache_lookups", "Token and CSRF cache lookups.", labels=("cache", "result")
        )
        for (cache, result), count in self._lookups.items():
            lookups.add_metric((cache, result), count[0])
        yield lookups
        if self._caller_decisions:
            decisions = CounterMetricFamily(
                "appgateway_caller_decisions",
                "Caller authorization results (--caller-auth).",
                labels=("result",),
            )
            for result, decided in self._caller_decisions.items():
                decisions.add_metric((result,), decided.value)
            yield decisions
        inflight = GaugeMetricFamily(INFLIGHT, "Requests being handled.", labels=("listener",))
        for listener, gauge in self._inflight.items():
            inflight.add_metric((listener,), gauge.value)
        yield inflight

    def set_registry(self, *, apis: int, applications: int, errors: int) -> None:
        self.registry_apis.set(apis)
        self.registry_applications.set(applications)
        self.registry_errors.set(errors)

    def registry_reload(self, result: str, now: float | None = None) -> None:
        """Count a rebuild; `result` `ok` also stamps the last-sync gauge (`now`: Unix time)."""
        self._count(self.registry_reloads, (result,))
        if result == "ok":
            self.registry_last_sync.set(time.time() if now is None else now)

    def render(self) -> bytes:
        """Text exposition format 0.0.4 (serve with `CONTENT_TYPE`)."""
        return _render(lambda: _without_created(self.registry.collect()))
