"""The ``hybrid`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hybrid.config import Config, ConfigError, load_config


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hybrid.server import create_app

    cfg: Config = load_config(args.config)
    _check_models(cfg)
    if args.host:
        cfg.server.host = args.host
    if args.port is not None:
        cfg.server.port = args.port
    if args.log_level:
        cfg.server.log_level = args.log_level
    logging.basicConfig(level=cfg.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("hybrid")
    log.info("config: %s; backends: %s", cfg.source, ", ".join(f"{b.name} ({b.kind}, tier {b.tier})" for b in cfg.backends))
    for note in cfg.notes:
        log.info("%s", note)
    if not cfg.server.api_keys and cfg.server.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("no server.api_keys configured and listening on %s: anyone who reaches it can use it", cfg.server.host)
    from hybrid.edge import GuardedHttpToolsProtocol, configure

    server = cfg.server
    configure(server.max_header_bytes, server.header_timeout_s, server.max_connections)
    uvicorn.run(
        create_app(cfg),
        host=cfg.server.host,
        port=cfg.server.port,
        loop="uvloop",
        http=GuardedHttpToolsProtocol,
        timeout_keep_alive=server.keepalive_s,  # type: ignore[arg-type]  # uvicorn takes seconds as a float too
        log_level=cfg.server.log_level,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def _check_models(cfg: Config) -> None:
    """Fail at start, with one line, for a local model that cannot be found (assembles the bundled one)."""
    from hybrid.backends.gguf import resolve_gguf

    for i, b in enumerate(cfg.backends):
        if b.kind == "llamacpp":
            try:
                path = resolve_gguf(b.model)
            except ConfigError as exc:
                raise ConfigError(f"{cfg.source}: backends[{i}].model: {exc}") from None
            if b.chat_format == "jinja" and not _has_chat_template(path):
                raise ConfigError(f"{cfg.source}: backends[{i}].chat_format: 'jinja', but {path.name} carries no "
                                  "chat template (use gemma or chatml)")


def _has_chat_template(path: Path) -> bool:
    from llama_cpp import Llama
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):  # libllama writes its load notes to stderr
        vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return bool(vocab.metadata.get("tokenizer.chat_template"))
    finally:
        vocab.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybrid", description="Local-plus-cloud LLM inference router.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the OpenAI-compatible endpoint")
    serve.add_argument("--config", "-c", help="TOML config file (default: the embedded default, bundled model on CPU)")
    serve.add_argument("--host", help="bind address (overrides server.host)")
    serve.add_argument("--port", type=int, help="port (overrides server.port)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=_serve)
    probe = sub.add_parser("probe", help="probe the hardware and plan the local tier (same as scripts/probe_hardware.py)")
    from hardware.cli import add_arguments, run

    add_arguments(probe)
    probe.set_defaults(func=run)
    cache = sub.add_parser("cache", help="inspect, clear or export the response cache")
    from hybrid.cache import cli as cache_cli

    cache_cli.add_arguments(cache)
    cache.set_defaults(func=cache_cli.run)
    report = sub.add_parser("report", help="what requests cost and saved, per tier, model, key or tag, from the ledger")
    from hybrid.ledger import report as report_cli

    report_cli.add_arguments(report)
    report.set_defaults(func=report_cli.run)
    evaluate = sub.add_parser("eval", help="quality, cost and latency of targets on a workload, through the router; "
                              "compare, calibrate, fit, report")
    from hybrid.evals import cli as eval_cli

    eval_cli.add_arguments(evaluate)
    evaluate.set_defaults(func=eval_cli.run)
    bench = sub.add_parser("bench", help="load-test any OpenAI-compatible endpoint: throughput, latency, TTFT")
    from hybrid.evals import loadgen

    loadgen.add_arguments(bench)
    bench.set_defaults(func=loadgen.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from hybrid.evals.cli import normalise_argv

    parser = build_parser()
    args = parser.parse_args(normalise_argv(list(sys.argv[1:] if argv is None else argv)))
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"hybrid: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
