"""``hybrid eval``: run a workload against targets through the router, compare runs, calibrate the routing
threshold, retrain the scorer on the team's own graded items, and render the HTML report."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from hybrid.config import Config, default_config, load_config

SUBCOMMANDS = ("run", "compare", "calibrate", "fit", "report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="eval_command", required=True)
    run = sub.add_parser("run", help="run WORKLOAD against targets (the default: `hybrid eval WORKLOAD ...`)")
    run.add_argument("workload", help="JSONL workload (see workloads/)")
    run.add_argument("--targets", required=True,
                     help="comma-separated models to ask through the router: tiers (local, cloud), auto, model ids")
    run.add_argument("--url", default=os.environ.get("HYBRID_URL", "http://127.0.0.1:8000/v1"),
                     help="the router's OpenAI base URL (default: $HYBRID_URL or http://127.0.0.1:8000/v1)")
    run.add_argument("--api-key", default=os.environ.get("HYBRID_API_KEY", ""),
                     help="a key of the router's server.api_keys (default: $HYBRID_API_KEY)")
    run.add_argument("--config", "-c", help="the router's config: prices, scorer and tiers (default: embedded)")
    run.add_argument("--concurrency", type=int, default=4, help="requests in flight per target (default 4)")
    run.add_argument("--judge", help="the target that grades `judge` items (e.g. cloud)")
    run.add_argument("--out", default="eval-results.json", help="results JSON (default eval-results.json)")
    run.add_argument("--html", help="also write the HTML report here")
    run.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    run.add_argument("--no-stream", action="store_true", help="ask for whole answers (no time to first token)")
    _calibration_arguments(run)
    run.set_defaults(func=_run)

    cmp = sub.add_parser("compare", help="compare two results files; exit 1 on a quality regression")
    cmp.add_argument("old")
    cmp.add_argument("new")
    cmp.set_defaults(func=_compare)

    cal = sub.add_parser("calibrate", help="the threshold that reaches a target quality at the lowest cost")
    cal.add_argument("results")
    cal.add_argument("--config", "-c", help="the config --write-threshold edits")
    _calibration_arguments(cal)
    cal.set_defaults(func=_calibrate)

    fit = sub.add_parser("fit", help="retrain the routing scorer with the team's graded items")
    fit.add_argument("results")
    fit.add_argument("--workload", help="the workload the results came from (default: the path they name)")
    fit.add_argument("--cheap", default="local")
    fit.add_argument("--capable", default="cloud")
    fit.add_argument("--margin", type=float, default=0.5,
                     help="capable minus cheap grade at which an item needs the capable tier (default 0.5)")
    fit.add_argument("--team-weight", type=float, default=2.0, help="weight of a team item against a shipped one")
    fit.add_argument("--no-embedding", action="store_true", help="train the lexical head only")
    fit.add_argument("--out", required=True, help="where to write the model (scorer.json)")
    fit.set_defaults(func=_fit)

    rep = sub.add_parser("report", help="render a results file as HTML")
    rep.add_argument("results")
    rep.add_argument("--html", required=True)
    rep.add_argument("--workload", help="the workload, to show prompts and references (default: the path named)")
    rep.set_defaults(func=_report)


def _calibration_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cheap", help="the cheap target for calibration (default: routing.simple_tier)")
    p.add_argument("--capable", help="the capable target for calibration (default: routing.complex_tier)")
    p.add_argument("--target-quality", type=float, default=0.95,
                   help="the share of the capable target's quality to reach (default 0.95)")
    p.add_argument("--write-threshold", action="store_true",
                   help="write the chosen threshold into --config's [routing] complexity_threshold")


def normalise_argv(argv: list[str]) -> list[str]:
    """``hybrid eval WORKLOAD ...`` is ``hybrid eval run WORKLOAD ...``."""
    if "eval" in argv:
        i = argv.index("eval")
        rest = argv[i + 1 :]
        if rest and rest[0] not in SUBCOMMANDS and rest[0] not in ("-h", "--help"):
            return argv[: i + 1] + ["run"] + rest
    return argv


def _config(path: str | None) -> Config:
    return load_config(path) if path else default_config()


def _scores(cfg: Config, items: list[Any]) -> dict[str, float]:
    """The configured scorer's score of each item, as the router computes it for `auto` in production: with the
    semantic cache on (and its local MiniLM), a learned scorer also reads the embedding the cache computes."""
    from hybrid.protocol import parse_chat_request
    from hybrid.routing.features import extract_features
    from hybrid.routing.scoring import load_scorer

    scorer = load_scorer(cfg.routing.scorer)
    requests = {}
    for item in items:
        try:
            requests[item.id] = parse_chat_request({"model": "auto", "messages": item.messages})
        except Exception:  # an item the router would refuse: it is graded as an error anyway
            continue
    vectors: dict[str, Any] = {}
    if cfg.cache.backend != "off" and cfg.cache.semantic and cfg.cache.embedder == "local" \
            and getattr(getattr(scorer, "model", None), "embedding", None) is not None:
        from hybrid.cache.keys import conversation_text
        from hybrid.routing.training import embed_texts

        ids = list(requests)
        rows = embed_texts([conversation_text(requests[i]) for i in ids])
        if rows is not None:
            vectors = {i: row.astype("float32") for i, row in zip(ids, rows)}
    return {i: round(float(scorer.score(extract_features(req, vectors.get(i)))), 6) for i, req in requests.items()}


def _calibration(cfg: Config, args: argparse.Namespace, targets: list[str], results: list[Any],
                 scores: dict[str, float]) -> dict[str, Any] | None:
    from hybrid.evals.calibrate import calibrate, pair_results, write_threshold

    cheap = args.cheap or cfg.routing.simple_tier
    capable = args.capable or cfg.routing.complex_tier
    if cheap not in targets or capable not in targets or cheap == capable:
        if args.cheap or args.capable or args.write_threshold:
            raise SystemExit(f"hybrid eval: calibration needs both {cheap!r} and {capable!r} among the targets")
        return None
    rows = pair_results(results, scores, cheap, capable)
    if not rows:
        print(f"calibration: no item was graded on both {cheap} and {capable}", file=sys.stderr)
        return None
    cal = calibrate(rows, cheap, capable, args.target_quality)
    if args.write_threshold:
        if not getattr(args, "config", None):
            raise SystemExit("hybrid eval: --write-threshold needs --config (the file to write)")
        if cal.chosen is None:
            raise SystemExit("hybrid eval: no threshold reaches the target quality; nothing written")
        write_threshold(args.config, cal.chosen.threshold)
        print(f"wrote routing.complexity_threshold = {cal.chosen.threshold:.4f} to {args.config}")
    return cal.to_json()


def _prompts(workload_path: str | None) -> tuple[dict[str, str], dict[str, str]]:
    from hybrid.evals.workload import WorkloadError, load_workload

    if not workload_path or not Path(workload_path).exists():
        return {}, {}
    try:
        w = load_workload(workload_path)
    except WorkloadError:
        return {}, {}
    def shown(item: Any) -> str:
        if item.grader.kind == "regex":
            return f"/{item.grader.options.get('pattern', item.reference)}/"
        if item.reference is None or isinstance(item.reference, str):
            return item.reference or ""
        return json.dumps(item.reference, ensure_ascii=False)

    return {i.id: i.prompt_text for i in w.items}, {i.id: shown(i) for i in w.items}


def _run(args: argparse.Namespace) -> int:
    from hybrid.costs import Costing
    from hybrid.evals import report_html
    from hybrid.evals.results import document, save, text_summary
    from hybrid.evals.runner import EvalRun, Progress, run_eval
    from hybrid.evals.workload import WorkloadError, load_workload

    cfg = _config(args.config)
    try:
        workload = load_workload(args.workload)
    except (WorkloadError, OSError) as exc:
        print(f"hybrid eval: {exc}", file=sys.stderr)
        return 2
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets or len(set(targets)) != len(targets):
        print("hybrid eval: --targets needs distinct names", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print("hybrid eval: --concurrency must be at least 1", file=sys.stderr)
        return 2
    if any(i.grader.kind == "judge" for i in workload.items) and not args.judge:
        print("hybrid eval: the workload has judge items: name the judge with --judge TARGET", file=sys.stderr)
        return 2
    run = EvalRun(workload, targets, args.url, args.api_key, args.concurrency, args.judge, args.timeout,
                  not args.no_stream)
    scores = _scores(cfg, workload.items)
    progress = Progress({t: len(workload.items) for t in targets})
    started = time.monotonic()
    results = asyncio.run(run_eval(run, Costing(cfg.costs, cfg.backends), progress))
    calibration = _calibration(cfg, args, targets, results, scores)
    doc = document(workload_path=args.workload, workload_sha256=workload.sha256, targets=targets, judge=args.judge,
                   router=args.url, config_path=args.config, scorer=cfg.routing.scorer, results=results,
                   scores=scores, calibration=calibration, elapsed_s=time.monotonic() - started)
    save(doc, args.out)
    print(text_summary(doc))
    print(f"\nresults: {args.out}")
    if args.html:
        prompts, refs = _prompts(args.workload)
        Path(args.html).write_text(report_html.render(doc, prompts, refs), "utf-8")
        print(f"report: {args.html}")
    if not any(r.score is not None for r in results):
        first = next((r.error for r in results if r.error), "?")
        print(f"hybrid eval: nothing was graded; the first error: {first}", file=sys.stderr)
        return 1
    return 0


def _load(path: str) -> dict[str, Any]:
    from hybrid.evals.results import load_document

    try:
        return load_document(path)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"hybrid eval: {exc}") from None


def _compare(args: argparse.Namespace) -> int:
    from hybrid.evals.compare import compare, render

    rows, regressed = compare(_load(args.old), _load(args.new))
    if not rows:
        print("hybrid eval compare: the two runs share no target", file=sys.stderr)
        return 2
    print(render(rows, args.old, args.new))
    return 1 if regressed else 0


def _calibrate(args: argparse.Namespace) -> int:
    from hybrid.evals.results import item_results, save, text_summary

    doc = _load(args.results)
    cfg = _config(args.config)
    doc["calibration"] = _calibration(cfg, args, doc["targets"], item_results(doc), doc["scores"])
    if doc["calibration"] is None:
        print("hybrid eval calibrate: name --cheap and --capable targets of this run", file=sys.stderr)
        return 2
    save(doc, args.results)
    print(text_summary(doc).split("\n\n")[-1])
    return 0


def _fit(args: argparse.Namespace) -> int:
    from hybrid.evals.fit import fit_team_model, team_examples
    from hybrid.evals.workload import WorkloadError, load_workload

    doc = _load(args.results)
    try:
        workload = load_workload(args.workload or doc["workload"]["path"])
    except (WorkloadError, OSError) as exc:
        print(f"hybrid eval fit: {exc}", file=sys.stderr)
        return 2
    team = team_examples(doc, workload, args.cheap, args.capable, args.margin, args.team_weight)
    try:
        model = fit_team_model(team, not args.no_embedding, progress=print)
    except ValueError as exc:
        print(f"hybrid eval fit: {exc}", file=sys.stderr)
        return 2
    Path(args.out).write_bytes(model.to_bytes() + b"\n")
    print(f"{len(team)} team items ({sum(e.label for e in team)} need {args.capable}); model: {args.out}")
    print(f'use it with: [routing] scorer = "learned:{Path(args.out).resolve()}"')
    return 0


def _report(args: argparse.Namespace) -> int:
    from hybrid.evals import report_html

    doc = _load(args.results)
    prompts, refs = _prompts(args.workload or doc["workload"]["path"])
    Path(args.html).write_text(report_html.render(doc, prompts, refs), "utf-8")
    print(f"report: {args.html}")
    return 0


def run(args: argparse.Namespace) -> int:
    """The chosen subcommand (a bad config is reported by the `hybrid` command itself)."""
    return int(args.func(args))
