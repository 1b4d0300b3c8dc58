"""API keys that map a request to its tenant. Only SHA-256 digests are stored.

When at least one key exists, every export request must carry a valid key
(`Authorization: Bearer <key>` or `x-agentwatch-api-key: <key>`), and the
key's tenant overrides whatever tenant the spans claim.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time

from clickhouse_connect.driver.client import Client

KEY_PREFIX = "aw_"
log = logging.getLogger(__name__)


class KeysUnavailable(Exception):
    """The key table could not be read yet: answer 503 so the exporter retries."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(client: Client, tenant: str, name: str = "") -> str:
    """Store a new key for `tenant`; the key itself is returned once and never stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    client.insert("api_keys", [[digest(key), tenant, name]], column_names=["KeyHash", "Tenant", "Name"])
    return key


def revoke_key(client: Client, key_or_digest: str) -> None:
    hashed = key_or_digest if len(key_or_digest) == 64 and not key_or_digest.startswith(KEY_PREFIX) \
        else digest(key_or_digest)
    rows = client.query("SELECT Tenant, Name FROM api_keys FINAL WHERE KeyHash = %(h)s", {"h": hashed}).result_rows
    for tenant, name in rows:
        client.insert("api_keys", [[hashed, tenant, name, True]], column_names=["KeyHash", "Tenant", "Name", "Revoked"])


class KeyStore:
    """Digest -> tenant, reloaded from the store every `refresh_s` seconds."""

    def __init__(self, client: Client, refresh_s: float = 10.0):
        self._client = client
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._keys: dict[str, str] | None = None
        self._loaded_at = 0.0

    def _load(self) -> None:
        try:
            rows = self._client.query("SELECT KeyHash, Tenant FROM api_keys FINAL WHERE NOT Revoked").result_rows
        except Exception as error:
            # Keep serving with the keys last read; with none read yet, refuse retryably.
            log.warning("cannot read API keys: %s", error)
            if self._keys is None:
                raise KeysUnavailable(str(error)) from None
            self._loaded_at = time.monotonic()
            return
        self._keys = dict(rows)
        self._loaded_at = time.monotonic()

    def keys(self) -> dict[str, str]:
        if time.monotonic() - self._loaded_at > self._refresh_s:
            with self._lock:
                if time.monotonic() - self._loaded_at > self._refresh_s:
                    self._load()
        return self._keys

    def refresh(self) -> None:
        with self._lock:
            self._load()

    def tenant_for(self, header_value: str | None) -> tuple[bool, str | None]:
        """(allowed, tenant). With no keys configured every request is allowed, tenant None."""
        keys = self.keys()
        if not keys:
            return True, None
        if not header_value:
            return False, None
        key = header_value.removeprefix("Bearer ").removeprefix("bearer ").strip()
        tenant = keys.get(digest(key))
        return (tenant is not None), tenant
