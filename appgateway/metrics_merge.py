"""The supervisor's /metrics: the workers' expositions merged into one whose counters never
go down (see MetricsMerger)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from appgateway.metrics import _SUMMED_GAUGES, _SUMMED_TYPES, _render

SampleKey = tuple[str, tuple[tuple[str, str], ...]]
"""(sample name, sorted label pairs): one line of an exposition."""
Samples = dict[str, dict[SampleKey, float]]
"""Sample values by family name."""


class MetricsMerger:
    """Merges the workers' `/metrics` into one exposition whose counters never go down.

    Prometheus reads any decrease of a counter as a reset: `rate()` jumps and alerts fire. A
    sum of what the workers answer right now decreases whenever a worker is replaced (its
    successor starts at 0) or misses a scrape (it is left out). So the merger keeps every
    worker slot's last answer: a slot that does not answer counts with its last values, and a
    slot that answers from another process (or with a counter lower than before) adds its
    previous totals to a carried offset that every later merge includes. Counters and
    histograms (buckets, sums, counts) are treated so. Gauges are never carried: the in-flight
    gauge is summed over the workers that answered, and every other gauge (the registry
    gauges) comes from the first of them, as each worker loads the same registry.
    """

    def __init__(self) -> None:
        self._heads: dict[str, Metric] = {}  # family name -> a parsed family, first-seen order
        self._last: dict[int, tuple[int, Samples]] = {}  # slot -> (process id, its totals)
        self._carried: Samples = {}

    def merge(self, answers: Iterable[tuple[int, int, bytes | None]]) -> bytes:
        """One exposition from `(slot, process id, text or None)` per worker.

        None, or a text that does not parse (a dying worker), means the slot did not answer.
        """
        gauges: Samples = {}
        for slot, process, text in answers:
            families = _parse(text)
            if families is None:
                continue
            totals: Samples = {}
            for family in families:
                name = family.name
                self._heads.setdefault(name, family)
                summed = family.type in _SUMMED_TYPES
                values = totals.setdefault(name, {}) if summed else gauges.setdefault(name, {})
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    if key not in values or summed:
                        values[key] = sample.value
                    elif name in _SUMMED_GAUGES:
                        values[key] += sample.value
            self._replace(slot, process, totals)
        merged: Samples = {}
        for source in (self._carried, *(totals for _, totals in self._last.values())):
            for name, values in source.items():
                into = merged.setdefault(name, {})
                for key, value in values.items():
                    into[key] = into.get(key, 0.0) + value
        merged.update(gauges)
        heads = self._heads

        def produce() -> Iterable[Metric]:
            for name, head in heads.items():
                family = Metric(name, head.documentation, head.type, head.unit)
                for (sample_name, labels), value in merged.get(name, {}).items():
                    family.add_sample(sample_name, dict(labels), value)
                yield family

        return _render(produce)

    def _replace(self, slot: int, process: int, totals: Samples) -> None:
        previous = self._last.get(slot)
        if previous is not None:
            old_process, old = previous
            if old_process != process or _decreased(old, totals):
                for name, values in old.items():  # keep what the previous process counted
                    carried = self._carried.setdefault(name, {})
                    for key, value in values.items():
                        carried[key] = carried.get(key, 0.0) + value
        self._last[slot] = (process, totals)


def _decreased(old: Samples, new: Samples) -> bool:
    """Whether any series is lower (or gone) in `new`: the process restarted unnoticed."""
    for name, values in old.items():
        now = new.get(name, {})
        for key, value in values.items():
            if now.get(key, 0.0) < value:
                return True
    return False


def _parse(text: bytes | None) -> list[Metric] | None:
    if text is None:
        return None
    try:
        return list(text_string_to_metric_families(text.decode("utf-8")))
    except (ValueError, UnicodeDecodeError):
        return None


def merge_texts(texts: list[bytes]) -> bytes:
    """Merge the `/metrics` output of several workers, once (see MetricsMerger)."""
    return MetricsMerger().merge((index, index, text) for index, text in enumerate(texts))
