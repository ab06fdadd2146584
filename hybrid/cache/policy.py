"""Per-request cache policy: what may be read and written, for how long, and in which scope."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

from hybrid.protocol import InferenceRequest

_NAMESPACE_OK = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


@dataclass(frozen=True)
class CachePolicy:
    read: bool
    write: bool
    ttl_s: float
    max_age_s: float | None  # only accept entries at most this old
    scope: str  # tenant (or "shared") + namespace, hashed: entries never cross it
    namespace: str
    reason: str  # why not, when neither read nor write


@functools.lru_cache(maxsize=4096)
def _scope(owner: str, namespace: str) -> str:
    return hashlib.sha256(f"{owner}\x00{namespace}".encode()).hexdigest()[:24]


def parse_cache_control(value: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for part in value.split(","):
        name, _, arg = part.strip().partition("=")
        if name:
            out[name.lower()] = arg.strip().strip('"') or None
    return out


def decide(
    req: InferenceRequest,
    tenant: str,
    cache_control: str | None,
    namespace: str | None,
    default_ttl_s: float,
    deterministic_only: bool,
    shared_models: list[str],
) -> CachePolicy:
    cc = parse_cache_control(cache_control) if cache_control else {}
    ns = namespace if namespace and _NAMESPACE_OK.match(namespace) else "default"
    owner = "shared" if req.model in shared_models else tenant
    scope = _scope(owner, ns)
    ttl = default_ttl_s
    max_age = None
    if "max-age" in cc and cc["max-age"] is not None and cc["max-age"].isdigit():
        ttl = float(cc["max-age"])
        max_age = ttl
    if "no-store" in cc:
        return CachePolicy(False, False, ttl, max_age, scope, ns, "no-store")
    deterministic = req.temperature == 0 or req.seed is not None
    if deterministic_only and not deterministic:
        return CachePolicy(False, False, ttl, max_age, scope, ns, "not-deterministic")
    if "no-cache" in cc:
        return CachePolicy(False, True, ttl, max_age, scope, ns, "no-cache")
    return CachePolicy(True, ttl > 0, ttl, max_age, scope, ns, "")
