"""``hybrid cache stats | clear [--namespace N] | export``: the configured cache store, directly."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from hybrid.config import Config, load_config


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("action", choices=["stats", "clear", "export"])
    ap.add_argument("--config", "-c", help="TOML config file (default: the embedded default)")
    ap.add_argument("--namespace", help="clear only this namespace (x-hybrid-cache-namespace)")


async def _run(cfg: Config, action: str, namespace: str | None) -> int:
    from hybrid.cache.cache import build_cache

    cfg.cache.semantic = False  # administration needs no embedding model
    cache = build_cache(cfg)
    if cache is None:
        print("the cache is off in this config (cache.backend = \"off\")", file=sys.stderr)
        return 1
    store = cache.store
    await store.start()
    try:
        if action == "stats":
            print(json.dumps(await store.stats(), indent=2))
        elif action == "clear":
            removed = await store.clear(namespace)
            print(f"removed {removed} entr{'y' if removed == 1 else 'ies'}"
                  + (f" from namespace {namespace!r}" if namespace else ""))
        else:
            async for row in store.export():
                sys.stdout.write(json.dumps(row) + "\n")
    finally:
        await store.close()
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(load_config(args.config), args.action, args.namespace))
