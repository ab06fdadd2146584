"""The router's Prometheus metrics, with prometheus-client (what every scraper reads), served on ``GET /metrics``.

Counters and histograms are recorded where things happen (the gateway when an answer is settled, the cache, the
upstream client); gauges of the moment (queue depth, estimated wait, in-flight requests, cache hit ratio) are
read from the live objects at scrape time by :class:`LiveCollector`, so the hot path never updates them. With
``PROMETHEUS_MULTIPROC_DIR`` set (several worker processes), the scrape merges every process's files, as
prometheus-client's multiprocess mode does.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# -------------------------------------------------------------------------------------------- requests

REQUESTS = Counter(
    "hybrid_requests",
    "Answers by where they came from and how they ended (a fallback after a broken answer counts each backend)",
    ["tier", "backend", "model", "cache", "status"], registry=REGISTRY,
)
TOKENS = Counter(
    "hybrid_tokens", "Tokens of answered requests (prompt, completion)",
    ["tier", "backend", "model", "kind"], registry=REGISTRY,
)
COST = Counter(
    "hybrid_cost_usd", "What answers cost, in US dollars (cache hits: nothing)", ["tier", "backend", "model"],
    registry=REGISTRY,
)
COUNTERFACTUAL = Counter(
    "hybrid_counterfactual_cost_usd", "What the same tokens would have cost on the reference cloud model",
    ["tier", "backend", "model"], registry=REGISTRY,
)
TAGGED_REQUESTS = Counter(
    "hybrid_tagged_requests", "Answers by the value of each tag listed in [metrics] tag_labels",
    ["tag", "value"], registry=REGISTRY,
)
TAGGED_COST = Counter(
    "hybrid_tagged_cost_usd", "Cost by the value of each tag listed in [metrics] tag_labels", ["tag", "value"],
    registry=REGISTRY,
)
MAX_TAG_VALUES = 1000  # distinct values of one tag key as labels; the rest are counted as "(other)"
_tag_values: dict[str, set[str]] = {}


def count_tags(tags: dict[str, str], keys: list[str], cost: float) -> None:
    """Tag values become labels only for the keys an operator listed, and at most MAX_TAG_VALUES of each."""
    for key in keys:
        value = tags.get(key)
        if value is None:
            continue
        seen = _tag_values.setdefault(key, set())
        if value not in seen:
            if len(seen) >= MAX_TAG_VALUES:
                value = "(other)"
            else:
                seen.add(value)
        child(TAGGED_REQUESTS, key, value).inc()
        if cost > 0:
            child(TAGGED_COST, key, value).inc(cost)


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LATENCY = Histogram(
    "hybrid_request_duration_seconds", "From the request's arrival at the gateway to the answer's end",
    ["tier", "cache"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
TTFT = Histogram(
    "hybrid_time_to_first_token_seconds", "From the request's arrival at the gateway to the first chunk in hand",
    ["tier"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
OVERHEAD = Histogram(
    "hybrid_router_overhead_seconds",
    "The router's own time before a backend is asked (cache lookup, limits, routing, dispatch decisions)",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1), registry=REGISTRY,
)

# -------------------------------------------------------------------------------------------- cache

CACHE_LOOKUPS = Counter("hybrid_cache_lookups", "Cache lookups by result", ["result"], registry=REGISTRY)
CACHE_GUARD_REJECTIONS = Counter(
    "hybrid_cache_guard_rejections", "Similar entries refused (reason: verifier, or the guard's rule when it is off)",
    ["reason"], registry=REGISTRY,
)
CACHE_AUDITS = Counter(
    "hybrid_cache_semantic_audits",
    "Error-budget verdicts by source (audit: a hit answered live too; shadow: a refused candidate judged against a "
    "miss's answer; shared: another replica's) and outcome (agree, wrong, failed)",
    ["source", "outcome"], registry=REGISTRY,
)
CACHE_STORES = Counter("hybrid_cache_stores", "Answers stored in the cache", registry=REGISTRY)
CACHE_EVICTIONS = Counter("hybrid_cache_evictions", "Entries evicted at the size bound", registry=REGISTRY)
CACHE_ERRORS = Counter(
    "hybrid_cache_errors", "Cache operations that failed and degraded to a miss", ["op"], registry=REGISTRY
)

# -------------------------------------------------------------------------------------------- upstreams

UPSTREAM_CONNECTIONS = Counter(
    "hybrid_upstream_connections", "Connections opened to upstreams (few, if kept alive)", ["upstream"],
    registry=REGISTRY,
)


@functools.lru_cache(maxsize=8192)
def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, remembered: prometheus-client validates and locks on every ``labels()`` call,
    which cost the pass-through path about 2 us each. Label values here come from the config (tiers, backends,
    models, statuses), so the set is small; the bound keeps it so."""
    return metric.labels(*labels)


class LiveCollector(Collector):
    """Gauges read at scrape time from a callable that returns ``{(name, help): [(labels, value), ...]}``."""

    def __init__(self, read: Callable[[], dict[tuple[str, str], list[tuple[dict[str, str], float]]]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        for (name, help_text), samples in self._read().items():
            labels = sorted({k for lbls, _ in samples for k in lbls})
            family = GaugeMetricFamily(name, help_text, labels=labels)
            for lbls, value in samples:
                family.add_metric([lbls.get(k, "") for k in labels], value)
            yield family

    def describe(self) -> Iterable[Metric]:
        return []


_live: list[LiveCollector] = []


def watch(read: Callable[[], dict[tuple[str, str], list[tuple[dict[str, str], float]]]]) -> LiveCollector:
    """Register live gauges (one set per running gateway; a new one replaces the last)."""
    for old in _live:
        REGISTRY.unregister(old)
    _live.clear()
    collector = LiveCollector(read)
    REGISTRY.register(collector)
    _live.append(collector)
    return collector


def render() -> bytes:
    """The exposition text: this process's registry, or every worker's when in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged) + b"".join(generate_latest(c) for c in _live_registries())
    return generate_latest(REGISTRY)


def _live_registries() -> Iterator[Any]:
    for collector in _live:
        reg = CollectorRegistry(auto_describe=False)
        reg.register(collector)
        yield reg


def counted(counter: Counter, **labels: str) -> float:
    """A counter's total over the children whose labels match (one metric's samples, not the registry's)."""
    return sum(
        s.value for m in counter.collect() for s in m.samples
        if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items())
    )


def sample(name: str, **labels: str) -> float:
    """The current value of one sample (0 when it has none yet): for tests and benchmarks."""
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)
