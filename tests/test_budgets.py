"""Budgets end to end: spent budgets refuse (429 insufficient_quota) or downgrade to the local tier, remember their
spend across a restart (from the ledger), and are one budget for two replicas sharing Redis; so are the per-key
rate limits of [limits]."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

from tests.conftest import sdk
from tests.procs import ManagedProcess, RedisServer, cpu_backend, start_router

KEY = "budget-key"


def _config(faults: ManagedProcess, work: Path, budget: str, cache: str = "") -> str:
    return f"""
[server]
api_keys = ["{KEY}", "free-key"]

[[backends]]
name = "openai"
kind = "openai"
tier = "cloud"
base_url = "{faults.url}/ok/v1"
models = ["gpt-4o-mini"]
{cpu_backend(context=512)}
[routing]
fallbacks = []

[cache]
{cache or 'backend = "off"'}

[ledger]
path = "{work / 'ledger.sqlite3'}"
flush_interval_s = 0.05

[[budgets]]
{budget}
"""


# one fault-upstream answer (7 prompt + 6 completion tokens of gpt-4o-mini) costs $0.00000465
REFUSE = 'name = "app-daily"\nkey = "budget-key"\nperiod = "day"\nlimit_usd = 0.000004\naction = "refuse"'
DOWNGRADE = 'name = "search-monthly"\ntag = "feature=search"\nperiod = "month"\nlimit_usd = 0.000004\n' \
            'action = "downgrade"\ndowngrade_to = "local"'


def _remaining(router: ManagedProcess, name: str) -> float:
    for line in router.get("/metrics").text.splitlines():
        if line.startswith(f'hybrid_budget_remaining_usd{{budget="{name}"}}'):
            return float(line.split()[-1])
    raise AssertionError("no budget gauge")


def _wait_spent(router: ManagedProcess, name: str) -> None:
    deadline = time.monotonic() + 10
    while _remaining(router, name) > 0:
        assert time.monotonic() < deadline, "the spend never reached the budget"
        time.sleep(0.02)


def _ask(router: ManagedProcess, key: str = KEY, model: str = "cloud", **kw: object) -> object:
    return sdk(router.url, api_key=key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, **kw)  # type: ignore[arg-type]


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    return tmp_path


def test_a_spent_budget_refuses_and_remembers_across_a_restart(faults: ManagedProcess, work: Path) -> None:
    router = start_router(_config(faults, work, REFUSE), work, key=KEY)
    try:
        _ask(router)  # $0 spent before it: allowed
        _wait_spent(router, "app-daily")
        with pytest.raises(openai.RateLimitError) as info:
            _ask(router)
        assert info.value.code == "insufficient_quota" and "app-daily" in info.value.message
        _ask(router, key="free-key")  # another key's requests are not this budget's
    finally:
        router.stop()
    again = start_router(_config(faults, work, REFUSE), work, key=KEY)
    try:
        with pytest.raises(openai.RateLimitError):
            _ask(again)  # the spend came back from the ledger
    finally:
        again.stop()


def test_a_spent_budget_downgrades_to_the_local_tier(faults: ManagedProcess, work: Path) -> None:
    router = start_router(_config(faults, work, DOWNGRADE), work, key=KEY)
    try:
        tags = {"extra_headers": {"x-hybrid-tags": "feature=search"}}
        first = _ask(router, **tags)
        assert first.headers["x-hybrid-tier"] == "cloud"  # type: ignore[attr-defined]
        _wait_spent(router, "search-monthly")
        second = _ask(router, **tags)
        assert second.headers["x-hybrid-tier"] == "local"  # type: ignore[attr-defined]
        assert second.headers["x-hybrid-route-reason"] == "budget:search-monthly->local"  # type: ignore[attr-defined]
        assert _ask(router).headers["x-hybrid-tier"] == "cloud"  # type: ignore[attr-defined]  # untagged: untouched
    finally:
        router.stop()


def test_two_replicas_share_one_budget_through_redis(faults: ManagedProcess, valkey: RedisServer, tmp_path: Path) -> None:
    cache = f'backend = "redis"\nredis_url = "{valkey.url}"'
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a = start_router(_config(faults, a_dir, REFUSE, cache), a_dir, key=KEY)
    b = start_router(_config(faults, b_dir, REFUSE, cache), b_dir, key=KEY)
    try:
        _ask(a)  # spent on replica a...
        _wait_spent(a, "app-daily")
        with pytest.raises(openai.RateLimitError) as info:
            _ask(b)  # ...refused on replica b, which never served this key
        assert info.value.code == "insufficient_quota"
    finally:
        a.stop()
        b.stop()


def test_two_replicas_enforce_one_rate_limit_through_redis(
    faults: ManagedProcess, valkey: RedisServer, tmp_path: Path
) -> None:
    """[limits] with the cache in Redis: 3 requests a minute for a key, whichever replica serves them."""
    cache = f'backend = "redis"\nredis_url = "{valkey.url}"'
    budget = 'name = "unused"\nkey = "free-key"\nlimit_usd = 100.0'
    config = _config(faults, tmp_path, budget, cache) + "\n[limits]\nrequests_per_min = 3\ntokens_per_min = 100000\n"
    a = start_router(config, tmp_path, key=KEY)
    b = start_router(config, tmp_path, key=KEY)
    try:
        _ask(a)
        _ask(b)
        _ask(a)
        with pytest.raises(openai.RateLimitError) as info:
            _ask(b)  # the fourth in a minute, on a replica that has served only one
        assert info.value.code == "rate_limit_exceeded"
        assert int(info.value.response.headers["retry-after"]) >= 1
        _ask(b, key="free-key")  # another key has its own limit
    finally:
        a.stop()
        b.stop()
