"""The release log as a transparency log: its Merkle tree and signed checkpoints, in the store, for every backend.

Leaf i of the tree is the release log's entry seq i+1, as RFC 8785 canonical JSON of its body (what
`tile/entries` serves and verifiers hash).  Appending an entry stores, in the same transaction, its leaf
hash and the hash of every subtree it completes (`log_tree`: level, index, hash; kbs.audit.merkle), so a
tree head or a proof reads O(log n) rows and the stored levels are the hashes tlog-tiles serves.  The
tree's rows carry no MAC: nobody needs to trust them.  Verifiers recompute them from the entries, and the
checkpoints (`log_checkpoints`, signed by the log's key, which the database holds only sealed under the
KEK) are what they compare against; a database edited outside the broker cannot produce a signed
checkpoint consistent with the ones already published.

Written once over `kbs.store.kek_state.Sql` (an open transaction, `?` placeholders).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kbs.audit import chain as chains
from kbs.audit import merkle
from kbs.audit.chain import RELEASES, TREES, Head, canonical
from kbs.audit.merkle import HashReader
from kbs.store.base import ReleaseRecord, StoredCheckpoint
from kbs.store.integrity import StoreIntegrityError
from kbs.store.kek_state import Sql, pages
from kbs.store.rows import Rows, log_table


def leaf_bytes(record: ReleaseRecord) -> bytes:
    """An entry as the tree commits to it and entry bundles serve it."""
    return canonical(record.body())


def reader(sql: Sql) -> HashReader:
    """Stored hashes by (level, index), all of one call in one statement (a tree head needs a handful)."""
    def read(wanted: Sequence[tuple[int, int]]) -> list[bytes]:
        if not wanted:
            return []
        where = " OR ".join("(level = ? AND idx = ?)" for _ in wanted)  # each an index lookup
        args = tuple(v for pair in wanted for v in pair)
        return _wanted(sql.rows(f"SELECT level, idx, hash FROM log_tree WHERE {where}", args), wanted)
    return read


def _wanted(rows: Sequence[Any], wanted: Sequence[tuple[int, int]]) -> list[bytes]:
    """The hashes at `wanted` (level, index) among `log_tree` rows read for them, each one there."""
    found = {(int(r["level"]), int(r["idx"])): bytes(r["hash"]) for r in rows}
    missing = [pair for pair in wanted if pair not in found]
    if missing:
        raise StoreIntegrityError(f"the release log's tree has no hash at level {missing[0][0]} index "
                                  f"{missing[0][1]}: it was changed outside the broker")
    return [found[pair] for pair in wanted]


def _edge_builder(index: int, hashes: Sequence[bytes], root: str | None) -> merkle.RootBuilder:
    """The builder of the tree before leaf `index`, from its right edge's hashes, its root checked against
    `root` (the recorded head's) when given."""
    builder = merkle.RootBuilder.from_edge(index, hashes)
    if root is not None and builder.root().hex() != root:
        raise StoreIntegrityError("the release log's tree does not give the root its recorded head holds: it "
                                  "was changed outside the broker")
    return builder


def begun_tail(head: Head, newest: tuple[int, str] | None, edge_rows: Sequence[Any]) -> Tail:
    """Where a log stands as a batch begins, from what the store read with the batch's BEGIN (its head, its
    newest row and, for the release log, the tree's `log_tree` rows on the head's right edge), checked as
    `append_entry` checks what it reads itself."""
    check_head(head, newest)
    if head.chain not in TREES:
        return Tail(head, None)
    wanted = merkle.right_edge(head.head_seq)
    return Tail(head, _edge_builder(head.head_seq, _wanted(edge_rows, wanted), head.head_hash))


def append(sql: Sql, index: int, entry: bytes, root: str | None = None,
           builder: merkle.RootBuilder | None = None) -> merkle.RootBuilder:
    """Store leaf `index` (its predecessors stored) and the subtrees it completes; the tree's builder after it.
    One read: the tree's right edge, which gives the root before (checked against `root`, the head's, when
    given), the left siblings the new leaf completes subtrees with, and the root after; none when `builder`
    (the edge this transaction itself left) is given."""
    if builder is None:
        builder = _edge_builder(index, reader(sql)(merkle.right_edge(index)), root)
    stored = builder.push(merkle.leaf_hash(entry))  # the leaf and the subtrees it completes: one insert
    sql.insert("log_tree (level, idx, hash)", stored)
    return builder


@dataclass(frozen=True)
class Tail:
    """Where a log stands after an append inside the open transaction: its head and, for the release log, its
    tree's right edge.  The next append in the same transaction (a group commit's batch) starts from it rather
    than re-reading and re-checking what the transaction itself wrote."""

    head: Head
    tree: merkle.RootBuilder | None


class Tails:
    """Each log's Tail inside a store's open batch (a group commit's transaction): the batch's first append of a
    log reads and checks its head (and tree edge), the others start from where the previous one left it.  The
    head row itself is written once per log at the end of the batch (`write_heads`), or before anything in the
    batch reads it, not after every append."""

    def __init__(self) -> None:
        self._by_chain: dict[str, Tail] = {}
        self._unwritten: set[str] = set()
        self._begun: dict[str, Callable[[], Tail]] = {}  # read with the batch's BEGIN, checked at first use

    def reset(self) -> None:
        """A batch begins or ends: nothing is known."""
        self._by_chain = {}
        self._unwritten = set()
        self._begun = {}

    def begun(self, chain: str, tail: Callable[[], Tail]) -> None:
        """What the store read of a log with the batch's BEGIN: `tail` checks it (`begun_tail`) when an append
        first needs it, so a log found edited fails that append alone, not the batch's other writes."""
        self._begun[chain] = tail

    def start(self, chain: str, read_head: Callable[[], Head]) -> Head | Tail:
        known = self._by_chain.get(chain)
        if known is not None:
            return known
        begun = self._begun.get(chain)
        return begun() if begun is not None else read_head()

    def appended(self, tail: Tail) -> None:
        """An append inside the batch left the log at `tail`; its head row is not written yet."""
        self._by_chain[tail.head.chain] = tail
        self._unwritten.add(tail.head.chain)

    def write_heads(self, store_head: Callable[[Head], None], chain: str | None = None) -> None:
        """Write (with `store_head`, the store's own statement) each head that appends moved and nobody wrote
        yet, of `chain` or of every log: before the COMMIT, or before something in the batch reads it."""
        for name in sorted(self._unwritten) if chain is None else [chain] if chain in self._unwritten else []:
            store_head(self._by_chain[name].head)
            self._unwritten.discard(name)

    def moved(self, chain: str) -> None:
        """A head written other than by an append (a purge moves its anchor): read it again next time."""
        self._by_chain.pop(chain, None)
        self._unwritten.discard(chain)
        self._begun.pop(chain, None)

    @contextmanager
    def call(self) -> Iterator[None]:
        """One store call of the batch (a savepoint): if it fails, its appends (and any head it wrote) are undone,
        and so forgotten."""
        before, unwritten, begun = dict(self._by_chain), set(self._unwritten), dict(self._begun)
        try:
            yield
        except BaseException:
            self._by_chain, self._unwritten, self._begun = before, unwritten, begun
            raise


def append_entry(sql: Sql, rows: Rows, start: Head | Tail, record: ReleaseRecord) -> tuple[ReleaseRecord, Tail]:
    """Append `record` to the log whose recorded head is `start` (read, and on PostgreSQL locked, by the caller,
    who writes the new head it returns: at once, or at the end of its batch), or whose Tail this transaction
    left: the row with its hashes and MAC, and, for the release log, the tree's new leaf and subtrees.  Every
    backend, one transaction."""
    head = start.head if isinstance(start, Tail) else start
    chain = head.chain
    table = log_table(chain)
    if not isinstance(start, Tail):
        newest = sql.rows(f"SELECT seq, entry_hash FROM {table} ORDER BY seq DESC LIMIT 1")
        check_head(head, (int(newest[0]["seq"]), newest[0]["entry_hash"]) if newest else None)
    leaf = canonical(record.body())  # its RFC 8785 form, once: the chain's body hash or the tree's leaf
    prev, hashed = chains.hashes_for(chain, head.head_hash, leaf)
    seq = head.head_seq + 1
    sql.insert(f"{table} (seq, at, decision, reason, resource, version, session_id, tee, policy_id, policy_hash, "
               "attestation_id, ref, actor, detail, prev_hash, entry_hash, mac, evidence, tee_key, refs_hash)",
               [(seq, record.at.timestamp(), record.decision, record.reason, record.resource, record.version,
                 record.session_id, record.tee, record.policy_id, record.policy_hash, record.attestation_id,
                 record.ref, record.actor, record.detail, prev, hashed, rows.log_mac(chain, seq, prev, hashed),
                 record.evidence, record.tee_key, record.refs_hash)])
    tree = None
    if chain in TREES:
        known = start.tree.copy() if isinstance(start, Tail) and start.tree is not None else None
        tree = append(sql, seq - 1, leaf, head.head_hash, known)
    head_hash = tree.root().hex() if tree is not None else hashed
    return (record.updated(seq=seq, entry_hash=hashed),
            Tail(Head(chain, head.first_seq, head.anchor_hash, seq, head_hash), tree))


def check_head(head: Head, newest: tuple[int, str] | None) -> None:
    """Before an append: the log's newest row (seq, entry_hash) is what the recorded (MAC'd) head says (for the
    tree, its root is checked by `append` from the same read it appends with), so a log truncated or edited
    outside the broker stops every append (and so every release) until an operator looks."""
    if head.chain in TREES:
        seen = newest[0] if newest else head.first_seq - 1
        if seen != head.head_seq:
            raise StoreIntegrityError(f"the {head.chain} log's newest entry is {seen} but its recorded head is "
                                      f"{head.head_seq}: the log was changed outside the broker")
        return
    found = newest or (head.head_seq, head.head_hash)
    if found != (head.head_seq, head.head_hash):
        raise StoreIntegrityError(f"the {head.chain} log's newest entry is {found[0]} but its recorded head is "
                                  f"{head.head_seq}: the log was changed outside the broker")


def migrate(sql: Sql, rows: Rows) -> tuple[int, bytes]:
    """Schema 5: the release log's hash chain becomes the Merkle tree.  Each entry is checked first (its MAC and
    its place in the chain, from the head the store recorded), then rewritten with its leaf hash and a new MAC,
    and the head becomes (size, root).  Heads kept elsewhere from before name chain hashes: the log's
    checkpoints replace them."""
    head_rows = sql.rows("SELECT * FROM log_heads WHERE chain = ?", (RELEASES,))
    head = rows.head(RELEASES, head_rows[0] if head_rows else None)
    first = sql.rows("SELECT prev_hash FROM release_log ORDER BY seq LIMIT 1")
    if first and first[0]["prev_hash"] == chains.TREE_PREV:  # already a tree (a database set back by hand)
        return head.head_seq, bytes.fromhex(head.head_hash)
    if not first and head.head_seq == 0 and head.head_hash == merkle.EMPTY_ROOT.hex():
        return 0, merkle.EMPTY_ROOT
    sql.execute("DELETE FROM log_tree")
    prev, count = head.anchor_hash, 0
    for page in pages(sql, "release_log", ("seq",)):
        updates = []
        for r in page:
            rows.auth.check(r["mac"], f"release log entry {r['seq']}", "release_log", r["seq"], r["prev_hash"],
                            r["entry_hash"])
            leaf = canonical(rows.record(r).body())
            chained = chains.entry_hash(prev, hashlib.sha256(leaf).hexdigest())
            if r["seq"] != count + 1 or r["prev_hash"] != prev or r["entry_hash"] != chained:
                raise StoreIntegrityError(f"release log entry {r['seq']} does not match its hash chain: not "
                                          "upgrading a log that was changed outside the broker")
            prev, count = chained, count + 1
            append(sql, count - 1, leaf)
            leaf_hash = merkle.leaf_hash(leaf).hex()
            updates.append((chains.TREE_PREV, leaf_hash, rows.log_mac(RELEASES, r["seq"], chains.TREE_PREV, leaf_hash),
                            r["seq"]))
        sql.executemany("UPDATE release_log SET prev_hash = ?, entry_hash = ?, mac = ? WHERE seq = ?", updates)
    if (count, prev) != (head.head_seq, head.head_hash):
        raise StoreIntegrityError(f"the release log ends at entry {count} but its recorded head is entry "
                                  f"{head.head_seq}: not upgrading a log that was changed outside the broker")
    root = merkle.tree_hash(count, reader(sql))
    new_head = Head(RELEASES, head.first_seq, head.anchor_hash, count, root.hex())
    sql.execute("UPDATE log_heads SET head_seq = ?, head_hash = ?, mac = ? WHERE chain = ?",
                (count, root.hex(), rows.head_values(new_head)[-1], RELEASES))
    return count, root


def size(sql: Sql) -> int:
    rows = sql.rows("SELECT max(idx) AS last FROM log_tree WHERE level = 0")
    last = rows[0]["last"] if rows else None
    return 0 if last is None else int(last) + 1


def root(sql: Sql, tree_size: int) -> bytes:
    return merkle.tree_hash(tree_size, reader(sql))


def hashes(sql: Sql, level: int, start: int, count: int) -> list[bytes]:
    """Stored hashes of one level, indexes start .. start+count-1 (a tile); StoreIntegrityError if any is absent."""
    rows = sql.rows("SELECT idx, hash FROM log_tree WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx",
                    (level, start, start + count))
    if [r["idx"] for r in rows] != list(range(start, start + count)):
        raise StoreIntegrityError(f"the release log's tree misses hashes at level {level} from index {start}")
    return [bytes(r["hash"]) for r in rows]


def add_checkpoint(sql: Sql, checkpoint: StoredCheckpoint) -> bool:
    """Record a signed checkpoint; False if one of that size exists (another worker or replica signed it:
    the same tree and key give the same note)."""
    if sql.rows("SELECT 1 FROM log_checkpoints WHERE size = ?", (checkpoint.size,)):
        return False
    sql.execute("INSERT INTO log_checkpoints (size, note, at) VALUES (?, ?, ?) ON CONFLICT (size) DO NOTHING",
                (checkpoint.size, checkpoint.note, checkpoint.at))
    return True


def latest_checkpoint(sql: Sql) -> StoredCheckpoint | None:
    rows = sql.rows("SELECT size, note, at FROM log_checkpoints ORDER BY size DESC LIMIT 1")
    return StoredCheckpoint(int(rows[0]["size"]), rows[0]["note"], float(rows[0]["at"])) if rows else None


def checkpoints(sql: Sql, after_size: int = -1, limit: int = 100) -> list[StoredCheckpoint]:
    rows = sql.rows("SELECT size, note, at FROM log_checkpoints WHERE size > ? ORDER BY size LIMIT ?",
                    (after_size, limit))
    return [StoredCheckpoint(int(r["size"]), r["note"], float(r["at"])) for r in rows]
