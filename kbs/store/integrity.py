"""Row authentication: whoever holds the database file cannot forge or edit what decides a release.

Every security-relevant row (policy versions, resources' metadata and bindings, reference sets,
stored claims, log entries and log heads) carries an HMAC-SHA256 under a key derived from the
KEK, which never touches the database.  The MAC covers the row's table and identity, so a valid
row cannot be moved to another table or renamed.  Rows are checked when read; a row that fails
stops the operation (fail closed) with an error naming it.

What MACs cannot stop: replaying an older, authentic copy of the database (a rollback).  The
release log's signed checkpoints, which key owners and witnesses keep elsewhere (`kbs log verify
--checkpoint`), show that.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from kbs import canonical
from kbs.store.base import StoreError

ROW_MAC_PURPOSE = "row-mac"


class StoreIntegrityError(StoreError):
    """A row does not authenticate: it was written or changed by something other than the broker."""

    check = "store.integrity"


def digest(data: bytes | str) -> str:
    """SHA-256 hex of bulky columns (sealed values, policy text, claims): MACs cover their digest."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


class RowAuthenticator:
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the row authentication key must be at least 32 bytes")
        self._key = key

    def mac(self, table: str, *values: Any) -> str:
        """HMAC over the canonical JSON (RFC 8785) of [table, *values]."""
        return hmac.new(self._key, canonical.dumps([table, *values]), hashlib.sha256).hexdigest()

    def check(self, mac: str | None, what: str, table: str, *values: Any) -> None:
        if mac is None or not hmac.compare_digest(mac, self.mac(table, *values)):
            raise StoreIntegrityError(f"{what} fails authentication: it was written or changed outside the "
                                      "broker (or under another key encryption key); refusing to use it")
