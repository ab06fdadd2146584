"""GET /dashboard in a real headless Chromium (Debian's chromium, driven by playwright): the page loads with no console
errors and shows the numbers of a ledger seeded by real requests; only admin keys may open it. The screenshot is
written to test-output/dashboard.png."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import sdk
from tests.browser import SCREENSHOTS, chromium_page
from tests.procs import ManagedProcess, start_router

ADMIN, APP = "admin-key", "app-key"


@pytest.fixture(scope="module")
def seeded(faults: ManagedProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    work = tmp_path_factory.mktemp("dashboard")
    config = f"""
[server]
api_keys = ["{APP}"]
admin_keys = ["{ADMIN}"]

[[backends]]
name = "openai"
kind = "openai"
tier = "cloud"
base_url = "{faults.url}/ok/v1"
models = ["gpt-4o-mini"]

[routing]
fallbacks = []

[cache]
path = "{work / 'cache.sqlite3'}"

[ledger]
path = "{work / 'ledger.sqlite3'}"
flush_interval_s = 0.05

[[budgets]]
name = "support-monthly"
tag = "team=support"
period = "month"
limit_usd = 25.0
action = "refuse"
"""
    proc = start_router(config, work, key=APP)
    client = sdk(proc.url, api_key=APP)
    for feature, n in (("search", 3), ("chat", 1)):
        for i in range(n):
            client.chat.completions.create(
                model="cloud", messages=[{"role": "user", "content": f"{feature} {i}"}], temperature=0,
                extra_headers={"x-hybrid-tags": f"feature={feature},team=support"})
    client.chat.completions.create(model="cloud", messages=[{"role": "user", "content": "search 0"}], temperature=0,
                                   extra_headers={"x-hybrid-tags": "feature=search,team=support"})  # a cache hit
    yield proc
    proc.stop()


def _get(proc: ManagedProcess, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(proc.url + "/dashboard", headers=headers, timeout=30)


def test_only_admin_keys_open_the_dashboard(seeded: ManagedProcess) -> None:
    assert _get(seeded, None).status_code == 401
    denied = _get(seeded, APP)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
    page = _get(seeded, ADMIN)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]  # nothing is loaded from anywhere
    bad = httpx.get(seeded.url + "/dashboard?since=forever", headers={"authorization": f"Bearer {ADMIN}"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"


def test_the_dashboard_renders_the_ledger_in_chromium(seeded: ManagedProcess) -> None:
    with chromium_page({"authorization": f"Bearer {ADMIN}"}) as (page, problems):
        resp = page.goto(seeded.url + "/dashboard?since=1d")
        assert resp is not None and resp.status == 200
        assert page.inner_text("#requests b") == "5"
        assert page.inner_text("#hit-rate b") == "20.0%"
        assert page.inner_text("#saved b").endswith("%") and page.inner_text("#saved b") != "0.0%"
        text = page.inner_text("body")
        for expected in ("search", "chat", "cloud", "cache", "support-monthly", "Spend per day"):
            assert expected in text, expected
        assert page.locator("svg rect").count() >= 4  # the charts drew their columns and bars
        page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)
        assert problems == []
