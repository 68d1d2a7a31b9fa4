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

from collections.abc import Iterable, Sequence

from kbs.audit import merkle
from kbs.audit.chain import canonical
from kbs.audit.merkle import HashReader
from kbs.store.base import ReleaseRecord, StoredCheckpoint
from kbs.store.integrity import StoreIntegrityError
from kbs.store.kek_state import Sql


def leaf_bytes(record: ReleaseRecord) -> bytes:
    """An entry as the tree commits to it and entry bundles serve it."""
    return canonical(record.body())


def reader(sql: Sql) -> HashReader:
    def read(wanted: Sequence[tuple[int, int]]) -> list[bytes]:
        out = []
        for level, index in wanted:
            rows = sql.rows("SELECT hash FROM log_tree WHERE level = ? AND idx = ?", (level, index))
            if not rows:
                raise StoreIntegrityError(f"the release log's tree has no hash at level {level} index {index}: "
                                          "it was changed outside the broker")
            out.append(bytes(rows[0]["hash"]))
        return out
    return read


def append(sql: Sql, index: int, entry: bytes) -> None:
    """Store leaf `index` (its predecessors stored) and the subtrees it completes."""
    hashes = merkle.hashes_to_store(index, merkle.leaf_hash(entry), reader(sql))
    sql.executemany("INSERT INTO log_tree (level, idx, hash) VALUES (?, ?, ?)", hashes)


def rebuild(sql: Sql, entries: Iterable[bytes]) -> int:
    """The tree of a log written before the tree existed (schema 5), from its entries in order."""
    sql.execute("DELETE FROM log_tree")
    count = 0
    for index, entry in enumerate(entries):
        append(sql, index, entry)
        count = index + 1
    return count


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
