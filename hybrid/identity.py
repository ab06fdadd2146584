"""Who a caller is, without keeping its key: the keyed hash that names an API key in the cache, the ledger,
rate limits and budgets."""

from __future__ import annotations

import hashlib
import hmac


def key_id(api_key: str, secret: str = "") -> str:
    """A key's stable id: a keyed hash, never the key or its position in the config. ``secret``
    (``server.tenant_secret``) makes the ids unguessable from a guessed key."""
    digest = hmac.new(("hybrid-tenant\x00" + secret).encode(), api_key.encode(), hashlib.sha256).hexdigest()
    return "key:" + digest[:20]
