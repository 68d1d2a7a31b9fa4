"""The hash chain of a log: each entry commits to everything before it.

    body_hash  = SHA-256(RFC 8785 JSON of the entry, without seq and hashes)
    entry_hash = SHA-256(prev_hash ‖ body_hash)           (hex strings, ASCII)

The first entry's prev_hash is the chain's anchor: GENESIS for a log never pruned, else the
hash of the last entry pruned.  Verifying walks from the anchor and must end at the head the
store recorded, so an edited, inserted, reordered or deleted entry (the newest included) is
found.  Anyone can recompute the hashes; the per-row MACs (store.integrity) make recomputing
them useless to someone without the KEK.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import rfc8785

GENESIS = "0" * 64
RELEASES = "release"  # every resource decision for an attested caller, every admin change: kept forever
REFUSALS = "refusal"  # refusals before a valid token exists (auth, attest, bad tokens): kept for a while
CHAINS = (RELEASES, REFUSALS)


def body_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(rfc8785.dumps(dict(body))).hexdigest()


def canonical(body: Mapping[str, Any]) -> bytes:
    """The entry's RFC 8785 form: what its body hash covers, and (release log) the Merkle tree's leaf."""
    return rfc8785.dumps(dict(body))


def entry_hash(prev_hash: str, body_digest: str) -> str:
    return hashlib.sha256((prev_hash + body_digest).encode()).hexdigest()


@dataclass(frozen=True)
class Head:
    """Where a chain stands: the anchor it starts from and its newest entry."""

    chain: str
    first_seq: int  # the oldest entry kept (head_seq + 1 when empty)
    anchor_hash: str
    head_seq: int
    head_hash: str

    @property
    def entries(self) -> int:
        return self.head_seq - self.first_seq + 1

    def to_json(self) -> dict[str, Any]:
        return {"chain": self.chain, "first_seq": self.first_seq, "anchor_hash": self.anchor_hash,
                "head_seq": self.head_seq, "head_hash": self.head_hash, "entries": self.entries}


class ChainBroken(Exception):
    def __init__(self, seq: int | None, message: str) -> None:
        super().__init__(message)
        self.seq = seq


def verify(head: Head, entries: Iterable[tuple[int, Mapping[str, Any], str, str]]) -> int:
    """Check (seq, body, prev_hash, entry_hash) rows in order from the anchor to the head."""
    prev, expected_seq = head.anchor_hash, head.first_seq
    for seq, body, prev_hash, hashed in entries:
        if seq != expected_seq:
            raise ChainBroken(seq, f"{head.chain} log entry {expected_seq} is missing (found {seq} next)")
        if prev_hash != prev or entry_hash(prev, body_hash(body)) != hashed:
            raise ChainBroken(seq, f"{head.chain} log entry {seq} does not match the hash chain")
        prev, expected_seq = hashed, seq + 1
    if expected_seq - 1 != head.head_seq or prev != head.head_hash:
        raise ChainBroken(None, f"{head.chain} log ends at entry {expected_seq - 1}, but its recorded head is "
                          f"entry {head.head_seq}: entries were removed from its end")
    return head.entries
