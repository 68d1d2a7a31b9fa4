"""Which KEK a database is sealed under, and re-sealing it under another (`kbs kek rotate`), for every backend.

The `kek_state` row names the KEK the rows are sealed and MAC'd under by its id: 16 hex digits of a MAC, under
the KEK's row-MAC key, of a fixed label (one-way: it names the KEK, reveals nothing of it).  Stores check it
when they open, so a broker started with another KEK stops at once with both ids named instead of failing on
its first sealed value.

Rotation is one transaction.  Before it, a separate committed write records the rotation's target in the row
(`rotating_to`); the transaction then re-seals every sealed value (the broker's secrets, every resource
version), re-MACs every authenticated row (checking each under the old key first, and the log chains whole),
reads everything back under the new key and records the new id.  A crash anywhere before the COMMIT leaves
the database as it was, under the old KEK, with the target recorded, so the broker starts with the old KEK
and refuses the new one naming the unfinished rotation; after it, the reverse.  No state needs both keys.

Why one transaction is bounded: the work is one pass over the rows, read in pages (memory stays a page);
its size is the database's (dominated by the release log, which is re-MAC'd but not re-hashed, so the chain
heads operators keep elsewhere stay valid).  SQLite and PostgreSQL both hold such a transaction on disk.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from kbs.audit import chain as chains
from kbs.audit.chain import CHAINS, ChainBroken
from kbs.store.integrity import RowAuthenticator, StoreIntegrityError, digest
from kbs.store.rows import Row, Rows, log_table

log = logging.getLogger("kbs.store")

PAGE = 500  # rows read (and updated) at a time
_ID_LABEL = "kek-id"


class KekMismatch(StoreIntegrityError):
    """The configured KEK is not the one the database is sealed under (the error names both)."""

    check = "store.kek"


def kek_id(auth: RowAuthenticator) -> str:
    """The public id of the KEK whose row-MAC key `auth` holds."""
    return auth.mac(_ID_LABEL)[:16]


@dataclass(frozen=True)
class KekState:
    kek_id: str  # the KEK the rows are sealed under
    rotating_to: str | None  # a rotation begun and not (yet) committed
    changed_at: float


# A sealed value to re-seal: (kind, name, sealed) -> the value sealed under the new KEK.  Kinds: "secret" (the
# `secrets` table, sealed with its name as context) and "resource" (a resource version, by its path).
Reseal = Callable[[str, str, bytes], bytes]
# The same sealed value (now under the new KEK) opened, to prove it opens.
Unseal = Callable[[str, str, bytes], bytes]


class Sql(Protocol):
    """One open transaction, `?` placeholders (the PostgreSQL store rewrites them)."""

    def rows(self, sql: str, args: tuple[object, ...] = ()) -> Sequence[Row]: ...
    def execute(self, sql: str, args: tuple[object, ...] = ()) -> None: ...
    def executemany(self, sql: str, args: Sequence[tuple[object, ...]]) -> None: ...
    def insert(self, into: str, rows: Sequence[tuple[object, ...]]) -> None: ...  # see insert_statement


@functools.lru_cache(maxsize=256)  # a few shapes a table, built on every append of the hot path otherwise
def insert_statement(into: str, width: int, count: int) -> str:
    """One INSERT of `count` rows of `width` values: `into` is the table and its column list ("t (a, b)").
    A store may hold a write transaction's inserts back and send each table's as one such statement (the
    PostgreSQL store's group-commit batch does), so an `insert` is only seen by the transaction's later
    reads, never by the statements in between."""
    row = "(" + ", ".join("?" * width) + ")"
    return f"INSERT INTO {into} VALUES " + ", ".join([row] * count)


class RotatableStore(Protocol):
    """What `kbs kek` needs of a store (both backends; not part of the serving interface)."""

    def kek_state(self) -> KekState | None: ...
    def other_users(self) -> list[str]: ...
    def begin_kek_rotation(self, new_id: str, now: datetime) -> None: ...
    def rotate_kek(self, new_row_key: bytes, reseal: Reseal, unseal_new: Unseal, now: datetime,
                   tick: Callable[[], None] = ...) -> dict[str, int]: ...
    def close(self) -> None: ...


# -- the row ------------------------------------------------------------------------------------------

def _mac(auth: RowAuthenticator, state: KekState) -> str:
    return auth.mac("kek_state", 1, state.kek_id, state.rotating_to, state.changed_at)


def write_state(sql: Sql, auth: RowAuthenticator, state: KekState) -> None:
    sql.execute("INSERT INTO kek_state VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET kek_id = "
                "EXCLUDED.kek_id, rotating_to = EXCLUDED.rotating_to, changed_at = EXCLUDED.changed_at, "
                "mac = EXCLUDED.mac", (state.kek_id, state.rotating_to, state.changed_at, _mac(auth, state)))


def peek_state(sql: Sql) -> tuple[KekState, str] | None:
    """The row as stored, unchecked, with its MAC (for messages and `kbs kek status`)."""
    rows = sql.rows("SELECT * FROM kek_state WHERE id = 1")
    if not rows:
        return None
    r = rows[0]
    return KekState(r["kek_id"], r["rotating_to"], r["changed_at"]), r["mac"]


def read_state(sql: Sql, auth: RowAuthenticator) -> KekState | None:
    """The row, which must authenticate under `auth`'s key; KekMismatch, naming both KEKs, if it does not."""
    found = peek_state(sql)
    if found is None:
        return None
    state, mac = found
    if _mac(auth, state) == mac:
        return state
    # The row's fields do not authenticate under this key: they serve only to word the error.
    this = kek_id(auth)
    if state.rotating_to == this:
        raise KekMismatch(f"rotation to KEK {this} incomplete: the database is still sealed under KEK "
                          f"{state.kek_id}; run `kbs kek rotate --new-kek <KEK {this}>` again with KEK "
                          f"{state.kek_id} configured (or start the broker with KEK {state.kek_id})")
    begun = f" (a rotation to KEK {state.rotating_to} was begun and did not finish)" if state.rotating_to else ""
    raise KekMismatch(f"the database is sealed under KEK {state.kek_id}{begun}, not under the configured KEK "
                      f"{this}: configure KEK {state.kek_id} (after `kbs kek rotate`, the new KEK)")


def check_at_open(sql: Sql, rows: Rows, now: float) -> None:
    """Called in each store's opening transaction, before it writes anything: the configured KEK must be the
    database's.  A database without the row (new, or from before schema 4) gets it, if its log heads (which
    every opened database has) authenticate under this KEK."""
    state = read_state(sql, rows.auth)
    if state is None:
        this = kek_id(rows.auth)
        for r in sql.rows("SELECT * FROM log_heads"):
            try:
                rows.head(r["chain"], r)
            except StoreIntegrityError:
                raise KekMismatch(f"the database's rows do not authenticate under the configured KEK {this}: "
                                  "it was written under another KEK; configure that one") from None
        write_state(sql, rows.auth, KekState(this, None, now))
    elif state.rotating_to:
        log.warning("a KEK rotation was begun and did not finish: the database is still sealed under this KEK; "
                    "run kbs kek rotate again", extra={"kek_id": state.kek_id, "rotating_to": state.rotating_to})


def begin_rotation(sql: Sql, old: RowAuthenticator, new_id: str, now: float) -> KekState:
    """Record the rotation's target (committed on its own, before the rotation's transaction)."""
    state = read_state(sql, old)
    if state is None:  # stores write the row when they open
        raise StoreIntegrityError("the database has no kek_state row: it was removed outside the broker")
    begun = KekState(state.kek_id, new_id, now)
    write_state(sql, old, begun)
    return begun


# -- the rotation -------------------------------------------------------------------------------------

def pages(sql: Sql, table: str, key: tuple[str, ...]) -> Iterator[Sequence[Row]]:
    """The table's rows in key order, a page at a time (keyset paging: each page starts after the last)."""
    order = ", ".join(key)
    after: tuple[object, ...] = ()
    while True:
        where = f" WHERE ({order}) > ({', '.join('?' * len(key))})" if after else ""
        page = sql.rows(f"SELECT * FROM {table}{where} ORDER BY {order} LIMIT {PAGE}", after)
        if not page:
            return
        yield page
        after = tuple(page[-1][k] for k in key)


def _attestation_mac(auth: RowAuthenticator, r: Row) -> str:
    """As kbs.store.rows computes it, from the stored columns (the claims text as stored)."""
    return auth.mac("attestations", r["attestation_id"], r["at"], r["session_id"], r["tee"], digest(r["claims"]))


def rotate(sql: Sql, old: Rows, new: Rows, reseal: Reseal, unseal_new: Unseal, now: float,
           tick: Callable[[], None] = lambda: None) -> dict[str, int]:
    """Re-seal and re-MAC every row under the new key, read it all back under it, record the new id.

    Runs inside the caller's transaction; any failure (a row that does not authenticate under the old key, a
    value that does not open) raises, and the caller rolls back.  `tick` is called once per row rewritten.
    Returns the rows rewritten per table.
    """
    state = read_state(sql, old.auth)
    if state is None:
        raise StoreIntegrityError("the database has no kek_state row: it was removed outside the broker")
    counts: dict[str, int] = {}

    def rewrite(table: str, key: tuple[str, ...], update: str,
                values: Callable[[Row], tuple[object, ...]]) -> None:
        n = 0
        for page in pages(sql, table, key):
            changes = []
            for r in page:
                changes.append(values(r))
                tick()
            sql.executemany(update, changes)
            n += len(page)
        counts[table] = n

    rewrite("secrets", ("name",), "UPDATE secrets SET value = ? WHERE name = ?",
            lambda r: (reseal("secret", r["name"], bytes(r["value"])), r["name"]))

    def resource(r: Row) -> tuple[object, ...]:
        v = old.resource(r)  # checks the MAC under the old key
        sealed = reseal("resource", v.path, v.sealed)
        return (sealed, new.resource_mac(v.path, v.version, v.state, sealed, v.policy_id, v.created_by,
                                         r["created_at"]), v.path, v.version)
    rewrite("resources", ("path", "version"), "UPDATE resources SET sealed = ?, mac = ? WHERE path = ? AND version = ?",
            resource)
    rewrite("policies", ("policy_id", "version"), "UPDATE policies SET mac = ? WHERE policy_id = ? AND version = ?",
            lambda r: (new.policy_mac(old.policy_version(r)), r["policy_id"], r["version"]))

    def reference_set(r: Row) -> tuple[object, ...]:
        old.reference_values([r])
        return new.reference_set_mac(r["name"], r["body"]), r["name"]
    rewrite("reference_sets", ("name",), "UPDATE reference_sets SET mac = ? WHERE name = ?", reference_set)

    def attestation(r: Row) -> tuple[object, ...]:
        old.attestation(r)
        return _attestation_mac(new.auth, r), r["attestation_id"]
    rewrite("attestations", ("attestation_id",), "UPDATE attestations SET mac = ? WHERE attestation_id = ?",
            attestation)

    from kbs.store import owners  # imports this module

    counts.update(owners.rotate(sql, old.auth, new.auth))
    for chain in CHAINS:
        counts[log_table(chain)] = _rotate_chain(sql, chain, old, new, tick)

    _read_back(sql, new, unseal_new)
    owners.read_back(sql, new.auth)
    write_state(sql, new.auth, KekState(kek_id(new.auth), None, now))
    return counts


def _head_row(sql: Sql, chain: str) -> Row | None:
    found = sql.rows("SELECT * FROM log_heads WHERE chain = ?", (chain,))
    return found[0] if found else None


def _rotate_chain(sql: Sql, chain: str, old: Rows, new: Rows, tick: Callable[[], None]) -> int:
    """Re-MAC one log, each page after its entries were checked under the old key (MAC, hash and place in the
    chain), and then its head.  Entry hashes do not change: heads kept outside the broker still verify."""
    table = log_table(chain)
    head = old.head(chain, _head_row(sql, chain))
    walked = 0

    def entries() -> Iterator[tuple[int, dict[str, object], str, str]]:
        nonlocal walked
        for page in pages(sql, table, ("seq",)):
            for r in page:
                yield r["seq"], old.checked_record(chain, r).body(), r["prev_hash"], r["entry_hash"]
                tick()
            # resumed only once chains.verify accepted the whole page
            sql.executemany(f"UPDATE {table} SET mac = ? WHERE seq = ?",
                            [(new.log_mac(chain, r["seq"], r["prev_hash"], r["entry_hash"]), r["seq"]) for r in page])
            walked += len(page)
    try:
        chains.verify(head, entries())
    except ChainBroken as exc:
        raise StoreIntegrityError(str(exc)) from exc
    sql.execute("UPDATE log_heads SET mac = ? WHERE chain = ?", (new.head_values(head)[-1], chain))
    return walked


def _read_back(sql: Sql, new: Rows, unseal_new: Unseal) -> None:
    """Everything as the broker will read it, under the new key, before the commit."""
    for page in pages(sql, "secrets", ("name",)):
        for r in page:
            unseal_new("secret", r["name"], bytes(r["value"]))
    for page in pages(sql, "resources", ("path", "version")):
        for r in page:
            v = new.resource(r)
            unseal_new("resource", v.path, v.sealed)
    for page in pages(sql, "policies", ("policy_id", "version")):
        for r in page:
            new.policy_version(r)
    for page in pages(sql, "reference_sets", ("name",)):
        new.reference_values(page)
    for page in pages(sql, "attestations", ("attestation_id",)):
        for r in page:
            new.attestation(r)
    for chain in CHAINS:  # the entries' hashes and places were checked above and did not change: their MACs did
        new.head(chain, _head_row(sql, chain))
        table = log_table(chain)
        for page in pages(sql, table, ("seq",)):
            for r in page:
                new.auth.check(r["mac"], f"{chain} log entry {r['seq']}", table, r["seq"], r["prev_hash"],
                               r["entry_hash"])
