"""Lock-free metrics for the per-request hot path, read by a Prometheus collector at scrape.

`prometheus_client`'s Counter/Histogram/Gauge take a mutex on every update (a histogram
observation takes two). The server updates a few metrics once or more per request, on the
event loop thread, so these keep plain Python numbers instead and publish them only when
/metrics is scraped, under the same metric names and sample shapes (`<name>_total` for a
counter; `_bucket{le=...}` cumulative, `_count`, `_sum` for a histogram).

Rule: each metric is written by ONE thread (the loop, or for a gauge set from the apply
thread: a plain attribute store). A scrape from another thread reads a consistent-enough
snapshot: a counter read is one int, a histogram copies its counts first.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString


class PlainCounter:
    """A monotonic counter: `inc(n)` with n >= 0 (same contract as prometheus's Counter)."""

    __slots__ = ("name", "doc", "value")

    def __init__(self, name: str, doc: str) -> None:
        self.name, self.doc, self.value = name, doc, 0

    def inc(self, amount: int = 1) -> None:
        assert amount >= 0, f"counter {self.name} can only go up (inc({amount}))"
        self.value += amount

    def family(self) -> Metric:
        return CounterMetricFamily(self.name, self.doc, value=self.value)


class PlainGauge:
    __slots__ = ("name", "doc", "value")

    def __init__(self, name: str, doc: str) -> None:
        self.name, self.doc, self.value = name, doc, 0.0

    def set(self, value: float) -> None:
        self.value = value

    def family(self) -> Metric:
        return GaugeMetricFamily(self.name, self.doc, value=float(self.value))


class _HistogramChild:
    """One label set's buckets: counts[i] = observations v with bounds[i-1] < v <= bounds[i]
    (the last slot is +Inf), kept per bucket and made cumulative only at scrape."""

    __slots__ = ("_bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. Prometheus's `le` (value <= bound).
        self.counts[bisect_left(self._bounds, value)] += 1
        self.total += value


class PlainHistogram:
    """A labelled histogram; `labels(*values)` returns a child with `observe(v)`."""

    def __init__(self, name: str, doc: str, labelnames: Sequence[str],
                 buckets: Sequence[float]) -> None:
        bounds = tuple(float(b) for b in buckets)
        assert list(bounds) == sorted(set(bounds)), f"buckets must increase: {buckets}"
        self.name, self.doc, self.labelnames = name, doc, tuple(labelnames)
        self._bounds = bounds
        self._children: dict[tuple[str, ...], _HistogramChild] = {}

    def labels(self, *values: str) -> _HistogramChild:
        assert len(values) == len(self.labelnames), \
            f"{self.name} takes labels {self.labelnames}, got {values}"
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = _HistogramChild(self._bounds)
        return child

    def family(self) -> Metric:
        fam = HistogramMetricFamily(self.name, self.doc, labels=list(self.labelnames))
        les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        for values, child in sorted(self._children.items()):
            counts, total = list(child.counts), child.total
            acc, cumulative = 0, []
            for le, n in zip(les, counts, strict=True):
                acc += n
                cumulative.append((le, float(acc)))
            fam.add_metric(list(values), cumulative, total)
        return fam


PlainMetric = PlainCounter | PlainGauge | PlainHistogram
_M = TypeVar("_M", PlainCounter, PlainGauge, PlainHistogram)


class PlainCollector(Collector):
    """Publishes the plain metrics registered with it at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._metrics: list[PlainMetric] = []
        registry.register(self)

    def add(self, metric: _M) -> _M:
        self._metrics.append(metric)
        return metric

    def collect(self) -> Iterator[Metric]:
        for m in self._metrics:
            yield m.family()
