"""Connections to a configured upstream (a backend's API, an embeddings service): its URL, key, timeouts, CA
file and proxy, as one :class:`~hybrid.http1.Pool`. Shared by the backends and the cache's embedder."""

from __future__ import annotations

import logging
import os
import ssl
from urllib.parse import urlsplit

from hybrid import http1
from hybrid.config import BackendConfig

log = logging.getLogger("hybrid.upstream")


def upstream_pool(cfg: BackendConfig, url: str, name: str, headers: dict[str, str] | None = None) -> http1.Pool:
    """Connections to ``url`` as a backend's config says: JSON requests with its key (``api_key_env``) as a bearer
    token, its connect timeout, CA file and proxy (its own ``proxy``, else the environment's, unless "none")."""
    headers = {"content-type": "application/json", **(headers or {})}
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env)
        if key:
            headers["authorization"] = f"Bearer {key}"
        else:
            log.warning("%s: %s is not set; sending no API key", name, cfg.api_key_env)
    context = None
    if cfg.ca_file:
        context = ssl.create_default_context()
        context.load_verify_locations(os.path.expanduser(cfg.ca_file))
    proxy = None if cfg.proxy == "none" else cfg.proxy or http1.proxy_from_environment(url)
    if proxy:
        log.info("%s: %s through the proxy %s", name, url, urlsplit(proxy).netloc.rpartition("@")[2])
    return http1.Pool(url, headers=headers, connect_timeout_s=cfg.connect_timeout_s, ssl_context=context,
                      name=name, proxy=proxy, max_connections=cfg.max_connections,
                      read_timeout_s=cfg.read_timeout_s)
