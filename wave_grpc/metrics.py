"""The process's metrics, with prometheus-client: one object passed to whoever counts.

With several gateway worker processes, prometheus-client's multiprocess mode is
switched on before any metric exists (:func:`enable_multiprocess`): every
process writes its values to files in one directory, and the parent's
``/metrics`` sums them, so one scrape covers the whole pool.

Label values are bounded: routes are the route table's patterns (never a
token), registries are the names of ``[[registries]]`` entries or
``unlisted`` (an anonymous caller chooses unlisted names, and would otherwise
grow the label set without bound).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def enable_multiprocess(directory: str) -> None:
    """Values go to files in ``directory`` from now on (this process and the children it starts)."""
    os.environ[MULTIPROCESS_ENV] = directory
    values.ValueClass = values.MultiProcessValue()


def forget_process(pid: int) -> None:
    """A worker that exited: its live gauges no longer count."""
    if os.environ.get(MULTIPROCESS_ENV):
        mark_process_dead(pid)


class _Sampled(Collector):
    """A gauge read when scraped (a value this process knows, such as the layer store's size)."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float | None]) -> None:
        self._name = name
        self._documentation = documentation
        self._read = read

    def collect(self) -> Iterable[Metric]:
        value = self._read()
        if value is not None:
            yield GaugeMetricFamily(self._name, self._documentation, value=value)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._sampled: list[_Sampled] = []
        r = self.registry
        # process_* (CPU, memory, open files, start time): Linux's /proc; nothing elsewhere.
        ProcessCollector(registry=r)
        self.http_requests = Counter(
            "wave_grpc_http_requests", "Gateway HTTP requests", ["route", "method", "status"], registry=r
        )
        self.http_duration = Histogram(
            "wave_grpc_http_request_duration_seconds",
            "Gateway HTTP request duration, until the last byte was handed to the socket",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_requests = Counter(
            "wave_grpc_upstream_requests",
            "Requests to source registries (status 'error' when no answer came)",
            ["registry", "status"],
            registry=r,
        )
        self.containers_created = Counter(
            "wave_grpc_containers_created",
            "CreateContainer calls by outcome ('created', or the error code)",
            ["outcome"],
            registry=r,
        )
        self.cache_requests = Counter(
            "wave_grpc_cache_requests", "Cache lookups by cache and result", ["cache", "result"], registry=r
        )
        self.freezes = Counter(
            "wave_grpc_freezes", "Freezes finished, by outcome ('succeeded' or 'failed')", ["outcome"], registry=r
        )
        self.rate_limited = Counter("wave_grpc_rate_limited", "Requests refused by [limits]", ["limit"], registry=r)
        self.layers_collected = Counter(
            "wave_grpc_layers_collected", "Layers removed by garbage collection", registry=r
        )
        self.rpcs = Counter(
            "wave_grpc_rpcs",
            "gRPC calls answered, by method (package.Service/Method, or 'other') and status code",
            ["method", "code"],
            registry=r,
        )
        self.rpc_duration = Histogram(
            "wave_grpc_rpc_duration_seconds",
            "gRPC call duration, until the last response was handed over",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.live_connections = Gauge(
            "wave_grpc_gateway_connections", "Open gateway connections", registry=r, multiprocess_mode="livesum"
        )
        self._upstream_budget_metrics(r)

    def _upstream_budget_metrics(self, r: CollectorRegistry) -> None:
        """What the upstreams' rate limits leave, and what the site cache spared them."""
        # Per registry, from its ratelimit-* headers (Docker Hub: pulls left in the window).
        self.upstream_ratelimit_remaining = Gauge(
            "wave_grpc_upstream_ratelimit_remaining",
            "A registry's ratelimit-remaining header, last seen",
            ["registry"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.upstream_ratelimit_limit = Gauge(
            "wave_grpc_upstream_ratelimit_limit",
            "A registry's ratelimit-limit header, last seen",
            ["registry"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        # The site cache (blobs = "cache" routes): hit = served from the store, miss = not
        # stored (fetched, or joined a fetch under way), fill = a fetched blob verified and stored.
        self.blob_cache_requests = Counter(
            "wave_grpc_blob_cache_requests", "Base blob requests of cache routes, by result", ["result"], registry=r
        )
        self.blob_cache_served_bytes = Counter(
            "wave_grpc_blob_cache_served_bytes", "Bytes of base blobs served from the site cache", registry=r
        )
        self.blob_cache_saved_bytes = Counter(
            "wave_grpc_blob_cache_upstream_saved_bytes",
            "Upstream bytes not fetched because the site cache (or a fetch under way) had them",
            registry=r,
        )
        self.blob_cache_filled_bytes = Counter(
            "wave_grpc_blob_cache_filled_bytes", "Bytes of verified blobs stored in the site cache", registry=r
        )

    def note_rate_limit(self, registry: str, headers: Mapping[str, str]) -> None:
        """Export a registry's ``ratelimit-limit``/``ratelimit-remaining`` (Docker Hub: ``100;w=21600``)."""
        for header, gauge in (
            ("ratelimit-remaining", self.upstream_ratelimit_remaining),
            ("ratelimit-limit", self.upstream_ratelimit_limit),
        ):
            value = headers.get(header, "").split(";", 1)[0].strip()
            if value.isdigit():
                gauge.labels(registry).set(int(value))

    def sample(self, name: str, documentation: str, read: Callable[[], float | None]) -> None:
        """Export ``read()`` as a gauge at every scrape of this process's /metrics."""
        self._sampled.append(_Sampled(name, documentation, read))

    def exposition(self) -> bytes:
        """The Prometheus text format: this process's metrics, or the whole pool's in multiprocess mode."""
        directory = os.environ.get(MULTIPROCESS_ENV)
        if directory:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)
            # process_* describe the process answering the scrape (the parent), not a sum over workers.
            ProcessCollector(registry=registry)
        else:
            registry = self.registry
        text = generate_latest(registry)
        for sampled in self._sampled:
            extra = CollectorRegistry()
            extra.register(sampled)
            text += generate_latest(extra)
        return text
