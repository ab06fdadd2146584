"""Reading vLLM's Prometheus ``/metrics``: what overflow routing needs to know about the GPU tier's load."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VllmMetrics:
    running: int
    waiting: int
    kv_cache_usage: float  # 0..1


def parse_vllm_metrics(text: str) -> VllmMetrics:
    """Sum each metric over its label sets (several engines or models); newer vLLM names ``kv_cache_usage_perc``,
    older ones ``gpu_cache_usage_perc``."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        if "{" in line:
            name, rest = line[: line.index("{")], line[line.rindex("}") + 1 :]
        else:
            name, _, rest = line.partition(" ")
        fields = rest.split()  # value, then an optional timestamp
        try:
            value = float(fields[0])
        except (IndexError, ValueError):
            continue
        sums[name] = sums.get(name, 0.0) + value
    usage = sums.get("vllm:kv_cache_usage_perc", sums.get("vllm:gpu_cache_usage_perc", 0.0))
    return VllmMetrics(
        running=int(sums.get("vllm:num_requests_running", 0)),
        waiting=int(sums.get("vllm:num_requests_waiting", 0)),
        kv_cache_usage=usage,
    )
