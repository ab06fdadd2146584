"""hybrid eval end to end: a live router (the bundled model as the local tier, llama-cpp-python's server as the
cloud, a scripted judge and a broken one from the fault upstream), the sample workload's items, the JSON and HTML
reports, the report in headless Chromium, calibration written into the config, and the ledger rows it left."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import SCREENSHOTS, chromium_page
from tests.procs import ManagedProcess, cloud_backend, cpu_backend, start_router

REPO = Path(__file__).resolve().parent.parent
PICK = ["arith-01", "arith-15", "json-order-01", "cls-ticket-02", "fact-01", "code-09", "summ-01", "summ-02"]


@pytest.fixture(scope="module")
def setup(cloud: ManagedProcess, faults: ManagedProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("eval")
    config = f"""# an eval router
{cpu_backend()}{cloud_backend(cloud, price_input_per_mtok=2.5, price_output_per_mtok=10.0)}
[[backends]]
name = "judge"
kind = "openai"
tier = "judge"
base_url = "{faults.url}/judge/v1"
models = ["judge-model"]
price_input_per_mtok = 1.0
price_output_per_mtok = 1.0

[[backends]]
name = "broken-judge"
kind = "openai"
tier = "brokenjudge"
base_url = "{faults.url}/500/v1"
models = ["broken-model"]

[routing]
overflow_wait_s = 0
fallbacks = []
"""
    router = start_router(config, tmp)
    cfg_path = tmp / "router.toml"
    cfg_path.write_text(config)
    items = {json.loads(line)["id"]: json.loads(line) for line in (REPO / "workloads/sample.jsonl").read_text().splitlines()}
    workload = tmp / "small.jsonl"
    with workload.open("w") as fh:
        for i in PICK:
            fh.write(json.dumps({**items[i], "max_tokens": 12}) + "\n")
    yield {"router": router, "config": cfg_path, "workload": workload, "tmp": tmp}
    router.stop()


def _hybrid(*args: object, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hybrid", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)


@pytest.fixture(scope="module")
def first_run(setup: dict[str, object]) -> dict[str, object]:
    tmp = Path(str(setup["tmp"]))
    router = setup["router"]
    assert isinstance(router, ManagedProcess)
    out, html = tmp / "run1.json", tmp / "run1.html"
    done = _hybrid("eval", setup["workload"], "--targets", "local,cloud,auto", "--url", router.url + "/v1",
                   "--config", setup["config"], "--judge", "judge", "--concurrency", "2", "--out", out, "--html", html)
    assert done.returncode == 0, done.stderr
    return {"doc": json.loads(out.read_text()), "out": out, "html": html, "stdout": done.stdout, "stderr": done.stderr}


def test_every_item_meets_every_target_through_the_router(first_run: dict[str, object]) -> None:
    doc = first_run["doc"]
    assert isinstance(doc, dict)
    items = doc["items"]
    assert sorted((r["item"], r["target"]) for r in items) == sorted((i, t) for i in PICK for t in ("local", "cloud", "auto"))
    for r in items:
        assert r["error"] is None, r
        assert 0.0 <= r["score"] <= 1.0
        assert r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 and r["latency_s"] > 0
        if r["target"] in ("local", "cloud"):
            assert r["tier"] == r["target"] and r["route_reason"] == "explicit-tier"
        else:
            assert r["route_reason"].startswith("auto:")  # routing exercised, never the cache
        if r["item"].startswith("summ-"):
            assert r["score"] == 0.75  # the scripted judge's "SCORE: 4", parsed
            assert r["judge_cost"] > 0  # the judge backend is priced
        else:
            assert r["judge_cost"] == 0
        assert (r["cost"] > 0) == (r["tier"] == "cloud")  # priced cloud; the local machine costs nothing here
        assert r["counterfactual"] > 0
    assert doc["model_ids"]["local"] == ["gemma-3-270m"] and doc["model_ids"]["cloud"] == ["gemma-cloud"]
    assert doc["config"]["sha256"] and doc["git_revision"] and doc["workload"]["items"] == len(PICK)
    assert set(doc["scores"]) == set(PICK)


def test_results_hold_quality_cost_and_latency_per_target_and_tag(first_run: dict[str, object]) -> None:
    doc = first_run["doc"]
    assert isinstance(doc, dict)
    for target in ("local", "cloud", "auto"):
        s = doc["summary"][target]["overall"]
        assert s["items"] == s["graded"] == len(PICK) and s["errors"] == 0
        assert s["ci95"][0] <= s["quality"] <= s["ci95"][1]
        assert s["latency_p50"] <= s["latency_p95"] <= s["latency_p99"]
        assert s["ttft_p50"] is not None and s["ttft_p50"] <= s["latency_p99"]
        assert set(doc["summary"][target]["tags"]) == {"arithmetic", "extraction", "classification", "factual", "code",
                                                       "summarisation"}
    assert doc["summary"]["cloud"]["overall"]["cost"] > 0 == doc["summary"]["local"]["overall"]["cost"]
    cal = doc["calibration"]
    assert cal["cheap"] == "local" and cal["capable"] == "cloud" and cal["items"] == len(PICK) and cal["chosen"]
    stdout = first_run["stdout"]
    assert isinstance(stdout, str) and "calibration (local vs cloud" in stdout and "local" in stdout
    assert "local:" in str(first_run["stderr"])  # progress, on stderr


def test_a_failing_judge_is_an_error_not_a_zero(setup: dict[str, object]) -> None:
    tmp = Path(str(setup["tmp"]))
    router = setup["router"]
    assert isinstance(router, ManagedProcess)
    workload = tmp / "judged.jsonl"
    lines = [line for line in Path(str(setup["workload"])).read_text().splitlines() if '"summ-' in line]
    workload.write_text("\n".join(lines) + "\n")
    out = tmp / "broken.json"
    done = _hybrid("eval", workload, "--targets", "local", "--url", router.url + "/v1", "--config", setup["config"],
                   "--judge", "brokenjudge", "--out", out)
    assert done.returncode == 1 and "nothing was graded; the first error: grade: the judge (brokenjudge)" in done.stderr
    doc = json.loads(out.read_text())
    assert [r["score"] for r in doc["items"]] == [None, None]
    assert all(r["error"].startswith("grade: the judge (brokenjudge) failed") for r in doc["items"])
    s = doc["summary"]["local"]["overall"]
    assert s["errors"] == 2 and s["graded"] == 0 and s["quality"] is None


def test_compare_calibrate_and_write_the_threshold(first_run: dict[str, object], setup: dict[str, object]) -> None:
    out = first_run["out"]
    same = _hybrid("eval", "compare", out, out)
    assert same.returncode == 0 and "no clear change" in same.stdout and "REGRESSION" not in same.stdout
    config = Path(str(setup["config"]))
    done = _hybrid("eval", "calibrate", out, "--config", config, "--write-threshold")
    assert done.returncode == 0, done.stderr
    chosen = json.loads(Path(str(out)).read_text())["calibration"]["chosen"]["threshold"]
    assert f"complexity_threshold = {chosen:.4f}" in config.read_text()
    assert config.read_text().startswith("# an eval router")


def test_the_html_report_opens_in_chromium(first_run: dict[str, object]) -> None:
    html = Path(str(first_run["html"]))
    text = html.read_text()
    assert "<script" not in text and "http://" not in text.split("</style>")[0]  # self-contained: nothing fetched
    with chromium_page() as (page, problems):
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(html.as_uri())
        assert page.locator("svg path.curve").count() == 2  # quality against share and against cost
        assert page.locator("svg circle.chosen").count() == 2
        body = page.inner_text("body")
        for expected in ("Targets", "Quality against cost", "By tag", "Worst items", "summarisation", "gemma-cloud"):
            assert expected in body, expected
        page.screenshot(path=str(SCREENSHOTS / "eval-report.png"), full_page=True)
        assert problems == []
        assert requests == [html.as_uri()]


def test_the_ledger_books_eval_traffic_apart(first_run: dict[str, object], setup: dict[str, object]) -> None:
    router = setup["router"]
    assert isinstance(router, ManagedProcess)
    router.stop()  # the ledger is flushed at shutdown
    port = router.url.rsplit(":", 1)[1]
    env = {"HYBRID_DATA_DIR": str(Path(str(setup["tmp"])) / f"data-{port}")}
    done = _hybrid("report", "--config", setup["config"], "--by", "source", "--json", env=env)
    assert done.returncode == 0, done.stderr
    rows = {r["group"]: r for r in json.loads(done.stdout)}
    # 8 items x 3 targets and their 2 x 3 judge calls; 2 items more with the broken judge, whose 2 calls failed
    assert set(rows) == {"eval"}
    assert (rows["eval"]["requests"], rows["eval"]["errors"]) == (8 * 3 + 2 * 3 + 2 + 2, 2)
    assert rows["eval"]["cache_hit_rate"] == 0.0


def test_fit_retrains_the_scorer_on_the_teams_items(first_run: dict[str, object], setup: dict[str, object]) -> None:
    from hybrid.routing.scoring import load_scorer

    tmp = Path(str(setup["tmp"]))
    doc = copy.deepcopy(first_run["doc"])
    assert isinstance(doc, dict)
    # make the team's verdict unmistakable: the cheap target failed the code and extraction items, the capable
    # one passed them
    for r in doc["items"]:
        if r["item"] in ("code-09", "json-order-01"):
            r["score"] = 1.0 if r["target"] == "cloud" else 0.0
    graded = tmp / "graded.json"
    graded.write_text(json.dumps(doc))
    model = tmp / "team-scorer.json"
    done = _hybrid("eval", "fit", graded, "--workload", setup["workload"], "--out", model, "--no-embedding")
    assert done.returncode == 0, done.stderr
    assert "8 team items (2 need cloud)" in done.stdout and f'scorer = "learned:{model}"' in done.stdout
    scorer = load_scorer(f"learned:{model}")
    meta = scorer.model.meta  # type: ignore[attr-defined]
    assert (meta["team_examples"], meta["team_hard"]) == (8, 2) and meta["examples"] > 400
    html = tmp / "again.html"
    again = _hybrid("eval", "report", first_run["out"], "--html", html, "--workload", setup["workload"])
    assert again.returncode == 0 and "Worst items" in html.read_text()
