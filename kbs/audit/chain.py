"""How the two logs commit to their entries, and how a log is checked against its recorded head.

The release log (RELEASES, kept forever) is a Merkle tree (RFC 9162, kbs.audit.merkle; served and signed
as a transparency log, kbs.store.tlog):

    entry_hash = the entry's leaf hash, SHA-256(0x00 ‖ RFC 8785 JSON of the entry)    (prev_hash is "")
    head       = (size, the tree's root)

The refusal log (REFUSALS: refusals before a token exists, pruned from the front after a while) is a hash
chain, which survives pruning with an anchor:

    body_hash  = SHA-256(RFC 8785 JSON of the entry, without seq and hashes)
    entry_hash = SHA-256(prev_hash ‖ body_hash)           (hex strings, ASCII)

The first entry's prev_hash is the chain's anchor: GENESIS for a chain never pruned, else the hash of the
last entry pruned.  Verifying walks from the first entry and must end at the head the store recorded, so
an edited, inserted, reordered or deleted entry (the newest included) is found.  Anyone can recompute
the hashes; the per-row MACs (store.integrity) make recomputing them useless to someone without the KEK,
and the release log's signed checkpoints make it useless to anyone at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kbs import canonical as jcs
from kbs.audit import merkle

GENESIS = "0" * 64
RELEASES = "release"  # every resource decision for an attested caller, every admin change: kept forever
REFUSALS = "refusal"  # refusals before a valid token exists (auth, attest, bad tokens): kept for a while
CHAINS = (RELEASES, REFUSALS)
TREES = frozenset({RELEASES})  # logs kept as a Merkle tree rather than a chain
TREE_PREV = ""  # a tree entry's prev_hash: it commits to nothing before it (the tree's root does)


def body_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(jcs.dumps(dict(body))).hexdigest()


def canonical(body: Mapping[str, Any]) -> bytes:
    """The entry's RFC 8785 form: what its body hash covers, and (release log) the Merkle tree's leaf."""
    return jcs.dumps(dict(body))


def entry_hash(prev_hash: str, body_digest: str) -> str:
    return hashlib.sha256((prev_hash + body_digest).encode()).hexdigest()


def empty_head_hash(chain: str) -> str:
    return merkle.EMPTY_ROOT.hex() if chain in TREES else GENESIS


def hashes_for(chain: str, head_hash: str, leaf: bytes) -> tuple[str, str]:
    """(prev_hash, entry_hash) of an entry appended after `head_hash`, its canonical form `leaf`."""
    if chain in TREES:
        return TREE_PREV, merkle.leaf_hash(leaf).hex()
    return head_hash, entry_hash(head_hash, hashlib.sha256(leaf).hexdigest())


def entry_matches(chain: str, prev_hash: str, hashed: str, body: Mapping[str, Any]) -> bool:
    """The entry's stored hash is the hash of its content (its place is `verify`'s to check)."""
    return hashes_for(chain, prev_hash, canonical(body)) == (prev_hash, hashed)


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
    """Check (seq, body, prev_hash, entry_hash) rows in order from the first to the head."""
    if head.chain in TREES:
        return _verify_tree(head, entries)
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


def _verify_tree(head: Head, entries: Iterable[tuple[int, Mapping[str, Any], str, str]]) -> int:
    """Every entry's leaf hash, nothing missing or added, and the root over them all is the recorded head's."""
    builder, expected_seq = merkle.RootBuilder(), 1
    for seq, body, prev_hash, hashed in entries:
        if seq != expected_seq:
            raise ChainBroken(seq, f"{head.chain} log entry {expected_seq} is missing (found {seq} next)")
        if prev_hash != TREE_PREV or merkle.leaf_hash(canonical(body)).hex() != hashed:
            raise ChainBroken(seq, f"{head.chain} log entry {seq} does not match its leaf hash")
        builder.push(bytes.fromhex(hashed))
        expected_seq = seq + 1
    if builder.size != head.head_seq:
        raise ChainBroken(None, f"{head.chain} log ends at entry {builder.size}, but its recorded head is entry "
                          f"{head.head_seq}: entries were removed from its end")
    if builder.root().hex() != head.head_hash:
        raise ChainBroken(None, f"the {head.chain} log's entries do not give the root its recorded head holds")
    return head.entries
