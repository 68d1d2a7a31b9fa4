"""Identifiers the broker makes for the rows a guest's exchange inserts (sessions, attestations).

Time-ordered, like a UUIDv7: 48 bits of milliseconds since the epoch, then 80 random bits, as 32 hex digits.
Each is the key of a B-tree index (a session id's insert is what makes a nonce single-use); with random ids
every insert landed on a random leaf page, so each write of a group-commit batch brought its own pages into
the batch's WAL write and fsync (and into every checkpoint after it), and on a large table its own cache miss.
Ids made in the same period share the index's right edge instead.  Nothing relies on these ids being
unpredictable: a session travels in a MAC'd cookie and its nonce is random on its own; they need only be
unique (80 random bits within a millisecond).
"""

from __future__ import annotations

import secrets
import time


def time_ordered_id() -> str:
    """32 hex digits: the time in milliseconds (48 bits), then 80 random bits; later ids sort after earlier ones
    (to the millisecond)."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"
