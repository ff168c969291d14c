"""The lock-free per-request metrics expose exactly what prometheus_client's would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from keeldb.server.admin_http import _LATENCY_BUCKETS, ServerMetrics
from keeldb.server.plain_metrics import (
    PlainCollector,
    PlainCounter,
    PlainGauge,
    PlainHistogram,
)


def _samples(reg: CollectorRegistry) -> list[str]:
    """Exposition lines without comments and the `_created` timestamps (wall-clock)."""
    return [ln for ln in generate_latest(reg).decode().splitlines()
            if ln and not ln.startswith("#") and "_created" not in ln]


def test_plain_metrics_expose_the_same_samples_as_prometheus_client() -> None:
    ref, reg = CollectorRegistry(), CollectorRegistry()
    plain = PlainCollector(reg)
    rc = Counter("x_commands", "d", registry=ref)
    pc = plain.add(PlainCounter("x_commands", "d"))
    rg = Gauge("x_index", "d", registry=ref)
    pg = plain.add(PlainGauge("x_index", "d"))
    rh = Histogram("x_lat", "d", ["kind"], buckets=_LATENCY_BUCKETS, registry=ref)
    ph = plain.add(PlainHistogram("x_lat", "d", ["kind"], _LATENCY_BUCKETS))
    rnd = random.Random(5)
    # Values on every bucket bound (le is inclusive), between bounds and past the last one.
    values = list(_LATENCY_BUCKETS) + [rnd.uniform(0, 3) for _ in range(500)] + [0.0, 9.0]
    for i, v in enumerate(values):
        kind = ("read", "write")[i % 2]
        rh.labels(kind).observe(v)
        ph.labels(kind).observe(v)
        rc.inc(i % 3)
        pc.inc(i % 3)
        rg.set(i)
        pg.set(i)
    assert _samples(reg) == _samples(ref)
    assert any('le="0.0001"' in ln for ln in _samples(reg))


def test_server_metrics_counters_stay_monotonic_across_scrapes() -> None:
    m = ServerMetrics(lambda: None)
    seen = []
    for _ in range(3):
        m.commands.inc(2)
        m.errors.inc()
        m.latency.labels("write").observe(0.002)
        text = m.exposition().decode()
        line = next(ln for ln in text.splitlines() if ln.startswith("keeldb_commands_total"))
        seen.append(float(line.split()[-1]))
        assert 'keeldb_command_latency_seconds_bucket{kind="write",le="0.0025"}' in text
        assert "keeldb_command_errors_total" in text and "keeldb_applied_index" in text
    assert seen == [2.0, 4.0, 6.0]  # a scrape publishes, never resets
