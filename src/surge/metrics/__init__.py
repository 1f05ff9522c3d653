"""The registry every collector is registered with, and /metrics.

Every collector Surge exports is registered in `surge.metrics.collectors`.

The hot path only bumps plain integers in dicts (about 100 ns); prometheus_client turns
them into the exposition format when /metrics is scraped. prometheus_client's own
Counter/Histogram take a lock and walk label dicts on every call, which costs more than a
near-cache hit does in total. Label values are fixed at start-up or are route templates,
never raw user input.

Several workers (`surge serve --workers N`) share one port, so a scrape reaches whichever
worker accepts it. Every series therefore carries a `worker` label, each worker writes a
snapshot of its own series to a directory the supervisor made, once a second, and any
worker answers /metrics with its live series plus its peers' latest snapshots: every
scrape sees every worker, and each series stays monotonic.
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families

from surge.ground.histogram import LATENCY_BUCKETS, Histogram

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "Histogram", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, worker: str = "0", share_dir: Path | None = None) -> None:
        self.worker = worker
        self.share_dir = share_dir
        self.started = time.time()
        self.requests: dict[tuple[str, str, int], int] = {}
        # route -> (bucket counts incl. +Inf, sum)
        self._latency: dict[str, list[float]] = {}
        self.loop_lag = 0.0
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.counters: dict[str, tuple[str, Callable[[], float]]] = {}
        self.labelled_counters: dict[str, tuple[str, str, Callable[[], Mapping[str, float]]]] = {}
        self.labelled_gauges: dict[str, tuple[str, str, Callable[[], Mapping[str, float]]]] = {}
        self.histograms: dict[str, tuple[str, Histogram]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- hot path -------------------------------------------------------------------------
    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        hist = self._latency.get(route)
        if hist is None:
            hist = self._latency[route] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        hist[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        hist[-1] += seconds

    # -- registration -----------------------------------------------------------------------
    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time (pool use, in-flight requests...)."""
        self.gauges[name] = (doc, read)

    def counter(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A counter kept elsewhere as a plain number, read at scrape time."""
        self.counters[name] = (doc, read)

    def labelled_counter(
        self, name: str, doc: str, label: str, read: Callable[[], Mapping[str, float]]
    ) -> None:
        """Counters kept elsewhere as a dict (label value -> count), read at scrape time."""
        self.labelled_counters[name] = (doc, label, read)

    def labelled_gauge(
        self, name: str, doc: str, label: str, read: Callable[[], Mapping[str, float]]
    ) -> None:
        """Gauges read at scrape time as a dict (label value -> value)."""
        self.labelled_gauges[name] = (doc, label, read)

    def histogram(self, name: str, doc: str, histogram: Histogram) -> None:
        self.histograms[name] = (doc, histogram)

    async def watch_loop_lag(self, interval: float = 0.25) -> None:
        """Measures how late the event loop wakes us: the time callbacks wait to run."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag = max(0.0, loop.time() - start - interval)

    # -- exposition -------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        """This worker's series, each labelled with the worker."""
        for family in self._families():
            family.samples = [
                sample._replace(labels={**sample.labels, "worker": self.worker})
                for sample in family.samples
            ]
            yield family

    def _families(self) -> Iterator[Metric]:
        total = CounterMetricFamily(
            "http_requests", "HTTP requests answered", labels=["route", "method", "status"]
        )
        for (route, method, status), count in sorted(self.requests.items()):
            total.add_metric([route, method, str(status)], count)
        yield total

        hist = HistogramMetricFamily(
            "http_request_duration_seconds",
            "Time from a complete request to its answer",
            labels=["route"],
        )
        for route, counts in sorted(self._latency.items()):
            buckets: list[tuple[str, float]] = []
            running = 0.0
            for bound, observed in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=False):
                running += observed
                buckets.append((_le(bound), running))
            hist.add_metric([route], buckets, sum_value=counts[-1])
        yield hist

        yield GaugeMetricFamily(
            "event_loop_lag_seconds", "Latest measured event-loop lag", value=self.loop_lag
        )
        yield GaugeMetricFamily(
            "asyncio_tasks", "Live asyncio tasks", value=len(asyncio.all_tasks())
        )
        for name, (doc, read) in sorted(self.gauges.items()):
            yield GaugeMetricFamily(name, doc, value=read())
        for name, (doc, read) in sorted(self.counters.items()):
            yield CounterMetricFamily(name, doc, value=read())
        for name, (doc, label, read_all) in sorted(self.labelled_counters.items()):
            labelled = CounterMetricFamily(name, doc, labels=[label])
            for value, seen in sorted(read_all().items()):
                labelled.add_metric([value], seen)
            yield labelled
        for name, (doc, label, read_all) in sorted(self.labelled_gauges.items()):
            gauges = GaugeMetricFamily(name, doc, labels=[label])
            for value, level in sorted(read_all().items()):
                gauges.add_metric([value], level)
            yield gauges
        for name, (doc, histogram) in sorted(self.histograms.items()):
            family = HistogramMetricFamily(name, doc)
            running = 0.0
            buckets = []
            for bound, observed in zip(
                (*histogram.bounds, float("inf")), histogram.counts, strict=True
            ):
                running += observed
                buckets.append((_le(bound), running))
            family.add_metric([], buckets, sum_value=histogram.total)
            yield family
        yield GaugeMetricFamily(
            "process_start_time_seconds", "Start time of the process", value=self.started
        )

    def render(self) -> bytes:
        """Exposition text: this worker live, its peers as of their last snapshot."""
        if self.share_dir is None:
            return generate_latest(self.registry)
        merged = {family.name: family for family in self.collect()}
        for path in sorted(self.share_dir.glob("worker-*.prom")):
            if path.name == self._snapshot_name:
                continue
            try:
                text = path.read_text()
            except OSError:  # a worker being replaced
                continue
            for family in text_string_to_metric_families(text):
                own = merged.get(family.name)
                if own is None:
                    merged[family.name] = family
                else:
                    own.samples.extend(family.samples)
        return generate_latest(_Fixed(list(merged.values())))

    @property
    def _snapshot_name(self) -> str:
        return f"worker-{self.worker}.prom"

    async def share(self, interval: float = 1.0) -> None:
        """Writes this worker's snapshot for its peers, atomically, every `interval`."""
        assert self.share_dir is not None
        target = self.share_dir / self._snapshot_name
        scratch = target.with_suffix(".tmp")
        while True:
            scratch.write_bytes(generate_latest(self.registry))
            os.replace(scratch, target)
            await asyncio.sleep(interval)


class _Fixed:
    """A registry-shaped holder of already collected families."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
