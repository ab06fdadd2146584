"""The usage ledger end to end: a live router, the strict openai SDK, the tests' upstream answering as a priced cloud
model, the bundled model as the local tier, real SQLite; rows checked to the cent against the usage the client
saw, through a locked database, a spill and a restart, and SIGTERM in the middle of a stream."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from models.prices import load_prices
from tests.conftest import sdk
from tests.procs import ManagedProcess, cpu_backend, start_router

KEY = "ledger-key"


def _config(faults: ManagedProcess, work: Path, ledger: str = "") -> str:
    return f"""
[server]
api_keys = ["{KEY}", "other-key"]
key_tags = {{ "{KEY}" = {{ app = "helpdesk", team = "support" }} }}

[[backends]]
name = "openai"
kind = "openai"
tier = "cloud"
base_url = "{faults.url}/ok/v1"
models = ["gpt-4o-mini"]
{cpu_backend(cost_per_hour=3.6)}
[routing]
fallbacks = []

[cache]
path = "{work / 'cache.sqlite3'}"

[costs]
reference_model = "gpt-4o"

[ledger]
path = "{work / 'ledger.sqlite3'}"
flush_interval_s = 0.05
{ledger}
"""


def _rows(work: Path) -> list[dict[str, object]]:
    conn = sqlite3.connect(work / "ledger.sqlite3")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY ts")]
    finally:
        conn.close()


def _wait_rows(work: Path, count: int, timeout: float = 10.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            rows = _rows(work)
        except sqlite3.OperationalError:
            rows = []
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture()
def router(faults: ManagedProcess, work: Path) -> Iterator[ManagedProcess]:
    proc = start_router(_config(faults, work), work, key=KEY)
    yield proc
    proc.stop()


def test_every_request_is_one_row_costed_to_the_cent(router: ManagedProcess, work: Path) -> None:
    client = sdk(router.url, api_key=KEY)
    mini, gpt4o = load_prices()["gpt-4o-mini"], load_prices()["gpt-4o"]
    whole = client.chat.completions.with_raw_response.create(
        model="cloud", messages=[{"role": "user", "content": "Cost me"}], temperature=0,
        metadata={"feature": "search"}, user="u-17", extra_headers={"x-hybrid-tags": "feature=billing,env=prod"},
    )
    streamed = list(client.chat.completions.create(
        model="cloud", messages=[{"role": "user", "content": "Stream me"}], stream=True,
        stream_options={"include_usage": True},
    ))
    hit = client.chat.completions.with_raw_response.create(
        model="cloud", messages=[{"role": "user", "content": "Cost me"}], temperature=0,
    )
    local = client.chat.completions.create(model="local", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert hit.headers["x-hybrid-cache"] == "hit-exact"
    rows = _wait_rows(work, 4)
    assert len(rows) == 4
    by_status = [(r["tier"], r["cache"], r["status"]) for r in rows]
    assert by_status == [("cloud", "miss", "ok"), ("cloud", "bypass", "ok"), ("cache", "hit-exact", "ok"),
                         ("local", "bypass", "ok")]

    first = rows[0]
    usage = whole.parse().usage
    assert usage is not None
    assert (first["prompt_tokens"], first["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert first["cost"] == pytest.approx(mini.cost(usage.prompt_tokens, usage.completion_tokens), abs=5e-7)
    assert first["counterfactual_cost"] == pytest.approx(gpt4o.cost(usage.prompt_tokens, usage.completion_tokens))
    # key defaults < metadata < user < header; the key itself never lands in the ledger
    assert json.loads(str(first["tags"])) == {"app": "helpdesk", "team": "support", "feature": "billing",
                                               "user": "u-17", "env": "prod"}
    assert str(first["key_id"]).startswith("key:") and KEY not in json.dumps(rows)
    assert first["request_id"] == whole.headers["x-request-id"]

    stream_usage = streamed[-1].usage
    assert stream_usage is not None and rows[1]["completion_tokens"] == stream_usage.completion_tokens
    assert rows[1]["ttft_s"] is not None and float(rows[1]["ttft_s"]) <= float(rows[1]["latency_s"])  # type: ignore[arg-type]

    cached = rows[2]
    assert cached["cost"] == 0.0 and cached["counterfactual_cost"] == pytest.approx(first["counterfactual_cost"])

    local_row = rows[3]
    assert local.usage is not None and local_row["completion_tokens"] == local.usage.completion_tokens
    assert float(local_row["cost"]) > 0  # type: ignore[arg-type]  # 3.60 $/h over its measured tokens/s


def test_a_bad_tag_is_a_400_naming_it(router: ManagedProcess, work: Path) -> None:
    for headers, body, param in [
        ({"x-hybrid-tags": "Feature=x"}, {}, "x-hybrid-tags"),
        ({"x-hybrid-tags": "feature"}, {}, "x-hybrid-tags"),
        ({}, {"metadata": {"feature": "a\nb"}}, "metadata.feature"),
        ({}, {"metadata": {f"k{i}": "v" for i in range(20)}}, "x-hybrid-tags"),
    ]:
        r = httpx.post(router.url + "/v1/chat/completions", timeout=30,
                       headers={"authorization": f"Bearer {KEY}", **headers},
                       json={"model": "cloud", "messages": [{"role": "user", "content": "hi"}], **body})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
    assert httpx.get(router.url + "/health").status_code == 200


def test_rows_survive_a_locked_database_and_a_spill_across_restarts(faults: ManagedProcess, work: Path) -> None:
    router = start_router(_config(faults, work, "retry_s = 0.5"), work, key=KEY)
    client = sdk(router.url, api_key=KEY)
    try:
        client.chat.completions.create(model="cloud", messages=[{"role": "user", "content": "before"}])
        _wait_rows(work, 1)
        lock = sqlite3.connect(work / "ledger.sqlite3", timeout=10, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # the database is unavailable for longer than retry_s
        for i in range(5):
            client.chat.completions.create(model="cloud", messages=[{"role": "user", "content": f"during {i}"}])
        deadline = time.monotonic() + 10
        while not list(work.glob("ledger-sqlite.spill-*.jsonl")):
            assert time.monotonic() < deadline, "nothing was spilled"
            time.sleep(0.05)
        lock.execute("ROLLBACK")
        lock.close()
        assert "ledger: the database refused" in router.output()
    finally:
        router.stop()
    again = start_router(_config(faults, work), work, key=KEY)  # reads the spill back in at start
    try:
        rows = _wait_rows(work, 6)
        assert len(rows) == 6 and not list(work.glob("ledger-sqlite.spill-*.jsonl"))
    finally:
        again.stop()


def test_sigterm_in_the_middle_of_a_stream_loses_no_row(router: ManagedProcess, work: Path) -> None:
    body = {"model": "local", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 900, "temperature": 0, "stream": True}
    got: list[bytes] = []

    def read() -> None:
        try:
            with httpx.stream("POST", router.url + "/v1/completions", json=body, timeout=60,
                              headers={"authorization": f"Bearer {KEY}"}) as resp:
                for piece in resp.iter_bytes():
                    got.append(piece)
        except httpx.HTTPError:
            pass

    t = threading.Thread(target=read)
    t.start()
    deadline = time.monotonic() + 30
    while len(got) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert router.proc is not None
    router.proc.send_signal(signal.SIGTERM)
    router.proc.wait(timeout=60)
    t.join()
    rows = _rows(work)
    assert len(rows) == 1 and rows[0]["tier"] == "local" and rows[0]["status"] in ("ok", "abandoned")
    assert int(rows[0]["completion_tokens"]) > 0  # type: ignore[call-overload]


def test_report_groups_costs_and_savings_by_tag(router: ManagedProcess, work: Path) -> None:
    client = sdk(router.url, api_key=KEY)
    for feature, n in (("search", 3), ("chat", 2)):
        for i in range(n):
            client.chat.completions.create(model="cloud", messages=[{"role": "user", "content": f"{feature} {i}"}],
                                           extra_headers={"x-hybrid-tags": f"feature={feature}"})
    rows = _wait_rows(work, 5)
    cfg = work / f"hybrid-{router.url.rsplit(':', 1)[1]}.toml"
    out = subprocess.run([sys.executable, "-m", "hybrid", "report", "-c", str(cfg), "--by", "feature", "--json"],
                         capture_output=True, text=True, timeout=60, env={"HYBRID_DATA_DIR": str(work), "PATH": ""})
    assert out.returncode == 0, out.stderr
    report = {g["group"]: g for g in json.loads(out.stdout)}
    assert {k: v["requests"] for k, v in report.items()} == {"search": 3, "chat": 2}
    search_cost = sum(float(r["cost"]) for r in rows if "search" in str(r["tags"]))  # type: ignore[arg-type]
    assert report["search"]["cost"] == pytest.approx(search_cost)
    assert report["search"]["savings_pct"] > 90  # gpt-4o-mini against the gpt-4o reference
    table = subprocess.run([sys.executable, "-m", "hybrid", "report", "-c", str(cfg), "--by", "team"],
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and "| support | 5 |" in table.stdout, table.stdout + table.stderr


def test_feedback_lands_next_to_cost_and_only_on_the_callers_own_requests(router: ManagedProcess, work: Path) -> None:
    client = sdk(router.url, api_key=KEY)
    ids = []
    for i in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="cloud", messages=[{"role": "user", "content": f"rate me {i}"}],
            extra_headers={"x-hybrid-tags": "feature=rated"})
        ids.append(raw.headers["x-request-id"])

    def send(key: str, body: dict[str, object]) -> httpx.Response:
        return httpx.post(router.url + "/v1/feedback", json=body, headers={"authorization": f"Bearer {key}"})

    assert send(KEY, {"request_id": ids[0], "score": 1, "comment": "spot on"}).status_code == 200
    assert send(KEY, {"request_id": ids[1], "score": 0.0}).status_code == 200
    assert send("other-key", {"request_id": ids[2], "score": 0}).status_code == 200  # not its request: ignored
    for bad, param in (({"request_id": ids[0], "score": 7}, "score"), ({"request_id": "x y", "score": 1}, "request_id"),
                       ({"request_id": ids[0], "score": True}, "score"), ({"request_id": ids[0], "score": 1, "comment": 3}, "comment")):
        r = send(KEY, bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert httpx.post(router.url + "/v1/feedback", json={"request_id": ids[0], "score": 1}).status_code == 401
    _wait_rows(work, 3)
    deadline = time.monotonic() + 10
    while True:
        conn = sqlite3.connect(work / "ledger.sqlite3")
        n = conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
        conn.close()
        if n == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    from hybrid.ledger.report import build_report

    (rated,) = [g for g in build_report(work / "ledger.sqlite3", 3600, "feature") if g.group == "rated"]
    assert (rated.requests, rated.feedback, rated.mean_score) == (3, 2, 0.5)


def test_metrics_carry_cost_and_the_listed_tags_only(faults: ManagedProcess, work: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    router = start_router(_config(faults, work) + '\n[metrics]\ntag_labels = ["feature"]\n', work, key=KEY)
    try:
        client = sdk(router.url, api_key=KEY)
        for feature in ("search", "search", "chat"):
            client.chat.completions.create(model="cloud", messages=[{"role": "user", "content": "hi"}],
                                           extra_headers={"x-hybrid-tags": f"feature={feature},user=u{feature}"})
        samples = [s for f in text_string_to_metric_families(router.get("/metrics").text) for s in f.samples]
        tagged = {s.labels["value"]: s.value for s in samples
                  if s.name == "hybrid_tagged_requests_total" and s.labels["tag"] == "feature"}
        assert tagged == {"search": 2.0, "chat": 1.0}
        assert not [s for s in samples if s.name.startswith("hybrid_tagged") and s.labels.get("tag") == "user"]
        cost = sum(s.value for s in samples if s.name == "hybrid_cost_usd_total" and s.labels["tier"] == "cloud")
        rows = _wait_rows(work, 3)
        assert cost == pytest.approx(sum(float(r["cost"]) for r in rows))  # type: ignore[arg-type]
        assert sum(s.value for s in samples if s.name == "hybrid_counterfactual_cost_usd_total") > cost
    finally:
        router.stop()


def test_a_database_away_for_long_is_spilled_to_disk_not_held_in_memory(tmp_path: Path) -> None:
    """Past retry_s every queued row goes to a spill file each round, so memory stays bounded for any outage."""
    from hybrid.ledger.rows import LedgerRow
    from hybrid.ledger.sqlite import SqliteStore
    from hybrid.ledger.writer import Ledger

    class Away(SqliteStore):  # a database that never comes back: what a healthy one never does
        down = True

        def connect(self):  # type: ignore[no-untyped-def]
            if self.down:
                raise sqlite3.OperationalError("unable to open database file")
            return super().connect()

    store = Away(tmp_path / "ledger.sqlite3")
    store.down = False
    ledger = Ledger(store, tmp_path, flush_interval_s=0.01, retry_s=0.05, batch=100)
    ledger.start()
    store.down = True
    row = LedgerRow(ts=time.time(), request_id="r", key_id="k", requested_model="m", tier="cloud", backend="b",
                    served_model="m", status="ok", cache="off")
    for _ in range(25_000):  # 25x the batch, in one burst
        ledger.record(row)
    deadline = time.monotonic() + 20
    while ledger._rows:
        assert time.monotonic() < deadline, "rows stayed queued in memory"
        time.sleep(0.01)
    ledger.close()
    spilled = sum(len(p.read_bytes().splitlines()) for p in tmp_path.glob("ledger-sqlite.spill-*.jsonl"))
    assert spilled == 25_000
    store.down = False
    again = Ledger(store, tmp_path)
    again.start()  # the next start writes them
    again.close()
    assert not list(tmp_path.glob("ledger-sqlite.spill-*.jsonl")) and len(_rows(tmp_path)) == 25_000


def test_a_client_that_leaves_mid_stream_still_gets_its_row(router: ManagedProcess, work: Path) -> None:
    body = {"model": "local", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 600, "temperature": 0, "stream": True}
    with httpx.stream("POST", router.url + "/v1/completions", json=body, timeout=60,
                      headers={"authorization": f"Bearer {KEY}"}) as resp:
        pieces = resp.iter_bytes()
        for _ in range(5):
            next(pieces)
    # the client has gone: generation stops, and the row says so, with the tokens it did produce
    rows = _wait_rows(work, 1)
    assert len(rows) == 1 and rows[0]["status"] == "abandoned" and rows[0]["tier"] == "local"
    assert 0 < int(rows[0]["completion_tokens"]) < 600  # type: ignore[call-overload]
