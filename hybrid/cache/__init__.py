"""The shared response cache: exact and semantic layers over SQLite (embedded) or Redis (shared)."""

from hybrid.cache.cache import CacheLookup, ResponseCache, build_cache

__all__ = ["CacheLookup", "ResponseCache", "build_cache"]
