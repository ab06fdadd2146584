"""hybrid bench against the fault upstream: streamed answers with their first token, errors counted by kind,
the open loop's schedule, and bad arguments. (Its agreement with wrk is measured by scripts/bench_loadgen.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.procs import ManagedProcess


def _bench(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hybrid", "bench", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_a_streamed_closed_loop_reports_throughput_ttft_and_tokens(faults: ManagedProcess, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    done = _bench("--url", f"{faults.url}/ok/v1", "--concurrency", 4, "--duration", 1, "--warmup", 0.2, "--stream",
                  "--json", out)
    assert done.returncode == 0, done.stderr
    s = json.loads(out.read_text())
    assert s["requests"] > 0 and s["errors"] == 0
    assert s["ttft_ms"]["p50"] <= s["latency_ms"]["p50"] <= s["latency_ms"]["p99"] <= s["latency_ms"]["max"]
    assert s["completion_tokens_per_s"] == 6 * s["requests"] / s["window_s"]  # the upstream's usage: 6 tokens each
    assert "TTFT ms" in done.stdout and "closed loop, concurrency 4" in done.stdout


def test_errors_are_counted_by_kind(faults: ManagedProcess, tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    done = _bench("--url", f"{faults.url}/500/v1", "--concurrency", 2, "--duration", 0.5, "--warmup", 0, "--json", out)
    assert done.returncode == 1  # nothing succeeded
    s = json.loads(out.read_text())
    assert s["requests"] == 0 and s["errors"] > 0 and set(s["error_kinds"]) == {"http 500"}
    refused = _bench("--url", "http://127.0.0.1:9/v1", "--concurrency", 1, "--duration", 0.3, "--warmup", 0)
    assert refused.returncode == 1 and "ConnectError" in refused.stdout


def test_the_open_loop_starts_requests_on_its_schedule(faults: ManagedProcess, tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    done = _bench("--url", f"{faults.url}/json/v1", "--rps", 40, "--concurrency", 8, "--duration", 1, "--warmup", 0,
                  "--processes", 2, "--json", out)
    assert done.returncode == 0, done.stderr
    s = json.loads(out.read_text())
    assert s["requests"] == 40 and s["errors"] == 0  # 20 due each second in each of the two processes
    assert "open loop at 40 req/s" in done.stdout


def test_bad_arguments_are_one_line_errors() -> None:
    for args in (["--url", "ftp://x/v1"], ["--url", "http://127.0.0.1:9/v1", "--concurrency", "0"],
                 ["--url", "http://127.0.0.1:9/v1", "--header", "novalue"]):
        done = _bench(*args)
        assert done.returncode == 2 and done.stderr.startswith("hybrid bench:"), done.stderr


def test_latencies_are_kept_in_a_bounded_reservoir(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from hybrid.evals import loadgen

    monkeypatch.setattr(loadgen, "MAX_SAMPLES", 100)
    t = loadgen.Tally(window_s=1.0)
    for i in range(10_000):
        t.observe(i / 10_000, None)
    assert len(t.latencies) == 100 and t.seen == 10_000
    s = loadgen.summary(t)
    assert s["requests"] == 10_000 and s["throughput_rps"] == 10_000
    assert 0.3 < s["latency_ms"]["p50"] / 1000 < 0.7  # a uniform sample of a uniform spread
